// CPU kernels: strided loops (loops.h) for elementwise work, oneDNN sgemm for
// float32 matrix products, Eigen for float64. Inputs arrive validated and
// shaped by the ops layer.
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "runtime/backend.h"
#include "runtime/cpu/loops.h"
#include "runtime/generator.h"
#include "runtime/half.h"

namespace peft {
namespace {

using cpu::for_each;

struct BF16 {
  uint16_t v;
};
struct F16 {
  uint16_t v;
};

template <class T>
inline double to_d(T x) {
  return double(x);
}
template <>
inline double to_d<BF16>(BF16 x) {
  return bf16_to_float(x.v);
}
template <>
inline double to_d<F16>(F16 x) {
  return f16_to_float(x.v);
}
template <class T>
inline T from_d(double x) {
  return T(x);
}
template <>
inline BF16 from_d<BF16>(double x) {
  return BF16{float_to_bf16(float(x))};
}
template <>
inline F16 from_d<F16>(double x) {
  return F16{float_to_f16(float(x))};
}
template <>
inline bool from_d<bool>(double x) {
  return x != 0;
}

// Converting store without going through double for the common float paths.
template <class S, class D>
inline D convert(S x) {
  if constexpr (std::is_same_v<S, D>) {
    return x;
  } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, BF16>) {
    return BF16{float_to_bf16(x)};
  } else if constexpr (std::is_same_v<S, BF16> && std::is_same_v<D, float>) {
    return bf16_to_float(x.v);
  } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, F16>) {
    return F16{float_to_f16(x)};
  } else if constexpr (std::is_same_v<S, F16> && std::is_same_v<D, float>) {
    return f16_to_float(x.v);
  } else {
    return from_d<D>(to_d<S>(x));
  }
}

template <class F>
void dispatch_all(DType dt, F&& f) {
  switch (dt) {
    case DType::float32: f(float{}); break;
    case DType::float64: f(double{}); break;
    case DType::bfloat16: f(BF16{}); break;
    case DType::float16: f(F16{}); break;
    case DType::int64: f(int64_t{}); break;
    case DType::bool_: f(bool{}); break;
  }
}

// compute dtypes only: float32, float64, int64, bool
template <class F>
void dispatch_compute(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::float32: f(float{}); break;
    case DType::float64: f(double{}); break;
    case DType::int64: f(int64_t{}); break;
    case DType::bool_: f(bool{}); break;
    default: fail("[", what, "] internal: CPU kernel called with ", dtype_name(dt));
  }
}

template <class F>
void dispatch_float(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::float32: f(float{}); break;
    case DType::float64: f(double{}); break;
    default: fail("[", what, "] internal: CPU kernel needs float32/float64, got ", dtype_name(dt));
  }
}

template <class T>
inline T gelu_f(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
}
template <class T>
inline T sigmoid_f(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <class T>
inline T unary_value(UnaryKind k, T x, double s0, double s1) {
  if constexpr (std::is_same_v<T, bool>) {
    (void)s1;
    switch (k) {
      case UnaryKind::neg: return x;
      case UnaryKind::abs: return x;
      default: return x;
    }
  } else {
    const T a = T(s0);
    switch (k) {
      case UnaryKind::neg: return -x;
      case UnaryKind::abs: return x < 0 ? -x : x;
      case UnaryKind::sign: return T((x > 0) - (x < 0));
      case UnaryKind::relu: return x > 0 ? x : T(0);
      case UnaryKind::add_scalar: return x + a;
      case UnaryKind::mul_scalar: return x * a;
      case UnaryKind::div_scalar: return x / a;
      case UnaryKind::rsub_scalar: return a - x;
      case UnaryKind::clamp: return x < a ? a : (x > T(s1) ? T(s1) : x);
      default: break;
    }
    if constexpr (std::is_floating_point_v<T>) {
      switch (k) {
        case UnaryKind::exp: return std::exp(x);
        case UnaryKind::log: return std::log(x);
        case UnaryKind::sqrt: return std::sqrt(x);
        case UnaryKind::rsqrt: return T(1) / std::sqrt(x);
        case UnaryKind::erf: return std::erf(x);
        case UnaryKind::gelu: return gelu_f(x);
        case UnaryKind::silu: return x * sigmoid_f(x);
        case UnaryKind::tanh: return std::tanh(x);
        case UnaryKind::sigmoid: return sigmoid_f(x);
        case UnaryKind::rdiv_scalar: return a / x;
        case UnaryKind::pow_scalar:
          if (s0 == 2.0) return x * x;
          if (s0 == 1.0) return x;
          if (s0 == 0.5) return std::sqrt(x);
          return std::pow(x, a);
        default: break;
      }
    } else {
      switch (k) {
        case UnaryKind::rdiv_scalar: return a / x;
        case UnaryKind::pow_scalar: return T(std::pow(double(x), s0));
        default: break;
      }
    }
    return x;
  }
}

template <class T>
inline bool predicate_value(UnaryKind k, T x, double s) {
  double v = to_d<T>(x);
  switch (k) {
    case UnaryKind::isfinite: return std::isfinite(v);
    case UnaryKind::logical_not: return v == 0;
    case UnaryKind::eq_scalar: return v == s;
    case UnaryKind::ne_scalar: return v != s;
    case UnaryKind::gt_scalar: return v > s;
    case UnaryKind::lt_scalar: return v < s;
    case UnaryKind::ge_scalar: return v >= s;
    case UnaryKind::le_scalar: return v <= s;
    default: return false;
  }
}

inline bool is_predicate(UnaryKind k) { return k >= UnaryKind::isfinite; }

template <class T>
inline T binary_value(BinaryKind k, T a, T b) {
  if constexpr (std::is_same_v<T, bool>) {
    switch (k) {
      case BinaryKind::add: return a || b;
      case BinaryKind::mul: return a && b;
      case BinaryKind::maximum: return a || b;
      default: return a != b;
    }
  } else {
    switch (k) {
      case BinaryKind::add: return a + b;
      case BinaryKind::sub: return a - b;
      case BinaryKind::mul: return a * b;
      case BinaryKind::div: return a / b;
      case BinaryKind::maximum: return (a != a) ? a : (a > b ? a : b);
      case BinaryKind::pow:
        if constexpr (std::is_floating_point_v<T>) return std::pow(a, b);
        else return T(std::pow(double(a), double(b)));
      default: return a;
    }
  }
}

template <class T>
inline bool compare_value(BinaryKind k, T a, T b) {
  switch (k) {
    case BinaryKind::eq: return a == b;
    case BinaryKind::ne: return a != b;
    case BinaryKind::gt: return a > b;
    case BinaryKind::lt: return a < b;
    case BinaryKind::ge: return a >= b;
    case BinaryKind::le: return a <= b;
    default: return false;
  }
}

inline bool is_compare(BinaryKind k) { return k >= BinaryKind::eq; }

// ---------------------------------------------------------------------------
// gemm helpers

struct MatLayout {
  bool ok;
  char trans;
  int64_t ld;
};

// Describes a [rows, cols] strided matrix as a row-major BLAS operand.
MatLayout mat_layout(int64_t rows, int64_t cols, int64_t srow, int64_t scol) {
  if (scol == 1 || cols == 1) {
    int64_t ld = rows > 1 ? srow : cols;
    if (ld >= std::max<int64_t>(cols, 1)) return {true, 'N', ld};
  }
  if (srow == 1 || rows == 1) {
    int64_t ld = cols > 1 ? scol : rows;
    if (ld >= std::max<int64_t>(rows, 1)) return {true, 'T', ld};
  }
  return {false, 'N', 0};
}

void sgemm_2d(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t sam,
              int64_t sak, const float* B, int64_t sbk, int64_t sbn, float beta, float* C) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == 0 ? 0.f : C[i] * beta;
    return;
  }
  MatLayout la = mat_layout(M, K, sam, sak), lb = mat_layout(K, N, sbk, sbn);
  std::vector<float> ca, cb;
  if (!la.ok) {
    ca.resize(size_t(M * K));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) ca[size_t(i * K + k)] = A[i * sam + k * sak];
    A = ca.data();
    la = {true, 'N', K};
  }
  if (!lb.ok) {
    cb.resize(size_t(K * N));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) cb[size_t(k * N + j)] = B[k * sbk + j * sbn];
    B = cb.data();
    lb = {true, 'N', N};
  }
  dnnl_status_t st =
      dnnl_sgemm(la.trans, lb.trans, M, N, K, alpha, A, la.ld, B, lb.ld, beta, C, N);
  if (st != dnnl_success) fail("[matmul] oneDNN sgemm failed with status ", int(st));
}

void dgemm_2d(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t sam,
              int64_t sak, const double* B, int64_t sbk, int64_t sbn, double beta, double* C) {
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Str = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Map<const Mat, 0, Str> a(A, M, K, Str(sam, sak));
  Eigen::Map<const Mat, 0, Str> b(B, K, N, Str(sbk, sbn));
  Eigen::Map<Mat> c(C, M, N);
  if (beta == 0)
    c.setZero();
  else if (beta != 1)
    c *= beta;
  c.noalias() += alpha * (a * b);
}

// ---------------------------------------------------------------------------

class CpuBackend final : public Backend {
 public:
  std::shared_ptr<Storage> allocate(size_t nbytes) override {
    auto st = std::make_shared<Storage>();
    size_t padded = ((nbytes + 63) / 64) * 64;
    void* p = padded ? std::aligned_alloc(64, padded) : nullptr;
    if (padded && !p) fail("out of memory allocating ", nbytes, " bytes on cpu");
    st->data = p;
    st->nbytes = nbytes;
    st->device = Device::cpu;
    st->owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
    return st;
  }

  void copy(const Tensor& src, Tensor& dst) override {
    dispatch_all(src.dtype(), [&](auto s_tag) {
      using S = decltype(s_tag);
      dispatch_all(dst.dtype(), [&](auto d_tag) {
        using D = decltype(d_tag);
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

  void fill(Tensor& dst, double value) override {
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

  void unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1) override {
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

  void binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out) override {
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

  void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) override {
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

  void reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced, Tensor& out) override {
    // Split dims into kept (outer, matching out) and reduced (inner).
    const int64_t rank = x.dim();
    Shape kept_size, kept_xs, kept_os, red_size, red_xs;
    for (int64_t d = 0; d < rank; ++d) {
      if (reduced[size_t(d)]) {
        red_size.push_back(x.shape()[size_t(d)]);
        red_xs.push_back(x.strides()[size_t(d)]);
      } else {
        kept_size.push_back(x.shape()[size_t(d)]);
        kept_xs.push_back(x.strides()[size_t(d)]);
        kept_os.push_back(out.strides()[size_t(d)]);
      }
    }
    const int64_t n_out = shape_numel(kept_size), n_red = shape_numel(red_size);
    dispatch_compute(x.dtype(), "reduce", [&](auto tag) {
      using T = decltype(tag);
      using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
      const T* xp = static_cast<const T*>(x.raw_data());
      char* op = static_cast<char*>(out.raw_data());
      // Offsets of every reduced element relative to the kept position.
      std::vector<int64_t> red_off(static_cast<size_t>(n_red));
      {
        Shape idx(red_size.size(), 0);
        for (int64_t r = 0; r < n_red; ++r) {
          int64_t off = 0;
          for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * red_xs[d];
          red_off[size_t(r)] = off;
          for (size_t d = idx.size(); d-- > 0;) {
            if (++idx[d] < red_size[d]) break;
            idx[d] = 0;
          }
        }
      }
      auto body = [&](int64_t o) {
        int64_t xoff = 0, ooff = 0, rem = o;
        for (size_t d = kept_size.size(); d-- > 0;) {
          int64_t i = rem % kept_size[d];
          rem /= kept_size[d];
          xoff += i * kept_xs[d];
          ooff += i * kept_os[d];
        }
        const T* base = xp + xoff;
        if (k == ReduceKind::sum) {
          Acc acc = 0;
          for (int64_t r = 0; r < n_red; ++r) acc += Acc(base[red_off[size_t(r)]]);
          *reinterpret_cast<T*>(op + ooff * int64_t(sizeof(T))) = T(acc);
        } else {
          int64_t best_i = 0;
          T best = n_red ? base[red_off[0]] : T(0);
          for (int64_t r = 1; r < n_red; ++r) {
            T v = base[red_off[size_t(r)]];
            if constexpr (std::is_floating_point_v<T>) {
              if (best != best) break;  // NaN wins, as in PyTorch
              if (v > best || v != v) {
                best = v;
                best_i = r;
              }
            } else {
              if (v > best) {
                best = v;
                best_i = r;
              }
            }
          }
          if (k == ReduceKind::max)
            *reinterpret_cast<T*>(op + ooff * int64_t(sizeof(T))) = best;
          else
            *reinterpret_cast<int64_t*>(op + ooff * 8) = best_i;
        }
      };
      const int nt = cpu::num_threads_for(n_out * n_red);
      if (nt > 1 && n_out >= nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t o = 0; o < n_out; ++o) body(o);
      } else {
        for (int64_t o = 0; o < n_out; ++o) body(o);
      }
    });
  }

  void gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) override {
    const bool batched = a.dim() == 3;
    const int64_t B = batched ? a.size(0) : 1;
    const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
    const int64_t sab = batched ? a.stride(0) : 0, sbb = batched ? b.stride(0) : 0;
    const int64_t sam = a.stride(-2), sak = a.stride(-1), sbk = b.stride(-2), sbn = b.stride(-1);
    if (a.dtype() == DType::float32) {
      const float* A = a.data_ptr<float>();
      const float* Bp = b.data_ptr<float>();
      float* C = out.data_ptr<float>();
      for (int64_t i = 0; i < B; ++i)
        sgemm_2d(M, N, K, float(alpha), A + i * sab, sam, sak, Bp + i * sbb, sbk, sbn, float(beta),
                 C + i * M * N);
    } else if (a.dtype() == DType::float64) {
      const double* A = a.data_ptr<double>();
      const double* Bp = b.data_ptr<double>();
      double* C = out.data_ptr<double>();
      for (int64_t i = 0; i < B; ++i)
        dgemm_2d(M, N, K, alpha, A + i * sab, sam, sak, Bp + i * sbb, sbk, sbn, beta,
                 C + i * M * N);
    } else {
      fail("[matmul] internal: CPU gemm needs float32/float64, got ", dtype_name(a.dtype()));
    }
  }

  void softmax(const Tensor& x, int64_t dim, bool log, Tensor& out) override {
    // x and out contiguous; view as [outer, n, inner]
    int64_t outer = 1, inner = 1, n = x.size(dim);
    for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
    dispatch_float(x.dtype(), "softmax", [&](auto tag) {
      using T = decltype(tag);
      const T* xp = x.data_ptr<T>();
      T* op = out.data_ptr<T>();
      const int64_t rows = outer * inner;
      auto body = [&](int64_t r) {
        int64_t o = r / inner, i = r % inner;
        const T* xr = xp + o * n * inner + i;
        T* yr = op + o * n * inner + i;
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, xr[j * inner]);
        if (!std::isfinite(mx)) mx = 0;
        double s = 0;
        for (int64_t j = 0; j < n; ++j) s += std::exp(double(xr[j * inner] - mx));
        if (log) {
          T ls = T(std::log(s));
          for (int64_t j = 0; j < n; ++j) yr[j * inner] = xr[j * inner] - mx - ls;
        } else {
          T inv = T(1.0 / s);
          for (int64_t j = 0; j < n; ++j) yr[j * inner] = std::exp(xr[j * inner] - mx) * inv;
        }
      };
      const int nt = cpu::num_threads_for(rows * n);
      if (nt > 1 && rows >= nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < rows; ++r) body(r);
      } else {
        for (int64_t r = 0; r < rows; ++r) body(r);
      }
    });
  }

  static void check_indices(const int64_t* idx, int64_t n, int64_t bound, const char* op,
                            int64_t dim) {
    for (int64_t i = 0; i < n; ++i)
      if (idx[i] < 0 || idx[i] >= bound)
        fail("[", op, "] index ", idx[i], " is out of bounds for dimension ", dim, " with size ",
             bound);
  }

  // x, out contiguous; index contiguous int64 [nidx]
  void index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override {
    int64_t outer = 1, inner = 1, n = x.size(dim), nidx = index.numel();
    for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
    const int64_t* idx = index.data_ptr<int64_t>();
    check_indices(idx, nidx, n, "index_select", dim);
    const size_t es = dtype_size(x.dtype());
    const char* xp = static_cast<const char*>(x.raw_data());
    char* op = static_cast<char*>(out.raw_data());
    const int64_t rows = outer * nidx;
    const size_t row_bytes = size_t(inner) * es;
    const int nt = cpu::num_threads_for(rows * inner);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t o = r / nidx, i = r % nidx;
      std::memcpy(op + size_t(r) * row_bytes, xp + size_t(o * n + idx[i]) * row_bytes, row_bytes);
    }
  }

  void index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override {
    int64_t outer = 1, inner = 1, n = out.size(dim), nidx = index.numel();
    for (int64_t d = 0; d < dim; ++d) outer *= out.size(d);
    for (int64_t d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
    const int64_t* idx = index.data_ptr<int64_t>();
    check_indices(idx, nidx, n, "index_add", dim);
    dispatch_compute(out.dtype(), "index_add", [&](auto tag) {
      using T = decltype(tag);
      if constexpr (!std::is_same_v<T, bool>) {
        T* op = static_cast<T*>(out.raw_data());
        const T* sp = static_cast<const T*>(src.raw_data());
        // parallel over (outer, column blocks): rows with equal index never race
        const int nt = cpu::num_threads_for(outer * nidx * inner);
        const int64_t blocks = nt > 1 ? std::max<int64_t>(1, std::min<int64_t>(nt, inner / 16)) : 1;
        const int64_t bw = (inner + blocks - 1) / blocks;
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t bl = 0; bl < blocks; ++bl) {
            int64_t c0 = bl * bw, c1 = std::min(inner, c0 + bw);
            for (int64_t i = 0; i < nidx; ++i) {
              T* dst = op + (o * n + idx[i]) * inner;
              const T* s = sp + (o * nidx + i) * inner;
              for (int64_t c = c0; c < c1; ++c) dst[c] += s[c];
            }
          }
      } else {
        fail("[index_add] not defined for bool tensors");
      }
    });
  }

  // x, index, out contiguous; index has x's shape except along dim
  void gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override {
    int64_t outer = 1, inner = 1, n = x.size(dim), m = index.size(dim);
    for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
    const int64_t* idx = index.data_ptr<int64_t>();
    check_indices(idx, index.numel(), n, "gather", dim);
    dispatch_all(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* xp = static_cast<const T*>(x.raw_data());
      T* op = static_cast<T*>(out.raw_data());
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t j = 0; j < m; ++j)
          for (int64_t c = 0; c < inner; ++c) {
            int64_t at = (o * m + j) * inner + c;
            op[at] = xp[(o * n + idx[at]) * inner + c];
          }
    });
  }

  void scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override {
    int64_t outer = 1, inner = 1, n = out.size(dim), m = index.size(dim);
    for (int64_t d = 0; d < dim; ++d) outer *= out.size(d);
    for (int64_t d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
    const int64_t* idx = index.data_ptr<int64_t>();
    check_indices(idx, index.numel(), n, "scatter_add", dim);
    dispatch_compute(out.dtype(), "scatter_add", [&](auto tag) {
      using T = decltype(tag);
      if constexpr (!std::is_same_v<T, bool>) {
        T* op = static_cast<T*>(out.raw_data());
        const T* sp = static_cast<const T*>(src.raw_data());
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t j = 0; j < m; ++j)
            for (int64_t c = 0; c < inner; ++c) {
              int64_t at = (o * m + j) * inner + c;
              op[(o * n + idx[at]) * inner + c] += sp[at];
            }
      } else {
        fail("[scatter_add] not defined for bool tensors");
      }
    });
  }

  void random(RandomKind k, Tensor& out, double a, double b, uint64_t seed,
              uint64_t counter) override {
    const int64_t n = out.numel();
    const int64_t blocks = (n + 3) / 4;
    dispatch_float(out.dtype(), "random", [&](auto tag) {
      using T = decltype(tag);
      T* op = out.data_ptr<T>();
      const int nt = cpu::num_threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        uint32_t w[4];
        philox4x32(seed, counter + uint64_t(blk), w);
        double u[4];
        for (int j = 0; j < 4; ++j) u[j] = (double(w[j] >> 8) + 0.5) * (1.0 / 16777216.0);
        double v[4];
        if (k == RandomKind::normal) {
          for (int j = 0; j < 4; j += 2) {
            double rad = std::sqrt(-2.0 * std::log(u[j]));
            v[j] = a + b * rad * std::cos(6.283185307179586 * u[j + 1]);
            v[j + 1] = a + b * rad * std::sin(6.283185307179586 * u[j + 1]);
          }
        } else if (k == RandomKind::uniform) {
          for (int j = 0; j < 4; ++j) v[j] = a + (b - a) * (double(w[j] >> 8) * (1.0 / 16777216.0));
        } else {
          for (int j = 0; j < 4; ++j) v[j] = u[j] < a ? 1.0 : 0.0;
        }
        for (int j = 0; j < 4; ++j) {
          int64_t i = blk * 4 + j;
          if (i < n) op[i] = T(v[j]);
        }
      }
    });
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

}  // namespace peft
