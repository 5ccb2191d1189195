//! The fused q/k/v split with RoPE (`modernbert_kernels::rope_qkv`: one CubeCL kernel each
//! way) against the exact reference formulas (`rope_qkv_reference`, checked against the
//! definition on NdArray in the kernels crate) in f32 on the same rounded inputs: forward
//! (q, k, v) and the gradient of qkv through `Autodiff` vs autodiff of the reference ops.
//! Fresh random inputs and tables `[8192, head_dim]` (not duplicated over the halves, so
//! each half's rows are checked) each run; 2 and 12 heads, head_dim 8 and 64, 1 to 600
//! tokens at random positions including 0 and 8191. NdArray and Wgpu (f32) run in CI
//! (lavapipe); Cuda (f32, f16, bf16) through `scripts/gpu-check.sh`.

use burn::backend::Autodiff;
use burn::tensor::{DType, Int, Tensor, TensorData};
use modernbert::Backend;
use modernbert_kernels::rope::rope_qkv_reference;
use modernbert_kernels::rope_qkv;
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::{uniform_tensor, Rng};

/// Rows of the tables (ModernBERT's `max_position_embeddings`).
const MAX_POSITIONS: usize = 8192;

/// `Σᵢ ⟨partᵢ, gradᵢ⟩`, the loss whose qkv gradient is checked.
fn loss<B: burn::tensor::backend::AutodiffBackend>(
    parts: [Tensor<B, 3>; 3],
    grads: &[Tensor<B::InnerBackend, 3>; 3],
) -> Tensor<B, 1> {
    parts
        .into_iter()
        .zip(grads)
        .map(|(part, grad)| (part * Tensor::from_inner(grad.clone())).sum())
        .reduce(|a, b| a + b)
        .expect("three parts")
}

/// Forward and backward of the kernel in `dtype` vs the f32 reference, within `tolerance`.
fn check_rope<B: Backend>(device: &B::Device, dtype: DType, tolerance: f32) {
    let mut rng = Rng::from_env();
    let mut cases = Vec::new();
    for heads in [2, 12] {
        for head_dim in [8, 64] {
            cases.extend([[heads, head_dim, 1], [heads, head_dim, 37]]);
        }
    }
    cases.extend([[2, 8, 600], [12, 64, 600]]);
    for [heads, head_dim, total] in cases {
        let width = 3 * heads * head_dim;
        let qkv = uniform_tensor::<B, 2>(&mut rng, device, [total, width], 3.0, 0.0, dtype);
        let cos = uniform_tensor::<B, 2>(
            &mut rng,
            device,
            [MAX_POSITIONS, head_dim],
            1.0,
            0.0,
            DType::F32,
        );
        let sin = uniform_tensor::<B, 2>(
            &mut rng,
            device,
            [MAX_POSITIONS, head_dim],
            1.0,
            0.0,
            DType::F32,
        );
        let mut positions: Vec<i64> = (0..total)
            .map(|_| rng.below(MAX_POSITIONS as u64) as i64)
            .collect();
        positions[0] = 0;
        positions[total - 1] = MAX_POSITIONS as i64 - 1;
        let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [total]), device);
        let grads: [Tensor<B, 3>; 3] = std::array::from_fn(|_| {
            uniform_tensor::<B, 3>(&mut rng, device, [total, heads, head_dim], 1.0, 0.0, dtype)
        });

        // Ours, forward and (through Autodiff) backward.
        let tracked = Tensor::<Autodiff<B>, 2>::from_inner(qkv.clone()).require_grad();
        let parts = rope_qkv(
            tracked.clone(),
            Tensor::from_inner(cos.clone()),
            Tensor::from_inner(sin.clone()),
            Tensor::from_inner(positions.clone()),
            heads,
        )
        .unwrap();
        let ours: Vec<Tensor<B, 3>> = parts.iter().map(|p| p.clone().inner()).collect();
        for part in &ours {
            assert_eq!(part.dtype(), dtype, "output dtype");
        }
        let d_qkv = tracked
            .grad(&loss(parts, &grads).backward())
            .expect("qkv is tracked");

        // The reference in f32 on the same rounded inputs, backward by autodiff.
        let f32 = |t: &Tensor<B, 3>| t.clone().cast(DType::F32);
        let reference_qkv =
            Tensor::<Autodiff<B>, 2>::from_inner(qkv.clone().cast(DType::F32)).require_grad();
        let packed = rope_qkv_reference(
            reference_qkv.clone(),
            Tensor::from_inner(cos),
            Tensor::from_inner(sin),
            Tensor::from_inner(positions),
            heads,
        );
        let expected: [Tensor<Autodiff<B>, 3>; 3] = std::array::from_fn(|i| {
            packed
                .clone()
                .narrow(0, i, 1)
                .reshape([total, heads, head_dim])
        });
        let expected_forward: Vec<Tensor<B, 3>> =
            expected.iter().map(|p| p.clone().inner()).collect();
        let expected_d_qkv = reference_qkv
            .grad(&loss(expected, &grads.each_ref().map(f32)).backward())
            .expect("qkv is tracked");

        let forward = ours
            .into_iter()
            .zip(expected_forward)
            .map(|(a, b)| relative_error(a, b))
            .fold(0f32, f32::max);
        let backward = relative_error(d_qkv, expected_d_qkv);
        let case = format!("{dtype:?} heads {heads}, head_dim {head_dim}, {total} tokens");
        println!("{case}: forward {forward:.2e}, backward {backward:.2e}");
        assert!(
            forward <= tolerance && backward <= tolerance,
            "{case}: forward {forward:.2e}, backward {backward:.2e} (tolerance {tolerance:e})"
        );
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_rope_matches_reference() {
    check_rope::<burn::backend::NdArray>(&Default::default(), DType::F32, 1e-5);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_rope_matches_reference_f32() {
    check_rope::<burn::backend::Wgpu>(&Default::default(), DType::F32, 1e-5);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_rope_matches_reference() {
    let device = Default::default();
    check_rope::<burn::backend::Cuda>(&device, DType::F32, 1e-5);
    // The reference runs in f32 on the rounded inputs; the kernel rounds only its outputs.
    check_rope::<burn::backend::Cuda>(&device, DType::F16, 2e-3);
    check_rope::<burn::backend::Cuda>(&device, DType::BF16, 1e-2);
}
