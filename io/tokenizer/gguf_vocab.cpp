// llama.cpp's tokenizer for the vocabulary of a GGUF file (Tokenizer::from_gguf): a port of
// llama.cpp's src/llama-vocab.cpp (vocabulary loading, special-token partitioning, the SPM and
// BPE sessions, token_to_piece / detokenize) and src/unicode.cpp (the pre-tokenizer splits), so
// that the ids are llama.cpp's, not the Hugging Face `tokenizers` library's (they differ in the
// pre-tokenizer regexes, the special-token matching and SentencePiece's merge order).
//
// Supported `tokenizer.ggml.model`: "llama" (SentencePiece), "gpt2" (byte-level BPE) and
// "gemma4" (BPE over raw UTF-8 with ▁ for spaces). Every `tokenizer.ggml.pre` of llama.cpp's
// byte-level BPE except "kimi-k2" and "whitespace" is known. Checked against llama.cpp's own
// outputs (tests/test_tokenizer.cpp) for the pre-tokenizers gpt-2, llama-bpe, qwen2, qwen35,
// smollm (SmolLM2), starcoder, refact, falcon, mpt, deepseek-llm, deepseek-coder, command-r and
// default (gpt-neox, aquila), the SentencePiece vocabularies llama-spm, phi-3 and baichuan, and
// gemma4; the other names follow llama.cpp's tables unverified.
//
// Not ported: llama.cpp's other vocabulary types (bert, t5, rwkv, plamo2, ...), which are refused.
//
// Character classes: llama.cpp's table is Unicode 15.1 (unicode-data.cpp); utf8proc supplies
// the categories here, with the code points Unicode 15.1 added over utf8proc's 15.0 patched in.
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <functional>
#include <map>
#include <queue>
#include <regex>
#include <set>
#include <unordered_map>

#include "io/gguf.h"
#include "io/tokenizer/internal.h"

namespace peft::tok {

namespace {

// ---- character classes (llama.cpp's unicode_cpt_flags) ---------------------------------------
enum CptFlag : uint16_t {
  kUndefined = 0x0001,
  kNumber = 0x0002,       // \p{N}
  kLetter = 0x0004,       // \p{L}
  kSeparator = 0x0008,    // \p{Z}
  kAccentMark = 0x0010,   // \p{M}
  kPunctuation = 0x0020,  // \p{P}
  kSymbol = 0x0040,       // \p{S}
  kControl = 0x0080,      // \p{C}
  kCategories = 0x00FF,
  kWhitespace = 0x0100,  // \s
};
constexpr uint32_t kMaxCodepoints = 0x110000;

bool is_ws_cpt(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

uint16_t category_flag(uint32_t c) {
  // Unicode 15.1 over utf8proc's 15.0: the ideographic description characters U+2FFC..2FFF and
  // U+31EF (So), CJK Extension I (Lo)
  if ((c >= 0x2FFC && c <= 0x2FFF) || c == 0x31EF) return kSymbol;
  if (c >= 0x2EBF0 && c <= 0x2EE5D) return kLetter;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_CN: return kUndefined;
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: return kLetter;
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: return kAccentMark;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO: return kNumber;
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS: case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF: case UTF8PROC_CATEGORY_PO: return kPunctuation;
    case UTF8PROC_CATEGORY_SM: case UTF8PROC_CATEGORY_SC: case UTF8PROC_CATEGORY_SK:
    case UTF8PROC_CATEGORY_SO: return kSymbol;
    case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP: return kSeparator;
    default: return kControl;  // Cc, Cf, Cs, Co
  }
}

// unicode_cpt_flags_from_cpt: out of the code point range counts as undefined.
uint16_t cpt_flags(uint32_t c) {
  if (c >= kMaxCodepoints) return kUndefined;
  return category_flag(c) | (is_ws_cpt(c) ? kWhitespace : 0);
}

// Only the ASCII contractions ('s 't 're 've 'm 'll 'd) are compared after lowering; no other
// code point lowers to one of those letters, so ASCII lowering is llama.cpp's unicode_tolower here.
uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// unicode_cpts_from_utf8: lenient, an invalid byte becomes U+FFFD (token texts may be invalid).
uint32_t cpt_from_utf8(const std::string& s, size_t& off) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[off + k]); };
  auto cont = [&](size_t k) { return off + k < s.size() && (b(k) & 0xC0) == 0x80; };
  const unsigned char c = b(0);
  if (!(c & 0x80)) { ++off; return c; }
  if (!(c & 0x40)) { ++off; return 0xFFFD; }
  if (!(c & 0x20)) {
    if (!cont(1)) { ++off; return 0xFFFD; }
    uint32_t r = ((c & 0x1F) << 6) | (b(1) & 0x3F);
    off += 2;
    return r;
  }
  if (!(c & 0x10)) {
    if (!cont(1) || !cont(2)) { ++off; return 0xFFFD; }
    uint32_t r = ((c & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    off += 3;
    return r;
  }
  if (!(c & 0x08)) {
    if (!cont(1) || !cont(2) || !cont(3)) { ++off; return 0xFFFD; }
    uint32_t r = ((c & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
    off += 4;
    return r;
  }
  ++off;
  return 0xFFFD;
}
std::vector<uint32_t> cpts_from_utf8(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t off = 0;
  while (off < s.size()) out.push_back(cpt_from_utf8(s, off));
  return out;
}
std::string cpt_to_utf8(uint32_t c) {
  std::string s;
  append_utf8(s, static_cast<char32_t>(c));
  return s;
}
size_t utf8_len(char lead) {
  static const size_t lookup[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[static_cast<uint8_t>(lead) >> 4];
}

// ---- the pre-tokenizer splits (unicode.cpp) --------------------------------------------------
// Each splitter refines `offsets` (lengths in code points of the current pieces) into smaller
// pieces, as llama.cpp's unicode_regex_split_custom_* do.
using Offsets = std::vector<size_t>;

// The common scaffolding of llama.cpp's hand-written splitters: code point / flags lookups that
// read as "out of range" beyond the current piece, and the token emitter.
struct Piecewise {
  const std::vector<uint32_t>& cpts;
  Offsets& out;
  size_t ini = 0, end = 0, prev_end = 0;
  static constexpr uint32_t kOutOfRange = 0xFFFFFFFF;
  uint32_t cpt(size_t pos) const { return ini <= pos && pos < end ? cpts[pos] : kOutOfRange; }
  uint16_t flags(size_t pos) const { return ini <= pos && pos < end ? cpt_flags(cpts[pos]) : 0; }
  size_t add(size_t e) {
    const size_t len = e - prev_end;
    if (len > 0) out.push_back(len);
    prev_end = e;
    return len;
  }
  template <class F>
  static Offsets run(const std::vector<uint32_t>& cpts, const Offsets& offsets, F&& body) {
    Offsets out;
    out.reserve(offsets.size());
    size_t start = 0;
    for (size_t offset : offsets) {
      Piecewise p{cpts, out, start, start + offset, start};
      start += offset;
      body(p);
    }
    return out;
  }
};

bool is_letter(uint16_t f) { return f & kLetter; }
bool is_number(uint16_t f) { return f & kNumber; }
bool is_space(uint16_t f) { return f & kWhitespace; }

// 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive; returns the match length (0: none).
size_t contraction_at(const Piecewise& p, size_t pos, bool fold_case) {
  if (p.cpt(pos) != '\'' || pos + 1 >= p.end) return 0;
  auto low = [&](uint32_t c) { return fold_case ? ascii_lower(c) : c; };
  const uint32_t n1 = low(p.cpt(pos + 1));
  if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') return 2;
  if (pos + 2 < p.end) {
    const uint32_t n2 = low(p.cpt(pos + 2));
    if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) return 3;
  }
  return 0;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
Offsets split_gpt2(const std::vector<uint32_t>& cpts, const Offsets& offsets) {
  return Piecewise::run(cpts, offsets, [](Piecewise& p) {
    for (size_t pos = p.ini; pos < p.end;) {
      const uint32_t cpt = p.cpt(pos);
      const uint16_t flags = p.flags(pos);
      if (size_t n = contraction_at(p, pos, false)) {
        pos += p.add(pos + n);
        continue;
      }
      uint16_t flags2 = cpt == ' ' ? p.flags(pos + 1) : flags;
      if (is_letter(flags2)) {
        pos += cpt == ' ';
        while (is_letter(flags2)) flags2 = p.flags(++pos);
        p.add(pos);
        continue;
      }
      if (is_number(flags2)) {
        pos += cpt == ' ';
        while (is_number(flags2)) flags2 = p.flags(++pos);
        p.add(pos);
        continue;
      }
      if (!(flags2 & (kWhitespace | kLetter | kNumber)) && flags2) {
        pos += cpt == ' ';
        while (!(flags2 & (kWhitespace | kLetter | kNumber)) && flags2) flags2 = p.flags(++pos);
        p.add(pos);
        continue;
      }
      size_t num_ws = 0;
      while (is_space(p.flags(pos + num_ws))) ++num_ws;
      if (num_ws > 1 && p.cpt(pos + num_ws) != Piecewise::kOutOfRange) {  // \s+(?!\S)
        pos += num_ws - 1;
        p.add(pos);
        continue;
      }
      if (num_ws > 0) {
        pos += num_ws;
        p.add(pos);
        continue;
      }
      p.add(++pos);
    }
  });
}

// The Llama-3 family: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?LETTERS|\p{N}{1,max_digits}|
// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ — Llama-3 (max_digits 3), Qwen2 (1) and
// Qwen3.5 (1, letters include \p{M}).
Offsets split_llama3_like(const std::vector<uint32_t>& cpts, const Offsets& offsets, size_t max_digits,
                          bool marks_are_letters) {
  return Piecewise::run(cpts, offsets, [&](Piecewise& p) {
    const uint16_t word = marks_are_letters ? (kLetter | kAccentMark) : kLetter;
    const uint16_t not_other = kWhitespace | kLetter | kNumber | (marks_are_letters ? kAccentMark : 0);
    for (size_t pos = p.ini; pos < p.end;) {
      const uint32_t cpt = p.cpt(pos);
      const uint16_t flags = p.flags(pos);
      if (size_t n = contraction_at(p, pos, true)) {
        pos += p.add(pos + n);
        continue;
      }
      if (!(cpt == '\r' || cpt == '\n' || is_number(flags))) {
        if ((flags & word) || (p.flags(pos + 1) & word)) {
          ++pos;
          while (p.flags(pos) & word) ++pos;
          p.add(pos);
          continue;
        }
      }
      if (is_number(flags)) {
        if (max_digits == 1) {
          p.add(++pos);
        } else {
          size_t ini = pos;
          while (is_number(p.flags(pos))) {
            if (++pos - ini >= max_digits) {
              p.add(pos);
              ini = pos;
            }
          }
          p.add(pos);
        }
        continue;
      }
      uint16_t flags2 = cpt == ' ' ? p.flags(pos + 1) : flags;
      if (!(flags2 & not_other) && flags) {
        pos += cpt == ' ';
        while (!(flags2 & not_other) && flags2) flags2 = p.flags(++pos);
        uint32_t c2 = p.cpt(pos);
        while (c2 == '\r' || c2 == '\n') c2 = p.cpt(++pos);
        p.add(pos);
        continue;
      }
      size_t num_ws = 0, last_end_rn = 0;
      while (is_space(p.flags(pos + num_ws))) {
        const uint32_t c2 = p.cpt(pos + num_ws);
        if (c2 == '\r' || c2 == '\n') last_end_rn = pos + num_ws + 1;
        ++num_ws;
      }
      if (last_end_rn > 0) {  // \s*[\r\n]+
        pos = last_end_rn;
        p.add(pos);
        continue;
      }
      if (num_ws > 1 && p.cpt(pos + num_ws) != Piecewise::kOutOfRange) {
        pos += num_ws - 1;
        p.add(pos);
        continue;
      }
      if (num_ws > 0) {
        pos += num_ws;
        p.add(pos);
        continue;
      }
      p.add(++pos);
    }
  });
}

// AFMoE / tiny_aya digits: runs of \p{N} cut into a leading 1-2 digits and groups of 3; the text
// between digit runs stays attached to the following run (as llama.cpp's splitter does).
Offsets split_afmoe_digits(const std::vector<uint32_t>& cpts, const Offsets& offsets) {
  return Piecewise::run(cpts, offsets, [](Piecewise& p) {
    for (size_t pos = p.ini; pos < p.end;) {
      if (is_number(p.flags(pos))) {
        const size_t digit_start = pos;
        size_t digit_count = 0;
        while (is_number(p.flags(pos)) && pos < p.end) {
          ++digit_count;
          ++pos;
        }
        size_t current = digit_start;
        if (const size_t rem = digit_count % 3; rem > 0) {
          p.add(current + rem);
          current += rem;
        }
        while (current < digit_start + digit_count) {
          p.add(current + 3);
          current += 3;
        }
        continue;
      }
      ++pos;
    }
    if (p.prev_end < p.end) p.add(p.end);
  });
}

// [^\n]+|[\n]+
Offsets split_newlines(const std::vector<uint32_t>& cpts, const Offsets& offsets) {
  Offsets out;
  size_t start = 0;
  for (size_t offset : offsets) {
    const size_t end = start + offset;
    size_t pos = start;
    while (pos < end) {
      const bool nl = cpts[pos] == '\n';
      const size_t run = pos;
      while (pos < end && (cpts[pos] == '\n') == nl) ++pos;
      out.push_back(pos - run);
    }
    start = end;
  }
  return out;
}

enum class Splitter { Regex, Gpt2, Llama3, Qwen2, Qwen35, AfmoeDigits, Newlines };

Splitter custom_splitter(const std::string& r) {
  if (r == "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)") return Splitter::Gpt2;
  if (r == "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" ||
      r == "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    return Splitter::Llama3;
  if (r == "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    return Splitter::Qwen2;
  if (r == "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    return Splitter::Qwen35;
  if (r == "\\p{AFMoE_digits}" || r == "\\d{1,3}(?=(?:\\d{3})*\\b)") return Splitter::AfmoeDigits;
  if (r == "[^\\n]+|[\\n]+") return Splitter::Newlines;
  return Splitter::Regex;
}

// The category escapes llama.cpp rewrites into single bytes of a "collapsed" text, so that
// std::regex (which has no \p{..}) can run them.
const std::map<std::string, int>& ucat_enum() {
  static const std::map<std::string, int> m = {
      {"\\p{N}", kNumber}, {"\\p{L}", kLetter}, {"\\p{P}", kPunctuation}, {"\\p{M}", kAccentMark},
      {"\\p{S}", kSymbol}, {"\\p{Lu}", kLetter}, {"\\p{Ll}", kLetter}, {"\\p{Lt}", kLetter},
      {"\\p{Lm}", kLetter}, {"\\p{Lo}", kLetter}};
  return m;
}
const std::map<int, int>& ucat_cpt() {
  static const std::map<int, int> m = {
      {kNumber, 0xD1}, {kLetter, 0xD2}, {kPunctuation, 0xD3}, {kAccentMark, 0xD4}, {kSymbol, 0xD5}};
  return m;
}
const std::map<int, std::string>& ucat_ascii() {
  static const std::map<int, std::string> m = {
      {kNumber, "\x30-\x39"},
      {kLetter, "\x41-\x5A\x61-\x7A"},
      {kPunctuation, "\x21-\x23\x25-\x2A\x2C-\x2F\x3A-\x3B\x3F-\x40\\\x5B-\\\x5D\x5F\\\x7B\\\x7D"},
      {kAccentMark, ""},
      {kSymbol, "\\\x24\\\x2B\x3C-\x3E\x5E\x60\\\x7C\\\x7E"}};
  return m;
}
bool uses_categories(const std::string& regex) {
  for (const auto& [pat, flag] : ucat_enum())
    if (regex.find(pat) != std::string::npos) return true;
  return false;
}

// One pre-tokenizer regex, compiled once (llama.cpp compiles it on every call; same result).
struct SplitRegex {
  std::string source;
  Splitter kind = Splitter::Regex;
  bool collapsed = false;  // matched on the collapsed text (it uses \p{..})
  std::regex narrow;
  std::wregex wide;
};

SplitRegex compile_split_regex(const std::string& regex, const Ctx& ctx) {
  SplitRegex r;
  r.source = regex;
  r.kind = custom_splitter(regex);
  if (r.kind != Splitter::Regex) return r;
  constexpr auto flags = std::regex_constants::optimize | std::regex_constants::nosubs;
  try {
    r.collapsed = uses_categories(regex);
    if (r.collapsed) {
      for (unsigned char ch : regex)
        if (ch >= 0x80) ctx.fail("pre-tokenizer regex mixes \\p{..} categories and non-ASCII characters: ", regex);
      std::string out;
      bool inside = false;  // inside [...], where a category is spliced in without brackets
      for (size_t i = 0; i < regex.size(); ++i) {
        if (regex[i] == '[' && (i == 0 || regex[i - 1] != '\\')) {
          out += '[';
          inside = true;
          continue;
        }
        if (inside && regex[i] == ']' && regex[i - 1] != '\\') {
          out += ']';
          inside = false;
          continue;
        }
        if (regex[i] == '\\' && i + 3 < regex.size() && regex[i + 1] == 'p' && regex[i + 2] == '{') {
          const size_t close = regex.find('}', i + 3);
          if (close != std::string::npos && close <= i + 10) {
            auto it = ucat_enum().find(regex.substr(i, close - i + 1));
            if (it != ucat_enum().end()) {
              if (!inside) out += '[';
              out += static_cast<char>(ucat_cpt().at(it->second));
              out += ucat_ascii().at(it->second);
              if (!inside) out += ']';
              i = close;
              continue;
            }
          }
        }
        out += regex[i];
      }
      r.narrow = std::regex(out, flags);
    } else {
      const std::vector<uint32_t> cpts = cpts_from_utf8(regex);
      r.wide = std::wregex(std::wstring(cpts.begin(), cpts.end()), flags);
    }
  } catch (const std::regex_error& e) {
    ctx.fail("pre-tokenizer regex '", regex, "' does not compile: ", e.what());
  }
  return r;
}

template <class CharT, class Regex>
Offsets split_stl(const std::basic_string<CharT>& text, const Regex& expr, const Offsets& offsets) {
  using It = typename std::basic_string<CharT>::const_iterator;
  Offsets out;
  out.reserve(offsets.size());
  size_t start = 0;
  for (size_t offset : offsets) {
    std::regex_iterator<It> it(text.begin() + ptrdiff_t(start), text.begin() + ptrdiff_t(start + offset), expr), end;
    int64_t start_idx = 0;
    for (; it != end; ++it) {
      const auto& m = *it;
      if (m.position() > start_idx) out.push_back(size_t(m.position() - start_idx));
      out.push_back(size_t(m.length()));
      start_idx = m.position() + m.length();
    }
    if (start_idx < int64_t(offset)) out.push_back(size_t(int64_t(offset) - start_idx));
    start += offset;
  }
  return out;
}

// unicode_regex_split: the words of `text` after every regex, byte-encoded (GPT-2's map) or not.
std::vector<std::string> regex_split(const std::string& text, const std::vector<SplitRegex>& regexes,
                                     bool byte_encode) {
  const std::vector<uint32_t> cpts = cpts_from_utf8(text);
  std::string collapsed;
  if (std::any_of(regexes.begin(), regexes.end(), [](const SplitRegex& r) { return uses_categories(r.source); })) {
    collapsed.resize(cpts.size());
    for (size_t i = 0; i < cpts.size(); ++i) {
      if (cpts[i] < 128) {
        collapsed[i] = static_cast<char>(cpts[i]);
        continue;
      }
      const uint16_t f = cpt_flags(cpts[i]);
      if (f & kWhitespace) {
        collapsed[i] = '\x0B';  // std::regex's \s knows only ASCII whitespace
      } else if (auto it = ucat_cpt().find(f & kCategories); it != ucat_cpt().end()) {
        collapsed[i] = static_cast<char>(it->second);
      } else {
        collapsed[i] = static_cast<char>(0xD0);
      }
    }
  }
  Offsets offsets = {cpts.size()};
  for (const SplitRegex& r : regexes) {
    switch (r.kind) {
      case Splitter::Gpt2: offsets = split_gpt2(cpts, offsets); break;
      case Splitter::Llama3: offsets = split_llama3_like(cpts, offsets, 3, false); break;
      case Splitter::Qwen2: offsets = split_llama3_like(cpts, offsets, 1, false); break;
      case Splitter::Qwen35: offsets = split_llama3_like(cpts, offsets, 1, true); break;
      case Splitter::AfmoeDigits: offsets = split_afmoe_digits(cpts, offsets); break;
      case Splitter::Newlines: offsets = split_newlines(cpts, offsets); break;
      case Splitter::Regex:
        if (r.collapsed) {
          offsets = split_stl(collapsed, r.narrow, offsets);
        } else {
          std::wstring wtext(cpts.begin(), cpts.end());
          for (auto& c : wtext)
            if (uint32_t(c) > 0x7F && (cpt_flags(uint32_t(c)) & kWhitespace)) c = 0x0B;
          offsets = split_stl(wtext, r.wide, offsets);
        }
        break;
    }
  }
  std::vector<std::string> words;
  words.reserve(offsets.size());
  size_t start = 0;
  for (size_t offset : offsets) {
    std::string w;
    for (size_t i = start; i < start + offset; ++i) {
      if (byte_encode) {
        for (char b : cpt_to_utf8(cpts[i])) w += byte_to_unicode(static_cast<unsigned char>(b));
      } else {
        w += cpt_to_utf8(cpts[i]);
      }
    }
    words.push_back(std::move(w));
    start += offset;
  }
  return words;
}

// ---- the pre-tokenizer of each tokenizer.ggml.pre (llama_vocab::impl::load) -----------------
struct PreTokenizerSpec {
  std::vector<std::string> regexes;
  bool clean_spaces = true;
  bool ignore_merges = false;
  bool add_bos = false;
  bool byte_encode = true;
  bool escape_whitespaces = false;
  bool no_bos = false;  // the default BOS id is cleared (chatglm)
  bool gemma4_newlines = false;
};

// llama.cpp's regex lists, by pre-tokenizer family (llm_tokenizer_bpe's constructor).
namespace rx {
const char* const kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const char* const kLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kQwen2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kGpt4o =
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kDeepseek3Main =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
const char* const kPoro = " ?[^(\\s|.,!?…。，、।۔،)]+";
}  // namespace rx

PreTokenizerSpec pre_tokenizer_spec(const std::string& pre, const Ctx& ctx) {
  PreTokenizerSpec s;
  auto is = [&](std::initializer_list<const char*> names) {
    return std::any_of(names.begin(), names.end(), [&](const char* n) { return pre == n; });
  };
  auto no_clean = [&] { s.clean_spaces = false; };
  if (pre.empty() || pre == "default") {
    s.regexes = {"[\\p{P}\\$\\+<=>\\^~\\|]+", rx::kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"};
  } else if (pre == "minicpm5") {
    s.regexes = {"\\p{N}{1,3}",
                 "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    s.ignore_merges = true;
  } else if (is({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                 "jina-v5-nano"})) {
    s.regexes = {rx::kLlama3};
    s.ignore_merges = true;
    s.add_bos = true;
  } else if (pre == "deepseek-llm") {
    // the letter class as escapes: some of its characters (U+1FBE, U+1FD3, ...) are not in
    // Unicode normal form, and an editor that normalises them would break the ranges
    s.regexes = {"[\r\n]",
                 "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370"
                 "-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-"
                 "\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF"
                 "\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50"
                 "-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC"
                 "\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115"
                 "\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183"
                 "\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F"
                 "\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400"
                 "-\U0001044F\U000104B0-\U000104D3\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0"
                 "-\U000118DF\U0001E900-\U0001E943]+",
                 "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"};
    no_clean();
  } else if (pre == "deepseek-coder") {
    s.regexes = {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"};
    no_clean();
  } else if (is({"deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"})) {
    s.regexes = {"\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", rx::kDeepseek3Main};
    no_clean();
  } else if (pre == "spark2_5") {
    s.regexes = {"\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                 "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+",
                 "\\p{N}"};
    no_clean();
  } else if (pre == "youtu") {
    s.regexes = {"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
                 "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
    s.ignore_merges = true;
  } else if (pre == "falcon") {
    s.regexes = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", rx::kGpt2, "[0-9][0-9][0-9]"};
  } else if (is({"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"})) {
    s.regexes = {"\\p{N}", rx::kGpt2};
    if (is({"command-r", "smollm"})) no_clean();
  } else if (is({"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
                 "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4",
                 "trillion", "granite-docling"})) {
    s.regexes = {rx::kGpt2};
    if (is({"trillion", "granite-docling"})) no_clean();
  } else if (pre == "jais-2") {
    s.regexes = {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}"};
  } else if (is({"gemma4", "granite-embed-multi-311m", "sarvam-moe"})) {
    s.regexes = {"[^\\n]+|[\\n]+"};
    s.byte_encode = false;
    s.escape_whitespaces = true;
    s.gemma4_newlines = pre != "sarvam-moe";
    if (pre == "sarvam-moe") no_clean();
  } else if (is({"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open",
                 "grok-2"})) {
    s.regexes = {rx::kQwen2};
    if (!is({"megrez", "stablelm2"})) no_clean();
  } else if (pre == "qwen35") {
    s.regexes = {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
  } else if (is({"dbrx", "smaug-bpe"})) {
    s.regexes = {rx::kLlama3};
  } else if (is({"poro-chat", "bloom", "gpt3-finnish"})) {
    s.regexes = {rx::kPoro};
    if (pre == "poro-chat") no_clean();
  } else if (is({"chatglm-bpe", "glm4", "glm5"})) {
    s.regexes = {rx::kLlama3};
    s.no_bos = true;
    s.ignore_merges = pre != "chatglm-bpe";
  } else if (pre == "viking") {
    s.regexes = {rx::kPoro, "\\p{N}"};
    no_clean();
  } else if (pre == "tekken") {
    s.regexes = {"[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
    s.ignore_merges = true;
    s.add_bos = true;
  } else if (pre == "exaone-moe") {
    s.regexes = {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"};
  } else if (pre == "chameleon") {
    s.regexes = {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
                 "[\\p{P}!-/:-@\\[-`{-~]", rx::kGpt2};
    s.add_bos = true;
    no_clean();
  } else if (is({"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"})) {
    s.regexes = {rx::kGpt4o};
    no_clean();
  } else if (pre == "granite-embed-multi-97m") {
    s.regexes = {"[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
    s.ignore_merges = true;
  } else if (is({"tiny_aya", "cohere2moe"})) {
    s.regexes = {"\\d{1,3}(?=(?:\\d{3})*\\b)",
                 "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
  } else if (pre == "superbpe") {
    s.regexes = {"\\p{N}+", "(?=(\\d{3})+(?!\\d))"};
    no_clean();
  } else if (is({"bailingmoe", "bailingmoe2", "llada-moe"})) {
    s.regexes = {"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"};
    no_clean();
  } else if (pre == "seed-coder") {
    s.regexes = {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
  } else if (pre == "ufakzeka") {
    s.regexes = {"[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
  } else if (pre == "afmoe") {
    s.regexes = {"\\p{AFMoE_digits}", "[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+",
                 "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    no_clean();
  } else if (pre == "laguna") {
    s.regexes = {"[^\\n]+|[\\n]+", rx::kQwen2};
    no_clean();
  } else if (pre == "kimi-k2" || pre == "whitespace") {
    ctx.fail("tokenizer.ggml.pre '", pre, "' is not supported (its llama.cpp tokenizer is a special case)");
  } else {
    ctx.fail("unknown tokenizer.ggml.pre '", pre,
             "' (llama.cpp's pre-tokenizer names: default, gpt-2, llama-bpe, qwen2, smollm, starcoder, ...)");
  }
  return s;
}

// ---- the vocabulary --------------------------------------------------------------------------
enum TokenAttr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1 << 0,
  kAttrUnused = 1 << 1,
  kAttrNormal = 1 << 2,
  kAttrControl = 1 << 3,
  kAttrUserDefined = 1 << 4,
  kAttrByte = 1 << 5,
  kAttrLstrip = 1 << 7,
  kAttrRstrip = 1 << 8,
};
constexpr int32_t kNoToken = -1;

struct TokenData {
  std::string text;
  float score = 0.0f;
  uint32_t attr = kAttrNormal;
};

struct PairHash {
  size_t operator()(const std::pair<std::string, std::string>& p) const {
    return std::hash<std::string>{}(p.first) ^ (std::hash<std::string>{}(p.second) << 1);
  }
};

bool is_c_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }  // isspace in the C locale

void replace_all_inplace(std::string& s, const std::string& from, const std::string& to) {
  s = replace_all(s, from, to);
}
const std::string kSpaceMarker = "\xE2\x96\x81";  // U+2581 ▁

class LlamaVocab final : public GGUFVocab {
 public:
  LlamaVocab(const io::GGUFFile& f, const Ctx& ctx) : ctx_(ctx) { load(f); }

  // ---- Model ----
  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override {
    tokenize_fragment(std::string(word), true, ids);
  }
  std::optional<int64_t> token_to_id(std::string_view token) const override {
    const int32_t id = text_to_token(std::string(token));
    if (id == kNoToken) return std::nullopt;
    return id;
  }
  const std::string* id_to_token(int64_t id) const override {
    if (id < 0 || id >= int64_t(tokens_.size())) return nullptr;
    return &tokens_[size_t(id)].text;
  }
  size_t vocab_size() const override { return tokens_.size(); }

  // ---- llama_tokenize(add_special, parse_special) ----
  Encoding encode(const std::string& text, bool add_special, const std::optional<TruncationParams>& truncation,
                  bool parse_special) const override {
    std::vector<int32_t> body;
    bool prev_special = true;  // SPM: a space prefix on the first fragment and after each special token
    for (const Fragment& fr : partition(text, parse_special)) {
      if (fr.token != kNoToken) {
        body.push_back(fr.token);
        prev_special = true;
      } else {
        tokenize_fragment(text.substr(fr.offset, fr.length), prev_special, body);
        prev_special = false;
      }
    }
    const bool bos = add_special && add_bos_, eos = add_special && add_eos_;
    if (truncation) {
      const size_t n_added = size_t(bos) + size_t(eos);
      if (n_added > truncation->max_length)
        ctx_.fail("truncation max_length ", truncation->max_length, " is smaller than the ", n_added,
                  " special tokens (BOS/EOS) the vocabulary adds");
      const size_t keep = truncation->max_length - n_added;
      if (body.size() > keep) {
        if (truncation->direction == TruncationParams::Direction::Right) body.resize(keep);
        else body.erase(body.begin(), body.end() - ptrdiff_t(keep));
      }
    }
    Encoding e;
    auto push = [&](int32_t id, bool special) {
      e.ids.push_back(id);
      e.tokens.push_back(tokens_[size_t(id)].text);
      e.special_tokens_mask.push_back(special ? 1 : 0);
    };
    if (bos) {
      if (bos_id_ == kNoToken) ctx_.fail("the vocabulary adds a BOS token but has no BOS id");
      push(bos_id_, true);
    }
    for (int32_t id : body) push(id, false);
    if (eos) {
      if (eos_id_ == kNoToken) ctx_.fail("the vocabulary adds an EOS token but has no EOS id");
      push(eos_id_, true);
    }
    e.type_ids.assign(e.ids.size(), 0);
    e.attention_mask.assign(e.ids.size(), 1);
    return e;
  }

  // ---- llama_detokenize(remove_special = false, unparse_special = !skip_special) ----
  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::string text;
    bool remove_space = add_space_prefix_;
    for (int64_t id : ids) {
      if (id < 0 || id >= int64_t(tokens_.size())) continue;  // unknown ids are skipped
      const uint32_t attr = tokens_[size_t(id)].attr;
      if (!(skip_special && (attr & (kAttrUnknown | kAttrControl)))) {
        std::string_view piece = pieces_[size_t(id)];
        if (remove_space && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
        text += piece;
      }
      remove_space = false;
    }
    if (clean_spaces_) clean_up_spaces(text);
    return text;
  }

 private:
  struct Fragment {
    int32_t token = kNoToken;  // a special token, or raw text [offset, offset + length)
    size_t offset = 0, length = 0;
  };

  void load(const io::GGUFFile& f);
  void apply_token_overrides(const io::GGUFFile& f);
  std::string piece_for_cache(int32_t id) const;

  int32_t text_to_token(const std::string& text) const {
    auto it = token_to_id_.find(text);
    return it == token_to_id_.end() ? kNoToken : it->second;
  }
  // llama_vocab::byte_to_token for SPM: <0xXX>, else the byte itself as a token.
  int32_t spm_byte_token(uint8_t ch) const {
    static const char* hex = "0123456789ABCDEF";
    const char buf[7] = {'<', '0', 'x', hex[ch >> 4], hex[ch & 15], '>', 0};
    if (int32_t t = text_to_token(buf); t != kNoToken) return t;
    if (int32_t t = text_to_token(std::string(1, char(ch))); t != kNoToken) return t;
    ctx_.fail("the vocabulary has no byte token <0x", hex[ch >> 4], hex[ch & 15], "> for a byte fallback");
  }

  // tokenizer_st_partition: split out every control / user-defined / unknown token, longest
  // first, honouring their lstrip / rstrip attributes; without parse_special only the
  // user-defined ones (control and unknown tokens stay text).
  std::vector<Fragment> partition(const std::string& text, bool parse_special = true) const {
    std::vector<Fragment> frags;
    if (text.empty()) return frags;
    frags.push_back({kNoToken, 0, text.size()});
    std::vector<Fragment> next;
    for (int32_t special : special_cache_) {
      const TokenData& data = tokens_[size_t(special)];
      if (!parse_special && (data.attr & (kAttrControl | kAttrUnknown))) continue;
      const std::string& st = data.text;
      next.clear();
      for (const Fragment& fr : frags) {
        if (fr.token != kNoToken) {
          next.push_back(fr);
          continue;
        }
        const size_t end = fr.offset + fr.length;
        size_t pos = fr.offset;
        bool matched = false;
        while (true) {
          const size_t m = std::string_view(text.data(), end).find(st, pos);
          if (m == std::string_view::npos) break;
          matched = true;
          size_t left_len = m - pos;
          if (data.attr & kAttrLstrip)
            while (left_len > 0 && is_c_space(text[pos + left_len - 1])) --left_len;
          if (left_len > 0) next.push_back({kNoToken, pos, left_len});
          next.push_back({special, 0, 0});
          size_t right = m + st.size();
          if (right < end && (data.attr & kAttrRstrip))
            while (right < end && is_c_space(text[right])) ++right;
          pos = right;
          if (pos >= end) break;
        }
        if (!matched) next.push_back(fr);
        else if (pos < end) next.push_back({kNoToken, pos, end - pos});
      }
      frags.swap(next);
    }
    return frags;
  }

  void tokenize_fragment(std::string text, bool prev_special, std::vector<int32_t>& out) const {
    if (spm_) {
      if (add_space_prefix_ && prev_special) text.insert(text.begin(), ' ');
      replace_all_inplace(text, " ", kSpaceMarker);
      spm_session(text, out);
    } else {
      if (escape_whitespaces_) replace_all_inplace(text, " ", kSpaceMarker);
      bpe_session(text, out);
    }
  }

  struct Symbol {
    int prev, next;
    const char* text;
    size_t n;
  };

  // llm_tokenizer_spm_session: best-score bigram merges, unmerged symbols as byte tokens.
  void spm_session(const std::string& text, std::vector<int32_t>& out) const {
    struct Bigram {
      int left, right;
      float score;
      size_t size;
    };
    struct Cmp {
      bool operator()(const Bigram& l, const Bigram& r) const {
        return l.score < r.score || (l.score == r.score && l.left > r.left);
      }
    };
    std::vector<Symbol> symbols;
    std::priority_queue<Bigram, std::vector<Bigram>, Cmp> queue;
    std::map<std::string, std::pair<int, int>> rev_merge;
    int index = 0;
    size_t offs = 0;
    while (offs < text.size()) {
      Symbol s;
      s.text = text.c_str() + offs;
      s.n = std::min(utf8_len(text[offs]), text.size() - offs);
      offs += s.n;
      s.prev = index - 1;
      s.next = offs == text.size() ? -1 : index + 1;
      ++index;
      symbols.push_back(s);
    }
    auto try_add = [&](int left, int right) {
      if (left == -1 || right == -1) return;
      const std::string t(symbols[size_t(left)].text, symbols[size_t(left)].n + symbols[size_t(right)].n);
      const int32_t tok = text_to_token(t);
      if (tok == kNoToken || size_t(tok) >= tokens_.size()) return;
      queue.push({left, right, tokens_[size_t(tok)].score, t.size()});
      rev_merge[t] = {left, right};
    };
    for (int i = 1; i < int(symbols.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = symbols[size_t(b.left)];
      Symbol& r = symbols[size_t(b.right)];
      if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) symbols[size_t(r.next)].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    std::function<void(const Symbol&)> resegment = [&](const Symbol& s) {
      const std::string t(s.text, s.n);
      if (int32_t tok = text_to_token(t); tok != kNoToken) {
        out.push_back(tok);
        return;
      }
      auto p = rev_merge.find(t);
      if (p == rev_merge.end()) {
        for (size_t j = 0; j < s.n; ++j) out.push_back(spm_byte_token(static_cast<uint8_t>(s.text[j])));
        return;
      }
      resegment(symbols[size_t(p->second.first)]);
      resegment(symbols[size_t(p->second.second)]);
    };
    if (symbols.empty()) return;
    for (int i = 0; i != -1; i = symbols[size_t(i)].next) resegment(symbols[size_t(i)]);
  }

  // llm_tokenizer_bpe_session: pre-tokenizer split, then lowest-rank merges inside each word.
  void bpe_session(const std::string& text, std::vector<int32_t>& out) const {
    struct Bigram {
      int left, right;
      std::string text;
      int rank;
    };
    struct Cmp {
      bool operator()(const Bigram& l, const Bigram& r) const {
        return l.rank > r.rank || (l.rank == r.rank && l.left > r.left);
      }
    };
    const std::vector<std::string> words = regex_split(text, split_regexes_, byte_encode_);
    for (const std::string& word : words) {
      std::vector<Symbol> symbols;
      std::priority_queue<Bigram, std::vector<Bigram>, Cmp> queue;
      size_t offset = 0;
      if (ignore_merges_ && text_to_token(word) != kNoToken) {
        symbols.push_back({-1, -1, word.c_str(), word.size()});
        offset = word.size();
      } else if (gemma4_newlines_ && word.find_first_not_of('\n') == std::string::npos &&
                 text_to_token(word) != kNoToken) {
        symbols.push_back({-1, -1, word.c_str(), word.size()});
        offset = word.size();
      }
      int index = 0;
      while (offset < word.size()) {
        Symbol s;
        s.text = word.c_str() + offset;
        s.n = std::min(word.size() - offset, utf8_len(word[offset]));
        offset += s.n;
        s.prev = index - 1;
        s.next = offset == word.size() ? -1 : index + 1;
        ++index;
        symbols.push_back(s);
      }
      auto add_bigram = [&](int left, int right) {
        if (left == -1 || right == -1) return;
        std::string lt(symbols[size_t(left)].text, symbols[size_t(left)].n);
        std::string rt(symbols[size_t(right)].text, symbols[size_t(right)].n);
        auto it = bpe_ranks_.find({lt, rt});
        if (it == bpe_ranks_.end()) return;
        queue.push({left, right, lt + rt, it->second});
      };
      for (int i = 1; i < int(symbols.size()); ++i) add_bigram(i - 1, i);
      while (!queue.empty()) {
        const Bigram b = queue.top();
        queue.pop();
        Symbol& l = symbols[size_t(b.left)];
        Symbol& r = symbols[size_t(b.right)];
        if (l.n == 0 || r.n == 0) continue;
        if (std::string(l.text, l.n) + std::string(r.text, r.n) != b.text) continue;  // outdated
        l.n += r.n;
        r.n = 0;
        l.next = r.next;
        if (r.next >= 0) symbols[size_t(r.next)].prev = b.left;
        add_bigram(l.prev, b.left);
        add_bigram(b.left, l.next);
      }
      for (const Symbol& s : symbols) {
        if (s.n == 0) continue;
        const std::string str(s.text, s.n);
        if (int32_t tok = text_to_token(str); tok != kNoToken) {
          out.push_back(tok);
          continue;
        }
        // not in the vocabulary: one token per byte where there is one (llama.cpp drops the rest)
        for (char ch : str) {
          int32_t t;
          if (byte_encode_) {
            t = text_to_token(std::string(1, ch));
          } else {
            static const char* hex = "0123456789ABCDEF";
            const auto b = static_cast<uint8_t>(ch);
            const char buf[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
            t = text_to_token(buf);
          }
          if (t != kNoToken) out.push_back(t);
        }
      }
    }
  }

  // The clean_up_tokenization_spaces passes of llama_vocab::impl::detokenize, in place on one
  // buffer as there (the second pass blanks the space it skips, which the next step then reads).
  static void clean_up_spaces(std::string& text) {
    int64_t total = int64_t(text.size());
    // " ?", " !", " .", " ,": drop the space
    const int64_t total1 = total;
    total = total ? 1 : 0;
    for (int64_t i = 1; i < total1; ++i) {
      const char x = text[size_t(i)];
      if (text[size_t(i - 1)] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
      text[size_t(total++)] = x;
    }
    // " ' ": an apostrophe between spaces loses both
    const int64_t total2 = total;
    total = total ? 1 : 0;
    for (int64_t i = 1; i < total2; ++i) {
      const char x = text[size_t(i)];
      if (x == '\'' && i + 1 < total2 && text[size_t(i - 1)] == ' ' && text[size_t(i + 1)] == ' ') {
        --total;
        text[size_t(++i)] = '\0';
      }
      text[size_t(total++)] = x;
    }
    // " 's", " 'm", " 're", " 've": drop the space
    const int64_t total3 = total;
    total = total ? 1 : 0;
    for (int64_t i = 1; i < total3; ++i) {
      const char x = text[size_t(i)];
      if (text[size_t(i - 1)] == ' ' && x == '\'' && i + 1 < total3) {
        const char x1 = text[size_t(i + 1)];
        if (x1 == 's' || x1 == 'm') {
          --total;
        } else if (x1 != 't' && x1 != 'd' && i + 2 < total3) {
          const char x2 = text[size_t(i + 2)];
          if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
        }
      }
      text[size_t(total++)] = x;
    }
    text.resize(size_t(total));
  }

  Ctx ctx_;
  bool spm_ = false;
  std::vector<TokenData> tokens_;
  // Built exactly as llama.cpp builds its own (same insertions into the same container), so that
  // the first-match scans below visit the tokens in llama.cpp's order.
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<std::pair<std::string, std::string>, int, PairHash> bpe_ranks_;
  std::vector<SplitRegex> split_regexes_;
  std::vector<int32_t> special_cache_;
  std::vector<std::string> pieces_;  // token_to_piece(special = true)
  int32_t bos_id_ = kNoToken, eos_id_ = kNoToken;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false, clean_spaces_ = false;
  bool ignore_merges_ = false, byte_encode_ = true, escape_whitespaces_ = false, gemma4_newlines_ = false;
};

void LlamaVocab::load(const io::GGUFFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model", "");
  std::string pre = f.get_string("tokenizer.ggml.pre", "");
  PreTokenizerSpec spec;
  if (model == "llama") {
    spm_ = true;
    bos_id_ = 1, eos_id_ = 2;
    add_space_prefix_ = true;
    add_bos_ = true;
  } else if (model == "gpt2" || model == "gemma4") {
    if (model == "gemma4") pre = "gemma4";
    spec = pre_tokenizer_spec(pre, ctx_);
    if (model == "gpt2") bos_id_ = 11, eos_id_ = 11;
    if (spec.no_bos) bos_id_ = kNoToken;
    if (!f.has("tokenizer.ggml.merges")) ctx_.fail("the BPE vocabulary has no tokenizer.ggml.merges");
    const std::vector<std::string> merges = f.get_string_array("tokenizer.ggml.merges");
    bpe_ranks_.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const std::string& w = merges[i];
      std::string first, second;
      if (const size_t pos = w.find(' ', 1); pos != std::string::npos) {
        first = w.substr(0, pos);
        second = w.substr(pos + 1);
      }
      bpe_ranks_.emplace(std::make_pair(std::move(first), std::move(second)), int(i));
    }
    for (const std::string& r : spec.regexes) split_regexes_.push_back(compile_split_regex(r, ctx_));
    clean_spaces_ = spec.clean_spaces;
    ignore_merges_ = spec.ignore_merges;
    add_bos_ = spec.add_bos;
    byte_encode_ = spec.byte_encode;
    escape_whitespaces_ = spec.escape_whitespaces;
    gemma4_newlines_ = spec.gemma4_newlines;
  } else if (model.empty()) {
    ctx_.fail("tokenizer.ggml.model is missing: the file has no tokenizer");
  } else {
    ctx_.fail("tokenizer.ggml.model '", model,
              "' is not supported (llama: SentencePiece, gpt2: byte-level BPE, gemma4)");
  }
  if (f.has("tokenizer.ggml.add_space_prefix")) add_space_prefix_ = f.get_bool("tokenizer.ggml.add_space_prefix");

  const std::vector<std::string> texts = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = texts.size();
  if (n == 0) ctx_.fail("tokenizer.ggml.tokens is empty");
  if (n > size_t(INT32_MAX)) ctx_.fail("tokenizer.ggml.tokens has ", n, " entries, more than token ids can hold");
  std::vector<double> scores;
  if (f.has("tokenizer.ggml.scores")) {
    scores = f.get_float_array("tokenizer.ggml.scores");
    if (scores.size() < n) ctx_.fail("tokenizer.ggml.scores has ", scores.size(), " entries for ", n, " tokens");
  }
  std::vector<int64_t> types;
  if (f.has("tokenizer.ggml.token_type")) {
    types = f.get_int_array("tokenizer.ggml.token_type");
    if (types.size() < n) ctx_.fail("tokenizer.ggml.token_type has ", types.size(), " entries for ", n, " tokens");
  }
  tokens_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    std::string word = texts[i];
    if (word.empty()) word = "[EMPTY_" + std::to_string(i) + "]";
    token_to_id_[word] = int32_t(i);
    TokenData& t = tokens_[i];
    t.text = std::move(word);
    t.score = scores.empty() ? 0.0f : float(scores[i]);
    t.attr = kAttrNormal;
    if (!types.empty()) {
      switch (types[i]) {
        case 1: t.attr = kAttrNormal; break;
        case 2: t.attr = kAttrUnknown; break;
        case 3: t.attr = kAttrControl; break;
        case 4: t.attr = kAttrUserDefined; break;
        case 5: t.attr = kAttrUnused; break;
        case 6: t.attr = kAttrByte; break;
        default: t.attr = kAttrUndefined; break;
      }
    }
  }

  // special token ids: the defaults above unless out of range, then the file's valid ids
  auto special_id = [&](const char* key, int32_t& id) {
    if (id >= 0 && size_t(id) >= n) id = kNoToken;
    const std::string k = std::string("tokenizer.ggml.") + key;
    if (!f.has(k)) return;
    const int64_t v = f.get_int(k);
    if (v >= 0 && size_t(v) < n) id = int32_t(v);
  };
  special_id("bos_token_id", bos_id_);
  special_id("eos_token_id", eos_id_);
  if (f.has("tokenizer.ggml.add_bos_token")) add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token");
  if (f.has("tokenizer.ggml.add_eos_token")) add_eos_ = f.get_bool("tokenizer.ggml.add_eos_token");
  if (spec.gemma4_newlines && !add_bos_) add_bos_ = true;  // llama.cpp's Gemma 4 workaround

  apply_token_overrides(f);

  // the special tokens matched in the text, longest first (std::sort as llama.cpp sorts them)
  for (int32_t id = 0; id < int32_t(n); ++id)
    if (tokens_[size_t(id)].attr & (kAttrControl | kAttrUserDefined | kAttrUnknown)) special_cache_.push_back(id);
  std::sort(special_cache_.begin(), special_cache_.end(), [&](int32_t a, int32_t b) {
    return tokens_[size_t(a)].text.size() > tokens_[size_t(b)].text.size();
  });
  pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) pieces_[i] = piece_for_cache(int32_t(i));

  // per-token attributes llama.cpp sets by model name (after the caches, as it does)
  std::string name = f.get_string("general.name", "");
  std::transform(name.begin(), name.end(), name.begin(), [](char c) { return char(std::tolower(c)); });
  const std::string arch = f.get_string("general.architecture", "");
  auto set_attr = [&](const std::string& text, uint32_t a, bool on) {
    auto it = token_to_id_.find(text);
    if (it == token_to_id_.end()) ctx_.fail("the vocabulary has no token '", text, "'");
    uint32_t& attr = tokens_[size_t(it->second)].attr;
    attr = on ? (attr | a) : (attr & ~a);
  };
  auto contains = [](const std::string& s, std::initializer_list<const char*> subs) {
    return std::any_of(subs.begin(), subs.end(), [&](const char* x) { return s.find(x) != std::string::npos; });
  };
  if (contains(pre, {"jina-v2-de", "jina-v2-es", "jina-v2-code"}) || contains(arch, {"nomic-bert-moe", "jina-bert-v3"})) {
    if (token_to_id_.count("<mask>")) set_attr("<mask>", kAttrLstrip, true);
  } else if (contains(name, {"phi-3", "phi3"})) {
    for (int32_t id : special_cache_) tokens_[size_t(id)].attr |= kAttrRstrip;
    set_attr("</s>", kAttrRstrip, true);
    for (const char* t : {"<unk>", "<s>", "<|endoftext|>"}) set_attr(t, kAttrRstrip, false);
  } else if (contains(name, {"modern-bert"})) {
    if (token_to_id_.count("[MASK]")) set_attr("[MASK]", kAttrLstrip, true);
  }
}

// llama.cpp's load-time fixes of token types by token text: control-looking tokens become
// control tokens, "unused" control tokens are marked, a few tokens are forced user-defined or
// normal. They decide which texts are matched as special tokens.
void LlamaVocab::apply_token_overrides(const io::GGUFFile& f) {
  auto make_control = [&](int32_t id) { tokens_[size_t(id)].attr |= kAttrControl; };
  // the end-of-turn and fill-in-the-middle tokens: the first one found of each kind, unless the
  // file names it
  struct Kind {
    const char* key;
    std::vector<const char*> texts;
    int32_t id = kNoToken;
  };
  std::vector<Kind> kinds = {
      {"eot_token_id", {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                        "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"}},
      {"eom_token_id", {"<|eom_id|>"}},
      {"fim_pre_token_id", {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                            "<|code_prefix|>", "<|prefix|>"}},
      {"fim_suf_token_id", {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                            "<|code_suffix|>", "<|suffix|>"}},
      {"fim_mid_token_id", {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                            "<|code_middle|>", "<|middle|>"}},
      {"fim_pad_token_id", {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
      {"fim_rep_token_id", {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
      {"fim_sep_token_id", {"<|file_sep|>"}},
  };
  const size_t n = tokens_.size();
  auto file_id = [&](const std::string& key, int32_t& id) {
    if (!f.has(key)) return;
    const int64_t v = f.get_int(key);
    if (v >= 0 && size_t(v) < n) id = int32_t(v);
  };
  for (Kind& k : kinds) file_id(std::string("tokenizer.ggml.") + k.key, k.id);
  file_id("tokenizer.ggml.prefix_token_id", kinds[2].id);  // deprecated names
  file_id("tokenizer.ggml.suffix_token_id", kinds[3].id);
  file_id("tokenizer.ggml.middle_token_id", kinds[4].id);
  for (const auto& [token_text, id] : token_to_id_) {
    const std::string& text = token_text;  // clang 14 cannot capture a structured binding
    for (Kind& k : kinds) {
      if (k.id != kNoToken) continue;
      if (std::any_of(k.texts.begin(), k.texts.end(), [&](const char* t) { return text == t; })) {
        k.id = id;
        make_control(id);
      }
    }
  }
  for (const auto& [text, id] : token_to_id_) {
    uint32_t& attr = tokens_[size_t(id)].attr;
    if ((attr & kAttrControl) && text.find("unused") != std::string::npos) attr |= kAttrUnused;
  }
  // end-of-generation tokens
  std::set<int32_t> eog;
  for (size_t k = 5; k < 8; ++k)
    if (kinds[k].id != kNoToken) eog.insert(kinds[k].id);
  static const std::set<std::string> kEog = {
      "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
      "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
      "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~["};
  for (const auto& [text, id] : token_to_id_) {
    if (kEog.count(text)) {
      eog.insert(id);
      make_control(id);
    }
  }
  for (const auto& [text, id] : token_to_id_)  // gpt-oss: always rendered
    if (text == "<|channel|>" || text == "<|message|>" || text == "<|start|>" || text == "<|constrain|>")
      tokens_[size_t(id)].attr = kAttrUserDefined;
  if (eos_id_ != kNoToken) eog.insert(eos_id_);
  if (kinds[0].id != kNoToken) eog.insert(kinds[0].id);
  if (kinds[1].id != kNoToken) eog.insert(kinds[1].id);
  // o200k_harmony / solar-open: <|end|> is not an end of generation but a user-defined token
  {
    bool has_return = false, has_call = false, has_end = false, has_flush = false;
    int32_t end_id = kNoToken;
    for (int32_t id : eog) {
      if (id < 0 || size_t(id) >= n) continue;
      const std::string& t = tokens_[size_t(id)].text;
      if (t == "<|return|>") has_return = true;
      else if (t == "<|call|>" || t == "<|calls|>") has_call = true;
      else if (t == "<|flush|>") has_flush = true;
      else if (t == "<|end|>") has_end = true, end_id = id;
    }
    if ((has_return && has_call && has_end) || (has_call && has_flush && has_end)) {
      eog.erase(end_id);
      tokens_[size_t(end_id)].attr = kAttrUserDefined;
    }
  }
  // gemma4 / plamo: </s> is a normal token
  {
    bool has_marker = false;
    int32_t s_id = kNoToken;
    for (int32_t id : eog) {
      if (id < 0 || size_t(id) >= n) continue;
      const std::string& t = tokens_[size_t(id)].text;
      if (t == "<|tool_response>" || t == "<|plamo:eos|>") has_marker = true;
      else if (t == "</s>") s_id = id;
    }
    if (has_marker && s_id != kNoToken) tokens_[size_t(s_id)].attr = kAttrNormal;
  }
}

// token_to_piece(special = true) of llama_vocab::impl, as cached at load.
std::string LlamaVocab::piece_for_cache(int32_t id) const {
  const TokenData& t = tokens_[size_t(id)];
  if (t.attr & (kAttrUnknown | kAttrControl | kAttrUserDefined)) return t.text;
  if (t.attr & kAttrNormal) {
    if (spm_ || escape_whitespaces_) return replace_all(t.text, kSpaceMarker, " ");
    // GPT-2's byte map back to bytes; a character outside it is kept visibly
    std::string out;
    for (uint32_t c : cpts_from_utf8(t.text)) {
      const int b = unicode_to_byte(static_cast<char32_t>(c));
      if (b >= 0) {
        out.push_back(static_cast<char>(b));
      } else {
        out += "[UNK_BYTE_0x";
        for (char ch : cpt_to_utf8(c)) {
          static const char* hex = "0123456789abcdef";
          out.push_back(hex[static_cast<uint8_t>(ch) >> 4]);
          out.push_back(hex[static_cast<uint8_t>(ch) & 15]);
        }
        out += t.text + "]";
      }
    }
    return out;
  }
  if (t.attr & kAttrByte) {
    if (t.text.size() < 5) ctx_.fail("byte token ", id, " '", t.text, "' is not of the form <0xXX>");
    return std::string(1, static_cast<char>(std::strtol(t.text.substr(3, 2).c_str(), nullptr, 16)));
  }
  return std::string();  // unused / undefined tokens print nothing
}

}  // namespace

std::unique_ptr<GGUFVocab> make_gguf_vocab(const io::GGUFFile& file, const Ctx& ctx) {
  return std::make_unique<LlamaVocab>(file, ctx);
}

}  // namespace peft::tok
