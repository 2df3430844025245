#!/usr/bin/env python3
"""`peft bench load`, PyTorch + PEFT side: time to open adapter folders and be
ready to run: PeftModel.from_pretrained(base, DIR, adapter_name="a0") then
load_adapter(DIR, "a<i>") for the others, N adapters in all, on a fresh copy
(made untimed) of the fine-tuning demo's CharLM. The folder (LoRA r=8 on fc1, fc2,
lm_head) is written by `peft bench load` with peft.cpp's save_pretrained."""
import copy

import torch
from peft import PeftModel

from charlm import CharLM, VOCAB
from worker import Case


def make_case(req):
    n, folder = req["adapters"], req["dir"]
    torch.manual_seed(0)
    base = CharLM(len(VOCAB))
    st = {}

    def prepare():
        st["model"] = copy.deepcopy(base)

    def run():
        m = PeftModel.from_pretrained(st["model"], folder, adapter_name="a0")
        for i in range(1, n):
            m.load_adapter(folder, adapter_name=f"a{i}")
        st["peft"] = m

    def after():
        st.clear()

    return Case(run, prepare=prepare, after=after, batch=False)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: load.py ADAPTER_DIR [--reps N]  (peft bench load writes one)")
    d = sys.argv.pop(1)
    import worker

    worker.standalone(__import__("load"), [{"case": "load", "adapters": k, "dir": d} for k in (1, 10, 100)])
