"""Checks that the WordNet job's adapter (a PEFT folder written by peft finetune-embed) loads in
Python PEFT + transformers on the same all-MiniLM-L6-v2 and gives the same sentence embeddings
as `peft embed` with it (max abs difference <= 1e-4). Not a test dependency; needs torch,
transformers and peft:

  python tools/python/check_wordnet_adapter.py --model ~/.cache/peft/all-MiniLM-L6-v2 \\
      --adapter out/wordnet/adapter --texts out/wordnet/heldout.tsv --peft build/tools/peft
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--texts", required=True, help="a TSV (id, query, doc): the first --n queries are embedded")
    ap.add_argument("--peft", required=True)
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    with open(a.texts, encoding="utf-8") as f:
        next(f)
        texts = [line.rstrip("\n").split("\t")[1] for _, line in zip(range(a.n), f)]
    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/texts.txt", "w", encoding="utf-8") as f:
            f.write("\n".join(texts) + "\n")
        subprocess.run([a.peft, "embed", "--model", a.model, "--adapter", a.adapter, "--input", f"{d}/texts.txt",
                        "--out", f"{d}/emb.safetensors"], check=True, stdout=subprocess.DEVNULL)
        ours = load_file(f"{d}/emb.safetensors")["embeddings"]
    tok = AutoTokenizer.from_pretrained(a.model)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(a.model), a.adapter)
    model.eval()
    with torch.no_grad():
        b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
    diff = (e - ours).abs().max().item()
    print(f"{len(texts)} texts: max |PyTorch + PEFT - peft.cpp| = {diff:.2e}")
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main()
