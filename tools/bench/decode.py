#!/usr/bin/env python3
"""`peft bench decode`, Python side: transformers on the same GGUF file, loaded with
`from_pretrained(folder, gguf_file=name)` (transformers dequantizes every weight to float32 with
gguf-py), eager attention off (sdpa), no gradient.

  prompt:     one forward over `tokens` fixed token ids (a fresh KV cache, logits of the last
              position only: logits_to_keep=1), as llama-bench's pp test
  generation: `tokens` greedy tokens from one start token with the KV cache (generate with
              min_new_tokens = max_new_tokens), as llama-bench's tg test
"""
import os

import torch

from worker import Case

_models = {}


def model_of(path):
    if path not in _models:
        from transformers import AutoModelForCausalLM

        folder, name = os.path.split(os.path.abspath(path))
        m = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
        m.eval()
        _models.clear()  # one model resident at a time, as on the C++ side
        _models[path] = m
    return _models[path]


def make_case(req):
    m = model_of(req["file"])
    n = int(req["tokens"])
    g = torch.Generator().manual_seed(0)
    vocab = m.config.vocab_size
    ids = torch.randint(100, vocab, (1, n), generator=g)

    if req["case"] == "prompt":
        def run():
            with torch.no_grad():
                m(input_ids=ids, use_cache=True, logits_to_keep=1)
    elif req["case"] == "generation":
        start = ids[:, :1]

        def run():
            with torch.no_grad():
                m.generate(input_ids=start, attention_mask=torch.ones_like(start), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, use_cache=True, pad_token_id=0)
    else:
        raise ValueError(f"unknown case {req['case']}")
    return Case(run, batch=False)
