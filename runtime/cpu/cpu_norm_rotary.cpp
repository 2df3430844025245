// CPU kernels of layer_norm, rms_norm and rotary embeddings (cpu_transformer.h): the norms
// as one pass per row (statistics, then normalise + affine) with fused backwards whose
// dweight/dbias are reduced over rows through per-thread partial sums; rotary embeddings
// read through any strides.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "runtime/cpu/cpu_transformer.h"
#include "runtime/cpu/dtype_dispatch.h"
#include "runtime/cpu/loops.h"
#include "runtime/half.h"

#define PEFT_TX_INLINE inline __attribute__((always_inline))

namespace peft::cpu {

namespace {

// Rounds v to dtype `rt` and back (LlamaRMSNorm's hidden_states.to(input_dtype)).
template <class T, int R>
PEFT_TX_INLINE T round_as(T v) {
  if constexpr (R == 1) return T(float(v));
  if constexpr (R == 2) return T(bf16_to_float(float_to_bf16(float(v))));
  if constexpr (R == 3) return T(f16_to_float(float_to_f16(float(v))));
  return v;
}
template <class T, class F>
void dispatch_round(int mode, F&& f) {
  switch (mode) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

// Splits `rows` into parts of whole rows, one per thread, for kernels that keep per-thread
// partial sums.
int threads_for_rows(int64_t rows, int64_t N) {
  if (omp_in_parallel()) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(num_threads_for(rows * N), rows)));
}

}  // namespace

// ---------------------------------------------------------------------------
// layer_norm

void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& out,
                Tensor& mean, Tensor& rstd) {
  const int64_t rows = x.size(0), N = x.size(1);
  dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* w = weight.defined() ? weight.data_ptr<T>() : nullptr;
    const T* b = bias.defined() ? bias.data_ptr<T>() : nullptr;
    T* y = out.data_ptr<T>();
    T* mp = mean.data_ptr<T>();
    T* rp = rstd.data_ptr<T>();
    auto row = [&](int64_t r) {
      const T* xr = xp + r * N;
      T* yr = y + r * N;
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < N; ++j) s += double(xr[j]);
      const double mu = s / double(N);
      double v = 0;
#pragma omp simd reduction(+ : v)
      for (int64_t j = 0; j < N; ++j) {
        const double d = double(xr[j]) - mu;
        v += d * d;
      }
      const double rs = 1.0 / std::sqrt(v / double(N) + eps);
      mp[r] = T(mu);
      rp[r] = T(rs);
      const T m = T(mu), rr = T(rs);
      if (w && b) {
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rr * w[j] + b[j];
      } else if (w) {
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rr * w[j];
      } else if (b) {
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rr + b[j];
      } else {
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rr;
      }
    };
    const int nt = threads_for_rows(rows, N);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) row(r);
  });
}

void layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) {
  const int64_t rows = x.size(0), N = x.size(1);
  dispatch_float(x.dtype(), "layer_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = grad.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    const T* w = weight.defined() ? weight.data_ptr<T>() : nullptr;
    const T* mp = mean.data_ptr<T>();
    const T* rp = rstd.data_ptr<T>();
    T* dxp = dx.defined() ? dx.data_ptr<T>() : nullptr;
    const bool want_w = dweight.defined(), want_b = dbias.defined();
    const int nt = threads_for_rows(rows, N);
    // per-thread partial sums of g·x̂ and g over their rows, in float64
    std::vector<double> part(size_t(nt) * size_t(N) * 2, 0.0);
    auto range = [&](int t) {
      const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
      double* pw = part.data() + size_t(t) * size_t(N) * 2;
      double* pb = pw + N;
      for (int64_t r = r0; r < r1; ++r) {
        const T* gr = gp + r * N;
        const T* xr = xp + r * N;
        const T m = mp[r], rs = rp[r];
        if (want_w)
          for (int64_t j = 0; j < N; ++j) pw[j] += double(gr[j]) * double((xr[j] - m) * rs);
        if (want_b)
          for (int64_t j = 0; j < N; ++j) pb[j] += double(gr[j]);
        if (!dxp) continue;
        // dx = rstd·(gw - mean(gw) - x̂·mean(gw·x̂)), gw = g·w
        double a = 0, c = 0;
        if (w) {
#pragma omp simd reduction(+ : a, c)
          for (int64_t j = 0; j < N; ++j) {
            const double gw = double(gr[j]) * double(w[j]);
            a += gw;
            c += gw * double((xr[j] - m) * rs);
          }
        } else {
#pragma omp simd reduction(+ : a, c)
          for (int64_t j = 0; j < N; ++j) {
            a += double(gr[j]);
            c += double(gr[j]) * double((xr[j] - m) * rs);
          }
        }
        const T ma = T(a / double(N)), mc = T(c / double(N));
        T* d = dxp + r * N;
        if (w) {
          for (int64_t j = 0; j < N; ++j) d[j] = rs * (gr[j] * w[j] - ma - (xr[j] - m) * rs * mc);
        } else {
          for (int64_t j = 0; j < N; ++j) d[j] = rs * (gr[j] - ma - (xr[j] - m) * rs * mc);
        }
      }
    };
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
    for (int t = 0; t < nt; ++t) range(t);
    for (int k = 0; k < 2; ++k) {
      if (!(k == 0 ? want_w : want_b)) continue;
      T* o = (k == 0 ? dweight : dbias).data_ptr<T>();
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int t = 0; t < nt; ++t) s += part[size_t(t) * size_t(N) * 2 + size_t(k) * size_t(N) + size_t(j)];
        o[j] = T(s);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// rms_norm

void rms_norm(const Tensor& x, const Tensor& weight, double eps, DType round_to, bool ggml_rstd, Tensor& out, Tensor& rstd) {
  const int64_t rows = x.size(0), N = x.size(1);
  dispatch_float(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    dispatch_round<T>(round_mode<T>(round_to), [&](auto rm) {
      constexpr int R = decltype(rm)::value;
      const T* xp = x.data_ptr<T>();
      const T* w = weight.defined() ? weight.data_ptr<T>() : nullptr;
      T* y = out.data_ptr<T>();
      T* rp = rstd.data_ptr<T>();
      const int nt = threads_for_rows(rows, N);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
      for (int64_t r = 0; r < rows; ++r) {
        const T* xr = xp + r * N;
        T* yr = y + r * N;
        double s = 0;
        T rs;
        if (std::is_same_v<T, float> && ggml_rstd) {
          // llama.cpp's float32 formula, in its order (ggml_compute_forward_rms_norm_f32)
          for (int64_t j = 0; j < N; ++j) s += double(float(xr[j] * xr[j]));
          const float mean = float(s / double(N));
          rs = T(1.0f / std::sqrt(mean + float(eps)));
        } else {
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < N; ++j) s += double(xr[j]) * double(xr[j]);
          rs = T(1.0 / std::sqrt(s / double(N) + eps));
        }
        rp[r] = rs;
        if (w) {
          for (int64_t j = 0; j < N; ++j) yr[j] = round_as<T, R>(xr[j] * rs) * w[j];
        } else {
          for (int64_t j = 0; j < N; ++j) yr[j] = round_as<T, R>(xr[j] * rs);
        }
      }
    });
  });
}

void rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                       DType round_to, Tensor& dx, Tensor& dweight) {
  const int64_t rows = x.size(0), N = x.size(1);
  dispatch_float(x.dtype(), "rms_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    dispatch_round<T>(round_mode<T>(round_to), [&](auto rm) {
      constexpr int R = decltype(rm)::value;
      const T* gp = grad.data_ptr<T>();
      const T* xp = x.data_ptr<T>();
      const T* w = weight.defined() ? weight.data_ptr<T>() : nullptr;
      const T* rp = rstd.data_ptr<T>();
      T* dxp = dx.defined() ? dx.data_ptr<T>() : nullptr;
      const bool want_w = dweight.defined();
      const int nt = threads_for_rows(rows, N);
      std::vector<double> part(want_w ? size_t(nt) * size_t(N) : 0, 0.0);
      auto range = [&](int t) {
        const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        double* pw = want_w ? part.data() + size_t(t) * size_t(N) : nullptr;
        for (int64_t r = r0; r < r1; ++r) {
          const T* gr = gp + r * N;
          const T* xr = xp + r * N;
          const T rs = rp[r];
          if (pw)
            for (int64_t j = 0; j < N; ++j) pw[j] += double(gr[j]) * double(round_as<T, R>(xr[j] * rs));
          if (!dxp) continue;
          // dx = rstd·(gw - x̂·mean(gw·x̂)), gw = g·w, x̂ = x·rstd
          double c = 0;
          if (w) {
#pragma omp simd reduction(+ : c)
            for (int64_t j = 0; j < N; ++j) c += double(gr[j]) * double(w[j]) * double(xr[j] * rs);
          } else {
#pragma omp simd reduction(+ : c)
            for (int64_t j = 0; j < N; ++j) c += double(gr[j]) * double(xr[j] * rs);
          }
          const T mc = T(c / double(N));
          T* d = dxp + r * N;
          if (w) {
            for (int64_t j = 0; j < N; ++j) d[j] = rs * (gr[j] * w[j] - xr[j] * rs * mc);
          } else {
            for (int64_t j = 0; j < N; ++j) d[j] = rs * (gr[j] - xr[j] * rs * mc);
          }
        }
      };
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
      for (int t = 0; t < nt; ++t) range(t);
      if (want_w) {
        T* o = dweight.data_ptr<T>();
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int t = 0; t < nt; ++t) s += part[size_t(t) * size_t(N) + size_t(j)];
          o[j] = T(s);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------
// rotary embedding

void rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin, bool transpose, Tensor& out) {
  const int64_t B = x.size(0), H = x.size(1), T_ = x.size(2), D = x.size(3), half = D / 2;
  dispatch_float(x.dtype(), "rotary_embedding", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* cp = cos.data_ptr<T>();
    const T* sp = sin.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const int64_t xb = x.stride(0), xh = x.stride(1), xt = x.stride(2), xd = x.stride(3);
    const int64_t cb = cos.stride(0), ct = cos.stride(1), cd = cos.stride(2);
    const int64_t sb = sin.stride(0), st = sin.stride(1), sd = sin.stride(2);
    const bool unit = xd == 1 && cd == 1 && sd == 1;
    const int64_t rows = B * H * T_;
    const int nt = omp_in_parallel() ? 1 : num_threads_for(rows * D);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = r % T_, h = (r / T_) % H, b = r / (T_ * H);
      const T* xr = xp + b * xb + h * xh + t * xt;
      const T* c = cp + b * cb + t * ct;
      const T* s = sp + b * sb + t * st;
      T* o = op + r * D;
      if (unit) {
        const T *x1 = xr, *x2 = xr + half;
        if (!transpose) {
          for (int64_t i = 0; i < half; ++i) o[i] = x1[i] * c[i] - x2[i] * s[i];
          for (int64_t i = 0; i < half; ++i) o[half + i] = x2[i] * c[half + i] + x1[i] * s[half + i];
        } else {
          for (int64_t i = 0; i < half; ++i) o[i] = x1[i] * c[i] + x2[i] * s[half + i];
          for (int64_t i = 0; i < half; ++i) o[half + i] = x2[i] * c[half + i] - x1[i] * s[i];
        }
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const T a = xr[i * xd], bb = xr[(half + i) * xd];
          const T c1 = c[i * cd], c2 = c[(half + i) * cd], s1 = s[i * sd], s2 = s[(half + i) * sd];
          if (!transpose) {
            o[i] = a * c1 - bb * s1;
            o[half + i] = bb * c2 + a * s2;
          } else {
            o[i] = a * c1 + bb * s2;
            o[half + i] = bb * c2 - a * s1;
          }
        }
      }
    }
  });
}

}  // namespace peft::cpu
