// adalora.SVDLinear. Forward (PEFT's tuners/adalora/): y = base(x) + (dropout(x)·(A⊙E)ᵀ·Bᵀ)·s/(ranknum+1e-5);
// merge adds transpose(B·(A⊙E), fan_in_fan_out)·s/(ranknum+1e-5), unmerge subtracts it.
#include "adapters/adalora/layer.h"

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"

namespace peft::adalora {

namespace {

const nn::Linear& as_linear(const nn::Module& m) { return base_linear(m, "adalora.SVDLinear"); }

}  // namespace

SVDLinear::SVDLinear(nn::ModulePtr base, const std::string& adapter, const AdapterArgs& args, bool fifo)
    : TunerLayer("adalora.SVDLinear", std::move(base)), fan_in_fan_out(fifo) {
  register_child("lora_dropout", std::make_shared<nn::ModuleDict>());
  register_child("lora_A", std::make_shared<nn::ParameterDict>());
  register_child("lora_B", std::make_shared<nn::ParameterDict>());
  register_child("lora_embedding_A", std::make_shared<nn::ParameterDict>());
  register_child("lora_embedding_B", std::make_shared<nn::ParameterDict>());
  register_child("lora_magnitude_vector", std::make_shared<nn::ModuleDict>());
  register_child("lora_E", std::make_shared<nn::ParameterDict>());
  register_child("ranknum", std::make_shared<nn::ParameterDict>());
  const nn::Linear& l = as_linear(get_base_layer());
  in_features = l.in_features;
  out_features = l.out_features;
  {
    Tensor w = get_base_layer().param("weight");
    w.requires_grad_(false);
  }
  active_adapters_ = {adapter};
  update_layer(adapter, args);
}

nn::ModuleDict& SVDLinear::lora_dropout() const { return static_cast<nn::ModuleDict&>(child("lora_dropout")); }
nn::ParameterDict& SVDLinear::lora_A() const { return static_cast<nn::ParameterDict&>(child("lora_A")); }
nn::ParameterDict& SVDLinear::lora_B() const { return static_cast<nn::ParameterDict&>(child("lora_B")); }
nn::ParameterDict& SVDLinear::lora_E() const { return static_cast<nn::ParameterDict&>(child("lora_E")); }
nn::ParameterDict& SVDLinear::ranknum() const { return static_cast<nn::ParameterDict&>(child("ranknum")); }

void SVDLinear::update_layer(const std::string& adapter, const AdapterArgs& a) {
  if (a.r < 0) fail("`r` should be a positive integer or 0, but the value passed is ", a.r);
  r[adapter] = a.r;
  lora_alpha[adapter] = a.lora_alpha;
  nn::ModulePtr drop;
  if (a.lora_dropout > 0.0) drop = std::make_shared<nn::Dropout>(a.lora_dropout);
  else drop = std::make_shared<nn::Identity>();
  lora_dropout().erase(adapter);
  lora_dropout().insert(adapter, drop);
  Device dev = a.low_cpu_mem_usage ? Device::meta : Device::cpu;
  Tensor A, E, B, rn;
  if (dev == Device::meta) {
    A = empty({a.r, in_features}, DType::float32, Device::meta);
    E = empty({a.r, 1}, DType::float32, Device::meta);
    B = empty({out_features, a.r}, DType::float32, Device::meta);
    rn = empty({1}, DType::float32, Device::meta);
  } else {
    // PEFT's RNG order: randn A, randn E, randn B, randn(1) for ranknum (then filled).
    Generator& gen = default_generator();
    A = randn({a.r, in_features}, gen);
    E = randn({a.r, 1}, gen);
    B = randn({out_features, a.r}, gen);
    rn = randn({1}, gen);
    rn.fill_(double(a.r));
  }
  for (auto* d : {&lora_A(), &lora_E(), &lora_B(), &ranknum()}) d->erase(adapter);
  lora_A().insert(adapter, A, true);
  lora_E().insert(adapter, E, true);
  lora_B().insert(adapter, B, true);
  ranknum().insert(adapter, rn, false);
  scaling[adapter] = a.lora_alpha > 0 ? a.lora_alpha : double(a.r);
  if (a.init_lora_weights && !a.low_cpu_mem_usage) reset_lora_parameters(adapter);
  move_adapter_to_base_device(adapter);
  set_adapter(active_adapters_, a.inference_mode);
}

void SVDLinear::reset_lora_parameters(const std::string& adapter) {
  if (!lora_A().contains(adapter)) return;
  NoGradGuard ng;
  Generator& gen = default_generator();
  lora_E()[adapter].zero_();
  lora_A()[adapter].normal_(0.0, 0.02, gen);
  lora_B()[adapter].normal_(0.0, 0.02, gen);
}

void SVDLinear::erase_adapter_state(const std::string& name) {
  r.erase(name);
  lora_alpha.erase(name);
  scaling.erase(name);
}

Tensor SVDLinear::get_delta_weight(const std::string& adapter) {
  PEFT_CHECK(lora_A().contains(adapter), "[adalora.SVDLinear] no adapter '", adapter, "'");
  check_adapter_materialized(adapter);
  const Tensor& A = lora_A()[adapter];
  const Tensor& E = lora_E()[adapter];
  const Tensor& B = lora_B()[adapter];
  Tensor d = matmul(B, mul(A, E));
  if (fan_in_fan_out) d = d.t();
  return div(mul(d, scaling.at(adapter)), add(ranknum()[adapter], 1e-5));
}

Tensor SVDLinear::forward(const Tensor& x) {
  if (disable_adapters_) {
    if (merged()) unmerge();
    return base_layer().forward(x);
  }
  if (merged()) return base_layer().forward(x);
  Tensor result = base_layer().forward(x);
  Tensor xin = x;
  for (const auto& a : active_adapters_) {
    if (!lora_A().contains(a)) continue;
    if (!x.is_meta()) check_adapter_materialized(a);
    const Tensor& A = lora_A()[a];
    const Tensor& E = lora_E()[a];
    const Tensor& B = lora_B()[a];
    if (is_floating(xin.dtype()) && xin.dtype() != A.dtype()) xin = xin.to(A.dtype());
    Tensor h = matmul(matmul(lora_dropout()[a].forward(xin), mul(A, E).t()), B.t());
    h = div(mul(h, scaling.at(a)), add(ranknum()[a], 1e-5));
    result = add(result, h);
  }
  return result;
}

std::vector<TunerLayer::MergedTensor> SVDLinear::merged_tensors(const std::string& a) {
  Tensor W = get_base_layer().param("weight");
  return {{W, add(W, get_delta_weight(a).to(W.dtype()))}};
}

void SVDLinear::unmerge_adapter(const std::string& a) {
  Tensor W = get_base_layer().param("weight");
  W.add_(get_delta_weight(a).to(W.dtype()), -1.0);
}

}  // namespace peft::adalora
