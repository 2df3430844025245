#include "nn/layers.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::nn {

std::string py_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-tripping digits, then Python's repr layout: fixed notation
  // for decimal exponents in [-4, 16), scientific otherwise.
  char buf[64];
  int prec = 1;
  for (; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string e(buf);
  size_t epos = e.find('e');
  int exp10 = std::atoi(e.c_str() + epos + 1);
  if (exp10 >= -4 && exp10 < 16) {
    int decimals = std::max(0, prec - 1 - exp10);
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    std::string s(buf);
    if (s.find('.') == std::string::npos) s += ".0";
    return s;
  }
  // "1e-05", "1.5e+16" (C already writes at least two exponent digits, like Python)
  return e;
}

namespace {
std::string bool_str(bool b) { return b ? "True" : "False"; }

Generator& gen_or_default(Generator* g) { return g ? *g : default_generator(); }
}  // namespace

// ---------------------------------------------------------------------------
// Linear

Linear::Linear(int64_t in, int64_t out, bool bias, Generator* gen, DType dt, Device dev)
    : Module("Linear"), in_features(in), out_features(out) {
  if (in < 0 || out < 0)
    fail("[Linear] in_features and out_features must be >= 0, got in_features=", in,
         ", out_features=", out);
  if (!is_floating(dt)) fail("[Linear] dtype must be floating, got ", dtype_name(dt));
  Tensor w = empty({out, in}, dt, dev);
  // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound = gain*sqrt(3/fan_in) = 1/sqrt(fan_in)
  double bound = in > 0 ? 1.0 / std::sqrt(double(in)) : 0.0;
  if (dev != Device::meta && w.numel() > 0) w.uniform_(-bound, bound, gen_or_default(gen));
  register_parameter("weight", w);
  if (bias) {
    Tensor b = empty({out}, dt, dev);
    if (dev != Device::meta && b.numel() > 0) {
      if (in > 0)
        b.uniform_(-bound, bound, gen_or_default(gen));
      else
        b.zero_();
    }
    register_parameter("bias", b);
  }
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight(), bias()); }

std::string Linear::extra_repr() const {
  return "in_features=" + std::to_string(in_features) + ", out_features=" + std::to_string(out_features) +
         ", bias=" + bool_str(has_bias());
}

std::shared_ptr<Module> Linear::clone() const {
  auto m = std::make_shared<Linear>(in_features, out_features, has_bias(), nullptr, weight().dtype(),
                                    Device::meta);
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
// Embedding

Embedding::Embedding(int64_t num, int64_t dim, std::optional<int64_t> pad, Generator* gen, DType dt,
                     Device dev)
    : Module("Embedding"), num_embeddings(num), embedding_dim(dim), padding_idx(pad) {
  if (num < 0 || dim < 0)
    fail("[Embedding] num_embeddings and embedding_dim must be >= 0, got ", num, ", ", dim);
  if (!is_floating(dt)) fail("[Embedding] dtype must be floating, got ", dtype_name(dt));
  if (padding_idx) {
    int64_t p = *padding_idx;
    if (p >= num || p < -num)
      fail("[Embedding] padding_idx ", p, " must be within num_embeddings (", num, ")");
    if (p < 0) padding_idx = p + num;
  }
  Tensor w = empty({num, dim}, dt, dev);
  if (dev != Device::meta) {
    if (w.numel() > 0) w.normal_(0.0, 1.0, gen_or_default(gen));
    if (padding_idx) w.select(0, *padding_idx).zero_();
  }
  register_parameter("weight", w);
}

Tensor Embedding::forward(const Tensor& ids) { return embedding(ids, weight(), padding_idx); }

std::string Embedding::extra_repr() const {
  std::string s = std::to_string(num_embeddings) + ", " + std::to_string(embedding_dim);
  if (padding_idx) s += ", padding_idx=" + std::to_string(*padding_idx);
  return s;
}

std::shared_ptr<Module> Embedding::clone() const {
  auto m = std::make_shared<Embedding>(num_embeddings, embedding_dim, padding_idx, nullptr,
                                       weight().dtype(), Device::meta);
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
// Dropout

Dropout::Dropout(double p_, std::shared_ptr<Generator> g) : Module("Dropout"), p(p_), gen(std::move(g)) {
  if (!(p >= 0 && p <= 1))
    fail("[Dropout] dropout probability has to be between 0 and 1, but got ", p);
}

Tensor Dropout::forward(const Tensor& x) { return dropout(x, p, training_, gen ? *gen : default_generator()); }

std::string Dropout::extra_repr() const { return "p=" + py_float_repr(p) + ", inplace=False"; }

std::shared_ptr<Module> Dropout::clone() const {
  auto m = std::make_shared<Dropout>(p, gen);
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
// activations

Tensor ReLU::forward(const Tensor& x) { return relu(x); }
Tensor GELU::forward(const Tensor& x) { return gelu(x); }
Tensor SiLU::forward(const Tensor& x) { return silu(x); }
Tensor Tanh::forward(const Tensor& x) { return tanh(x); }

// ---------------------------------------------------------------------------
// LayerNorm

LayerNorm::LayerNorm(Shape ns, double eps_, bool affine, DType dt, Device dev)
    : Module("LayerNorm"), normalized_shape(std::move(ns)), eps(eps_), elementwise_affine(affine) {
  if (normalized_shape.empty()) fail("[LayerNorm] normalized_shape must not be empty");
  for (int64_t s : normalized_shape)
    if (s < 0) fail("[LayerNorm] negative size in normalized_shape ", shape_str(normalized_shape));
  if (affine) {
    register_parameter("weight", ones(normalized_shape, dt, dev));
    register_parameter("bias", zeros(normalized_shape, dt, dev));
  }
}

Tensor LayerNorm::forward(const Tensor& x) {
  Tensor w = elementwise_affine ? param("weight") : Tensor();
  Tensor b = elementwise_affine ? param("bias") : Tensor();
  return layer_norm(x, normalized_shape, w, b, eps);
}

std::string LayerNorm::extra_repr() const {
  std::string t = "(";
  for (size_t i = 0; i < normalized_shape.size(); ++i) {
    if (i) t += ", ";
    t += std::to_string(normalized_shape[i]);
  }
  if (normalized_shape.size() == 1) t += ",";
  t += ")";
  return t + ", eps=" + py_float_repr(eps) + ", elementwise_affine=" + bool_str(elementwise_affine);
}

std::shared_ptr<Module> LayerNorm::clone() const {
  DType dt = elementwise_affine ? param("weight").dtype() : DType::float32;
  auto m = std::make_shared<LayerNorm>(normalized_shape, eps, elementwise_affine, dt, Device::meta);
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
// containers

void Sequential::push_back(std::shared_ptr<Module> m) { register_child(std::to_string(size()), std::move(m)); }

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (const auto& kv : children()) h = kv.second->forward(h);
  return h;
}

std::shared_ptr<Module> Sequential::clone() const {
  auto m = std::make_shared<Sequential>();
  copy_state_to(*m);
  return m;
}

void ModuleList::push_back(std::shared_ptr<Module> m) { register_child(std::to_string(size()), std::move(m)); }

Module& ModuleList::operator[](size_t i) const {
  if (i >= size()) fail("[ModuleList] index ", i, " is out of range (size ", size(), ")");
  return *children()[i].second;
}

std::shared_ptr<Module> ModuleList::clone() const {
  auto m = std::make_shared<ModuleList>();
  copy_state_to(*m);
  return m;
}

// torch.nn.ModuleList.__repr__: runs of identical entries fold into "(0-1): 2 x Block(".
std::string ModuleList::repr() const {
  const auto& ch = children();
  if (ch.empty()) return type_name() + "()";
  std::vector<std::string> reprs;
  for (const auto& kv : ch) reprs.push_back(kv.second->repr());
  auto indent = [](const std::string& s) {
    std::string out;
    for (char c : s) {
      out += c;
      if (c == '\n') out += "  ";
    }
    return out;
  };
  std::string s = type_name() + "(";
  std::string body;
  size_t i = 0;
  while (i < reprs.size()) {
    size_t j = i;
    while (j + 1 < reprs.size() && reprs[j + 1] == reprs[i]) ++j;
    std::string local = "(";
    local += std::to_string(i);
    if (i != j) {
      local += '-';
      local += std::to_string(j);
    }
    local += "): ";
    if (i != j) {
      local += std::to_string(j - i + 1);
      local += " x ";
    }
    local += reprs[i];
    body += (i == 0 ? "" : "\n  ") + indent(local);
    i = j + 1;
  }
  return s + "\n  " + body + "\n)";
}

std::vector<std::string> ModuleDict::keys() const {
  std::vector<std::string> k;
  for (const auto& kv : children()) k.push_back(kv.first);
  return k;
}

std::shared_ptr<Module> ModuleDict::clone() const {
  auto m = std::make_shared<ModuleDict>();
  copy_state_to(*m);
  return m;
}

std::vector<std::string> ParameterDict::keys() const {
  std::vector<std::string> k;
  for (const auto& kv : own_parameters()) k.push_back(kv.first);
  return k;
}

std::string torch_typename(const Tensor& t) {
  const char* base = "FloatTensor";
  switch (t.dtype()) {
    case DType::float32: base = "FloatTensor"; break;
    case DType::float64: base = "DoubleTensor"; break;
    case DType::bfloat16: base = "BFloat16Tensor"; break;
    case DType::float16: base = "HalfTensor"; break;
    case DType::int64: base = "LongTensor"; break;
    case DType::bool_: base = "BoolTensor"; break;
    default: base = "ByteTensor"; break;  // GGML blocks: raw bytes, as bitsandbytes' packed weights
  }
  std::string dev = t.device() == Device::cuda ? "cuda." : t.device() == Device::meta ? "meta." : "";
  return "torch." + dev + base;
}

// torch.nn.ParameterDict.extra_repr
std::string ParameterDict::extra_repr() const {
  std::string out;
  bool first = true;
  for (const auto& [k, p] : own_parameters()) {
    std::string size;
    for (int64_t d = 0; d < p.dim(); ++d) {
      if (d) size += 'x';
      size += std::to_string(p.size(d));
    }
    std::string dev = p.device() == Device::cuda ? " (cuda:0)" : "";
    if (!first) out += "\n";
    first = false;
    out += "  (" + k + "): Parameter containing: [" + torch_typename(p) + " of size " + size + dev + "]";
  }
  return out;
}

std::shared_ptr<Module> ParameterDict::clone() const {
  auto m = std::make_shared<ParameterDict>();
  copy_state_to(*m);
  return m;
}

}  // namespace peft::nn
