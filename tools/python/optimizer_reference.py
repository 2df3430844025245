"""The expected values of tests/test_nn.cpp's SGD and AdamW cases, from torch.optim's published
update rules written out in plain Python (no torch needed; with torch installed, --torch also
runs torch.optim on the same problem and prints its values beside).

Problem: p0 = [1, -2, 0.5], loss = sum((p - t)^2) with t = [0.5, 0.25, -1], grad = 2 (p - t).
    python tools/python/optimizer_reference.py [--torch]
"""
import math
import sys

T = [0.5, 0.25, -1.0]
P0 = [1.0, -2.0, 0.5]


def grad(p):
    return [2.0 * (x - t) for x, t in zip(p, T)]


def sgd(steps, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = list(P0), None
    for _ in range(steps):
        g = [gi + weight_decay * pi for gi, pi in zip(grad(p), p)]
        if momentum:
            buf = list(g) if buf is None else [momentum * b + (1 - dampening) * gi for b, gi in zip(buf, g)]
            g = [gi + momentum * b for gi, b in zip(g, buf)] if nesterov else buf
        p = [pi - lr * gi for pi, gi in zip(p, g)]
    return p


def adamw(steps, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    p, m, v = list(P0), [0.0] * 3, [0.0] * 3
    for s in range(1, steps + 1):
        g = grad(p)
        p = [pi * (1 - lr * weight_decay) for pi in p]
        m = [betas[0] * mi + (1 - betas[0]) * gi for mi, gi in zip(m, g)]
        v = [betas[1] * vi + (1 - betas[1]) * gi * gi for vi, gi in zip(v, g)]
        bc1, bc2 = 1 - betas[0] ** s, 1 - betas[1] ** s
        p = [pi - lr / bc1 * mi / (math.sqrt(vi / bc2) + eps) for pi, mi, vi in zip(p, m, v)]
    return p


CASES = [
    ("SGD lr 0.1 momentum 0.9 wd 0.01 nesterov, 3 steps", lambda: sgd(3, 0.1, 0.9, 0.0, 0.01, True),
     dict(kind="sgd", steps=3, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("SGD lr 0.05 momentum 0.8 dampening 0.1, 4 steps", lambda: sgd(4, 0.05, 0.8, 0.1),
     dict(kind="sgd", steps=4, lr=0.05, momentum=0.8, dampening=0.1)),
    ("SGD lr 0.1, 2 steps", lambda: sgd(2, 0.1), dict(kind="sgd", steps=2, lr=0.1)),
    ("AdamW lr 0.05 wd 0.1, 5 steps", lambda: adamw(5, 0.05, weight_decay=0.1),
     dict(kind="adamw", steps=5, lr=0.05, weight_decay=0.1)),
]


def with_torch(c):
    import torch
    p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(T, dtype=torch.float64)
    kw = {k: v for k, v in c.items() if k not in ("kind", "steps")}
    opt = torch.optim.SGD([p], **kw) if c["kind"] == "sgd" else torch.optim.AdamW([p], **kw)
    for _ in range(c["steps"]):
        opt.zero_grad()
        ((p - t) ** 2).sum().backward()
        opt.step()
    return p.tolist()


for name, f, c in CASES:
    print(f"{name}: {f()!r}")
    if "--torch" in sys.argv:
        print(f"    torch.optim: {with_torch(c)!r}")
