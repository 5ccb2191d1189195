#!/usr/bin/env python3
"""PyTorch baselines for `attention-bench`: the same shapes (12 heads, head_dim 64, bf16),
global S=512 (B=64) and S=8192 (B=4), and sliding window ±64 at both. Throughput counts
only unmasked query-key pairs: 4 * head_dim FLOPs per pair forward, 14 * head_dim forward +
backward (`--backward`, which also reports the peak memory torch allocated in that pass).

    python3 scripts/bench_attention_torch.py [--iters 100] [--backward]
"""

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

HEADS, HEAD_DIM, WINDOW = 12, 64, 64


def useful_pairs(seq, window):
    if window is None:
        return seq * seq
    i = torch.arange(seq)
    lo = (i - window).clamp(min=0)
    hi = (i + window + 1).clamp(max=seq)
    return int((hi - lo).sum())


def timed(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=100, help="timed passes per shape, as attention-bench")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    args = parser.parse_args()
    flex = torch.compile(flex_attention)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("forward+backward" if args.backward else "forward")
    print("| shape | attention | implementation | ms | useful TFLOP/s | peak GiB |")
    print("|---|---|---|---|---|---|")
    for batch, seq in [(64, 512), (4, 8192)]:
        q, k, v, d_out = (
            torch.randn(batch, HEADS, seq, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=args.backward)
            for _ in range(4)
        )
        for window in [None, WINDOW]:
            per_pair = 14 if args.backward else 4
            flops = per_pair * HEADS * HEAD_DIM * batch * useful_pairs(seq, window)
            runs = {}
            if window is None:
                for name, backend in [("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)]:
                    def run(backend=backend):
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v)
                    runs[name] = run
            def sliding(b, h, q_idx, kv_idx):
                return (q_idx - kv_idx).abs() <= (WINDOW if window is not None else seq)
            mask = create_block_mask(sliding, None, None, seq, seq, device="cuda")
            runs["flex attention"] = lambda: flex(q, k, v, block_mask=mask)
            for name, forward in runs.items():
                def run(forward=forward):
                    out = forward()
                    if args.backward:
                        out.backward(d_out)
                try:
                    torch.cuda.reset_peak_memory_stats()
                    seconds = timed(run, args.iters)
                    peak = torch.cuda.max_memory_allocated() / 2**30
                    kind = "global" if window is None else f"window ±{window}"
                    print(f"| B={batch} S={seq} | {kind} | {name} | {seconds * 1e3:.3f} | {flops / seconds / 1e12:.1f} | {peak:.2f} |")
                except Exception as e:  # a backend missing on this build of torch
                    print(f"| B={batch} S={seq} | {window} | {name} | unavailable: {type(e).__name__}: {e} | |")


if __name__ == "__main__":
    main()
