// Internals of peft::Tokenizer (io/tokenizer.h): UTF-8 and Unicode helpers, the split
// representation and the component interfaces, one implementation file per job.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/tokenizer.h"
#include "runtime/error.h"

namespace peft::tok {

using json = nlohmann::json;

// ---- errors ----------------------------------------------------------------------------
// Where a component comes from, for error messages: "[tokenizer] <file>: <what>".
struct Ctx {
  std::string file;
  template <class... A>
  [[noreturn]] void fail(const A&... parts) const {
    ::peft::fail_format("[tokenizer] ", file, ": ", parts...);
  }
};

// Typed field access; errors name the field path ("model.vocab").
const json& field(const json& obj, const char* key, const std::string& path, const Ctx& ctx);
const json* opt_field(const json& obj, const char* key);  // nullptr when absent or null
std::string get_string(const json& obj, const char* key, const std::string& path, const Ctx& ctx);
bool get_bool(const json& obj, const char* key, const std::string& path, const Ctx& ctx,
              std::optional<bool> dflt = std::nullopt);
uint64_t get_uint(const json& obj, const char* key, const std::string& path, const Ctx& ctx,
                  std::optional<uint64_t> dflt = std::nullopt);
std::string type_of(const json& obj, const std::string& path, const Ctx& ctx);
// A string field holding exactly one character (Metaspace's replacement, Strip's content...).
char32_t get_char(const json& obj, const char* key, const std::string& path, const Ctx& ctx);

// ---- UTF-8 / Unicode (unicode.cpp) -------------------------------------------------------
// Decodes the code point at s[i] (s valid UTF-8) and advances i.
inline char32_t next_cp(std::string_view s, size_t& i) {
  unsigned char b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) { ++i; return b; }
  if (b < 0xE0) {
    char32_t c = ((b & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
    i += 2;
    return c;
  }
  if (b < 0xF0) {
    char32_t c = ((b & 0x0F) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3F) << 6) |
                 (static_cast<unsigned char>(s[i + 2]) & 0x3F);
    i += 3;
    return c;
  }
  char32_t c = ((b & 0x07) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3F) << 12) |
               ((static_cast<unsigned char>(s[i + 2]) & 0x3F) << 6) |
               (static_cast<unsigned char>(s[i + 3]) & 0x3F);
  i += 4;
  return c;
}
inline size_t cp_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
void append_utf8(std::string& out, char32_t c);
// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t find_invalid_utf8(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
size_t count_chars(std::string_view s);

// Character classes with the Rust library's definitions.
bool is_whitespace(char32_t c);    // char::is_whitespace (White_Space)
bool is_other(char32_t c);         // unicode_categories is_other: Cc, Cf, Co
bool is_punctuation(char32_t c);   // ASCII punctuation or P*
bool is_mark_nonspacing(char32_t c);  // Mn
bool is_mark(char32_t c);          // M* (unicode-normalization is_combining_mark)
bool is_letter(char32_t c);        // L*
bool is_number(char32_t c);        // N* (char::is_numeric)
bool is_word_char(char32_t c);     // regex \w: Alphabetic, M, Nd, Pc, Join_Control (approx.)
bool is_chinese_char(char32_t c);  // the CJK blocks of BertNormalizer
// char::to_lowercase (full mapping: U+0130 gives two characters).
void append_lower(std::string& out, char32_t c);
enum class NormForm { NFC, NFD, NFKC, NFKD };
std::string unicode_normalize(std::string_view s, NormForm form);

// ---- PCRE2 regex (pre_tokenizers.cpp) ---------------------------------------------------
class Regex {
 public:
  // `literal`: the pattern is matched as plain text.
  Regex(const std::string& pattern, bool literal, const std::string& what, const Ctx& ctx);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping matches, left to right (empty matches skipped as Rust's find_iter does).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;
  bool jit_ = false;
};

// ---- splits ---------------------------------------------------------------------------
// One piece of the input on its way through the pipeline. `id >= 0`: an added token already
// resolved (left alone by the normalizer, pre-tokenizers and model).
struct Piece {
  std::string text;
  int64_t id = -1;
  bool at_origin = false;  // starts at offset 0 of the original text (Metaspace "first")
};
using Pieces = std::vector<Piece>;

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior parse_behavior(const json& j, const std::string& path, const Ctx& ctx);
// (start, end, is_match) spans covering s, as the Rust Pattern::find_matches returns.
struct Span {
  size_t start, end;
  bool match;
};
// Applies a split behaviour to spans and appends the resulting non-empty pieces.
void split_spans(const Piece& src, const std::vector<Span>& spans, SplitBehavior b, Pieces& out);
// Spans for a per-character predicate.
template <class F>
void char_spans(std::string_view s, F&& pred, std::vector<Span>& spans) {
  spans.clear();
  size_t last = 0, i = 0;
  while (i < s.size()) {
    size_t b = i;
    char32_t c = next_cp(s, i);
    if (pred(c)) {
      if (last < b) spans.push_back({last, b, false});
      spans.push_back({b, i, true});
      last = i;
    }
  }
  if (last < s.size()) spans.push_back({last, s.size(), false});
}

// ---- components ------------------------------------------------------------------------
struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  // Rewrites the pieces without an id; the others pass unchanged.
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};
struct Model {
  virtual ~Model() = default;
  virtual void tokenize(std::string_view word, std::vector<int32_t>& ids) const = 0;
  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
  virtual const std::string* id_to_token(int64_t id) const = 0;
  virtual size_t vocab_size() const = 0;
};
struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual size_t added_tokens() const = 0;  // single sequence
  virtual void process(Encoding& e, bool add_special_tokens) const = 0;
};
struct Decoder {
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// A Replace/Split "pattern" field: {"String": ...} (literal) or {"Regex": ...}.
std::unique_ptr<Regex> make_pattern(const json& j, const std::string& path, const Ctx& ctx);
// Plain replace-all of a non-empty literal.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& path, const Ctx& ctx);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& path,
                                                 const Ctx& ctx);
std::unique_ptr<Model> make_model(const json& j, const std::string& path, const Ctx& ctx);
std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& path,
                                                   const Ctx& ctx);
std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& path, const Ctx& ctx);

// ---- GGUF vocabularies (gguf_vocab.cpp) -------------------------------------------------------
// llama.cpp's tokenizer over the vocabulary of a GGUF file: a Model (token_to_id, id_to_token,
// vocab_size) that encodes whole texts and decodes them as llama.cpp does, in place of the
// tokenizer.json pipeline.
class GGUFVocab : public Model {
 public:
  // llama_tokenize(text, add_special, parse_special), then `truncation` (leaving room for
  // BOS/EOS); the special tokens mask marks the BOS/EOS it adds.
  virtual Encoding encode(const std::string& text, bool add_special, const std::optional<TruncationParams>& truncation,
                          bool parse_special = true) const = 0;
  // llama_detokenize(ids, remove_special = false, unparse_special = !skip_special).
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special) const = 0;
};
std::unique_ptr<GGUFVocab> make_gguf_vocab(const io::GGUFFile& file, const Ctx& ctx);

// The GPT-2 byte ↔ unicode map of the ByteLevel components.
const std::string& byte_to_unicode(unsigned char b);  // UTF-8 of the mapped character
int unicode_to_byte(char32_t c);                      // -1 when not in the map

}  // namespace peft::tok
