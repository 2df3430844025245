#!/usr/bin/env python3
"""Reference goldens for peft.cpp's GGUF tokenizer and chat templates, from llama.cpp itself.

Writes tests/data/gguf/tokenizer/:
  corpus.json          the texts: WordNet glosses, English / French / German words, code, numbers,
                       whitespace runs, accented / CJK / Arabic / emoji text, special tokens inside
                       text, llama.cpp's own tokenizer test inputs
  <vocab>.json         per vocabulary, llama.cpp's ids for the first `n_texts` texts
  chat_templates.json  llama.cpp's chat formats and rendered conversations

Reference: llama.cpp built by scripts/build_llama_cpp.sh (${PEFT_CACHE:-~/.cache/peft}/llama.cpp).
The ids come from tools/reference/llama_tokenize_lines.cpp (built here against the same static
libraries): llama_tokenize with parse_special = true, once with add_special = true and once
without, which is what `llama-tokenize -m FILE -f TEXT --ids --no-escape` (with and without
--no-bos) prints; a sample of texts per vocabulary is checked against that program too. The chat
renderings are llama_chat_apply_template's (and, for the default system prompt a ChatML template
writes, the template rendered by the Python jinja2 package as Hugging Face's apply_chat_template
renders it).

Usage: PEFT_SMOLLM2_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf tools/reference/make_tokenizer_goldens.py [--all-texts]
(--all-texts writes goldens of every vocabulary on the whole corpus, to measure; too large to commit)
Python runs here only, never at test time. Deterministic for the same system word lists.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "data", "gguf", "tokenizer")
CACHE = os.environ.get("PEFT_CACHE") or os.path.expanduser("~/.cache/peft")
LLAMA = os.path.join(CACHE, "llama.cpp")
SRC = os.path.join(LLAMA, "src")
BIN = os.path.join(LLAMA, "build", "bin")
HELPER = os.path.join(BIN, "peft-llama-tokenize-lines")

# vocabulary file -> how many corpus texts get goldens (the corpus is ordered so that every
# prefix mixes all the kinds of text)
VOCABS = {
    "smollm2": None,  # all texts; the file comes from --smollm2
    "ggml-vocab-llama-spm.gguf": 1000,
    "ggml-vocab-llama-bpe.gguf": 1000,
    "ggml-vocab-qwen2.gguf": 1000,
    "ggml-vocab-gpt-2.gguf": 1000,
    "ggml-vocab-phi-3.gguf": 150,
    "ggml-vocab-qwen35.gguf": 150,
    "ggml-vocab-starcoder.gguf": 150,
    "ggml-vocab-refact.gguf": 150,
    "ggml-vocab-falcon.gguf": 150,
    "ggml-vocab-mpt.gguf": 150,
    "ggml-vocab-deepseek-llm.gguf": 150,
    "ggml-vocab-deepseek-coder.gguf": 150,
    "ggml-vocab-command-r.gguf": 150,
    "ggml-vocab-gemma-4.gguf": 150,
    "ggml-vocab-gpt-neox.gguf": 150,
    "ggml-vocab-aquila.gguf": 150,
    "ggml-vocab-baichuan.gguf": 150,
}
N_DECODED_SPECIAL = 100


def build_helper():
    src = os.path.join(HERE, "llama_tokenize_lines.cpp")
    if os.path.exists(HELPER) and os.path.getmtime(HELPER) > os.path.getmtime(src):
        return
    lib = os.path.join(LLAMA, "build")
    cmd = ["c++", "-O2", "-std=c++17", "-o", HELPER, src,
           "-I" + os.path.join(SRC, "include"), "-I" + os.path.join(SRC, "ggml", "include"),
           "-I" + os.path.join(SRC, "src"),
           os.path.join(lib, "src", "libllama.a"), os.path.join(lib, "ggml", "src", "libggml.a"),
           os.path.join(lib, "ggml", "src", "libggml-cpu.a"), os.path.join(lib, "ggml", "src", "libggml-base.a"),
           "-fopenmp", "-lpthread", "-ldl"]
    subprocess.run(cmd, check=True)


# ------------------------------------------------------------------------------------ corpus --

def read_words(path, rng, n):
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            words = [w.strip() for w in f if w.strip()]
    except (OSError, UnicodeDecodeError):
        with open(path, encoding="latin-1") as f:
            words = [w.strip() for w in f if w.strip()]
    words = [w for w in words if "'" not in w or rng.random() < 0.3]
    return rng.sample(words, min(n, len(words)))


def wordnet_glosses():
    out = []
    for part in ("noun", "verb", "adj", "adv"):
        path = f"/usr/share/wordnet/data.{part}"
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "| " not in line:
                    continue
                out.append(line.split("| ", 1)[1].rstrip("\n").rstrip())
    return out


def code_snippets(rng, n):
    files = sorted(glob.glob("/usr/lib/python3*/json/*.py") + glob.glob("/usr/lib/python3*/textwrap.py") +
                   glob.glob("/usr/include/c++/*/bits/stl_algo.h") + glob.glob("/usr/include/stdio.h"))
    lines = []
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            lines.extend(f.read().split("\n"))
    out = []
    while len(out) < n and lines:
        i = rng.randrange(len(lines))
        k = rng.choice([1, 1, 2, 3, 5])
        s = "\n".join(lines[i:i + k])
        if s.strip() and len(s) < 300:
            out.append(s)
    return out


def numbers(rng, n):
    gens = [
        lambda: str(rng.randrange(10 ** rng.randrange(1, 16))),
        lambda: f"{rng.uniform(-1e4, 1e4):.{rng.randrange(1, 6)}f}",
        lambda: f"{rng.randrange(1, 10**9):,}",
        lambda: f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        lambda: f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        lambda: f"+1 ({rng.randrange(200, 999)}) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
        lambda: hex(rng.randrange(2 ** 32)).upper().replace("X", "x"),
        lambda: ".".join(str(rng.randrange(20)) for _ in range(rng.randrange(2, 5))),
        lambda: f"{rng.uniform(1, 10):.3f}e{rng.randrange(-30, 30)}",
        lambda: f"{rng.randrange(101)}%",
        lambda: rng.choice(["$", "€", "£", "¥", "₹"]) + f"{rng.uniform(0, 99999):,.2f}",
        lambda: "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 40))),
        lambda: " ".join(str(rng.randrange(1000)) for _ in range(rng.randrange(2, 8))),
        lambda: rng.choice(["3", "33", "333", "3333", "33333", "333333", "3333333", "1000000", "1,000,000"]),
        lambda: "".join(chr(rng.randrange(0x660, 0x66A)) for _ in range(rng.randrange(1, 6))) + " " +
        "".join(chr(rng.randrange(0x966, 0x970)) for _ in range(rng.randrange(1, 6))),
        lambda: rng.choice(["½", "¾", "²", "³", "Ⅻ", "①②③", "٣٤٥", "一二三", "10⁻³", "x²+y²=z²"]),
    ]
    return [rng.choice(gens)() for _ in range(n)]


SPACES = [" ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", " \n", "\t\n", "\n ", "\u00a0", "\u2002", "\u3000",
          "\u0085", "\u2009", " \t ", "\n\n\n", "\v", "\f"]


def whitespace(rng, words, n):
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(1, 6)):
            parts.append(rng.choice(SPACES) * rng.choice([1, 1, 1, 2, 3]))
            if rng.random() < 0.7:
                parts.append(rng.choice(words))
        out.append("".join(parts))
    out += [" ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\t\n", " Hello", "  Hello", "Hello ", "Hello  ",
            "\nHello\n", "    Hello\n    Hello", " \n =", "Hello\n\n\nworld", "a\r\nb", "\u3000全角\u3000"]
    return out


PHRASES = [
    "Äpfel und Birnen", "Größe, Maße & Übermaß", "façade naïve café résumé coöperate", "¿Dónde está la biblioteca?",
    "Ça va très bien, merci !", "Zażółć gęślą jaźń", "Příliš žluťoučký kůň úpěl ďábelské ódy", "Ελληνικά γράμματα",
    "Съешь же ещё этих мягких французских булок", "нещо на Български", "Україна — це Європа", "שלום עולם",
    "مرحبا بالعالم", "اللغة العربية جميلة ١٢٣", "हिन्दी भाषा बहुत सुंदर है", "বাংলা ভাষা", "தமிழ் மொழி",
    "ภาษาไทยง่ายนิดเดียว", "Tiếng Việt có dấu", "日本語のテキストです。", "カタカナとひらがな", "中文文本测试，你好世界！",
    "我想在apple工作1314151天～", "繁體中文測試", "한국어 텍스트입니다", "안녕하세요 세계", "ქართული ენა", "Հայերեն լեզու",
    "አማርኛ", "ᠮᠣᠩᠭᠣᠯ", "Ελλάδα και Κύπρος", "İstanbul'da ışık", "Ærøskøbing på Ærø", "Þórður Ðorvaldsson",
    "កាន់តែពិសេសអាចខលចេញ", "ລາວ", "မြန်မာ", "සිංහල", "Ⓐⓑⓒ ⒜⒝⒞", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３",
    "e\u0301 a\u0300 n\u0303 combining", "ﬁﬂ ligatures", "𝓜𝓪𝓽𝓱 𝔉𝔯𝔞𝔨𝔱𝔲𝔯 𝟙𝟚𝟛", "∀x∈ℝ: x²≥0 ⇒ √x²=|x|",
]
EMOJI = ["🦙", "🚀", "😀", "😶‍🌫️", "✅", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "☕", "🎉🎊", "1️⃣", "🏳️‍🌈",
         "🤖", "😁", "🙃", "🧑🏿‍💻", "©®™", "⚡️", "🌍🌎🌏"]
SCRIPT_RANGES = [(0xC0, 0xD6), (0xD8, 0xF6), (0x100, 0x17F), (0x391, 0x3A9), (0x3B1, 0x3C9), (0x410, 0x44F),
                 (0x5D0, 0x5EA), (0x621, 0x64A), (0x905, 0x939), (0xE01, 0xE2E), (0xAC00, 0xD7A3),
                 (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FFF), (0xFF01, 0xFF5E), (0x2200, 0x22FF),
                 (0x2190, 0x21FF), (0x2500, 0x257F), (0x2160, 0x216B), (0x2460, 0x2473)]


def multilingual(rng, words, n):
    out = []
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            out.append(rng.choice(PHRASES))
        elif kind == 1:
            lo, hi = rng.choice(SCRIPT_RANGES)
            out.append("".join(chr(rng.randrange(lo, hi + 1)) for _ in range(rng.randrange(1, 12))))
        elif kind == 2:
            out.append(" ".join(rng.choice([rng.choice(PHRASES), rng.choice(words), rng.choice(EMOJI)])
                                for _ in range(rng.randrange(2, 5))))
        else:
            lo, hi = rng.choice(SCRIPT_RANGES)
            w = rng.choice(words)
            out.append(w + "".join(chr(rng.randrange(lo, hi + 1)) for _ in range(rng.randrange(1, 4))) + w)
    return out


def emoji(rng, words, n):
    out = []
    for _ in range(n):
        parts = [rng.choice(EMOJI + words) for _ in range(rng.randrange(1, 6))]
        out.append(rng.choice(["", " "]).join(parts))
    return out


SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|begin_of_text|>",
           "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|fim_prefix|>",
           "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>", "<repo_name>", "<filename>", "<|system|>",
           "<|user|>", "<|assistant|>", "<|end|>", "[INST]", "[/INST]", "<<SYS>>", "<0x0A>", "<pad>", "<mask>",
           "<|im_start", "<|im_end", "|>", "<|", "<<|im_end|>>", "<|endoftext|><|endoftext|>", "<bos>", "<eos>",
           "<start_of_turn>", "<end_of_turn>", "<|START_OF_TURN_TOKEN|>", "<｜begin▁of▁sentence｜>", "<think>"]


def special_tokens(rng, words, n):
    out = []
    for _ in range(n):
        if rng.random() < 0.25:
            role = rng.choice(["system", "user", "assistant"])
            out.append(f"<|im_start|>{role}\n{' '.join(rng.sample(words, 4))}<|im_end|>\n" +
                       rng.choice(["", "<|im_start|>assistant\n"]))
            continue
        parts = []
        for _ in range(rng.randrange(1, 6)):
            parts.append(rng.choice(SPECIAL) if rng.random() < 0.5 else rng.choice(words))
        out.append("".join(p + rng.choice(["", "", " ", "  ", "\n"]) for p in parts))
    return out


def english(rng, words, n):
    out = []
    contractions = ["don't", "I'LL", "we've", "they're", "She'd", "it's", "'s", "y'all", "o'clock", "rock 'n' roll",
                    "' era", "''", "'", "can't", "WON'T", "I'm", "you'Re"]
    for _ in range(n):
        k = rng.randrange(1, 14)
        ws = [rng.choice(words) for _ in range(k)]
        if rng.random() < 0.3:
            ws.insert(rng.randrange(len(ws) + 1), rng.choice(contractions))
        s = " ".join(ws)
        if rng.random() < 0.5:
            s = s[0].upper() + s[1:]
        s += rng.choice(["", ".", "!", "?", ",", " ?", " !", " .", "...", ";", ":"])
        if rng.random() < 0.1:
            s = s.upper()
        out.append(s)
    return out


def edge_cases(rng, words):
    out = ["", "a", " a", "a ", "A", "'", "''", "'s", " 's", "'S", "'ll've", "...", "!!!", "?!", "aaaaaaaaaaaaaaaaaaaaaaaa",
           "a" * 200, "ab" * 60, "\\", "\\n", "\"quoted\"", "https://example.com/path?q=1&r=2#frag", "user@example.org",
           "C:\\Program Files\\x", "/usr/local/bin", "**bold** _it_ `code`", "# Title\n\n- item\n- item",
           "{\"key\": [1, 2, {\"x\": null}]}", "<html><body>hi</body></html>", "a\u200bb", "a\u200db", "\ufeffBOM",
           "tab\tseparated\tvalues", "semi;colon;separated", "x" + "\u0301" * 5, "   leading", "trailing   ",
           "   both   ", "\n\nnewlines\n\n", "mixed\t \n\t end", "ＡＢＣ", "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～"]
    for _ in range(60):
        w = rng.choice(words)
        out.append(rng.choice(["", " ", "  ", "\n", "\t"]) + w + rng.choice(["", " ", "  ", "\n", "\t"]))
    return out


def fuzz_ascii(rng, n):
    """Random runs of ASCII letters, digits, punctuation, apostrophes and whitespace."""
    pools = ["abcxyzABCXYZ", "0123456789", "'", " ", "  ", "\t", "\n", "\r\n", ".,;:!?-_()[]{}<>|/\\\"#$%&*+=@^`~",
             "'s", "'LL", "'ve", "<|", "|>"]
    return ["".join(rng.choice(rng.choice(pools)) * rng.choice([1, 1, 2, 3]) for _ in range(rng.randrange(1, 25)))
            for _ in range(n)]


def fuzz_unicode(rng, n):
    """Random code points of every plane in use: letters, marks, numbers, symbols, spaces, private
    use, unassigned ones (the character classes are where tokenizers disagree)."""
    def cpt():
        r = rng.random()
        if r < 0.15:
            return rng.randrange(0x20, 0x7F)
        if r < 0.85:
            c = rng.randrange(0xA0, 0x10000)
            return c if not 0xD800 <= c < 0xE000 else 0x20
        return rng.choice([rng.randrange(0x10000, 0x20000), rng.randrange(0x1F300, 0x1FAFF), rng.randrange(0x20000, 0x2FA20),
                           rng.randrange(0xE0000, 0xE0080), rng.randrange(0xF0000, 0xF0100)])
    return ["".join(chr(cpt()) for _ in range(rng.randrange(1, 16))) for _ in range(n)]


def llama_cpp_inputs():
    texts = []
    sep = "\n__ggml_vocab_test__\n"
    for p in sorted(glob.glob(os.path.join(SRC, "models", "ggml-vocab-*.gguf.inp"))):
        with open(p, encoding="utf-8") as f:
            raw = f.read()
        pos = 0
        while pos < len(raw):
            nxt = raw.find(sep, pos)
            if nxt < 0:
                texts.append(raw[pos:])
                break
            texts.append(raw[pos:nxt])
            pos = nxt + len(sep)
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def build_corpus():
    rng = random.Random(20250607)
    en = read_words("/usr/share/dict/american-english", rng, 20000)
    fr = read_words("/usr/share/dict/french", rng, 5000)
    de = read_words("/usr/share/dict/ngerman", rng, 5000)
    glosses = wordnet_glosses()
    glosses = rng.sample(glosses, 450)
    mixed_words = en + fr + de
    kinds = [
        glosses,
        english(rng, en, 300),
        english(rng, fr + de, 200),
        code_snippets(rng, 300),
        numbers(rng, 200),
        whitespace(rng, en, 150),
        multilingual(rng, mixed_words, 280),
        emoji(rng, en, 100),
        special_tokens(rng, en, 220),
        edge_cases(rng, en),
        fuzz_ascii(rng, 200),
        fuzz_unicode(rng, 200),
        llama_cpp_inputs(),
    ]
    # interleave so that every prefix of the corpus has every kind
    corpus, seen = [], set()
    iters = [iter(k) for k in kinds]
    while iters:
        for it in list(iters):
            try:
                t = next(it)
            except StopIteration:
                iters.remove(it)
                continue
            if t not in seen and "\0" not in t:
                seen.add(t)
                corpus.append(t)
    return corpus


# -------------------------------------------------------------------------------- tokenizer --

def run_helper(model, texts):
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "texts"), os.path.join(tmp, "out")
        with open(inp, "wb") as f:
            for t in texts:
                f.write(t.encode("utf-8") + b"\0")
        subprocess.run([HELPER, "tokenize", model, inp, out], check=True)
        with open(out, "rb") as f:
            lines = f.read().decode("ascii").split("\n")
    add_bos = lines[0] == "add_bos 1"
    rows = []
    for line in lines[1:len(texts) + 1]:
        a, b, c, d = line.split("\t")
        ids = lambda s: [int(x) for x in s.split()] if s else []
        rows.append((ids(a), ids(b), bytes.fromhex(c).decode("utf-8", "surrogateescape"),
                     bytes.fromhex(d).decode("utf-8", "surrogateescape")))
    return add_bos, rows


def llama_tokenize_cli(model, text, no_bos):
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        cmd = [os.path.join(BIN, "llama-tokenize"), "-m", model, "-f", path, "--ids", "--log-disable", "--no-escape"]
        if no_bos:
            cmd.append("--no-bos")
        r = subprocess.run(cmd, check=True, capture_output=True)
        line = [l for l in r.stdout.decode().split("\n") if l.startswith("[")][-1]
        return json.loads(line)
    finally:
        os.unlink(path)


def make_vocab_golden(name, model, texts, rng, n_cli):
    add_bos, rows = run_helper(model, texts)
    # encode(text, true) = prefix + encode(text, false) + suffix on every text, or we store both
    prefixes = {tuple(w[:len(w) - len(wo)]) if w[len(w) - len(wo):] == wo else None for w, wo, _, _ in rows}
    if len(prefixes) != 1 or None in prefixes:
        sys.exit(f"{name}: ids with special tokens are not a fixed prefix of the ids without")
    prefix = list(next(iter(prefixes)))
    # the ids are what llama-tokenize prints
    sample = [i for i in rng.sample(range(len(texts)), min(n_cli, len(texts))) if texts[i]]
    for i in sample:
        for no_bos, want in ((False, rows[i][0] if add_bos else rows[i][1]), (True, rows[i][1])):
            got = llama_tokenize_cli(model, texts[i], no_bos)
            if got != want:
                sys.exit(f"{name}: llama-tokenize gives {got} for text {i} {texts[i]!r}, the helper {want}")
    # decode(encode(text, true)) is mostly the text itself, or the text after one space (SPM's
    # prefix space stays when BOS is there): keep the exceptions to the commoner of the two
    decoded = [d for _, _, d, _ in rows]
    lead = max(("", " "), key=lambda p: sum(d == p + t for d, t in zip(decoded, texts)))
    golden = {
        "vocab": name,
        "add_bos": add_bos,
        "special_prefix": prefix,
        "n_texts": len(texts),
        # one string of ids per corpus text, as llama_tokenize(add_special=false, parse_special=true)
        "ids": [" ".join(map(str, wo)) for _, wo, _, _ in rows],
        # llama_detokenize(encode(text, true), remove_special=false, unparse_special=false): the
        # text after `decoded_lead`, except the [index, text] pairs of `decoded`
        "decoded_lead": lead,
        "decoded": [[i, d] for i, d in enumerate(decoded) if d != lead + texts[i]],
        # the same with unparse_special=true, for the first texts
        "decoded_special": [ds for _, _, _, ds in rows[:N_DECODED_SPECIAL]],
    }
    return golden


# ---------------------------------------------------------------------------- chat templates --

CONVERSATIONS = {
    "one_user": [["user", "Hello!"]],
    "system_multi_turn": [["system", "You are a helpful assistant"], ["user", "Hello"], ["assistant", "Hi there"],
                          ["user", "Who are you"], ["assistant", "   I am an assistant   "],
                          ["user", "Another question"]],
    "no_system": [["user", "What is 2+2?"], ["assistant", "4"], ["user", "  And 3+3?\n"]],
}

LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
                   "<|end_header_id|>\n\n' }}{% endif %}")
CHATML_PLAIN = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def run_chat(template, messages, add_ass):
    with tempfile.TemporaryDirectory() as tmp:
        t, m, o = (os.path.join(tmp, x) for x in ("t", "m", "o"))
        with open(t, "wb") as f:
            f.write(template.encode("utf-8"))
        with open(m, "wb") as f:
            for role, content in messages:
                f.write(role.encode() + b"\0" + content.encode("utf-8") + b"\0")
        subprocess.run([HELPER, "chat", t, m, "1" if add_ass else "0", o], check=True)
        with open(o, "rb") as f:
            name, text = f.read().split(b"\0", 1)
    return name.decode(), text.decode("utf-8")


def jinja_render(template, messages, add_ass, bos="", eos=""):
    import jinja2  # Hugging Face's apply_chat_template renders with jinja2 the same way
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(jinja2.TemplateError(msg))
    return env.from_string(template).render(messages=[{"role": r, "content": c} for r, c in messages],
                                            add_generation_prompt=add_ass, bos_token=bos, eos_token=eos)


FORMAT_NAMES = [
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1", "mistral-v3",
    "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4", "falcon3", "zephyr", "monarch", "gemma",
    "orion", "openchat", "vicuna", "vicuna-orca", "deepseek", "deepseek2", "deepseek3", "deepseek-ocr", "command-r",
    "llama3", "chatglm3", "chatglm4", "glmedge", "minicpm", "exaone3", "exaone4", "exaone-moe", "rwkv-world",
    "granite", "granite-4.0", "granite-4.1", "gigachat", "megrez", "yandex", "bailing", "bailing-think", "bailing2",
    "llama4", "smolvlm", "hunyuan-moe", "gpt-oss", "hunyuan-dense", "hunyuan-vl", "kimi-k2", "seed_oss", "grok-2",
    "pangu-embedded", "solar-open"]


def renderings(template):
    """llama.cpp's detected format and texts for every conversation, with and without the prompt."""
    fmt, texts = None, {}
    for conv, msgs in CONVERSATIONS.items():
        for add_ass in (True, False):
            name, text = run_chat(template, msgs, add_ass)
            assert fmt in (None, name)
            fmt = name
            texts[f"{conv}/{int(add_ass)}"] = text
    return fmt, texts


def make_chat_golden(smollm2_template):
    # llama.cpp renders by format alone: every format's texts once (the template given by name) ...
    formats = {}
    for n in FORMAT_NAMES:
        fmt, texts = renderings(n)
        if fmt != n:
            sys.exit(f"llama.cpp reads the format name {n} as {fmt}")
        formats[n] = texts
    # ... and for each template its detected format, after checking its texts are that format's
    inline = {"smollm2": smollm2_template, "llama3_meta": LLAMA3_TEMPLATE, "chatml_plain": CHATML_PLAIN,
              "unknown_plain": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
              "unknown_text": "INVALID TEMPLATE"}
    templates = {}
    sources = [(k, t) for k, t in inline.items()]
    for p in sorted(glob.glob(os.path.join(SRC, "models", "templates", "*.jinja"))):
        with open(p, encoding="utf-8") as f:
            sources.append(("models/templates/" + os.path.basename(p), f.read()))
    for key, tmpl in sources:
        fmt, texts = renderings(tmpl)
        if fmt == "unknown":
            if any(texts.values()):
                sys.exit(f"{key}: llama.cpp rendered a template it did not recognise")
        elif fmt not in formats:
            formats[fmt] = texts  # a format without a name (dots1)
        elif texts != formats[fmt]:
            sys.exit(f"{key}: llama.cpp's texts differ from those of the format {fmt}")
        templates[key] = fmt
    # the template's own rendering where a ChatML template writes a default system prompt
    jinja_cases = []
    with_default = [("smollm2", smollm2_template)]
    for name in ("Qwen-Qwen2.5-7B-Instruct.jinja", "MiMo-VL.jinja"):
        with open(os.path.join(SRC, "models", "templates", name), encoding="utf-8") as f:
            with_default.append(("models/templates/" + name, f.read()))
    for key, tmpl in with_default:
        for conv, msgs in CONVERSATIONS.items():
            for add_ass in (True, False):
                jinja_cases.append({"template": key, "conversation": conv, "add_generation_prompt": add_ass,
                                    "jinja2": jinja_render(tmpl, msgs, add_ass)})
    return {"generator": "tools/reference/make_tokenizer_goldens.py", "conversations": CONVERSATIONS,
            "inline_templates": inline, "templates": templates, "formats": formats, "jinja2_cases": jinja_cases}


def gguf_string(path, key):
    sys.path.insert(0, os.path.join(SRC, "gguf-py"))
    import gguf
    return gguf.GGUFReader(path).fields[key].contents()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", default=os.environ.get("PEFT_SMOLLM2_GGUF"),
                    help="SmolLM2-135M-Instruct GGUF file (default: $PEFT_SMOLLM2_GGUF)")
    ap.add_argument("--all-texts", action="store_true",
                    help="goldens of every vocabulary on the whole corpus (to measure; too large to commit)")
    args = ap.parse_args()
    if not args.smollm2 or not os.path.exists(args.smollm2):
        sys.exit("the SmolLM2-135M-Instruct GGUF file is needed: --smollm2 PATH or PEFT_SMOLLM2_GGUF")
    if not os.path.exists(os.path.join(BIN, "llama-tokenize")):
        sys.exit(f"llama.cpp is not built in {LLAMA}: run scripts/build_llama_cpp.sh first")
    build_helper()
    os.makedirs(OUT, exist_ok=True)
    corpus = build_corpus()
    with open(os.path.join(OUT, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "tools/reference/make_tokenizer_goldens.py", "texts": corpus}, f, ensure_ascii=False,
                  indent=0)
    print(f"corpus: {len(corpus)} texts")
    rng = random.Random(7)
    for name, n in VOCABS.items():
        model = args.smollm2 if name == "smollm2" else os.path.join(SRC, "models", name)
        texts = corpus if n is None or args.all_texts else corpus[:n]
        golden = make_vocab_golden(name if name != "smollm2" else os.path.basename(model), model, texts, rng,
                                   40 if name == "smollm2" else 6)
        out = os.path.join(OUT, (name if name == "smollm2" else name[len("ggml-vocab-"):-len(".gguf")]) + ".json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{os.path.basename(out)}: {len(texts)} texts, {os.path.getsize(out)} bytes")
    chat = make_chat_golden(gguf_string(args.smollm2, "tokenizer.chat_template"))
    with open(os.path.join(OUT, "chat_templates.json"), "w", encoding="utf-8") as f:
        json.dump(chat, f, ensure_ascii=False, indent=1)
    print(f"chat_templates.json: {len(chat['formats'])} formats, {len(chat['templates'])} templates")


if __name__ == "__main__":
    main()
