//! The attention checks shared by `attention_kernel.rs`, `attention_backward.rs` and
//! `fusion.rs`: our kernels against the plain-ops reference, forward and gradients, on
//! random mixed-length batches, and a tiny model's gradients unpadded against padded. Each
//! kernel check also asserts which kernel ran ([`last_kernel_path`],
//! [`last_backward_kernel_path`]; recorded process-wide, so a test binary that asserts
//! them must not run other kernels concurrently that would record the same path).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, Tensor};
use modernbert::{Backend, Execution, LayerType, ModernBertConfig, ModernBertInput};
use modernbert_kernels::attention::reference::varlen_attention_reference;
use modernbert_kernels::attention::PATH_ENV;
use modernbert_kernels::{
    deterministic, last_backward_kernel_path, last_kernel_path, varlen_attention, CuSeqlens,
    KernelPath, VarlenAttentionOptions, VarlenMeta,
};

use crate::compare::relative_error;
use crate::random::Rng;

/// `random` lengths in `1..=max` besides 1 and `max` themselves, shuffled so that the long
/// and short sequences are not always at the ends.
pub fn random_lengths(rng: &mut Rng, max: usize, random: usize) -> Vec<usize> {
    let mut lengths = vec![1, max];
    for _ in 0..random {
        lengths.push(1 + rng.below(max as u64) as usize);
    }
    for i in (1..lengths.len()).rev() {
        lengths.swap(i, rng.below(i as u64 + 1) as usize);
    }
    lengths
}

/// Longest sequence tested: `MODERNBERT_MAX_LEN` if set, else `default`.
pub fn max_len_from_env(default: usize) -> usize {
    std::env::var("MODERNBERT_MAX_LEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Longest sequence of the mixed-length forward checks: 600 unless `MODERNBERT_MAX_LEN`
/// says.
pub fn mixed_max_len(_head_dim: usize) -> usize {
    max_len_from_env(600)
}

/// The kernels f16/bf16 attention takes on Cuda: mma.sync on sm80+ (the GPU machine's
/// H200), or the ones `MODERNBERT_ATTENTION_PATH=cmma|plain` forces.
pub fn cuda_half_path() -> KernelPath {
    match std::env::var(PATH_ENV).as_deref() {
        Ok("plain") => KernelPath::Plain,
        Ok("cmma") => KernelPath::TensorCore,
        _ => KernelPath::Mma,
    }
}

/// The backward kernels f16/bf16 attention takes on Cuda for the tested head dims (multiples of
/// 32): on sm80+ the mma kernel with the atomic dQ, or the deterministic mma pair under
/// `set_deterministic` / `MODERNBERT_DETERMINISTIC=1`; or the ones
/// `MODERNBERT_ATTENTION_PATH=cmma|plain` forces.
pub fn cuda_half_backward_path() -> KernelPath {
    match cuda_half_path() {
        KernelPath::Mma if !deterministic() => KernelPath::MmaAtomicDq,
        path => path,
    }
}

/// Forward kernel vs reference for one configuration; returns (out error, lse error).
fn compare<B: Backend>(
    device: &B::Device,
    lengths: &[usize],
    heads: usize,
    head_dim: usize,
    window: Option<usize>,
    dtype: DType,
) -> (f32, f32) {
    let cu = CuSeqlens::<B>::from_lengths(lengths, device).unwrap();
    let total = cu.total();
    let random = || {
        Tensor::<B, 3>::random(
            [total, heads, head_dim],
            Distribution::Normal(0.0, 1.5),
            device,
        )
    };
    let (q, k, v) = (random(), random(), random());
    // Poison the allocator: freed NaN buffers are what the kernel's outputs get next.
    for _ in 0..2 {
        let poison = Tensor::<B, 3>::full([total, heads, head_dim], f32::NAN, device);
        let _ = poison.clone().sum().into_scalar();
    }
    let options = VarlenAttentionOptions {
        window,
        scale: None,
    };
    let cast = |t: &Tensor<B, 3>| t.clone().cast(dtype);
    let start = std::time::Instant::now();
    let ours = varlen_attention(cast(&q), cast(&k), cast(&v), &cu, options).unwrap();
    let _ = ours.lse.clone().sum().into_scalar();
    let kernel_time = start.elapsed();
    let meta = VarlenMeta {
        offsets: cu.offsets(),
        max_seqlen: cu.max_seqlen(),
        window,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    // The reference sees the same (possibly rounded) inputs, computed in f32.
    let round = |t: &Tensor<B, 3>| t.clone().cast(dtype).cast(DType::F32);
    let start = std::time::Instant::now();
    let (out, lse) = varlen_attention_reference(round(&q), round(&k), round(&v), &meta);
    let _ = lse.clone().sum().into_scalar();
    println!(
        "kernel {kernel_time:.2?}, reference {:.2?}",
        start.elapsed()
    );
    (
        relative_error(ours.out.cast(DType::F32), out),
        relative_error(ours.lse, lse),
    )
}

/// Forward kernel vs reference at every head_dim (32, 64, 128) with the window on and off,
/// on a random mixed-length batch each (`max_len(head_dim)` its longest sequence).
pub fn check_kernel<B: Backend>(
    device: &B::Device,
    dtype: DType,
    tolerance: f32,
    max_len: fn(usize) -> usize,
    expected_path: KernelPath,
) {
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    for (head_dim, window) in [
        (64, None),
        (64, Some(64)),
        (32, None),
        (32, Some(5)),
        (32, Some(24)),
        (128, None),
        (128, Some(64)),
    ] {
        let lengths = random_lengths(&mut rng, max_len(head_dim), 6);
        let case = Case {
            lengths: &lengths,
            head_dim,
            window,
            dtype,
        };
        failures.extend(check_case::<B>(device, case, tolerance, expected_path));
    }
    assert_no_failures(&failures, tolerance);
}

/// One configuration of a forward kernel check.
pub struct Case<'a> {
    /// The batch's sequence lengths.
    pub lengths: &'a [usize],
    /// Head dimension (2 heads).
    pub head_dim: usize,
    /// Half window, `None` for global attention.
    pub window: Option<usize>,
    /// q, k and v's dtype.
    pub dtype: DType,
}

/// Forward kernel vs reference for one case (2 heads): what went wrong, if anything,
/// including a kernel other than `expected_path` (or none) having run.
pub fn check_case<B: Backend>(
    device: &B::Device,
    case: Case,
    tolerance: f32,
    expected_path: KernelPath,
) -> Vec<String> {
    let Case {
        lengths,
        head_dim,
        window,
        dtype,
    } = case;
    let (out, lse) = compare::<B>(device, lengths, 2, head_dim, window, dtype);
    let path = last_kernel_path();
    let expected_path = band_path(expected_path, window, 8);
    println!("{dtype:?} head_dim {head_dim} window {window:?} lengths {lengths:?} kernel {path:?}: out {out:.2e}, lse {lse:.2e}");
    let mut failures = Vec::new();
    if path != Some(expected_path) {
        failures.push(format!(
            "head_dim {head_dim} window {window:?}: kernel {path:?}, expected {expected_path:?}"
        ));
    }
    if out > tolerance || lse > tolerance {
        failures.push(format!(
            "head_dim {head_dim} window {window:?} lengths {lengths:?}: out {out:.2e} lse {lse:.2e}"
        ));
    }
    failures
}

/// The kernels that run for a window of ±`window` where `path` runs global attention: the
/// mma kernels give way to the band kernels for windows up to ±64 of a multiple of
/// `multiple`: 8 in the forward, 16 in the backward (whose dQ reads a banded dS of whole
/// 16-key blocks).
fn band_path(path: KernelPath, window: Option<usize>, multiple: usize) -> KernelPath {
    let mma = matches!(path, KernelPath::Mma | KernelPath::MmaAtomicDq);
    match window {
        Some(w) if mma && w % multiple == 0 && w <= 64 => KernelPath::MmaBand,
        _ => path,
    }
}

/// Fails with every failure of a kernel check listed.
pub fn assert_no_failures(failures: &[String], tolerance: f32) {
    assert!(
        failures.is_empty(),
        "kernel differs from reference (tolerance {tolerance:e}):\n{}",
        failures.join("\n")
    );
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

/// `(head_dim, window)` of the CI gradient checks.
pub const CASES: &[(usize, Option<usize>)] =
    &[(64, None), (64, Some(16)), (32, Some(3)), (128, None)];

/// Gradient checks over `cases`, a random batch of 6 sequences up to `max_len` each;
/// `expected_path`: the backward kernels that must have run (`None` where no kernel runs,
/// NdArray).
pub fn check_gradients<B: AutodiffBackend + Backend>(
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
        let lengths = random_lengths(&mut rng, max_len, 4);
        let error = compare_gradients::<B>(device, &lengths, head_dim, window, dtype);
        let path = last_backward_kernel_path();
        println!("{dtype:?} head_dim {head_dim} window {window:?} lengths {lengths:?} backward kernel {path:?}: gradient error {error:.2e}");
        let expected_path = expected_path.map(|p| band_path(p, window, 16));
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

/// A tiny ModernBERT's parameter gradients: unpadded (our attention op and its backward)
/// against padded (dense masks, Burn's autodiff), on an uneven padded batch.
pub fn check_model_gradients<B: AutodiffBackend + Backend>(device: &B::Device, tolerance: f32) {
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
