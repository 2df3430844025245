#!/usr/bin/env python3
"""`peft bench finetune-decoder`, PyTorch + PEFT side: one LoRA SFT optimizer step of a GGUF
decoder (SmolLM2-135M-Instruct) in transformers.

The model: LlamaForCausalLM from the same GGUF file, `from_pretrained(folder, gguf_file=name)`
(transformers dequantizes every weight to float32 with gguf-py), sdpa attention, train mode.
LoRA (get_peft_model): r, alpha, dropout 0 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
down_proj of every block. torch.optim.AdamW over the adapter, weight decay 0.

A step = forward with labels = the input ids (transformers' causal-LM loss over every position:
shift by one, mean over B x (T - 1) targets), backward, optimizer step, zero_grad, loss.item().
The batch: B x T token ids from the same integer hash as the C++ side (batch_ids below), so the
first step's loss can be compared with ours. "gc": model.gradient_checkpointing_enable()
(non-reentrant) before the adapter.

The case's notes carry the first step's loss and the process's peak RSS after loading
(load_peak_rss): the worker resets its high-water mark before each sample, so the process's
whole-run peak is the larger of that and the samples' peaks.
"""
import os

import torch

from worker import Case, peak_rss

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batch_ids(batch, seq, vocab):
    """Fixed pseudo-random token ids in [100, vocab): the same as tools/bench_finetune_decoder.cpp."""
    out = []
    for i in range(batch * seq):
        x = (i * 2654435761 + 12345) % (1 << 32)
        x ^= x >> 13
        out.append(100 + x % (vocab - 100))
    return torch.tensor(out, dtype=torch.int64).view(batch, seq)


def make_case(req):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(os.path.abspath(req["file"]))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    if req.get("gc"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    cfg = LoraConfig(r=int(req.get("r", 16)), lora_alpha=float(req.get("alpha", 32)), lora_dropout=0.0,
                     target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(req.get("lr", 2e-4)), weight_decay=0.0)
    ids = batch_ids(int(req["batch"]), int(req["seq"]), model.config.vocab_size)
    mask = torch.ones_like(ids)
    case = None

    def run():
        loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        v = loss.item()
        case.notes.setdefault("first_loss", v)
        case.notes["last_loss"] = v

    case = Case(run, batch=False)
    case.notes["trainable"] = sum(p.numel() for p in params)
    case.notes["load_peak_rss"] = peak_rss()
    return case


if __name__ == "__main__":
    import sys

    import worker

    # python tools/bench/finetune_decoder.py [--threads N] [--reps N] [--warmup N]
    path = os.path.expanduser("~/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    worker.standalone(__import__("finetune_decoder"),
                      [{"case": "step", "file": path, "batch": 8, "seq": 256},
                       {"case": "step", "file": path, "batch": 8, "seq": 256, "gc": True}],
                      sys.argv[1:] or ["--reps", "2", "--warmup", "1"])
