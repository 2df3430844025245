#!/usr/bin/env python3
"""C++ save -> Python PEFT load -> same outputs.

For every golden case (tests/data/peft/<case>), `peft export` writes the case's
adapters with peft.cpp's save_pretrained; this script rebuilds the host model in
PyTorch, loads base.safetensors, loads our folder with
PeftModel.from_pretrained (+ load_adapter for further adapters) and compares the
output of each adapter with the one PEFT recorded in io.safetensors.

Needs PyTorch and PEFT (pip install torch peft); not part of the test suite.
Usage: tools/python/check_python_roundtrip.py [--peft build/tools/peft] [CASE_DIR ...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from torch import nn
from safetensors.torch import load_file
from peft import PeftModel


class Dummy(nn.Module):
    def __init__(self, V, D):
        super().__init__()
        self.embedding = nn.Embedding(V, D)
        self.linear = nn.Linear(D, D)
        self.lm_head = nn.Linear(D, V)

    def forward(self, x):
        return self.lm_head(self.linear(self.embedding(x)))


class MLP(nn.Module):
    def __init__(self, **s):
        super().__init__()
        self.lin0 = nn.Linear(s["in"], s["hidden"])
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.0)
        self.lin1 = nn.Linear(s["hidden"], s["hidden"])
        self.lin2 = nn.Linear(s["hidden"], s["out"])

    def forward(self, x):
        return self.lin2(self.relu(self.lin1(self.drop(self.relu(self.lin0(x))))))


class Attn(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.o_proj = nn.Linear(D, D, bias=False)


class FF(nn.Module):
    def __init__(self, D, F):
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(D, F), nn.Linear(F, D)


class Block(nn.Module):
    def __init__(self, D, F):
        super().__init__()
        self.attn, self.mlp = Attn(D), FF(D, F)

    def forward(self, h):
        a = self.attn
        h = h + a.o_proj(torch.relu(a.q_proj(h)) * a.k_proj(h) + a.v_proj(h))
        return h + self.mlp.down_proj(torch.relu(self.mlp.up_proj(h)))


class Deep(nn.Module):
    def __init__(self, V, D, F, L):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Block(D, F) for _ in range(L)])
        self.lm_head = nn.Linear(D, V, bias=False)

    def forward(self, x):
        h = self.emb(x)
        for b in self.layers:
            h = b(h)
        return self.lm_head(h)


def build(arch, spec):
    if arch == "dummy":
        return Dummy(spec["V"], spec["D"])
    if arch == "mlp":
        return MLP(**spec)
    return Deep(spec["V"], spec["D"], spec["F"], spec["L"])


def check_case(peft_bin, case_dir):
    meta = json.load(open(os.path.join(case_dir, "case.json")))
    io = load_file(os.path.join(case_dir, "io.safetensors"))
    names = [a["name"] for a in meta["adapters"]]
    if not all(f"{n}.output" in io for n in names):
        return None
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([peft_bin, "export", case_dir, out], check=True, capture_output=True)
        model = build(meta["arch"], meta["arch_spec"])
        model.load_state_dict(load_file(os.path.join(case_dir, "base.safetensors")))
        pm = None
        worst = 0.0
        for n in names:
            sub = out if n == "default" else os.path.join(out, n)
            if pm is None:
                pm = PeftModel.from_pretrained(model, sub, adapter_name=n)
            else:
                pm.load_adapter(sub, adapter_name=n)
            pm.set_adapter(n)
            pm.eval()
            with torch.no_grad():
                y = pm(io["input"])
            want = io[f"{n}.output"]
            err = (y - want).abs().max().item()
            tol = 1e-5 + 1e-4 * want.abs().max().item()
            worst = max(worst, err)
            if err > tol:
                return f"FAIL {os.path.basename(case_dir)} {n} max-abs-err {err:.3g} > {tol:.3g}"
        return f"PASS {os.path.basename(case_dir)} {','.join(names)} max-abs-err {worst:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peft", default="build/tools/peft")
    ap.add_argument("cases", nargs="*")
    args = ap.parse_args()
    cases = args.cases or sorted(
        os.path.join("tests/data/peft", c) for c in os.listdir("tests/data/peft")
        if os.path.isdir(os.path.join("tests/data/peft", c)))
    passed = failed = skipped = 0
    for c in cases:
        try:
            line = check_case(args.peft, c)
        except Exception as e:  # report and go on with the next case
            line = f"FAIL {os.path.basename(c)} {type(e).__name__}: {e}"
        if line is None:
            skipped += 1
            print(f"SKIP {os.path.basename(c)} (no per-adapter outputs recorded)")
            continue
        print(line)
        passed += line.startswith("PASS")
        failed += line.startswith("FAIL")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
