//! `attention-bench [--backend cuda|wgpu|ndarray] [--dtype bf16|f16|f32] [--iters N]`:
//! times our variable-length flash-attention forward on ModernBERT's shapes (12 heads,
//! head_dim 64) and prints a table. Throughput counts only the query-key pairs that the
//! mask lets through (useful FLOPs: 4 · head_dim per pair, for QKᵀ and PV).
//! The `kernel` column says which of our kernels ran (`MODERNBERT_ATTENTION_PATH=plain`
//! forces the plain one). `scripts/bench_attention_torch.py` prints PyTorch's figures for
//! the same shapes.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::{DType, Distribution, Tensor};
use clap::Parser;
use modernbert_infer::{with_backend, BackendKind};
use modernbert_kernels::{
    last_kernel_path, varlen_attention, Backend, CuSeqlens, KernelPath, VarlenAttentionOptions,
};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum, default_value_t = BackendKind::Cuda)]
    backend: BackendKind,
    /// bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Timed iterations per shape (after 3 warm-up runs).
    #[arg(long, default_value_t = 20)]
    iters: usize,
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

fn bench<B: Backend>(args: &Args, device: B::Device) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => bail!("unknown dtype {other:?}; expected bf16, f16 or f32"),
    };
    let (heads, head_dim) = (12, 64);
    println!("| shape | attention | dtype | kernel | ms | useful TFLOP/s |");
    println!("|---|---|---|---|---|---|");
    for (batch, seq) in [(64usize, 512usize), (4, 8192)] {
        for window in [None, Some(64)] {
            let cu =
                CuSeqlens::<B>::from_lengths(&vec![seq; batch], &device).context("cu_seqlens")?;
            let total = batch * seq;
            let random = || {
                Tensor::<B, 3>::random([total, heads, head_dim], Distribution::Default, &device)
                    .cast(dtype)
            };
            let (q, k, v) = (random(), random(), random());
            let options = VarlenAttentionOptions {
                window,
                scale: None,
            };
            let run =
                || varlen_attention(q.clone(), k.clone(), v.clone(), &cu, options).map(|o| o.out);
            for _ in 0..3 {
                run()?;
            }
            B::sync(&device)?;
            let start = Instant::now();
            for _ in 0..args.iters {
                run()?;
            }
            B::sync(&device)?;
            let seconds = start.elapsed().as_secs_f64() / args.iters as f64;
            let flops = 4.0 * (heads * head_dim) as f64 * batch as f64 * useful_pairs(seq, window);
            let kind = window.map_or("global".to_string(), |w| format!("window ±{w}"));
            let kernel = match last_kernel_path() {
                Some(KernelPath::TensorCore) => "cmma",
                Some(KernelPath::Plain) => "plain",
                None => "reference",
            };
            println!(
                "| B={batch} S={seq} | {kind} | {:?} | {kernel} | {:.3} | {:.1} |",
                dtype,
                seconds * 1e3,
                flops / seconds / 1e12
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    with_backend!(args.backend, |B, device| bench::<B>(&args, device))
}
