// peft::Tokenizer: the pipeline of the Rust `tokenizers` library (tokenizer/mod.rs,
// added_vocabulary.rs, utils/truncation.rs, utils/padding.rs) over the components of the
// other files: added tokens → normalizer → pre-tokenizer → model → truncation →
// post-processor → padding; decode through the decoder chain.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "io/gguf.h"
#include "io/tokenizer/internal.h"

namespace peft::tok {

namespace {
std::string join_path(const std::string& path, const char* key) { return path.empty() ? key : path + "." + key; }
}  // namespace

const json* opt_field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

const json& field(const json& obj, const char* key, const std::string& path, const Ctx& ctx) {
  if (!obj.is_object()) ctx.fail("field '", path.empty() ? "<top level>" : path, "' must be an object");
  const json* f = opt_field(obj, key);
  if (!f) ctx.fail("field '", join_path(path, key), "' is missing");
  return *f;
}

std::string get_string(const json& obj, const char* key, const std::string& path, const Ctx& ctx) {
  const json& f = field(obj, key, path, ctx);
  if (!f.is_string()) ctx.fail("field '", join_path(path, key), "' must be a string, got ", f.dump());
  return f.get<std::string>();
}

bool get_bool(const json& obj, const char* key, const std::string& path, const Ctx& ctx, std::optional<bool> dflt) {
  const json* f = opt_field(obj, key);
  if (!f) {
    if (dflt) return *dflt;
    ctx.fail("field '", join_path(path, key), "' is missing");
  }
  if (!f->is_boolean()) ctx.fail("field '", join_path(path, key), "' must be true or false, got ", f->dump());
  return f->get<bool>();
}

uint64_t get_uint(const json& obj, const char* key, const std::string& path, const Ctx& ctx,
                  std::optional<uint64_t> dflt) {
  const json* f = opt_field(obj, key);
  if (!f) {
    if (dflt) return *dflt;
    ctx.fail("field '", join_path(path, key), "' is missing");
  }
  if (!f->is_number_unsigned()) ctx.fail("field '", join_path(path, key), "' must be a non-negative integer, got ", f->dump());
  return f->get<uint64_t>();
}

char32_t get_char(const json& obj, const char* key, const std::string& path, const Ctx& ctx) {
  const std::string s = get_string(obj, key, path, ctx);
  if (s.empty() || count_chars(s) != 1 || find_invalid_utf8(s) != std::string::npos)
    ctx.fail("field '", join_path(path, key), "' must be a single character");
  size_t i = 0;
  return next_cp(s, i);
}

std::string type_of(const json& obj, const std::string& path, const Ctx& ctx) {
  if (!obj.is_object()) ctx.fail("field '", path, "' must be an object with a \"type\", got ", obj.dump().substr(0, 80));
  return get_string(obj, "type", path, ctx);
}

}  // namespace peft::tok

namespace peft {

using tok::json;

namespace {

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Matches a set of added tokens leftmost-longest (aho-corasick MatchKind::LeftmostLongest):
// at each position the longest token that starts there; scanning resumes after a match.
class TokenMatcher {
 public:
  void add(const std::string& pattern, size_t token) {
    if (pattern.empty()) return;
    by_first_[static_cast<unsigned char>(pattern[0])].push_back({pattern, token});
  }
  void finish() {
    for (auto& v : by_first_)
      std::stable_sort(v.begin(), v.end(), [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
  }
  bool empty() const {
    return std::all_of(std::begin(by_first_), std::end(by_first_), [](const auto& v) { return v.empty(); });
  }
  // The longest token starting at s[i], or nullopt.
  std::optional<std::pair<size_t, size_t>> at(std::string_view s, size_t i) const {  // (token, length)
    for (const Entry& e : by_first_[static_cast<unsigned char>(s[i])])
      if (s.compare(i, e.text.size(), e.text) == 0) return std::make_pair(e.token, e.text.size());
    return std::nullopt;
  }

 private:
  struct Entry {
    std::string text;
    size_t token;
  };
  std::vector<Entry> by_first_[256];
};

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  size_t j = i;
  return tok::is_word_char(tok::next_cp(s, j));
}
bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return tok::is_word_char(tok::next_cp(s, i));
}

}  // namespace

struct Tokenizer::Impl {
  tok::Ctx ctx;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, size_t> added_by_content;
  std::unordered_map<int64_t, size_t> added_by_id;
  TokenMatcher raw_matcher, normalized_matcher;  // normalized=false tokens / normalized=true ones
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Model> model;
  std::unique_ptr<tok::PostProcessor> post_processor;
  std::unique_ptr<tok::Decoder> decoder;
  std::optional<TruncationParams> truncation;
  std::optional<PaddingParams> padding;
  const tok::GGUFVocab* gguf = nullptr;  // from_gguf: `model`, which encodes and decodes whole texts

  // AddedVocabulary::find_matches on one piece: splits it around the added tokens it holds.
  void split_added(const tok::Piece& p, const TokenMatcher& m, tok::Pieces& out) const {
    std::string_view s = p.text;
    size_t start_offset = 0, i = 0;
    bool first = true;
    auto emit = [&](size_t a, size_t b, int64_t id) {
      tok::Piece q;
      q.text = std::string(s.substr(a, b - a));
      q.id = id;
      q.at_origin = p.at_origin && a == 0 && first;
      first = false;
      out.push_back(std::move(q));
    };
    while (i < s.size()) {
      auto hit = m.at(s, i);
      if (!hit) {
        i += tok::cp_len(static_cast<unsigned char>(s[i]));
        continue;
      }
      const AddedToken& t = added[hit->first];
      size_t start = i, stop = i + hit->second;
      if (t.single_word && ((start > 0 && ends_with_word(s.substr(0, start))) ||
                            (stop < s.size() && starts_with_word(s.substr(stop))))) {
        i += tok::cp_len(static_cast<unsigned char>(s[i]));
        continue;
      }
      if (t.lstrip) {  // take the whitespace before it (not what an earlier match took)
        size_t ns = start;
        while (ns > start_offset) {
          size_t k = ns - 1;
          while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
          size_t kk = k;
          if (!tok::is_whitespace(tok::next_cp(s, kk))) break;
          ns = k;
        }
        start = ns;
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          size_t k = stop;
          if (!tok::is_whitespace(tok::next_cp(s, k))) break;
          stop = k;
        }
      }
      if (start_offset < start) emit(start_offset, start, -1);
      emit(start, stop, t.id);
      start_offset = stop;
      i = stop;
    }
    if (start_offset < s.size() || s.empty()) emit(start_offset, s.size(), -1);
  }

  Encoding encode_one(const std::string& text, bool add_special,
                      const std::optional<TruncationParams>& truncation) const {
    if (size_t bad = tok::find_invalid_utf8(text); bad != std::string::npos)
      ::peft::fail("[tokenizer] ", ctx.file, ": the text is not valid UTF-8 (byte offset ", bad, ")");
    if (gguf) return gguf->encode(text, add_special, truncation);
    // 1. added tokens on the raw text, 2. normalize the rest, then normalized added tokens
    tok::Pieces pieces, next;
    tok::Piece whole;
    whole.text = text;
    whole.at_origin = true;
    if (raw_matcher.empty()) pieces.push_back(std::move(whole));
    else split_added(whole, raw_matcher, pieces);
    for (tok::Piece& p : pieces) {
      if (p.id >= 0) {
        next.push_back(std::move(p));
        continue;
      }
      if (normalizer) normalizer->normalize(p.text);
      if (normalized_matcher.empty()) next.push_back(std::move(p));
      else split_added(p, normalized_matcher, next);
    }
    pieces.clear();
    for (tok::Piece& p : next)
      if (!p.text.empty()) pieces.push_back(std::move(p));
    // 3. pre-tokenize, 4. the model
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
    Encoding e;
    std::vector<int32_t> ids;
    for (const tok::Piece& p : pieces) {
      if (p.text.empty()) continue;
      if (p.id >= 0) {
        e.ids.push_back(p.id);
        e.tokens.push_back(p.text);
        continue;
      }
      ids.clear();
      model->tokenize(p.text, ids);
      for (int32_t id : ids) {
        e.ids.push_back(id);
        const std::string* t = model->id_to_token(id);
        e.tokens.push_back(t ? *t : std::string());
      }
    }
    e.type_ids.assign(e.ids.size(), 0);
    e.attention_mask.assign(e.ids.size(), 1);
    e.special_tokens_mask.assign(e.ids.size(), 0);
    // 5. truncation, leaving room for the post-processor's tokens
    if (truncation) {
      const size_t n_added = add_special && post_processor ? post_processor->added_tokens() : 0;
      if (n_added > truncation->max_length)
        ::peft::fail("[tokenizer] ", ctx.file, ": truncation max_length ", truncation->max_length,
                     " is smaller than the ", n_added, " special tokens the post-processor adds");
      const size_t keep = truncation->max_length - n_added;
      if (e.size() > keep) {
        const size_t from = truncation->direction == TruncationParams::Direction::Right ? 0 : e.size() - keep;
        auto cut = [&](auto& v) { v = std::vector<typename std::decay_t<decltype(v)>::value_type>(
                                      v.begin() + ptrdiff_t(from), v.begin() + ptrdiff_t(from + keep)); };
        cut(e.ids), cut(e.type_ids), cut(e.attention_mask), cut(e.special_tokens_mask), cut(e.tokens);
      }
    }
    // 6. post-processor (special tokens)
    if (post_processor) post_processor->process(e, add_special);
    return e;
  }

  static void pad(Encoding& e, size_t target, const PaddingParams& p) {
    if (e.size() >= target) return;
    const size_t n = target - e.size();
    auto grow = [&](auto& v, const auto& value) {
      if (p.direction == PaddingParams::Direction::Right) v.insert(v.end(), n, value);
      else v.insert(v.begin(), n, value);
    };
    grow(e.ids, p.pad_id);
    grow(e.type_ids, p.pad_type_id);
    grow(e.attention_mask, int64_t(0));
    grow(e.special_tokens_mask, int64_t(1));
    grow(e.tokens, p.pad_token);
  }

  static size_t pad_target(size_t longest, const PaddingParams& p) {
    size_t t = p.fixed_length ? *p.fixed_length : longest;
    if (p.pad_to_multiple_of && *p.pad_to_multiple_of > 0 && t % *p.pad_to_multiple_of)
      t += *p.pad_to_multiple_of - t % *p.pad_to_multiple_of;
    return t;
  }

  const std::string* token_of(int64_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return &added[it->second].content;
    return model->id_to_token(id);
  }
};

namespace {

TruncationParams parse_truncation(const json& j, const tok::Ctx& ctx) {
  TruncationParams t;
  t.max_length = tok::get_uint(j, "max_length", "truncation", ctx);
  t.stride = tok::get_uint(j, "stride", "truncation", ctx, 0);
  if (t.stride != 0) ctx.fail("truncation.stride ", t.stride, " is not supported (overflowing tokens)");
  const std::string strategy = tok::opt_field(j, "strategy") ? tok::get_string(j, "strategy", "truncation", ctx)
                                                              : "LongestFirst";
  if (strategy == "LongestFirst") t.strategy = TruncationParams::Strategy::LongestFirst;
  else if (strategy == "OnlyFirst") t.strategy = TruncationParams::Strategy::OnlyFirst;
  else if (strategy == "OnlySecond") t.strategy = TruncationParams::Strategy::OnlySecond;
  else ctx.fail("truncation.strategy '", strategy, "' is not supported");
  const std::string dir = tok::opt_field(j, "direction") ? tok::get_string(j, "direction", "truncation", ctx) : "Right";
  if (dir == "Right") t.direction = TruncationParams::Direction::Right;
  else if (dir == "Left") t.direction = TruncationParams::Direction::Left;
  else ctx.fail("truncation.direction '", dir, "' is not supported (Right, Left)");
  return t;
}

PaddingParams parse_padding(const json& j, const tok::Ctx& ctx) {
  PaddingParams p;
  const json& st = tok::field(j, "strategy", "padding", ctx);
  if (st.is_string() && st.get<std::string>() == "BatchLongest") {
    p.fixed_length.reset();
  } else if (st.is_object() && st.contains("Fixed") && st["Fixed"].is_number_unsigned()) {
    p.fixed_length = st["Fixed"].get<size_t>();
  } else {
    ctx.fail("padding.strategy must be \"BatchLongest\" or {\"Fixed\": N}, got ", st.dump());
  }
  const std::string dir = tok::opt_field(j, "direction") ? tok::get_string(j, "direction", "padding", ctx) : "Right";
  if (dir == "Right") p.direction = PaddingParams::Direction::Right;
  else if (dir == "Left") p.direction = PaddingParams::Direction::Left;
  else ctx.fail("padding.direction '", dir, "' is not supported (Right, Left)");
  if (const json* m = tok::opt_field(j, "pad_to_multiple_of")) {
    if (!m->is_number_unsigned()) ctx.fail("padding.pad_to_multiple_of must be a non-negative integer");
    p.pad_to_multiple_of = m->get<size_t>();
  }
  p.pad_id = int64_t(tok::get_uint(j, "pad_id", "padding", ctx, 0));
  p.pad_type_id = int64_t(tok::get_uint(j, "pad_type_id", "padding", ctx, 0));
  if (tok::opt_field(j, "pad_token")) p.pad_token = tok::get_string(j, "pad_token", "padding", ctx);
  return p;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail_io("[tokenizer] cannot read ", path, " (no such file)");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > (512u << 20)) fail_io("[tokenizer] ", path, " is larger than 512 MiB or unreadable");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) fail_io("[tokenizer] cannot read ", path);
  return from_json_text(ss.str(), path);
}

Tokenizer Tokenizer::from_json_text(const std::string& text, const std::string& origin) {
  auto impl = std::make_unique<Impl>();
  impl->ctx.file = origin;
  const tok::Ctx& ctx = impl->ctx;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ctx.fail("not valid JSON: ", e.what());
  }
  if (!j.is_object()) ctx.fail("the top level must be a JSON object");
  const json& m = tok::field(j, "model", "", ctx);
  impl->model = tok::make_model(m, "model", ctx);
  if (const json* n = tok::opt_field(j, "normalizer")) impl->normalizer = tok::make_normalizer(*n, "normalizer", ctx);
  if (const json* p = tok::opt_field(j, "pre_tokenizer"))
    impl->pre_tokenizer = tok::make_pre_tokenizer(*p, "pre_tokenizer", ctx);
  if (const json* p = tok::opt_field(j, "post_processor"))
    impl->post_processor = tok::make_post_processor(*p, "post_processor", ctx);
  if (const json* d = tok::opt_field(j, "decoder")) impl->decoder = tok::make_decoder(*d, "decoder", ctx);
  if (const json* t = tok::opt_field(j, "truncation")) impl->truncation = parse_truncation(*t, ctx);
  if (const json* p = tok::opt_field(j, "padding")) impl->padding = parse_padding(*p, ctx);
  if (const json* a = tok::opt_field(j, "added_tokens")) {
    if (!a->is_array()) ctx.fail("field 'added_tokens' must be an array");
    for (size_t i = 0; i < a->size(); ++i) {
      const json& e = (*a)[i];
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      if (!e.is_object()) ctx.fail("field '", where, "' must be an object");
      AddedToken t;
      t.content = tok::get_string(e, "content", where, ctx);
      t.id = int64_t(tok::get_uint(e, "id", where, ctx));
      if (t.id > int64_t(INT32_MAX)) ctx.fail("field '", where, ".id' ", t.id, " is too large");
      t.single_word = tok::get_bool(e, "single_word", where, ctx, false);
      t.lstrip = tok::get_bool(e, "lstrip", where, ctx, false);
      t.rstrip = tok::get_bool(e, "rstrip", where, ctx, false);
      t.special = tok::get_bool(e, "special", where, ctx, false);
      t.normalized = tok::get_bool(e, "normalized", where, ctx, !t.special);
      if (t.content.empty()) ctx.fail("field '", where, ".content' is empty");
      if (tok::find_invalid_utf8(t.content) != std::string::npos) ctx.fail("field '", where, ".content' is not UTF-8");
      const size_t idx = impl->added.size();
      impl->added_by_content[t.content] = idx;
      impl->added_by_id[t.id] = idx;
      impl->added.push_back(t);
    }
    for (size_t i = 0; i < impl->added.size(); ++i) {
      const AddedToken& t = impl->added[i];
      if (!t.normalized) {
        impl->raw_matcher.add(t.content, i);
      } else {
        std::string n = t.content;  // matched against normalized text: the pattern is normalized too
        if (impl->normalizer) impl->normalizer->normalize(n);
        impl->normalized_matcher.add(n, i);
      }
    }
    impl->raw_matcher.finish();
    impl->normalized_matcher.finish();
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_gguf(const io::GGUFFile& file) {
  auto impl = std::make_unique<Impl>();
  impl->ctx.file = file.path();
  std::unique_ptr<tok::GGUFVocab> vocab = tok::make_gguf_vocab(file, impl->ctx);
  impl->gguf = vocab.get();
  impl->model = std::move(vocab);
  return Tokenizer(std::move(impl));
}

Encoding Tokenizer::encode(const std::string& text, bool add_special_tokens, bool parse_special) const {
  if (parse_special) return encode(text, add_special_tokens);
  if (!impl_->gguf)
    ::peft::fail("[tokenizer] ", impl_->ctx.file, ": parse_special = false is supported for GGUF vocabularies only");
  if (size_t bad = tok::find_invalid_utf8(text); bad != std::string::npos)
    ::peft::fail("[tokenizer] ", impl_->ctx.file, ": the text is not valid UTF-8 (byte offset ", bad, ")");
  Encoding e = impl_->gguf->encode(text, add_special_tokens, impl_->truncation, /*parse_special=*/false);
  if (impl_->padding) Impl::pad(e, Impl::pad_target(e.size(), *impl_->padding), *impl_->padding);
  return e;
}

Encoding Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  Encoding e = impl_->encode_one(text, add_special_tokens, impl_->truncation);
  if (impl_->padding) Impl::pad(e, Impl::pad_target(e.size(), *impl_->padding), *impl_->padding);
  return e;
}

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_special_tokens) const {
  return encode_batch(texts, add_special_tokens, impl_->truncation, impl_->padding);
}

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_special_tokens,
                                              const std::optional<TruncationParams>& truncation,
                                              const std::optional<PaddingParams>& padding) const {
  std::vector<Encoding> out;
  out.reserve(texts.size());
  size_t longest = 0;
  for (const auto& t : texts) {
    out.push_back(impl_->encode_one(t, add_special_tokens, truncation));
    longest = std::max(longest, out.back().size());
  }
  if (padding) {
    const size_t target = Impl::pad_target(longest, *padding);
    for (auto& e : out) Impl::pad(e, target, *padding);
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  if (impl_->gguf) return impl_->gguf->decode(ids, skip_special_tokens);
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    const std::string* t = impl_->token_of(id);
    if (!t) continue;  // unknown ids are skipped, as the Rust library does
    if (skip_special_tokens) {
      auto it = impl_->added_by_content.find(*t);
      if (it != impl_->added_by_content.end() && impl_->added[it->second].special) continue;
    }
    tokens.push_back(*t);
  }
  if (!impl_->decoder) {
    std::string s;
    for (size_t i = 0; i < tokens.size(); ++i) s += (i ? " " : "") + tokens[i];
    return s;
  }
  impl_->decoder->decode_chain(tokens);
  std::string s;
  for (const auto& t : tokens) s += t;
  return s;
}

std::vector<std::string> Tokenizer::decode_batch(const std::vector<std::vector<int64_t>>& batch,
                                                 bool skip_special_tokens) const {
  std::vector<std::string> out;
  out.reserve(batch.size());
  for (const auto& ids : batch) out.push_back(decode(ids, skip_special_tokens));
  return out;
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const {
  auto it = impl_->added_by_content.find(token);
  if (it != impl_->added_by_content.end()) return impl_->added[it->second].id;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int64_t id) const {
  const std::string* t = impl_->token_of(id);
  if (!t) return std::nullopt;
  return *t;
}

size_t Tokenizer::vocab_size(bool with_added_tokens) const {
  size_t n = impl_->model->vocab_size();
  if (!with_added_tokens) return n;
  for (const AddedToken& t : impl_->added)
    if (!impl_->model->id_to_token(t.id)) ++n;
  return n;
}

const std::optional<TruncationParams>& Tokenizer::truncation() const { return impl_->truncation; }
const std::optional<PaddingParams>& Tokenizer::padding() const { return impl_->padding; }
void Tokenizer::set_truncation(std::optional<TruncationParams> t) { impl_->truncation = std::move(t); }
void Tokenizer::set_padding(std::optional<PaddingParams> p) { impl_->padding = std::move(p); }

int run_tokenizer_case(const std::string& case_dir, std::string& report) {
  namespace fs = std::filesystem;
  int failures = 0;
  std::ostringstream os;
  const std::string name = fs::path(case_dir).filename().string();
  try {
    Tokenizer t = Tokenizer::from_file((fs::path(case_dir) / "tokenizer.json").string());
    std::ifstream in(fs::path(case_dir) / "case.json");
    if (!in) fail("cannot read ", (fs::path(case_dir) / "case.json").string());
    const json meta = json::parse(in);
    const json& cases = meta.at("cases");
    int i = 0;
    for (const json& c : cases) {
      const std::string text = c.at("text").get<std::string>();
      auto ids = c.at("ids").get<std::vector<int64_t>>();
      auto no_special = c.at("ids_no_special").get<std::vector<int64_t>>();
      const std::string decoded = c.at("decoded").get<std::string>();
      auto show = [](const std::vector<int64_t>& v) {
        std::string s;
        for (size_t k = 0; k < v.size() && k < 24; ++k) s += (k ? " " : "") + std::to_string(v[k]);
        return s + (v.size() > 24 ? " ..." : "");
      };
      const Encoding e = t.encode(text, true), n = t.encode(text, false);
      if (e.ids != ids) {
        ++failures;
        os << "FAIL " << name << " case " << i << " ids: got [" << show(e.ids) << "], want [" << show(ids) << "]\n";
      }
      if (n.ids != no_special) {
        ++failures;
        os << "FAIL " << name << " case " << i << " ids_no_special: got [" << show(n.ids) << "], want ["
           << show(no_special) << "]\n";
      }
      const std::string d = t.decode(ids, true);
      if (d != decoded) {
        ++failures;
        os << "FAIL " << name << " case " << i << " decoded: got '" << d << "', want '" << decoded << "'\n";
      }
      ++i;
    }
    os << (failures ? "FAIL " : "PASS ") << name << ": " << i << " texts, " << failures << " mismatches\n";
  } catch (const std::exception& e) {
    ++failures;
    os << "FAIL " << name << ": " << e.what() << "\n";
  }
  report += os.str();
  return failures;
}

}  // namespace peft
