// In-place updates without autograd: LoRA's fused inference update and the AdamW step.
// Callers (adapters/lora/layer.cpp, nn/optim.cpp) reach the kernels only through these, so
// each op checks its arguments once here and the device's kernel only computes.
#include <algorithm>
#include <cmath>

#include "runtime/ops_common.h"

namespace peft {

using namespace detail;
using autograd::needs_grad;

namespace {

// Every tensor of an in-place update on `ref`'s device and dtype, which must be float32/float64.
void check_same_float(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  const Tensor& ref = *ts.begin()->second;
  for (const auto& [what, t] : ts) {
    check_defined(op, *t, what);
    // half precision only where the device's gemm computes in it (CUDA), not on the CPU
    const bool half_ok = !t->is_meta() && is_floating(t->dtype()) && backend(t->device()).gemm_dtype(t->dtype()) == t->dtype();
    if (t->dtype() != DType::float32 && t->dtype() != DType::float64 && !half_ok)
      fail("[", op, "] needs float32 or float64 tensors, got ", what, " ", t->desc());
    if (t->dtype() != ref.dtype())
      fail("[", op, "] needs one dtype, got ", ts.begin()->first, " ", ref.desc(), " and ", what, " ", t->desc());
    if (t->device() != ref.device())
      fail("[", op, "] tensors on different devices: ", ts.begin()->first, " ", ref.desc(), " and ", what, " ",
           t->desc());
  }
}

}  // namespace

Tensor& lora_linear_update_(Tensor& y, const Tensor& x, const Tensor& a, const Tensor& b, double scale) {
  const char* op = "lora_linear_update_";
  check_same_float(op, {{"y", &y}, {"x", &x}, {"a", &a}, {"b", &b}});
  if (needs_grad({&y, &x, &a, &b})) fail("[", op, "] is not differentiable; call it where no gradient is needed");
  const auto shapes = [&] {
    return "x " + x.desc() + ", a " + a.desc() + ", b " + b.desc() + ", y " + y.desc();
  };
  if (x.dim() < 1 || a.dim() != 2 || b.dim() != 2 || y.dim() != x.dim())
    fail("[", op, "] expects x [..., in], a [r, in], b [out, r] and y [..., out], got ", shapes());
  const int64_t in = a.size(1), r = a.size(0), out = b.size(0);
  bool fits = x.size(-1) == in && b.size(1) == r && y.size(-1) == out;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) fits = fits && x.size(d) == y.size(d);
  if (!fits) fail("[", op, "] shapes do not chain as y [..., out] += x [..., in]·aᵀ·bᵀ: ", shapes());
  if (!y.is_contiguous()) fail("[", op, "] writes y in place and needs it contiguous, got ", shapes());
  const int64_t M = y.numel() / std::max<int64_t>(out, 1);
  if (y.is_meta() || M == 0 || in == 0 || r == 0 || out == 0) return y;  // y += 0
  Tensor y2 = reshape_raw(y, {M, out});  // a view: y is contiguous
  backend(y.device()).lora_linear_update(y2, reshape_raw(x, {M, in}), a, b, scale);
  return y;
}

AdamWConstants adamw_constants(double lr, double beta1, double beta2, double eps, double weight_decay,
                               int64_t step, bool maximize) {
  const double bc1 = 1 - std::pow(beta1, double(step));
  const double bc2 = 1 - std::pow(beta2, double(step));
  return {maximize ? -1.0 : 1.0, 1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2, lr / bc1, std::sqrt(bc2), eps};
}

void adamw_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int64_t step, bool maximize) {
  const char* op = "adamw_step_";
  check_same_float(op, {{"param", &param}, {"grad", &grad}, {"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}});
  if (needs_grad({&param, &grad, &exp_avg, &exp_avg_sq}))
    fail("[", op, "] updates ", param.desc(), " in place without autograd; call it under NoGradGuard");
  if (grad.shape() != param.shape() || exp_avg.shape() != param.shape() || exp_avg_sq.shape() != param.shape())
    fail("[", op, "] needs one shape, got param ", param.desc(), ", grad ", grad.desc(), ", exp_avg ",
         exp_avg.desc(), ", exp_avg_sq ", exp_avg_sq.desc());
  if (!param.is_contiguous() || !exp_avg.is_contiguous() || !exp_avg_sq.is_contiguous())
    fail("[", op, "] writes param, exp_avg and exp_avg_sq in place and needs them contiguous (param ",
         param.desc(), ")");
  if (step < 1) fail("[", op, "] step counts from 1, got ", step, " (param ", param.desc(), ")");
  if (param.is_meta()) return;
  backend(param.device())
      .adamw_step(param, contiguous_raw(grad), exp_avg, exp_avg_sq,
                  adamw_constants(lr, beta1, beta2, eps, weight_decay, step, maximize));
}

}  // namespace peft
