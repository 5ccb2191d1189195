//! Gradients of variable-length attention under `Autodiff`: our backward (the kernels on
//! Wgpu/Cuda, the reference formulas on NdArray) against Burn's autodiff through the
//! decomposed reference forward, on fresh random inputs each run (seed printed), window on
//! and off, several head dims; a finite-difference check in f64; and a whole model's
//! parameter gradients, unpadded (our op) against padded (dense masks). Each kernel check
//! also asserts which backward kernels ran: the plain ones on Wgpu (WGSL has no cmma) and
//! for f32; the tensor-core ones for f16/bf16 on Cuda unless `MODERNBERT_ATTENTION_PATH=plain`
//! forces the plain ones. (The path is recorded process-wide: run the Cuda tests with
//! `--test-threads 1`, as `scripts/gpu-check.sh` does.)

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use modernbert::{Backend, Execution, LayerType, ModernBertConfig, ModernBertInput};
use modernbert_kernels::attention::reference::varlen_attention_reference;
#[cfg(feature = "cuda")]
use modernbert_kernels::attention::PATH_ENV;
use modernbert_kernels::{
    last_backward_kernel_path, varlen_attention, varlen_attention_packed, CuSeqlens, KernelPath,
    VarlenAttentionOptions, VarlenMeta,
};
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::Rng;

/// Lengths `1..=max`, always including 1 and `max`.
fn random_lengths(rng: &mut Rng, max: usize) -> Vec<usize> {
    let mut lengths = vec![max, 1];
    for _ in 0..4 {
        lengths.push(1 + rng.below(max as u64) as usize);
    }
    lengths
}

/// dq, dk, dv of `sum(out ∘ w)` for a random `w`: ours vs autodiff through the reference;
/// returns the worst relative error of the three.
fn compare_gradients<B: AutodiffBackend + Backend>(
    device: &B::Device,
    lengths: &[usize],
    head_dim: usize,
    window: Option<usize>,
    dtype: DType,
) -> f32 {
    let heads = 2;
    let cu = CuSeqlens::<B>::from_lengths(lengths, device).unwrap();
    let shape = [cu.total(), heads, head_dim];
    let random = || Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let (q, k, v, w) = (random(), random(), random(), random());
    let round = |t: &Tensor<B, 3>| t.clone().cast(dtype).cast(DType::F32);
    let grads_of = |ours: bool| {
        let (q, k, v) = (
            round(&q).require_grad(),
            round(&k).require_grad(),
            round(&v).require_grad(),
        );
        let out = if ours {
            let options = VarlenAttentionOptions {
                window,
                scale: None,
            };
            let cast = |t: &Tensor<B, 3>| t.clone().cast(dtype);
            varlen_attention(cast(&q), cast(&k), cast(&v), &cu, options)
                .unwrap()
                .out
        } else {
            let meta = VarlenMeta {
                offsets: cu.offsets(),
                max_seqlen: cu.max_seqlen(),
                window,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            varlen_attention_reference(q.clone(), k.clone(), v.clone(), &meta).0
        };
        let grads = (out.cast(DType::F32) * w.clone()).sum().backward();
        [q, k, v].map(|t| t.grad(&grads).expect("gradient").cast(DType::F32))
    };
    let (ours, reference) = (grads_of(true), grads_of(false));
    ours.into_iter()
        .zip(reference)
        .map(|(a, b)| relative_error(a, b))
        .fold(0f32, f32::max)
}

/// Longest sequence tested: `MODERNBERT_MAX_LEN` if set, else `default`.
fn max_len(default: usize) -> usize {
    std::env::var("MODERNBERT_MAX_LEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `(head_dim, window)` of the CI checks.
const CASES: &[(usize, Option<usize>)] = &[(64, None), (64, Some(16)), (32, Some(3)), (128, None)];

/// Every head_dim with the window on and off (ModernBERT's ±64 included), on Cuda.
#[cfg(feature = "cuda")]
const CUDA_CASES: &[(usize, Option<usize>)] = &[
    (64, None),
    (64, Some(64)),
    (64, Some(16)),
    (32, None),
    (32, Some(3)),
    (128, None),
    (128, Some(64)),
];

/// Gradient checks over `cases`; `expected_path`: the backward kernels that must have run
/// (`None` where no kernel runs, NdArray).
fn check_gradients<B: AutodiffBackend + Backend>(
    device: &B::Device,
    dtype: DType,
    tolerance: f32,
    max_len: usize,
    cases: &[(usize, Option<usize>)],
    expected_path: Option<KernelPath>,
) {
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    for &(head_dim, window) in cases {
        let lengths = random_lengths(&mut rng, max_len);
        let error = compare_gradients::<B>(device, &lengths, head_dim, window, dtype);
        let path = last_backward_kernel_path();
        println!("{dtype:?} head_dim {head_dim} window {window:?} lengths {lengths:?} backward kernel {path:?}: gradient error {error:.2e}");
        if expected_path.is_some() && path != expected_path {
            failures.push(format!(
                "head_dim {head_dim} window {window:?}: backward kernel {path:?}, expected {expected_path:?}"
            ));
        }
        if error > tolerance {
            failures.push(format!(
                "head_dim {head_dim} window {window:?}: {error:.2e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "gradients differ from the reference (tolerance {tolerance:e}):\n{}",
        failures.join("\n")
    );
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_backward_matches_reference_autodiff() {
    check_gradients::<Autodiff<burn::backend::NdArray>>(
        &Default::default(),
        DType::F32,
        1e-5,
        max_len(90),
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
        max_len(400),
        CASES,
        Some(KernelPath::Plain),
    );
}

/// The backward kernels that f16/bf16 take on Cuda: mma.sync on sm80+ (the GPU machine's
/// H200), or the ones `MODERNBERT_ATTENTION_PATH=cmma|plain` forces.
#[cfg(feature = "cuda")]
fn cuda_half_path() -> KernelPath {
    match std::env::var(PATH_ENV).as_deref() {
        Ok("plain") => KernelPath::Plain,
        Ok("cmma") => KernelPath::TensorCore,
        _ => KernelPath::Mma,
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_backward_kernels_match_reference_autodiff_f32() {
    check_gradients::<Autodiff<burn::backend::Cuda>>(
        &Default::default(),
        DType::F32,
        1e-4,
        max_len(600),
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
        max_len(600),
        CUDA_CASES,
        Some(cuda_half_path()),
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_backward_kernels_match_reference_autodiff_f16() {
    check_gradients::<Autodiff<burn::backend::Cuda>>(
        &Default::default(),
        DType::F16,
        2e-2,
        max_len(600),
        CUDA_CASES,
        Some(cuda_half_path()),
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
        let out = varlen_attention_packed(packed.clone(), &cu, options).unwrap().out;
        let grad_packed = packed.grad(&(out * d_out.clone()).sum().backward()).unwrap();
        let sliced = qkv.require_grad();
        let part = |i| sliced.clone().narrow(0, i, 1).reshape([108, 2, 16]);
        let out = varlen_attention(part(0), part(1), part(2), &cu, options).unwrap().out;
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

/// A tiny ModernBERT's parameter gradients: unpadded (our attention op and its backward)
/// against padded (dense masks, Burn's autodiff), on an uneven padded batch.
fn check_model_gradients<B: AutodiffBackend + Backend>(device: &B::Device, tolerance: f32) {
    let config = ModernBertConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        local_attention: 8,
        layer_types: vec![LayerType::Global, LayerType::Local, LayerType::Local],
        max_position_embeddings: 128,
        pad_token_id: 0,
        cls_token_id: 1,
        sep_token_id: 2,
        ..ModernBertConfig::base()
    };
    let model = config.init_masked_lm::<B>(device);
    let mut rng = Rng::from_env();
    let sequences: Vec<Vec<u32>> = [23usize, 7, 40]
        .iter()
        .map(|&len| (0..len).map(|_| 3 + rng.below(60) as u32).collect())
        .collect();
    let weights = Tensor::<B, 3>::random([3, 40, 64], Distribution::Default, device);
    let grads_of = |execution: Execution| {
        let input = ModernBertInput::from_token_ids(&sequences, &config, device)
            .unwrap()
            .with_execution(execution);
        let mask = input.attention_mask.clone().float().unsqueeze_dim::<3>(2);
        let logits = model.forward(input).unwrap().logits;
        let grads = (logits * mask * weights.clone()).sum().backward();
        let embeddings = model
            .model
            .embeddings
            .tok_embeddings
            .weight
            .grad(&grads)
            .unwrap();
        let wqkv = model.model.layers[1].attn.Wqkv.weight.grad(&grads).unwrap();
        (embeddings, wqkv)
    };
    let (ours, reference) = (grads_of(Execution::Unpadded), grads_of(Execution::Padded));
    let errors = [
        relative_error(ours.0, reference.0),
        relative_error(ours.1, reference.1),
    ];
    println!(
        "model gradients, unpadded vs padded: tok_embeddings {:.2e}, layers.1.attn.Wqkv {:.2e}",
        errors[0], errors[1]
    );
    assert!(
        errors.iter().all(|&e| e < tolerance),
        "model gradients differ: {errors:?}"
    );
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
