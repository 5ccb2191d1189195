//! Our variable-length flash-attention kernel against the plain-ops reference, on fresh
//! random inputs every run (the seed is printed): mixed lengths 1…600 in one batch, window
//! on and off, head_dim 32/64/128, and on Wgpu sequences of 2048–4096 tokens; outputs
//! allocated over poisoned (NaN) memory so that an unwritten row shows. On NdArray both sides are the reference, so the kernel runs on Wgpu
//! here (lavapipe in CI) and on Cuda through `scripts/gpu-check.sh`. Each check also asserts
//! which kernel ran: the plain one on Wgpu (WGSL has no cmma) and for f32; for f16/bf16 on
//! Cuda the mma one (sm80+), or the one `MODERNBERT_ATTENTION_PATH=cmma|plain` forces.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
use burn::tensor::DType;
use burn::tensor::Tensor;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use modernbert_kernels::KernelPath;
use modernbert_kernels::{varlen_attention, AttentionError, CuSeqlens, VarlenAttentionOptions};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use modernbert_tests::attention::check_kernel;
#[cfg(feature = "wgpu")]
use modernbert_tests::attention::{assert_no_failures, check_case, mixed_max_len, Case};
#[cfg(feature = "cuda")]
use modernbert_tests::attention::{cuda_half_path, max_len_from_env};
#[cfg(feature = "wgpu")]
use modernbert_tests::random::Rng;

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_kernel_matches_reference_f32() {
    check_kernel::<burn::backend::Wgpu>(
        &Default::default(),
        DType::F32,
        1e-5,
        mixed_max_len,
        KernelPath::Plain,
    );
}

/// Sequences of 2048–4096 tokens at head_dim 64, window off and ±64, f32. On lavapipe (CI) a
/// cube walks up to 72 key tiles here, several times the loop iterations llvmpipe lets one
/// invocation run (65535, summed over all loops); the plain kernel stays under it by
/// splitting the walk into launches (`kernels/src/attention/passes.rs`). Before that split
/// the kernel returned non-finite rows on lavapipe from 16 key tiles on (512 tokens here).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_kernel_matches_reference_long_sequences() {
    let device = Default::default();
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    // Lavapipe is slow on global attention (4096 + 2316 tokens took 24 s) and the reference
    // on long sequences (dense scores): one long sequence per case.
    let global = vec![2048 + rng.below(257) as usize, 1];
    let windowed = vec![2048 + rng.below(2049) as usize, 1];
    for (lengths, window) in [(global, None), (windowed, Some(64))] {
        let case = Case {
            lengths: &lengths,
            head_dim: 64,
            window,
            dtype: DType::F32,
        };
        failures.extend(check_case::<burn::backend::Wgpu>(
            &device,
            case,
            1e-5,
            KernelPath::Plain,
        ));
    }
    assert_no_failures(&failures, 1e-5);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_kernel_matches_reference_f16() {
    type B = burn::backend::Wgpu;
    let device = Default::default();
    if !<B as burn::tensor::backend::Backend>::supports_dtype(&device, DType::F16) {
        println!("SKIPPED: this Wgpu adapter has no shader-f16");
        return;
    }
    check_kernel::<B>(&device, DType::F16, 1e-2, mixed_max_len, KernelPath::Plain);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_kernel_matches_reference() {
    type B = burn::backend::Cuda;
    let device = Default::default();
    let half_path = cuda_half_path();
    let max_len = |_| max_len_from_env(600);
    check_kernel::<B>(&device, DType::F32, 1e-5, max_len, KernelPath::Plain);
    check_kernel::<B>(&device, DType::F16, 1e-2, max_len, half_path);
    check_kernel::<B>(&device, DType::BF16, 1e-2, max_len, half_path);
}

#[cfg(feature = "ndarray")]
#[test]
fn malformed_cu_seqlens_and_shapes_are_refused() {
    type B = burn::backend::NdArray;
    let device = Default::default();
    for (offsets, reason) in [
        (vec![0, 5, 5, 9], "increase strictly"),
        (vec![0, 7, 3], "increase strictly"),
        (vec![2, 7], "start at 0"),
        (vec![0], "at least two"),
    ] {
        let err = CuSeqlens::<B>::new(offsets.clone(), &device).unwrap_err();
        assert!(
            matches!(err, AttentionError::CuSeqlens { .. }) && err.to_string().contains(reason),
            "{offsets:?}: {err}"
        );
    }
    let cu = CuSeqlens::<B>::from_lengths(&[3, 4], &device).unwrap();
    let t = |n: usize, d: usize| Tensor::<B, 3>::zeros([n, 2, d], &device);
    let err = varlen_attention(t(6, 8), t(6, 8), t(6, 8), &cu, Default::default()).unwrap_err();
    assert!(
        err.to_string().contains("6 tokens") && err.to_string().contains("ends at 7"),
        "{err}"
    );
    let err = varlen_attention(t(7, 8), t(7, 16), t(7, 8), &cu, Default::default()).unwrap_err();
    assert!(matches!(err, AttentionError::Shape(_)), "{err}");
    for scale in [0.0, -0.125, f64::NAN, f64::INFINITY, 1e300] {
        let options = VarlenAttentionOptions {
            window: None,
            scale: Some(scale),
        };
        let err = varlen_attention(t(7, 8), t(7, 8), t(7, 8), &cu, options).unwrap_err();
        assert!(
            matches!(err, AttentionError::Scale(_)) && err.to_string().contains("softmax scale"),
            "scale {scale}: {err}"
        );
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn reference_matches_a_direct_softmax_on_a_tiny_case() {
    // One sequence of 3 tokens, 1 head, head_dim 1, window 1: hand-checkable.
    type B = burn::backend::NdArray;
    let device = Default::default();
    let q = Tensor::<B, 3>::from_data([[[1.0]], [[2.0]], [[0.5]]], &device);
    let k = Tensor::<B, 3>::from_data([[[0.3]], [[-1.0]], [[2.0]]], &device);
    let v = Tensor::<B, 3>::from_data([[[1.0]], [[10.0]], [[100.0]]], &device);
    let cu = CuSeqlens::<B>::from_lengths(&[3], &device).unwrap();
    let out = varlen_attention(
        q,
        k,
        v,
        &cu,
        VarlenAttentionOptions {
            window: Some(1),
            scale: Some(1.0),
        },
    )
    .unwrap();
    let got: Vec<f32> = out.out.into_data().to_vec().unwrap();
    let lse: Vec<f32> = out.lse.into_data().to_vec().unwrap();
    // Query 0 sees keys 0, 1; query 1 sees 0, 1, 2; query 2 sees 1, 2.
    let expect = |qv: f32, keys: &[usize]| {
        let (kv, vv) = ([0.3f32, -1.0, 2.0], [1.0f32, 10.0, 100.0]);
        let w: Vec<f32> = keys.iter().map(|&j| (qv * kv[j]).exp()).collect();
        let sum: f32 = w.iter().sum();
        (
            keys.iter().zip(&w).map(|(&j, w)| w * vv[j]).sum::<f32>() / sum,
            sum.ln(),
        )
    };
    for (i, (qv, keys)) in [
        (1.0, &[0, 1][..]),
        (2.0, &[0, 1, 2][..]),
        (0.5, &[1, 2][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let (o, l) = expect(qv, keys);
        assert!(
            (got[i] - o).abs() < 1e-4 * o.abs().max(1.0),
            "query {i}: {} vs {o}",
            got[i]
        );
        assert!(
            (lse[i] - l).abs() < 1e-5,
            "query {i}: lse {} vs {l}",
            lse[i]
        );
    }
}
