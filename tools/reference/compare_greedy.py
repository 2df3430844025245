#!/usr/bin/env python3
"""Greedy continuations of peft.cpp and llama.cpp on the same GGUF file and prompts (not CI).

For each prompt: the ids both tokenizers give (they must be equal), then the first --n greedy
tokens of peft.cpp (`peft generate --ids`), of llama.cpp with its defaults (float16 KV cache,
flash attention on the CPU) and of llama.cpp with a float32 KV cache (peft-llama-logits ...
f32kv), and where each pair first differs. Prints a Markdown table and, with --json, the raw data.

  tools/reference/compare_greedy.py --model SmolLM2-135M-Instruct.Q4_1.gguf \\
      --llama-bin ~/.cache/peft/llama.cpp/build/bin --peft build/tools/peft
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

PROMPTS = [
    ("text", "The capital of France is"),
    ("text", "Once upon a time, in a small village by the sea,"),
    ("text", "The three primary colors are"),
    ("text", "def fibonacci(n):"),
    ("text", "Photosynthesis is the process by which"),
    ("text", "The quick brown fox"),
    ("text", "In 1969, the first humans to walk on the Moon were"),
    ("text", "Water boils at a temperature of"),
    ("chat", "What is the capital of France?"),
    ("chat", "Write a haiku about autumn."),
    ("chat", "Give me three tips for staying focused while studying."),
    ("chat", "Explain what a neural network is in one sentence."),
]
CHATML = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
          "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--peft", default="build/tools/peft")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, prompt in PROMPTS:
            ours = run([args.peft, "generate", "--model", args.model, "--prompt", prompt, "--max-new-tokens", str(args.n),
                        "--ids", "--threads", str(args.threads)] + (["--chat"] if kind == "chat" else [])).split("\n")
            ids = [int(t) for t in ours[0].split()]
            gen = [int(t) for t in ours[1].split()]
            text = CHATML.format(prompt) if kind == "chat" else prompt
            ref_ids = json.loads(run([os.path.join(args.llama_bin, "llama-tokenize"), "-m", args.model, "-p", text, "--ids",
                                      "--log-disable"]).strip().splitlines()[-1])
            if ref_ids != ids:
                sys.exit(f"tokenization differs for {prompt!r}: ours {ids} llama.cpp {ref_ids}")
            ids_file = os.path.join(tmp, "ids.txt")
            with open(ids_file, "w") as f:
                f.write(" ".join(map(str, ids)))
            env = dict(os.environ, PEFT_GREEDY=str(args.n))
            llama = {}
            for cfg, extra in [("default", []), ("f32kv", ["f32kv"])]:
                out = run([os.path.join(args.llama_bin, "peft-llama-logits"), args.model, ids_file, os.path.join(tmp, "l.f32"),
                           str(args.threads)] + extra, env=env)
                llama[cfg] = [int(t) for t in out.split()]
            rows.append({"kind": kind, "prompt": prompt, "prompt_tokens": len(ids), "peft": gen, "llama_default": llama["default"],
                         "llama_f32kv": llama["f32kv"], "peft_vs_default": first_diff(gen, llama["default"]),
                         "peft_vs_f32kv": first_diff(gen, llama["f32kv"]),
                         "default_vs_f32kv": first_diff(llama["default"], llama["f32kv"])})
    fmt = lambda d: f"all {args.n}" if d is None else f"first {d}"
    print(f"| prompt | tokens | peft.cpp = llama.cpp (defaults) | peft.cpp = llama.cpp (f32 KV) | llama.cpp defaults = f32 KV |")
    print("|---|---:|---|---|---|")
    for r in rows:
        p = r["prompt"] if r["kind"] == "text" else "chat: " + r["prompt"]
        print(f"| {p} | {r['prompt_tokens']} | {fmt(r['peft_vs_default'])} | {fmt(r['peft_vs_f32kv'])} | "
              f"{fmt(r['default_vs_f32kv'])} |")
    for key in ("peft_vs_default", "peft_vs_f32kv", "default_vs_f32kv"):
        print(f"{key}: {sum(r[key] is None for r in rows)}/{len(rows)} prompts agree on all {args.n} tokens")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
