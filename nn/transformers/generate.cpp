#include "nn/transformers/generate.h"

#include "io/gguf.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"

namespace fs = std::filesystem;

namespace peft::nn {

using nlohmann::ordered_json;

GenerateOptions read_generation_config(const std::string& model_dir) {
  if (fs::is_regular_file(model_dir) && io::is_gguf_file(model_dir)) return gguf_generation_config(model_dir);
  GenerateOptions o;
  ordered_json g;
  for (const char* name : {"generation_config.json", "config.json"}) {
    std::ifstream in(fs::path(model_dir) / name);
    if (!in) continue;
    try {
      g = ordered_json::parse(in);
    } catch (const std::exception& e) {
      fail("read_generation_config: ", (fs::path(model_dir) / name).string(), " is not valid JSON: ", e.what());
    }
    if (g.is_object()) break;
  }
  if (!g.is_object()) return o;
  auto ids = [&](const char* key) {
    std::vector<int64_t> v;
    auto it = g.find(key);
    if (it == g.end() || it->is_null()) return v;
    if (it->is_number_integer()) v.push_back(it->get<int64_t>());
    else if (it->is_array())
      for (const auto& e : *it)
        if (e.is_number_integer()) v.push_back(e.get<int64_t>());
    return v;
  };
  o.eos_token_ids = ids("eos_token_id");
  auto pad = ids("pad_token_id");
  if (!pad.empty()) o.pad_token_id = pad[0];
  if (g.contains("do_sample") && g["do_sample"].is_boolean()) o.do_sample = g["do_sample"].get<bool>();
  if (g.contains("temperature") && g["temperature"].is_number()) o.temperature = g["temperature"].get<double>();
  if (g.contains("top_k") && g["top_k"].is_number_integer()) o.top_k = g["top_k"].get<int64_t>();
  if (g.contains("top_p") && g["top_p"].is_number()) o.top_p = g["top_p"].get<double>();
  return o;
}

int64_t choose_token(const std::vector<float>& logits, const GenerateOptions& o, Generator& gen) {
  const int64_t V = int64_t(logits.size());
  if (V == 0) fail("[generate] empty logits");
  if (!o.do_sample) {  // first maximum, as torch.argmax
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (logits[size_t(i)] > logits[size_t(best)] || (std::isnan(logits[size_t(i)]) && !std::isnan(logits[size_t(best)])))
        best = i;
    return best;
  }
  // transformers' order: temperature, top-k, top-p, then softmax and one multinomial draw
  std::vector<double> s(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) s[size_t(i)] = double(logits[size_t(i)]) / o.temperature;
  std::vector<int64_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[size_t(a)] > s[size_t(b)]; });
  int64_t keep = V;
  if (o.top_k > 0) {
    // ties with the k-th value are kept (TopKLogitsWarper masks scores < the k-th largest)
    const double kth = s[size_t(order[size_t(std::min(o.top_k, V) - 1)])];
    keep = 0;
    while (keep < V && s[size_t(order[size_t(keep)])] >= kth) ++keep;
  }
  const double mx = s[size_t(order[0])];
  std::vector<double> p(static_cast<size_t>(keep));
  double z = 0;
  for (int64_t i = 0; i < keep; ++i) z += p[size_t(i)] = std::exp(s[size_t(order[size_t(i)])] - mx);
  for (double& v : p) v /= z;
  if (o.top_p < 1.0) {
    // TopPLogitsWarper: drop the tail whose cumulative mass (ascending) is <= 1 - top_p, keep >= 1
    double tail = 0;
    int64_t cut = keep;
    for (int64_t i = keep - 1; i >= 1; --i) {
      if (tail + p[size_t(i)] > 1.0 - o.top_p) break;
      tail += p[size_t(i)];
      cut = i;
    }
    keep = cut;
    z = 0;
    for (int64_t i = 0; i < keep; ++i) z += p[size_t(i)];
    for (int64_t i = 0; i < keep; ++i) p[size_t(i)] /= z;
  }
  const double u = gen.next_double();
  double c = 0;
  for (int64_t i = 0; i < keep; ++i) {
    c += p[size_t(i)];
    if (u < c) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

Tensor generate(PreTrainedModel& model, const Tensor& input_ids, const Tensor& attention_mask,
                const GenerateOptions& o, const std::function<void(const std::vector<int64_t>&)>& on_step) {
  const std::string name = model.type_name();
  if (!model.is_decoder()) fail("[generate] ", name, " is not a decoder (generation needs a causal LM)");
  if (!input_ids.defined() || input_ids.dtype() != DType::int64 || input_ids.dim() != 2 || input_ids.size(1) == 0)
    fail("[generate] input_ids must be int64 [batch, seq] with seq >= 1, got ",
         input_ids.defined() ? input_ids.desc() : std::string("undefined"));
  if (o.max_new_tokens < 0) fail("[generate] max_new_tokens must be >= 0, got ", o.max_new_tokens);
  if (o.do_sample) {
    if (!(o.temperature > 0) || !std::isfinite(o.temperature))
      fail("[generate] temperature must be a positive number, got ", o.temperature);
    if (o.top_k < 0) fail("[generate] top_k must be >= 0, got ", o.top_k);
    if (!(o.top_p > 0 && o.top_p <= 1)) fail("[generate] top_p must be in (0, 1], got ", o.top_p);
  }
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  std::vector<int64_t> mask(size_t(B * T), 1);
  if (attention_mask.defined()) {
    if (attention_mask.shape() != input_ids.shape() ||
        (attention_mask.dtype() != DType::int64 && attention_mask.dtype() != DType::bool_))
      fail("[generate] attention_mask must be int64 or bool ", shape_str(input_ids.shape()), ", got ",
           attention_mask.desc());
    mask = attention_mask.to(DType::int64).to_vector<int64_t>();
  }
  const int64_t total = T + o.max_new_tokens;
  if (total > model.max_positions())
    fail("[generate] prompt (", T, ") + max_new_tokens (", o.max_new_tokens, ") = ", total,
         " positions is more than the model's max_position_embeddings (", model.max_positions(), ")");
  const bool was_training = model.is_training();
  model.eval();
  struct Restore {
    Module& m;
    bool on;
    ~Restore() { m.train(on); }
  } restore{model, was_training};
  NoGradGuard ng;

  // positions as transformers' generate: cumsum(mask) - 1, padded slots 1
  std::vector<int64_t> pos(static_cast<size_t>(B * T)), next_pos(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    int64_t c = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t m = mask[size_t(b * T + t)] != 0;
      c += m;
      pos[size_t(b * T + t)] = m ? c - 1 : 1;
    }
    next_pos[size_t(b)] = c;
  }
  std::vector<int64_t> ids = input_ids.to_vector<int64_t>();
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) rows[size_t(b)].assign(ids.begin() + b * T, ids.begin() + (b + 1) * T);
  std::vector<int64_t> full_mask = mask;  // [B, T + steps], grows by a column of ones per step
  int64_t cur_len = T;

  KVCache cache;
  cache.reserve = T + o.max_new_tokens;  // the longest this generation can get
  ModelInputs in;
  in.input_ids = input_ids;
  in.attention_mask = from_vector(mask, {B, T});
  in.position_ids = from_vector(pos, {B, T});
  in.cache = &cache;
  in.logits_to_keep = 1;  // only the next token's logits: the prompt's other rows would be wasted work
  Generator gen(o.seed);
  std::vector<bool> done(static_cast<size_t>(B), false);
  const int64_t pad = o.pad_token_id ? *o.pad_token_id : (o.eos_token_ids.empty() ? 0 : o.eos_token_ids[0]);
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    Tensor logits = model.forward(in);  // [B, t, V]
    const int64_t V = logits.size(2);
    Tensor last = logits.narrow(1, logits.size(1) - 1, 1).reshape({B, V}).to(DType::float32).contiguous();
    std::vector<float> lv = last.to_vector<float>();
    std::vector<int64_t> col(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      if (done[size_t(b)]) {
        col[size_t(b)] = pad;
        continue;
      }
      std::vector<float> row(lv.begin() + b * V, lv.begin() + (b + 1) * V);
      col[size_t(b)] = choose_token(row, o, gen);
      if (std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), col[size_t(b)]) != o.eos_token_ids.end())
        done[size_t(b)] = true;
    }
    for (int64_t b = 0; b < B; ++b) rows[size_t(b)].push_back(col[size_t(b)]);
    if (on_step) on_step(col);
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
    if (step + 1 == o.max_new_tokens) break;
    // next step: the new column, mask extended by ones, positions advanced
    std::vector<int64_t> m2;
    m2.reserve(size_t(B * (cur_len + 1)));
    for (int64_t b = 0; b < B; ++b) {
      m2.insert(m2.end(), full_mask.begin() + b * cur_len, full_mask.begin() + (b + 1) * cur_len);
      m2.push_back(1);
    }
    full_mask.swap(m2);
    ++cur_len;
    std::vector<int64_t> p1(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) p1[size_t(b)] = next_pos[size_t(b)]++;
    in.input_ids = from_vector(col, {B, 1});
    in.attention_mask = from_vector(full_mask, {B, cur_len});
    in.position_ids = from_vector(p1, {B, 1});
  }
  std::vector<int64_t> out;
  const int64_t L = int64_t(rows[0].size());
  for (const auto& r : rows) out.insert(out.end(), r.begin(), r.end());
  return from_vector(out, {B, L});
}

}  // namespace peft::nn
