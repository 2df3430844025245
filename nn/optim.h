// Optimizers over named parameters (torch.optim.SGD / AdamW update rules, one
// parameter group), gradient clipping and a warmup + cosine LR schedule.
// Parameters are updated in place (no autograd), so every handle onto them
// (layers, state dicts) sees the new values. Parameters whose grad is
// undefined are skipped, as in PyTorch.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/state_dict.h"
#include "runtime/tensor.h"

namespace peft::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Optimizer {
 public:
  Optimizer(NamedTensors params, double lr, const char* name);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual void step() = 0;
  // Drops every parameter's gradient (PyTorch's set_to_none=True default).
  void zero_grad();
  double lr() const { return lr_; }
  void set_lr(double lr);
  const NamedTensors& params() const { return params_; }
  // Number of step() calls so far.
  int64_t step_count() const { return steps_; }

 protected:
  NamedTensors params_;
  double lr_;
  int64_t steps_ = 0;
  const char* name_;
};

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  bool maximize = false;
  // Compute with runtime ops (any device/dtype) even where the CPU loop applies.
  bool use_ops = false;
};

// torch.optim.SGD: g += wd*p; buf = g (first step) else buf = momentum*buf + (1-dampening)*g;
// g = nesterov ? g + momentum*buf : buf; p -= lr*g.
class SGD : public Optimizer {
 public:
  SGD(NamedTensors params, SGDOptions opts = {});
  SGD(const std::vector<Tensor>& params, SGDOptions opts = {});
  void step() override;
  const SGDOptions& options() const { return opts_; }
  // The momentum buffer of parameter i (undefined before its first update).
  Tensor momentum_buffer(size_t i) const { return bufs_.at(i); }

 private:
  SGDOptions opts_;
  std::vector<Tensor> bufs_;
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool maximize = false;
  bool use_ops = false;
};

// torch.optim.AdamW (single-tensor, non-amsgrad): p *= 1 - lr*wd;
// m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g²; denom = sqrt(v)/sqrt(1-b2^t) + eps;
// p -= lr/(1-b1^t) * m/denom. t counts per parameter (its own updates).
class AdamW : public Optimizer {
 public:
  AdamW(NamedTensors params, AdamWOptions opts = {});
  AdamW(const std::vector<Tensor>& params, AdamWOptions opts = {});
  void step() override;
  const AdamWOptions& options() const { return opts_; }
  Tensor exp_avg(size_t i) const { return m_.at(i); }
  Tensor exp_avg_sq(size_t i) const { return v_.at(i); }
  // The optimizer's state by parameter name (torch.optim's state_dict, keyed by name instead of
  // position): "<name>.exp_avg", "<name>.exp_avg_sq" (parameters updated at least once) and
  // "<name>.step" (int64 scalar), plus "optimizer.step" (step() calls) and "optimizer.lr".
  // Copies: the optimizer keeps its own buffers.
  StateDict state_dict() const;
  // Restores a state_dict() of an AdamW over the same parameter names and shapes; anything else
  // (a missing or extra name, a wrong shape) is a peft::Error naming it, before any change.
  void load_state_dict(const StateDict& sd);

 private:
  AdamWOptions opts_;
  std::vector<Tensor> m_, v_;
  std::vector<int64_t> t_;
};

// torch.nn.utils.clip_grad_norm_ (L2): total = ‖all grads‖₂; every grad is
// scaled by min(1, max_norm/(total+1e-6)). Returns total (before clipping).
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);
double clip_grad_norm_(const NamedTensors& params, double max_norm);

// LR multiplier of a linear warmup followed by a cosine decay (transformers'
// get_cosine_schedule_with_warmup, num_cycles=0.5): step/warmup during warmup,
// then max(min_ratio, 0.5*(1+cos(pi*progress))) with progress clamped to [0, 1].
double warmup_cosine_multiplier(int64_t step, int64_t warmup_steps, int64_t total_steps,
                                double min_ratio = 0.0);

// Holds the base LR and sets optimizer.lr = base_lr * multiplier(step).
class WarmupCosineSchedule {
 public:
  WarmupCosineSchedule(Optimizer& opt, int64_t warmup_steps, int64_t total_steps, double min_ratio = 0.0);
  // Sets the LR for `step` (0-based: the LR used by the step-th optimizer step).
  double apply(int64_t step);
  double lr_at(int64_t step) const;

 private:
  Optimizer& opt_;
  double base_lr_;
  int64_t warmup_, total_;
  double min_ratio_;
};

}  // namespace peft::nn
