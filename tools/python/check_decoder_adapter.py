#!/usr/bin/env python3
"""The adapter `peft finetune --model FILE.gguf` writes loads in transformers + Python PEFT and
gives our logits.

Loads the base model from the same GGUF file with transformers' GGUF loader
(from_pretrained(folder, gguf_file=name): weights dequantized to float32), loads DIR/adapter
with PeftModel.from_pretrained, and compares the logits at every position of a few held-out
texts with the ones peft.cpp computes (`peft logits --model FILE.gguf --adapter DIR/adapter
--prompts ...`): the base model's and with the adapter. The texts: the first --n conversations
of --eval rendered with the model's chat template (or prompt + completion); both sides read
the token ids peft.cpp wrote, so the check is about the model and the adapter, not the
tokenizer. Attention in float32 on both sides (peft logits --kv-cache f32, its default).

Passes when max |ours - transformers| <= --rtol (default 1e-3) x max |logit| for the base
and the adapted model. By default ours keeps the GGUF's quantized weights (as peft finetune
trained); --dtype f32 dequantizes them on load (the very float32 weights transformers uses).

Needs torch, transformers, peft, gguf; not part of the test suite.
Usage: tools/python/check_decoder_adapter.py --model ~/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
           --eval /tmp/devil/eval.jsonl [--peft build/tools/peft] [--dtype f32] DIR [DIR ...]
       (DIR: a `peft finetune --out` folder, or the adapter folder itself)
Exit status 0 when every folder passes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations
from safetensors.torch import load_file


def texts_of(path, tok, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            j = json.loads(line)
            if "messages" in j:
                out.append(tok.apply_chat_template(j["messages"], tokenize=False))
            elif "prompt" in j:
                out.append(j["prompt"] + j["completion"])
            else:
                out.append(j["text"])
            if len(out) == n:
                break
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peft", default="build/tools/peft")
    ap.add_argument("--model", required=True, help="the GGUF file the adapter was trained on")
    ap.add_argument("--eval", required=True, help="JSONL of held-out examples (messages or prompt/completion)")
    ap.add_argument("--n", type=int, default=4, help="texts to compare (default 4)")
    ap.add_argument("--dtype", default="", help="ours: f32 dequantizes the base on load (default: as stored)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rtol", type=float, default=1e-3, help="max |diff| allowed, relative to max |logit|")
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    model_path = os.path.abspath(os.path.expanduser(a.model))
    folder, name = os.path.split(model_path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    texts = texts_of(a.eval, tok, a.n)
    ok = True
    with tempfile.TemporaryDirectory() as d:
        prompts = os.path.join(d, "prompts.jsonl")
        with open(prompts, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps(t) + "\n")
        for folder_arg in a.dirs:
            adapter = os.path.join(folder_arg, "adapter")
            if not os.path.exists(os.path.join(adapter, "adapter_config.json")):
                adapter = folder_arg
            out = os.path.join(d, "logits.safetensors")
            cmd = [a.peft, "logits", "--model", model_path, "--adapter", adapter, "--prompts", prompts, "--out", out,
                   "--threads", str(a.threads)]
            if a.dtype:
                cmd += ["--dtype", a.dtype]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            ours = load_file(out)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                         attn_implementation="sdpa").eval()
            ids = [ours[f"ids.{i}"].view(1, -1) for i in range(len(texts))]
            with torch.no_grad():
                base = [model(input_ids=x, use_cache=False).logits[0] for x in ids]
                pm = PeftModel.from_pretrained(model, adapter).eval()
                tuned = [pm(input_ids=x, use_cache=False).logits[0] for x in ids]
            res = {}
            for key, theirs in (("logits_base", base), ("logits", tuned)):
                diff = max((ours[f"{key}.{i}"] - theirs[i]).abs().max().item() for i in range(len(ids)))
                scale = max(ours[f"{key}.{i}"].abs().max().item() for i in range(len(ids)))
                res[key] = (diff, scale)
            effect = max((ours[f"logits.{i}"] - ours[f"logits_base.{i}"]).abs().max().item() for i in range(len(ids)))
            good = all(diff <= a.rtol * scale for diff, scale in res.values())
            ok &= good
            tokens = sum(x.numel() for x in ids)
            (db, sb), (dt, st) = res["logits_base"], res["logits"]
            print(f"{'PASS' if good else 'FAIL'} {adapter}: {len(ids)} texts, {tokens} positions, ours' base "
                  f"{a.dtype or 'as stored'}; with the adapter max |logit diff| {dt:.3g} (max |logit| {st:.3g}, "
                  f"ratio {dt / st:.2e}); base {db:.3g} (max |logit| {sb:.3g}, ratio {db / sb:.2e}); the adapter "
                  f"moves logits by up to {effect:.3g}; tolerance {a.rtol:g} x max |logit|")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
