// IA3 layers (PEFT's tuners/ia3/). Forward scales the base layer's outputs (or, for
// feed-forward layers, its inputs) by the product of the active adapters'
// vectors. Merge multiplies W's rows (columns for feed-forward) and, for
// non-feed-forward layers, the bias; unmerge divides by ia3_l + 1e-8.
#include "adapters/ia3/layer.h"

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::ia3 {

namespace {

const nn::Linear& as_linear(const nn::Module& m) { return base_linear(m, "ia3.Linear"); }

// The wider floating dtype (float64 > float32 > half types), as torch promotes.
DType promote(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::float64 || b == DType::float64) return DType::float64;
  return DType::float32;
}

bool has_bias(const nn::Module& m) { return m.has_param("bias") && m.param("bias").defined(); }

}  // namespace

// ------------------------------------------------------------- IA3Layer --

IA3Layer::IA3Layer(std::string type_name, nn::ModulePtr base, int64_t in, int64_t out, bool ff)
    : TunerLayer(std::move(type_name), std::move(base)), in_features(in), out_features(out), is_feedforward(ff) {
  register_child("ia3_l", std::make_shared<nn::ParameterDict>());
}

nn::ParameterDict& IA3Layer::ia3_l() const { return static_cast<nn::ParameterDict&>(child("ia3_l")); }

void IA3Layer::update_layer(const std::string& adapter, bool init_ia3_weights, bool low_cpu_mem_usage,
                            bool inference_mode) {
  Shape shape = is_feedforward ? Shape{1, in_features} : Shape{out_features, 1};
  // PEFT draws randn on CPU even under init_empty_weights; the parameter then lands on meta.
  Tensor w = randn(shape, default_generator());
  if (low_cpu_mem_usage) w = empty(shape, DType::float32, Device::meta);
  ia3_l().erase(adapter);
  ia3_l().insert(adapter, w, true);
  if (init_ia3_weights && !low_cpu_mem_usage) reset_ia3_parameters(adapter);
  move_adapter_to_base_device(adapter);
  set_adapter(active_adapters_, inference_mode);
}

void IA3Layer::reset_ia3_parameters(const std::string& adapter) {
  if (!ia3_l().contains(adapter)) return;
  NoGradGuard ng;
  ia3_l()[adapter].fill_(1.0);
}

// --------------------------------------------------------------- Linear --

Linear::Linear(nn::ModulePtr base, const std::string& adapter, bool ff, bool init_ia3_weights, bool fifo,
               bool low_cpu_mem_usage, bool inference_mode)
    : IA3Layer("Linear", base, 0, 0, ff), fan_in_fan_out(fifo) {
  const nn::Linear& l = as_linear(get_base_layer());
  in_features = l.in_features;
  out_features = l.out_features;
  active_adapters_ = {adapter};
  update_layer(adapter, init_ia3_weights, low_cpu_mem_usage, inference_mode);
}

Tensor Linear::get_delta_weight(const std::string& adapter) {
  PEFT_CHECK(ia3_l().contains(adapter), "[ia3.Linear] no adapter '", adapter, "'");
  check_adapter_materialized(adapter);
  const Tensor& l = ia3_l()[adapter];
  return fan_in_fan_out ? l.t() : l;
}

Tensor Linear::forward(const Tensor& x) {
  if (disable_adapters_) {
    if (merged()) unmerge();
    return base_layer().forward(x);
  }
  if (merged()) return base_layer().forward(x);
  Tensor scaling;
  DType dt = x.dtype();
  for (const auto& a : active_adapters_) {
    if (!ia3_l().contains(a)) continue;
    if (!x.is_meta()) check_adapter_materialized(a);
    const Tensor& l = ia3_l()[a];
    dt = l.dtype();
    Tensor v = l.flatten();
    scaling = scaling.defined() ? mul(scaling, v) : v;
  }
  if (!scaling.defined()) return base_layer().forward(x);
  if (is_feedforward) {
    Tensor xin = x;
    if (is_floating(xin.dtype()) && xin.dtype() != dt) xin = xin.to(dt);
    Tensor interm = mul(xin, scaling);
    if (interm.dtype() != x.dtype()) interm = interm.to(x.dtype());
    return base_layer().forward(interm);
  }
  Tensor result = base_layer().forward(x);
  const DType result_dtype = result.dtype();
  Tensor out = mul(result, scaling);
  if (out.dtype() != result_dtype) out = out.to(result_dtype);
  return out;
}

std::vector<TunerLayer::MergedTensor> Linear::merged_tensors(const std::string& a) {
  nn::Module& base = get_base_layer();
  Tensor W = base.param("weight");
  Tensor l = get_delta_weight(a);
  // Computed in the wider of the two dtypes, then cast back (torch's promotion).
  DType pw = promote(W.dtype(), l.dtype());
  std::vector<MergedTensor> out{{W, mul(W.to(pw), l.to(pw)).to(W.dtype())}};
  if (!is_feedforward && has_bias(base)) {
    Tensor b = base.param("bias");
    Tensor s = ia3_l()[a].reshape(b.shape());
    DType pb = promote(b.dtype(), s.dtype());
    out.push_back({b, mul(b.to(pb), s.to(pb)).to(b.dtype())});
  }
  return out;
}

std::string Linear::unmerge_warning() const { return "Unmerge result can be inaccurate for (IA)^3."; }

void Linear::unmerge_adapter(const std::string& a) {
  nn::Module& base = get_base_layer();
  Tensor W = base.param("weight");
  Tensor l = add(get_delta_weight(a), 1e-8);
  DType pt = promote(W.dtype(), l.dtype());
  W.copy_(div(W.to(pt), l.to(pt)).to(W.dtype()));
  if (!is_feedforward && has_bias(base)) {
    Tensor b = base.param("bias");
    Tensor s = add(ia3_l()[a].reshape(b.shape()), 1e-8);
    DType pb = promote(b.dtype(), s.dtype());
    b.copy_(div(b.to(pb), s.to(pb)).to(b.dtype()));
  }
}

}  // namespace peft::ia3
