#!/usr/bin/env python3
"""`peft bench lora-layer`, PyTorch + PEFT side: one lora.Linear (d -> d, bias),
x [tokens, d], float32 or bfloat16 on cpu or cuda (request "device", "dtype").
Cases: base (the nn.Linear alone), lora (forward), lora-fwd-bwd (x requires
grad, backward with a fixed upstream gradient, grads reset to None), merged
(forward after merge), mixed (K = "adapters" adapters, row i using adapter
i mod K through adapter_names=). Forwards run under no_grad; on cuda every
timed call ends with torch.cuda.synchronize()."""
import torch
from torch import nn
from peft import LoraConfig, inject_adapter_in_model

from worker import Case


class Host(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)


def make_case(req):
    T, d, r, kind = req["tokens"], req["d"], req["r"], req["case"]
    device = torch.device(req.get("device", "cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[req.get("dtype", "float32")]
    adapters = int(req.get("adapters", 1)) if kind == "mixed" else 1
    torch.manual_seed(0)
    host = Host(d)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["lin"])
    inject_adapter_in_model(cfg, host)
    names = ["default"] + [f"a{i}" for i in range(1, adapters)]
    for n in names[1:]:
        inject_adapter_in_model(cfg, host, adapter_name=n)
    layer = host.lin
    with torch.no_grad():  # B starts at zero; give it values so nothing is trivially zero
        for n in names:
            layer.lora_B[n].weight.normal_(0, 0.02)
    host.to(device=device, dtype=dtype)
    x = torch.randn(T, d).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if kind == "base":
        base = layer.base_layer

        def run():
            with torch.no_grad():
                base(x)
            sync()
    elif kind == "lora":
        def run():
            with torch.no_grad():
                layer(x)
            sync()
    elif kind == "mixed":
        rows = [names[i % adapters] for i in range(T)]

        def run():
            with torch.no_grad():
                layer(x, adapter_names=rows)
            sync()
    elif kind == "lora-fwd-bwd":
        xg = x.clone().requires_grad_()
        g = torch.randn(T, d).to(device=device, dtype=dtype)
        params = [p for p in layer.parameters() if p.requires_grad]

        def run():
            layer(xg).backward(g)
            xg.grad = None
            for p in params:
                p.grad = None
            sync()
    elif kind == "merged":
        layer.merge()

        def run():
            with torch.no_grad():
                layer(x)
            sync()
    else:
        raise ValueError(f"unknown case {kind}")
    return Case(run)


SHAPES = [(8, 64, 4), (64, 256, 8), (512, 1024, 8), (512, 4096, 16)]

if __name__ == "__main__":
    import worker

    worker.standalone(__import__("lora_layer"),
                      [{"case": c, "tokens": t, "d": d, "r": r} for (t, d, r) in SHAPES
                       for c in ("base", "lora", "lora-fwd-bwd", "merged")])
