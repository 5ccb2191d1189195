#!/usr/bin/env python3
"""HF transformers baseline for `modernbert bench`: ModernBertModel (sdpa, bf16, random
init from the same base/large configs) on the same documents, then both tables and the
ratio ours / HF.

    modernbert bench --dump-lengths lengths.json [--docs N --long-docs N --quick]
    modernbert bench --backend cuda --dtype bf16 [same options] --json ours.json
    python3 scripts/bench_infer_torch.py --lengths lengths.json --ours ours.json

HF runs the documents in the dumped order (no length sorting: transformers' sdpa path
pads every batch to its longest document), in batches of max_batch_tokens // L documents
(L = 512 or 8192, the set's longest possible length), i.e. 64 and 4 at 32768 tokens.
Throughput counts real tokens only; seconds are the median of the timed passes (as many
as `modernbert bench --repeats` wrote into the lengths file, 3 by default). Memory is
torch.cuda.max_memory_reserved() over the timed passes (weights included), the analogue of
our allocator's reserved bytes. A warm-up pass over every 8th batch comes first.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import ModernBertConfig, ModernBertModel

SIZES = {
    "base": dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12),
    "large": dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16),
}


def batches(lengths, batch_size):
    return [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]


def run(model, docs, batch_size, device, vocab, seed, repeats):
    """Median seconds of `repeats` timed passes over `docs` (after a warm-up pass over every
    8th batch), and the peak reserved memory over them."""
    gen = torch.Generator().manual_seed(seed)
    prepared = []
    for lens in batches(docs, batch_size):
        width = max(lens)
        ids = torch.randint(0, vocab, (len(lens), width), generator=gen)
        mask = (torch.arange(width)[None, :] < torch.tensor(lens)[:, None]).long()
        prepared.append((ids, mask))

    def go(items):
        with torch.inference_mode():
            for ids, mask in items:
                model(input_ids=ids.to(device, non_blocking=True), attention_mask=mask.to(device, non_blocking=True))
        torch.cuda.synchronize()

    go(prepared[::8])
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        go(prepared)
        passes.append(time.perf_counter() - start)
    return statistics.median(passes), torch.cuda.max_memory_reserved()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", required=True, help="JSON from `modernbert bench --dump-lengths`")
    ap.add_argument("--ours", help="JSON from `modernbert bench --json`, for the ratio table")
    ap.add_argument("--models", default="base,large")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager)")
    args = ap.parse_args()
    spec = json.load(open(args.lengths))
    max_tokens = spec["max_batch_tokens"]
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {args.attn}, bf16, "
          f"{max_tokens} tokens per batch (padded)")
    print("| model | setting | docs | tokens | batch | seconds | tokens/s | peak reserved (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    hf = {}
    for name in args.models.split(","):
        config = ModernBertConfig(**SIZES[name], max_position_embeddings=8192, attn_implementation=args.attn)
        model = ModernBertModel(config).to(device, torch.bfloat16).eval()
        for s in spec["settings"]:
            setting, lengths = s["setting"], s["lengths"]
            longest = 8192 if "8192" in setting or "4096" in setting else 512
            batch_size = max(1, max_tokens // longest)
            seconds, reserved = run(model, lengths, batch_size, device, config.vocab_size, spec["seed"],
                                    spec.get("repeats", 1))
            tokens = sum(lengths)
            hf[(name, setting)] = tokens / seconds
            print(f"| {name} | {setting} | {len(lengths)} | {tokens} | {batch_size} | {seconds:.2f} | "
                  f"{tokens / seconds:.0f} | {reserved / 2**30:.2f} |", flush=True)
        del model
        torch.cuda.empty_cache()
    if not args.ours:
        return
    ours = json.load(open(args.ours))
    print(f"\nours ({ours['backend']}, {ours['dtype']}) vs HF transformers ({args.attn}, bf16), tokens/s")
    print("| model | setting | ours | HF | ours / HF |")
    print("|---|---|---|---|---|")
    for r in ours["reports"]:
        key = (r["model"], r["setting"])
        if key in hf:
            print(f"| {key[0]} | {key[1]} | {r['tokens_per_second']:.0f} | {hf[key]:.0f} | "
                  f"{r['tokens_per_second'] / hf[key]:.2f}x |")


if __name__ == "__main__":
    main()
