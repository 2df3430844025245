#!/usr/bin/env python3
"""`peft bench train-step`, PyTorch + PEFT side: one AdamW step of the fine-tuning
demo's model (CharLM, tools/charlm.py) with LoRA r=8, alpha=16 on fc1, fc2 and
lm_head, as `peft finetune` trains it: batch 256, AdamW lr 1e-2, weight decay 0.
A step = forward, cross-entropy, backward, optimizer step, zero_grad, loss.item().
Batches are random (context, target) pairs drawn up front (8, cycled)."""
import torch
from torch import nn
from peft import LoraConfig, inject_adapter_in_model

from charlm import CharLM, VOCAB
from worker import Case


def make_case(req):
    batch, r, alpha = req.get("batch", 256), req.get("r", 8), req.get("alpha", 16)
    torch.manual_seed(0)
    model = CharLM(len(VOCAB), req.get("context", 5), req.get("embed", 24), req.get("hidden", 512))
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, target_modules=["fc1", "fc2", "lm_head"]), model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    batches = [(torch.randint(0, len(VOCAB), (batch, model.context)), torch.randint(0, len(VOCAB), (batch,)))
               for _ in range(8)]
    state = {"i": 0}

    def run():
        ctx, tgt = batches[state["i"] % len(batches)]
        state["i"] += 1
        loss = nn.functional.cross_entropy(model(ctx), tgt)
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()

    return Case(run)


if __name__ == "__main__":
    import worker

    worker.standalone(__import__("train_step"), [{"case": "step", "batch": 256}])
