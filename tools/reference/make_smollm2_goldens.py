#!/usr/bin/env python3
"""llama.cpp's results on the real SmolLM2-135M-Instruct Q4_1 file, for tests/test_gguf_models.cpp
(not part of CI). Writes into tests/data/gguf/:

  smollm2.json              ids, argmaxes, llama-perplexity's results on ppl_glosses.txt (the
                            Q4_1 file and its float32 requantization), and the greedy continuations
                            of tools/reference/compare_greedy.py's prompts (llama.cpp defaults)
  smollm2_logits.safetensors "q4_1_short": llama.cpp's last-position logits (KV cache float32) of
                            the Q4_1 file for 3 ids; "f32_last": those of the float32 file for 16 ids
  ppl_glosses.txt           the perplexity text: the first WordNet noun glosses (wordnet-base)

  tools/reference/make_smollm2_goldens.py --model SmolLM2-135M-Instruct.Q4_1.gguf \\
      --llama-bin ~/.cache/peft/llama.cpp/build/bin
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(__file__))
from compare_greedy import CHATML, PROMPTS  # noqa: E402

SHORT = [504, 3575, 282]  # "The capital of"
IDS16 = [504, 3575, 282, 4649, 314, 7042, 30, 657, 314, 1343, 327, 260, 414, 46682, 18669, 284]
GREEDY = 16
PPL_CTX = 256


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout + r.stderr


def logits(bin_dir, model, ids, tmp, extra=(), env=None):
    p = os.path.join(tmp, "ids.txt")
    with open(p, "w") as f:
        f.write(" ".join(map(str, ids)))
    out = os.path.join(tmp, "l.f32")
    stdout = run([os.path.join(bin_dir, "peft-llama-logits"), model, p, out, "2", *extra], env=env)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1), stdout


def glosses(n_bytes):
    out, size = [], 0
    for line in open("/usr/share/wordnet/data.noun", encoding="latin-1"):
        if line.startswith("  ") or "|" not in line:
            continue
        g = line.split("|", 1)[1].strip()
        g = g[0].upper() + g[1:] + ("" if g.endswith(".") else ".")
        out.append(g)
        size += len(g) + 1
        if size >= n_bytes:
            break
    return "\n".join(out) + "\n"


def ppl(bin_dir, model, text_path):
    out = run([os.path.join(bin_dir, "llama-perplexity"), "-m", model, "-f", text_path, "-c", str(PPL_CTX), "-t", "2"])
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    n = re.search(r"over (\d+) chunks", out)
    return float(m.group(1)), float(m.group(2)), int(n.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "gguf"))
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    res = {"short_ids": SHORT, "ids16": IDS16, "ppl_ctx": PPL_CTX}
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "smollm2.f32.gguf")
        run([os.path.join(args.llama_bin, "llama-quantize"), "--allow-requantize", args.model, f32, "F32"])
        lq, _ = logits(args.llama_bin, args.model, SHORT, tmp, ["f32kv"])
        arrays["q4_1_short"] = lq[-1]
        lf, _ = logits(args.llama_bin, f32, IDS16, tmp, ["f32kv"])
        arrays["f32_last"] = lf[-1]
        res["f32_argmax"] = [int(i) for i in lf.argmax(axis=1)]
        text_path = os.path.join(out_dir, "ppl_glosses.txt")
        with open(text_path, "w") as f:
            f.write(glosses(12000))
        p, e, chunks = ppl(args.llama_bin, args.model, text_path)
        pf, ef, _ = ppl(args.llama_bin, f32, text_path)
        res["perplexity"] = {"q4_1": p, "q4_1_uncertainty": e, "f32": pf, "f32_uncertainty": ef, "windows": chunks}
        greedy = []
        for kind, prompt in PROMPTS:
            text = CHATML.format(prompt) if kind == "chat" else prompt
            ids = json.loads(run([os.path.join(args.llama_bin, "llama-tokenize"), "-m", args.model, "-p", text, "--ids",
                                  "--log-disable"]).strip().splitlines()[-1])
            ids_path = os.path.join(tmp, "ids.txt")
            with open(ids_path, "w") as f:
                f.write(" ".join(map(str, ids)))
            r = subprocess.run([os.path.join(args.llama_bin, "peft-llama-logits"), args.model, ids_path,
                                os.path.join(tmp, "l.f32"), "2"], capture_output=True, text=True,
                               env=dict(os.environ, PEFT_GREEDY=str(GREEDY)))
            if r.returncode != 0:
                sys.exit(r.stderr[-2000:])
            greedy.append({"kind": kind, "prompt": prompt, "ids": ids, "llama_cpp": [int(t) for t in r.stdout.split()]})
        res["greedy"] = greedy
    with open(os.path.join(out_dir, "smollm2.json"), "w") as f:
        json.dump(res, f, indent=1)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
              os.path.join(out_dir, "smollm2_logits.safetensors"))
    print(json.dumps(res["perplexity"]))


if __name__ == "__main__":
    main()
