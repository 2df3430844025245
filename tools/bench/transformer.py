#!/usr/bin/env python3
"""`peft bench transformer`, the other sides: the real all-MiniLM-L6-v2 on transformers (sdpa) +
PyTorch, on ONNX Runtime (the model exported with torch.onnx.export(..., dynamo=True); the legacy
exporter gives wrong outputs on transformers 5), in PEFT for the LoRA train step and in
sentence-transformers for the throughput row. Every request names its side ("torch", "ort",
"st") and its case:

  forward     last_hidden_state of the token ids given (no grad); "check": true answers the
              mean-pooled rows instead of timing (the C++ side compares its own before timing)
  embed       one text -> tokenizer -> model -> mean pooling -> L2 normalisation
  train       one AdamW step: LoRA r=8 (alpha 16, dropout 0) on query, key, value, dense of the
              model in train mode; queries and docs of the ids given, mean pooling, L2
              normalisation, cross-entropy of 20 * cosine against the diagonal
  load        AutoModel.from_pretrained(dir) to the first forward of one 16-token sentence;
              notes: rss_growth (bytes, median over samples)
  throughput  sentence-transformers' encode(texts, batch_size=64) of the lines of a file

  python tools/bench/transformer.py MODEL_DIR   (prints this side's numbers on its own)
"""
import contextlib
import gc
import io
import logging
import os
import statistics

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch

from worker import Case, current_rss, peak_rss, reset_peak_rss

_models = {}


def versions():
    out = {}
    for name in ("onnxruntime", "onnxscript", "transformers", "sentence_transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "absent"
    return out


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _model(d):
    """The model in eval mode, loaded once per worker (forward, embed)."""
    if d not in _models:
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        m = AutoModel.from_pretrained(d, attn_implementation="sdpa").eval()
        _models[d] = (m, AutoTokenizer.from_pretrained(d))
    return _models[d]


def _mean_pool(h, mask):
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


_sessions = {}


def _onnx_session(d, threads, scratch):
    """Exports the model once (dynamic batch and length) and opens it in ONNX Runtime; checks the
    exported graph against PyTorch on a padded batch first."""
    key = (d, threads)
    if key in _sessions:
        return _sessions[key]
    import onnxruntime as ort

    model, tok = _model(d)
    path = os.path.join(scratch, "minilm.onnx")
    if not os.path.exists(path):
        b = tok(["a first sentence to export with", "a second, longer sentence that makes the batch padded"],
                padding=True, return_tensors="pt")
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        dyn = {k: {0: batch, 1: seq} for k in ("input_ids", "attention_mask", "token_type_ids")}
        # stdout is the worker's reply channel: the exporter's progress lines must not reach it
        logging.disable(logging.WARNING)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            # no input_names / output_names: with them the exported graph computed wrong outputs
            torch.onnx.export(model, (), path, kwargs=dict(b), dynamo=True, dynamic_shapes=dyn, verbose=False)
        logging.disable(logging.NOTSET)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # its defaults otherwise (threads spin)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    # the export must compute what PyTorch computes (padded rows too) before anything is timed
    b = tok(["check the exported graph", "against pytorch on a batch with padding in it, twice as long"],
            padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**b).last_hidden_state.numpy()
    got = sess.run(None, {k: b[k].numpy() for k in names})[0]
    err = float(np.abs(got - ref).max())
    if not err < 1e-4:
        raise RuntimeError(f"ONNX Runtime's output differs from PyTorch's by {err} (export broken)")
    _sessions[key] = (sess, names, tok, err)
    return _sessions[key]


def _ids(req):
    ids = torch.tensor(req["ids"], dtype=torch.int64)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def make_case(req):
    side, case, d = req["side"], req["case"], req["model"]
    threads = torch.get_num_threads()
    if case == "forward" and side == "torch":
        model, _ = _model(d)
        ids, mask, types = _ids(req)

        def run():
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

        c = Case(run)
        if req.get("check"):
            c.notes["pooled"] = _mean_pool(run(), mask).flatten().tolist()
        return c
    if case == "forward" and side == "ort":
        sess, names, _, err = _onnx_session(d, threads, req["scratch"])
        ids, mask, types = (t.numpy() for t in _ids(req))
        feed = {k: v for k, v in zip(("input_ids", "attention_mask", "token_type_ids"), (ids, mask, types)) if k in names}
        c = Case(lambda: sess.run(None, feed)[0])
        c.notes["export_max_abs_diff"] = err
        if req.get("check"):
            h = torch.from_numpy(sess.run(None, feed)[0])
            c.notes["pooled"] = _mean_pool(h, torch.from_numpy(mask)).flatten().tolist()
        return c
    if case == "embed" and side == "torch":
        model, tok = _model(d)
        text = req["text"]

        def run():
            with torch.inference_mode():
                b = tok([text], return_tensors="pt")
                e = _mean_pool(model(**b).last_hidden_state, b["attention_mask"])
                return torch.nn.functional.normalize(e, p=2, dim=1)

        c = Case(run)
        c.notes["tokens"] = len(tok(text)["input_ids"])
        c.notes["embedding"] = run().flatten().tolist()
        return c
    if case == "embed" and side == "ort":
        sess, names, tok, _ = _onnx_session(d, threads, req["scratch"])
        text = req["text"]

        def run():
            b = tok([text], return_tensors="np")
            h = sess.run(None, {k: b[k] for k in names})[0]
            m = b["attention_mask"][..., None].astype(h.dtype)
            e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

        c = Case(run)
        c.notes["embedding"] = run().flatten().tolist()
        return c
    if case == "train" and side == "torch":
        from peft import LoraConfig, inject_adapter_in_model
        from transformers import AutoModel

        _quiet_transformers()
        torch.manual_seed(0)
        model = AutoModel.from_pretrained(d, attn_implementation="sdpa")
        inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                           target_modules=["query", "key", "value", "dense"]), model)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
        q = torch.tensor(req["queries"], dtype=torch.int64)
        k = torch.tensor(req["docs"], dtype=torch.int64)
        labels = torch.arange(q.shape[0])

        def emb(ids):
            mask = torch.ones_like(ids)
            h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            return torch.nn.functional.normalize(_mean_pool(h, mask), p=2, dim=1)

        def run():
            loss = torch.nn.functional.cross_entropy(20.0 * emb(q) @ emb(k).T, labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return Case(run, batch=False)
    if case == "load" and side == "torch":
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        tok = AutoTokenizer.from_pretrained(d)
        b = tok([req["text"]], return_tensors="pt")
        st, growth = {}, []

        def prepare():
            gc.collect()
            reset_peak_rss()
            st["before"] = current_rss()

        def run():
            m = AutoModel.from_pretrained(d, attn_implementation="sdpa").eval()
            with torch.inference_mode():
                m(**b)
            st["m"] = m

        def after():
            growth.append(peak_rss() - st["before"])
            st.clear()
            gc.collect()
            c.notes["rss_growth"] = statistics.median(growth)

        c = Case(run, prepare=prepare, after=after, batch=False)
        return c
    if case == "throughput" and side == "st":
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(d, device="cpu")
        with open(req["texts"], encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f]

        def run():
            return m.encode(texts, batch_size=64, show_progress_bar=False)

        c = Case(run, batch=False)
        c.notes["sentences"] = len(texts)
        return c
    raise ValueError(f"transformer: no case {case!r} on side {side!r}")


if __name__ == "__main__":
    import sys
    import tempfile

    import worker

    if len(sys.argv) < 2:
        raise SystemExit("usage: transformer.py MODEL_DIR [--threads N] [--reps N]")
    d = sys.argv.pop(1)
    g = np.random.default_rng(0)
    ids = [[101] + list(map(int, g.integers(1000, 29000, 62))) + [102] for _ in range(32)]
    text = "the quick brown fox jumps over the lazy dog near the river bank"
    with tempfile.TemporaryDirectory() as tmp:
        worker.standalone(__import__("transformer"), [
            {"side": "torch", "case": "forward", "model": d, "ids": ids},
            {"side": "ort", "case": "forward", "model": d, "ids": ids, "scratch": tmp},
            {"side": "torch", "case": "embed", "model": d, "text": text},
            {"side": "ort", "case": "embed", "model": d, "text": text, "scratch": tmp},
        ])
