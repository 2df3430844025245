#!/usr/bin/env python3
"""Seed corpora for the fuzz targets from the checked-in goldens and malformed files.
Usage: make_seeds.py OUTDIR   (writes OUTDIR/{safetensors,config,load_adapter}/)
The state_dict target writes its own seeds (PEFT_FUZZ_WRITE_SEEDS, see build.sh)."""
import glob
import json
import os
import struct
import sys

out = sys.argv[1]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
os.chdir(root)
for sub in ("safetensors", "config", "load_adapter"):
    os.makedirs(os.path.join(out, sub), exist_ok=True)


def put(sub, name, data):
    with open(os.path.join(out, sub, name.replace("/", "_")), "wb") as f:
        f.write(data)


# safetensors: every golden file and every malformed file
for p in sorted(glob.glob("tests/data/peft/**/*.safetensors", recursive=True) +
                glob.glob("tests/data/bad/*.safetensors") + glob.glob("tests/data/bad_folder/*/*.safetensors")):
    if os.path.getsize(p) <= 1 << 16:
        put("safetensors", p, open(p, "rb").read())

ARCHS = {"mlp": 0, "deep": 1, "dummy": 2}
configs = []  # (name, arch, config text, safetensors bytes or None)
for case in sorted(glob.glob("tests/data/peft/*/case.json")):
    d = os.path.dirname(case)
    c = json.load(open(case))
    for a in c["adapters"]:
        text = json.dumps(a["config"], indent=2, sort_keys=True).encode()
        st = os.path.join(d, "adapter_%s.safetensors" % a["name"])
        configs.append((os.path.basename(d) + "_" + a["name"], c["arch"], text,
                        open(st, "rb").read() if os.path.exists(st) else None))
    for cfg in glob.glob(os.path.join(d, "peft", "**", "adapter_config.json"), recursive=True):
        st = os.path.join(os.path.dirname(cfg), "adapter_model.safetensors")
        configs.append((os.path.relpath(cfg, "tests/data/peft"), c["arch"], open(cfg, "rb").read(),
                        open(st, "rb").read() if os.path.exists(st) else None))
for p in sorted(glob.glob("tests/data/bad_config/*.json")):
    configs.append((os.path.basename(p), "mlp", open(p, "rb").read(), None))
for d in sorted(glob.glob("tests/data/bad_folder/*/")):  # malformed folders, into the mlp host
    cfg, st = os.path.join(d, "adapter_config.json"), os.path.join(d, "adapter_model.safetensors")
    configs.append(("bad_folder_" + os.path.basename(d.rstrip("/")), "mlp",
                    open(cfg, "rb").read() if os.path.isfile(cfg) else b"",
                    open(st, "rb").read() if os.path.isfile(st) else b""))

for name, arch, text, st in configs:
    put("config", name + ".json", text)
    if st is not None and len(text) < 65536:
        put("load_adapter", name + ".bin", bytes([ARCHS[arch]]) + struct.pack("<H", len(text)) + text + st)
print("seeds:", {s: len(os.listdir(os.path.join(out, s))) for s in ("safetensors", "config", "load_adapter")})
