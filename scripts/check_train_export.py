#!/usr/bin/env python3
"""Load a `modernbert-train` HF export with transformers and write its outputs as a parity
case, so that the `parity` binary can compare our model with transformers on it.

    python3 scripts/check_train_export.py EXPORT_DIR CASE_DIR [--device cuda|cpu]

Checks that ModernBertForMaskedLM.from_pretrained reports no missing or unexpected keys and
that the exported tokenizer.json loads; tokenizes a few held-out sentences with it (with
[CLS]/[SEP]), and writes CASE_DIR = the export + case.json + expected.safetensors (f32,
eager attention, TF32 off). Then: parity CASE_DIR --backend cuda --tolerance 1e-4.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import ModernBertForMaskedLM  # noqa: E402

TEXTS = [
    "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean.",
    "In 1999 , the band released its second album , which reached number one in the charts .",
    "The city lies on the river and has a population of about 100 @,@ 000 people .",
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("export")
    parser.add_argument("case")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    export, case = Path(args.export), Path(args.case)

    model, info = ModernBertForMaskedLM.from_pretrained(
        export, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, f"transformers loading problems: {bad}"
    print(f"transformers loaded {export}: no missing or unexpected keys")

    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    pad = model.config.pad_token_id
    encoded = [tokenizer.encode(t).ids for t in TEXTS]
    assert all(ids[0] == model.config.cls_token_id and ids[-1] == model.config.sep_token_id for ids in encoded), \
        "tokenizer.json does not add [CLS] ... [SEP] with the config's ids"
    seq = max(map(len, encoded))
    ids = torch.full((len(encoded), seq), pad, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(encoded):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1

    model = model.to(args.device).eval()
    with torch.no_grad():
        out = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device), output_hidden_states=True)
    if case.exists():
        shutil.rmtree(case)
    shutil.copytree(export, case)
    save_file(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "last_hidden_state": out.hidden_states[-1].float().cpu().contiguous(),
            "logits": out.logits.float().cpu().contiguous(),
        },
        case / "expected.safetensors",
    )
    (case / "case.json").write_text(json.dumps({"task": "masked_lm", "description": f"modernbert-train export {export}"}))
    top = out.logits[0].argmax(-1)[1:-1].tolist()
    print("HF top-1 for text 0:", repr(tokenizer.decode(top)))
    print(f"wrote {case}: {len(encoded)} texts, up to {seq} tokens")


if __name__ == "__main__":
    main()
