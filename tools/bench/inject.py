#!/usr/bin/env python3
"""`peft bench inject`, PyTorch + PEFT side: a Llama-7B-shaped module tree on the
meta device (32 blocks x q,k,v,o 4096->4096, gate,up 4096->11008, down
11008->4096, no bias; embed_tokens and lm_head 32000 x 4096, not targeted), LoRA
r=16 on all seven projections (224 modules, 40M adapter parameters).
Cases: inject (low_cpu_mem_usage=False), inject-low-mem (True), and load
(safetensors.torch.load_file of the adapter file + set_peft_model_state_dict with
low_cpu_mem_usage=True onto a freshly low-mem-injected tree). A fresh tree is built,
untimed, before every sample. notes: peak resident-memory growth during the step."""
import torch
from torch import nn
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

import worker
from worker import Case

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)


class MLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)


class Block(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.self_attn, self.mlp = Attn(d), MLP(d, f)


class Llama(nn.Module):
    def __init__(self, layers=32, d=4096, f=11008, vocab=32000):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d, f) for _ in range(layers)])
        self.lm_head = nn.Linear(d, vocab, bias=False)


def llama_on_meta(layers=32):
    with torch.device("meta"):
        return Llama(layers)


def make_case(req):
    kind, r, layers = req["case"], req.get("r", 16), req.get("layers", 32)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS)
    st = {"model": None, "rss0": 0, "peaks": []}

    def prepare():
        st["model"] = llama_on_meta(layers)
        if kind == "load":
            inject_adapter_in_model(cfg, st["model"], low_cpu_mem_usage=True)
        st["rss0"] = worker.current_rss()
        worker.reset_peak_rss()

    if kind in ("inject", "inject-low-mem"):
        def run():
            inject_adapter_in_model(cfg, st["model"], low_cpu_mem_usage=kind == "inject-low-mem")
    elif kind == "load":
        path = req["file"]

        def run():
            set_peft_model_state_dict(st["model"], load_file(path), low_cpu_mem_usage=True)
    else:
        raise ValueError(f"unknown case {kind}")

    case = Case(run, prepare=None, batch=False)

    def after():
        case.notes["peak_rss_growth"] = max(case.notes.get("peak_rss_growth", 0), worker.peak_rss() - st["rss0"])
        st["model"] = None

    case.prepare, case.after = prepare, after
    return case


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: inject.py ADAPTER.safetensors [--reps N]  (peft bench inject writes one)")
    path = sys.argv.pop(1)
    worker.standalone(__import__("inject"),
                      [{"case": "inject"}, {"case": "inject-low-mem"}, {"case": "load", "file": path}])
