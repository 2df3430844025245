#include "nn/transformers/text_model.h"

#include <malloc.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace fs = std::filesystem;

namespace peft::nn {

namespace {

nlohmann::json read_json_file(const fs::path& p) {
  std::ifstream in(p);
  if (!in) fail("cannot read ", p.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail(p.string(), " is not valid JSON: ", e.what());
  }
}

}  // namespace

SentenceSettings read_sentence_settings(const std::string& dir) {
  SentenceSettings s;
  const fs::path modules = fs::path(dir) / "modules.json";
  if (fs::exists(modules)) {
    const auto j = read_json_file(modules);
    if (!j.is_array()) fail(modules.string(), " must be a JSON array of modules");
    s.from_sentence_transformers = true;
    for (const auto& m : j) {
      const std::string type = m.value("type", "");
      const std::string path = m.value("path", "");
      if (type.find("Normalize") != std::string::npos) s.normalize = true;
      if (type.find("Pooling") != std::string::npos) {
        const fs::path cfg = fs::path(dir) / path / "config.json";
        if (!fs::exists(cfg)) continue;
        const auto p = read_json_file(cfg);
        if (p.value("pooling_mode_cls_token", false)) s.pool = "cls";
        else if (p.value("pooling_mode_mean_tokens", false)) s.pool = "mean";
        else fail(cfg.string(), ": only mean and CLS pooling are supported");
      }
    }
  }
  const fs::path sb = fs::path(dir) / "sentence_bert_config.json";
  if (fs::exists(sb)) {
    const auto j = read_json_file(sb);
    if (j.contains("max_seq_length") && j["max_seq_length"].is_number_unsigned())
      s.max_seq_length = j["max_seq_length"].get<size_t>();
  }
  return s;
}

TextModel TextModel::load(const std::string& dir, const nn::PretrainedOptions& opts) {
  TextModel t;
  t.dir = dir;
  t.model = nn::load_pretrained(dir, opts);
  t.model->eval();
  if (fs::is_regular_file(dir) && io::is_gguf_file(dir)) {
    auto f = io::GGUFFile::open(dir);
    if (f->has("tokenizer.ggml.model")) t.tokenizer.emplace(Tokenizer::from_gguf(*f));
    t.chat_template = f->get_string("tokenizer.chat_template", "");
    f.reset();
#if defined(__GLIBC__)
    ::malloc_trim(0);  // the metadata (~100k vocabulary strings as JSON) is freed: give the heap back
#endif
    return t;
  }
  const fs::path tj = fs::path(dir) / "tokenizer.json";
  if (fs::exists(tj)) t.tokenizer.emplace(Tokenizer::from_file(tj.string()));
  // transformers keeps the chat template in tokenizer_config.json (a string, or named
  // templates of which "default" is the one apply_chat_template uses)
  const fs::path tc = fs::path(dir) / "tokenizer_config.json";
  if (fs::exists(tc)) {
    const auto j = read_json_file(tc);
    if (auto it = j.find("chat_template"); it != j.end()) {
      if (it->is_string()) t.chat_template = it->get<std::string>();
      else if (it->is_array())
        for (const auto& e : *it)
          if (e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
            t.chat_template = e["template"].get<std::string>();
    }
  }
  t.sentence = read_sentence_settings(dir);
  return t;
}

const Tokenizer& TextModel::tok() const {
  if (!tokenizer) fail(dir, " has no tokenizer.json (the text commands need the model's tokenizer)");
  return *tokenizer;
}

nn::ModelInputs TextModel::batch(const std::vector<std::string>& texts, std::optional<size_t> max_len) const {
  if (texts.empty()) fail("no texts given");
  const Tokenizer& t = tok();
  const auto& old_pad = t.padding();
  TruncationParams tr;
  tr.max_length = max_len ? *max_len
                          : sentence.max_seq_length ? *sentence.max_seq_length : size_t(model->max_positions());
  if (tr.max_length > size_t(model->max_positions())) tr.max_length = size_t(model->max_positions());
  PaddingParams pad = old_pad ? *old_pad : PaddingParams{};
  pad.fixed_length.reset();  // to the longest text, as transformers' padding=True
  if (!old_pad) {
    if (auto id = t.token_to_id("[PAD]")) pad.pad_id = *id;
  }
  std::vector<Encoding> enc = t.encode_batch(texts, true, tr, pad);
  const int64_t B = int64_t(enc.size()), T = int64_t(enc[0].size());
  std::vector<int64_t> ids, mask, types;
  for (const auto& e : enc) {
    ids.insert(ids.end(), e.ids.begin(), e.ids.end());
    mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
    types.insert(types.end(), e.type_ids.begin(), e.type_ids.end());
  }
  nn::ModelInputs in;
  in.input_ids = from_vector(ids, {B, T});
  in.attention_mask = from_vector(mask, {B, T});
  if (model->model_type() == "bert") in.token_type_ids = from_vector(types, {B, T});
  return in;
}

Tensor TextModel::embed(const std::vector<std::string>& texts, const std::string& pool, std::optional<size_t> max_len,
                        bool skip_padding) {
  nn::ModelInputs in = batch(texts, max_len);
  in.skip_padding = skip_padding;  // pooling reads only the real tokens
  return embed(in, pool);
}

Tensor TextModel::embed(const nn::ModelInputs& in, const std::string& pool) {
  const std::string p = pool.empty() ? sentence.pool : pool;
  if (p != "mean" && p != "cls") fail("pooling must be mean or cls, got '", p, "'");
  Tensor h = model->forward(in);
  if (h.dim() != 3) fail(model->type_name(), " returns ", h.desc(), ", not hidden states: embed needs a base model");
  Tensor e = p == "mean" ? nn::mean_pooling(h, in.attention_mask) : h.select(1, 0);
  return sentence.normalize ? nn::l2_normalize(e) : e;
}

}  // namespace peft::nn
