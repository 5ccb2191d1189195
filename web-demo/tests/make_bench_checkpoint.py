"""Writes a base-size (ModernBERT-base shapes, 22 layers, hidden 768, vocab 50368) random-init
ModernBertForMaskedLM checkpoint for timing the browser demo, with the tokenizer of a committed
fixture (its special-token ids are set in the config), and prints a 128-token fill-mask text.

    /work/venv/bin/python web-demo/tests/make_bench_checkpoint.py OUT_DIR
"""

import shutil
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import ModernBertConfig, ModernBertForMaskedLM

FIXTURE = Path(__file__).resolve().parents[2] / "tests/fixtures/mlm_tied_present_f16"
SENTENCE = "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean. "


def text_of_tokens(tokenizer: Tokenizer, count: int) -> str:
    """A text with one [MASK] that encodes to exactly `count` ids with [CLS]/[SEP]."""
    words = ("[MASK] " + SENTENCE * 40).split(" ")
    for n in range(len(words), 0, -1):
        text = " ".join(words[:n])
        if len(tokenizer.encode(text).ids) <= count:
            break
    while len(tokenizer.encode(text).ids) < count:
        text += " a"
    assert len(tokenizer.encode(text).ids) == count, "could not hit the token count"
    return text


def main() -> None:
    out = Path(sys.argv[1])
    tokenizer = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    ids = {t: tokenizer.token_to_id(t) for t in ["[CLS]", "[SEP]", "[PAD]", "[MASK]"]}
    torch.manual_seed(0)
    config = ModernBertConfig(  # base shapes, the defaults; special ids from the tokenizer
        cls_token_id=ids["[CLS]"], bos_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"],
        eos_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"],
    )
    ModernBertForMaskedLM(config).eval().save_pretrained(out)
    shutil.copy(FIXTURE / "tokenizer.json", out / "tokenizer.json")
    print(text_of_tokens(tokenizer, 128))


if __name__ == "__main__":
    main()
