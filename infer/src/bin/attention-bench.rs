//! `attention-bench [--backend cuda|wgpu|ndarray] [--dtype bf16|f16|f32] [--iters N]
//! [--backward]`: times our variable-length flash attention on ModernBERT's shapes (12 heads,
//! head_dim 64) and prints a table. Throughput counts only the query-key pairs that the
//! mask lets through: 4 · head_dim FLOPs per pair forward (QKᵀ, PV), 14 · head_dim forward
//! plus backward (the backward recomputes QKᵀ and computes dP, dV, dQ, dK: 2.5× the
//! forward, the convention FlashAttention and PyTorch benchmarks use).
//! The `kernel` column says which of our kernels ran (`MODERNBERT_ATTENTION_PATH=plain`
//! forces the plain ones); with `--backward` it reads `forward / backward`.
//!
//! With `--backward` every shape is timed twice (the `via` column):
//! - `op`: the forward and then the backward for a given output gradient dO, through the
//!   extension's ops on the plain backend: the work PyTorch's `out.backward(dO)` launches;
//! - `autodiff`: under `Autodiff<B>`, `sum(out ∘ dO).backward()`, as training runs it (the
//!   product, the sum and their gradients come on top);
//! - `seed only`: that product, sum and gradient alone, on a tracked tensor of the output's
//!   shape (no attention): what `autodiff` pays on top of `op` to start the backward from dO.
//!
//! The table also gives the memory the device pool holds after the pass, and a last row runs
//! the decomposed reference (dense scores) at B=1 S=8192 for comparison.
//! `scripts/bench_attention_torch.py [--backward]` prints PyTorch's figures for the same
//! shapes.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use modernbert_infer::{with_backend, BackendKind, DeviceMemory, Dtype};
use modernbert_kernels::attention::reference::varlen_attention_reference;
use modernbert_kernels::{
    last_backward_kernel_path, last_kernel_path, varlen_attention, Backend, CuSeqlens, KernelPath,
    VarlenAttentionOptions, VarlenMeta,
};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum, default_value_t = BackendKind::Cuda)]
    backend: BackendKind,
    /// Float type of q, k, v (the backend's float type).
    #[arg(long, value_enum, default_value_t = Dtype::Bf16)]
    dtype: Dtype,
    /// Timed iterations per shape (after 3 warm-up runs). The timed loop has a fixed cost
    /// (it starts on an idle GPU and ends with a sync), 0.2–0.4 ms on Cuda, which the mean
    /// spreads over the passes: at 100 it adds 2–4 µs to a 0.1 ms forward (BENCHMARKS.md,
    /// session 17).
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Time forward + backward (under Autodiff) instead of the forward alone.
    #[arg(long)]
    backward: bool,
}

/// Query-key pairs a window of ±`window` (or none) lets through in a sequence of `len`.
fn useful_pairs(len: usize, window: Option<usize>) -> f64 {
    let Some(w) = window else {
        return (len * len) as f64;
    };
    (0..len)
        .map(|i| (i.saturating_sub(w)..(i + w + 1).min(len)).len() as f64)
        .sum()
}

/// Mean seconds of `run` over `iters` calls after 3 warm-up calls.
fn time<B: Backend>(device: &B::Device, iters: usize, run: impl Fn() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        run()?;
    }
    B::sync(device)?;
    let start = Instant::now();
    for _ in 0..iters {
        run()?;
    }
    B::sync(device)?;
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

fn kernel_name(path: Option<KernelPath>) -> &'static str {
    match path {
        Some(KernelPath::Mma) => "mma",
        Some(KernelPath::MmaBand) => "mma band",
        Some(KernelPath::MmaAtomicDq) => "mma, atomic dQ",
        Some(KernelPath::TensorCore) => "cmma",
        Some(KernelPath::Plain) => "plain",
        None => "reference",
    }
}

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.2}", b as f64 / (1u64 << 30) as f64)
    })
}

/// The op's arguments for sequences `cu` with the default scale, 1/√head_dim.
fn meta<B: Backend>(cu: &CuSeqlens<B>, window: Option<usize>, head_dim: usize) -> VarlenMeta<'_> {
    VarlenMeta {
        offsets: cu.offsets(),
        max_seqlen: cu.max_seqlen(),
        window,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

/// One forward and the backward for the output gradient `d_out` through the extension's
/// ops: what PyTorch's `out.backward(dO)` launches, with no graph around the op.
fn op_forward_backward<B: Backend>(
    [q, k, v, d_out]: &[Tensor<B, 3>; 4],
    cu: &CuSeqlens<B>,
    window: Option<usize>,
) {
    let meta = meta(cu, window, q.dims()[2]);
    let float = |t: &Tensor<B, 3>| t.clone().into_primitive().tensor();
    let (out, lse) = B::varlen_attention(
        float(q),
        float(k),
        float(v),
        cu.tensor().into_primitive(),
        &meta,
    );
    B::varlen_attention_backward(
        float(q),
        float(k),
        float(v),
        out,
        lse,
        float(d_out),
        cu.tensor().into_primitive(),
        &meta,
    );
}

/// One forward + backward of `sum(out ∘ dO)` under autodiff, through our op or the
/// decomposed reference.
fn forward_backward<B: Backend + burn::tensor::backend::AutodiffBackend>(
    [q, k, v, d_out]: &[Tensor<B, 3>; 4],
    cu: &CuSeqlens<B>,
    window: Option<usize>,
    reference: bool,
) -> Result<()> {
    let [q, k, v] = [q, k, v].map(|t| t.clone().require_grad());
    let out = if reference {
        let meta = meta(cu, window, q.dims()[2]);
        varlen_attention_reference(q.clone(), k.clone(), v.clone(), &meta).0
    } else {
        let options = VarlenAttentionOptions {
            window,
            scale: None,
        };
        varlen_attention(q.clone(), k.clone(), v.clone(), cu, options)?.out
    };
    let grads = (out * d_out.clone()).sum().backward();
    for t in [&q, &k, &v] {
        t.grad(&grads).context("missing gradient")?;
    }
    Ok(())
}

/// `sum(out ∘ dO).backward()` for a tracked `out` alone: the start of [`forward_backward`]'s
/// backward without the attention.
fn seed<B: Backend + burn::tensor::backend::AutodiffBackend>(
    out: &Tensor<B, 3>,
    d_out: &Tensor<B, 3>,
) -> Result<()> {
    let out = out.clone().require_grad();
    let grads = (out.clone() * d_out.clone()).sum().backward();
    out.grad(&grads).context("missing gradient")?;
    Ok(())
}

fn bench<B: Backend + DeviceMemory>(args: &Args, device: B::Device) -> Result<()> {
    let dtype = args.dtype;
    let (heads, head_dim) = (12, 64);
    let pass = if args.backward {
        "forward+backward"
    } else {
        "forward"
    };
    println!("{pass}");
    println!("| shape | attention | via | dtype | kernel | ms | useful TFLOP/s | pool GiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut shapes = vec![
        (64usize, 512usize, None),
        (64, 512, Some(64)),
        (4, 8192, None),
        (4, 8192, Some(64)),
    ];
    if args.backward {
        shapes.push((1, 8192, None));
    }
    for (i, &(batch, seq, window)) in shapes.iter().enumerate() {
        // The extra last row of the backward table is the decomposed reference.
        let reference = args.backward && i == 4;
        let total = batch * seq;
        let random =
            || Tensor::<B, 3>::random([total, heads, head_dim], Distribution::Default, &device);
        let inputs = [random(), random(), random(), random()];
        let cu = CuSeqlens::<B>::from_lengths(&vec![seq; batch], &device).context("cu_seqlens")?;
        let per_pair = if args.backward { 14.0 } else { 4.0 };
        let flops = per_pair * (heads * head_dim) as f64 * batch as f64 * useful_pairs(seq, window);
        let kind = window.map_or("global".to_string(), |w| format!("window ±{w}"));
        // `attention`: whether the timed pass ran attention (the seed alone does not, and has
        // neither a kernel nor useful FLOPs).
        let report = |via: &str, seconds: f64, attention: bool| {
            let tflops = if attention {
                format!("{:.1}", flops / seconds / 1e12)
            } else {
                "–".to_string()
            };
            let kernel = if !attention {
                "–".to_string()
            } else if reference {
                "decomposed reference".to_string()
            } else if args.backward {
                format!(
                    "{} / {}",
                    kernel_name(last_kernel_path()),
                    kernel_name(last_backward_kernel_path())
                )
            } else {
                kernel_name(last_kernel_path()).to_string()
            };
            println!(
                "| B={batch} S={seq} | {kind} | {via} | {dtype} | {kernel} | {:.3} | {tflops} | {} |",
                seconds * 1e3,
                gib(B::reserved_bytes(&device)),
            );
        };
        if !args.backward {
            let [q, k, v, _] = &inputs;
            let options = VarlenAttentionOptions {
                window,
                scale: None,
            };
            let seconds = time::<B>(&device, args.iters, || {
                varlen_attention(q.clone(), k.clone(), v.clone(), &cu, options)?;
                Ok(())
            })?;
            report("op", seconds, true);
            continue;
        }
        if !reference {
            let seconds = time::<B>(&device, args.iters, || {
                op_forward_backward(&inputs, &cu, window);
                Ok(())
            })?;
            report("op", seconds, true);
        }
        type AD<B> = Autodiff<B>;
        let inputs = inputs.map(Tensor::<AD<B>, 3>::from_inner);
        let cu =
            CuSeqlens::<AD<B>>::from_lengths(&vec![seq; batch], &device).context("cu_seqlens")?;
        let seconds = time::<B>(&device, args.iters, || {
            forward_backward(&inputs, &cu, window, reference)
        })?;
        report("autodiff", seconds, true);
        if !reference {
            let [out, _, _, d_out] = &inputs;
            let seconds = time::<B>(&device, args.iters, || seed(out, d_out))?;
            report("seed only", seconds, false);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    with_backend!(args.backend, args.dtype, |B, device| bench::<B>(
        &args, device
    ))
}
