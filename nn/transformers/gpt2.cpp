// GPT2Model / GPT2LMHeadModel as transformers 5 (models/gpt2/modeling_gpt2.py): Conv1D
// projections (weights [in, out]), learned positions, pre-LayerNorm blocks, tied lm_head.
#include <cmath>

#include "nn/transformers/models.h"
#include "runtime/ops.h"

namespace peft::nn {

using nlohmann::ordered_json;
using namespace hf_detail;

namespace {

ModulePtr container(const char* type) { return std::make_shared<Module>(type); }

struct Gpt2Dims {
  int64_t embd, heads, inner, layers, vocab, positions;
  double eps, resid, embd_drop, attn_drop;
  bool scale_weights, scale_by_layer;
  std::string act;
};

Gpt2Dims read_gpt2_config(const ordered_json& c) {
  Gpt2Dims d;
  d.embd = cfg_int(c, "n_embd");
  d.heads = cfg_int(c, "n_head");
  d.layers = cfg_int(c, "n_layer");
  d.vocab = cfg_int(c, "vocab_size");
  d.positions = cfg_int(c, "n_positions", 1024);
  d.inner = cfg_int(c, "n_inner", 4 * d.embd);
  d.eps = cfg_float(c, "layer_norm_epsilon", 1e-5);
  d.resid = cfg_float(c, "resid_pdrop", 0.1);
  d.embd_drop = cfg_float(c, "embd_pdrop", 0.1);
  d.attn_drop = cfg_float(c, "attn_pdrop", 0.1);
  d.act = cfg_str(c, "activation_function", "gelu_new");
  d.scale_weights = cfg_bool(c, "scale_attn_weights", true);
  d.scale_by_layer = cfg_bool(c, "scale_attn_by_inverse_layer_idx", false);
  for (auto [k, v] : {std::pair{"n_embd", d.embd}, {"n_head", d.heads}, {"vocab_size", d.vocab},
                      {"n_positions", d.positions}, {"n_inner", d.inner}})
    if (v <= 0) fail("config.json: ", k, " must be positive, got ", v);
  if (d.layers < 0) fail("config.json: n_layer must be >= 0, got ", d.layers);
  if (d.embd % d.heads) fail("config.json: n_embd (", d.embd, ") is not a multiple of n_head (", d.heads, ")");
  if (cfg_bool(c, "add_cross_attention", false))
    fail("config.json: add_cross_attention true is not supported for GPT-2");
  return d;
}

}  // namespace

GPT2Model::GPT2Model(const ordered_json& config, DType dt, Device dev) : PreTrainedModel("GPT2Model", config) {
  const Gpt2Dims d = read_gpt2_config(config);
  vocab_ = d.vocab, layers_ = d.layers, max_pos_ = d.positions, embd_ = d.embd, heads_ = d.heads;
  scale_weights_ = d.scale_weights, scale_by_layer_ = d.scale_by_layer;
  register_module("wte", std::make_shared<Embedding>(d.vocab, d.embd, std::nullopt, nullptr, dt, dev));
  register_module("wpe", std::make_shared<Embedding>(d.positions, d.embd, std::nullopt, nullptr, dt, dev));
  register_module("drop", std::make_shared<Dropout>(d.embd_drop));
  auto h = std::make_shared<ModuleList>();
  for (int64_t i = 0; i < d.layers; ++i) {
    auto block = container("GPT2Block");
    block->register_module("ln_1", std::make_shared<LayerNorm>(Shape{d.embd}, d.eps, true, dt, dev));
    auto attn = container("GPT2Attention");
    attn->register_module("c_attn", std::make_shared<Conv1D>(3 * d.embd, d.embd, dt, dev));
    attn->register_module("c_proj", std::make_shared<Conv1D>(d.embd, d.embd, dt, dev));
    attn->register_module("attn_dropout", std::make_shared<Dropout>(d.attn_drop));
    attn->register_module("resid_dropout", std::make_shared<Dropout>(d.resid));
    block->register_module("attn", attn);
    block->register_module("ln_2", std::make_shared<LayerNorm>(Shape{d.embd}, d.eps, true, dt, dev));
    auto mlp = container("GPT2MLP");
    mlp->register_module("c_fc", std::make_shared<Conv1D>(d.inner, d.embd, dt, dev));
    mlp->register_module("c_proj", std::make_shared<Conv1D>(d.embd, d.inner, dt, dev));
    mlp->register_module("act", make_activation(d.act, "activation_function"));
    mlp->register_module("dropout", std::make_shared<Dropout>(d.resid));
    block->register_module("mlp", mlp);
    h->push_back(block);
  }
  register_module("h", h);
  register_module("ln_f", std::make_shared<LayerNorm>(Shape{d.embd}, d.eps, true, dt, dev));
}

Tensor GPT2Model::forward(const ModelInputs& in) {
  Prepared p = prepare_inputs("GPT2Model", in, vocab_, max_pos_, false, 0);
  Tensor x = child("drop")(add(child("wte")(p.ids), child("wpe")(p.positions)));
  const int64_t hd = embd_ / heads_;
  size_t li = 0;
  for (const auto& [name, block] : child("h").children()) {
    Module& attn = block->child("attn");
    Tensor qkv = attn.child("c_attn")(block->child("ln_1")(x));  // [B, T, 3E]
    Tensor q = split_heads(qkv.narrow(2, 0, embd_), heads_, hd);
    Tensor k = split_heads(qkv.narrow(2, embd_, embd_), heads_, hd);
    Tensor v = split_heads(qkv.narrow(2, 2 * embd_, embd_), heads_, hd);
    if (in.cache) std::tie(k, v) = in.cache->append(li, k, v);
    double scale = scale_weights_ ? 1.0 / std::sqrt(double(hd)) : 1.0;
    if (scale_by_layer_) scale /= double(li + 1);
    Tensor ctx = merge_heads(scaled_dot_product_attention(q, k, v, p.mask, true, scale));
    x = add(x, attn.child("resid_dropout")(attn.child("c_proj")(ctx)));
    Module& mlp = block->child("mlp");
    Tensor m = mlp.child("c_proj")(mlp.child("act")(mlp.child("c_fc")(block->child("ln_2")(x))));
    x = add(x, mlp.child("dropout")(m));
    ++li;
  }
  if (in.cache) in.cache->length += p.T;
  return child("ln_f")(x);
}

GPT2LMHeadModel::GPT2LMHeadModel(const ordered_json& config, DType dt, Device dev)
    : PreTrainedModel("GPT2LMHeadModel", config) {
  auto tr = std::make_shared<GPT2Model>(config, dt, dev);
  register_module("transformer", tr);
  const int64_t embd = cfg_int(config, "n_embd"), vocab = cfg_int(config, "vocab_size");
  const bool tie = cfg_bool(config, "tie_word_embeddings", true);
  register_module("lm_head", std::make_shared<Linear>(embd, vocab, false, nullptr, dt, tie ? Device::meta : dev));
  if (tie) tie_weights();
}

GPT2Model& GPT2LMHeadModel::transformer() const {
  auto* t = dynamic_cast<GPT2Model*>(&child("transformer"));
  if (!t) fail("[GPT2LMHeadModel] child 'transformer' is not a GPT2Model");
  return *t;
}

void GPT2LMHeadModel::tie_weights() {
  Module& head = child("lm_head");
  head.remove_parameter("weight");
  head.register_parameter("weight", transformer().child("wte").param("weight"));
}

Tensor GPT2LMHeadModel::forward(const ModelInputs& in) { return child("lm_head")(forward_head_inputs(in)); }
Tensor GPT2LMHeadModel::forward_head_inputs(const ModelInputs& in) {
  return hf_detail::logit_rows(transformer().forward(in), in);
}
int64_t GPT2LMHeadModel::num_layers() const { return transformer().num_layers(); }
int64_t GPT2LMHeadModel::max_positions() const { return transformer().max_positions(); }

}  // namespace peft::nn
