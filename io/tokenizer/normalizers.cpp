// Normalizers of tokenizer.json (Rust `tokenizers` src/normalizers/).
#include "io/tokenizer/internal.h"

namespace peft::tok {
namespace {

class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean, bool chinese, bool strip, bool lower)
      : clean_(clean), chinese_(chinese), strip_(strip), lower_(lower) {}
  void normalize(std::string& s) const override {
    if (clean_ || chinese_) {
      std::string out;
      out.reserve(s.size() + 8);
      size_t i = 0;
      while (i < s.size()) {
        size_t b = i;
        char32_t c = next_cp(s, i);
        if (clean_) {
          bool control = c != '\t' && c != '\n' && c != '\r' && is_other(c);
          if (c == 0 || c == 0xFFFD || control) continue;
          if (is_whitespace(c)) {
            out.push_back(' ');
            continue;
          }
        }
        if (chinese_ && c >= 0x3400 && is_chinese_char(c)) {
          out.push_back(' ');
          out.append(s, b, i - b);
          out.push_back(' ');
          continue;
        }
        out.append(s, b, i - b);
      }
      s.swap(out);
    }
    if (strip_) {
      std::string d = unicode_normalize(s, NormForm::NFD);
      std::string out;
      out.reserve(d.size());
      size_t i = 0;
      while (i < d.size()) {
        size_t b = i;
        char32_t c = next_cp(d, i);
        if (!is_mark_nonspacing(c)) out.append(d, b, i - b);
      }
      s.swap(out);
    }
    if (lower_) lowercase(s);
  }
  static void lowercase(std::string& s) {
    bool ascii = true;
    for (char& ch : s) {
      if (static_cast<unsigned char>(ch) >= 0x80) {
        ascii = false;
        break;
      }
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch + 32);
    }
    if (ascii) return;
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) append_lower(out, next_cp(s, i));
    s.swap(out);
  }

 private:
  bool clean_, chinese_, strip_, lower_;
};

class Lowercase : public Normalizer {
 public:
  void normalize(std::string& s) const override { BertNormalizer::lowercase(s); }
};

class UnicodeNorm : public Normalizer {
 public:
  explicit UnicodeNorm(NormForm f) : f_(f) {}
  void normalize(std::string& s) const override { s = unicode_normalize(s, f_); }

 private:
  NormForm f_;
};

class StripAccents : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
      size_t b = i;
      char32_t c = next_cp(s, i);
      if (!is_mark(c)) out.append(s, b, i - b);
    }
    s.swap(out);
  }
};

class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s) const override {
    size_t start = 0, end = s.size();
    if (left_) {
      size_t i = 0;
      while (i < s.size()) {
        size_t b = i;
        if (!is_whitespace(next_cp(s, i))) {
          i = b;
          break;
        }
      }
      start = i;
    }
    if (right_) {
      while (end > start) {
        size_t b = end - 1;
        while (b > start && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
        size_t j = b;
        if (!is_whitespace(next_cp(s, j))) break;
        end = b;
      }
    }
    s = s.substr(start, end - start);
  }

 private:
  bool left_, right_;
};

class Replace : public Normalizer {
 public:
  Replace(std::unique_ptr<Regex> re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  void normalize(std::string& s) const override {
    std::vector<std::pair<size_t, size_t>> m;
    re_->find_all(s, m);
    if (m.empty()) return;
    std::string out;
    out.reserve(s.size() + m.size() * content_.size());
    size_t last = 0;
    for (auto [a, b] : m) {
      out.append(s, last, a - last);
      out.append(content_);
      last = b;
    }
    out.append(s, last, std::string::npos);
    s.swap(out);
  }

 private:
  std::unique_ptr<Regex> re_;
  std::string content_;
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string p) : p_(std::move(p)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, p_);
  }

 private:
  std::string p_;
};

class ByteLevelNorm : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    std::string out;
    out.reserve(s.size() * 2);
    for (char ch : s) out.append(byte_to_unicode(static_cast<unsigned char>(ch)));
    s.swap(out);
  }
};

class SequenceNorm : public Normalizer {
 public:
  explicit SequenceNorm(std::vector<std::unique_ptr<Normalizer>> v) : v_(std::move(v)) {}
  void normalize(std::string& s) const override {
    for (const auto& n : v_) n->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> v_;
};

}  // namespace

// A Replace/Split "pattern": {"String": "..."} or {"Regex": "..."}.
std::unique_ptr<Regex> make_pattern(const json& j, const std::string& path, const Ctx& ctx) {
  const json& p = field(j, "pattern", path, ctx);
  if (!p.is_object() || p.size() != 1) {
    ctx.fail("field '", path, ".pattern' must be {\"String\": ...} or {\"Regex\": ...}");
  }
  if (p.contains("String")) {
    std::string s = get_string(p, "String", path + ".pattern", ctx);
    if (s.empty()) ctx.fail("an empty string pattern in '", path, "' is not supported");
    return std::make_unique<Regex>(s, true, path + ".pattern", ctx);
  }
  if (p.contains("Regex")) {
    return std::make_unique<Regex>(get_string(p, "Regex", path + ".pattern", ctx), false,
                                   path + ".pattern", ctx);
  }
  ctx.fail("field '", path, ".pattern' must be {\"String\": ...} or {\"Regex\": ...}");
}

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& path, const Ctx& ctx) {
  std::string type = type_of(j, path, ctx);
  if (type == "BertNormalizer" || type == "Bert") {
    bool lower = get_bool(j, "lowercase", path, ctx, true);
    std::optional<bool> strip;
    if (const json* s = opt_field(j, "strip_accents")) {
      if (!s->is_boolean()) ctx.fail("field '", path, ".strip_accents' must be a boolean or null");
      strip = s->get<bool>();
    }
    return std::make_unique<BertNormalizer>(get_bool(j, "clean_text", path, ctx, true),
                                            get_bool(j, "handle_chinese_chars", path, ctx, true),
                                            strip.value_or(lower), lower);
  }
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "NFC") return std::make_unique<UnicodeNorm>(NormForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNorm>(NormForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNorm>(NormForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNorm>(NormForm::NFKD);
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Strip") {
    return std::make_unique<Strip>(get_bool(j, "strip_left", path, ctx, true),
                                   get_bool(j, "strip_right", path, ctx, true));
  }
  if (type == "Replace") {
    return std::make_unique<Replace>(make_pattern(j, path, ctx), get_string(j, "content", path, ctx));
  }
  if (type == "Prepend") return std::make_unique<Prepend>(get_string(j, "prepend", path, ctx));
  if (type == "ByteLevel") return std::make_unique<ByteLevelNorm>();
  if (type == "Sequence") {
    const json& list = field(j, "normalizers", path, ctx);
    if (!list.is_array()) ctx.fail("field '", path, ".normalizers' must be an array");
    std::vector<std::unique_ptr<Normalizer>> v;
    for (size_t i = 0; i < list.size(); ++i) {
      v.push_back(make_normalizer(list[i], path + ".normalizers[" + std::to_string(i) + "]", ctx));
    }
    return std::make_unique<SequenceNorm>(std::move(v));
  }
  ctx.fail("normalizer type '", type, "' (", path,
           ") is not supported; supported: BertNormalizer, Lowercase, NFC, NFD, NFKC, NFKD, "
           "StripAccents, Strip, Replace, Prepend, ByteLevel, Sequence");
}

}  // namespace peft::tok
