#!/usr/bin/env python3
"""`peft serve` through the official `openai` Python client (pip install openai; not a test
dependency): starts the server on a free port with the given model and adapter folder, asks for
embeddings of the base and of each adapter with the client (float and base64 encodings), and
checks them bit for bit against `peft embed --adapter ... --out`, then the client's error types
for a wrong key, an unknown adapter and a malformed input. With --decoder FILE.gguf it also
serves that model and checks chat.completions (plain and streamed, greedy) against
`peft generate --chat`.

  python3 tools/python/check_serve_openai.py --peft build/tools/peft \\
      --model ~/.cache/peft/all-MiniLM-L6-v2 --adapter-dir DIR_WITH_ADAPTER_FOLDERS \\
      [--decoder ~/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import base64
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

import openai

TEXTS = ["a cat sat on the mat", "definition search", "the quality of being honest"]


def read_embeddings(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8:8 + n])["embeddings"]
    rows, cols = meta["shape"]
    a, b = meta["data_offsets"]
    vals = struct.unpack(f"<{rows * cols}f", raw[8 + n + a:8 + n + b])
    return [list(vals[i * cols:(i + 1) * cols]) for i in range(rows)]


def bits(rows):
    return [struct.pack("<f", v) for r in rows for v in r]


def check_decoder(a):
    """chat.completions (greedy, plain and streamed) against `peft generate --chat`."""
    question, n = "What is a dog?", 24
    want = subprocess.run([a.peft, "generate", "--model", a.decoder, "--chat", "--prompt", question,
                           "--max-new-tokens", str(n)], check=True, capture_output=True, text=True).stdout
    want = want[:-1] if want.endswith("\n") else want  # generate ends its output with a newline
    srv = subprocess.Popen([a.peft, "serve", "--model", a.decoder, "--port", "0", "--served-name", "llm"],
                           stdout=subprocess.PIPE, text=True)
    failures = 0
    try:
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", srv.stdout.readline()).group(1))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        msgs = [{"role": "user", "content": question}]
        got = client.chat.completions.create(model="llm", messages=msgs, max_tokens=n, temperature=0)
        streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
            model="llm", messages=msgs, max_tokens=n, temperature=0, stream=True))
        for what, text in (("chat", got.choices[0].message.content), ("chat, streamed", streamed)):
            ok = text == want
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {what}: {text!r}" + ("" if ok else f" != peft generate {want!r}"))
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peft", default="build/tools/peft")
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter-dir", required=True)
    ap.add_argument("--decoder", help="a GGUF decoder to check chat completions on")
    a = ap.parse_args()
    adapters = sorted(d for d in os.listdir(a.adapter_dir)
                      if os.path.exists(os.path.join(a.adapter_dir, d, "adapter_config.json")))
    srv = subprocess.Popen([a.peft, "serve", "--model", a.model, "--adapter-dir", a.adapter_dir, "--port", "0",
                            "--served-name", "base", "--api-key", "k"], stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        print(f"server on port {port}; models: {[m.id for m in client.models.list().data]}")
        failures = 0
        with tempfile.TemporaryDirectory() as tmp:
            for adapter in [None] + adapters:
                out = os.path.join(tmp, "e.safetensors")
                cmd = [a.peft, "embed", "--model", a.model, "--out", out] + TEXTS
                if adapter:
                    cmd[4:4] = ["--adapter", os.path.join(a.adapter_dir, adapter)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                want = read_embeddings(out)
                model = "base" if adapter is None else f"base:{adapter}"
                got = [d.embedding for d in client.embeddings.create(model=model, input=TEXTS,
                                                                     encoding_format="float").data]
                # asked for explicitly, base64 comes back as the string: float32 little-endian
                got64 = []
                for d in client.embeddings.create(model=model, input=TEXTS, encoding_format="base64").data:
                    raw = base64.b64decode(d.embedding)
                    got64.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
                ok = bits(got) == bits(want) and bits(got64) == bits(want)
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {model}: {len(got)} embeddings bit-equal to peft embed")
        for name, call, exc in [
            ("wrong key", lambda: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x").embeddings.create(
                model="base", input="x"), openai.AuthenticationError),
            ("unknown adapter", lambda: client.embeddings.create(model="base:nope", input="x"), openai.NotFoundError),
            ("token ids", lambda: client.embeddings.create(model="base", input=[[1, 2, 3]]), openai.BadRequestError),
        ]:
            try:
                call()
                ok = False
            except exc:
                ok = True
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name} raises {exc.__name__}")
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    if a.decoder:
        failures += check_decoder(a)
    print("PASS" if failures == 0 else f"FAIL: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
