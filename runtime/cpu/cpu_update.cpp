// CpuBackend's in-place update kernels (ops_update.cpp): LoRA's inference update and the
// AdamW step.
#include <cmath>
#include <vector>

#include "runtime/cpu/cpu_backend.h"
#include "runtime/ops.h"
#include "runtime/cpu/vec_f32.h"

namespace peft::cpu {
namespace {

constexpr int64_t kTinyLoraMacs = 1 << 16;
constexpr int64_t kTinyMaxRank = 64;

// float64 twin of cpu::adamw_f32 (runtime/cpu/vec_f32.cpp)
void adamw_loop_f64(double* p, const double* g, double* m, double* v, int64_t n, const AdamWConstants& c) {
  const bool lerp_lo = c.w1 < 0.5;
  for (int64_t i = 0; i < n; ++i) {
    const double gi = c.sign * g[i];
    // torch.lerp: weight < 0.5 ? self + w*(end-self) : end - (end-self)*(1-w)
    const double mi = lerp_lo ? m[i] + c.w1 * (gi - m[i]) : gi - (gi - m[i]) * (1.0 - c.w1);
    const double vi = v[i] * c.beta2 + c.w2 * gi * gi;  // mul_(b2).addcmul_(g, g, value=1-b2)
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * c.decay - c.step_size * (mi / (std::sqrt(vi) / c.bc2_sqrt + c.eps));
  }
}

}  // namespace

// y += s·(x·Aᵀ)·Bᵀ as two products, the second accumulating into y (beta = 1): no [M, out]
// temporary and no separate add (docs/perf-notes.md).
void CpuBackend::lora_linear_update(Tensor& y, const Tensor& x, const Tensor& wa, const Tensor& wb, double s) {
  const int64_t M = x.size(0), in = x.size(1), r = wa.size(0), out = wb.size(0);
  if (y.dtype() == DType::float32 && M * r * (in + out) <= kTinyLoraMacs && r <= kTinyMaxRank &&
      x.is_contiguous() && wa.is_contiguous() && wb.is_contiguous()) {
    // Tiny products: plain loops beat two sgemm calls' dispatch (about 1 µs each).
    const float* xp = x.data_ptr<float>();
    const float* ap = wa.data_ptr<float>();
    const float* bp = wb.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    // Bᵀ [r, out] so the second product runs along contiguous rows of y
    thread_local std::vector<float> bt;
    bt.resize(size_t(r * out));
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j) bt[size_t(j * out + o)] = bp[o * r + j];
    cpu::lora_update_f32(M, in, r, out, xp, ap, bt.data(), float(s), yp);
    return;
  }
  Tensor t = make_tensor({M, r}, y.dtype(), Device::cpu);
  // Aᵀ and Bᵀ as views (the kernels sit below the ops, so no transpose op)
  gemm(x, make_view(wa, {in, r}, {wa.stride(1), wa.stride(0)}, wa.offset()), t, 1.0, 0.0);
  gemm(t, make_view(wb, {r, out}, {wb.stride(1), wb.stride(0)}, wb.offset()), y, s, 1.0);
}

void CpuBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                            const AdamWConstants& c) {
  if (param.dtype() == DType::float32)
    cpu::adamw_f32(param.data_ptr<float>(), grad.data_ptr<float>(), exp_avg.data_ptr<float>(),
                   exp_avg_sq.data_ptr<float>(), param.numel(), float(c.sign), float(c.decay), float(c.w1),
                   float(c.beta2), float(c.w2), float(c.step_size), float(c.bc2_sqrt), float(c.eps));
  else
    adamw_loop_f64(param.data_ptr<double>(), grad.data_ptr<double>(), exp_avg.data_ptr<double>(),
                   exp_avg_sq.data_ptr<double>(), param.numel(), c);
}

}  // namespace peft::cpu
