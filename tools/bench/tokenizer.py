#!/usr/bin/env python3
"""`peft bench tokenizer`, Python side: the Rust `tokenizers` library's encode_batch on one
thread (TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1) over the lines of the corpus
`peft bench tokenizer` writes, special tokens added, no padding or truncation."""
import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

from tokenizers import Tokenizer  # noqa: E402

from worker import Case  # noqa: E402


def make_case(req):
    tok = Tokenizer.from_file(req["file"])
    tok.no_padding()
    tok.no_truncation()
    with open(req["text"], encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line]

    def run():
        tok.encode_batch(lines, add_special_tokens=True)

    return Case(run, batch=False)
