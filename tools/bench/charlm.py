"""The character-level LM of `peft pretrain / finetune` (tools/charlm.{h,cpp}) in
PyTorch, with the same module names, so the C++ checkpoints and adapter folders
load into it: wte Embedding(vocab, embed) -> flatten context -> fc1 -> tanh ->
fc2 -> tanh -> lm_head."""
import torch
from torch import nn

# tools/charlm.cpp Vocab: '.', a-z, then these accented letters (46 tokens)
VOCAB = ["."] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("àâäæçéèêëîïôöœùûüÿß")
IDS = {t: i for i, t in enumerate(VOCAB)}
_LOWER = {"Œ": "œ", "Ÿ": "ÿ"}


class CharLM(nn.Module):
    def __init__(self, vocab=len(VOCAB), context=5, embed=24, hidden=512):
        super().__init__()
        self.context, self.embed = context, embed
        self.wte = nn.Embedding(vocab, embed)
        self.fc1 = nn.Linear(context * embed, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.lm_head = nn.Linear(hidden, vocab)

    def forward(self, ctx):
        h = self.wte(ctx).reshape(ctx.shape[0], self.context * self.embed)
        h = self.act1(self.fc1(h))
        h = self.act2(self.fc2(h))
        return self.lm_head(h)


def load_base(path):
    """A CharLM with the weights and sizes of a `peft pretrain` safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        md = f.metadata() or {}
    if "charlm.context" not in md:
        raise SystemExit(f"{path} lacks charlm.* metadata (was it written by peft pretrain?)")
    m = CharLM(int(md["charlm.vocab"]), int(md["charlm.context"]), int(md["charlm.embed"]), int(md["charlm.hidden"]))
    m.load_state_dict(load_file(path))
    return m


def encode_word(w):
    """tools/charlm.cpp Vocab::encode_word: lower-case; [] when a character is unknown."""
    ids = []
    for ch in w:
        if "A" <= ch <= "Z" or ("\u00c0" <= ch <= "\u00de" and ch != "\u00d7"):
            ch = chr(ord(ch) + 32)
        ch = _LOWER.get(ch, ch)
        i = IDS.get(ch, -1)
        if i <= 0:
            return []
        ids.append(i)
    return ids


def load_words(path, max_len=24):
    """Words of a list that the vocabulary encodes, de-duplicated (order not shuffled:
    the C++ side shuffles with its own generator, which this does not reproduce)."""
    seen, words = set(), []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            w = encode_word(line.rstrip("\r\n"))
            if w and len(w) <= max_len and tuple(w) not in seen:
                seen.add(tuple(w))
                words.append(w)
    return words


def make_examples(words, context):
    """tools/charlm.cpp make_examples: (context, next) pairs, words framed by '.'."""
    ctx, tgt = [], []
    for w in words:
        window = [0] * context
        for i in range(len(w) + 1):
            nxt = w[i] if i < len(w) else 0
            ctx.append(list(window))
            tgt.append(nxt)
            window = window[1:] + [nxt]
    return torch.tensor(ctx, dtype=torch.long), torch.tensor(tgt, dtype=torch.long)
