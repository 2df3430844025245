// The Llama family as transformers 5 (models/llama/modeling_llama.py; Qwen2 and Mistral are
// the same graph under their own class names, Qwen2 with q/k/v biases): RMSNorm, rotary
// embeddings (default rope type), grouped-query attention, SwiGLU MLP.
#include <cmath>

#include "nn/transformers/models.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::nn {

using nlohmann::ordered_json;
using namespace hf_detail;

namespace {

ModulePtr container(const std::string& type) { return std::make_shared<Module>(type); }

// <Family>RMSNorm: weight [hidden] (ones), repr "LlamaRMSNorm((32,), eps=1e-05)".
class RMSNorm : public Module {
 public:
  RMSNorm(const std::string& prefix, int64_t hidden, double eps, DType dt, Device dev)
      : Module(prefix + "RMSNorm"), eps_(eps) {
    Tensor w = empty({hidden}, dt, dev);
    if (dev != Device::meta) w.fill_(1.0);
    register_parameter("weight", w);
  }
  Tensor forward(const Tensor& x) override { return rms_norm(x, param("weight"), eps_, ggml_rstd_); }
  std::string extra_repr() const override {
    return "(" + std::to_string(param("weight").size(0)) + ",), eps=" + py_float_repr(eps_);
  }
  std::shared_ptr<Module> clone() const override {
    auto m = std::make_shared<RMSNorm>("", param("weight").size(0), eps_, param("weight").dtype(), Device::meta);
    m->set_type_name(type_name());
    m->ggml_rstd_ = ggml_rstd_;
    copy_state_to(*m);
    return m;
  }

 private:
  friend class peft::nn::LlamaModel;
  using Module::set_type_name;
  double eps_;
  bool ggml_rstd_ = false;  // llama.cpp's float32 rstd (GGUF models)
};

struct LlamaDims {
  std::string prefix;
  int64_t hidden, heads, kv_heads, head_dim, inter, layers, vocab, max_pos;
  std::optional<int64_t> pad, sliding_window;
  double eps, theta;
  bool attn_bias, qkv_bias, mlp_bias;
  std::string act;
};

// rope_parameters (transformers 5) or rope_theta + rope_scaling (older configs).
double read_rope_theta(const ordered_json& c) {
  std::string type = "default";
  double theta = 10000.0;
  auto rp = c.find("rope_parameters");
  if (rp != c.end() && !rp->is_null()) {
    if (!rp->is_object()) fail("config.json: rope_parameters must be an object, got ", rp->dump());
    theta = cfg_float(*rp, "rope_theta", 10000.0);
    type = cfg_str(*rp, "rope_type", "default");
    if (rp->contains("partial_rotary_factor") && cfg_float(*rp, "partial_rotary_factor") != 1.0)
      fail("config.json: rope_parameters.partial_rotary_factor ", (*rp)["partial_rotary_factor"].dump(),
           " is not supported (only 1.0)");
  } else {
    theta = cfg_float(c, "rope_theta", 10000.0);
    auto rs = c.find("rope_scaling");
    if (rs != c.end() && !rs->is_null()) {
      if (!rs->is_object()) fail("config.json: rope_scaling must be an object, got ", rs->dump());
      type = rs->contains("rope_type") ? cfg_str(*rs, "rope_type") : cfg_str(*rs, "type", "default");
    }
  }
  if (type != "default")
    fail("config.json: rope type '", type,
         "' is not supported (only the default rotary embedding; linear, dynamic, yarn, longrope and llama3 "
         "scaling are not implemented)");
  if (!(theta > 0)) fail("config.json: rope_theta must be positive, got ", theta);
  return theta;
}

LlamaDims read_llama_config(const ordered_json& c) {
  LlamaDims d;
  const std::string mt = c.contains("model_type") && c["model_type"].is_string() ? c["model_type"].get<std::string>() : "llama";
  d.prefix = LlamaModel::family_prefix(mt);
  d.hidden = cfg_int(c, "hidden_size");
  d.heads = cfg_int(c, "num_attention_heads");
  d.kv_heads = cfg_int(c, "num_key_value_heads", d.heads);
  d.inter = cfg_int(c, "intermediate_size");
  d.layers = cfg_int(c, "num_hidden_layers");
  d.vocab = cfg_int(c, "vocab_size");
  d.max_pos = cfg_int(c, "max_position_embeddings", 2048);
  for (auto [k, v] : {std::pair{"hidden_size", d.hidden}, {"num_attention_heads", d.heads},
                      {"num_key_value_heads", d.kv_heads}, {"intermediate_size", d.inter}, {"vocab_size", d.vocab},
                      {"max_position_embeddings", d.max_pos}})
    if (v <= 0) fail("config.json: ", k, " must be positive, got ", v);
  if (d.layers < 0) fail("config.json: num_hidden_layers must be >= 0, got ", d.layers);
  d.head_dim = cfg_int(c, "head_dim", d.hidden % d.heads == 0 ? d.hidden / d.heads : -1);
  if (d.head_dim <= 0 || d.head_dim % 2)
    fail("config.json: head_dim must be a positive even number (hidden_size / num_attention_heads when absent), got ",
         d.head_dim);
  if (d.heads % d.kv_heads)
    fail("config.json: num_attention_heads (", d.heads, ") is not a multiple of num_key_value_heads (", d.kv_heads, ")");
  d.eps = cfg_float(c, "rms_norm_eps", 1e-6);
  d.theta = read_rope_theta(c);
  d.attn_bias = cfg_bool(c, "attention_bias", false);
  d.qkv_bias = d.prefix == "Qwen2" || d.attn_bias;
  d.mlp_bias = cfg_bool(c, "mlp_bias", false);
  d.act = cfg_str(c, "hidden_act", "silu");
  if (c.contains("pad_token_id") && !c["pad_token_id"].is_null()) {
    d.pad = cfg_int(c, "pad_token_id");
    if (*d.pad < 0 || *d.pad >= d.vocab) fail("config.json: pad_token_id ", *d.pad, " is outside vocab_size (", d.vocab, ")");
  }
  if (d.prefix == "Qwen2" && cfg_bool(c, "use_sliding_window", false))
    fail("config.json: use_sliding_window true is not supported (Qwen2 sliding-window attention)");
  if (d.prefix == "Mistral" && c.contains("sliding_window") && !c["sliding_window"].is_null())
    d.sliding_window = cfg_int(c, "sliding_window");
  const int64_t tp = cfg_int(c, "pretraining_tp", 1);
  if (tp != 1) fail("config.json: pretraining_tp ", tp, " is not supported (only 1)");
  return d;
}

}  // namespace

std::string LlamaModel::family_prefix(const std::string& model_type) {
  if (model_type == "llama") return "Llama";
  if (model_type == "qwen2") return "Qwen2";
  if (model_type == "mistral") return "Mistral";
  fail("config.json: model_type '", model_type, "' is not a Llama-family model (llama, qwen2, mistral)");
}

LlamaModel::LlamaModel(const ordered_json& config, DType dt, Device dev)
    : PreTrainedModel(family_prefix(config.value("model_type", std::string("llama"))) + "Model", config) {
  const LlamaDims d = read_llama_config(config);
  vocab_ = d.vocab, layers_ = d.layers, max_pos_ = d.max_pos, heads_ = d.heads, kv_heads_ = d.kv_heads;
  head_dim_ = d.head_dim, rope_theta_ = d.theta, sliding_window_ = d.sliding_window;
  const std::string& P = d.prefix;
  register_module("embed_tokens", std::make_shared<Embedding>(d.vocab, d.hidden, d.pad, nullptr, dt, dev));
  auto layers = std::make_shared<ModuleList>();
  for (int64_t i = 0; i < d.layers; ++i) {
    auto attn = container(P + "Attention");
    attn->register_module("q_proj", std::make_shared<Linear>(d.hidden, d.heads * d.head_dim, d.qkv_bias, nullptr, dt, dev));
    attn->register_module("k_proj", std::make_shared<Linear>(d.hidden, d.kv_heads * d.head_dim, d.qkv_bias, nullptr, dt, dev));
    attn->register_module("v_proj", std::make_shared<Linear>(d.hidden, d.kv_heads * d.head_dim, d.qkv_bias, nullptr, dt, dev));
    attn->register_module("o_proj", std::make_shared<Linear>(d.heads * d.head_dim, d.hidden, d.attn_bias, nullptr, dt, dev));
    auto mlp = container(P + "MLP");
    mlp->register_module("gate_proj", std::make_shared<Linear>(d.hidden, d.inter, d.mlp_bias, nullptr, dt, dev));
    mlp->register_module("up_proj", std::make_shared<Linear>(d.hidden, d.inter, d.mlp_bias, nullptr, dt, dev));
    mlp->register_module("down_proj", std::make_shared<Linear>(d.inter, d.hidden, d.mlp_bias, nullptr, dt, dev));
    mlp->register_module("act_fn", make_activation(d.act));
    auto layer = container(P + "DecoderLayer");
    layer->register_module("self_attn", attn);
    layer->register_module("mlp", mlp);
    layer->register_module("input_layernorm", std::make_shared<RMSNorm>(P, d.hidden, d.eps, dt, dev));
    layer->register_module("post_attention_layernorm", std::make_shared<RMSNorm>(P, d.hidden, d.eps, dt, dev));
    layers->push_back(layer);
  }
  register_module("layers", layers);
  register_module("norm", std::make_shared<RMSNorm>(P, d.hidden, d.eps, dt, dev));
  register_module("rotary_emb", container(P + "RotaryEmbedding"));
}

Tensor LlamaModel::forward(const ModelInputs& in) {
  const std::string name = type_name();
  Prepared p = prepare_inputs(name.c_str(), in, vocab_, max_pos_, false, 0);
  if (sliding_window_ && p.past + p.T > *sliding_window_)
    fail("[", name, "] sequence of ", p.past + p.T, " positions is longer than the sliding_window (",
         *sliding_window_, "): sliding-window attention is not supported");
  Tensor x = child("embed_tokens")(p.ids);
  auto [cos, sin] = rotary_cos_sin(p.positions, head_dim_, rope_theta_, x.dtype());
  size_t li = 0;
  for (const auto& [lname, layer] : child("layers").children()) {
    // captures by value: a checkpointed block runs again in backward, after forward returned
    auto block = [this, layer = layer.get(), cos = cos, sin = sin, mask = p.mask, cache = in.cache,
                  li](const Tensor& x_in) {
      Module& attn = layer->child("self_attn");
      Tensor h = layer->child("input_layernorm")(x_in);
      Tensor q = rotary_embedding(split_heads(attn.child("q_proj")(h), heads_, head_dim_), cos, sin);
      Tensor k = rotary_embedding(split_heads(attn.child("k_proj")(h), kv_heads_, head_dim_), cos, sin);
      Tensor v = split_heads(attn.child("v_proj")(h), kv_heads_, head_dim_);
      if (kv_round_ != DType::float32 && kv_round_ != x_in.dtype()) {
        // llama.cpp's KV cache holds keys and values in float16 and its flash attention rounds
        // the queries to it too (differentiable: gradients pass straight through the rounding)
        const DType t = x_in.dtype();
        q = q.to(kv_round_).to(t), k = k.to(kv_round_).to(t), v = v.to(kv_round_).to(t);
      }
      if (cache) std::tie(k, v) = cache->append(li, k, v);
      Tensor ctx = merge_heads(scaled_dot_product_attention(q, k, v, mask, true));
      Tensor x1 = add(x_in, attn.child("o_proj")(ctx));
      Module& mlp = layer->child("mlp");
      Tensor h2 = layer->child("post_attention_layernorm")(x1);
      Tensor m = mlp.child("down_proj")(mul(mlp.child("act_fn")(mlp.child("gate_proj")(h2)), mlp.child("up_proj")(h2)));
      return add(x1, m);
    };
    if (gradient_checkpointing_ && is_grad_enabled() && !in.cache) {
      std::vector<Tensor> trainable;
      for (const auto& [pn, t] : layer->named_parameters())
        if (t.requires_grad()) trainable.push_back(t);
      x = autograd::checkpoint(block, x, trainable);
    } else {
      x = block(x);
    }
    ++li;
  }
  if (in.cache) in.cache->length += p.T;
  return child("norm")(x);
}

void LlamaModel::set_ggml_numerics(bool on, DType kv_round) {
  if (kv_round != DType::float32 && kv_round != DType::float16 && kv_round != DType::bfloat16)
    fail("[", type_name(), "] KV-cache precision ", dtype_name(kv_round), " is not float32, float16 or bfloat16");
  for (const auto& [n, m] : named_modules())
    if (auto* norm = dynamic_cast<RMSNorm*>(m.get())) norm->ggml_rstd_ = on;
  kv_round_ = on ? kv_round : DType::float32;
}

LlamaForCausalLM::LlamaForCausalLM(const ordered_json& config, DType dt, Device dev)
    : PreTrainedModel(LlamaModel::family_prefix(config.value("model_type", std::string("llama"))) + "ForCausalLM",
                      config) {
  register_module("model", std::make_shared<LlamaModel>(config, dt, dev));
  const int64_t hidden = cfg_int(config, "hidden_size"), vocab = cfg_int(config, "vocab_size");
  const bool tie = cfg_bool(config, "tie_word_embeddings", false);
  register_module("lm_head", std::make_shared<Linear>(hidden, vocab, false, nullptr, dt, tie ? Device::meta : dev));
  if (tie) tie_weights();
}

LlamaModel& LlamaForCausalLM::model() const {
  auto* m = dynamic_cast<LlamaModel*>(&child("model"));
  if (!m) fail("[", type_name(), "] child 'model' is not a LlamaModel");
  return *m;
}

void LlamaForCausalLM::tie_weights() {
  Module& head = child("lm_head");
  head.remove_parameter("weight");
  head.register_parameter("weight", model().child("embed_tokens").param("weight"));
}

Tensor LlamaForCausalLM::forward(const ModelInputs& in) { return child("lm_head")(forward_head_inputs(in)); }
Tensor LlamaForCausalLM::forward_head_inputs(const ModelInputs& in) { return logit_rows(model().forward(in), in); }
int64_t LlamaForCausalLM::num_layers() const { return model().num_layers(); }
int64_t LlamaForCausalLM::max_positions() const { return model().max_positions(); }

}  // namespace peft::nn
