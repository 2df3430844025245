#include "tools/charlm.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "nn/layers.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::lm {

static std::string utf8_encode(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// Decodes UTF-8; returns false on malformed input.
static bool utf8_decode(const std::string& s, std::vector<char32_t>& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + size_t(n) > s.size()) return false;
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((cc >> 6) != 2) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out.push_back(cp);
    i += size_t(n);
  }
  return true;
}

Vocab::Vocab() {
  std::vector<char32_t> cps{U'.'};
  for (char32_t c = U'a'; c <= U'z'; ++c) cps.push_back(c);
  for (char32_t c : {U'à', U'â', U'ä', U'æ', U'ç', U'é', U'è', U'ê', U'ë', U'î', U'ï', U'ô', U'ö',
                     U'œ', U'ù', U'û', U'ü', U'ÿ', U'ß'})
    cps.push_back(c);
  for (char32_t c : cps) {
    ids_[c] = int64_t(tokens_.size());
    tokens_.push_back(utf8_encode(c));
  }
}

const Vocab& Vocab::standard() {
  static const Vocab v;
  return v;
}

int64_t Vocab::id(char32_t cp) const {
  auto it = ids_.find(cp);
  return it == ids_.end() ? -1 : it->second;
}

static char32_t to_lower(char32_t c) {
  if (c >= U'A' && c <= U'Z') return c + 32;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x152) return 0x153;  // Œ
  if (c == 0x178) return 0xFF;   // Ÿ
  return c;
}

std::vector<int64_t> Vocab::encode_word(const std::string& utf8) const {
  std::vector<char32_t> cps;
  if (!utf8_decode(utf8, cps) || cps.empty()) return {};
  std::vector<int64_t> ids;
  for (char32_t c : cps) {
    int64_t i = id(to_lower(c));
    if (i <= 0) return {};  // unknown character, or the boundary '.' itself
    ids.push_back(i);
  }
  return ids;
}

std::string Vocab::decode(const std::vector<int64_t>& ids) const {
  std::string s;
  for (int64_t i : ids) s += token(i);
  return s;
}

WordData load_words(const std::string& path, uint64_t seed, double heldout_fraction,
                    size_t max_words) {
  std::ifstream in(path);
  if (!in) fail("cannot read word list ", path, " (install wamerican/wfrench/wngerman)");
  WordData d;
  std::set<std::vector<int64_t>> seen;
  std::vector<std::vector<int64_t>> words;
  std::string line;
  const Vocab& v = Vocab::standard();
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    ++d.read;
    std::vector<int64_t> w = v.encode_word(line);
    if (w.empty() || w.size() > 24) {
      ++d.skipped;
      continue;
    }
    if (seen.insert(w).second) words.push_back(std::move(w));
  }
  if (words.empty()) fail("word list ", path, " has no usable words");
  Generator g(seed);
  for (size_t i = words.size(); i > 1; --i) std::swap(words[i - 1], words[g.next_u32() % i]);
  if (max_words && words.size() > max_words) words.resize(max_words);
  size_t nh = std::max<size_t>(1, size_t(double(words.size()) * heldout_fraction));
  d.heldout.assign(words.begin(), words.begin() + long(nh));
  d.train.assign(words.begin() + long(nh), words.end());
  return d;
}

std::map<std::string, std::string> CharLMConfig::to_metadata() const {
  return {{"format", "pt"},
          {"charlm.context", std::to_string(context)},
          {"charlm.embed", std::to_string(embed)},
          {"charlm.hidden", std::to_string(hidden)},
          {"charlm.vocab", std::to_string(vocab)}};
}

CharLMConfig CharLMConfig::from_metadata(const std::map<std::string, std::string>& md) {
  CharLMConfig c;
  auto get = [&](const char* k) -> int64_t {
    auto it = md.find(k);
    if (it == md.end()) fail("base model file lacks metadata '", k, "' (was it written by peft pretrain?)");
    return std::stoll(it->second);
  };
  c.context = get("charlm.context");
  c.embed = get("charlm.embed");
  c.hidden = get("charlm.hidden");
  c.vocab = get("charlm.vocab");
  return c;
}

CharLM::CharLM(const CharLMConfig& cfg, Generator& gen) : nn::Module("CharLM"), cfg_(cfg) {
  register_module("wte", std::make_shared<nn::Embedding>(cfg.vocab, cfg.embed, std::nullopt, &gen));
  register_module("fc1", std::make_shared<nn::Linear>(cfg.context * cfg.embed, cfg.hidden, true, &gen));
  register_module("act1", std::make_shared<nn::Tanh>());
  register_module("fc2", std::make_shared<nn::Linear>(cfg.hidden, cfg.hidden, true, &gen));
  register_module("act2", std::make_shared<nn::Tanh>());
  register_module("lm_head", std::make_shared<nn::Linear>(cfg.hidden, cfg.vocab, true, &gen));
}

Tensor CharLM::forward(const Tensor& ctx) {
  Tensor e = child("wte")(ctx);  // [B, k, E]
  Tensor h = e.reshape({ctx.size(0), cfg_.context * cfg_.embed});
  h = child("act1")(child("fc1")(h));
  h = child("act2")(child("fc2")(h));
  return child("lm_head")(h);
}

Examples make_examples(const std::vector<std::vector<int64_t>>& words, int64_t context) {
  Examples ex;
  ex.context = context;
  std::vector<int64_t> window(size_t(context), 0);
  for (const auto& w : words) {
    std::fill(window.begin(), window.end(), 0);
    for (size_t i = 0; i <= w.size(); ++i) {
      int64_t next = i < w.size() ? w[i] : 0;
      ex.ctx.insert(ex.ctx.end(), window.begin(), window.end());
      ex.target.push_back(next);
      window.erase(window.begin());
      window.push_back(next);
    }
  }
  return ex;
}

Batch sample_batch(const Examples& ex, int64_t batch_size, Generator& gen) {
  std::vector<int64_t> ctx(size_t(batch_size * ex.context)), tgt(static_cast<size_t>(batch_size));
  for (int64_t b = 0; b < batch_size; ++b) {
    int64_t i = int64_t(gen.next_u32() % uint32_t(ex.size()));
    std::copy_n(ex.ctx.begin() + i * ex.context, ex.context, ctx.begin() + b * ex.context);
    tgt[size_t(b)] = ex.target[size_t(i)];
  }
  return {from_vector(ctx, {batch_size, ex.context}), from_vector(tgt, {batch_size})};
}

Batch slice_batch(const Examples& ex, int64_t begin, int64_t end) {
  std::vector<int64_t> ctx(ex.ctx.begin() + begin * ex.context, ex.ctx.begin() + end * ex.context);
  std::vector<int64_t> tgt(ex.target.begin() + begin, ex.target.begin() + end);
  return {from_vector(ctx, {end - begin, ex.context}), from_vector(tgt, {end - begin})};
}

double evaluate(nn::Module& model, const Examples& ex, int64_t batch_size) {
  bool was_training = model.is_training();
  model.eval();
  NoGradGuard ng;
  double total = 0;
  for (int64_t b = 0; b < ex.size(); b += batch_size) {
    int64_t e = std::min(ex.size(), b + batch_size);
    Batch batch = slice_batch(ex, b, e);
    total += cross_entropy(model(batch.ctx), batch.target).item() * double(e - b);
  }
  model.train(was_training);
  return total / double(std::max<int64_t>(1, ex.size()));
}

std::vector<std::string> sample_words(const std::function<Tensor(const Tensor&)>& forward,
                                      int64_t n, int64_t context, Generator& gen,
                                      double temperature, int64_t max_len) {
  NoGradGuard ng;
  std::vector<std::vector<int64_t>> ctx(size_t(n), std::vector<int64_t>(size_t(context), 0));
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(n));
  std::vector<bool> done(static_cast<size_t>(n), false);
  for (int64_t step = 0; step < max_len; ++step) {
    std::vector<int64_t> flat;
    for (const auto& c : ctx) flat.insert(flat.end(), c.begin(), c.end());
    Tensor logits = forward(from_vector(flat, {n, context}));
    Tensor probs = softmax(div(logits, temperature), 1);
    std::vector<float> p = probs.to_vector<float>();
    const int64_t V = logits.size(1);
    bool all_done = true;
    for (int64_t r = 0; r < n; ++r) {
      if (done[size_t(r)]) continue;
      double u = gen.next_double(), acc = 0;
      int64_t pick = V - 1;
      for (int64_t v = 0; v < V; ++v) {
        acc += p[size_t(r * V + v)];
        if (u < acc) {
          pick = v;
          break;
        }
      }
      if (pick == 0) {
        done[size_t(r)] = true;
        continue;
      }
      all_done = false;
      out[size_t(r)].push_back(pick);
      ctx[size_t(r)].erase(ctx[size_t(r)].begin());
      ctx[size_t(r)].push_back(pick);
    }
    if (all_done) break;
  }
  std::vector<std::string> words;
  for (const auto& w : out) words.push_back(Vocab::standard().decode(w));
  return words;
}

}  // namespace peft::lm
