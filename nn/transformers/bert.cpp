// BertModel as transformers 5 (models/bert/modeling_bert.py), absolute position embeddings,
// encoder only (no cross-attention).
#include <cmath>

#include "nn/transformers/models.h"
#include "runtime/ops.h"

namespace peft::nn {

using nlohmann::ordered_json;
using namespace hf_detail;

namespace {

ModulePtr container(const char* type) { return std::make_shared<Module>(type); }

struct BertDims {
  int64_t hidden, heads, head_dim, inter, layers, vocab, max_pos, type_vocab;
  std::optional<int64_t> pad;
  double eps, hidden_drop, attn_drop;
  std::string act;
};

BertDims read_bert_config(const ordered_json& c) {
  BertDims d;
  d.hidden = cfg_int(c, "hidden_size");
  d.heads = cfg_int(c, "num_attention_heads");
  d.inter = cfg_int(c, "intermediate_size");
  d.layers = cfg_int(c, "num_hidden_layers");
  d.vocab = cfg_int(c, "vocab_size");
  d.max_pos = cfg_int(c, "max_position_embeddings", 512);
  d.type_vocab = cfg_int(c, "type_vocab_size", 2);
  d.eps = cfg_float(c, "layer_norm_eps", 1e-12);
  d.hidden_drop = cfg_float(c, "hidden_dropout_prob", 0.1);
  d.attn_drop = cfg_float(c, "attention_probs_dropout_prob", 0.1);
  d.act = cfg_str(c, "hidden_act", "gelu");
  if (c.contains("pad_token_id") && !c["pad_token_id"].is_null()) d.pad = cfg_int(c, "pad_token_id");
  for (auto [k, v] : {std::pair{"hidden_size", d.hidden}, {"num_attention_heads", d.heads},
                      {"intermediate_size", d.inter}, {"vocab_size", d.vocab}, {"max_position_embeddings", d.max_pos},
                      {"type_vocab_size", d.type_vocab}})
    if (v <= 0) fail("config.json: ", k, " must be positive, got ", v);
  if (d.layers < 0) fail("config.json: num_hidden_layers must be >= 0, got ", d.layers);
  if (d.hidden % d.heads)
    fail("config.json: hidden_size (", d.hidden, ") is not a multiple of num_attention_heads (", d.heads, ")");
  d.head_dim = d.hidden / d.heads;
  if (d.pad && (*d.pad < 0 || *d.pad >= d.vocab))
    fail("config.json: pad_token_id ", *d.pad, " is outside vocab_size (", d.vocab, ")");
  const std::string pos = cfg_str(c, "position_embedding_type", "absolute");
  if (pos != "absolute")
    fail("config.json: position_embedding_type '", pos, "' is not supported (only 'absolute')");
  if (cfg_bool(c, "is_decoder", false)) fail("config.json: is_decoder true is not supported for BertModel");
  if (cfg_bool(c, "add_cross_attention", false))
    fail("config.json: add_cross_attention true is not supported for BertModel");
  for (double p : {d.hidden_drop, d.attn_drop})
    if (!(p >= 0 && p <= 1)) fail("config.json: dropout probabilities must be in [0, 1], got ", p);
  return d;
}

}  // namespace

BertModel::BertModel(const ordered_json& config, bool add_pooling_layer, DType dt, Device dev)
    : PreTrainedModel("BertModel", config) {
  const BertDims d = read_bert_config(config);
  vocab_ = d.vocab, layers_ = d.layers, max_pos_ = d.max_pos, type_vocab_ = d.type_vocab, heads_ = d.heads;
  auto emb = container("BertEmbeddings");
  emb->register_module("word_embeddings", std::make_shared<Embedding>(d.vocab, d.hidden, d.pad, nullptr, dt, dev));
  emb->register_module("position_embeddings", std::make_shared<Embedding>(d.max_pos, d.hidden, std::nullopt, nullptr, dt, dev));
  emb->register_module("token_type_embeddings",
                       std::make_shared<Embedding>(d.type_vocab, d.hidden, std::nullopt, nullptr, dt, dev));
  emb->register_module("LayerNorm", std::make_shared<LayerNorm>(Shape{d.hidden}, d.eps, true, dt, dev));
  emb->register_module("dropout", std::make_shared<Dropout>(d.hidden_drop));
  register_module("embeddings", emb);

  auto layers = std::make_shared<ModuleList>();
  for (int64_t i = 0; i < d.layers; ++i) {
    auto self = container("BertSelfAttention");
    for (const char* n : {"query", "key", "value"})
      self->register_module(n, std::make_shared<Linear>(d.hidden, d.hidden, true, nullptr, dt, dev));
    self->register_module("dropout", std::make_shared<Dropout>(d.attn_drop));
    auto self_out = container("BertSelfOutput");
    self_out->register_module("dense", std::make_shared<Linear>(d.hidden, d.hidden, true, nullptr, dt, dev));
    self_out->register_module("LayerNorm", std::make_shared<LayerNorm>(Shape{d.hidden}, d.eps, true, dt, dev));
    self_out->register_module("dropout", std::make_shared<Dropout>(d.hidden_drop));
    auto attn = container("BertAttention");
    attn->register_module("self", self);
    attn->register_module("output", self_out);
    auto inter = container("BertIntermediate");
    inter->register_module("dense", std::make_shared<Linear>(d.hidden, d.inter, true, nullptr, dt, dev));
    inter->register_module("intermediate_act_fn", make_activation(d.act));
    auto out = container("BertOutput");
    out->register_module("dense", std::make_shared<Linear>(d.inter, d.hidden, true, nullptr, dt, dev));
    out->register_module("LayerNorm", std::make_shared<LayerNorm>(Shape{d.hidden}, d.eps, true, dt, dev));
    out->register_module("dropout", std::make_shared<Dropout>(d.hidden_drop));
    auto layer = container("BertLayer");
    layer->register_module("attention", attn);
    layer->register_module("intermediate", inter);
    layer->register_module("output", out);
    layers->push_back(layer);
  }
  auto enc = container("BertEncoder");
  enc->register_module("layer", layers);
  register_module("encoder", enc);
  if (add_pooling_layer) {
    auto pooler = container("BertPooler");
    pooler->register_module("dense", std::make_shared<Linear>(d.hidden, d.hidden, true, nullptr, dt, dev));
    pooler->register_module("activation", std::make_shared<Tanh>());
    register_module("pooler", pooler);
  }
}

Tensor BertModel::forward(const ModelInputs& in) {
  if (in.cache) fail("[BertModel] is an encoder: it takes no KV cache");
  Prepared p = prepare_inputs("BertModel", in, vocab_, max_pos_, true, type_vocab_);
  Module& emb = child("embeddings");
  Tensor h = add(add(emb.child("word_embeddings")(p.ids), emb.child("token_type_embeddings")(p.token_types)),
                 emb.child("position_embeddings")(p.positions));
  const int64_t hidden = h.size(2), B = p.B, T = p.T;
  // skip_padding: the token-wise layers see only the real tokens, [N, hidden]; attention
  // gets them back in place in a zero-padded [B, T, hidden]
  Tensor keep;  // int64 [N]: flat indices of the real tokens
  if (in.skip_padding && p.mask.defined() && !p.mask.is_meta()) {
    std::vector<int64_t> m = p.mask.to(DType::int64).to_vector<int64_t>(), idx;
    for (size_t i = 0; i < m.size(); ++i)
      if (m[i] != 0) idx.push_back(int64_t(i));
    if (int64_t(idx.size()) < B * T) {
      keep = from_vector(idx, {int64_t(idx.size())}).to(h.device());
      h = index_select(h.reshape({B * T, hidden}), 0, keep);
    }
  }
  auto padded = [&](const Tensor& x) {  // [N, hidden] -> [B, T, hidden]
    if (!keep.defined()) return x;
    return index_add(zeros({B * T, x.size(-1)}, x.dtype(), x.device()), 0, keep, x).reshape({B, T, x.size(-1)});
  };
  auto unpadded = [&](const Tensor& x) {  // [B, T, hidden] -> [N, hidden]
    if (!keep.defined()) return x;
    return index_select(x.reshape({B * T, x.size(-1)}), 0, keep);
  };
  h = emb.child("dropout")(emb.child("LayerNorm")(h));
  Module& layers = child("encoder").child("layer");
  for (const auto& [name, layer] : layers.children()) {
    Module& attn = layer->child("attention");
    Module& self = attn.child("self");
    const int64_t heads = heads_, hd = hidden / heads;
    Tensor q = split_heads(padded(self.child("query")(h)), heads, hd);
    Tensor k = split_heads(padded(self.child("key")(h)), heads, hd);
    Tensor v = split_heads(padded(self.child("value")(h)), heads, hd);
    // attention-probability dropout is not applied (the fused kernel has none); hidden dropout is
    Tensor ctx = unpadded(merge_heads(scaled_dot_product_attention(q, k, v, p.mask, false)));
    Module& so = attn.child("output");
    Tensor a = so.child("LayerNorm")(add(so.child("dropout")(so.child("dense")(ctx)), h));
    Module& inter = layer->child("intermediate");
    Tensor m = inter.child("intermediate_act_fn")(inter.child("dense")(a));
    Module& out = layer->child("output");
    h = out.child("LayerNorm")(add(out.child("dropout")(out.child("dense")(m)), a));
  }
  return padded(h);
}

Tensor BertModel::pool(const Tensor& last_hidden_state) {
  if (!has_pooler()) fail("[BertModel] has no pooler (built with add_pooling_layer=false)");
  Module& pooler = child("pooler");
  return pooler.child("activation")(pooler.child("dense")(last_hidden_state.select(1, 0)));
}

}  // namespace peft::nn
