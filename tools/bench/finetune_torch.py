#!/usr/bin/env python3
"""The `peft finetune` job in PyTorch + PEFT, timed per step, next to ours (#7).

Same model (tools/bench/charlm.py = tools/charlm.{h,cpp}: context 5, embed 24,
hidden 512, 46 tokens) loaded from the `peft pretrain` file, same data pipeline
(word list -> (context, next) examples, 10% held out, random batches with
replacement), LoRA r=8, alpha=16, dropout 0 on fc1, fc2, lm_head
(inject_adapter_in_model, as peft finetune), AdamW lr 1e-2, weight decay 0, the
same warmup (steps/20) + cosine schedule down to 5%, batch 256.

With --peft PATH it also runs `peft finetune` with the same settings (into a
temporary folder) and reads its time per step from report.json, alternating
ours / PyTorch --rounds times (default 3) and reporting the median of each, so
both numbers come from the same minutes of the same machine and drift (a shared
VM's neighbours) hits both. Not bit-identical training: the
word shuffle and the batch draws use different generators.

  PEFT_BENCH_PYTHON=/opt/torchenv/bin/python
  $PEFT_BENCH_PYTHON tools/bench/finetune_torch.py --base out/base.safetensors \\
      --data /usr/share/dict/french --steps 400 --peft build/tools/peft
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn
from peft import LoraConfig, inject_adapter_in_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from charlm import load_base, load_words, make_examples  # noqa: E402


def lr_at(step, base, warmup, total, min_ratio=0.05):
    """nn/optim.cpp warmup_cosine_multiplier."""
    if step < warmup:
        return base * step / max(1, warmup)
    p = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return base * max(min_ratio, 0.5 * (1 + math.cos(math.pi * p)))


def run_torch(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = load_base(a.base)
    words = load_words(a.data)
    random.Random(1).shuffle(words)
    nh = max(1, int(len(words) * 0.1))
    ctx, tgt = make_examples(words[nh:], model.context)
    hctx, htgt = make_examples(words[:nh], model.context)
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                       target_modules=["fc1", "fc2", "lm_head"]), model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed)
    model.train()
    warmup = a.steps // 20
    t0 = time.perf_counter()
    for s in range(a.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(s, a.lr, warmup, a.steps)
        idx = torch.randint(0, len(tgt), (a.batch,), generator=g)
        loss = nn.functional.cross_entropy(model(ctx[idx]), tgt[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        held = nn.functional.cross_entropy(model(hctx), htgt).item()
    return seconds, held, len(words) - nh


def run_ours(a):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "adapter")
        env = dict(os.environ, PEFT_NUM_THREADS=str(a.threads))
        subprocess.run([a.peft, "finetune", "--base", a.base, "--data", a.data, "--out", out, "--steps",
                        str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr), "--seed", str(a.seed)],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(out, "report.json")) as f:
            r = json.load(f)
    return r["train_seconds"], r["heldout_loss_tuned"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="out/base.safetensors")
    ap.add_argument("--data", default="/usr/share/dict/french")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peft", help="the peft program: also run `peft finetune` and compare")
    ap.add_argument("--rounds", type=int, default=3, help="alternations ours / PyTorch (medians reported)")
    a = ap.parse_args()
    ours, theirs = [], []
    for _ in range(max(1, a.rounds)):
        if a.peft:
            ours.append(run_ours(a))
        theirs.append(run_torch(a))
    median = lambda v: sorted(v)[len(v) // 2]
    rows = []
    if ours:
        rows.append(("peft.cpp (peft finetune)", median([s for s, _ in ours]), ours[-1][1]))
    n = theirs[-1][2]
    rows.append((f"PyTorch {torch.__version__.split('+')[0]} + PEFT", median([s for s, _, _ in theirs]), theirs[-1][1]))
    print(f"fine-tuning job: {a.steps} steps, batch {a.batch}, {n} training words of {a.data}, "
          f"threads {a.threads}, median of {len(theirs)} alternating runs each")
    print(f"{'':34s} {'ms/step':>9s} {'total s':>8s} {'held-out loss':>14s}")
    for name, s, held in rows:
        print(f"{name:34s} {s / a.steps * 1e3:9.2f} {s:8.2f} {held:14.4f}")
    if len(rows) == 2:
        r = rows[1][1] / rows[0][1]
        print(f"peft.cpp is {r:.2f}x faster per step" if r >= 1 else f"peft.cpp is {1 / r:.2f}x slower per step")


if __name__ == "__main__":
    main()
