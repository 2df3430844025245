#!/usr/bin/env python3
"""Writes the malformed adapter folders of tests/test_reliability.cpp (run from this folder).
Each sub-folder is loaded with load_adapter into MLP(in=10, hidden=20, out=2) and must be
refused with the message the test names, leaving the model exactly as before."""
import json
import os
import shutil
import struct

F32 = "F32"


def st_bytes(tensors, raw=None):
    """safetensors bytes of {name: (dtype, shape, fill)}; fill float32 values."""
    header, data = {}, b""
    for name, (dtype, shape, fill) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = {"F32": 4, "I64": 8, "F16": 2}[dtype]
        if dtype == "F32":
            b = struct.pack("<%df" % n, *([fill] * n))
        elif dtype == "I64":
            b = struct.pack("<%dq" % n, *([int(fill)] * n))
        else:
            b = b"\0" * (n * size)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["lin0"]}
GOOD = {"base_model.model.lin0.lora_A.weight": (F32, [2, 10], 0.1),
        "base_model.model.lin0.lora_B.weight": (F32, [20, 2], 0.1)}


def folder(name, config=None, weights=None, config_text=None):
    shutil.rmtree(name, ignore_errors=True)
    os.makedirs(name)
    if config is not None or config_text is not None:
        with open(os.path.join(name, "adapter_config.json"), "w") as f:
            f.write(config_text if config_text is not None else json.dumps(config, indent=2))
    if weights is not None:
        with open(os.path.join(name, "adapter_model.safetensors"), "wb") as f:
            f.write(weights)


folder("no_config", weights=st_bytes(GOOD))
folder("no_weights", config=LORA)
folder("config_not_json", config_text='{"peft_type": "LORA", "r": ', weights=st_bytes(GOOD))
folder("config_no_peft_type", config={"r": 2}, weights=st_bytes(GOOD))
folder("rank_huge", config=dict(LORA, r=2 ** 40), weights=st_bytes(GOOD))
folder("rank_uint64", config_text='{"peft_type": "LORA", "r": 18446744073709551615, "target_modules": ["lin0"]}',
       weights=st_bytes(GOOD))
folder("target_not_found", config=dict(LORA, target_modules=["nope"]), weights=st_bytes(GOOD))
folder("wrong_shape", config=LORA, weights=st_bytes({
    "base_model.model.lin0.lora_A.weight": (F32, [2, 11], 0.1),
    "base_model.model.lin0.lora_B.weight": (F32, [20, 2], 0.1)}))
folder("rank_mismatch", config=dict(LORA, r=4), weights=st_bytes(GOOD))
folder("weights_truncated", config=LORA, weights=st_bytes(GOOD)[:100])
folder("weights_overlap", config=LORA, weights=(lambda: (
    lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 240)(json.dumps({
        "base_model.model.lin0.lora_A.weight": {"dtype": "F32", "shape": [2, 10], "data_offsets": [0, 80]},
        "base_model.model.lin0.lora_B.weight": {"dtype": "F32", "shape": [20, 2], "data_offsets": [40, 200]},
    }).encode()))())
folder("adalora_rank_pattern", config={
    "peft_type": "ADALORA", "init_r": 4, "target_r": 2, "total_step": 10, "target_modules": ["lin0"],
    "rank_pattern": {"lin0.lora_E": [True, False, True]}}, weights=st_bytes({
        "base_model.model.lin0.lora_A": (F32, [2, 10], 0.1),
        "base_model.model.lin0.lora_B": (F32, [20, 2], 0.1),
        "base_model.model.lin0.lora_E": (F32, [2, 1], 0.1)}))
folder("ia3_ff_not_subset", config={"peft_type": "IA3", "target_modules": ["lin0"],
                                    "feedforward_modules": ["lin1"]}, weights=st_bytes({}))
folder("modules_to_save_wrong_shape", config=dict(LORA, modules_to_save=["lin2"]), weights=st_bytes(dict(GOOD, **{
    "base_model.model.lin2.modules_to_save.default.weight": (F32, [3, 20], 0.0)})))
os.makedirs("config_is_folder/adapter_config.json", exist_ok=True)
open("config_is_folder/adapter_config.json/.keep", "w").close()
print("written")
