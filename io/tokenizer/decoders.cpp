// Decoders of tokenizer.json (Rust `tokenizers` src/decoders/): each rewrites the token list,
// the tokenizer joins the result.
#include "io/tokenizer/internal.h"

namespace peft::tok {

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    size_t f = s.find(from, pos);
    if (f == std::string_view::npos) break;
    out.append(s.substr(pos, f - pos));
    out.append(to);
    pos = f + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

namespace {

std::string wordpiece_cleanup(const std::string& s) {
  static const std::pair<const char*, const char*> rules[] = {
      {" .", "."},     {" ?", "?"},     {" !", "!"},   {" ,", ","},          {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"},   {" do not", " don't"},               {" 's", "'s"},
      {" 've", "'ve"}, {" 're", "'re"}};
  std::string out = s;
  for (const auto& [a, b] : rules) {
    if (out.find(a) != std::string::npos) out = replace_all(out, a, b);
  }
  return out;
}

class WordPieceDec : public Decoder {
 public:
  WordPieceDec(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& t) const override {
    for (size_t i = 0; i < t.size(); ++i) {
      if (i != 0) {
        if (t[i].compare(0, prefix_.size(), prefix_) == 0) {
          t[i].erase(0, prefix_.size());
        } else {
          t[i].insert(0, " ");
        }
      }
      if (cleanup_) t[i] = wordpiece_cleanup(t[i]);
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class ByteLevelDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& t) const override {
    std::string bytes;
    for (const std::string& tok : t) {
      size_t mark = bytes.size();
      bool ok = true;
      size_t i = 0;
      while (i < tok.size()) {
        int b = unicode_to_byte(next_cp(tok, i));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += tok;
      }
    }
    t.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDec : public Decoder {
 public:
  MetaspaceDec(char32_t rep, bool prepend) : prepend_(prepend) { append_utf8(rep_, rep); }
  void decode_chain(std::vector<std::string>& t) const override {
    for (size_t i = 0; i < t.size(); ++i) {
      t[i] = replace_all(t[i], rep_, i == 0 && prepend_ ? "" : " ");
    }
  }

 private:
  std::string rep_;
  bool prepend_;
};

class ReplaceDec : public Decoder {
 public:
  ReplaceDec(std::unique_ptr<Regex> re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& t) const override {
    std::vector<std::pair<size_t, size_t>> m;
    for (std::string& tok : t) {
      re_->find_all(tok, m);
      if (m.empty()) continue;
      std::string out;
      size_t last = 0;
      for (auto [a, b] : m) {
        out.append(tok, last, a - last);
        out += content_;
        last = b;
      }
      out.append(tok, last, std::string::npos);
      tok.swap(out);
    }
  }

 private:
  std::unique_ptr<Regex> re_;
  std::string content_;
};

class ByteFallbackDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& t) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (find_invalid_utf8(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& tok : t) {
      int byte = -1;
      if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>') byte = hex_byte(tok[3], tok[4]);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(tok));
      }
    }
    flush();
    t.swap(out);
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int hex_byte(char a, char b) {  // u8::from_str_radix(.., 16), which accepts "+x"
    int lo = hex(b);
    if (lo < 0) return -1;
    if (a == '+') return lo;
    int hi = hex(a);
    return hi < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& t) const override {
    std::string all;
    for (const std::string& s : t) all += s;
    t.assign(1, std::move(all));
  }
};

class StripDec : public Decoder {
 public:
  StripDec(char32_t c, size_t start, size_t stop) : c_(c), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& t) const override {
    for (std::string& tok : t) {
      std::vector<std::pair<size_t, char32_t>> cs;  // (byte offset, char)
      size_t i = 0;
      while (i < tok.size()) {
        size_t b = i;
        cs.emplace_back(b, next_cp(tok, i));
      }
      size_t start_cut = 0;
      for (size_t k = 0; k < std::min(start_, cs.size()); ++k) {
        if (cs[k].second != c_) break;
        start_cut = k + 1;
      }
      size_t stop_cut = cs.size();
      for (size_t k = 0; k < std::min(stop_, cs.size()); ++k) {
        size_t idx = cs.size() - k - 1;
        if (cs[idx].second != c_) break;
        stop_cut = idx;
      }
      if (stop_cut <= start_cut) {
        tok.clear();
        continue;
      }
      size_t a = cs[start_cut].first;
      size_t e = stop_cut < cs.size() ? cs[stop_cut].first : tok.size();
      tok = tok.substr(a, e - a);
    }
  }

 private:
  char32_t c_;
  size_t start_, stop_;
};

class BPEDec : public Decoder {
 public:
  explicit BPEDec(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& t) const override {
    if (suffix_.empty()) return;
    for (size_t i = 0; i < t.size(); ++i) t[i] = replace_all(t[i], suffix_, i + 1 == t.size() ? "" : " ");
  }

 private:
  std::string suffix_;
};

class CTCDec : public Decoder {
 public:
  CTCDec(std::string pad, std::string delim, bool cleanup)
      : pad_(std::move(pad)), delim_(std::move(delim)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& t) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < t.size(); ++i) {
      if (i > 0 && t[i] == t[i - 1]) continue;  // dedup
      std::string r = pad_.empty() ? t[i] : replace_all(t[i], pad_, "");
      if (cleanup_) {
        r = wordpiece_cleanup(r);
        if (!delim_.empty()) r = replace_all(r, delim_, " ");
      }
      if (!r.empty()) out.push_back(std::move(r));
    }
    t.swap(out);
  }

 private:
  std::string pad_, delim_;
  bool cleanup_;
};

class SequenceDec : public Decoder {
 public:
  explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> v) : v_(std::move(v)) {}
  void decode_chain(std::vector<std::string>& t) const override {
    for (const auto& d : v_) d->decode_chain(t);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> v_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& path, const Ctx& ctx) {
  std::string type = type_of(j, path, ctx);
  if (type == "WordPiece") {
    const json* p = opt_field(j, "prefix");
    return std::make_unique<WordPieceDec>(p ? get_string(j, "prefix", path, ctx) : "##",
                                          get_bool(j, "cleanup", path, ctx, true));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (type == "Metaspace") {
    bool prepend = true;
    if (const json* s = opt_field(j, "prepend_scheme")) {
      prepend = !(s->is_string() && s->get<std::string>() == "never");
    }
    if (const json* a = opt_field(j, "add_prefix_space")) {
      if (a->is_boolean() && !a->get<bool>()) prepend = false;
    }
    return std::make_unique<MetaspaceDec>(get_char(j, "replacement", path, ctx), prepend);
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceDec>(make_pattern(j, path, ctx), get_string(j, "content", path, ctx));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (type == "Fuse") return std::make_unique<FuseDec>();
  if (type == "Strip") {
    return std::make_unique<StripDec>(get_char(j, "content", path, ctx), get_uint(j, "start", path, ctx),
                                      get_uint(j, "stop", path, ctx));
  }
  if (type == "BPEDecoder") {
    const json* s = opt_field(j, "suffix");
    return std::make_unique<BPEDec>(s ? get_string(j, "suffix", path, ctx) : "</w>");
  }
  if (type == "CTC") {
    return std::make_unique<CTCDec>(get_string(j, "pad_token", path, ctx),
                                    get_string(j, "word_delimiter_token", path, ctx),
                                    get_bool(j, "cleanup", path, ctx, true));
  }
  if (type == "Sequence") {
    const json& list = field(j, "decoders", path, ctx);
    if (!list.is_array()) ctx.fail("field '", path, ".decoders' must be an array");
    std::vector<std::unique_ptr<Decoder>> v;
    for (size_t i = 0; i < list.size(); ++i) {
      v.push_back(make_decoder(list[i], path + ".decoders[" + std::to_string(i) + "]", ctx));
    }
    return std::make_unique<SequenceDec>(std::move(v));
  }
  ctx.fail("decoder type '", type, "' (", path,
           ") is not supported; supported: WordPiece, ByteLevel, Metaspace, Replace, ByteFallback, "
           "Fuse, Strip, BPEDecoder, CTC, Sequence");
}

}  // namespace peft::tok
