//! `gemm-bench [--backend cuda] [--tokens N] [--json FILE]`: times the dense products of
//! ModernBERT's linear layers (base and large), forward `X·W` and the two backward products
//! `dY·Wᵀ` and `Xᵀ·dY` with their transposed operands read in place, in bf16 and f16, through
//! our matmul (cuBLASLt on Cuda) and through Burn's own, and prints a table. Then the
//! epilogues: a residual add (`X·W + R`, the attention and MLP outputs) and a bias (`X·W + b`,
//! the MLM decoder over 30% of the tokens), fused by `Backend::fused_linear` vs our matmul
//! followed by Burn's add; and GeGLU (`gelu(input)·gate` of base's `Wi` output) as our one
//! kernel vs Burn's ops, and LayerNorm (no bias, over base's hidden size) as our kernel vs
//! Burn's `LayerNorm`, in GB/s moved. Last, `select_rows`'s gradient (the embedding's
//! backward) by index distribution and the MLM cross-entropy, ours vs Burn's ops, in ms.
//! `scripts/bench_gemm_torch.py --ours FILE` times torch on the same problems
//! (`torch.matmul`, `torch.addmm`, `gelu(a)·b`) and prints both with the ratio.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive};
use clap::Parser;
use modernbert_infer::{with_backend, BackendKind};
use modernbert_kernels::Backend;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum, default_value_t = BackendKind::Cuda)]
    backend: BackendKind,
    /// Rows of the activations (tokens in a batch).
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    /// Minimum timed seconds per problem (after warm-up).
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
    /// Also write one JSON object per measurement here (for the PyTorch script).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// A linear layer `[d_in] → [d_out]` of a model size.
struct Layer {
    model: &'static str,
    name: &'static str,
    d_in: usize,
    d_out: usize,
}

const LAYERS: [Layer; 7] = [
    Layer {
        model: "base",
        name: "Wqkv, Wi",
        d_in: 768,
        d_out: 2304,
    },
    Layer {
        model: "base",
        name: "mlp.Wo",
        d_in: 1152,
        d_out: 768,
    },
    Layer {
        model: "base",
        name: "attn.Wo",
        d_in: 768,
        d_out: 768,
    },
    Layer {
        model: "large",
        name: "Wqkv",
        d_in: 1024,
        d_out: 3072,
    },
    Layer {
        model: "large",
        name: "Wi",
        d_in: 1024,
        d_out: 5248,
    },
    Layer {
        model: "large",
        name: "mlp.Wo",
        d_in: 2624,
        d_out: 1024,
    },
    Layer {
        model: "large",
        name: "attn.Wo",
        d_in: 1024,
        d_out: 1024,
    },
];

/// Calls enqueued between two looks at the clock.
const GROUP: usize = 20;

/// Mean wall-clock seconds per call of `run` in a sustained loop: after warm-up, calls are
/// enqueued back to back for at least `min_seconds` with one synchronisation at the end, so
/// per-call host overhead counts only where it starves the GPU (`bench_gemm_torch.py` times
/// torch the same way).
fn time<B: Backend>(device: &B::Device, min_seconds: f64, run: impl Fn()) -> Result<f64> {
    for _ in 0..3 {
        run();
    }
    B::sync(device)?;
    let (start, mut iters) = (Instant::now(), 0usize);
    while iters < GROUP || start.elapsed().as_secs_f64() < min_seconds {
        for _ in 0..GROUP {
            run();
        }
        iters += GROUP;
    }
    B::sync(device)?;
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

/// Seconds of GEMMs run before the first timing: an idle GPU runs at low clocks for a
/// while, which would penalise whichever problem is timed first.
const CLOCK_WARMUP_SECONDS: f64 = 2.0;

fn bench<B: Backend>(args: &Args, device: B::Device) -> Result<()> {
    let mut json = Vec::new();
    let t = args.tokens;
    let warm = Tensor::<B, 2>::random([t, 2048], Distribution::Default, &device).cast(DType::BF16);
    let square =
        Tensor::<B, 2>::random([2048, 2048], Distribution::Default, &device).cast(DType::BF16);
    time::<B>(&device, CLOCK_WARMUP_SECONDS, || {
        let _ = modernbert_kernels::matmul(warm.clone(), square.clone());
    })?;
    println!("| model | layer | product | m×k×n | dtype | ours TFLOP/s | ours host µs/call | Burn's TFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for dtype in [DType::BF16, DType::F16] {
        for layer in &LAYERS {
            let random = |shape: [usize; 2]| {
                Tensor::<B, 2>::random(shape, Distribution::Default, &device).cast(dtype)
            };
            let (x, w, dy) = (
                random([t, layer.d_in]),
                random([layer.d_in, layer.d_out]),
                random([t, layer.d_out]),
            );
            let products = [
                ("X·W", x.clone(), w.clone(), [t, layer.d_in, layer.d_out]),
                (
                    "dY·Wᵀ",
                    dy.clone(),
                    w.clone().transpose(),
                    [t, layer.d_out, layer.d_in],
                ),
                (
                    "Xᵀ·dY",
                    x.clone().transpose(),
                    dy.clone(),
                    [layer.d_in, t, layer.d_out],
                ),
            ];
            for (product, lhs, rhs, [m, k, n]) in products {
                let flops = 2.0 * (m * k * n) as f64;
                let ours = time::<B>(&device, args.seconds, || {
                    let _ = modernbert_kernels::matmul(lhs.clone(), rhs.clone());
                })?;
                let burns = time::<B>(&device, args.seconds, || {
                    let (l, r) = (lhs.clone().into_primitive(), rhs.clone().into_primitive());
                    let _ = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
                        B::float_matmul(l.tensor(), r.tensor()),
                    ));
                })?;
                // Host time to enqueue one of ours (no sync in between): above the GPU
                // time, the GPU starves.
                B::sync(&device)?;
                let start = Instant::now();
                for _ in 0..20 {
                    let _ = modernbert_kernels::matmul(lhs.clone(), rhs.clone());
                }
                let host_us = start.elapsed().as_secs_f64() / 20.0 * 1e6;
                B::sync(&device)?;
                let (ours, burns) = (flops / ours / 1e12, flops / burns / 1e12);
                println!(
                    "| {} | {} | {product} | {m}×{k}×{n} | {dtype:?} | {ours:.0} | {host_us:.0} | {burns:.0} |",
                    layer.model, layer.name
                );
                json.push(serde_json::json!({
                    "model": layer.model, "layer": layer.name, "product": product,
                    "m": m, "k": k, "n": n, "dtype": format!("{dtype:?}").to_lowercase(),
                    "ours_tflops": ours, "ours_host_us": host_us, "burn_tflops": burns,
                }));
            }
        }
    }
    println!();
    println!("| model | layer | product | m×k×n | dtype | fused TFLOP/s | matmul + add TFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    for dtype in [DType::BF16, DType::F16] {
        let random = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Default, &device).cast(dtype)
        };
        let primitive = |x: &Tensor<B, 2>| x.clone().into_primitive().tensor();
        // (layer, product, m, k, n): residual adds of base's two output projections, and
        // the decoder's bias over 30% of the tokens (the masked ones).
        let epilogues = [
            ("attn.Wo", "X·W+R", t, 768, 768),
            ("mlp.Wo", "X·W+R", t, 1152, 768),
            ("decoder", "X·W+b", t * 3 / 10, 768, 50368),
        ];
        for (name, product, m, k, n) in epilogues {
            let (x, w) = (random([m, k]), random([k, n]));
            let residual = (product == "X·W+R").then(|| random([m, n]));
            let bias = (product == "X·W+b").then(|| random([1, n]).reshape([n]));
            let run = |fused: bool| {
                let (b, r) = (
                    bias.as_ref().map(|b| b.clone().into_primitive().tensor()),
                    residual.as_ref().map(primitive),
                );
                if fused {
                    let _ = B::fused_linear(primitive(&x), primitive(&w), b, r);
                } else {
                    let y = B::matmul(primitive(&x), primitive(&w));
                    let y = match b {
                        Some(b) => B::float_add(y, B::float_reshape(b, [1, n].into())),
                        None => y,
                    };
                    let _ = r.map(|r| B::float_add(y, r));
                }
            };
            let fused = time::<B>(&device, args.seconds, || run(true))?;
            let unfused = time::<B>(&device, args.seconds, || run(false))?;
            let flops = 2.0 * (m * k * n) as f64;
            let (fused, unfused) = (flops / fused / 1e12, flops / unfused / 1e12);
            println!("| base | {name} | {product} | {m}×{k}×{n} | {dtype:?} | {fused:.0} | {unfused:.0} |");
            json.push(serde_json::json!({
                "model": "base", "layer": name, "product": product,
                "m": m, "k": k, "n": n, "dtype": format!("{dtype:?}").to_lowercase(),
                "ours_tflops": fused, "burn_tflops": unfused,
            }));
        }
    }
    // GeGLU reads 2I and writes I per row; LayerNorm reads and writes H (2 bytes each).
    let half = 1152;
    bandwidth_table::<B>(
        args,
        &device,
        &mut json,
        ("GeGLU", "mlp", "geglu"),
        [t, half],
        t * 3 * half * 2,
        |dtype| {
            let x =
                Tensor::<B, 2>::random([t, 2 * half], Distribution::Default, &device).cast(dtype);
            let burns = x.clone();
            (
                Box::new(move || drop(B::geglu(x.clone().into_primitive().tensor()))),
                Box::new(move || drop(modernbert_kernels::geglu::geglu_reference(burns.clone()))),
            )
        },
    )?;
    let width = 768;
    bandwidth_table::<B>(
        args,
        &device,
        &mut json,
        ("LayerNorm", "norm", "layer_norm"),
        [t, width],
        t * 2 * width * 2,
        |dtype| {
            let x = Tensor::<B, 2>::random([t, width], Distribution::Default, &device).cast(dtype);
            let gamma = Tensor::<B, 1>::random([width], Distribution::Default, &device).cast(dtype);
            let float = move || {
                let x = x.clone().into_primitive().tensor();
                (x, gamma.clone().into_primitive().tensor())
            };
            let burns = float.clone();
            (
                Box::new(move || {
                    let (x, gamma) = float();
                    drop(B::layer_norm_forward(x, gamma, None, 1e-5));
                }),
                Box::new(move || {
                    let (x, gamma) = burns();
                    drop(B::layer_norm(x, gamma, None, 1e-5));
                }),
            )
        },
    )?;
    select_rows_table::<B>(args, &device)?;
    cross_entropy_table::<B>(args, &device)?;
    if let Some(path) = &args.json {
        let lines: Vec<String> = json.iter().map(|v| v.to_string()).collect();
        std::fs::write(path, lines.join("\n") + "\n")?;
    }
    Ok(())
}

/// Ours against Burn's ops for one memory-bound operation on `[rows, width]`, in bf16 and
/// f16: GB/s over `bytes` moved per call, printed as a table and added to `json`. `setup`
/// makes the two runs (ours, Burn's) on fresh inputs of a dtype.
#[allow(clippy::type_complexity)]
fn bandwidth_table<B: Backend>(
    args: &Args,
    device: &B::Device,
    json: &mut Vec<serde_json::Value>,
    (name, layer, product): (&str, &str, &str),
    [rows, width]: [usize; 2],
    bytes: usize,
    setup: impl Fn(DType) -> (Box<dyn Fn()>, Box<dyn Fn()>),
) -> Result<()> {
    println!();
    println!("| {name} rows × width | dtype | ours GB/s | Burn's GB/s |");
    println!("|---|---|---|---|");
    for dtype in [DType::BF16, DType::F16] {
        let (ours, burns) = setup(dtype);
        let ours = bytes as f64 / time::<B>(device, args.seconds, ours)? / 1e9;
        let burns = bytes as f64 / time::<B>(device, args.seconds, burns)? / 1e9;
        println!("| {rows} × {width} | {dtype:?} | {ours:.0} | {burns:.0} |");
        json.push(serde_json::json!({
            "model": "base", "layer": layer, "product": product,
            "m": rows, "k": 0, "n": width, "dtype": format!("{dtype:?}").to_lowercase(),
            "ours_gbps": ours, "burn_gbps": burns,
        }));
    }
    Ok(())
}

/// `select_rows`'s gradient (the token embedding's and the MLM gather's backward), ours vs
/// Burn's `select_add`, in ms per call: base's vocabulary and width, by index distribution
/// (the cost of our counting sort and of a heavily repeated index such as `[MASK]`).
fn select_rows_table<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    use burn::tensor::{Int, TensorData};
    use modernbert_kernels::select_rows::select_rows_backward_reference;
    let (vocab, width) = (50368, 768);
    println!();
    println!("| select_rows backward: indices | n | ours ms | Burn's ms |");
    println!("|---|---|---|---|");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let cases: [(&str, usize); 5] = [
        ("distinct", 16384),
        ("uniform over the vocabulary", 16384),
        ("MLM-like: 24% one id, Zipf rest", 16384),
        ("MLM-like: 24% one id, Zipf rest", 4096),
        ("MLM-like: 24% one id, Zipf rest", 65536),
    ];
    for (name, n) in cases {
        let ids: Vec<i64> = (0..n as u64)
            .map(|i| match name {
                "distinct" => (i * 3) as i64,
                "uniform over the vocabulary" => next(vocab as u64) as i64,
                // id 4 plays [MASK]; the rest fall on ids ~ 1/rank (a heavy head).
                _ if next(100) < 24 => 4,
                _ => (vocab as f64).powf(next(1 << 20) as f64 / (1 << 20) as f64) as i64,
            })
            .collect();
        let indices = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), device);
        let grad =
            Tensor::<B, 2>::random([n, width], Distribution::Default, device).cast(DType::BF16);
        let ours = {
            let (grad, indices) = (grad.clone(), indices.clone());
            move || {
                let g = grad.clone().into_primitive().tensor();
                drop(B::select_rows_backward(
                    g,
                    indices.clone().into_primitive(),
                    vocab,
                ));
            }
        };
        let burns = move || {
            drop(select_rows_backward_reference(
                grad.clone(),
                indices.clone(),
                vocab,
            ))
        };
        let (ours, burns) = (
            time::<B>(device, args.seconds, ours)?,
            time::<B>(device, args.seconds, burns)?,
        );
        println!("| {name} | {n} | {:.3} | {:.3} |", ours * 1e3, burns * 1e3);
    }
    Ok(())
}

/// The MLM loss over base's vocabulary for the masked rows of a 16 × 1024 batch, forward
/// and gradient, ours vs the plain-ops reference, in ms per call.
fn cross_entropy_table<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    use burn::tensor::{Int, TensorData};
    use modernbert_kernels::cross_entropy::{
        cross_entropy_backward_reference, cross_entropy_reference,
    };
    let (rows, classes) = (4934, 50368);
    let logits =
        Tensor::<B, 2>::random([rows, classes], Distribution::Default, device).cast(DType::BF16);
    let labels: Vec<i64> = (0..rows as i64).map(|i| i * 7 % classes as i64).collect();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [rows]), device);
    let grad = Tensor::<B, 1>::ones([rows], device);
    let ours = {
        let (logits, labels, grad) = (logits.clone(), labels.clone(), grad.clone());
        move || {
            let (x, y) = (
                logits.clone().into_primitive().tensor(),
                labels.clone().into_primitive(),
            );
            let (_, lse, _) = B::cross_entropy(x.clone(), y.clone());
            drop(B::cross_entropy_backward(
                x,
                y,
                lse,
                grad.clone().into_primitive().tensor(),
            ));
        }
    };
    let reference = move || {
        let (_, lse, _) = cross_entropy_reference(logits.clone(), labels.clone());
        drop(cross_entropy_backward_reference(
            logits.clone(),
            labels.clone(),
            lse,
            grad.clone(),
        ));
    };
    let (ours, reference) = (
        time::<B>(device, args.seconds, ours)?,
        time::<B>(device, args.seconds, reference)?,
    );
    println!();
    println!("| cross-entropy fwd + bwd | rows × classes | ours ms | plain ops ms |");
    println!("|---|---|---|---|");
    println!(
        "| bf16 logits | {rows} × {classes} | {:.3} | {:.3} |",
        ours * 1e3,
        reference * 1e3
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    with_backend!(args.backend, |B, device| bench::<B>(&args, device))?;
    match cublaslt_status() {
        Ok(()) => println!("\nours = cuBLASLt (modernbert_kernels::matmul)"),
        Err(reason) => println!("\nWARNING: ours is NOT cuBLASLt: {reason}"),
    }
    Ok(())
}

/// Whether our matmul runs on cuBLASLt in this binary.
fn cublaslt_status() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    return modernbert_kernels::cublaslt_status();
    #[cfg(not(feature = "cuda"))]
    Err("built without the `cuda` feature: no cuBLASLt".into())
}
