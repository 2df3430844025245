// CPU kernels: strided loops (loops.h) for elementwise work, oneDNN sgemm for
// float32 matrix products, Eigen for float64. Inputs arrive validated and
// shaped by the ops layer.
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

#include <atomic>
#include <bit>

#include <Eigen/Dense>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>

#include "runtime/backend.h"
#include "runtime/cpu/loops.h"
#include "runtime/cpu/math_f32.h"
#include "runtime/cpu/cpu_transformer.h"
#include "runtime/cpu/vec_f32.h"
#include "runtime/cpu/svd.h"
#include "runtime/generator.h"
#include "runtime/half.h"

namespace peft {
namespace {

using cpu::for_each;
using cpu::exp_f32;
using cpu::tanh_f32;

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
inline T gelu_tanh_f(T x) {
  if constexpr (std::is_same_v<T, float>) return cpu::gelu_tanh_f32(x);  // same bits on every layout
  return T(0.5) * x * (T(1) + std::tanh(T(0.7978845608028654) * (x + T(0.044715) * (x * x * x))));
}
template <class T>
inline T gelu_tanh_grad_f(T g, T x) {
  if constexpr (std::is_same_v<T, float>) return cpu::gelu_tanh_grad_f32(g, x);
  const T x2 = x * x, t = std::tanh(T(0.7978845608028654) * (x + T(0.044715) * (x2 * x)));
  const T du = T(0.7978845608028654) * (T(1) + T(0.134145) * x2);
  return g * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
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
        case UnaryKind::exp:
          if constexpr (std::is_same_v<T, float>) return exp_f32(x);  // same bits on every layout
          return std::exp(x);
        case UnaryKind::log: return std::log(x);
        case UnaryKind::sqrt: return std::sqrt(x);
        case UnaryKind::rsqrt: return T(1) / std::sqrt(x);
        case UnaryKind::erf: return std::erf(x);
        case UnaryKind::gelu: return gelu_f(x);
        case UnaryKind::gelu_tanh: return gelu_tanh_f(x);
        case UnaryKind::silu: return x * sigmoid_f(x);
        case UnaryKind::tanh:
          if constexpr (std::is_same_v<T, float>) return tanh_f32(x);  // same bits on every layout
          return std::tanh(x);
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
      case BinaryKind::tanh_grad: return a * (T(1) - b * b);
      case BinaryKind::gelu_tanh_grad:
        if constexpr (std::is_floating_point_v<T>) return gelu_tanh_grad_f(a, b);
        else return a;
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

constexpr double kSmallGemmFlops = 1e6;
// Up to this many output columns sgemm_2d uses its own packed kernel (vec_f32.h); K is
// bounded so the packed copy of B stays small (<= 256 KiB).
constexpr int64_t kFewColumns = 16, kFewColumnsMaxK = 4096;

void sgemm_2d(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t sam,
              int64_t sak, const float* B, int64_t sbk, int64_t sbn, float beta, float* C) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == 0 ? 0.f : C[i] * beta;
    return;
  }
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int max_nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (N <= kFewColumns && K <= kFewColumnsMaxK && M >= N) {
    // LoRA's rank-r products: own kernel, ~2.3x oneDNN's speed at N = 8 (perf-notes)
    thread_local std::vector<float> packed;
    packed.resize(size_t(cpu::packed8_size(K, N)));
    cpu::pack8_f32(K, N, B, sbk, sbn, packed.data());
    const int64_t row_blocks = (M + 7) / 8;
    const int parts = flops < kSmallGemmFlops ? 1 : int(std::min<int64_t>(max_nt, row_blocks));
    const float* pk = packed.data();
    auto rows = [&](int part) {
      const int64_t per = (row_blocks + parts - 1) / parts * 8;
      const int64_t r0 = part * per, r1 = std::min(M, r0 + per);
      if (r0 < r1) cpu::gemm_packed8_f32(r0, r1, N, K, alpha, A, sam, sak, pk, beta, C, N);
    };
    if (parts <= 1) {
      rows(0);
    } else {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
      for (int part = 0; part < parts; ++part) rows(part);
    }
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
  // Threads split C into row (or column) blocks, one sequential sgemm each: on the
  // 2-core machines we measure, that ran 1.2x faster than oneDNN's own threading
  // from 256x512x512 to 512x4096x4096 (205 vs 170 GFLOP/s; docs/perf-notes.md). Below
  // ~1 MFLOP one thread is faster than any fork/join.
  const bool by_rows = M >= N;
  const int64_t extent = by_rows ? M : N, align = 16;
  const int parts = flops < kSmallGemmFlops ? 1 : int(std::min<int64_t>(max_nt, extent / align));
  dnnl_status_t st = dnnl_success;
  if (parts <= 1) {
    // oneDNN forks every OpenMP thread whatever the size unless told otherwise
    if (max_nt > 1) omp_set_num_threads(1);
    st = dnnl_sgemm(la.trans, lb.trans, M, N, K, alpha, A, la.ld, B, lb.ld, beta, C, N);
    if (max_nt > 1) omp_set_num_threads(max_nt);
  } else {
    const int64_t chunk = ((extent + parts - 1) / parts + align - 1) / align * align;
    const int64_t a_row = la.trans == 'N' ? la.ld : 1, b_col = lb.trans == 'N' ? 1 : lb.ld;
    std::atomic<int> failed{dnnl_success};
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int part = 0; part < parts; ++part) {
      const int64_t lo = part * chunk, n = std::min(extent, lo + chunk) - lo;
      if (n <= 0) continue;
      // inside the parallel region oneDNN runs sequentially
      const dnnl_status_t s =
          by_rows ? dnnl_sgemm(la.trans, lb.trans, n, N, K, alpha, A + lo * a_row, la.ld, B, lb.ld, beta,
                               C + lo * N, N)
                  : dnnl_sgemm(la.trans, lb.trans, M, n, K, alpha, A, la.ld, B + lo * b_col, lb.ld, beta,
                               C + lo, N);
      if (s != dnnl_success) failed = int(s);
    }
    st = dnnl_status_t(failed.load());
  }
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
// Large blocks are kept for reuse: glibc returns big frees to the OS, so every new
// activation-sized tensor would otherwise page-fault all of its memory again
// (about 2 ms per 8 MB). Blocks are reused for requests of the same rounded size;
// at most PEFT_CPU_CACHE_MB (default 1024, 0 disables) stay cached.
class BlockCache {
 public:
  static constexpr size_t kMinBlock = size_t(1) << 20;
  static size_t round(size_t n) {  // 64 KiB granularity
    constexpr size_t g = size_t(1) << 16;
    return (n + g - 1) / g * g;
  }
  BlockCache() {
    if (const char* s = std::getenv("PEFT_CPU_CACHE_MB")) limit_ = size_t(std::max(0L, std::atol(s))) << 20;
  }
  void* get(size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(n);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= n;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, n);
    if (!p) {
      release_all();
      p = std::aligned_alloc(64, n);
    }
    if (!p) fail("out of memory allocating ", n, " bytes on cpu");
    return p;
  }
  void put(void* p, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + n <= limit_) {
        free_.emplace(n, p);
        cached_ += n;
        return;
      }
    }
    std::free(p);
  }
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    cached_ = 0;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t limit_ = size_t(1024) << 20;
};

// Live CPU tensor bytes (cpu_allocated_bytes): a relaxed counter, one add per allocation.
std::atomic<size_t> g_allocated{0};
std::atomic<size_t> g_allocated_peak{0};

// Never destroyed: tensors held by other static objects may be freed after main.
BlockCache& block_cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}

// ---------------------------------------------------------------------------
// reduction helpers

// One dimension of a reduction: size, x stride, out stride (elements).
struct RDim {
  int64_t size, xs, os;
};

// Merges adjacent dims (outer, inner) whose strides make them one run.
void coalesce(std::vector<RDim>& dims) {
  std::vector<RDim> out;
  for (const RDim& d : dims) {
    if (!out.empty() && out.back().xs == d.xs * d.size && out.back().os == d.os * d.size) {
      out.back() = {out.back().size * d.size, d.xs, d.os};
      continue;
    }
    out.push_back(d);
  }
  dims = std::move(out);
}

// Visits reduced elements [begin, end) (row-major over `dims`) as runs along the
// innermost dim: f(offset, length, stride), offsets in elements.
template <class F>
void for_runs(const std::vector<RDim>& dims, int64_t begin, int64_t end, F&& f) {
  if (begin >= end) return;
  if (dims.empty()) {
    f(int64_t(0), int64_t(1), int64_t(0));
    return;
  }
  const size_t nd = dims.size();
  int64_t idx[16];
  int64_t rem = begin;
  for (size_t d = nd; d-- > 0;) {
    idx[d] = rem % dims[d].size;
    rem /= dims[d].size;
  }
  const RDim& in = dims.back();
  int64_t pos = begin;
  while (pos < end) {
    int64_t off = 0;
    for (size_t d = 0; d < nd; ++d) off += idx[d] * dims[d].xs;
    const int64_t len = std::min(in.size - idx[nd - 1], end - pos);
    f(off, len, in.xs);
    pos += len;
    idx[nd - 1] += len;
    for (size_t d = nd - 1; d > 0 && idx[d] >= dims[d].size; --d) {
      idx[d] = 0;
      ++idx[d - 1];
    }
  }
}

// ---------------------------------------------------------------------------

class CpuBackend final : public Backend {
 public:
  std::shared_ptr<Storage> allocate(size_t nbytes) override {
    auto st = std::make_shared<Storage>();
    size_t padded = ((nbytes + 63) / 64) * 64;
    void* p = nullptr;
    if (padded >= BlockCache::kMinBlock) {
      padded = BlockCache::round(padded);
      p = block_cache().get(padded);
      st->owner = std::shared_ptr<void>(p, [padded](void* q) {
        g_allocated.fetch_sub(padded, std::memory_order_relaxed);
        block_cache().put(q, padded);
      });
    } else {
      p = padded ? std::aligned_alloc(64, padded) : nullptr;
      if (padded && !p) fail("out of memory allocating ", nbytes, " bytes on cpu");
      st->owner = std::shared_ptr<void>(p, [padded](void* q) {
        g_allocated.fetch_sub(padded, std::memory_order_relaxed);
        std::free(q);
      });
    }
    const size_t now = g_allocated.fetch_add(padded, std::memory_order_relaxed) + padded;
    size_t peak = g_allocated_peak.load(std::memory_order_relaxed);
    while (now > peak && !g_allocated_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    st->data = p;
    st->nbytes = nbytes;
    st->device = Device::cpu;
    return st;
  }

  // Copies where dst is contiguous along the innermost dim but src is contiguous along
  // another one (a transpose being materialised) go tile by tile, so both sides stay in
  // cache; element-by-element they run at a few hundred MB/s.
  template <class S, class D>
  static bool tiled_copy(const Tensor& src, Tensor& dst) {
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

  void copy(const Tensor& src, Tensor& dst) override {
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
    // Kept dims (matching out) and reduced dims, size-1 dims dropped, each list coalesced.
    std::vector<RDim> kept, red;
    for (int64_t d = 0; d < x.dim(); ++d) {
      const int64_t n = x.shape()[size_t(d)];
      if (n == 1) continue;
      if (reduced[size_t(d)])
        red.push_back({n, x.strides()[size_t(d)], 0});
      else
        kept.push_back({n, x.strides()[size_t(d)], out.strides()[size_t(d)]});
    }
    coalesce(kept);
    coalesce(red);
    int64_t n_out = 1, n_red = 1;
    for (const RDim& d : kept) n_out *= d.size;
    for (const RDim& d : red) n_red *= d.size;
    if (n_out == 0) return;
    dispatch_compute(x.dtype(), "reduce", [&](auto tag) {
      using T = decltype(tag);
      const T* xp = static_cast<const T*>(x.raw_data());
      T* op_t = static_cast<T*>(out.raw_data());
      int64_t* op_i = k == ReduceKind::argmax ? static_cast<int64_t*>(out.raw_data()) : nullptr;
      const int nt = cpu::num_threads_for(n_out * std::max<int64_t>(n_red, 1));

      // Output offset and input base offset of output element o.
      auto locate = [&](int64_t o, int64_t& xoff, int64_t& ooff) {
        xoff = 0;
        ooff = 0;
        for (size_t d = kept.size(); d-- > 0;) {
          const int64_t i = o % kept[d].size;
          o /= kept[d].size;
          xoff += i * kept[d].xs;
          ooff += i * kept[d].os;
        }
      };

      if (k == ReduceKind::sum) {
        using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
        // Fast path: the innermost kept dim is contiguous in x and out (sum over leading
        // dims, e.g. a bias gradient): accumulate whole rows, vectorised, parallel over
        // column blocks.
        if (!kept.empty() && kept.back().xs == 1 && kept.back().os == 1 && n_red > 1) {
          const int64_t C = kept.back().size, n_ko = n_out / C;
          constexpr int64_t kMaxBlock = 512;
          int64_t bw = std::min<int64_t>(kMaxBlock, (C + nt - 1) / nt);
          bw = std::max<int64_t>(std::min<int64_t>(C, 16), (bw + 15) / 16 * 16);
          const int64_t n_blocks = (C + bw - 1) / bw, items = n_ko * n_blocks;
          std::vector<RDim> outer_kept(kept.begin(), kept.end() - 1);
          auto body = [&](int64_t item) {
            const int64_t ko = item / n_blocks, c0 = (item % n_blocks) * bw;
            const int64_t w = std::min(bw, C - c0);
            int64_t xoff = 0, ooff = 0, rem = ko;
            for (size_t d = outer_kept.size(); d-- > 0;) {
              const int64_t i = rem % outer_kept[d].size;
              rem /= outer_kept[d].size;
              xoff += i * outer_kept[d].xs;
              ooff += i * outer_kept[d].os;
            }
            Acc acc[kMaxBlock];
            for (int64_t c = 0; c < w; ++c) acc[c] = 0;
            const T* base = xp + xoff + c0;
            for_runs(red, 0, n_red, [&](int64_t off, int64_t len, int64_t stride) {
              for (int64_t j = 0; j < len; ++j) {
                const T* row = base + off + j * stride;
#pragma omp simd
                for (int64_t c = 0; c < w; ++c) acc[c] += Acc(row[c]);
              }
            });
            T* o = op_t + ooff + c0;
            for (int64_t c = 0; c < w; ++c) o[c] = T(acc[c]);
          };
          if (nt > 1 && items > 1) {
#pragma omp parallel for num_threads(int(std::min<int64_t>(nt, items))) schedule(static)
            for (int64_t it = 0; it < items; ++it) body(it);
          } else {
            for (int64_t it = 0; it < items; ++it) body(it);
          }
          return;
        }
        auto partial = [&](int64_t xoff, int64_t r0, int64_t r1) {
          Acc acc = 0;
          for_runs(red, r0, r1, [&](int64_t off, int64_t len, int64_t stride) {
            const T* p = xp + xoff + off;
            Acc s = 0;
            if (stride == 1) {
#pragma omp simd reduction(+ : s)
              for (int64_t j = 0; j < len; ++j) s += Acc(p[j]);
            } else {
              for (int64_t j = 0; j < len; ++j) s += Acc(p[j * stride]);
            }
            acc += s;
          });
          return acc;
        };
        if (n_out >= nt || nt == 1) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
          for (int64_t o = 0; o < n_out; ++o) {
            int64_t xoff, ooff;
            locate(o, xoff, ooff);
            op_t[ooff] = T(partial(xoff, 0, n_red));
          }
        } else {
          // few outputs, long reductions: split each reduction across threads
          for (int64_t o = 0; o < n_out; ++o) {
            int64_t xoff, ooff;
            locate(o, xoff, ooff);
            std::vector<Acc> parts(size_t(nt), Acc(0));
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int t = 0; t < nt; ++t)
              parts[size_t(t)] = partial(xoff, n_red * t / nt, n_red * (t + 1) / nt);
            Acc acc = 0;
            for (Acc p : parts) acc += p;
            op_t[ooff] = T(acc);
          }
        }
        return;
      }

      // max / argmax: the first NaN wins, else the first maximum (as PyTorch)
      struct Best {
        T v{};
        int64_t i = -1;
      };
      auto better = [](const Best& a, const Best& b) {  // b comes after a
        if (a.i < 0) return b;
        if (b.i < 0) return a;
        if constexpr (std::is_floating_point_v<T>) {
          if (a.v != a.v) return a;
          if (b.v != b.v) return b;
        }
        return b.v > a.v ? b : a;
      };
      auto partial = [&](int64_t xoff, int64_t r0, int64_t r1) {
        Best best;
        int64_t pos = r0;
        for_runs(red, r0, r1, [&](int64_t off, int64_t len, int64_t stride) {
          const T* p = xp + xoff + off;
          for (int64_t j = 0; j < len; ++j) {
            const T v = p[j * stride];
            if (best.i < 0) {
              best = {v, pos + j};
              continue;
            }
            if constexpr (std::is_floating_point_v<T>) {
              if (best.v != best.v) return;
              if (v > best.v || v != v) best = {v, pos + j};
            } else {
              if (v > best.v) best = {v, pos + j};
            }
          }
          pos += len;
        });
        return best;
      };
      auto store = [&](int64_t ooff, const Best& b) {
        if (op_i)
          op_i[ooff] = std::max<int64_t>(b.i, 0);
        else
          op_t[ooff] = b.v;
      };
      if (n_out >= nt || nt == 1) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t o = 0; o < n_out; ++o) {
          int64_t xoff, ooff;
          locate(o, xoff, ooff);
          store(ooff, partial(xoff, 0, n_red));
        }
      } else {
        for (int64_t o = 0; o < n_out; ++o) {
          int64_t xoff, ooff;
          locate(o, xoff, ooff);
          std::vector<Best> parts{size_t(nt), Best{}};
#pragma omp parallel for num_threads(nt) schedule(static)
          for (int t = 0; t < nt; ++t) parts[size_t(t)] = partial(xoff, n_red * t / nt, n_red * (t + 1) / nt);
          Best b;
          for (const Best& p : parts) b = better(b, p);
          store(ooff, b);
        }
      }
    });
  }

  void gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) override {
    const bool batched = a.dim() == 3;
    const int64_t B = batched ? a.size(0) : 1;
    const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
    const int64_t sab = batched ? a.stride(0) : 0, sbb = batched ? b.stride(0) : 0;
    const int64_t sam = a.stride(-2), sak = a.stride(-1), sbk = b.stride(-2), sbn = b.stride(-1);
    // Many small products (attention-like batches): one product per thread, each
    // single-threaded (oneDNN and Eigen run serially inside a parallel region);
    // large ones: one after another, each using every thread.
    const int nt = omp_get_max_threads();
    const bool per_thread = B > 1 && nt > 1 && 2.0 * double(M) * double(N) * double(K) < 8e6;
    auto run_batch = [&](auto&& one) {
      if (!per_thread) {
        for (int64_t i = 0; i < B; ++i) one(i);
        return;
      }
      std::string err;
#pragma omp parallel for num_threads(int(std::min<int64_t>(nt, B))) schedule(static)
      for (int64_t i = 0; i < B; ++i) {
        try {
          one(i);
        } catch (const std::exception& e) {
#pragma omp critical(peft_gemm_err)
          err = e.what();
        }
      }
      if (!err.empty()) throw Error(err);
    };
    if (a.dtype() == DType::float32) {
      const float* A = a.data_ptr<float>();
      const float* Bp = b.data_ptr<float>();
      float* C = out.data_ptr<float>();
      run_batch([&](int64_t i) {
        sgemm_2d(M, N, K, float(alpha), A + i * sab, sam, sak, Bp + i * sbb, sbk, sbn, float(beta),
                 C + i * M * N);
      });
    } else if (a.dtype() == DType::float64) {
      const double* A = a.data_ptr<double>();
      const double* Bp = b.data_ptr<double>();
      double* C = out.data_ptr<double>();
      run_batch([&](int64_t i) {
        dgemm_2d(M, N, K, alpha, A + i * sab, sam, sak, Bp + i * sbb, sbk, sbn, beta, C + i * M * N);
      });
    } else {
      fail("[matmul] internal: CPU gemm needs float32/float64, got ", dtype_name(a.dtype()));
    }
  }

  void svd(const Tensor& a, Tensor& u, Tensor& s, Tensor& vh) override { cpu::svd_f64(a, u, s, vh); }

  // transformer blocks: runtime/cpu/cpu_transformer.cpp
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& out, Tensor& mean,
                  Tensor& rstd) override {
    cpu::layer_norm(x, w, b, eps, out, mean, rstd);
  }
  void layer_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                           const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db) override {
    cpu::layer_norm_backward(g, x, w, mean, rstd, dx, dw, db);
  }
  void rms_norm(const Tensor& x, const Tensor& w, double eps, DType rt, Tensor& out, Tensor& rstd) override {
    cpu::rms_norm(x, w, eps, rt, out, rstd);
  }
  void rms_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& rstd, DType rt,
                         Tensor& dx, Tensor& dw) override {
    cpu::rms_norm_backward(g, x, w, rstd, rt, dx, dw);
  }
  void rotary_embedding(const Tensor& x, const Tensor& c, const Tensor& s, bool tr, Tensor& out) override {
    cpu::rotary_embedding(x, c, s, tr, out);
  }
  void scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                    bool causal, double scale, Tensor& out, Tensor& lse) override {
    cpu::attention(q, k, v, mask, causal, scale, out, lse);
  }
  void scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const Tensor& mask, bool causal, double scale, const Tensor& out,
                                             const Tensor& lse, const Tensor& g, Tensor& dq, Tensor& dk,
                                             Tensor& dv) override {
    cpu::attention_backward(q, k, v, mask, causal, scale, out, lse, g, dq, dk, dv);
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
        if constexpr (std::is_same_v<T, float>) {
          if (inner == 1) {  // rows contiguous: vectorised exp, written to y first
            const double s = cpu::exp_shifted_f32(xr, yr, n, mx);
            if (log) {
              const T ls = T(std::log(s));
              for (int64_t j = 0; j < n; ++j) yr[j] = xr[j] - mx - ls;
            } else {
              const T inv = T(1.0 / s);
              for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
            }
            return;
          }
        }
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

size_t cpu_allocated_bytes() { return g_allocated.load(std::memory_order_relaxed); }
size_t cpu_allocated_peak_bytes() { return g_allocated_peak.load(std::memory_order_relaxed); }
void reset_cpu_allocated_peak() { g_allocated_peak.store(cpu_allocated_bytes(), std::memory_order_relaxed); }

}  // namespace peft
