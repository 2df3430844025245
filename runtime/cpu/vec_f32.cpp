// See vec_f32.h. Built with -ffp-contract=off (runtime/meson.build): an FMA
// would round differently from the baseline loop, and a tensor must give the
// same bits whatever its layout or the CPU's vector width.
#include "runtime/cpu/vec_f32.h"

#include <algorithm>
#include <cmath>

#include "runtime/cpu/math_f32.h"

// Not under TSan: the loader runs the clones' ifunc resolver, instrumented, before TSan is up.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define PEFT_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PEFT_VEC_CLONES
#endif

namespace peft::cpu {

namespace {
typedef float v8 __attribute__((vector_size(32)));
inline __attribute__((always_inline)) v8 load8(const float* p) {
  v8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace

int64_t packed8_size(int64_t K, int64_t N) { return (N + 7) / 8 * K * 8; }

namespace {
// MM activation rows x R weight rows at a time, at compile time: R concurrent weight streams
// (more memory-level parallelism than one row after another) and the accumulators in registers.
template <int MM, int R>
inline __attribute__((always_inline)) void gemv_block_t(int64_t n, int64_t K, const float* W, int64_t ldw,
                                                       const float* X, int64_t ldx, float alpha, float beta, float* Y,
                                                       int64_t ldy) {
  const int64_t K8 = K / 8 * 8;
  v8 acc[MM][R];
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = v8{};
  for (int64_t k = 0; k < K8; k += 8) {
    v8 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load8(W + (n + r) * ldw + k);
    for (int m = 0; m < MM; ++m) {
      const v8 xv = load8(X + m * ldx + k);
      for (int r = 0; r < R; ++r) acc[m][r] += wv[r] * xv;
    }
  }
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < R; ++r) {
      const float* w = W + (n + r) * ldw;
      float s = 0;
      for (int j = 0; j < 8; ++j) s += acc[m][r][j];
      for (int64_t k = K8; k < K; ++k) s += w[k] * X[m * ldx + k];
      float& y = Y[m * ldy + n + r];
      y = beta == 0.f ? alpha * s : alpha * s + beta * y;
    }
}

template <int MM>
inline __attribute__((always_inline)) void gemv_rows_t(int64_t n0, int64_t n1, int64_t K, const float* W, int64_t ldw,
                                                      const float* X, int64_t ldx, float alpha, float beta, float* Y,
                                                      int64_t ldy, int64_t prefetch) {
  const char* end = reinterpret_cast<const char*>(W + n1 * ldw);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    if (prefetch > 0) {
      const char* ahead = reinterpret_cast<const char*>(W + n * ldw) + prefetch;
      for (int64_t c = 0; c < 4 * K * int64_t(sizeof(float)) && ahead + c < end; c += 64) __builtin_prefetch(ahead + c, 0, 3);
    }
    gemv_block_t<MM, 4>(n, K, W, ldw, X, ldx, alpha, beta, Y, ldy);
  }
  for (; n < n1; ++n) gemv_block_t<MM, 1>(n, K, W, ldw, X, ldx, alpha, beta, Y, ldy);
}
}  // namespace

PEFT_VEC_CLONES
void gemv_rows_f32(int64_t n0, int64_t n1, int64_t K, const float* W, int64_t ldw, int64_t M, const float* X,
                   int64_t ldx, float alpha, float beta, float* Y, int64_t ldy, int64_t prefetch) {
  switch (M) {
    case 1: return gemv_rows_t<1>(n0, n1, K, W, ldw, X, ldx, alpha, beta, Y, ldy, prefetch);
    case 2: return gemv_rows_t<2>(n0, n1, K, W, ldw, X, ldx, alpha, beta, Y, ldy, prefetch);
    case 3: return gemv_rows_t<3>(n0, n1, K, W, ldw, X, ldx, alpha, beta, Y, ldy, prefetch);
    default: return gemv_rows_t<4>(n0, n1, K, W, ldw, X, ldx, alpha, beta, Y, ldy, prefetch);
  }
}

void pack8_f32(int64_t K, int64_t N, const float* B, int64_t sbk, int64_t sbn, float* out) {
  const int64_t blocks = (N + 7) / 8;
  for (int64_t bl = 0; bl < blocks; ++bl)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < 8; ++j) {
        const int64_t jj = bl * 8 + j;
        out[(bl * K + k) * 8 + j] = jj < N ? B[k * sbk + jj * sbn] : 0.f;
      }
}

PEFT_VEC_CLONES
void gemm_packed8_f32(int64_t row0, int64_t row1, int64_t N, int64_t K, float alpha, const float* X, int64_t sxi,
                      int64_t sxk, const float* packed, float beta, float* C, int64_t ldc) {
  const int64_t blocks = (N + 7) / 8;
  for (int64_t i0 = row0; i0 < row1; i0 += 8) {
    const int nr = int(std::min<int64_t>(8, row1 - i0));
    const float* xr[8];  // rows past the end repeat the last one; their sums are not stored
    for (int r = 0; r < 8; ++r) xr[r] = X + (i0 + std::min(r, nr - 1)) * sxi;
    for (int64_t bl = 0; bl < blocks; ++bl) {
      const float* bp = packed + bl * K * 8;
      const int nj = int(std::min<int64_t>(8, N - bl * 8));
      // k in chunks of 128 summed into a total: rounding error like a blocked sgemm's,
      // not like one running sum over K
      v8 tot[8] = {};
      for (int64_t k0 = 0; k0 < K; k0 += 128) {
        const int64_t k1 = std::min(K, k0 + 128);
        v8 acc[8] = {};
        for (int64_t k = k0; k < k1; ++k) {
          const v8 b = load8(bp + k * 8);
          const int64_t o = k * sxk;
          acc[0] += xr[0][o] * b;
          acc[1] += xr[1][o] * b;
          acc[2] += xr[2][o] * b;
          acc[3] += xr[3][o] * b;
          acc[4] += xr[4][o] * b;
          acc[5] += xr[5][o] * b;
          acc[6] += xr[6][o] * b;
          acc[7] += xr[7][o] * b;
        }
        for (int r = 0; r < 8; ++r) tot[r] += acc[r];
      }
      for (int r = 0; r < nr; ++r) {
        float* c = C + (i0 + r) * ldc + bl * 8;
        for (int j = 0; j < nj; ++j) {
          const float v = alpha == 1.f ? tot[r][j] : alpha * tot[r][j];
          c[j] = beta == 0.f ? v : v + beta * c[j];
        }
      }
    }
  }
}

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
    case UnaryKind::gelu_tanh: for (int64_t i = 0; i < n; ++i) o[i] = gelu_tanh_f32(a[i]); return true;
    case UnaryKind::exp: for (int64_t i = 0; i < n; ++i) o[i] = exp_f32(a[i]); return true;
    case UnaryKind::erf: for (int64_t i = 0; i < n; ++i) o[i] = erf_f32(a[i]); return true;
    case UnaryKind::gelu: for (int64_t i = 0; i < n; ++i) o[i] = gelu_f32(a[i]); return true;
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
    case BinaryKind::tanh_grad: for (int64_t i = 0; i < n; ++i) o[i] = x[i] * (1.0f - y[i] * y[i]); return true;
    case BinaryKind::gelu_tanh_grad:
      for (int64_t i = 0; i < n; ++i) o[i] = gelu_tanh_grad_f32(x[i], y[i]);
      return true;
    case BinaryKind::gelu_grad:
      for (int64_t i = 0; i < n; ++i) o[i] = gelu_grad_f32(x[i], y[i]);
      return true;
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
void lora_update_f32(int64_t M, int64_t in, int64_t r, int64_t out, const float* x, const float* A, const float* bt,
                     float s, float* y) {
  float t[64];
  for (int64_t i = 0; i < M; ++i) {
    const float* xi = x + i * in;
    for (int64_t j = 0; j < r; ++j) {
      const float* aj = A + j * in;
      float lanes[16] = {};  // explicit lanes: the same sum on every ISA
      int64_t k = 0;
      for (; k + 16 <= in; k += 16)
        for (int l = 0; l < 16; ++l) lanes[l] += xi[k + l] * aj[k + l];
      for (int l = 0; k + l < in; ++l) lanes[l] += xi[k + l] * aj[k + l];
      for (int l = 0; l < 8; ++l) lanes[l] += lanes[l + 8];
      t[j] = s * (((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7])));
    }
    float* yi = y + i * out;
    for (int64_t j = 0; j < r; ++j) {
      const float tj = t[j];
      const float* bj = bt + j * out;
      for (int64_t o = 0; o < out; ++o) yi[o] += tj * bj[o];
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
