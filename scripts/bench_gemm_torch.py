"""torch.matmul on the problems `gemm-bench --json FILE` measured, in the same device call;
prints one table with ours, Burn's, PyTorch's TFLOP/s and the ratio ours / PyTorch.

    gemm-bench --backend cuda --json /tmp/gemm.jsonl
    python3 scripts/bench_gemm_torch.py --ours /tmp/gemm.jsonl
"""

import argparse
import json

import torch


def tflops(m, k, n, product, dtype, min_seconds=0.3):
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", dtype=dtype, generator=g)
    # The same layouts as ours: for X·W, W is stored [k, n] = [d_in, d_out]; for dY·Wᵀ that
    # same W is [n, k], read transposed; for Xᵀ·dY, X is stored [k, m] = [tokens, d_in].
    if product == "X·W":
        lhs, rhs = rand(m, k), rand(k, n)
    elif product == "dY·Wᵀ":
        lhs, rhs = rand(m, k), rand(n, k).t()
    else:
        lhs, rhs = rand(k, m).t(), rand(k, n)
    for _ in range(3):
        torch.matmul(lhs, rhs)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters, elapsed = 0, 0.0
    while iters < 5 or elapsed < min_seconds:
        start.record()
        for _ in range(5):
            torch.matmul(lhs, rhs)
        end.record()
        torch.cuda.synchronize()
        elapsed += start.elapsed_time(end) / 1e3
        iters += 5
    return 2 * m * k * n / (elapsed / iters) / 1e12


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ours", required=True, help="JSON lines written by gemm-bench --json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.ours) if line.strip()]
    dtypes = {"bf16": torch.bfloat16, "f16": torch.float16}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| model | layer | product | m×k×n | dtype | ours | Burn's | torch.matmul | ours / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {}
    for r in rows:
        theirs = tflops(r["m"], r["k"], r["n"], r["product"], dtypes[r["dtype"]])
        ratio = r["ours_tflops"] / theirs
        kind = "forward" if r["product"] == "X·W" else "backward"
        worst[kind] = min(worst.get(kind, ratio), ratio)
        print(
            f"| {r['model']} | {r['layer']} | {r['product']} | {r['m']}×{r['k']}×{r['n']} | {r['dtype']} "
            f"| {r['ours_tflops']:.0f} | {r['burn_tflops']:.0f} | {theirs:.0f} | {ratio:.2f} |"
        )
    print("worst ratio ours / torch: " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
