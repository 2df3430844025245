// CpuBackend's elementwise kernels: copy (dtype-converting, tiled for transposes), fill,
// unary, binary and where, as strided loops (loops.h) with contiguous float32 runs handed
// to vec_f32.h.
#include <array>
#include <cmath>
#include <cstring>

#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/dtype_dispatch.h"
#include "runtime/cpu/loops.h"
#include "runtime/cpu/math_f32.h"
#include "runtime/cpu/vec_f32.h"
#include "runtime/scalar_math.h"

namespace peft::cpu {
namespace {

// The CPU's Math policy for the shared formulas (runtime/scalar_math.h): float32 exp, tanh,
// erf, gelu and gelu_tanh from math_f32.h, the same bits as the vectorised loops on every layout.
struct CpuMath {
  template <class T>
  static T exp(T x) {
    if constexpr (std::is_same_v<T, float>) return exp_f32(x);
    else return std::exp(x);
  }
  template <class T>
  static T tanh(T x) {
    if constexpr (std::is_same_v<T, float>) return tanh_f32(x);
    else return std::tanh(x);
  }
  template <class T>
  static T erf(T x) {
    if constexpr (std::is_same_v<T, float>) return erf_f32(x);
    else return std::erf(x);
  }
  template <class T>
  static T gelu(T x) {
    if constexpr (std::is_same_v<T, float>) return gelu_f32(x);
    else return scalar::gelu(x);
  }
  template <class T>
  static T gelu_grad(T g, T x) {
    if constexpr (std::is_same_v<T, float>) return gelu_grad_f32(g, x);
    else return scalar::gelu_grad(g, x);
  }
  template <class T>
  static T gelu_tanh(T x) {
    if constexpr (std::is_same_v<T, float>) return gelu_tanh_f32(x);
    else return scalar::gelu_tanh(x);
  }
  template <class T>
  static T gelu_tanh_grad(T g, T x) {
    if constexpr (std::is_same_v<T, float>) return gelu_tanh_grad_f32(g, x);
    else return scalar::gelu_tanh_grad(g, x);
  }
};

template <class T>
inline T unary_value(UnaryKind k, T x, double s0, double s1) {
  return scalar::unary_value<T, CpuMath>(k, x, s0, s1);
}
template <class T>
inline T binary_value(BinaryKind k, T a, T b) {
  return scalar::binary_value<T, CpuMath>(k, a, b);
}
using scalar::compare_value;
using scalar::predicate_value;

inline bool is_predicate(UnaryKind k) { return k >= UnaryKind::isfinite; }

inline bool is_compare(BinaryKind k) { return k >= BinaryKind::eq; }

// Copies where dst is contiguous along the innermost dim but src is contiguous along
// another one (a transpose being materialised) go tile by tile, so both sides stay in
// cache; element-by-element they run at a few hundred MB/s.
template <class S, class D>
bool tiled_copy(const Tensor& src, Tensor& dst) {
  const int64_t es = int64_t(sizeof(S)), ed = int64_t(sizeof(D));
  cpu::LoopPlan<2> p = cpu::make_plan<2>(dst.shape(), {&dst.strides(), &src.strides()}, {ed, es});
  if (p.ndim < 2) return false;
  const int last = p.ndim - 1;
  if (p.stride[0][size_t(last)] != ed || p.stride[1][size_t(last)] == es) return false;
  int j = -1;
  for (int d = last - 1; d >= 0; --d)
    if (p.stride[1][size_t(d)] == es) {
      j = d;
      break;
    }
  if (j < 0) return false;
  const int64_t ni = p.size[size_t(last)], nj = p.size[size_t(j)];
  if (ni < 8 || nj < 8) return false;
  // 16x16 tiles through a local buffer: every source and destination cache line is
  // touched once per tile (power-of-two strides would otherwise thrash L1 sets).
  constexpr int64_t B = 16;
  const int64_t ti = (ni + B - 1) / B, tj = (nj + B - 1) / B;
  int64_t n_outer = 1;
  for (int d = 0; d < last; ++d)
    if (d != j) n_outer *= p.size[size_t(d)];
  char* dbase = static_cast<char*>(dst.raw_data());
  const char* sbase = static_cast<const char*>(src.raw_data());
  const int64_t sdi = p.stride[0][size_t(last)], sdj = p.stride[0][size_t(j)];
  const int64_t ssi = p.stride[1][size_t(last)], ssj = p.stride[1][size_t(j)];
  const int64_t items = n_outer * tj * ti;
  const int nt = cpu::num_threads_for(n_outer * ni * nj);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t it = 0; it < items; ++it) {
    int64_t o = it / (tj * ti), t = it % (tj * ti);
    const int64_t i0 = (t / tj) * B, j0 = (t % tj) * B;  // j fastest: source pages reused
    int64_t doff = 0, soff = 0;
    for (int d = last - 1; d >= 0; --d) {
      if (d == j) continue;
      const int64_t idx = o % p.size[size_t(d)];
      o /= p.size[size_t(d)];
      doff += idx * p.stride[0][size_t(d)];
      soff += idx * p.stride[1][size_t(d)];
    }
    const int64_t nj_t = std::min(nj, j0 + B) - j0, ni_t = std::min(ni, i0 + B) - i0;
    D tmp[B][B];
    for (int64_t i = 0; i < ni_t; ++i) {
      const S* sp = reinterpret_cast<const S*>(sbase + soff + (i0 + i) * ssi + j0 * ssj);
      for (int64_t jj = 0; jj < nj_t; ++jj) tmp[jj][i] = convert<S, D>(sp[jj]);
    }
    for (int64_t jj = 0; jj < nj_t; ++jj) {
      D* dp = reinterpret_cast<D*>(dbase + doff + (j0 + jj) * sdj + i0 * sdi);
      for (int64_t i = 0; i < ni_t; ++i) dp[i] = tmp[jj][i];
    }
  }
  return true;
}

}  // namespace

void CpuBackend::copy(const Tensor& src, Tensor& dst) {
  if (is_quantized(src.dtype()) || is_quantized(dst.dtype())) {
    // clone() of block storage: whole contiguous tensors of one format only
    if (src.dtype() != dst.dtype() || !src.is_contiguous() || !dst.is_contiguous() || src.shape() != dst.shape())
      fail("[copy] internal: ", src.desc(), " -> ", dst.desc(), " needs dequantizing first");
    if (src.numel()) std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  dispatch_all(src.dtype(), [&](auto s_tag) {
    using S = decltype(s_tag);
    dispatch_all(dst.dtype(), [&](auto d_tag) {
      using D = decltype(d_tag);
      if (tiled_copy<S, D>(src, dst)) return;
      for_each<2>(dst.shape(), {&dst, &src}, [](std::array<char*, 2> p, std::array<int64_t, 2> st, int64_t n) {
        if (st[0] == int64_t(sizeof(D)) && st[1] == int64_t(sizeof(S))) {
          if constexpr (std::is_same_v<S, D>) {
            std::memcpy(p[0], p[1], size_t(n) * sizeof(D));
          } else {
            D* d = reinterpret_cast<D*>(p[0]);
            const S* s = reinterpret_cast<const S*>(p[1]);
            for (int64_t i = 0; i < n; ++i) d[i] = convert<S, D>(s[i]);
          }
        } else {
          for (int64_t i = 0; i < n; ++i)
            *reinterpret_cast<D*>(p[0] + i * st[0]) =
                convert<S, D>(*reinterpret_cast<const S*>(p[1] + i * st[1]));
        }
      });
    });
  });
}

void CpuBackend::fill(Tensor& dst, double value) {
  dispatch_all(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T v = from_d<T>(value);
    for_each<1>(dst.shape(), {&dst}, [v](std::array<char*, 1> p, std::array<int64_t, 1> st, int64_t n) {
      if (st[0] == int64_t(sizeof(T))) {
        T* d = reinterpret_cast<T*>(p[0]);
        for (int64_t i = 0; i < n; ++i) d[i] = v;
      } else {
        for (int64_t i = 0; i < n; ++i) *reinterpret_cast<T*>(p[0] + i * st[0]) = v;
      }
    });
  });
}

void CpuBackend::unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1) {
  dispatch_compute(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    if (is_predicate(k)) {
      for_each<2>(out.shape(), {&out, &x}, [k, s0](std::array<char*, 2> p, std::array<int64_t, 2> st, int64_t n) {
        for (int64_t i = 0; i < n; ++i)
          *reinterpret_cast<bool*>(p[0] + i * st[0]) =
              predicate_value<T>(k, *reinterpret_cast<const T*>(p[1] + i * st[1]), s0);
      });
      return;
    }
    for_each<2>(out.shape(), {&out, &x}, [k, s0, s1](std::array<char*, 2> p, std::array<int64_t, 2> st, int64_t n) {
      if constexpr (!std::is_same_v<T, bool>) {
      if (st[0] == int64_t(sizeof(T)) && st[1] == int64_t(sizeof(T))) {
        T* o = reinterpret_cast<T*>(p[0]);
        const T* a = reinterpret_cast<const T*>(p[1]);
        if constexpr (std::is_same_v<T, float>)
          if (cpu::unary_f32(k, o, a, n, float(s0), float(s1))) return;
        // common kinds as separate loops so the compiler vectorises them
        switch (k) {
          case UnaryKind::mul_scalar: {
            const T c = T(s0);
            for (int64_t i = 0; i < n; ++i) o[i] = a[i] * c;
            return;
          }
          case UnaryKind::add_scalar: {
            const T c = T(s0);
            for (int64_t i = 0; i < n; ++i) o[i] = a[i] + c;
            return;
          }
          case UnaryKind::div_scalar: {
            const T c = T(s0);
            for (int64_t i = 0; i < n; ++i) o[i] = a[i] / c;
            return;
          }
          case UnaryKind::relu:
            for (int64_t i = 0; i < n; ++i) o[i] = a[i] > T(0) ? a[i] : T(0);
            return;
          case UnaryKind::neg:
            for (int64_t i = 0; i < n; ++i) o[i] = -a[i];
            return;
          default:
            for (int64_t i = 0; i < n; ++i) o[i] = unary_value<T>(k, a[i], s0, s1);
            return;
        }
      }
      }
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * st[0]) =
            unary_value<T>(k, *reinterpret_cast<const T*>(p[1] + i * st[1]), s0, s1);
    });
  });
}

void CpuBackend::binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch_compute(a.dtype(), "binary", [&](auto tag) {
    using T = decltype(tag);
    if (is_compare(k)) {
      for_each<3>(out.shape(), {&out, &a, &b}, [k](std::array<char*, 3> p, std::array<int64_t, 3> st, int64_t n) {
        for (int64_t i = 0; i < n; ++i)
          *reinterpret_cast<bool*>(p[0] + i * st[0]) =
              compare_value<T>(k, *reinterpret_cast<const T*>(p[1] + i * st[1]),
                               *reinterpret_cast<const T*>(p[2] + i * st[2]));
      });
      return;
    }
    for_each<3>(out.shape(), {&out, &a, &b}, [k](std::array<char*, 3> p, std::array<int64_t, 3> st, int64_t n) {
      constexpr int64_t E = int64_t(sizeof(T));
      T* o = reinterpret_cast<T*>(p[0]);
      const T* x = reinterpret_cast<const T*>(p[1]);
      const T* y = reinterpret_cast<const T*>(p[2]);
      if constexpr (!std::is_same_v<T, bool>) {
      if (st[0] == E && st[1] == E && (st[2] == E || st[2] == 0)) {
        if constexpr (std::is_same_v<T, float>)
          if (st[2] == 0 ? cpu::binary_scalar_f32(k, o, x, y[0], n) : cpu::binary_f32(k, o, x, y, n)) return;
        if (st[2] == 0) {
          const T c = y[0];
          switch (k) {
            case BinaryKind::add: for (int64_t i = 0; i < n; ++i) o[i] = x[i] + c; return;
            case BinaryKind::mul: for (int64_t i = 0; i < n; ++i) o[i] = x[i] * c; return;
            default: for (int64_t i = 0; i < n; ++i) o[i] = binary_value<T>(k, x[i], c); return;
          }
        }
        switch (k) {
          case BinaryKind::add: for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i]; return;
          case BinaryKind::sub: for (int64_t i = 0; i < n; ++i) o[i] = x[i] - y[i]; return;
          case BinaryKind::mul: for (int64_t i = 0; i < n; ++i) o[i] = x[i] * y[i]; return;
          default: for (int64_t i = 0; i < n; ++i) o[i] = binary_value<T>(k, x[i], y[i]); return;
        }
      }
      }
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * st[0]) =
            binary_value<T>(k, *reinterpret_cast<const T*>(p[1] + i * st[1]),
                            *reinterpret_cast<const T*>(p[2] + i * st[2]));
    });
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch_all(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for_each<4>(out.shape(), {&out, &cond, &a, &b}, [](std::array<char*, 4> p, std::array<int64_t, 4> st, int64_t n) {
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<T*>(p[0] + i * st[0]) =
            *reinterpret_cast<const bool*>(p[1] + i * st[1])
                ? *reinterpret_cast<const T*>(p[2] + i * st[2])
                : *reinterpret_cast<const T*>(p[3] + i * st[3]);
    });
  });
}

}  // namespace peft::cpu
