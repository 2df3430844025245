#!/usr/bin/env python3
"""Compares two float32 safetensors files tensor by tensor: exit 0 when for every tensor
||a - b|| <= TOL * ||b|| (Euclidean norms; relative error of the tensor as a whole). Also
prints the largest element-wise difference relative to the tensor's largest magnitude.
Usage: compare_safetensors.py A B [TOL]  (standard library only)"""
import array, json, math, struct, sys


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {info['dtype']}, not F32")
        begin, end = info["data_offsets"]
        out[name] = array.array("f", data[begin:end])
    return out


a, b = read(sys.argv[1]), read(sys.argv[2])
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-5
if a.keys() != b.keys():
    sys.exit(f"different tensors: {sorted(a.keys() ^ b.keys())}")
worst = worst_elem = 0.0
for name in sorted(a):
    x, y = a[name], b[name]
    if len(x) != len(y):
        sys.exit(f"{name}: {len(x)} and {len(y)} numbers")
    norm = math.sqrt(sum(v * v for v in y)) or 1e-30
    diff = math.sqrt(sum((u - v) ** 2 for u, v in zip(x, y))) / norm
    biggest = max(map(abs, y), default=0.0) or 1e-30
    worst_elem = max(worst_elem, max((abs(u - v) for u, v in zip(x, y)), default=0.0) / biggest)
    worst = max(worst, diff)
    if diff > tol:
        sys.exit(f"{name}: ||a - b|| / ||b|| = {diff:.3g} > {tol:g}")
print(f"{len(a)} tensors agree: largest ||a - b|| / ||b|| {worst:.3g} (tolerance {tol:g}); "
      f"largest element difference / largest magnitude {worst_elem:.3g}")
