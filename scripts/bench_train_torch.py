#!/usr/bin/env python3
"""Training-step throughput of HF transformers' ModernBertForMaskedLM, to compare with
`modernbert-train` on the same batch shape (issue 6).

    python3 scripts/bench_train_torch.py --config RUN/final/config.json --rows 16 --seq 1024
                                         [--steps 20] [--ours RUN/metrics.jsonl]

Random-init model from our run's config.json (same architecture and vocabulary), bf16
autocast over f32 weights, torch.optim.AdamW (fused), sdpa attention, 30% of tokens masked
with sparse prediction (HF `sparse_prediction=True`: only masked rows go through the head,
as ours). Every row is one 1024-token sequence (HF has no packing); the FLOPs equal ours for
a packed row up to the attention term. Prints tokens/s, and with --ours our median
`tokens_per_s` over the same run's steps (the first 5 steps skipped) and the ratio.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ours")
    args = parser.parse_args()

    config = ModernBertConfig.from_json_file(args.config)
    config.sparse_prediction = True
    config.attention_dropout = 0.1
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(config).cuda().train()
    optim = torch.optim.AdamW(model.parameters(), lr=8e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5, fused=True)
    vocab = config.vocab_size
    tokens = args.rows * args.seq

    def batch():
        ids = torch.randint(5, vocab, (args.rows, args.seq), device="cuda")
        labels = torch.full_like(ids, -100)
        masked = torch.rand(ids.shape, device="cuda") < 0.3
        labels[masked] = ids[masked]
        ids = ids.masked_fill(masked, 4)
        return ids, labels

    def step():
        ids, labels = batch()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    hf = tokens * args.steps / elapsed
    params = sum(p.numel() for p in model.parameters())
    print(f"HF transformers {torch.__version__}: ModernBertForMaskedLM {params/1e6:.1f}M params, "
          f"{args.rows}x{args.seq} tokens/step, bf16 autocast, AdamW, sdpa: {hf:,.0f} tokens/s "
          f"({elapsed/args.steps*1e3:.1f} ms/step, last loss {loss.item():.3f}, "
          f"peak memory {torch.cuda.max_memory_allocated()/2**30:.1f} GiB)")
    if args.ours:
        rates = [r["tokens_per_s"] for r in map(json.loads, open(args.ours)) if "tokens_per_s" in r]
        ours = statistics.median(rates[args.warmup:]) if len(rates) > args.warmup else float("nan")
        print(f"modernbert-train (Cuda bf16): {ours:,.0f} tokens/s (median of {len(rates[args.warmup:])} steps)")
        print(f"ratio ours/HF: {ours/hf:.2f}x (target >= 1.2x)")


if __name__ == "__main__":
    main()
