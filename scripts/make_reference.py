#!/usr/bin/env python3
"""Make a full-size random-init ModernBERT checkpoint and HF transformers' outputs for it,
in the fixture format the `parity` binary reads (case.json + expected.safetensors).

    python3 scripts/make_reference.py OUT_DIR [--preset base|large] [--lengths 1024,517]
                                      [--device cuda|cpu]

Float32 throughout, TF32 off, eager attention. Weights are HF's init with LayerNorm weights
and biases perturbed (so no parameter is trivially 1 or 0). Used on the GPU machine by
scripts/gpu-check.sh.
"""

import argparse
import json
from pathlib import Path

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

from safetensors.torch import save_file  # noqa: E402
from transformers import ModernBertConfig, ModernBertForMaskedLM  # noqa: E402

PRESETS = {
    "base": dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12),
    "large": dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16),
}
CLS, SEP, PAD = 50281, 50282, 50283


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--preset", default="base", choices=PRESETS)
    parser.add_argument("--lengths", default="1024,517")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    out = Path(args.out)
    lengths = [int(n) for n in args.lengths.split(",")]

    torch.manual_seed(0)
    config = ModernBertConfig(**PRESETS[args.preset], vocab_size=50368, max_position_embeddings=8192)
    model = ModernBertForMaskedLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)

    seq = max(lengths)
    ids = torch.full((len(lengths), seq), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(5, 50280, (n,))
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        mask[b, :n] = 1

    model = ModernBertForMaskedLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
    model = model.to(args.device).eval()
    with torch.no_grad():
        hidden = model.model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device)).last_hidden_state
        logits = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device)).logits
    save_file(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "last_hidden_state": hidden.float().cpu().contiguous(),
            "logits": logits.float().cpu().contiguous(),
        },
        out / "expected.safetensors",
    )
    (out / "case.json").write_text(json.dumps({
        "task": "masked_lm",
        "description": f"random-init ModernBERT-{args.preset}, lengths {lengths}, HF on {args.device} f32",
    }))
    print(f"wrote {out}: {args.preset}, lengths {lengths}, HF on {args.device}")


if __name__ == "__main__":
    main()
