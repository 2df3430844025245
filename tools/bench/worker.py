#!/usr/bin/env python3
"""The PyTorch + PEFT side of `peft bench`.

`peft bench BENCH` starts `python -u tools/bench/worker.py BENCH --threads N` and
talks to it one JSON object per line, so the two sides can run interleaved
(rounds alternate ours / theirs, and drift on a busy machine hits both):

  worker -> {"ok": true, "torch": "2.11.0", "peft": "0.21.0", "threads": 2}
            (or {"ok": false, "why": "..."} when torch or peft do not import)
  bench  -> {"case": ..., <case parameters>, "reps": R, "warmup": W, "min_sample_s": S[, "rewarm": false]}
  worker -> {"times": [seconds per call, ...], "notes": {...}, "peak_rss": bytes}   or {"error": "..."}
  bench  -> {"quit": true}

Each benchmark is a module next to this file (lora_layer.py, train_step.py,
inject.py, load.py, tokenizer.py, decode.py, finetune_decoder.py: `peft bench NAME` imports
NAME with - as _) with make_case(request) -> Case; they also run on their own
(`python tools/bench/lora_layer.py`) and print PyTorch's numbers.
"""
import importlib
import json
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class Case:
    """run() is timed; prepare() runs untimed before every sample, after() after it.
    batch: several run() calls may share one sample (short calls)."""

    def __init__(self, run, prepare=None, after=None, batch=True):
        self.run, self.prepare, self.after, self.batch = run, prepare, after, batch
        self.inner = 0
        self.notes = {}


SETTLE_S = 0.02


def sample(case, reps, warmup, min_sample_s, rewarm=True):
    """Same procedure as the C++ Sampler (tools/bench_common.cpp). rewarm=False: no untimed call
    before the samples of a later round (calls of many seconds: caches do not matter)."""
    time.sleep(SETTLE_S)  # the other side's OpenMP threads stop spinning first
    if case.inner == 0:
        for _ in range(warmup):
            if case.prepare:
                case.prepare()
            case.run()
            if case.after:
                case.after()
        case.inner = 1
        if case.batch:
            t0 = time.perf_counter()
            case.run()
            t = max(1e-7, time.perf_counter() - t0)
            case.inner = int(min(100000, max(1, math.ceil(min_sample_s / t))))
    elif rewarm:
        if case.prepare:
            case.prepare()
        case.run()
        if case.after:
            case.after()
    times = []
    for _ in range(reps):
        if case.prepare:
            case.prepare()
        t0 = time.perf_counter()
        for _ in range(case.inner):
            case.run()
        times.append((time.perf_counter() - t0) / case.inner)
        if case.after:
            case.after()
    return times


# ---- resident memory (Linux), as tools/bench_common.cpp
def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return -1


def current_rss():
    return _status_kb("VmRSS:") * 1024


def peak_rss():
    return _status_kb("VmHWM:") * 1024


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not writable (some containers): VmHWM stays the lifetime peak, as in C++
        pass


def serve(bench, threads):
    try:
        import torch
        import peft
    except Exception as e:  # noqa: BLE001 - any import failure means "not measured"
        print(json.dumps({"ok": False, "why": f"{type(e).__name__}: {e}"}), flush=True)
        return 0
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    mod = importlib.import_module(bench.replace("-", "_"))
    hello = {"ok": True, "torch": torch.__version__.split("+")[0], "peft": peft.__version__,
             "threads": torch.get_num_threads()}
    hello.update(getattr(mod, "versions", dict)())  # what else the module measures with
    print(json.dumps(hello), flush=True)
    cases = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        try:
            key = json.dumps({k: v for k, v in req.items() if k not in ("reps", "warmup", "min_sample_s", "rewarm")},
                             sort_keys=True)
            if key not in cases:
                cases[key] = mod.make_case(req)
            c = cases[key]
            reset_peak_rss()  # peak_rss: this process's high-water mark while it sampled
            times = sample(c, req.get("reps", 5), req.get("warmup", 3), req.get("min_sample_s", 2e-3),
                           req.get("rewarm", True))
            reply = {"times": times, "notes": c.notes, "peak_rss": peak_rss()}
        except Exception:  # noqa: BLE001 - reported to the C++ side, which fails with it
            reply = {"error": traceback.format_exc(limit=4)}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    sys.exit(serve(a.bench, a.threads))


def standalone(mod, requests, argv=None):
    """Runs a benchmark module on its own: median seconds per call of each request."""
    import argparse
    import statistics

    import torch

    ap = argparse.ArgumentParser(description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for req in requests:
        c = mod.make_case(req)
        t = statistics.median(sample(c, a.reps, a.warmup, 2e-3))
        desc = " ".join(f"{k}={v}" for k, v in req.items() if len(str(v)) < 40)
        extra = " ".join(f"{k}={v}" for k, v in c.notes.items() if len(str(v)) < 40)
        print(f"{desc:60s} {t * 1e3:10.3f} ms  {extra}")
