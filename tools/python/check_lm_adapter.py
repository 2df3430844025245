#!/usr/bin/env python3
"""The adapter `peft finetune` writes loads in Python PEFT and gives our outputs.

Builds the char LM in PyTorch with the C++ module names (tools/bench/charlm.py),
loads the base model `peft pretrain` wrote, loads the adapter folder with
PeftModel.from_pretrained, and compares its logits for fixed random contexts with
the ones peft.cpp computes (`peft logits`), base model and adapter both.

Needs PyTorch and PEFT; not part of the test suite.
Usage: tools/python/check_lm_adapter.py [--peft build/tools/peft]
           [--base out/base.safetensors] [ADAPTER_DIR ...]   (default out/french)
Exit status 0 when every folder matches within --atol.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from charlm import load_base  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peft", default="build/tools/peft")
    ap.add_argument("--base", default="out/base.safetensors")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("adapters", nargs="*", default=["out/french"])
    a = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as d:
        for folder in a.adapters:
            out = os.path.join(d, "logits.safetensors")
            subprocess.run([a.peft, "logits", "--base", a.base, "--adapter", folder, "--out", out, "--n", str(a.n)],
                           check=True, stdout=subprocess.DEVNULL)
            ours = load_file(out)
            model = load_base(a.base).eval()
            with torch.no_grad():
                base_diff = (model(ours["ctx"]) - ours["logits_base"]).abs().max().item()
                pm = PeftModel.from_pretrained(model, folder).eval()
                diff = (pm(ours["ctx"]) - ours["logits"]).abs().max().item()
                lora_effect = (ours["logits"] - ours["logits_base"]).abs().max().item()
            good = diff <= a.atol and base_diff <= a.atol
            ok &= good
            print(f"{'PASS' if good else 'FAIL'} {folder}: {a.n} contexts, max |logit diff| with adapter {diff:.3g}, "
                  f"base {base_diff:.3g} (the adapter moves logits by up to {lora_effect:.3g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
