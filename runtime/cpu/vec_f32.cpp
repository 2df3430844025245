// See vec_f32.h. Built with -ffp-contract=off (runtime/meson.build): an FMA
// would round differently from the baseline loop, and a tensor must give the
// same bits whatever its layout or the CPU's vector width.
#include "runtime/cpu/vec_f32.h"

#include <cmath>

#include "runtime/cpu/math_f32.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PEFT_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PEFT_VEC_CLONES
#endif

namespace peft::cpu {

PEFT_VEC_CLONES
bool unary_f32(UnaryKind k, float* o, const float* a, int64_t n, float s0, float s1) {
  const float c = s0;
  switch (k) {
    case UnaryKind::neg: for (int64_t i = 0; i < n; ++i) o[i] = -a[i]; return true;
    case UnaryKind::abs: for (int64_t i = 0; i < n; ++i) o[i] = a[i] < 0.f ? -a[i] : a[i]; return true;
    case UnaryKind::relu: for (int64_t i = 0; i < n; ++i) o[i] = a[i] > 0.f ? a[i] : 0.f; return true;
    case UnaryKind::add_scalar: for (int64_t i = 0; i < n; ++i) o[i] = a[i] + c; return true;
    case UnaryKind::mul_scalar: for (int64_t i = 0; i < n; ++i) o[i] = a[i] * c; return true;
    case UnaryKind::div_scalar: for (int64_t i = 0; i < n; ++i) o[i] = a[i] / c; return true;
    case UnaryKind::rsub_scalar: for (int64_t i = 0; i < n; ++i) o[i] = c - a[i]; return true;
    case UnaryKind::rdiv_scalar: for (int64_t i = 0; i < n; ++i) o[i] = c / a[i]; return true;
    case UnaryKind::clamp:
      for (int64_t i = 0; i < n; ++i) o[i] = a[i] < c ? c : (a[i] > s1 ? s1 : a[i]);
      return true;
    case UnaryKind::sqrt: for (int64_t i = 0; i < n; ++i) o[i] = std::sqrt(a[i]); return true;
    case UnaryKind::rsqrt: for (int64_t i = 0; i < n; ++i) o[i] = 1.f / std::sqrt(a[i]); return true;
    case UnaryKind::tanh: for (int64_t i = 0; i < n; ++i) o[i] = tanh_f32(a[i]); return true;
    case UnaryKind::exp: for (int64_t i = 0; i < n; ++i) o[i] = exp_f32(a[i]); return true;
    case UnaryKind::pow_scalar:
      if (s0 == 2.f) {
        for (int64_t i = 0; i < n; ++i) o[i] = a[i] * a[i];
        return true;
      }
      return false;
    default: return false;
  }
}

PEFT_VEC_CLONES
bool binary_f32(BinaryKind k, float* o, const float* x, const float* y,
                int64_t n) {
  switch (k) {
    case BinaryKind::add: for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i]; return true;
    case BinaryKind::sub: for (int64_t i = 0; i < n; ++i) o[i] = x[i] - y[i]; return true;
    case BinaryKind::mul: for (int64_t i = 0; i < n; ++i) o[i] = x[i] * y[i]; return true;
    case BinaryKind::div: for (int64_t i = 0; i < n; ++i) o[i] = x[i] / y[i]; return true;
    default: return false;
  }
}

PEFT_VEC_CLONES
bool binary_scalar_f32(BinaryKind k, float* o, const float* x, float y, int64_t n) {
  switch (k) {
    case BinaryKind::add: for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y; return true;
    case BinaryKind::sub: for (int64_t i = 0; i < n; ++i) o[i] = x[i] - y; return true;
    case BinaryKind::mul: for (int64_t i = 0; i < n; ++i) o[i] = x[i] * y; return true;
    case BinaryKind::div: for (int64_t i = 0; i < n; ++i) o[i] = x[i] / y; return true;
    default: return false;
  }
}

PEFT_VEC_CLONES
void adamw_f32(float* p, const float* g, float* m, float* v, int64_t n, float sign, float decay, float w1,
               float beta2, float w2, float step_size, float bc2_sqrt, float eps) {
  // torch.lerp: weight < 0.5 ? self + w*(end-self) : end - (end-self)*(1-w); two loops so
  // neither has a branch
  if (w1 < 0.5f) {
    for (int64_t i = 0; i < n; ++i) {
      const float gi = sign * g[i];
      const float mi = m[i] + w1 * (gi - m[i]);
      const float vi = v[i] * beta2 + w2 * gi * gi;  // mul_(b2).addcmul_(g, g, value=1-b2)
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
    }
  } else {
    const float w1c = 1.0f - w1;
    for (int64_t i = 0; i < n; ++i) {
      const float gi = sign * g[i];
      const float mi = gi - (gi - m[i]) * w1c;
      const float vi = v[i] * beta2 + w2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
    }
  }
}

PEFT_VEC_CLONES
double exp_shifted_f32(const float* x, float* y, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) y[i] = exp_f32(x[i] - shift);
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // fixed order: the same sum on every ISA
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += double(y[i + l]);
  for (; i < n; ++i) lanes[0] += double(y[i]);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

}  // namespace peft::cpu
