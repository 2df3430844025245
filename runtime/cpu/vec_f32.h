// Contiguous float32 elementwise loops, compiled for several x86-64 levels
// (AVX-512, AVX2, baseline) and picked once when the library loads, so one
// portable binary runs the widest vectors the CPU has (the rest of the library
// is built for baseline x86-64). Each returns false when it has no loop for the
// kind; the caller then runs its generic strided loop, which gives the same bits.
#pragma once
#include <cstdint>

#include "runtime/backend.h"

namespace peft::cpu {

// out[i] = k(a[i]) with the scalars s0, s1 of the kind (add_scalar's s0, clamp's bounds).
bool unary_f32(UnaryKind k, float* out, const float* a, int64_t n, float s0, float s1);
// out[i] = x[i] k y[i]
bool binary_f32(BinaryKind k, float* out, const float* x, const float* y, int64_t n);
// out[i] = x[i] k y
bool binary_scalar_f32(BinaryKind k, float* out, const float* x, float y, int64_t n);

// One AdamW update of n float32 parameters in place (PyTorch's formulas, as
// nn::AdamW documents them): decay = 1 - lr·wd, w1 = 1 - beta1 (m follows torch.lerp),
// step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t); sign = -1 maximizes.
void adamw_f32(float* p, const float* g, float* m, float* v, int64_t n, float sign, float decay, float w1,
               float beta2, float w2, float step_size, float bc2_sqrt, float eps);

// y[i] = e^(x[i] - shift) for softmax rows; returns the sum of y in float64.
double exp_shifted_f32(const float* x, float* y, int64_t n, float shift);

}  // namespace peft::cpu
