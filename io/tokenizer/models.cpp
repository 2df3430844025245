// Models of tokenizer.json (Rust `tokenizers` src/models/): BPE (merge ranks on a linked list
// of symbols with a priority queue, a word cache), WordPiece (longest match first), WordLevel.
#include <mutex>
#include <queue>
#include <unordered_map>

#include "io/tokenizer/internal.h"

namespace peft::tok {
namespace {

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using VocabMap = std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>>;

struct U64Hash {
  size_t operator()(uint64_t x) const noexcept {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return static_cast<size_t>(x);
  }
};

// token → id and id → token, as read from model.vocab.
class Vocab {
 public:
  void load(const json& j, const std::string& path, const Ctx& ctx) {
    if (!j.is_object()) ctx.fail("field '", path, "' must be an object {token: id}");
    map_.reserve(j.size());
    int64_t max_id = -1;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() > 0x7FFFFFFF) {
        ctx.fail("field '", path, "' entry '", it.key(), "' must be a non-negative integer id");
      }
      int32_t id = static_cast<int32_t>(it.value().get<uint64_t>());
      map_[it.key()] = id;
      max_id = std::max<int64_t>(max_id, id);
    }
    dense_ = max_id < static_cast<int64_t>(4 * map_.size() + 1024);
    if (dense_) {
      rev_.assign(static_cast<size_t>(max_id + 1), nullptr);
    }
    for (const auto& [tok, id] : map_) {
      if (dense_) {
        rev_[static_cast<size_t>(id)] = &tok;
      } else {
        sparse_[id] = &tok;
      }
    }
  }
  std::optional<int32_t> find(std::string_view s) const {
    auto it = map_.find(s);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* token(int64_t id) const {
    if (id < 0) return nullptr;
    if (dense_) return static_cast<size_t>(id) < rev_.size() ? rev_[static_cast<size_t>(id)] : nullptr;
    auto it = sparse_.find(static_cast<int32_t>(id));
    return it == sparse_.end() ? nullptr : it->second;
  }
  size_t size() const { return map_.size(); }
  size_t max_key_len() const {
    size_t m = 0;
    for (const auto& kv : map_) m = std::max(m, kv.first.size());
    return m;
  }

 private:
  VocabMap map_;
  bool dense_ = true;
  std::vector<const std::string*> rev_;
  std::unordered_map<int32_t, const std::string*> sparse_;
};

std::optional<std::string> opt_string(const json& j, const char* key, const std::string& path,
                                      const Ctx& ctx) {
  const json* v = opt_field(j, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) ctx.fail("field '", path, ".", key, "' must be a string or null");
  return v->get<std::string>();
}

class BPE : public Model {
 public:
  BPE(const json& j, const std::string& path, const Ctx& ctx) {
    vocab_.load(field(j, "vocab", path, ctx), path + ".vocab", ctx);
    if (const json* d = opt_field(j, "dropout")) {
      if (!d->is_number()) ctx.fail("field '", path, ".dropout' must be a number or null");
      if (d->get<double>() != 0.0) {
        ctx.fail("BPE dropout (", path, ".dropout = ", d->dump(),
                 ") is not supported: it makes encoding random");
      }
    }
    unk_ = opt_string(j, "unk_token", path, ctx);
    prefix_ = opt_string(j, "continuing_subword_prefix", path, ctx);
    suffix_ = opt_string(j, "end_of_word_suffix", path, ctx);
    fuse_unk_ = get_bool(j, "fuse_unk", path, ctx, false);
    byte_fallback_ = get_bool(j, "byte_fallback", path, ctx, false);
    ignore_merges_ = get_bool(j, "ignore_merges", path, ctx, false);
    for (int b = 0; b < 256; ++b) {
      char code[8];
      std::snprintf(code, sizeof code, "<0x%02X>", b);
      byte_ids_[b] = vocab_.find(code).value_or(-1);
    }
    const json& merges = field(j, "merges", path, ctx);
    if (!merges.is_array()) ctx.fail("field '", path, ".merges' must be an array");
    merges_.reserve(merges.size() * 2);
    size_t prefix_len = prefix_ ? prefix_->size() : 0;
    uint32_t rank = 0;
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      std::string a, b;
      std::string where = path + ".merges[" + std::to_string(i) + "]";
      if (m.is_string()) {
        const std::string& line = m.get_ref<const std::string&>();
        if (line.rfind("#version", 0) == 0) continue;
        size_t sp = line.find(' ');
        if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
          ctx.fail("field '", where, "' (\"", line, "\") must be two tokens separated by one space");
        }
        a = line.substr(0, sp);
        b = line.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        ctx.fail("field '", where, "' must be \"a b\" or [\"a\", \"b\"]");
      }
      auto ia = vocab_.find(a), ib = vocab_.find(b);
      if (!ia) ctx.fail("merge token '", a, "' (", where, ") is not in the vocabulary");
      if (!ib) ctx.fail("merge token '", b, "' (", where, ") is not in the vocabulary");
      if (b.size() < prefix_len) ctx.fail("merge token '", b, "' (", where, ") is shorter than the prefix");
      std::string merged = a + b.substr(prefix_len);
      auto in = vocab_.find(merged);
      if (!in) ctx.fail("merge result '", merged, "' (", where, ") is not in the vocabulary");
      merges_[key(*ia, *ib)] = {rank, static_cast<uint32_t>(*in)};
      ++rank;
    }
  }

  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (auto id = vocab_.find(word)) {
        ids.push_back(*id);
        return;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = cache_.find(word);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> out;
    merge_word(word, out);
    ids.insert(ids.end(), out.begin(), out.end());
    if (word.size() < 256) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cache_.size() < 10000) cache_.emplace(std::string(word), std::move(out));
    }
  }
  std::optional<int64_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(int64_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  struct Symbol {
    int32_t c;
    int32_t prev, next;
    uint32_t len;
  };
  struct Cand {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
    bool operator<(const Cand& o) const {  // priority_queue pops the largest: lowest rank, pos
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  int32_t unk_id() const {
    auto id = vocab_.find(*unk_);
    if (!id) ::peft::fail("[tokenizer] BPE unk_token '", *unk_, "' is not in the vocabulary");
    return *id;
  }

  void merge_word(std::string_view w, std::vector<int32_t>& out) const {
    std::vector<Symbol> sym;
    sym.reserve(w.size());
    auto add = [&](int32_t c, uint32_t len) {
      int32_t n = static_cast<int32_t>(sym.size());
      if (n > 0) sym.back().next = n;
      sym.push_back({c, n - 1, -1, len});
    };
    bool have_unk = false;
    int32_t unk_c = 0;
    uint32_t unk_len = 0;
    std::string buf;
    size_t i = 0;
    while (i < w.size()) {
      size_t b = i;
      i += cp_len(static_cast<unsigned char>(w[i]));
      std::string_view ch = w.substr(b, i - b);
      std::string_view s = ch;
      if ((b != 0 && prefix_) || (i == w.size() && suffix_)) {
        buf.clear();
        if (b != 0 && prefix_) buf += *prefix_;
        buf += ch;
        if (i == w.size() && suffix_) buf += *suffix_;
        s = buf;
      }
      uint32_t byte_len = static_cast<uint32_t>(ch.size());
      if (auto id = vocab_.find(s)) {
        if (have_unk) {
          add(unk_c, unk_len);
          have_unk = false;
        }
        add(*id, byte_len);
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        for (char c : s) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
        if (all) {  // as in Rust, a pending unk is not flushed first
          for (char c : s) add(byte_ids_[static_cast<unsigned char>(c)], 1);
          continue;
        }
      }
      if (unk_) {
        if (have_unk && fuse_unk_) {
          unk_len += byte_len;
        } else {
          if (have_unk) add(unk_c, unk_len);
          unk_c = unk_id();
          unk_len = byte_len;
          have_unk = true;
        }
      }
    }
    if (have_unk) add(unk_c, unk_len);

    std::vector<Cand> heap_store;
    heap_store.reserve(sym.size());
    std::priority_queue<Cand> q(std::less<Cand>(), std::move(heap_store));
    for (size_t k = 0; k + 1 < sym.size(); ++k) {
      auto it = merges_.find(key(sym[k].c, sym[k + 1].c));
      if (it != merges_.end()) q.push({it->second.first, static_cast<uint32_t>(k), static_cast<int32_t>(it->second.second)});
    }
    while (!q.empty()) {
      Cand top = q.top();
      q.pop();
      Symbol& cur = sym[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      Symbol right = sym[static_cast<size_t>(cur.next)];
      auto it = merges_.find(key(cur.c, right.c));
      if (it == merges_.end() || static_cast<int32_t>(it->second.second) != top.new_id) continue;
      int32_t next_pos = cur.next;
      cur.c = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      sym[static_cast<size_t>(next_pos)].len = 0;
      if (right.next > -1 && static_cast<size_t>(right.next) < sym.size()) {
        sym[static_cast<size_t>(right.next)].prev = static_cast<int32_t>(top.pos);
      }
      const Symbol& now = sym[top.pos];
      if (now.prev >= 0) {
        auto p = merges_.find(key(sym[static_cast<size_t>(now.prev)].c, now.c));
        if (p != merges_.end()) {
          q.push({p->second.first, static_cast<uint32_t>(now.prev), static_cast<int32_t>(p->second.second)});
        }
      }
      if (now.next >= 0 && static_cast<size_t>(now.next) < sym.size()) {
        auto n = merges_.find(key(now.c, sym[static_cast<size_t>(now.next)].c));
        if (n != merges_.end()) {
          q.push({n->second.first, top.pos, static_cast<int32_t>(n->second.second)});
        }
      }
    }
    for (const Symbol& s : sym) {
      if (s.len != 0) out.push_back(s.c);
    }
  }

  Vocab vocab_;
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>, U64Hash> merges_;
  std::optional<std::string> unk_, prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t byte_ids_[256];
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, SvHash, std::equal_to<>> cache_;
};

class WordPiece : public Model {
 public:
  WordPiece(const json& j, const std::string& path, const Ctx& ctx) {
    vocab_.load(field(j, "vocab", path, ctx), path + ".vocab", ctx);
    unk_ = opt_string(j, "unk_token", path, ctx).value_or("[UNK]");
    prefix_ = opt_string(j, "continuing_subword_prefix", path, ctx).value_or("##");
    max_chars_ = get_uint(j, "max_input_chars_per_word", path, ctx, 100);
    max_len_ = vocab_.max_key_len();
  }
  void tokenize(std::string_view w, std::vector<int32_t>& ids) const override {
    if (count_chars(w) > max_chars_) {
      ids.push_back(unk_id());
      return;
    }
    size_t first = ids.size();
    std::string buf;
    size_t start = 0;
    while (start < w.size()) {
      size_t end = w.size();
      size_t pre = start > 0 ? prefix_.size() : 0;
      // candidates longer than the longest vocabulary entry cannot match
      if (pre + (end - start) > max_len_) {
        end = start + (max_len_ > pre ? max_len_ - pre : 0);
        while (end > start && (static_cast<unsigned char>(w[end]) & 0xC0) == 0x80) --end;
      }
      buf.assign(start > 0 ? prefix_ : std::string());
      buf.append(w.substr(start, end - start));
      int32_t found = -1;
      while (start < end) {
        if (auto id = vocab_.find(std::string_view(buf.data(), pre + (end - start)))) {
          found = *id;
          break;
        }
        size_t b = end - 1;
        while (b > start && (static_cast<unsigned char>(w[b]) & 0xC0) == 0x80) --b;
        end = b;
      }
      if (found < 0) {
        ids.resize(first);
        ids.push_back(unk_id());
        return;
      }
      ids.push_back(found);
      start = end;
    }
  }
  std::optional<int64_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(int64_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  int32_t unk_id() const {
    auto id = vocab_.find(unk_);
    if (!id) ::peft::fail("[tokenizer] WordPiece error: Missing ", unk_, " token from the vocabulary");
    return *id;
  }
  Vocab vocab_;
  std::string unk_, prefix_;
  size_t max_chars_ = 100, max_len_ = 0;
};

class WordLevel : public Model {
 public:
  WordLevel(const json& j, const std::string& path, const Ctx& ctx) {
    vocab_.load(field(j, "vocab", path, ctx), path + ".vocab", ctx);
    unk_ = opt_string(j, "unk_token", path, ctx).value_or("<unk>");
  }
  void tokenize(std::string_view w, std::vector<int32_t>& ids) const override {
    if (auto id = vocab_.find(w)) {
      ids.push_back(*id);
    } else if (auto u = vocab_.find(unk_)) {
      ids.push_back(*u);
    } else {
      ::peft::fail("[tokenizer] WordLevel error: Missing ", unk_, " token from the vocabulary");
    }
  }
  std::optional<int64_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(int64_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  Vocab vocab_;
  std::string unk_;
};

}  // namespace

std::unique_ptr<Model> make_model(const json& j, const std::string& path, const Ctx& ctx) {
  if (!j.is_object()) ctx.fail("field '", path, "' must be an object");
  std::string type;
  if (j.contains("type")) {
    type = type_of(j, path, ctx);
  } else if (j.contains("merges")) {
    type = "BPE";
  } else if (j.contains("continuing_subword_prefix") || j.contains("max_input_chars_per_word")) {
    type = "WordPiece";
  } else if (j.contains("vocab") && j["vocab"].is_array()) {
    type = "Unigram";
  } else {
    type = "WordLevel";
  }
  if (type == "BPE") return std::make_unique<BPE>(j, path, ctx);
  if (type == "WordPiece") return std::make_unique<WordPiece>(j, path, ctx);
  if (type == "WordLevel") return std::make_unique<WordLevel>(j, path, ctx);
  ctx.fail("model type '", type, "' (", path, ") is not supported; supported: BPE, WordPiece, WordLevel");
}

}  // namespace peft::tok
