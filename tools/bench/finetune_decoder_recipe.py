#!/usr/bin/env python3
"""`peft finetune` (LoRA SFT of a decoder LLM, issue 29) in PyTorch + transformers + PEFT, with
the same data and recipe, timed per step, next to ours.

The recipe, as tools/cmd_finetune_lm.cpp and train/lm_data.cpp have it:
  * the model: a GGUF file loaded with transformers' GGUF loader (from_pretrained(folder,
    gguf_file=name): every weight dequantized to float32), its tokenizer from the same file
    (AutoTokenizer.from_pretrained(folder, gguf_file=name)), sdpa attention in float32;
  * data: JSONL lines {"messages": [...]} rendered with the model's chat template
    (apply_chat_template, turn by turn: only the assistant turns - content and end-of-turn -
    are scored, -100 elsewhere) or {"prompt", "completion"} (prompt + completion tokenized
    together, the prompt's tokens masked, the EOS id appended and scored); any other file is
    plain text cut into blocks of --max-length tokens, all scored. Special tokens added as the
    tokenizer does. Examples longer than --max-length are cut (the end goes); examples with
    nothing scored left are dropped. EOS: as ours, the smallest end-of-generation id of the
    GGUF (tokenizer.ggml.eos/eot/eom_token_id and llama.cpp's end-of-generation texts); pad:
    tokenizer.ggml.padding_token_id, else that EOS;
  * batches: train::LengthBucketBatcher ported bit for bit (Philox4x32-10 as
    runtime/generator.cpp): each epoch shuffles the examples, sorts each run of 32 batches by
    length, cuts batches of --batch, shuffles the batches. So the two sides train on the same
    batches in the same order (the first step's loss, with LoRA B = 0, is the base model's on
    that batch, and agrees);
  * LoRA r, alpha, dropout on PEFT's default targets for the model type (q_proj, v_proj for
    llama) or --target-modules, get_peft_model (another random init than ours: the runs are
    not bit-identical, only the data and the recipe are the same);
  * AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0), lr warm-up for --warmup steps (default
    steps // 10) then cosine to 0 (transformers' get_cosine_schedule_with_warmup), gradients
    clipped to norm 1.0, one batch per step, mean loss over the batch's scored tokens;
  * eval loss before and after training: the token-weighted mean over every eval example
    (batches of --batch examples sorted by length, eval mode, no grad).

With --peft PATH it also runs `peft finetune` with the same settings (--samples 0) and reads
DIR/report.json (eval_loss_before / after, seconds_per_step, losses, peak_rss_bytes). Peak RSS:
each side's whole process (transformers': this script's, getrusage). The eval loss before
training must agree between the two sides (same data, same model): that checks the data
pipeline (chat template, tokens, labels, truncation, the loss); the tolerance is --tol
(default 1e-3). The base of ours is the GGUF's weights as stored (e.g. q4_1, QLoRA) unless
--dtype f32 (dequantized on load: the same float32 weights transformers computes with).

  python3 tools/bench/finetune_decoder_recipe.py --model ~/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data /tmp/devil/train.jsonl --eval /tmp/devil/eval.jsonl --steps 30 --batch 8 --max-length 256 \\
      --peft build/tools/peft
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations

IGNORE = -100

# ---------------------------------------------------------------------------------- random --
M32 = 0xFFFFFFFF


def philox4x32(seed, counter):
    """runtime/generator.cpp philox4x32: 4 words for (seed, counter)."""
    c0, c1, c2, c3 = counter & M32, (counter >> 32) & M32, 0, 0
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return [c0, c1, c2, c3]


class Generator:
    """peft::Generator: next_u32 / next_double over Philox blocks."""

    def __init__(self, seed, counter=0):
        self.seed, self.counter, self.buf, self.buffered = seed, counter, [0] * 4, 0

    def next_u32(self):
        if self.buffered == 0:
            self.buf = philox4x32(self.seed, self.counter)
            self.counter += 1
            self.buffered = 4
        v = self.buf[4 - self.buffered]
        self.buffered -= 1
        return v

    def next_double(self):
        hi, lo = self.next_u32() >> 5, self.next_u32() >> 6
        return (hi * 67108864 + lo) * (1.0 / 9007199254740992.0)


class LengthBucketBatcher:
    """train/lm_data.cpp LengthBucketBatcher, the same batches for the same seed."""

    def __init__(self, examples, batch, seed):
        if len(examples) < batch:
            raise SystemExit(f"{len(examples)} examples, fewer than one batch of {batch}")
        self.lengths = [len(e["ids"]) for e in examples]
        self.batch, self.seed = batch, seed
        self.per_epoch = len(examples) // batch
        self.epoch, self.batches = -1, []

    def _build(self, epoch):
        g = Generator(self.seed, epoch << 32)
        n = len(self.lengths)
        order = list(range(n))
        for i in range(n - 1, 0, -1):
            j = min(i, int(g.next_double() * (i + 1)))
            order[i], order[j] = order[j], order[i]
        used, chunk = self.per_epoch * self.batch, self.batch * 32
        order = order[:used]
        for at in range(0, used, chunk):
            order[at:at + chunk] = sorted(order[at:at + chunk], key=lambda r: self.lengths[r])  # stable
        self.batches = [order[at:at + self.batch] for at in range(0, used, self.batch)]
        for i in range(len(self.batches) - 1, 0, -1):
            j = min(i, int(g.next_double() * (i + 1)))
            self.batches[i], self.batches[j] = self.batches[j], self.batches[i]
        self.epoch = epoch

    def rows(self, index):
        epoch = index // self.per_epoch
        if epoch != self.epoch:
            self._build(epoch)
        return self.batches[index % self.per_epoch]


# ------------------------------------------------------------------------------------ data --
EOG_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
             "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
             "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>"}


def gguf_eos_pad(path):
    """nn::gguf_generation_config as tools/cmd_finetune_lm.cpp uses it: (eos, pad, the file's
    tokenizer.ggml.eos_token_id)."""
    from gguf import GGUFReader

    r = GGUFReader(path)

    def get(k):
        f = r.fields.get(k)
        return None if f is None else f.contents()

    eog = set()
    for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if get(k) is not None:
            eog.add(int(get(k)))
    toks = get("tokenizer.ggml.tokens") or []
    eog |= {i for i, t in enumerate(toks) if t in EOG_TEXTS}
    file_eos = get("tokenizer.ggml.eos_token_id")
    # the file's own EOS leads eos_token_ids (what a completion ends with), else the smallest
    eos = int(file_eos) if file_eos is not None else (min(eog) if eog else -1)
    pad = get("tokenizer.ggml.padding_token_id")
    pad = int(pad) if pad is not None else (eos if eos >= 0 else 0)
    return eos, pad, None if file_eos is None else int(file_eos)


def load_data(path, tok, max_length, eos_id):
    """train/lm_data.cpp load_lm_data: a list of {"ids", "labels"}, and counts."""
    def enc(text):
        return tok(text, add_special_tokens=True)["input_ids"]

    out = {"examples": [], "truncated": 0, "dropped": 0, "format": None}

    def add(ids, labels):
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            out["truncated"] += 1
        if sum(1 for t in labels[1:] if t != IGNORE) == 0:
            out["dropped"] += 1
            return
        out["examples"].append({"ids": ids, "labels": labels})

    text = open(path, encoding="utf-8").read()
    if not (path.endswith(".jsonl") or path.endswith(".json")):
        out["format"] = "text"
        ids = enc(text)
        if eos_id >= 0 and (not ids or ids[-1] != eos_id):
            ids.append(eos_id)
        for at in range(0, len(ids) - 1, max_length):
            block = ids[at:at + max_length]
            add(block, list(block))
        return out
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip(" \t"):
            continue
        j = json.loads(line)
        where = f"{path}:{n}"
        if "messages" in j:
            out["format"] = out["format"] or "messages"
            msgs = j["messages"]

            def render(k, gen):
                return tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=gen)

            full = render(len(msgs), False)
            ids = enc(full)
            labels = [IGNORE] * len(ids)
            for i, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                before, upto = render(i, True), render(i + 1, False)
                assert full.startswith(before) and full.startswith(upto), f"{where}: template not turn by turn"
                a, b = enc(before), enc(upto)
                assert ids[:len(a)] == a and ids[:len(b)] == b and len(b) >= len(a), f"{where}: tokens do not line up"
                labels[len(a):len(b)] = ids[len(a):len(b)]
            add(ids, labels)
        else:
            out["format"] = out["format"] or "prompt-completion"
            p = enc(j["prompt"])
            ids = enc(j["prompt"] + j["completion"])
            assert ids[:len(p)] == p, f"{where}: the prompt ends inside a token"
            if eos_id >= 0:
                ids.append(eos_id)
            add(ids, [IGNORE] * len(p) + ids[len(p):])
    return out


def collate(examples, rows, pad):
    T = max(len(examples[r]["ids"]) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.int64)
    mask = torch.zeros((len(rows), T), dtype=torch.int64)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.int64)
    for b, r in enumerate(rows):
        e = examples[r]
        n = len(e["ids"])
        ids[b, :n] = torch.tensor(e["ids"])
        mask[b, :n] = 1
        labels[b, :n] = torch.tensor(e["labels"])
    return ids, mask, labels


def batch_loss(model, ids, mask, labels):
    """train::causal_lm_loss: mean cross-entropy of labels[t] (t >= 1, not -100) from position t-1."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    sl, tl = logits[:, :-1, :], labels[:, 1:]
    keep = tl != IGNORE
    n = int(keep.sum())
    return torch.nn.functional.cross_entropy(sl[keep].float(), tl[keep]), n


@torch.no_grad()
def eval_loss(model, data, batch, pad):
    was = model.training
    model.eval()
    ex = data["examples"]
    order = sorted(range(len(ex)), key=lambda i: len(ex[i]["ids"]))  # stable
    total, n = 0.0, 0
    for at in range(0, len(order), batch):
        loss, k = batch_loss(model, *collate(ex, order[at:at + batch], pad))
        total += loss.item() * k
        n += k
    if was:
        model.train()
    return total / n


def lr_multiplier(step, warmup, total):
    """nn::warmup_cosine_multiplier (min ratio 0)."""
    if step < warmup:
        return step / max(1, warmup)
    p = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return 0.5 * (1 + math.cos(math.pi * p))


# ---------------------------------------------------------------------------------- sides --
def run_torch(a):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    folder, name = os.path.split(os.path.abspath(a.model))
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    load_s = time.perf_counter() - t0
    eos, pad, file_eos = gguf_eos_pad(a.model)
    train = load_data(a.data, tok, a.max_length, eos)
    held = load_data(a.eval, tok, a.max_length, eos)
    info = {"eos": eos, "pad": pad, "file_eos": file_eos, "tokenizer_eos": tok.eos_token_id,
            "train_examples": len(train["examples"]), "eval_examples": len(held["examples"]),
            "train_tokens": sum(len(e["ids"]) for e in train["examples"]), "truncated": train["truncated"],
            "dropped": train["dropped"], "format": train["format"], "load_s": load_s,
            "eval_scored_tokens": sum(sum(1 for t in e["labels"][1:] if t != IGNORE) for e in held["examples"])}
    before = eval_loss(model, held, a.batch, pad)
    print(f"  transformers: eval loss before {before:.6f}", flush=True)
    torch.manual_seed(a.seed)
    targets = None
    if a.target_modules:
        targets = "all-linear" if a.target_modules == "all-linear" else a.target_modules.split(",")
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=targets,
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    info["trainable"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    warmup = a.warmup if a.warmup is not None else a.steps // 10
    batches = LengthBucketBatcher(train["examples"], a.batch, a.seed)
    model.train()
    times, losses = [], []
    for s in range(a.steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = a.lr * lr_multiplier(s, warmup, a.steps)
        loss, _ = batch_loss(model, *collate(train["examples"], batches.rows(s), pad))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        print(f"\r  transformers: step {s + 1}/{a.steps} loss {losses[-1]:.4f} {times[-1]:.2f} s", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    after = eval_loss(model, held, a.batch, pad)
    import resource

    return {"eval_loss_before": before, "eval_loss_after": after, "seconds_per_step": statistics.median(times),
            "losses": losses, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **info}


def run_ours(a):
    with tempfile.TemporaryDirectory() as d:
        cmd = [a.peft, "finetune", "--model", a.model, "--data", a.data, "--eval", a.eval, "--out", d,
               "--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr), "--r", str(a.r),
               "--alpha", str(a.alpha), "--dropout", str(a.dropout), "--max-length", str(a.max_length),
               "--seed", str(a.seed), "--samples", "0", "--threads", str(a.threads)]
        if a.warmup is not None:
            cmd += ["--warmup", str(a.warmup)]
        if a.target_modules:
            cmd += ["--target-modules", a.target_modules]
        if a.dtype:
            cmd += ["--dtype", a.dtype]
        print("  " + " ".join(cmd), flush=True)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if p.returncode != 0:
            sys.exit(f"peft finetune failed ({p.returncode}):\n{p.stdout}")
        for line in p.stdout.splitlines():
            if line.startswith("finetune:") or line.startswith("eval"):
                print("  ours: " + line, flush=True)
        return json.load(open(f"{d}/report.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a GGUF file (llama architecture)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=None, help="default steps // 10")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--target-modules", default="", help="comma-separated or all-linear (default PEFT's)")
    ap.add_argument("--dtype", default="", help="ours: --dtype f32 dequantizes the base on load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-3, help="eval loss before training: |ours - transformers|")
    ap.add_argument("--peft", help="path to the peft program: run ours too (first)")
    a = ap.parse_args()
    a.model = os.path.expanduser(a.model)
    ours = None
    if a.peft:
        print("peft.cpp:", flush=True)
        ours = run_ours(a)
    print(f"transformers + PEFT (torch {torch.__version__.split('+')[0]}):", flush=True)
    theirs = run_torch(a)
    print(f"  data: {theirs['format']}, {theirs['train_examples']} train / {theirs['eval_examples']} eval examples "
          f"({theirs['eval_scored_tokens']} scored eval tokens), {theirs['train_tokens']} train tokens, "
          f"{theirs['truncated']} cut at {a.max_length}, {theirs['dropped']} dropped; EOS id {theirs['eos']} "
          f"(the tokenizer's: {theirs['tokenizer_eos']}), pad id {theirs['pad']}; {theirs['trainable']} trainable")
    if theirs["format"] == "prompt-completion" and theirs["eos"] != theirs["tokenizer_eos"]:
        print(f"  note: ours appends EOS id {theirs['eos']} to completions (the smallest end-of-generation id), "
              f"not the tokenizer's eos_token_id {theirs['tokenizer_eos']} (TRL's); mirrored here")
    print(f"\n{a.steps} steps, batch {a.batch}, max length {a.max_length}, lr {a.lr}, LoRA r={a.r} alpha={a.alpha:g} "
          f"dropout {a.dropout} on {a.target_modules or 'PEFT defaults'}, {a.threads} threads")
    print(f"{'':14s} {'eval before':>12s} {'eval after':>11s} {'s/step':>8s} {'step-1 loss':>12s} {'peak RSS':>9s}")
    rows = [("transformers", theirs)] + ([("peft.cpp", ours)] if ours else [])
    for name, r in rows:
        print(f"{name:14s} {r['eval_loss_before']:12.6f} {r['eval_loss_after']:11.6f} {r['seconds_per_step']:8.3f} "
              f"{r['losses'][0]:12.6f} {r['peak_rss_bytes'] / 2**20:5.0f} MiB")
    if not ours:
        return 0
    d0 = abs(ours["eval_loss_before"] - theirs["eval_loss_before"])
    d1 = abs(ours["losses"][0] - theirs["losses"][0])
    print(f"\neval loss before: |ours - transformers| = {d0:.2e} ({'agrees' if d0 <= a.tol else 'DISAGREES'} "
          f"within {a.tol:g}; ours' base {ours.get('base_dtype', '?')}); step-1 training loss (LoRA B = 0, the "
          f"same batch): |diff| = {d1:.2e}")
    print(f"eval loss after: ours {ours['eval_loss_after']:.4f}, transformers {theirs['eval_loss_after']:.4f} "
          f"(different LoRA inits and dropout masks: close, not equal)")
    print(f"s/step: ours {ours['seconds_per_step']:.3f}, transformers {theirs['seconds_per_step']:.3f}, "
          f"ratio ours / transformers = {ours['seconds_per_step'] / theirs['seconds_per_step']:.2f}")
    return 0 if d0 <= a.tol else 1


if __name__ == "__main__":
    sys.exit(main())
