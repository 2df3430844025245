// Pre-tokenizers of tokenizer.json (Rust `tokenizers` src/pre_tokenizers/), the split
// behaviours of NormalizedString::split and the PCRE2 regex wrapper.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "io/tokenizer/internal.h"

namespace peft::tok {

// ---- Regex -------------------------------------------------------------------------------
namespace {
// Oniguruma (the Rust library's regex engine) gives \s, \w their Unicode meaning; PCRE2's
// differ slightly, so they are spelled out.
std::string translate_onig(const std::string& p) {
  static const char* ws = "\\t-\\r\\x{85}\\p{Z}";
  static const char* wd = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
  std::string out;
  int depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[++i];
      const char* cls = (n == 's' || n == 'S') ? ws : (n == 'w' || n == 'W') ? wd : nullptr;
      bool neg = n == 'S' || n == 'W';
      if (cls && depth > 0 && !neg) {
        out += cls;
      } else if (cls && depth == 0) {
        out += neg ? "[^" : "[";
        out += cls;
        out += "]";
      } else {
        out += '\\';
        out += n;
      }
      continue;
    }
    if (c == '[') ++depth;
    if (c == ']' && depth > 0) --depth;
    out += c;
  }
  return out;
}
}  // namespace

Regex::Regex(const std::string& pattern, bool literal, const std::string& what, const Ctx& ctx) {
  std::string p = literal ? pattern : translate_onig(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  // PCRE2_LITERAL allows UTF but not UCP
  uint32_t opts = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE);
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), opts, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    ctx.fail("regex '", pattern, "' in '", what, "' does not compile at offset ", off, ": ",
             reinterpret_cast<const char*>(buf));
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  size_t pos = 0;
  size_t last_end = std::string_view::npos;
  while (pos <= s.size()) {
    int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                         PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) {
      if (rc == PCRE2_ERROR_NOMATCH) break;
      pcre2_match_data_free(md);
      ::peft::fail("[tokenizer] regex match failed (PCRE2 error ", rc, ")");
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t a = ov[0], b = ov[1];
    if (a == b) {
      // an empty match right after the previous match is skipped (Oniguruma's find_iter)
      if (a != last_end) out.emplace_back(a, b);
      if (a >= s.size()) break;
      pos = a + cp_len(static_cast<unsigned char>(s[a]));
    } else {
      out.emplace_back(a, b);
      pos = b;
    }
    last_end = b;
  }
  pcre2_match_data_free(md);
}

// ---- splits ------------------------------------------------------------------------------
SplitBehavior parse_behavior(const json& j, const std::string& path, const Ctx& ctx) {
  if (!j.is_string()) ctx.fail("field '", path, "' must be a string");
  std::string b = j.get<std::string>();
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  ctx.fail("split behavior '", b, "' (", path, ") is not supported");
}

void split_spans(const Piece& src, const std::vector<Span>& spans, SplitBehavior b, Pieces& out) {
  auto emit = [&](size_t start, size_t end) {
    if (end <= start) return;
    out.push_back(Piece{src.text.substr(start, end - start), -1, src.at_origin && start == 0});
  };
  switch (b) {
    case SplitBehavior::Isolated:
      for (const Span& s : spans) emit(s.start, s.end);
      return;
    case SplitBehavior::Removed:
      for (const Span& s : spans) {
        if (!s.match) emit(s.start, s.end);
      }
      return;
    default: break;
  }
  std::vector<std::pair<size_t, size_t>> acc;
  bool prev = false;
  if (b == SplitBehavior::MergedWithNext) {
    for (size_t k = spans.size(); k-- > 0;) {
      const Span& s = spans[k];
      if (s.match && !prev && !acc.empty()) {
        acc.back().first = s.start;
      } else {
        acc.emplace_back(s.start, s.end);
      }
      prev = s.match;
    }
    for (size_t k = acc.size(); k-- > 0;) emit(acc[k].first, acc[k].second);
    return;
  }
  for (const Span& s : spans) {
    bool extend = b == SplitBehavior::Contiguous ? (s.match == prev) : (s.match && !prev);
    if (extend && !acc.empty()) {
      acc.back().second = s.end;
    } else {
      acc.emplace_back(s.start, s.end);
    }
    prev = s.match;
  }
  for (auto [a, e] : acc) emit(a, e);
}

namespace {

// Runs `fn(piece, out)` on every piece without an id.
template <class F>
void for_pieces(Pieces& pieces, F&& fn) {
  Pieces out;
  out.reserve(pieces.size() * 2);
  for (Piece& p : pieces) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
    } else {
      fn(p, out);
    }
  }
  pieces.swap(out);
}

// The GPT-2 pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// matched by hand (every character belongs to one alternative, so the matches tile the text).
enum Cls { kL, kN, kWS, kOther };
inline Cls cls_of(char32_t c) {
  if (is_whitespace(c)) return kWS;
  if (is_letter(c)) return kL;
  if (is_number(c)) return kN;
  return kOther;
}
void gpt2_spans(std::string_view s, std::vector<Span>& spans) {
  spans.clear();
  size_t i = 0, n = s.size();
  auto run = [&](size_t j, Cls k) {  // end of the run of class k starting at j
    while (j < n) {
      size_t t = j;
      if (cls_of(next_cp(s, t)) != k) break;
      j = t;
    }
    return j;
  };
  while (i < n) {
    size_t start = i;
    if (s[i] == '\'' && i + 1 < n) {
      char a = s[i + 1];
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        spans.push_back({i, i + 2, true});
        i += 2;
        continue;
      }
      if (i + 2 < n) {
        char b2 = s[i + 2];
        if ((a == 'r' && b2 == 'e') || (a == 'v' && b2 == 'e') || (a == 'l' && b2 == 'l')) {
          spans.push_back({i, i + 3, true});
          i += 3;
          continue;
        }
      }
    }
    size_t j = i;
    char32_t c0 = next_cp(s, j);
    Cls k0 = cls_of(c0);
    if (c0 == ' ' && j < n) {
      size_t t = j;
      Cls k1 = cls_of(next_cp(s, t));
      if (k1 != kWS) {
        i = run(t, k1);
        spans.push_back({start, i, true});
        continue;
      }
    }
    if (k0 != kWS) {
      i = run(j, k0);
      spans.push_back({start, i, true});
      continue;
    }
    // whitespace: \s+(?!\S) leaves the last space to the next token when a non-space follows
    size_t last = i;
    size_t e = i;
    while (e < n) {
      size_t t = e;
      if (!is_whitespace(next_cp(s, t))) break;
      last = e;
      e = t;
    }
    if (e < n && last > start) e = last;
    spans.push_back({start, e, true});
    i = e;
  }
}

class BertPre : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    for_pieces(pieces, [](Piece& p, Pieces& out) {
      const std::string& s = p.text;
      size_t i = 0, cur = std::string::npos;
      auto flush = [&](size_t end) {
        if (cur != std::string::npos && end > cur) {
          out.push_back(Piece{s.substr(cur, end - cur), -1, p.at_origin && cur == 0});
        }
        cur = std::string::npos;
      };
      while (i < s.size()) {
        size_t b = i;
        char32_t c = next_cp(s, i);
        if (is_whitespace(c)) {
          flush(b);
        } else if (is_punctuation(c)) {
          flush(b);
          out.push_back(Piece{s.substr(b, i - b), -1, p.at_origin && b == 0});
        } else if (cur == std::string::npos) {
          cur = b;
        }
      }
      flush(s.size());
    });
  }
};

class ByteLevelPre : public PreTokenizer {
 public:
  ByteLevelPre(bool prefix, bool regex) : prefix_(prefix), regex_(regex) {}
  void pre_tokenize(Pieces& pieces) const override {
    std::vector<Span> spans;
    for_pieces(pieces, [&](Piece& p, Pieces& out) {
      if (prefix_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      size_t first = out.size();
      if (regex_) {
        gpt2_spans(p.text, spans);
        split_spans(p, spans, SplitBehavior::Isolated, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
      for (size_t k = first; k < out.size(); ++k) {
        std::string m;
        m.reserve(out[k].text.size() * 2);
        for (char ch : out[k].text) m.append(byte_to_unicode(static_cast<unsigned char>(ch)));
        out[k].text.swap(m);
      }
    });
  }

 private:
  bool prefix_, regex_;
};

class Metaspace : public PreTokenizer {
 public:
  enum class Scheme { Always, First, Never };
  Metaspace(char32_t rep, Scheme scheme, bool split) : rep_c_(rep), scheme_(scheme), split_(split) {
    append_utf8(rep_, rep);
  }
  void pre_tokenize(Pieces& pieces) const override {
    std::vector<Span> spans;
    for_pieces(pieces, [&](Piece& p, Pieces& out) {
      std::string s;
      s.reserve(p.text.size() + 8);
      for (char ch : p.text) {
        if (ch == ' ') {
          s += rep_;
        } else {
          s.push_back(ch);
        }
      }
      bool starts = s.compare(0, rep_.size(), rep_) == 0;
      if (!starts && !s.empty() &&
          (scheme_ == Scheme::Always || (scheme_ == Scheme::First && p.at_origin))) {
        s.insert(0, rep_);
      }
      p.text.swap(s);
      if (!split_) {
        if (!p.text.empty()) out.push_back(std::move(p));
        return;
      }
      char32_t r = rep_c_;
      char_spans(p.text, [r](char32_t c) { return c == r; }, spans);
      split_spans(p, spans, SplitBehavior::MergedWithNext, out);
    });
  }

 private:
  char32_t rep_c_;
  std::string rep_;
  Scheme scheme_;
  bool split_;
};

// Splits on a per-character predicate with a behaviour.
template <class F>
class CharSplit : public PreTokenizer {
 public:
  CharSplit(F pred, SplitBehavior b) : pred_(pred), b_(b) {}
  void pre_tokenize(Pieces& pieces) const override {
    std::vector<Span> spans;
    for_pieces(pieces, [&](Piece& p, Pieces& out) {
      char_spans(p.text, pred_, spans);
      split_spans(p, spans, b_, out);
    });
  }

 private:
  F pred_;
  SplitBehavior b_;
};
template <class F>
std::unique_ptr<PreTokenizer> char_split(F pred, SplitBehavior b) {
  return std::make_unique<CharSplit<F>>(pred, b);
}

// Whitespace: the pattern \w+|[^\w\s]+, everything else removed.
class WhitespacePre : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    for_pieces(pieces, [](Piece& p, Pieces& out) {
      const std::string& s = p.text;
      size_t i = 0;
      int cur = -1;  // 0: word run, 1: other run
      size_t start = 0;
      auto flush = [&](size_t end) {
        if (cur >= 0 && end > start) {
          out.push_back(Piece{s.substr(start, end - start), -1, p.at_origin && start == 0});
        }
        cur = -1;
      };
      while (i < s.size()) {
        size_t b = i;
        char32_t c = next_cp(s, i);
        int k = is_word_char(c) ? 0 : is_whitespace(c) ? 2 : 1;
        if (k == 2) {
          flush(b);
        } else if (k != cur) {
          flush(b);
          cur = k;
          start = b;
        }
      }
      flush(s.size());
    });
  }
};

class SplitPre : public PreTokenizer {
 public:
  SplitPre(std::unique_ptr<Regex> re, SplitBehavior b, bool invert)
      : re_(std::move(re)), b_(b), invert_(invert) {}
  void pre_tokenize(Pieces& pieces) const override {
    std::vector<std::pair<size_t, size_t>> m;
    std::vector<Span> spans;
    for_pieces(pieces, [&](Piece& p, Pieces& out) {
      re_->find_all(p.text, m);
      spans.clear();
      size_t prev = 0;
      for (auto [a, e] : m) {
        if (prev != a) spans.push_back({prev, a, invert_});
        spans.push_back({a, e, !invert_});
        prev = e;
      }
      if (prev != p.text.size()) spans.push_back({prev, p.text.size(), invert_});
      split_spans(p, spans, b_, out);
    });
  }

 private:
  std::unique_ptr<Regex> re_;
  SplitBehavior b_;
  bool invert_;
};

class SequencePre : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> v) : v_(std::move(v)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& p : v_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> v_;
};

}  // namespace


std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& path,
                                                 const Ctx& ctx) {
  std::string type = type_of(j, path, ctx);
  if (type == "BertPreTokenizer") return std::make_unique<BertPre>();
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPre>(get_bool(j, "add_prefix_space", path, ctx, true),
                                          get_bool(j, "use_regex", path, ctx, true));
  }
  if (type == "Metaspace") {
    char32_t rep = get_char(j, "replacement", path, ctx);
    Metaspace::Scheme scheme = Metaspace::Scheme::Always;
    if (const json* s = opt_field(j, "prepend_scheme")) {
      std::string v = s->is_string() ? s->get<std::string>() : "";
      if (v == "always") scheme = Metaspace::Scheme::Always;
      else if (v == "first") scheme = Metaspace::Scheme::First;
      else if (v == "never") scheme = Metaspace::Scheme::Never;
      else ctx.fail("field '", path, ".prepend_scheme' must be \"first\", \"always\" or \"never\"");
    }
    if (const json* a = opt_field(j, "add_prefix_space")) {
      if (a->is_boolean() && !a->get<bool>()) {
        if (opt_field(j, "prepend_scheme") && scheme != Metaspace::Scheme::Never) {
          ctx.fail("'", path, "': add_prefix_space does not match declared prepend_scheme");
        }
        scheme = Metaspace::Scheme::Never;
      }
    }
    return std::make_unique<Metaspace>(rep, scheme, get_bool(j, "split", path, ctx, true));
  }
  if (type == "Whitespace") return std::make_unique<WhitespacePre>();
  if (type == "WhitespaceSplit") {
    return char_split([](char32_t c) { return is_whitespace(c); }, SplitBehavior::Removed);
  }
  if (type == "Punctuation") {
    SplitBehavior b = SplitBehavior::Isolated;
    if (const json* x = opt_field(j, "behavior")) b = parse_behavior(*x, path + ".behavior", ctx);
    return char_split([](char32_t c) { return is_punctuation(c); }, b);
  }
  if (type == "Digits") {
    bool ind = get_bool(j, "individual_digits", path, ctx, false);
    return char_split([](char32_t c) { return is_number(c); },
                      ind ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
  }
  if (type == "CharDelimiterSplit") {
    char32_t d = get_char(j, "delimiter", path, ctx);
    return char_split([d](char32_t c) { return c == d; }, SplitBehavior::Removed);
  }
  if (type == "Split") {
    return std::make_unique<SplitPre>(
        make_pattern(j, path, ctx), parse_behavior(field(j, "behavior", path, ctx), path + ".behavior", ctx),
        get_bool(j, "invert", path, ctx));
  }
  if (type == "Sequence") {
    const json& list = field(j, "pretokenizers", path, ctx);
    if (!list.is_array()) ctx.fail("field '", path, ".pretokenizers' must be an array");
    std::vector<std::unique_ptr<PreTokenizer>> v;
    for (size_t i = 0; i < list.size(); ++i) {
      v.push_back(make_pre_tokenizer(list[i], path + ".pretokenizers[" + std::to_string(i) + "]", ctx));
    }
    return std::make_unique<SequencePre>(std::move(v));
  }
  ctx.fail("pre-tokenizer type '", type, "' (", path,
           ") is not supported; supported: BertPreTokenizer, ByteLevel, Metaspace, Whitespace, "
           "WhitespaceSplit, Punctuation, Digits, CharDelimiterSplit, Split, Sequence");
}

// Exposed for tests: the hand-written GPT-2 splitter.
void gpt2_split_for_test(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) {
  std::vector<Span> spans;
  gpt2_spans(s, spans);
  out.clear();
  for (const Span& sp : spans) out.emplace_back(sp.start, sp.end);
}

}  // namespace peft::tok
