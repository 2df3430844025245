#include "nn/optim.h"

#include <set>

#include <algorithm>
#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::nn {

namespace {

NamedTensors number(const std::vector<Tensor>& ps) {
  NamedTensors out;
  for (size_t i = 0; i < ps.size(); ++i) out.emplace_back(std::to_string(i), ps[i]);
  return out;
}

// The gradient as a tensor matching the parameter's dtype/device/shape.
Tensor grad_for(const std::string& name, const Tensor& p, const char* opt) {
  Tensor g = p.grad();
  if (!g.defined()) return g;
  if (g.shape() != p.shape())
    fail("[", opt, "] gradient of '", name, "' is ", g.desc(), " but the parameter is ", p.desc());
  g = g.detach();
  if (g.device() != p.device()) g = g.to(p.device());
  if (g.dtype() != p.dtype()) g = g.to(p.dtype());
  return g;
}

bool cpu_loop_ok(const Tensor& p, bool use_ops) {
  return !use_ops && p.device() == Device::cpu && p.is_contiguous() &&
         (p.dtype() == DType::float32 || p.dtype() == DType::float64);
}

// State tensor matching p (created zero, or re-homed after the parameter moved).
Tensor& state_like(Tensor& s, const Tensor& p) {
  if (!s.defined() || s.shape() != p.shape()) {
    s = zeros(p.shape(), p.dtype(), p.device());
  } else if (s.dtype() != p.dtype() || s.device() != p.device()) {
    s = s.to(p.device()).to(p.dtype()).contiguous();
  }
  return s;
}

}  // namespace

StateDict AdamW::state_dict() const {
  NoGradGuard ng;
  StateDict sd;
  for (size_t k = 0; k < params_.size(); ++k) {
    const std::string& n = params_[k].first;
    if (m_[k].defined()) {
      sd.set(n + ".exp_avg", m_[k].clone());
      sd.set(n + ".exp_avg_sq", v_[k].clone());
    }
    sd.set(n + ".step", from_vector(std::vector<int64_t>{t_[k]}, {}));
  }
  sd.set("optimizer.step", from_vector(std::vector<int64_t>{steps_}, {}));
  sd.set("optimizer.lr", from_vector(std::vector<double>{lr_}, {}));
  return sd;
}

void AdamW::load_state_dict(const StateDict& sd) {
  NoGradGuard ng;
  auto need = [&](const std::string& key) -> const Tensor& {
    const Tensor* t = sd.find(key);
    if (!t) fail("[AdamW] load_state_dict: the state has no '", key, "'");
    return *t;
  };
  std::set<std::string> known = {"optimizer.step", "optimizer.lr"};
  // validate everything first: a refused state changes nothing
  for (size_t k = 0; k < params_.size(); ++k) {
    const std::string& n = params_[k].first;
    known.insert(n + ".step");
    if (need(n + ".step").numel() != 1) fail("[AdamW] load_state_dict: '", n, ".step' must hold one value");
    for (const char* part : {".exp_avg", ".exp_avg_sq"}) {
      if (const Tensor* t = sd.find(n + part)) {
        known.insert(n + part);
        if (t->shape() != params_[k].second.shape())
          fail("[AdamW] load_state_dict: '", n, part, "' is ", t->desc(), " but the parameter is ",
               params_[k].second.desc());
      }
    }
    if ((sd.find(n + ".exp_avg") == nullptr) != (sd.find(n + ".exp_avg_sq") == nullptr))
      fail("[AdamW] load_state_dict: '", n, "' has one of exp_avg / exp_avg_sq but not the other");
  }
  for (const auto& [k, t] : sd)
    if (!known.count(k)) fail("[AdamW] load_state_dict: '", k, "' is no state of this optimizer's parameters");
  for (size_t k = 0; k < params_.size(); ++k) {
    const std::string& n = params_[k].first;
    t_[k] = int64_t(need(n + ".step").item());
    if (const Tensor* m = sd.find(n + ".exp_avg")) {
      const Tensor& p = params_[k].second;
      m_[k] = empty(p.shape(), p.dtype(), p.device());
      v_[k] = empty(p.shape(), p.dtype(), p.device());
      m_[k].copy_(*m);
      v_[k].copy_(need(n + ".exp_avg_sq"));
    } else {
      m_[k] = Tensor();
      v_[k] = Tensor();
    }
  }
  steps_ = int64_t(need("optimizer.step").item());
  set_lr(need("optimizer.lr").item());
}

// ---------------------------------------------------------------------------

Optimizer::Optimizer(NamedTensors params, double lr, const char* name)
    : params_(std::move(params)), lr_(lr), name_(name) {
  if (!(lr >= 0)) fail("[", name_, "] invalid learning rate: ", lr);
  for (const auto& [n, p] : params_) {
    if (!p.defined()) fail("[", name_, "] parameter '", n, "' is undefined");
    if (!is_floating(p.dtype())) fail("[", name_, "] parameter '", n, "' is ", p.desc(), ", not floating");
    if (!p.is_leaf()) fail("[", name_, "] can't optimize a non-leaf tensor ('", n, "', ", p.desc(), ")");
  }
}

void Optimizer::zero_grad() {
  for (auto& kv : params_) kv.second.zero_grad();
}

void Optimizer::set_lr(double lr) {
  if (!(lr >= 0)) fail("[", name_, "] invalid learning rate: ", lr);
  lr_ = lr;
}

// ---------------------------------------------------------------------------
// SGD

SGD::SGD(NamedTensors params, SGDOptions o) : Optimizer(std::move(params), o.lr, "SGD"), opts_(o) {
  if (!(o.momentum >= 0)) fail("[SGD] invalid momentum value: ", o.momentum);
  if (!(o.weight_decay >= 0)) fail("[SGD] invalid weight_decay value: ", o.weight_decay);
  if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
    fail("[SGD] Nesterov momentum requires a momentum and zero dampening (momentum=", o.momentum,
         ", dampening=", o.dampening, ")");
  bufs_.resize(params_.size());
}

SGD::SGD(const std::vector<Tensor>& params, SGDOptions o) : SGD(number(params), o) {}

namespace {
template <class T>
void sgd_loop(T* p, const T* g, T* buf, bool first, int64_t n, const SGDOptions& o, double lr) {
  const T wd = T(o.weight_decay), mom = T(o.momentum), damp1 = T(1 - o.dampening), mlr = T(-lr);
  for (int64_t i = 0; i < n; ++i) {
    T gi = o.maximize ? -g[i] : g[i];
    if (o.weight_decay != 0) gi = gi + wd * p[i];
    if (o.momentum != 0) {
      T b = first ? gi : buf[i] * mom + damp1 * gi;
      buf[i] = b;
      gi = o.nesterov ? gi + mom * b : b;
    }
    p[i] = p[i] + mlr * gi;
  }
}
}  // namespace

void SGD::step() {
  NoGradGuard ng;
  ++steps_;
  const SGDOptions& o = opts_;
  for (size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k].second;
    Tensor g = grad_for(params_[k].first, p, "SGD");
    if (!g.defined()) continue;
    if (p.is_meta()) continue;  // nothing to update
    bool first = !bufs_[k].defined();
    if (cpu_loop_ok(p, o.use_ops)) {
      g = g.contiguous();
      if (o.momentum != 0) state_like(bufs_[k], p);
      if (p.dtype() == DType::float32)
        sgd_loop<float>(p.data_ptr<float>(), g.data_ptr<float>(),
                        o.momentum != 0 ? bufs_[k].data_ptr<float>() : nullptr, first, p.numel(), o, lr_);
      else
        sgd_loop<double>(p.data_ptr<double>(), g.data_ptr<double>(),
                         o.momentum != 0 ? bufs_[k].data_ptr<double>() : nullptr, first, p.numel(), o, lr_);
      continue;
    }
    // Generic path with runtime ops (any device / dtype).
    Tensor pd = p.detach();
    if (o.maximize) g = neg(g);
    if (o.weight_decay != 0) g = add(g, mul(pd, o.weight_decay));
    if (o.momentum != 0) {
      if (first) {
        bufs_[k] = g.clone();
      } else {
        state_like(bufs_[k], p);
        bufs_[k].copy_(add(mul(bufs_[k], o.momentum), mul(g, 1 - o.dampening)));
      }
      g = o.nesterov ? add(g, mul(bufs_[k], o.momentum)) : bufs_[k];
    }
    p.copy_(add(pd, mul(g, -lr_)));
  }
}

// ---------------------------------------------------------------------------
// AdamW

AdamW::AdamW(NamedTensors params, AdamWOptions o) : Optimizer(std::move(params), o.lr, "AdamW"), opts_(o) {
  if (!(o.eps >= 0)) fail("[AdamW] invalid epsilon value: ", o.eps);
  if (!(o.beta1 >= 0 && o.beta1 < 1)) fail("[AdamW] invalid beta parameter at index 0: ", o.beta1);
  if (!(o.beta2 >= 0 && o.beta2 < 1)) fail("[AdamW] invalid beta parameter at index 1: ", o.beta2);
  if (!(o.weight_decay >= 0)) fail("[AdamW] invalid weight_decay value: ", o.weight_decay);
  m_.resize(params_.size());
  v_.resize(params_.size());
  t_.assign(params_.size(), 0);
}

AdamW::AdamW(const std::vector<Tensor>& params, AdamWOptions o) : AdamW(number(params), o) {}

void AdamW::step() {
  NoGradGuard ng;
  ++steps_;
  const AdamWOptions& o = opts_;
  for (size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k].second;
    Tensor g = grad_for(params_[k].first, p, "AdamW");
    if (!g.defined()) continue;
    if (p.is_meta()) continue;
    state_like(m_[k], p);
    state_like(v_[k], p);
    const int64_t t = ++t_[k];
    if (cpu_loop_ok(p, o.use_ops)) {
      adamw_step_(p, g, m_[k], v_[k], lr_, o.beta1, o.beta2, o.eps, o.weight_decay, t, o.maximize);
      continue;
    }
    // Generic path with runtime ops (any device / dtype), from the same constants.
    const AdamWConstants c = adamw_constants(lr_, o.beta1, o.beta2, o.eps, o.weight_decay, t, o.maximize);
    Tensor pd = p.detach();
    if (o.maximize) g = neg(g);
    Tensor pn = mul(pd, c.decay);
    Tensor m = add(m_[k], mul(sub(g, m_[k]), c.w1));
    Tensor v = add(mul(v_[k], c.beta2), mul(mul(g, g), c.w2));
    m_[k].copy_(m);
    v_[k].copy_(v);
    Tensor denom = add(div(sqrt(v_[k]), c.bc2_sqrt), c.eps);
    p.copy_(sub(pn, mul(div(m_[k], denom), c.step_size)));
  }
}

// ---------------------------------------------------------------------------
// clipping and schedules

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  NoGradGuard ng;
  double sq = 0;
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined() || g.is_meta()) continue;
    grads.push_back(g);
    double n = norm(g.to(DType::float64)).item();
    sq += n * n;
  }
  double total = std::sqrt(sq);
  double coef = std::min(max_norm / (total + 1e-6), 1.0);
  for (Tensor& g : grads) g.mul_(coef);
  return total;
}

double clip_grad_norm_(const NamedTensors& params, double max_norm) {
  std::vector<Tensor> ps;
  for (const auto& kv : params) ps.push_back(kv.second);
  return clip_grad_norm_(ps, max_norm);
}

double warmup_cosine_multiplier(int64_t step, int64_t warmup, int64_t total, double min_ratio) {
  if (warmup < 0 || total < 0) fail("[warmup_cosine] warmup_steps and total_steps must be >= 0");
  if (step < warmup) return double(step) / double(std::max<int64_t>(1, warmup));
  double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
  progress = std::clamp(progress, 0.0, 1.0);
  const double pi = 3.14159265358979323846;
  return std::max(min_ratio, 0.5 * (1.0 + std::cos(pi * progress)));
}

WarmupCosineSchedule::WarmupCosineSchedule(Optimizer& opt, int64_t warmup, int64_t total, double min_ratio)
    : opt_(opt), base_lr_(opt.lr()), warmup_(warmup), total_(total), min_ratio_(min_ratio) {
  apply(0);
}

double WarmupCosineSchedule::lr_at(int64_t step) const {
  return base_lr_ * warmup_cosine_multiplier(step, warmup_, total_, min_ratio_);
}

double WarmupCosineSchedule::apply(int64_t step) {
  double lr = lr_at(step);
  opt_.set_lr(lr);
  return lr;
}

}  // namespace peft::nn
