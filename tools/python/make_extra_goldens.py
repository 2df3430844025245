#!/usr/bin/env python3
"""Reference cases for the model-level utilities, made with real PyTorch + PEFT.

    /opt/torchenv/bin/python tools/python/make_extra_goldens.py tests/data/peft_extra

Writes <out>/lora_weighted/ (checked by tests/test_utilities.cpp; never run by the tests):
  case.json      host spec, the three source adapters' configs, each combination's
                 arguments and the config PEFT made for it, inject-from-state-dict results
  base.safetensors                host weights (Dummy: embedding -> linear -> lm_head)
  adapter_<x|y|z>.safetensors     get_peft_model_state_dict of the source adapters
  io.safetensors  input; <combo>.output (the combined adapter active);
                  <combo>.adapter.<key> (its state dict: exact for linear/cat; the SVD
                  factors are only defined up to signs, so svd cases compare
                  <combo>.delta.<module> = get_delta_weight instead)
  unload.output / merge_and_unload.output and merge_and_unload.<host key>
Needs torch and peft (pip install torch==2.11.0 peft==0.21.0).
"""
import json
import os
import sys
import warnings

import peft
import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file


class Dummy(torch.nn.Module):
    def __init__(self, V=10, D=10):
        super().__init__()
        self.embedding = torch.nn.Embedding(V, D)
        self.linear = torch.nn.Linear(D, D)
        self.lm_head = torch.nn.Linear(D, V)

    def forward(self, ids):
        return self.lm_head(self.linear(self.embedding(ids)))


SOURCES = {
    "x": dict(r=4, lora_alpha=8, target_modules=["embedding", "linear", "lm_head"]),
    "y": dict(r=4, lora_alpha=16, target_modules=["linear", "lm_head"], use_rslora=True),
    "z": dict(r=2, lora_alpha=2, target_modules=["linear"]),
}

COMBOS = [
    dict(name="lin_xy", adapters=["x", "y"], weights=[0.7, -0.4], combination_type="linear"),
    dict(name="single_y", adapters=["y"], weights=[2.0], combination_type="svd"),  # one adapter: linear
    dict(name="cat_xyz", adapters=["x", "y", "z"], weights=[1.0, 0.5, -1.2], combination_type="cat"),
    dict(name="svd_xz", adapters=["x", "z"], weights=[0.6, 0.9], combination_type="svd"),
    # svd_clamp is left out: its bound is a quantile of the signed factor values, which depends
    # on the SVD's sign convention (LAPACK's here, Eigen's in peft.cpp)
    dict(name="svd_xy_r3", adapters=["x", "y"], weights=[1.0, -0.5], combination_type="svd", svd_rank=3),
]


def host(seed=0):
    torch.manual_seed(seed)
    return Dummy()


def main(out_root):
    out = os.path.join(out_root, "lora_weighted")
    os.makedirs(out, exist_ok=True)
    base = host()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, os.path.join(out, "base.safetensors"))
    ids = torch.tensor([[0, 3, 5, 9, 1, 2, 8, 4], [7, 7, 6, 1, 0, 5, 3, 2]])
    io = {"input": ids}

    model = get_peft_model(host(), LoraConfig(**SOURCES["x"]), adapter_name="x")
    for name in ("y", "z"):
        model.add_adapter(name, LoraConfig(**SOURCES[name]))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.3)
    case = {"arch": "dummy", "arch_spec": {"V": 10, "D": 10}, "peft_version": peft.__version__,
            "torch_version": torch.__version__, "sources": {}, "combos": []}
    for name in SOURCES:
        case["sources"][name] = model.peft_config[name].to_dict()
        sd = get_peft_model_state_dict(model, adapter_name=name)
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, f"adapter_{name}.safetensors"))

    lm = model.base_model
    for c in COMBOS:
        kw = {k: v for k, v in c.items() if k not in ("name", "adapters", "weights")}
        lm.add_weighted_adapter(c["adapters"], c["weights"], c["name"], **kw)
        cfg = model.peft_config[c["name"]].to_dict()
        rec = dict(c)
        rec["config"] = {"r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
                         "target_modules": sorted(cfg["target_modules"])}
        case["combos"].append(rec)
        lm.set_adapter(c["name"])
        model.eval()
        with torch.no_grad():
            io[f"{c['name']}.output"] = model.base_model.model(ids)
        for k, v in get_peft_model_state_dict(model, adapter_name=c["name"]).items():
            io[f"{c['name']}.adapter.{k}"] = v
        for mname, m in model.base_model.model.named_modules():
            if hasattr(m, "get_delta_weight") and c["name"] in m.scaling:
                io[f"{c['name']}.delta.{mname}"] = m.get_delta_weight(c["name"]).detach()
    lm.set_adapter("x")

    # merge_and_unload / unload of adapter "x" on a copy
    import copy
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        plain = m2.merge_and_unload()
        io["merge_and_unload.output"] = plain(ids)
        for k, v in plain.state_dict().items():
            io[f"merge_and_unload.{k}"] = v
        m3 = copy.deepcopy(model)
        io["unload.output"] = m3.unload()(ids)

    # inject_adapter_in_model(state_dict=...): config says linear, the checkpoint holds linear and lm_head
    sd_x = get_peft_model_state_dict(model, adapter_name="x")
    # PEFT matches the keys as they are: without the "base_model.model." of saved files
    sd_partial = {k.removeprefix("base_model.model."): v for k, v in sd_x.items() if "embedding" not in k}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        injected = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["linear", "embedding"]),
                                           host(), state_dict=sd_partial)
    case["inject_state_dict"] = {
        "config_target_modules": ["linear", "embedding"],
        "state_dict_keys": sorted(sd_partial.keys()),
        "lora_modules": sorted(n for n, m in injected.named_modules() if hasattr(m, "lora_A")),
        "warnings": [str(x.message) for x in w if "inconsistency" in str(x.message)],
    }

    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(case, f, indent=2, sort_keys=True, default=lambda o: sorted(o) if isinstance(o, set) else str(o))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/peft_extra")
