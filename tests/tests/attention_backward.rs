//! Gradients of variable-length attention under `Autodiff`: our backward (the kernels on Wgpu/Cuda,
//! the reference formulas on NdArray) against Burn's autodiff through the decomposed reference
//! forward, on fresh random inputs each run (seed printed), window on and off, several head dims; a
//! finite-difference check in f64; and a whole model's parameter gradients, unpadded (our op)
//! against padded (dense masks). Each kernel check also asserts which backward kernels ran: the
//! plain ones on Wgpu (WGSL has no cmma) and for f32; for f16/bf16 on Cuda the mma kernel with
//! atomic dQ (the deterministic mma pair under `MODERNBERT_DETERMINISTIC=1`) unless
//! `MODERNBERT_ATTENTION_PATH=cmma|plain` forces others. In deterministic mode two backward passes
//! must agree bit for bit. (The path is recorded process-wide: run the Cuda tests with
//! `--test-threads 1`, as `scripts/gpu-check.sh` does.)

use burn::backend::Autodiff;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use modernbert_kernels::KernelPath;
use modernbert_kernels::{
    varlen_attention, varlen_attention_packed, CuSeqlens, VarlenAttentionOptions,
};
#[cfg(feature = "cuda")]
use modernbert_tests::attention::cuda_half_backward_path;
use modernbert_tests::attention::{
    check_gradients, check_model_gradients, max_len_from_env, CASES,
};
use modernbert_tests::compare::relative_error;

/// Every head_dim with the window on and off (ModernBERT's ±64 included), on Cuda; ±24 is
/// not whole 16-key blocks, which the band backward leaves to the tiled mma kernels. The band
/// pair runs at every head_dim (its dQ kernel stages a band of dS as wide at head_dim 32 as
/// at 128).
#[cfg(feature = "cuda")]
const CUDA_CASES: &[(usize, Option<usize>)] = &[
    (64, None),
    (64, Some(64)),
    (64, Some(16)),
    (64, Some(24)),
    (32, None),
    (32, Some(3)),
    (32, Some(64)),
    (128, None),
    (128, Some(64)),
];

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_backward_matches_reference_autodiff() {
    check_gradients::<Autodiff<burn::backend::NdArray>>(
        &Default::default(),
        DType::F32,
        1e-5,
        max_len_from_env(90),
        CASES,
        None,
    );
}

/// Up to 400 tokens: the plain kernels walk up to 27 tiles of 15 rows (head_dim 128), more
/// than one invocation may loop through on lavapipe (CI), so they run in up to 4 launches
/// there (`kernels/src/attention/passes.rs`), and shorter sequences finish before the last.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_backward_kernels_match_reference_autodiff() {
    check_gradients::<Autodiff<burn::backend::Wgpu>>(
        &Default::default(),
        DType::F32,
        1e-4,
        max_len_from_env(400),
        CASES,
        Some(KernelPath::Plain),
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_backward_kernels_match_reference_autodiff_f32() {
    check_gradients::<Autodiff<burn::backend::Cuda>>(
        &Default::default(),
        DType::F32,
        1e-4,
        max_len_from_env(600),
        CUDA_CASES,
        Some(KernelPath::Plain),
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_backward_kernels_match_reference_autodiff_bf16() {
    check_gradients::<Autodiff<burn::backend::Cuda>>(
        &Default::default(),
        DType::BF16,
        2e-2,
        max_len_from_env(600),
        CUDA_CASES,
        Some(cuda_half_backward_path()),
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_backward_kernels_match_reference_autodiff_f16() {
    check_gradients::<Autodiff<burn::backend::Cuda>>(
        &Default::default(),
        DType::F16,
        2e-2,
        max_len_from_env(600),
        CUDA_CASES,
        Some(cuda_half_backward_path()),
    );
}

/// Central differences of `sum(out ∘ w)` in f64 against our gradient, for every element of
/// a tiny q, k and v. (f64 tensors on the f32 NdArray backend: an `NdArray<f64>` in the same
/// process would change the CPU device's default dtype under the other tests.)
/// The op on a q/k/v stack (one parent, the stacked gradient) gives the gradients of the op
/// on its three slices, window on and off.
#[cfg(feature = "ndarray")]
#[test]
fn packed_attention_gradients_equal_those_of_the_slices() {
    type B = Autodiff<burn::backend::NdArray>;
    let device = Default::default();
    let cu = CuSeqlens::<B>::from_lengths(&[37, 1, 70], &device).unwrap();
    for window in [None, Some(8)] {
        let options = VarlenAttentionOptions {
            window,
            scale: None,
        };
        let qkv = Tensor::<B, 4>::random([3, 108, 2, 16], Distribution::Default, &device);
        let d_out = Tensor::<B, 3>::random([108, 2, 16], Distribution::Default, &device);
        let packed = qkv.clone().require_grad();
        let out = varlen_attention_packed(packed.clone(), &cu, options)
            .unwrap()
            .out;
        let grad_packed = packed
            .grad(&(out * d_out.clone()).sum().backward())
            .unwrap();
        let sliced = qkv.require_grad();
        let part = |i| sliced.clone().narrow(0, i, 1).reshape([108, 2, 16]);
        let out = varlen_attention(part(0), part(1), part(2), &cu, options)
            .unwrap()
            .out;
        let grad_sliced = sliced.grad(&(out * d_out).sum().backward()).unwrap();
        let error = relative_error(grad_packed, grad_sliced);
        assert!(error < 1e-6, "window {window:?}: {error:e}");
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn backward_matches_finite_differences() {
    type B = Autodiff<burn::backend::NdArray>;
    let device = Default::default();
    let lengths = [3, 5];
    let (heads, head_dim, window) = (1, 4, Some(2));
    let cu = CuSeqlens::<B>::from_lengths(&lengths, &device).unwrap();
    let shape = [cu.total(), heads, head_dim];
    let random =
        || Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(DType::F64);
    let inputs = [random(), random(), random()];
    let w = random();
    let loss = |inputs: &[Tensor<B, 3>; 3]| -> f64 {
        let options = VarlenAttentionOptions {
            window,
            scale: None,
        };
        let [q, k, v] = inputs.clone();
        let out = varlen_attention(q, k, v, &cu, options).unwrap().out;
        (out * w.clone()).sum().into_data().to_vec::<f64>().unwrap()[0]
    };
    let tracked = inputs.clone().map(|t| t.require_grad());
    let [q, k, v] = tracked.clone();
    let out = varlen_attention(
        q,
        k,
        v,
        &cu,
        VarlenAttentionOptions {
            window,
            scale: None,
        },
    )
    .unwrap()
    .out;
    let grads = (out * w.clone()).sum().backward();
    let eps = 1e-6;
    let mut worst = 0f64;
    for (which, input) in tracked.iter().enumerate() {
        let analytic: Vec<f64> = input.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let values: Vec<f64> = inputs[which].clone().into_data().to_vec().unwrap();
        for (i, &g) in analytic.iter().enumerate() {
            let at = |delta: f64| {
                let mut shifted = values.clone();
                shifted[i] += delta;
                let mut moved = inputs.clone();
                moved[which] =
                    Tensor::from_data(TensorData::new(shifted, shape), (&device, DType::F64));
                loss(&moved)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            worst = worst.max((numeric - g).abs() / (1.0 + g.abs()));
        }
    }
    println!("worst finite-difference error {worst:.2e}");
    assert!(worst < 1e-6, "finite differences disagree: {worst:.2e}");
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_model_gradients_unpadded_match_padded() {
    check_model_gradients::<Autodiff<burn::backend::NdArray>>(&Default::default(), 1e-4);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_model_gradients_unpadded_match_padded() {
    check_model_gradients::<Autodiff<burn::backend::Wgpu>>(&Default::default(), 1e-4);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_model_gradients_unpadded_match_padded() {
    check_model_gradients::<Autodiff<burn::backend::Cuda>>(&Default::default(), 1e-4);
}

/// Deterministic mode (`set_deterministic(true)`) on Cuda, bf16: the deterministic kernels
/// run, their gradients match the reference, and two backward passes over the same inputs
/// give bitwise-equal gradients (what the atomic dQ does not promise). The mode in force
/// before is restored at the end.
#[cfg(feature = "cuda")]
#[test]
fn cuda_deterministic_backward_is_bitwise_reproducible() {
    use burn::tensor::backend::Backend as _;
    use modernbert_kernels::{deterministic, set_deterministic};
    type B = Autodiff<burn::backend::Cuda>;
    let before = deterministic();
    set_deterministic(true);
    let device = Default::default();
    check_gradients::<B>(
        &device,
        DType::BF16,
        2e-2,
        max_len_from_env(600),
        &[(64, None), (64, Some(64))],
        Some(cuda_half_backward_path()),
    );
    let cu = CuSeqlens::<B>::from_lengths(&[600, 1, 333, 64], &device).unwrap();
    let mut mismatches = Vec::new();
    for window in [None, Some(64)] {
        let shape = [cu.total(), 12, 64];
        let random = || {
            Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16)
        };
        let (q, k, v, d_out) = (random(), random(), random(), random());
        let gradients = || {
            let [q, k, v] = [&q, &k, &v].map(|t| t.clone().require_grad());
            let options = VarlenAttentionOptions {
                window,
                scale: None,
            };
            let out = varlen_attention(q.clone(), k.clone(), v.clone(), &cu, options)
                .unwrap()
                .out;
            let grads = (out * d_out.clone()).sum().backward();
            [q, k, v].map(|t| t.grad(&grads).expect("gradient").into_data())
        };
        let (first, second) = (gradients(), gradients());
        B::sync(&device).unwrap();
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(first.iter().zip(&second)) {
            if a.as_bytes() != b.as_bytes() {
                mismatches.push(format!("window {window:?}: {name} differs between runs"));
            }
        }
    }
    set_deterministic(before);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
