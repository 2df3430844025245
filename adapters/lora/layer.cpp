// LoRA layers. Forward (PEFT's tuners/lora/): y = base(x) + s·B(A(dropout(x))) per active
// adapter, computed as two thin matmuls (ΔW is never materialised).
// Merge (PEFT's tuners/lora/): W += s·B·A (DoRA: W = m/‖W+ΔW‖·(W+ΔW)); unmerge subtracts.
#include "adapters/lora/layer.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::lora {

namespace {

Tensor weight_of(const nn::Module& m) { return m.param("weight"); }

Tensor maybe_t(const Tensor& t, bool transpose) { return transpose ? t.t() : t; }

}  // namespace

// --------------------------------------------------------------- DoRA --

DoraLinearLayer::DoraLinearLayer(bool fifo) : nn::Module("lora.dora.DoraLinearLayer"), fan_in_fan_out(fifo) {}

Tensor DoraLinearLayer::get_weight_norm(const Tensor& weight, const Tensor& lora_weight, double scaling) const {
  Tensor w = maybe_t(weight, fan_in_fan_out);
  w = add(w, mul(lora_weight, scaling));
  return norm(w, {1}).to(w.dtype());
}

void DoraLinearLayer::init_magnitude(const Tensor& base_weight, const Tensor& lora_A, const Tensor& lora_B,
                                     double scaling, bool on_meta) {
  int64_t out = fan_in_fan_out ? base_weight.size(1) : base_weight.size(0);
  if (has_param("weight")) remove_parameter("weight");
  if (on_meta || base_weight.is_meta() || lora_A.is_meta() || lora_B.is_meta()) {
    register_parameter("weight", empty({out}, base_weight.dtype(), Device::meta), true);
    return;
  }
  NoGradGuard ng;
  Tensor A = lora_A, B = lora_B;
  bool fp16 = A.dtype() == DType::float16;
  if (fp16) {
    A = A.to(DType::float32);
    B = B.to(DType::float32);
  }
  Tensor lw = matmul(B, A);
  if (fp16) lw = lw.to(DType::float16);
  Tensor n = get_weight_norm(base_weight, lw, scaling).contiguous().clone();
  register_parameter("weight", n, true);
}

std::shared_ptr<nn::Module> DoraLinearLayer::clone() const {
  auto m = std::make_shared<DoraLinearLayer>(fan_in_fan_out);
  if (has_param("weight")) {
    const Tensor& w = param("weight");
    m->register_parameter("weight", w.is_meta() ? w : w.detach().clone(), w.requires_grad());
  }
  return m;
}

// ------------------------------------------------------------ LoraLayer --

LoraLayer::LoraLayer(std::string type_name, nn::ModulePtr base, int64_t in, int64_t out)
    : TunerLayer(std::move(type_name), std::move(base)), in_features(in), out_features(out) {
  register_child("lora_dropout", std::make_shared<nn::ModuleDict>());
  register_child("lora_A", std::make_shared<nn::ModuleDict>());
  register_child("lora_B", std::make_shared<nn::ModuleDict>());
  register_child("lora_embedding_A", std::make_shared<nn::ParameterDict>());
  register_child("lora_embedding_B", std::make_shared<nn::ParameterDict>());
  register_child("lora_magnitude_vector", std::make_shared<nn::ModuleDict>());
}

nn::ModuleDict& LoraLayer::lora_dropout() const { return static_cast<nn::ModuleDict&>(child("lora_dropout")); }
nn::ModuleDict& LoraLayer::lora_A() const { return static_cast<nn::ModuleDict&>(child("lora_A")); }
nn::ModuleDict& LoraLayer::lora_B() const { return static_cast<nn::ModuleDict&>(child("lora_B")); }
nn::ParameterDict& LoraLayer::lora_embedding_A() const {
  return static_cast<nn::ParameterDict&>(child("lora_embedding_A"));
}
nn::ParameterDict& LoraLayer::lora_embedding_B() const {
  return static_cast<nn::ParameterDict&>(child("lora_embedding_B"));
}
nn::ModuleDict& LoraLayer::lora_magnitude_vector() const {
  return static_cast<nn::ModuleDict&>(child("lora_magnitude_vector"));
}

void LoraLayer::common_update(const std::string& adapter, const AdapterArgs& a) {
  if (a.r <= 0) fail("`r` should be a positive integer value but the value passed is ", a.r);
  r[adapter] = a.r;
  lora_alpha[adapter] = a.lora_alpha;
  use_rslora[adapter] = a.use_rslora;
  nn::ModulePtr drop;
  if (a.lora_dropout > 0.0) drop = std::make_shared<nn::Dropout>(a.lora_dropout);
  else drop = std::make_shared<nn::Identity>();
  lora_dropout().erase(adapter);
  lora_dropout().insert(adapter, drop);
  scaling[adapter] = a.use_rslora ? a.lora_alpha / std::sqrt(double(a.r)) : a.lora_alpha / double(a.r);
}

void LoraLayer::erase_adapter_state(const std::string& name) {
  r.erase(name);
  lora_alpha.erase(name);
  scaling.erase(name);
  use_dora.erase(name);
  lora_bias.erase(name);
  use_rslora.erase(name);
}

namespace {
// The mixed-batch row assignments of the calling thread, per layer (see MixedBatchScope).
thread_local std::unordered_map<const LoraLayer*, const std::vector<std::string>*> t_mixed_batch;
}  // namespace

LoraLayer::MixedBatchScope::MixedBatchScope(const std::vector<std::shared_ptr<LoraLayer>>& layers,
                                            const std::vector<std::string>& names) {
  saved_.reserve(layers.size());
  for (const auto& l : layers) {
    auto [it, fresh] = t_mixed_batch.try_emplace(l.get(), &names);
    saved_.emplace_back(l.get(), fresh ? nullptr : it->second);
    it->second = &names;
  }
}

LoraLayer::MixedBatchScope::~MixedBatchScope() {
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
    if (it->second) t_mixed_batch[it->first] = it->second;
    else t_mixed_batch.erase(it->first);
  }
}

const std::vector<std::string>* LoraLayer::mixed_batch() const {
  if (t_mixed_batch.empty()) return nullptr;  // the common path: one branch
  auto it = t_mixed_batch.find(this);
  return it == t_mixed_batch.end() ? nullptr : it->second;
}

std::vector<std::pair<std::string, Tensor>> LoraLayer::mixed_batch_groups(const Tensor& x,
                                                                          const std::vector<std::string>& names) const {
  if (x.dim() == 0 || int64_t(names.size()) != x.size(0))
    fail("Length of `adapter_names` should be the same as the number of inputs, but got ", names.size(),
         " and ", x.dim() ? x.size(0) : 0, " respectively.");
  if (merged()) fail("Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first.");
  std::vector<std::pair<std::string, std::vector<int64_t>>> rows;
  for (int64_t i = 0; i < int64_t(names.size()); ++i) {
    const std::string& a = names[size_t(i)];
    auto it = std::find_if(rows.begin(), rows.end(), [&](const auto& p) { return p.first == a; });
    if (it == rows.end()) rows.push_back({a, {i}});
    else it->second.push_back(i);
  }
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [a, r] : rows) {
    if (a == "__base__") continue;
    if (use_dora.count(a) && use_dora.at(a)) fail("Cannot pass `adapter_names` when DoRA is enabled.");
    Tensor idx = from_vector(r, {int64_t(r.size())});
    out.emplace_back(a, x.device() == Device::cpu ? idx : idx.to(x.device()));  // index ops want x's device
  }
  return out;
}

void LoraLayer::set_scale(const std::string& adapter, double factor) {
  if (!scaling.count(adapter)) return;
  double rr = double(r.at(adapter));
  scaling[adapter] = factor * lora_alpha.at(adapter) / (use_rslora.at(adapter) ? std::sqrt(rr) : rr);
}

void LoraLayer::scale_layer(double factor) {
  if (factor == 1) return;
  for (const auto& a : active_adapters_)
    if (scaling.count(a)) scaling[a] *= factor;
}

void LoraLayer::unscale_layer(std::optional<double> factor) {
  for (const auto& a : active_adapters_) {
    if (!scaling.count(a)) continue;
    if (!factor) set_scale(a, 1.0);
    else scaling[a] /= *factor;
  }
}

// --------------------------------------------------------------- Linear --

namespace {
const nn::Linear& as_linear(const nn::Module& m) { return base_linear(m, "lora.Linear"); }
}  // namespace

Linear::Linear(nn::ModulePtr base, const std::string& adapter, const AdapterArgs& args, bool fifo)
    : LoraLayer("lora.Linear", base, 0, 0), fan_in_fan_out(fifo) {
  const nn::Linear& l = as_linear(get_base_layer());
  in_features = l.in_features;
  out_features = l.out_features;
  active_adapters_ = {adapter};
  update_layer(adapter, args);
}

void Linear::update_layer(const std::string& adapter, const AdapterArgs& a) {
  common_update(adapter, a);
  Device dev = a.low_cpu_mem_usage ? Device::meta : Device::cpu;
  auto A = std::make_shared<nn::Linear>(in_features, a.r, false, nullptr, DType::float32, dev);
  auto B = std::make_shared<nn::Linear>(a.r, out_features, a.lora_bias, nullptr, DType::float32, dev);
  lora_A().erase(adapter);
  lora_B().erase(adapter);
  lora_A().insert(adapter, A);
  lora_B().insert(adapter, B);
  lora_bias[adapter] = a.lora_bias;
  if (!a.low_cpu_mem_usage) reset_lora_parameters(adapter, a.init_lora_weights);
  move_adapter_to_base_device(adapter);
  lora_magnitude_vector().erase(adapter);
  if (a.use_dora) {
    auto mag = std::make_shared<DoraLinearLayer>(fan_in_fan_out);
    mag->init_magnitude(weight_of(get_base_layer()), A->weight(), B->weight(), scaling[adapter], a.low_cpu_mem_usage);
    lora_magnitude_vector().insert(adapter, mag);
    use_dora[adapter] = true;
  } else {
    use_dora[adapter] = false;
  }
  set_adapter(active_adapters_, a.inference_mode);
}

void Linear::reset_lora_parameters(const std::string& adapter, const InitLoraWeights& init) {
  if (!init.truthy() || !lora_A().contains(adapter)) return;
  NoGradGuard ng;
  auto& A = static_cast<nn::Linear&>(lora_A()[adapter]);
  auto& B = static_cast<nn::Linear&>(lora_B()[adapter]);
  Generator& gen = default_generator();
  if (init.is_bool()) {
    // kaiming_uniform_(a=√5): bound = gain·√(3/fan_in) = 1/√in
    double bound = 1.0 / std::sqrt(double(in_features));
    A.weight().uniform_(-bound, bound, gen);
  } else if (init.as_string() == "gaussian") {
    A.weight().normal_(0.0, 1.0 / double(r.at(adapter)), gen);
  } else {
    fail("Unknown initialization init_lora_weights=", init.as_string(), " (supported: true, false, \"gaussian\")");
  }
  B.weight().zero_();
  if (B.has_bias()) B.param("bias").zero_();
}

Tensor Linear::get_delta_weight(const std::string& adapter) {
  PEFT_CHECK(lora_A().contains(adapter), "[lora.Linear] no adapter '", adapter, "'");
  check_adapter_materialized(adapter);
  Tensor A = weight_of(lora_A()[adapter]), B = weight_of(lora_B()[adapter]);
  DType dt = B.dtype();
  bool cast = B.device() == Device::cpu && (dt == DType::float16 || dt == DType::bfloat16);
  if (cast) {
    A = A.to(DType::float32);
    B = B.to(DType::float32);
  }
  Tensor d = mul(maybe_t(matmul(B, A), fan_in_fan_out), scaling.at(adapter));
  if (cast) d = d.to(dt);
  return d;
}

namespace {

// Inference fast path: y += s·(x·Aᵀ)·Bᵀ in one fused op (lora_linear_update_), which skips
// the dropout/Linear module calls, the [T, out] temporary and the add that the general path
// costs: at small shapes those dominate (docs/perf-notes.md). Returns false when the general
// path must run. lora_B must have no bias (the caller checks).
bool accumulate_lora_no_grad(Tensor& result, const Tensor& x, const Tensor& wa, const Tensor& wb, nn::Module& drop,
                             double s) {
  if (is_grad_enabled() && (x.requires_grad() || result.requires_grad())) return false;
  if (is_grad_enabled() && (wa.requires_grad() || wb.requires_grad())) return false;
  if (dynamic_cast<nn::Identity*>(&drop) == nullptr) return false;
  // One device and dtype. On the CPU only float32 (other dtypes keep the general path's
  // rounding); another device takes what its gemm keeps as is (CUDA: also bfloat16 / float16).
  const Device dev = x.device();
  if (dev == Device::meta || wa.device() != dev || wb.device() != dev || result.device() != dev) return false;
  const DType dt = x.dtype();
  if (wa.dtype() != dt || wb.dtype() != dt || result.dtype() != dt || !is_floating(dt)) return false;
  if (dev == Device::cpu && dt != DType::float32) return false;
  if (x.dim() < 1 || !x.is_contiguous() || !result.is_contiguous()) return false;
  const int64_t in = wa.size(1), r = wa.size(0), out = wb.size(0);
  if (x.size(-1) != in || result.size(-1) != out || wb.size(1) != r) return false;
  const int64_t M = x.numel() / std::max<int64_t>(in, 1);
  if (M == 0 || result.numel() != M * out) return false;
  lora_linear_update_(result, x, wa, wb, s);
  return true;
}

}  // namespace

Tensor Linear::forward(const Tensor& x) {
  if (disable_adapters_) {
    if (merged()) unmerge();
    return base_layer().forward(x);
  }
  if (const auto* names = mixed_batch()) {
    auto groups = mixed_batch_groups(x, *names);
    Tensor result = base_layer().forward(x);
    // The groups' rows are disjoint: one index_add of all their outputs gives each row the
    // sum a per-group index_add would, with one pass over `result` instead of one per adapter.
    std::vector<Tensor> outs, rows;
    for (const auto& [a, idx] : groups) {
      if (!lora_A().contains(a)) continue;
      check_adapter_materialized(a);
      // Rows of one adapter that are one run [r0, r0 + n) (a server sorts its batch by
      // adapter): under NoGradGuard the product goes into that slice of `result` in place, as
      // the one-adapter forward does, with no gather, temporary or scatter. Only then: in grad
      // mode the choice would follow requires_grad flags, which set_adapter and delete_adapter
      // change, and the same batch would change bits between calls.
      if (!is_grad_enabled() && !use_dora.at(a) && !lora_B()[a].has_param("bias") && x.is_contiguous() &&
          result.is_contiguous() &&
          x.device() == Device::cpu && idx.device() == Device::cpu) {
        const std::vector<int64_t> r = idx.to_vector<int64_t>();
        bool run = true;
        for (size_t i = 1; i < r.size() && run; ++i) run = r[i] == r[0] + int64_t(i);
        if (run) {
          Tensor xs = x.narrow(0, r[0], int64_t(r.size())), ys = result.narrow(0, r[0], int64_t(r.size()));
          if (accumulate_lora_no_grad(ys, xs, weight_of(lora_A()[a]), weight_of(lora_B()[a]), lora_dropout()[a],
                                      scaling.at(a)))
            continue;
        }
      }
      Tensor sub = index_select(x, 0, idx);
      DType adt = weight_of(lora_A()[a]).dtype();
      if (is_floating(sub.dtype()) && sub.dtype() != adt) sub = sub.to(adt);
      Tensor out = mul(lora_B()[a].forward(lora_A()[a].forward(lora_dropout()[a].forward(sub))), scaling.at(a));
      outs.push_back(out.to(result.dtype()));
      rows.push_back(idx);
    }
    if (outs.size() == 1) return index_add(result, 0, rows[0], outs[0]);
    if (!outs.empty()) result = index_add(result, 0, cat(rows, 0), cat(outs, 0));
    return result;
  }
  if (merged()) return base_layer().forward(x);
  Tensor result = base_layer().forward(x);
  const DType result_dtype = result.dtype();
  Tensor xin = x;
  for (const auto& a : active_adapters_) {
    if (!lora_A().contains(a)) continue;
    nn::Module& A = lora_A()[a];
    nn::Module& B = lora_B()[a];
    const Tensor& wa = A.param("weight");
    const Tensor& wb = B.param("weight");
    const bool b_bias = B.has_param("bias");
    const bool is_dora = use_dora.at(a);
    // The full check builds every adapter tensor's name: only run it (to fail with its
    // message) when one of the tensors this forward reads is on meta.
    if (!x.is_meta() && (wa.is_meta() || wb.is_meta() || (b_bias && B.param("bias").is_meta()) ||
                         (is_dora && lora_magnitude_vector().contains(a) &&
                          lora_magnitude_vector()[a].has_param("weight") &&
                          lora_magnitude_vector()[a].param("weight").is_meta())))
      check_adapter_materialized(a);
    nn::Module& drop = lora_dropout()[a];
    const double s = scaling.at(a);
    const DType adt = wa.dtype();
    if (is_floating(xin.dtype()) && xin.dtype() != adt) xin = xin.to(adt);
    if (!is_dora) {
      if (!b_bias && accumulate_lora_no_grad(result, xin, wa, wb, drop, s)) continue;
      Tensor t = A.forward(drop.forward(xin));
      if (!b_bias && is_grad_enabled() && autograd::needs_grad({&t, &wb})) {
        // Training: the scale on the rank-r activations (T x r) rather than on the
        // T x out product: (s·t)·Bᵀ equals PEFT's (t·Bᵀ)·s up to rounding, and saves a
        // pass over T x out forward and another backward.
        result = add(result, B.forward(mul(t, s)));
        continue;
      }
      Tensor lora_out = B.forward(t);
      // Without autograd the product is accumulated into y in place (result is our own fresh tensor).
      if (!is_grad_enabled() || !autograd::needs_grad({&result, &lora_out})) {
        if (result.dtype() != lora_out.dtype() || result.shape() != lora_out.shape() || !result.is_contiguous())
          result = add(result, mul(lora_out, s));
        else
          result.add_(lora_out, s);
      } else {
        result = add(result, mul(lora_out, s));
      }
      continue;
    }
    // DoRA (PEFT's tuners/lora/): the norm is detached; base_result is the current result minus bias.
    auto& mag = static_cast<DoraLinearLayer&>(lora_magnitude_vector()[a]);
    Tensor xd = xin;
    Tensor base_result;
    bool identity = dynamic_cast<nn::Identity*>(&drop) != nullptr || !is_training();
    if (identity) base_result = result;
    else xd = drop.forward(xin);
    Tensor lora_result = B.forward(A.forward(xd));
    nn::Module& base = get_base_layer();
    Tensor W = weight_of(base);
    if (W.dtype() != xd.dtype() && is_floating(xd.dtype())) W = W.to(xd.dtype());
    Tensor weight_norm;
    {
      NoGradGuard ng;
      Tensor lw = matmul(weight_of(B), weight_of(A));
      weight_norm = mag.get_weight_norm(W.detach(), lw, s).detach();
    }
    Tensor scale = div(mag.param("weight"), weight_norm).view({1, -1});
    if (base_result.defined()) {
      if (base.has_param("bias") && base.param("bias").defined()) base_result = sub(base_result, base.param("bias"));
    } else {
      base_result = linear(xd, maybe_t(W, fan_in_fan_out));
    }
    Tensor dora = add(mul(sub(scale, 1.0), base_result), mul(mul(scale, lora_result), s));
    result = add(result, dora);
  }
  if (result.dtype() != result_dtype) result = result.to(result_dtype);
  return result;
}

std::vector<TunerLayer::MergedTensor> Linear::merged_tensors(const std::string& a) {
  nn::Module& base = get_base_layer();
  Tensor W = weight_of(base);
  Tensor delta = get_delta_weight(a);
  std::vector<MergedTensor> out;
  if (!use_dora.at(a)) {
    out.push_back({W, add(W, delta.to(W.dtype()))});
  } else {
    auto& mag = static_cast<DoraLinearLayer&>(lora_magnitude_vector()[a]);
    Tensor wn = mag.get_weight_norm(W, maybe_t(delta, fan_in_fan_out), 1.0).detach();
    dora_weight_norm_cache_[a] = wn;
    Tensor factor = maybe_t(div(mag.param("weight"), wn).view({-1, 1}), fan_in_fan_out);
    out.push_back({W, mul(factor, add(W, delta)).to(W.dtype())});
  }
  if (lora_bias.at(a)) {
    if (!base.has_param("bias") || !base.param("bias").defined())
      fail("Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.");
    Tensor b = base.param("bias");
    out.push_back({b, add(b, mul(lora_B()[a].param("bias"), scaling.at(a))).to(b.dtype())});
  }
  return out;
}

void Linear::unmerge_adapter(const std::string& a) {
  nn::Module& base = get_base_layer();
  Tensor W = weight_of(base);
  Tensor delta = get_delta_weight(a);
  if (!use_dora.at(a)) {
    W.add_(delta.to(W.dtype()), -1.0);
  } else {
    auto& mag = static_cast<DoraLinearLayer&>(lora_magnitude_vector()[a]);
    Tensor wn = dora_weight_norm_cache_.at(a);
    dora_weight_norm_cache_.erase(a);
    Tensor factor = div(mag.param("weight"), wn).view({-1, 1});
    W.copy_(sub(div(W, maybe_t(factor, fan_in_fan_out)), delta));
  }
  if (lora_bias.at(a)) base.param("bias").add_(mul(lora_B()[a].param("bias"), scaling.at(a)), -1.0);
}

// ------------------------------------------------------------ Embedding --

namespace {
const nn::Embedding& as_embedding(const nn::Module& m) {
  auto* e = dynamic_cast<const nn::Embedding*>(&m);
  if (!e) fail("lora.Embedding: base layer ", m.type_name(), " is not an Embedding");
  return *e;
}
}  // namespace

Embedding::Embedding(nn::ModulePtr base, const std::string& adapter, const AdapterArgs& args)
    : LoraLayer("lora.Embedding", base, 0, 0) {
  const nn::Embedding& e = as_embedding(get_base_layer());
  in_features = e.num_embeddings;
  out_features = e.embedding_dim;
  active_adapters_ = {adapter};
  update_layer(adapter, args);
}

void Embedding::update_layer(const std::string& adapter, const AdapterArgs& a) {
  if (a.lora_bias) fail("lora_bias=True is not supported for Embedding.");
  if (a.use_dora) fail("DoRA (use_dora=True) on an Embedding is not supported by peft.cpp yet");
  common_update(adapter, a);
  Generator& gen = default_generator();
  Tensor A, B;
  if (a.low_cpu_mem_usage) {
    // On meta: no allocation and no random draws (PEFT still draws randn on CPU here).
    A = empty({a.r, in_features}, DType::float32, Device::meta);
    B = empty({out_features, a.r}, DType::float32, Device::meta);
  } else {
    // PEFT's order: randn(r, num), randn(dim, r), then A = 0, B ~ N(0, 1).
    A = randn({a.r, in_features}, gen);
    B = randn({out_features, a.r}, gen);
    if (a.init_lora_weights.truthy()) {
      A.zero_();
      B.normal_(0.0, 1.0, gen);
    }
  }
  lora_embedding_A().erase(adapter);
  lora_embedding_B().erase(adapter);
  lora_embedding_A().insert(adapter, A, true);
  lora_embedding_B().insert(adapter, B, true);
  lora_bias[adapter] = false;
  use_dora[adapter] = false;
  move_adapter_to_base_device(adapter);
  set_adapter(active_adapters_, a.inference_mode);
}

Tensor Embedding::get_delta_weight(const std::string& adapter) {
  PEFT_CHECK(lora_embedding_A().contains(adapter), "[lora.Embedding] no adapter '", adapter, "'");
  check_adapter_materialized(adapter);
  Tensor A = lora_embedding_A()[adapter], B = lora_embedding_B()[adapter];
  DType dt = B.dtype();
  bool cast = B.device() == Device::cpu && (dt == DType::float16 || dt == DType::bfloat16);
  if (cast) {
    A = A.to(DType::float32);
    B = B.to(DType::float32);
  }
  Tensor d = mul(matmul(B, A).t(), scaling.at(adapter));
  if (cast) d = d.to(dt);
  return d;
}

Tensor Embedding::forward(const Tensor& x) {
  if (disable_adapters_) {
    if (merged()) unmerge();
    return base_layer().forward(x);
  }
  const nn::Embedding& base = as_embedding(get_base_layer());
  if (const auto* names = mixed_batch()) {
    auto groups = mixed_batch_groups(x, *names);
    Tensor result = base_layer().forward(x);
    for (const auto& [a, idx] : groups) {
      if (!lora_embedding_A().contains(a)) continue;
      check_adapter_materialized(a);
      Tensor after_A = embedding(index_select(x, 0, idx), lora_embedding_A()[a].t().contiguous(), base.padding_idx);
      Tensor out = mul(matmul(after_A, lora_embedding_B()[a].t()), scaling.at(a));
      result = index_add(result, 0, idx, out.to(result.dtype()));
    }
    return result;
  }
  if (merged()) return base_layer().forward(x);
  Tensor result = base_layer().forward(x);
  const DType result_dtype = result.dtype();
  for (const auto& a : active_adapters_) {
    if (!lora_embedding_A().contains(a)) continue;
    if (!x.is_meta()) check_adapter_materialized(a);
    Tensor At = lora_embedding_A()[a].t().contiguous();  // (num, r)
    Tensor Bt = lora_embedding_B()[a].t();               // (r, dim)
    Tensor after_A = embedding(x, At, base.padding_idx);
    result = add(result, mul(matmul(after_A, Bt), scaling.at(a)));
  }
  if (result.dtype() != result_dtype) result = result.to(result_dtype);
  return result;
}

std::vector<TunerLayer::MergedTensor> Embedding::merged_tensors(const std::string& a) {
  Tensor W = weight_of(get_base_layer());
  return {{W, add(W, get_delta_weight(a).to(W.dtype()))}};
}

void Embedding::unmerge_adapter(const std::string& a) {
  Tensor W = weight_of(get_base_layer());
  W.add_(get_delta_weight(a).to(W.dtype()), -1.0);
}

}  // namespace peft::lora
