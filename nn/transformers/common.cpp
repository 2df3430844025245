#include "nn/transformers/common.h"

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::nn {

using nlohmann::ordered_json;

// ---------------------------------------------------------------------------- Conv1D

Conv1D::Conv1D(int64_t nf, int64_t nx, DType dt, Device dev) : Linear(nx, nf, true, nullptr, dt, Device::meta) {
  set_type_name("Conv1D");
  remove_parameter("weight");
  remove_parameter("bias");
  Tensor w = empty({nx, nf}, dt, dev), b = empty({nf}, dt, dev);
  if (dev != Device::meta) {
    if (w.numel()) w.normal_(0.0, 0.02, default_generator());  // transformers' Conv1D init
    b.zero_();
  }
  register_parameter("weight", w);
  register_parameter("bias", b);
}

Tensor Conv1D::forward(const Tensor& x) {
  // x·W + b: linear() with the [in, out] weight read transposed in place (no copy)
  return linear(x, weight().t(), bias());
}

std::string Conv1D::extra_repr() const {
  return "nf=" + std::to_string(out_features) + ", nx=" + std::to_string(in_features);
}

std::shared_ptr<Module> Conv1D::clone() const {
  auto m = std::make_shared<Conv1D>(out_features, in_features, weight().dtype(), Device::meta);
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------- activations

namespace {

class NamedActivation : public Module {
 public:
  enum class Kind { gelu, gelu_tanh, silu, relu, tanh };
  NamedActivation(std::string name, Kind k) : Module(std::move(name)), kind_(k) {}
  Tensor forward(const Tensor& x) override {
    switch (kind_) {
      case Kind::gelu: return gelu(x);
      case Kind::gelu_tanh: return gelu_tanh(x);
      case Kind::silu: return silu(x);
      case Kind::relu: return relu(x);
      case Kind::tanh: return tanh(x);
    }
    return x;
  }
  std::shared_ptr<Module> clone() const override { return std::make_shared<NamedActivation>(type_name(), kind_); }

 private:
  Kind kind_;
};

}  // namespace

ModulePtr make_activation(const std::string& act, const std::string& field) {
  using K = NamedActivation::Kind;
  if (act == "gelu") return std::make_shared<NamedActivation>("GELUActivation", K::gelu);
  if (act == "gelu_new") return std::make_shared<NamedActivation>("NewGELUActivation", K::gelu_tanh);
  if (act == "gelu_pytorch_tanh") return std::make_shared<NamedActivation>("GELUTanh", K::gelu_tanh);
  if (act == "silu") return std::make_shared<NamedActivation>("SiLUActivation", K::silu);
  if (act == "swish") return std::make_shared<NamedActivation>("SiLU", K::silu);
  if (act == "relu") return std::make_shared<NamedActivation>("ReLU", K::relu);
  if (act == "tanh") return std::make_shared<NamedActivation>("Tanh", K::tanh);
  fail("config.json: ", field, " '", act,
       "' is not supported (supported: gelu, gelu_new, gelu_pytorch_tanh, silu, swish, relu, tanh)");
}

// ---------------------------------------------------------------------------- KV cache

std::pair<Tensor, Tensor> KVCache::append(size_t i, const Tensor& k_new, const Tensor& v_new) {
  NoGradGuard ng;
  if (layers.size() <= i) layers.resize(i + 1);
  Layer& L = layers[i];
  const int64_t B = k_new.size(0), H = k_new.size(1), T = k_new.size(2), D = k_new.size(3);
  const int64_t need = length + T;
  if (L.k.defined() && (L.k.size(0) != B || L.k.size(1) != H || L.k.size(3) != D))
    fail("[KVCache] layer ", i, " holds keys ", L.k.desc(), " but the new keys are ", k_new.desc(),
         " (batch or heads changed: reset the cache)");
  if (!L.k.defined() || L.k.size(2) < need) {
    int64_t cap = std::max<int64_t>(need, L.k.defined() ? 2 * L.k.size(2) : std::max<int64_t>(need, reserve > 0 ? reserve : 64));
    Tensor k = empty({B, H, cap, D}, k_new.dtype(), k_new.device());
    Tensor v = empty({B, H, cap, D}, v_new.dtype(), v_new.device());
    if (L.k.defined() && length > 0) {
      k.narrow(2, 0, length).copy_(L.k.narrow(2, 0, length));
      v.narrow(2, 0, length).copy_(L.v.narrow(2, 0, length));
    }
    L.k = k, L.v = v;
  }
  L.k.narrow(2, length, T).copy_(k_new.detach());
  L.v.narrow(2, length, T).copy_(v_new.detach());
  return {L.k.narrow(2, 0, need), L.v.narrow(2, 0, need)};
}

// ---------------------------------------------------------------------------- PreTrainedModel

PreTrainedModel::PreTrainedModel(std::string type_name, ordered_json config)
    : Module(std::move(type_name)), config_(std::move(config)) {}

Tensor PreTrainedModel::forward_head_inputs(const ModelInputs&) {
  fail("[", type_name(), "] has no language-model head");
}

void PreTrainedModel::set_gradient_checkpointing(bool on) {
  for (const auto& [name, m] : named_modules())
    if (auto* p = dynamic_cast<PreTrainedModel*>(m.get())) p->gradient_checkpointing_ = on;
  gradient_checkpointing_ = on;
}

std::string PreTrainedModel::model_type() const {
  auto it = config_.find("model_type");
  return it != config_.end() && it->is_string() ? it->get<std::string>() : std::string("custom");
}

Tensor PreTrainedModel::forward(const Tensor& input_ids) {
  ModelInputs in;
  in.input_ids = input_ids;
  return forward(in);
}

// ---------------------------------------------------------------------------- pooling

Tensor mean_pooling(const Tensor& hidden, const Tensor& attention_mask) {
  if (!hidden.defined() || hidden.dim() != 3 || !is_floating(hidden.dtype()))
    fail("[mean_pooling] hidden states must be floating [batch, seq, hidden], got ",
         hidden.defined() ? hidden.desc() : std::string("undefined"));
  if (!attention_mask.defined()) return mean(hidden, {1});
  if (attention_mask.dim() != 2 || attention_mask.size(0) != hidden.size(0) ||
      attention_mask.size(1) != hidden.size(1))
    fail("[mean_pooling] attention_mask ", attention_mask.desc(), " does not fit hidden states ", hidden.desc());
  Tensor m = attention_mask.to(hidden.dtype()).unsqueeze(2);  // [B, T, 1]
  Tensor total = sum(mul(hidden, m), {1});
  Tensor count = clamp(sum(m, {1}), 1e-9, INFINITY);
  return div(total, count);
}

Tensor l2_normalize(const Tensor& x) {
  if (!x.defined() || x.dim() < 1 || !is_floating(x.dtype()))
    fail("[l2_normalize] needs a floating tensor with at least one dim, got ", x.defined() ? x.desc() : "undefined");
  return div(x, clamp(norm(x, {-1}, true), 1e-12, INFINITY));
}

namespace hf_detail {

Tensor keep_last_positions(const Tensor& hidden, int64_t keep) {
  if (keep < 0) fail("logits_to_keep must be >= 0, got ", keep);
  const int64_t T = hidden.size(1);
  return keep == 0 || keep >= T ? hidden : hidden.narrow(1, T - keep, keep);
}

Tensor logit_rows(const Tensor& hidden, const ModelInputs& in) {
  if (!in.logits_index.defined()) return keep_last_positions(hidden, in.logits_to_keep);
  const Tensor& idx = in.logits_index;
  if (in.logits_to_keep != 0) fail("logits_index and logits_to_keep are exclusive; set one");
  if (idx.dtype() != DType::int64 || idx.dim() != 1)
    fail("logits_index must be int64 [N] (rows of the flattened [B * T] positions), got ", idx.desc());
  const int64_t B = hidden.size(0), T = hidden.size(1), H = hidden.size(2);
  return index_select(hidden.reshape({B * T, H}), 0, idx.to(hidden.device()));
}

namespace {
const ordered_json* field(const ordered_json& c, const char* key) {
  auto it = c.find(key);
  return it == c.end() || it->is_null() ? nullptr : &*it;
}
}  // namespace

int64_t cfg_int(const ordered_json& c, const char* key, std::optional<int64_t> def) {
  const ordered_json* f = field(c, key);
  if (!f) {
    if (def) return *def;
    fail("config.json: required field '", key, "' is missing");
  }
  if (!f->is_number_integer()) fail("config.json: field '", key, "' must be an integer, got ", f->dump());
  return f->get<int64_t>();
}

double cfg_float(const ordered_json& c, const char* key, std::optional<double> def) {
  const ordered_json* f = field(c, key);
  if (!f) {
    if (def) return *def;
    fail("config.json: required field '", key, "' is missing");
  }
  if (!f->is_number()) fail("config.json: field '", key, "' must be a number, got ", f->dump());
  return f->get<double>();
}

bool cfg_bool(const ordered_json& c, const char* key, std::optional<bool> def) {
  const ordered_json* f = field(c, key);
  if (!f) {
    if (def) return *def;
    fail("config.json: required field '", key, "' is missing");
  }
  if (!f->is_boolean()) fail("config.json: field '", key, "' must be true or false, got ", f->dump());
  return f->get<bool>();
}

std::string cfg_str(const ordered_json& c, const char* key, std::optional<std::string> def) {
  const ordered_json* f = field(c, key);
  if (!f) {
    if (def) return *def;
    fail("config.json: required field '", key, "' is missing");
  }
  if (!f->is_string()) fail("config.json: field '", key, "' must be a string, got ", f->dump());
  return f->get<std::string>();
}

Prepared prepare_inputs(const char* model, const ModelInputs& in, int64_t vocab, int64_t max_positions,
                        bool needs_token_types, int64_t type_vocab) {
  Prepared p;
  const Tensor& ids = in.input_ids;
  if (!ids.defined()) fail("[", model, "] input_ids is required");
  if (ids.dtype() != DType::int64 || ids.dim() != 2)
    fail("[", model, "] input_ids must be int64 [batch, seq], got ", ids.desc());
  p.B = ids.size(0), p.T = ids.size(1);
  p.past = in.cache ? in.cache->length : 0;
  if (p.T == 0) fail("[", model, "] input_ids is empty (", ids.desc(), ")");
  if (!ids.is_meta()) {
    std::vector<int64_t> v = ids.to_vector<int64_t>();
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] < 0 || v[i] >= vocab)
        fail("[", model, "] input id ", v[i], " at [", int64_t(i) / p.T, ", ", int64_t(i) % p.T,
             "] is outside the vocabulary (vocab_size ", vocab, ")");
  }
  p.ids = ids;
  const int64_t total = p.past + p.T;
  if (in.attention_mask.defined()) {
    const Tensor& m = in.attention_mask;
    if ((m.dtype() != DType::int64 && m.dtype() != DType::bool_) || m.dim() != 2 || m.size(0) != p.B ||
        m.size(1) != total)
      fail("[", model, "] attention_mask must be int64 or bool [", p.B, ", ", total, "] (", p.past,
           " cached + ", p.T, " new positions), got ", m.desc());
    p.mask = m;
  }
  if (in.position_ids.defined()) {
    const Tensor& pos = in.position_ids;
    if (pos.dtype() != DType::int64 || pos.dim() != 2 || pos.size(0) != p.B || pos.size(1) != p.T)
      fail("[", model, "] position_ids must be int64 [", p.B, ", ", p.T, "], got ", pos.desc());
    if (!pos.is_meta()) {
      for (int64_t v : pos.to_vector<int64_t>())
        if (v < 0 || v >= max_positions)
          fail("[", model, "] position id ", v, " is outside max_position_embeddings (", max_positions, ")");
    }
    p.positions = pos;
  } else {
    if (total > max_positions)
      fail("[", model, "] sequence of ", total, " positions is longer than max_position_embeddings (",
           max_positions, ")");
    p.positions = arange(double(p.past), double(total), 1.0, DType::int64, ids.device()).unsqueeze(0).expand({p.B, p.T});
  }
  if (needs_token_types) {
    if (in.token_type_ids.defined()) {
      const Tensor& tt = in.token_type_ids;
      if (tt.dtype() != DType::int64 || tt.shape() != ids.shape())
        fail("[", model, "] token_type_ids must be int64 ", shape_str(ids.shape()), ", got ", tt.desc());
      if (!tt.is_meta())
        for (int64_t v : tt.to_vector<int64_t>())
          if (v < 0 || v >= type_vocab)
            fail("[", model, "] token type id ", v, " is outside type_vocab_size (", type_vocab, ")");
      p.token_types = tt;
    } else {
      p.token_types = zeros({p.B, p.T}, DType::int64, ids.device());
    }
  }
  return p;
}

Tensor split_heads(const Tensor& x, int64_t heads, int64_t head_dim) {
  return x.reshape({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}

Tensor merge_heads(const Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

}  // namespace hf_detail
}  // namespace peft::nn
