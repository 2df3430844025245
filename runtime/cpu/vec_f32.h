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

// Products with few output columns (LoRA's x·Aᵀ and g·B at rank r <= 16), where
// sgemm libraries reach a third of their speed: B[k, j] (any strides) is packed as
// [ceil(N/8)][K][8] once, then 8-row x 8-column register blocks accumulate over k in
// order (the same sum on every ISA). C[i, j] = alpha·Σ_k X[i·sxi + k·sxk]·B[k, j]
// + beta·C[i, j] for rows [row0, row1) of C (ldc), so threads can split rows.
int64_t packed8_size(int64_t K, int64_t N);
void pack8_f32(int64_t K, int64_t N, const float* B, int64_t sbk, int64_t sbn, float* packed);
void gemm_packed8_f32(int64_t row0, int64_t row1, int64_t N, int64_t K, float alpha, const float* X, int64_t sxi,
                      int64_t sxk, const float* packed, float beta, float* C, int64_t ldc);

// y[i, :] += s·(x[i, :]·Aᵀ)·Bᵀ for LoRA's inference forward at tiny sizes, where two
// sgemm calls' dispatch costs more than the arithmetic. x [M, in], A [r, in], y [M, out]
// contiguous; bt is Bᵀ [r, out] (B is [out, r]); r <= 64.
void lora_update_f32(int64_t M, int64_t in, int64_t r, int64_t out, const float* x, const float* A, const float* bt,
                     float s, float* y);

// Matrix-vector products for a few activation rows (a decoder's one token per step), where
// sgemm is latency-bound on the weight stream: Y[m·ldy + n] = alpha·Σ_k W[n·ldw + k]·X[m·ldx + k]
// (+ beta·Y) for n in [n0, n1), m < M <= 4. Each weight row is read once for every m, the rows
// `prefetch` bytes ahead are requested into L1 first, and the sum runs in 8-lane blocks in k
// order (the same bits on every ISA).
void gemv_rows_f32(int64_t n0, int64_t n1, int64_t K, const float* W, int64_t ldw, int64_t M, const float* X,
                   int64_t ldx, float alpha, float beta, float* Y, int64_t ldy, int64_t prefetch);

// y[i] = e^(x[i] - shift) for softmax rows; returns the sum of y in float64.
double exp_shifted_f32(const float* x, float* y, int64_t n, float shift);

}  // namespace peft::cpu
