"""torch on the problems `gemm-bench --json FILE` measured, in the same device call: torch.matmul
for the plain products, torch.addmm for the epilogues (`X·W+R`: beta = 1 with the residual,
`X·W+b`: the bias), `gelu(a) * b` for GeGLU, `F.layer_norm` (no bias) for LayerNorm; prints
one table with ours, Burn's (for the epilogues: our matmul then Burn's add; for GeGLU: Burn's
ops; for LayerNorm: Burn's `LayerNorm`), PyTorch's, and the ratio ours / PyTorch (TFLOP/s, or
GB/s for GeGLU and LayerNorm).

    gemm-bench --backend cuda --json /tmp/gemm.jsonl
    python3 scripts/bench_gemm_torch.py --ours /tmp/gemm.jsonl
"""

import argparse
import json
import time

import torch

# Calls enqueued between two looks at the clock.
GROUP = 20


def timed(run, min_seconds=0.3):
    """Mean wall-clock seconds per call of `run` in a sustained loop: after warm-up, calls are
    enqueued back to back for at least `min_seconds` with one synchronisation at the end, so
    per-call host overhead counts only where it starves the GPU. `gemm-bench` times ours the
    same way."""
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    start, iters = time.perf_counter(), 0
    while iters < GROUP or time.perf_counter() - start < min_seconds:
        for _ in range(GROUP):
            run()
        iters += GROUP
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def throughput(m, k, n, product, dtype):
    """TFLOP/s of the product, or GB/s for GeGLU and LayerNorm."""
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", dtype=dtype, generator=g)
    if product == "geglu":
        x = rand(m, 2 * n)
        seconds = timed(lambda: torch.nn.functional.gelu(x[:, :n]) * x[:, n:])
        return m * 3 * n * x.element_size() / seconds / 1e9
    if product == "layer_norm":
        x, weight = rand(m, n), rand(n)
        seconds = timed(lambda: torch.nn.functional.layer_norm(x, (n,), weight, None, 1e-5))
        return m * 2 * n * x.element_size() / seconds / 1e9
    # The same layouts as ours: for X·W, W is stored [k, n] = [d_in, d_out]; for dY·Wᵀ that
    # same W is [n, k], read transposed; for Xᵀ·dY, X is stored [k, m] = [tokens, d_in].
    if product == "dY·Wᵀ":
        lhs, rhs = rand(m, k), rand(n, k).t()
    elif product == "Xᵀ·dY":
        lhs, rhs = rand(k, m).t(), rand(k, n)
    else:
        lhs, rhs = rand(m, k), rand(k, n)
    if product == "X·W+R":
        residual = rand(m, n)
        seconds = timed(lambda: torch.addmm(residual, lhs, rhs))
    elif product == "X·W+b":
        bias = rand(n)
        seconds = timed(lambda: torch.addmm(bias, lhs, rhs))
    else:
        seconds = timed(lambda: torch.matmul(lhs, rhs))
    return 2 * m * k * n / seconds / 1e12


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ours", required=True, help="JSON lines written by gemm-bench --json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.ours) if line.strip()]
    dtypes = {"bf16": torch.bfloat16, "f16": torch.float16}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    # As gemm-bench does: bring the GPU's clocks up before the first timing.
    warm, square = (torch.randn(s, device="cuda", dtype=torch.bfloat16) for s in ((16384, 2048), (2048, 2048)))
    timed(lambda: warm @ square, min_seconds=2.0)
    print("| model | layer | product | m×k×n | dtype | ours | Burn's | torch | ours / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {}
    for r in rows:
        theirs = throughput(r["m"], r["k"], r["n"], r["product"], dtypes[r["dtype"]])
        unit = "gbps" if r["product"] in ("geglu", "layer_norm") else "tflops"
        ours, burns = r[f"ours_{unit}"], r[f"burn_{unit}"]
        ratio = ours / theirs
        kind = {"X·W": "forward", "dY·Wᵀ": "backward", "Xᵀ·dY": "backward"}.get(r["product"], r["product"])
        worst[kind] = min(worst.get(kind, ratio), ratio)
        shape = f"{r['m']}×{r['n']}" if unit == "gbps" else f"{r['m']}×{r['k']}×{r['n']}"
        print(
            f"| {r['model']} | {r['layer']} | {r['product']} | {shape} | {r['dtype']} "
            f"| {ours:.0f} | {burns:.0f} | {theirs:.0f} | {ratio:.2f} |"
        )
    print("worst ratio ours / torch: " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    print("(TFLOP/s; GeGLU and LayerNorm rows in GB/s)")


if __name__ == "__main__":
    main()
