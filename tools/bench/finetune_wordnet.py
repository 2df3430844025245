#!/usr/bin/env python3
"""The WordNet definition-search fine-tune (`peft finetune-embed`, issue #18) in PyTorch +
transformers + PEFT, timed per step, next to ours.

Same data (the train.tsv / heldout.tsv `peft wordnet-pairs` writes), same recipe: the real
all-MiniLM-L6-v2 in train mode (its dropout 0.1 on), LoRA r=8, alpha=16, dropout 0 on query,
key, value, dense (inject_adapter_in_model), mean pooling + L2 normalisation, in-batch
negatives cross-entropy on 20 * cosine, AdamW lr 1e-3, weight decay 0.01, 20 warm-up steps
then cosine decay, batch 64, queries truncated at 48 tokens and docs at 16, padded to the
longest in the batch. Batches are drawn in a seeded order (another generator than ours: not
bit-identical training). Then both report recall@1 / recall@10 of the held-out queries
against all held-out docs.

With --peft PATH it also runs `peft finetune-embed` with the same settings and reads its
median time per step from report.json; the two runs alternate --rounds times (default 1).

  /work/venv-torch/bin/python tools/bench/finetune_wordnet.py --model ~/.cache/peft/all-MiniLM-L6-v2 \\
      --data out/wordnet --steps 200 --peft build/tools/peft
"""
import argparse
import json
import math
import os
import random
import statistics
import subprocess
import tempfile
import time

import torch
from peft import LoraConfig, inject_adapter_in_model
from transformers import AutoModel, AutoTokenizer


def read_pairs(path):
    out = []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            i, q, d = line.rstrip("\n").split("\t")
            out.append((q, d))
    return out


def lr_at(step, base, warmup, total):
    """nn/optim.cpp warmup_cosine_multiplier (min ratio 0)."""
    if step < warmup:
        return base * step / max(1, warmup)
    p = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return base * 0.5 * (1 + math.cos(math.pi * p))


def embed(model, tok, texts, max_len):
    b = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    h = model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, p=2, dim=1)


@torch.no_grad()
def recall(model, tok, held):
    model.eval()
    qs = torch.cat([embed(model, tok, [q for q, _ in held[i:i + 128]], 48) for i in range(0, len(held), 128)])
    ds = torch.cat([embed(model, tok, [d for _, d in held[i:i + 256]], 16) for i in range(0, len(held), 256)])
    top = (qs @ ds.T).topk(10, dim=1).indices
    docs = [d for _, d in held]
    r1 = sum(docs[int(top[i, 0])] == docs[i] for i in range(len(held))) / len(held)
    r10 = sum(any(docs[int(j)] == docs[i] for j in top[i]) for i in range(len(held))) / len(held)
    model.train()
    return r1, r10


def run_torch(a, train, held):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModel.from_pretrained(a.model, attn_implementation="sdpa")
    base = recall(model, tok, held) if a.eval else (float("nan"), float("nan"))
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                       target_modules=["query", "key", "value", "dense"]), model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    model.train()
    order = list(range(len(train)))
    random.Random(a.seed).shuffle(order)
    labels = torch.arange(a.batch)
    times, losses = [], []
    for s in range(a.steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(s, a.lr, 20, a.steps)
        idx = order[(s * a.batch) % len(order):][:a.batch]
        if len(idx) < a.batch:
            idx += order[:a.batch - len(idx)]
        q = embed(model, tok, [train[i][0] for i in idx], 48)
        d = embed(model, tok, [train[i][1] for i in idx], 16)
        loss = torch.nn.functional.cross_entropy(20.0 * q @ d.T, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    tuned = recall(model, tok, held) if a.eval else (float("nan"), float("nan"))
    return statistics.median(times), base, tuned, losses[-1]


def run_ours(a):
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([a.peft, "finetune-embed", "--model", a.model, "--train", f"{a.data}/train.tsv",
                        "--heldout", f"{a.data}/heldout.tsv", "--out", d, "--steps", str(a.steps),
                        "--batch", str(a.batch), "--lr", str(a.lr), "--checkpoint-every", "0",
                        "--examples", "0"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.load(open(f"{d}/report.json"))
    return r["seconds_per_step_median"], (r["recall_at_1_base"], r["recall_at_10_base"]), \
        (r["recall_at_1_tuned"], r["recall_at_10_tuned"]), r["final_loss"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder with train.tsv and heldout.tsv")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-eval", dest="eval", action="store_false", help="time only (no recall)")
    ap.add_argument("--peft", help="path to the peft program: run ours too, alternating")
    a = ap.parse_args()
    train, held = read_pairs(f"{a.data}/train.tsv"), read_pairs(f"{a.data}/heldout.tsv")
    ours, theirs = [], []
    for r in range(a.rounds):
        if a.peft:
            ours.append(run_ours(a))
            print(f"round {r + 1}: peft.cpp  {ours[-1][0] * 1e3:8.0f} ms/step  recall@1 {ours[-1][1][0]:.3f} -> "
                  f"{ours[-1][2][0]:.3f}  @10 {ours[-1][1][1]:.3f} -> {ours[-1][2][1]:.3f}", flush=True)
        theirs.append(run_torch(a, train, held))
        print(f"round {r + 1}: PyTorch   {theirs[-1][0] * 1e3:8.0f} ms/step  recall@1 {theirs[-1][1][0]:.3f} -> "
              f"{theirs[-1][2][0]:.3f}  @10 {theirs[-1][1][1]:.3f} -> {theirs[-1][2][1]:.3f}", flush=True)
    t = statistics.median(x[0] for x in theirs)
    print(f"\nPyTorch {torch.__version__.split('+')[0]} + transformers + PEFT, {a.threads} threads, {a.steps} steps, "
          f"batch {a.batch}: median {t * 1e3:.0f} ms/step")
    if ours:
        o = statistics.median(x[0] for x in ours)
        print(f"peft.cpp: median {o * 1e3:.0f} ms/step; ratio peft.cpp / PyTorch = {o / t:.2f}")


if __name__ == "__main__":
    main()
