// load_pretrained of a .gguf file: the transformers config rebuilt from llama.cpp's metadata,
// GGUF tensor names mapped to transformers' module names, llama.cpp's Q/K row permutation
// undone for `llama`, and the weights kept in the file's formats (quantized stays quantized,
// zero-copy views of the mapped file) unless a dtype is asked for.
#include <malloc.h>

#include <cstring>
#include <map>
#include <regex>
#include <set>

#include "io/gguf.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/pretrained.h"
#include "runtime/ops.h"

namespace peft::nn {

using nlohmann::ordered_json;

namespace {

std::string join(const std::vector<std::string>& v, size_t max_items = 8) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < max_items; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > max_items) out += ", ... (" + std::to_string(v.size() - max_items) + " more)";
  return out;
}

// GGUF tensor name -> transformers name ("" when it has none).
std::string hf_name(const std::string& g) {
  static const std::map<std::string, std::string> top = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  if (auto it = top.find(g); it != top.end()) return it->second;
  static const std::regex blk(R"(blk\.(\d+)\.([a-z_]+)\.(weight|bias))");
  std::smatch m;
  if (!std::regex_match(g, m, blk)) return "";
  static const std::map<std::string, std::string> layer = {
      {"attn_norm", "input_layernorm"},   {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},     {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},     {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  auto it = layer.find(m[2].str());
  if (it == layer.end()) return "";
  return "model.layers." + m[1].str() + "." + it->second + "." + m[3].str();
}

// Rows of a [rows, cols] tensor reordered: out row r = in row src_row(r). Works on block
// storage too (a row is whole blocks), so a quantized weight stays quantized.
template <class F>
Tensor permute_rows(const Tensor& t, F&& src_row) {
  const int64_t rows = t.size(0), cols = t.numel() / std::max<int64_t>(rows, 1);
  Tensor out = empty(t.shape(), t.dtype());
  const size_t rb = dtype_nbytes(t.dtype(), cols);
  const auto* in = static_cast<const uint8_t*>(t.raw_data());
  auto* o = static_cast<uint8_t*>(out.raw_data());
  for (int64_t r = 0; r < rows; ++r) std::memcpy(o + size_t(r) * rb, in + size_t(src_row(r)) * rb, rb);
  return out;
}

// convert_hf_to_gguf.py's LlamaModel.permute interleaves the two rotary halves of each head
// (HF row h·D + i·D/2 + j is stored at h·D + 2j + i); this puts them back.
Tensor unpermute_rotary(const Tensor& t, int64_t heads, const std::string& name) {
  const int64_t rows = t.size(0);
  if (heads <= 0 || rows % heads || (rows / heads) % 2)
    fail_shape("load_pretrained: '", name, "' has ", rows, " rows, not ", heads, " heads of an even size");
  const int64_t D = rows / heads, half = D / 2;
  return permute_rows(t, [&](int64_t r) {
    const int64_t h = r / D, w = r % D, i = w / half, j = w % half;
    return h * D + 2 * j + i;
  });
}

}  // namespace

std::string gguf_tensor_hf_name(const std::string& gguf_name) { return hf_name(gguf_name); }

ordered_json gguf_model_config(const io::GGUFFile& f) {
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama" && arch != "qwen2")
    fail("load_pretrained: ", f.path(), ": general.architecture '", arch,
         "' is not supported for GGUF files (supported: llama, qwen2)");
  auto key = [&](const std::string& k) { return arch + "." + k; };
  ordered_json c;
  c["architectures"] = ordered_json::array({arch == "llama" ? "LlamaForCausalLM" : "Qwen2ForCausalLM"});
  c["model_type"] = arch;
  const int64_t hidden = f.get_int(key("embedding_length"));
  const int64_t heads = f.get_int(key("attention.head_count"));
  c["hidden_size"] = hidden;
  c["intermediate_size"] = f.get_int(key("feed_forward_length"));
  c["num_hidden_layers"] = f.get_int(key("block_count"));
  c["num_attention_heads"] = heads;
  c["num_key_value_heads"] = f.get_int(key("attention.head_count_kv"), heads);
  if (heads <= 0) fail_format("load_pretrained: ", f.path(), ": ", key("attention.head_count"), " must be positive");
  const int64_t head_dim = f.get_int(key("attention.key_length"), hidden / heads);
  if (f.get_int(key("attention.value_length"), head_dim) != head_dim)
    fail("load_pretrained: ", f.path(), ": ", key("attention.value_length"), " differs from the key length (not supported)");
  if (f.has(key("rope.dimension_count")) && f.get_int(key("rope.dimension_count")) != head_dim)
    fail("load_pretrained: ", f.path(), ": ", key("rope.dimension_count"), " ", f.get_int(key("rope.dimension_count")),
         " is not the head size ", head_dim, " (partial rotary embeddings are not supported)");
  c["head_dim"] = head_dim;
  c["rms_norm_eps"] = f.get_float(key("attention.layer_norm_rms_epsilon"), 1e-5);
  c["rope_theta"] = f.get_float(key("rope.freq_base"), 10000.0);
  const std::string scaling = f.get_string(key("rope.scaling.type"), "none");
  if (scaling != "none" || f.contains("rope_freqs.weight"))
    fail("load_pretrained: ", f.path(), ": rope scaling '", scaling == "none" ? "rope_freqs" : scaling,
         "' is not supported (only the default rotary embedding)");
  c["max_position_embeddings"] = f.get_int(key("context_length"), 2048);
  int64_t vocab = f.has(key("vocab_size")) ? f.get_int(key("vocab_size")) : 0;
  if (!vocab && f.contains("token_embd.weight")) vocab = f.info("token_embd.weight").shape.at(0);
  c["vocab_size"] = vocab;
  c["tie_word_embeddings"] = !f.contains("output.weight");
  c["attention_bias"] = arch == "llama" && f.contains("blk.0.attn_q.bias");
  c["hidden_act"] = "silu";
  for (const char* t : {"bos", "eos", "padding"})
    if (f.has(std::string("tokenizer.ggml.") + t + "_token_id"))
      c[std::string(t == std::string("padding") ? "pad" : t) + "_token_id"] = f.get_int(std::string("tokenizer.ggml.") + t + "_token_id");
  if (c.contains("pad_token_id") && c["pad_token_id"].get<int64_t>() >= vocab) c.erase("pad_token_id");
  c["torch_dtype"] = "float32";
  return c;
}

std::shared_ptr<PreTrainedModel> load_gguf(const std::string& path, const PretrainedOptions& opts, PretrainedInfo* info) {
  auto f = io::GGUFFile::open(path);
  const ordered_json config = gguf_model_config(*f);
  const std::string arch = f->get_string("general.architecture");
  std::string cls = config["architectures"][0].get<std::string>();
  if (!opts.architecture.empty()) {
    const std::string base = arch == "llama" ? "LlamaModel" : "Qwen2Model";
    if (opts.architecture != cls && opts.architecture != base)
      fail("architecture '", opts.architecture, "' is not supported for this GGUF file (supported: ", cls, ", ", base, ")");
    cls = opts.architecture;
  }
  if (opts.dtype && !is_floating(*opts.dtype)) fail("load_pretrained: dtype ", dtype_name(*opts.dtype), " is not a floating dtype");
  const bool is_base = cls.find("ForCausalLM") == std::string::npos;
  const int64_t heads = config["num_attention_heads"].get<int64_t>(), kv_heads = config["num_key_value_heads"].get<int64_t>();

  PretrainedInfo inf;
  inf.architecture = cls;
  inf.files.push_back(path);
  StateDict sd;
  std::vector<std::string> unknown;
  for (const auto& ti : f->tensors()) {
    std::string name = hf_name(ti.name);
    if (name.empty()) {
      unknown.push_back(ti.name);
      continue;
    }
    if (is_base) {
      if (name == "lm_head.weight") {
        inf.ignored_keys.push_back(ti.name);
        continue;
      }
      name = name.substr(std::strlen("model."));
    }
    Tensor t = f->tensor(ti.name);
    if (arch == "llama" && (ti.name.find(".attn_q.") != std::string::npos || ti.name.find(".attn_k.") != std::string::npos)) {
      const bool is_q = ti.name.find(".attn_q.") != std::string::npos;
      t = unpermute_rotary(t, is_q ? heads : kv_heads, ti.name);
      f->release_pages(ti);  // the file's copy is never read again: not resident twice
      ++inf.converted_tensors;
    } else {
      ++inf.zero_copy_tensors;
    }
    // element dtypes: float32 compute (float16 / bfloat16 weights are widened); quantized
    // weights stay quantized unless a dtype is asked for
    const DType want = opts.dtype ? *opts.dtype : is_quantized(t.dtype()) ? t.dtype() : DType::float32;
    if (t.dtype() != want) {
      t = t.to(want);
      ++inf.converted_tensors;
    }
    sd.set(name, t);
  }
  if (!unknown.empty())
    fail_key("load_pretrained: ", path, ": tensors with no transformers counterpart for ", cls, ": ", join(unknown));

  auto model = build_pretrained(config, cls, opts.dtype ? *opts.dtype : DType::float32, Device::meta);
  // tied head: lm_head.weight is the embedding's tensor (registered under both names)
  std::vector<std::string> missing;
  const StateDict own = model->state_dict();
  StateDict full;
  for (const auto& [k, t] : own) {
    const Tensor* src = sd.find(k);
    if (!src && k == "lm_head.weight") src = sd.find("model.embed_tokens.weight");
    if (!src) {
      missing.push_back(k);
      continue;
    }
    if (src->shape() != t.shape())
      fail_shape("load_pretrained: ", path, ": '", k, "' has shape ", shape_str(src->shape()), " in the file but ", cls,
                 " expects ", shape_str(t.shape()), " (does the metadata match the tensors?)");
    full.set(k, *src);
  }
  if (!missing.empty()) fail_key("load_pretrained: ", path, ": the file has no weights for ", join(missing), " (", cls, ")");
  std::vector<std::string> extra;
  for (const auto& [k, t] : sd)
    if (!own.find(k)) extra.push_back(k);
  if (!extra.empty()) fail_key("load_pretrained: ", path, ": tensors ", cls, " does not have: ", join(extra));
  model->load_state_dict(full, /*strict=*/true, /*assign=*/true);
  LlamaModel* body = dynamic_cast<LlamaModel*>(model.get());
  if (!body) body = &dynamic_cast<LlamaForCausalLM&>(*model).model();
  body->set_ggml_numerics(true, opts.kv_cache_dtype ? *opts.kv_cache_dtype : DType::float16);
  // quantized base weights are frozen storage
  for (auto& [n, p] : model->named_parameters())
    if (is_quantized(p.dtype())) p.impl().requires_grad = false;
  if (info) *info = std::move(inf);
  // The tensors keep the mapping alive, not the file object: its parsed metadata (a vocabulary
  // of ~50k strings: ~9 MB) goes now, and glibc gives that heap back instead of keeping it
  // resident for the model's lifetime.
  sd = StateDict();
  full = StateDict();
  f.reset();
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
  return model;
}

GenerateOptions gguf_generation_config(const std::string& path) {
  auto f = io::GGUFFile::open(path);
  GenerateOptions o;
  std::set<int64_t> eog;
  for (const char* k : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (f->has(k)) eog.insert(f->get_int(k));
  if (f->has("tokenizer.ggml.tokens")) {
    // llama_vocab::impl::load's list of end-of-generation texts
    static const std::set<std::string> texts = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
        "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
        "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>"};
    const std::vector<std::string> toks = f->get_string_array("tokenizer.ggml.tokens");
    for (size_t i = 0; i < toks.size(); ++i)
      if (texts.count(toks[i])) eog.insert(int64_t(i));
  }
  // the file's own EOS first: what ends a completion in training data (TRL appends the
  // tokenizer's eos_token); generation stops at any of them
  if (f->has("tokenizer.ggml.eos_token_id")) {
    const int64_t eos = f->get_int("tokenizer.ggml.eos_token_id");
    o.eos_token_ids.push_back(eos);
    eog.erase(eos);
  }
  o.eos_token_ids.insert(o.eos_token_ids.end(), eog.begin(), eog.end());
  if (f->has("tokenizer.ggml.padding_token_id")) o.pad_token_id = f->get_int("tokenizer.ggml.padding_token_id");
  return o;
}

}  // namespace peft::nn
