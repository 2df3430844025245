#!/usr/bin/env python3
"""`peft bench lora-layer`, PyTorch + PEFT side: one lora.Linear (d -> d, bias),
float32, x [tokens, d]. Cases: base (the nn.Linear alone), lora (forward),
lora-fwd-bwd (x requires grad, backward with a fixed upstream gradient, grads
reset to None), merged (forward after merge). Forwards run under no_grad."""
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
    torch.manual_seed(0)
    host = Host(d)
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, target_modules=["lin"]), host)
    layer = host.lin
    with torch.no_grad():  # B starts at zero; give it values so nothing is trivially zero
        layer.lora_B["default"].weight.normal_(0, 0.02)
    x = torch.randn(T, d)
    if kind == "base":
        base = layer.base_layer

        def run():
            with torch.no_grad():
                base(x)
    elif kind == "lora":
        def run():
            with torch.no_grad():
                layer(x)
    elif kind == "lora-fwd-bwd":
        xg = x.clone().requires_grad_()
        g = torch.randn(T, d)
        params = [p for p in layer.parameters() if p.requires_grad]

        def run():
            layer(xg).backward(g)
            xg.grad = None
            for p in params:
                p.grad = None
    elif kind == "merged":
        layer.merge()

        def run():
            with torch.no_grad():
                layer(x)
    else:
        raise ValueError(f"unknown case {kind}")
    return Case(run)


SHAPES = [(8, 64, 4), (64, 256, 8), (512, 1024, 8), (512, 4096, 16)]

if __name__ == "__main__":
    import worker

    worker.standalone(__import__("lora_layer"),
                      [{"case": c, "tokens": t, "d": d, "r": r} for (t, d, r) in SHAPES
                       for c in ("base", "lora", "lora-fwd-bwd", "merged")])
