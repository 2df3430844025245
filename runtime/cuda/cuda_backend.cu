// CUDA kernels of the Backend interface (runtime/backend.h): cuBLAS for matrix products
// (float32, float64, and bfloat16 / float16 on tensor cores with float32 accumulation),
// own kernels for everything else. All work goes on the legacy default stream, so
// copies to the host and the caching allocator's reuse are ordered without events.
// Transformer blocks live in cuda_transformer.cu.
#include <cublas_v2.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "runtime/cuda/cuda_common.cuh"
#include "runtime/cuda/cuda_transformer.h"

namespace peft {
namespace cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a sticky launch error so the next call starts clean
    fail("[", what, "] CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  }
}

namespace {

std::atomic<int> g_device{0};

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
  }
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("[", what, "] cuBLAS failed: ", cublas_status_name(s), " (", int(s), ")");
}

int device_count_or_zero(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    return 0;
  }
  if (n <= 0 && why) *why = "cudaGetDeviceCount found 0 devices";
  return n;
}

// ---------------------------------------------------------------------------
// Caching allocator: freed blocks go to a free list keyed by (device, rounded size) and are
// handed out again for the same rounded size; cudaMalloc failing releases the cache and
// retries once. Everything cached is released at exit (before the CUDA runtime tears
// down); blocks freed after that go straight to cudaFree.
class DeviceCache {
 public:
  static size_t round(size_t n) {
    const size_t g = n < (size_t(1) << 20) ? 512 : (size_t(1) << 20);  // 512 B below 1 MiB, else 1 MiB
    return n == 0 ? g : (n + g - 1) / g * g;
  }
  void* get(int dev, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find({dev, n});
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= n;
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      release_all();
      e = cudaMalloc(&p, n);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of memory allocating ", n, " bytes on cuda:", dev, " (", free_b >> 20, " MiB free of ",
           total_b >> 20, " MiB): ", cudaGetErrorString(e));
    }
    return p;
  }
  void put(int dev, void* p, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!exiting_) {
        free_.emplace(std::make_pair(dev, n), p);
        cached_ += n;
        return;
      }
    }
    cudaFree(p);  // after exit began: errors (runtime already gone) are ignored
  }
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) cudaFree(kv.second);
    free_.clear();
    cached_ = 0;
  }
  void release_at_exit() {
    release_all();
    std::lock_guard<std::mutex> lock(mu_);
    exiting_ = true;
  }

 private:
  std::mutex mu_;
  std::multimap<std::pair<int, size_t>, void*> free_;
  size_t cached_ = 0;
  bool exiting_ = false;
};

// Never destroyed: tensors held by static objects may be freed after main.
DeviceCache& device_cache() {
  static DeviceCache* c = [] {
    auto* cache = new DeviceCache();
    std::atexit([] { device_cache().release_at_exit(); });
    return cache;
  }();
  return *c;
}

// One cuBLAS handle per device, created on first use.
cublasHandle_t cublas_handle() {
  static std::mutex mu;
  static std::map<int, cublasHandle_t> handles;
  const int dev = g_device.load();
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles.find(dev);
  if (it != handles.end()) return it->second;
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "cublasCreate");
  handles[dev] = h;
  return h;
}

// ---------------------------------------------------------------------------
// elementwise kernels

template <class S, class D>
__global__ void copy_kernel(Iter<2> it, D* dst, const S* src) {
  PEFT_GRID_LOOP(i, it.numel) {
    int64_t off[2];
    iter_offsets<2>(it, i, off);
    dst[off[0]] = convert<S, D>(src[off[1]]);
  }
}

template <class T>
__global__ void fill_kernel(Iter<1> it, T* dst, double value) {
  const T v = from_d<T>(value);
  PEFT_GRID_LOOP(i, it.numel) {
    int64_t off[1];
    iter_offsets<1>(it, i, off);
    dst[off[0]] = v;
  }
}

template <class T>
__device__ inline T sigmoid_d(T x) {
  return T(1) / (T(1) + exp(-x));
}
template <class T>
__device__ inline T gelu_tanh_d(T x) {
  return T(0.5) * x * (T(1) + tanh(T(0.7978845608028654) * (x + T(0.044715) * (x * x * x))));
}
template <class T>
__device__ inline T gelu_tanh_grad_d(T g, T x) {
  const T x2 = x * x, t = tanh(T(0.7978845608028654) * (x + T(0.044715) * (x2 * x)));
  const T du = T(0.7978845608028654) * (T(1) + T(0.134145) * x2);
  return g * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
}

// The CPU's unary_value (cpu_backend.cpp), kind by kind.
template <class T>
__device__ inline T unary_value(UnaryKind k, T x, double s0, double s1) {
  if constexpr (std::is_same_v<T, bool>) {
    return x;
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
      case UnaryKind::rdiv_scalar: return a / x;
      default: break;
    }
    if constexpr (std::is_floating_point_v<T>) {
      switch (k) {
        case UnaryKind::exp: return exp(x);
        case UnaryKind::log: return log(x);
        case UnaryKind::sqrt: return sqrt(x);
        case UnaryKind::rsqrt: return T(1) / sqrt(x);
        case UnaryKind::erf: return erf(x);
        case UnaryKind::gelu: return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
        case UnaryKind::gelu_tanh: return gelu_tanh_d(x);
        case UnaryKind::silu: return x * sigmoid_d(x);
        case UnaryKind::tanh: return tanh(x);
        case UnaryKind::sigmoid: return sigmoid_d(x);
        case UnaryKind::pow_scalar:
          if (s0 == 2.0) return x * x;
          if (s0 == 1.0) return x;
          if (s0 == 0.5) return sqrt(x);
          return pow(x, a);
        default: break;
      }
    } else {
      if (k == UnaryKind::pow_scalar) return T(pow(double(x), s0));
    }
    return x;
  }
}

template <class T>
__device__ inline bool predicate_value(UnaryKind k, T x, double s) {
  const double v = to_d<T>(x);
  switch (k) {
    case UnaryKind::isfinite: return isfinite(v);
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

template <class T>
__global__ void unary_kernel(Iter<2> it, UnaryKind k, T* out, const T* x, double s0, double s1) {
  PEFT_GRID_LOOP(i, it.numel) {
    int64_t off[2];
    iter_offsets<2>(it, i, off);
    out[off[0]] = unary_value<T>(k, x[off[1]], s0, s1);
  }
}

template <class T>
__global__ void predicate_kernel(Iter<2> it, UnaryKind k, bool* out, const T* x, double s0) {
  PEFT_GRID_LOOP(i, it.numel) {
    int64_t off[2];
    iter_offsets<2>(it, i, off);
    out[off[0]] = predicate_value<T>(k, x[off[1]], s0);
  }
}

template <class T>
__device__ inline T binary_value(BinaryKind k, T a, T b) {
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
        if constexpr (std::is_floating_point_v<T>) return gelu_tanh_grad_d(a, b);
        else return a;
      case BinaryKind::pow:
        if constexpr (std::is_floating_point_v<T>) return pow(a, b);
        else return T(pow(double(a), double(b)));
      default: return a;
    }
  }
}

template <class T>
__device__ inline bool compare_value(BinaryKind k, T a, T b) {
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

template <class T>
__global__ void binary_kernel(Iter<3> it, BinaryKind k, T* out, const T* a, const T* b) {
  PEFT_GRID_LOOP(i, it.numel) {
    int64_t off[3];
    iter_offsets<3>(it, i, off);
    out[off[0]] = binary_value<T>(k, a[off[1]], b[off[2]]);
  }
}

template <class T>
__global__ void compare_kernel(Iter<3> it, BinaryKind k, bool* out, const T* a, const T* b) {
  PEFT_GRID_LOOP(i, it.numel) {
    int64_t off[3];
    iter_offsets<3>(it, i, off);
    out[off[0]] = compare_value<T>(k, a[off[1]], b[off[2]]);
  }
}

template <class T>
__global__ void where_kernel(Iter<4> it, T* out, const bool* cond, const T* a, const T* b) {
  PEFT_GRID_LOOP(i, it.numel) {
    int64_t off[4];
    iter_offsets<4>(it, i, off);
    out[off[0]] = cond[off[1]] ? a[off[2]] : b[off[3]];
  }
}

// ---------------------------------------------------------------------------
// reductions: kept dims (as out) and reduced dims, size-1 dims dropped, each coalesced.

struct RPlan {
  int nk = 0, nr = 0;
  int64_t ksize[kMaxDims], kxs[kMaxDims], kos[kMaxDims];
  int64_t rsize[kMaxDims], rxs[kMaxDims];
  int64_t n_out = 1, n_red = 1;
};

__device__ inline void locate_out(const RPlan& p, int64_t o, int64_t& xoff, int64_t& ooff) {
  xoff = 0;
  ooff = 0;
  for (int d = p.nk - 1; d >= 0; --d) {
    const int64_t i = o % p.ksize[d];
    o /= p.ksize[d];
    xoff += i * p.kxs[d];
    ooff += i * p.kos[d];
  }
}
__device__ inline int64_t red_offset(const RPlan& p, int64_t r) {
  int64_t off = 0;
  for (int d = p.nr - 1; d >= 0; --d) {
    off += (r % p.rsize[d]) * p.rxs[d];
    r /= p.rsize[d];
  }
  return off;
}

template <class T>
using SumAcc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

template <class T>
__device__ inline T from_acc(SumAcc<T> a) {
  if constexpr (std::is_same_v<T, bool>) return a != 0;
  else return T(a);
}

// One block per output element: large reductions.
template <class T>
__global__ void sum_block_kernel(RPlan p, const T* x, T* out) {
  using A = SumAcc<T>;
  for (int64_t o = blockIdx.x; o < p.n_out; o += gridDim.x) {
    int64_t xoff, ooff;
    locate_out(p, o, xoff, ooff);
    A acc = 0;
    for (int64_t r = threadIdx.x; r < p.n_red; r += blockDim.x) acc += A(x[xoff + red_offset(p, r)]);
    acc = block_sum<A>(acc);
    if (threadIdx.x == 0) out[ooff] = from_acc<T>(acc);
  }
}

// One thread per output element: many outputs (neighbouring outputs read neighbouring inputs).
template <class T>
__global__ void sum_thread_kernel(RPlan p, const T* x, T* out) {
  using A = SumAcc<T>;
  PEFT_GRID_LOOP(o, p.n_out) {
    int64_t xoff, ooff;
    locate_out(p, o, xoff, ooff);
    A acc = 0;
    for (int64_t r = 0; r < p.n_red; ++r) acc += A(x[xoff + red_offset(p, r)]);
    out[ooff] = from_acc<T>(acc);
  }
}

// max / argmax: the first NaN wins, else the first maximum (as PyTorch and the CPU).
template <class T>
struct Best {
  T v;
  int64_t i;
};
template <class T>
__device__ inline Best<T> better(Best<T> a, Best<T> b) {
  if (a.i < 0) return b;
  if (b.i < 0) return a;
  const bool an = a.v != a.v, bn = b.v != b.v;
  if (an && bn) return a.i < b.i ? a : b;
  if (an) return a;
  if (bn) return b;
  if (a.v > b.v) return a;
  if (b.v > a.v) return b;
  return a.i < b.i ? a : b;
}
template <class T>
__device__ inline Best<T> scan_max(const RPlan& p, const T* x, int64_t xoff, int64_t r0, int64_t step) {
  Best<T> best{T{}, -1};
  for (int64_t r = r0; r < p.n_red; r += step) best = better(best, Best<T>{x[xoff + red_offset(p, r)], r});
  return best;
}

template <class T>
__global__ void max_block_kernel(RPlan p, const T* x, T* out, int64_t* out_idx) {
  __shared__ T sv[kThreads];
  __shared__ int64_t si[kThreads];
  for (int64_t o = blockIdx.x; o < p.n_out; o += gridDim.x) {
    int64_t xoff, ooff;
    locate_out(p, o, xoff, ooff);
    Best<T> b = scan_max(p, x, xoff, threadIdx.x, blockDim.x);
    __syncthreads();
    sv[threadIdx.x] = b.v;
    si[threadIdx.x] = b.i;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        Best<T> c = better(Best<T>{sv[threadIdx.x], si[threadIdx.x]},
                           Best<T>{sv[threadIdx.x + s], si[threadIdx.x + s]});
        sv[threadIdx.x] = c.v;
        si[threadIdx.x] = c.i;
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      if (out_idx) out_idx[ooff] = si[0] < 0 ? 0 : si[0];
      else out[ooff] = sv[0];
    }
  }
}

template <class T>
__global__ void max_thread_kernel(RPlan p, const T* x, T* out, int64_t* out_idx) {
  PEFT_GRID_LOOP(o, p.n_out) {
    int64_t xoff, ooff;
    locate_out(p, o, xoff, ooff);
    Best<T> b = scan_max(p, x, xoff, 0, 1);
    if (out_idx) out_idx[ooff] = b.i < 0 ? 0 : b.i;
    else out[ooff] = b.v;
  }
}

// ---------------------------------------------------------------------------
// softmax over dim of a contiguous [outer, n, inner] tensor

template <class T>
__device__ inline T exp_t(T x) {
  return exp(x);
}

// inner == 1: one block per row
template <class T>
__global__ void softmax_rows_kernel(const T* x, T* y, int64_t rows, int64_t n, bool log_out) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    T mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = xr[j] > mx ? xr[j] : mx;
    mx = block_max<T>(mx);
    if (!isfinite(double(mx))) mx = 0;
    double s = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += double(exp_t<T>(xr[j] - mx));
    s = block_sum<double>(s);
    if (log_out) {
      const T ls = T(log(s));
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] - mx - ls;
    } else {
      const T inv = T(1.0 / s);
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yr[j] = exp_t<T>(xr[j] - mx) * inv;
    }
  }
}

// inner > 1: one thread per (outer, inner) column
template <class T>
__global__ void softmax_strided_kernel(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool log_out) {
  PEFT_GRID_LOOP(r, outer * inner) {
    const int64_t o = r / inner, i = r % inner;
    const T* xr = x + o * n * inner + i;
    T* yr = y + o * n * inner + i;
    T mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = xr[j * inner] > mx ? xr[j * inner] : mx;
    if (!isfinite(double(mx))) mx = 0;
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += exp(double(xr[j * inner] - mx));
    if (log_out) {
      const T ls = T(log(s));
      for (int64_t j = 0; j < n; ++j) yr[j * inner] = xr[j * inner] - mx - ls;
    } else {
      const T inv = T(1.0 / s);
      for (int64_t j = 0; j < n; ++j) yr[j * inner] = exp_t<T>(xr[j * inner] - mx) * inv;
    }
  }
}

// ---------------------------------------------------------------------------
// index ops (x, out, src contiguous; index contiguous int64, checked on the host first)

template <class E>
__global__ void index_select_kernel(const E* x, E* out, const int64_t* idx, int64_t total, int64_t n,
                                    int64_t nidx, int64_t inner) {
  PEFT_GRID_LOOP(e, total) {
    const int64_t c = e % inner, r = e / inner, i = r % nidx, o = r / nidx;
    out[e] = x[(o * n + idx[i]) * inner + c];
  }
}

template <class E>
__global__ void gather_kernel(const E* x, E* out, const int64_t* idx, int64_t total, int64_t n, int64_t m,
                              int64_t inner) {
  PEFT_GRID_LOOP(e, total) {
    const int64_t c = e % inner, o = e / (m * inner);
    out[e] = x[(o * n + idx[e]) * inner + c];
  }
}

template <class T>
__device__ inline void atomic_add(T* p, T v) {
  if constexpr (std::is_same_v<T, int64_t>)
    atomicAdd(reinterpret_cast<unsigned long long*>(p), (unsigned long long)v);  // two's complement
  else
    atomicAdd(p, v);
}

template <class T>
__global__ void index_add_kernel(T* out, const T* src, const int64_t* idx, int64_t total, int64_t n, int64_t nidx,
                                 int64_t inner) {
  PEFT_GRID_LOOP(e, total) {
    const int64_t c = e % inner, r = e / inner, i = r % nidx, o = r / nidx;
    atomic_add(out + (o * n + idx[i]) * inner + c, src[e]);
  }
}

template <class T>
__global__ void scatter_add_kernel(T* out, const T* src, const int64_t* idx, int64_t total, int64_t n, int64_t m,
                                   int64_t inner) {
  PEFT_GRID_LOOP(e, total) {
    const int64_t c = e % inner, o = e / (m * inner);
    atomic_add(out + (o * n + idx[e]) * inner + c, src[e]);
  }
}

// ---------------------------------------------------------------------------
// random: the CPU's Philox4x32-10 (runtime/generator.cpp) and its transforms, in double.

__device__ inline void philox(uint64_t seed, uint64_t counter, uint32_t out[4]) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = uint32_t(p1);
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = uint32_t(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

template <class T>
__global__ void random_kernel(RandomKind k, T* out, int64_t n, double a, double b, uint64_t seed, uint64_t counter) {
  PEFT_GRID_LOOP(blk, (n + 3) / 4) {
    uint32_t w[4];
    philox(seed, counter + uint64_t(blk), w);
    double u[4], v[4];
    for (int j = 0; j < 4; ++j) u[j] = (double(w[j] >> 8) + 0.5) * (1.0 / 16777216.0);
    // _rn intrinsics: never contracted into FMAs, so the roundings are the CPU's
    if (k == RandomKind::normal) {
      for (int j = 0; j < 4; j += 2) {
        const double rad = sqrt(__dmul_rn(-2.0, log(u[j])));
        const double br = __dmul_rn(b, rad), ang = __dmul_rn(6.283185307179586, u[j + 1]);
        v[j] = __dadd_rn(a, __dmul_rn(br, cos(ang)));
        v[j + 1] = __dadd_rn(a, __dmul_rn(br, sin(ang)));
      }
    } else if (k == RandomKind::uniform) {
      const double span = __dadd_rn(b, -a);
      for (int j = 0; j < 4; ++j) v[j] = __dadd_rn(a, __dmul_rn(span, double(w[j] >> 8) * (1.0 / 16777216.0)));
    } else {
      for (int j = 0; j < 4; ++j) v[j] = u[j] < a ? 1.0 : 0.0;
    }
    for (int j = 0; j < 4; ++j) {
      const int64_t i = blk * 4 + j;
      if (i < n) out[i] = T(v[j]);
    }
  }
}

// ---------------------------------------------------------------------------
// gemm helpers

struct MatLayout {
  bool ok;
  bool trans;  // stored transposed relative to row-major (column stride 1 is "not transposed")
  int64_t ld;
};

// Describes a [rows, cols] strided matrix as a row-major BLAS operand (as cpu_backend.cpp).
MatLayout mat_layout(int64_t rows, int64_t cols, int64_t srow, int64_t scol) {
  if (scol == 1 || cols == 1) {
    const int64_t ld = rows > 1 ? srow : cols;
    if (ld >= std::max<int64_t>(cols, 1)) return {true, false, ld};
  }
  if (srow == 1 || rows == 1) {
    const int64_t ld = cols > 1 ? scol : rows;
    if (ld >= std::max<int64_t>(rows, 1)) return {true, true, ld};
  }
  return {false, false, 0};
}

cudaDataType_t cuda_type(DType dt) {
  switch (dt) {
    case DType::float32: return CUDA_R_32F;
    case DType::float64: return CUDA_R_64F;
    case DType::bfloat16: return CUDA_R_16BF;
    case DType::float16: return CUDA_R_16F;
    default: fail("[matmul] internal: CUDA gemm called with ", dtype_name(dt));
  }
}

void check_int(int64_t v, const char* what, const Tensor& a, const Tensor& b) {
  if (v > int64_t(INT32_MAX))
    fail("[matmul] ", what, " = ", v, " exceeds cuBLAS's 32-bit limit for ", a.desc(), " @ ", b.desc());
}

// ---------------------------------------------------------------------------

class CudaBackend final : public Backend {
 public:
  std::shared_ptr<Storage> allocate(size_t nbytes) override {
    make_current();
    const int dev = g_device.load();
    const size_t rounded = DeviceCache::round(nbytes);
    void* p = device_cache().get(dev, rounded);
    auto st = std::make_shared<Storage>();
    st->data = p;
    st->nbytes = nbytes;
    st->device = Device::cuda;
    st->owner = std::shared_ptr<void>(p, [dev, rounded](void* q) { device_cache().put(dev, q, rounded); });
    return st;
  }

  void copy(const Tensor& src, Tensor& dst) override {
    make_current();
    if (dst.numel() == 0) return;
    if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
      check(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice), "copy");
      return;
    }
    Iter<2> it = make_iter<2>(dst.shape(), {&dst, &src}, "copy");
    dispatch_all(src.dtype(), [&](auto s_tag) {
      using S = decltype(s_tag);
      dispatch_all(dst.dtype(), [&](auto d_tag) {
        using D = decltype(d_tag);
        copy_kernel<S, D><<<blocks_for(it.numel), kThreads>>>(it, dptr<D>(dst), dptr<S>(src));
      });
    });
    check_launch("copy");
  }

  void fill(Tensor& dst, double value) override {
    make_current();
    if (dst.numel() == 0) return;
    Iter<1> it = make_iter<1>(dst.shape(), {&dst}, "fill");
    dispatch_all(dst.dtype(), [&](auto tag) {
      using T = decltype(tag);
      fill_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, dptr<T>(dst), value);
    });
    check_launch("fill");
  }

  void unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1) override {
    make_current();
    if (out.numel() == 0) return;
    Iter<2> it = make_iter<2>(out.shape(), {&out, &x}, "unary");
    const bool pred = k >= UnaryKind::isfinite;
    dispatch_compute(x.dtype(), "unary", [&](auto tag) {
      using T = decltype(tag);
      if (pred)
        predicate_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, k, dptr<bool>(out), dptr<T>(x), s0);
      else
        unary_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, k, dptr<T>(out), dptr<T>(x), s0, s1);
    });
    check_launch("unary");
  }

  void binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out) override {
    make_current();
    if (out.numel() == 0) return;
    Iter<3> it = make_iter<3>(out.shape(), {&out, &a, &b}, "binary");
    const bool cmp = k >= BinaryKind::eq;
    dispatch_compute(a.dtype(), "binary", [&](auto tag) {
      using T = decltype(tag);
      if (cmp)
        compare_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, k, dptr<bool>(out), dptr<T>(a), dptr<T>(b));
      else
        binary_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, k, dptr<T>(out), dptr<T>(a), dptr<T>(b));
    });
    check_launch("binary");
  }

  void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) override {
    make_current();
    if (out.numel() == 0) return;
    Iter<4> it = make_iter<4>(out.shape(), {&out, &cond, &a, &b}, "where");
    dispatch_all(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      where_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, dptr<T>(out), dptr<bool>(cond), dptr<T>(a),
                                                          dptr<T>(b));
    });
    check_launch("where");
  }

  void reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced, Tensor& out) override {
    make_current();
    RPlan p;
    struct D {
      int64_t size, xs, os;
    };
    std::vector<D> kept, red;
    for (int64_t d = 0; d < x.dim(); ++d) {
      const int64_t n = x.shape()[size_t(d)];
      if (n == 1) continue;
      if (reduced[size_t(d)]) red.push_back({n, x.strides()[size_t(d)], 0});
      else kept.push_back({n, x.strides()[size_t(d)], out.strides()[size_t(d)]});
    }
    auto coalesce = [](std::vector<D>& dims) {
      std::vector<D> o;
      for (const D& d : dims) {
        if (!o.empty() && o.back().xs == d.xs * d.size && o.back().os == d.os * d.size) {
          o.back() = {o.back().size * d.size, d.xs, d.os};
          continue;
        }
        o.push_back(d);
      }
      dims = std::move(o);
    };
    coalesce(kept);
    coalesce(red);
    if (kept.size() > size_t(kMaxDims) || red.size() > size_t(kMaxDims))
      fail("[reduce] CUDA kernels take up to ", kMaxDims, " non-mergeable dims, got ", x.desc());
    p.nk = int(kept.size());
    p.nr = int(red.size());
    for (int i = 0; i < p.nk; ++i) {
      p.ksize[i] = kept[size_t(i)].size, p.kxs[i] = kept[size_t(i)].xs, p.kos[i] = kept[size_t(i)].os;
      p.n_out *= p.ksize[i];
    }
    for (int i = 0; i < p.nr; ++i) {
      p.rsize[i] = red[size_t(i)].size, p.rxs[i] = red[size_t(i)].xs;
      p.n_red *= p.rsize[i];
    }
    if (p.n_out == 0) return;
    // A thread per output when outputs are many and neighbours read neighbouring memory, or
    // when each output sums few elements; else a block per output.
    const bool inner_kept = !kept.empty() && kept.back().xs == 1;
    const bool per_thread = p.n_red <= 32 || (p.n_out >= 2048 && inner_kept);
    const unsigned grid = per_thread ? blocks_for(p.n_out) : unsigned(std::min<int64_t>(p.n_out, 65535));
    dispatch_compute(x.dtype(), "reduce", [&](auto tag) {
      using T = decltype(tag);
      const T* xp = dptr<T>(x);
      if (k == ReduceKind::sum) {
        if (per_thread) sum_thread_kernel<T><<<grid, kThreads>>>(p, xp, dptr<T>(out));
        else sum_block_kernel<T><<<grid, kThreads>>>(p, xp, dptr<T>(out));
      } else {
        T* ov = k == ReduceKind::max ? dptr<T>(out) : nullptr;
        int64_t* oi = k == ReduceKind::argmax ? dptr<int64_t>(out) : nullptr;
        if (per_thread) max_thread_kernel<T><<<grid, kThreads>>>(p, xp, ov, oi);
        else max_block_kernel<T><<<grid, kThreads>>>(p, xp, ov, oi);
      }
    });
    check_launch("reduce");
  }

  DType gemm_dtype(DType dt) const override {
    return dt == DType::bfloat16 || dt == DType::float16 ? dt : compute_dtype(dt);
  }

  void gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) override {
    make_current();
    const bool batched = a.dim() == 3;
    const int64_t B = batched ? a.size(0) : 1;
    const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
    if (M == 0 || N == 0 || B == 0) return;
    check_int(M, "M", a, b), check_int(N, "N", a, b), check_int(K, "K", a, b), check_int(B, "batch", a, b);
    const DType dt = a.dtype();
    if (b.dtype() != dt || out.dtype() != dt)
      fail("[matmul] internal: CUDA gemm needs one dtype, got ", a.desc(), ", ", b.desc(), ", ", out.desc());
    if (K == 0) {  // out = beta·out; cuBLAS rejects the leading dimensions of empty operands
      if (beta == 0) fill(out, 0.0);
      else if (beta != 1) unary(UnaryKind::mul_scalar, out, out, beta, 0.0);
      return;
    }
    // Row-major out [M,N] is column-major outᵀ [N,M] = Bᵀ·Aᵀ: cuBLAS's first operand is B.
    Tensor av = a, bv = b;
    MatLayout la = mat_layout(M, K, a.stride(-2), a.stride(-1));
    MatLayout lb = mat_layout(K, N, b.stride(-2), b.stride(-1));
    if (!la.ok) {
      av = contiguous_raw(a);
      la = {true, false, K};
    }
    if (!lb.ok) {
      bv = contiguous_raw(b);
      lb = {true, false, N};
    }
    const int64_t sa = batched ? av.stride(0) : 0, sb = batched ? bv.stride(0) : 0;
    const cudaDataType_t ct = cuda_type(dt);
    const bool f64 = dt == DType::float64;
    const float af = float(alpha), bf = float(beta);
    const void* alpha_p = f64 ? static_cast<const void*>(&alpha) : static_cast<const void*>(&af);
    const void* beta_p = f64 ? static_cast<const void*>(&beta) : static_cast<const void*>(&bf);
    const cublasComputeType_t comp = f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
    cublasHandle_t h = cublas_handle();
    const cublasOperation_t opb = lb.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opa = la.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    check_cublas(cublasGemmStridedBatchedEx(h, opb, opa, int(N), int(M), int(K), alpha_p, bv.raw_data(), ct,
                                            int(lb.ld), sb, av.raw_data(), ct, int(la.ld), sa, beta_p,
                                            out.raw_data(), ct, int(N), M * N, int(B), comp, CUBLAS_GEMM_DEFAULT),
                 "matmul");
  }

  void softmax(const Tensor& x, int64_t dim, bool log, Tensor& out) override {
    make_current();
    int64_t outer = 1, inner = 1, n = x.size(dim);
    for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
    if (outer * inner == 0 || n == 0) return;
    dispatch_float(x.dtype(), "softmax", [&](auto tag) {
      using T = decltype(tag);
      if (inner == 1)
        softmax_rows_kernel<T><<<unsigned(std::min<int64_t>(outer, 65535)), kThreads>>>(dptr<T>(x), dptr<T>(out),
                                                                                         outer, n, log);
      else
        softmax_strided_kernel<T><<<blocks_for(outer * inner), kThreads>>>(dptr<T>(x), dptr<T>(out), outer, n,
                                                                            inner, log);
    });
    check_launch("softmax");
  }

  // Bounds are checked on the host copy of the indices (one small transfer) so a bad index
  // is an exception naming the op, as on the CPU, never a device fault.
  static void check_indices(const Tensor& index, int64_t bound, const char* op, int64_t dim) {
    const int64_t n = index.numel();
    if (n == 0) return;
    std::vector<int64_t> host(static_cast<size_t>(n));
    check(cudaMemcpy(host.data(), index.raw_data(), size_t(n) * sizeof(int64_t), cudaMemcpyDeviceToHost), op);
    for (int64_t v : host)
      if (v < 0 || v >= bound)
        fail("[", op, "] index ", v, " is out of bounds for dimension ", dim, " with size ", bound);
  }

  template <class F>
  static void dispatch_size(size_t es, F&& f) {
    switch (es) {
      case 1: f(uint8_t{}); break;
      case 2: f(uint16_t{}); break;
      case 4: f(uint32_t{}); break;
      default: f(uint64_t{}); break;
    }
  }

  void index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override {
    make_current();
    int64_t outer = 1, inner = 1, n = x.size(dim), nidx = index.numel();
    for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
    check_indices(index, n, "index_select", dim);
    const int64_t total = outer * nidx * inner;
    if (total == 0) return;
    dispatch_size(dtype_size(x.dtype()), [&](auto tag) {
      using E = decltype(tag);
      index_select_kernel<E><<<blocks_for(total), kThreads>>>(dptr<E>(x), dptr<E>(out), dptr<int64_t>(index), total,
                                                              n, nidx, inner);
    });
    check_launch("index_select");
  }

  void index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override {
    make_current();
    int64_t outer = 1, inner = 1, n = out.size(dim), nidx = index.numel();
    for (int64_t d = 0; d < dim; ++d) outer *= out.size(d);
    for (int64_t d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
    check_indices(index, n, "index_add", dim);
    const int64_t total = outer * nidx * inner;
    if (total == 0) return;
    dispatch_compute(out.dtype(), "index_add", [&](auto tag) {
      using T = decltype(tag);
      if constexpr (std::is_same_v<T, bool>) {
        fail("[index_add] not defined for bool tensors");
      } else {
        index_add_kernel<T><<<blocks_for(total), kThreads>>>(dptr<T>(out), dptr<T>(src), dptr<int64_t>(index), total,
                                                             n, nidx, inner);
      }
    });
    check_launch("index_add");
  }

  void gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override {
    make_current();
    int64_t inner = 1, n = x.size(dim), m = index.size(dim);
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
    check_indices(index, n, "gather", dim);
    const int64_t total = index.numel();
    if (total == 0) return;
    dispatch_size(dtype_size(x.dtype()), [&](auto tag) {
      using E = decltype(tag);
      gather_kernel<E><<<blocks_for(total), kThreads>>>(dptr<E>(x), dptr<E>(out), dptr<int64_t>(index), total, n, m,
                                                        inner);
    });
    check_launch("gather");
  }

  void scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override {
    make_current();
    int64_t inner = 1, n = out.size(dim), m = index.size(dim);
    for (int64_t d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
    check_indices(index, n, "scatter_add", dim);
    const int64_t total = index.numel();
    if (total == 0) return;
    dispatch_compute(out.dtype(), "scatter_add", [&](auto tag) {
      using T = decltype(tag);
      if constexpr (std::is_same_v<T, bool>) {
        fail("[scatter_add] not defined for bool tensors");
      } else {
        scatter_add_kernel<T><<<blocks_for(total), kThreads>>>(dptr<T>(out), dptr<T>(src), dptr<int64_t>(index),
                                                               total, n, m, inner);
      }
    });
    check_launch("scatter_add");
  }

  void random(RandomKind k, Tensor& out, double a, double b, uint64_t seed, uint64_t counter) override {
    make_current();
    const int64_t n = out.numel();
    if (n == 0) return;
    dispatch_float(out.dtype(), "random", [&](auto tag) {
      using T = decltype(tag);
      random_kernel<T><<<blocks_for((n + 3) / 4), kThreads>>>(k, dptr<T>(out), n, a, b, seed, counter);
    });
    check_launch("random");
  }

  // transformer blocks: cuda_transformer.cu
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& out, Tensor& mean,
                  Tensor& rstd) override {
    make_current();
    cuda::layer_norm(x, w, b, eps, out, mean, rstd);
  }
  void layer_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                           Tensor& dx, Tensor& dw, Tensor& db) override {
    make_current();
    cuda::layer_norm_backward(g, x, w, mean, rstd, dx, dw, db);
  }
  void rms_norm(const Tensor& x, const Tensor& w, double eps, DType rt, Tensor& out, Tensor& rstd) override {
    make_current();
    cuda::rms_norm(x, w, eps, rt, out, rstd);
  }
  void rms_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& rstd, DType rt, Tensor& dx,
                         Tensor& dw) override {
    make_current();
    cuda::rms_norm_backward(g, x, w, rstd, rt, dx, dw);
  }
  void rotary_embedding(const Tensor& x, const Tensor& c, const Tensor& s, bool tr, Tensor& out) override {
    make_current();
    cuda::rotary_embedding(x, c, s, tr, out);
  }
  void scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                    bool causal, double scale, Tensor& out, Tensor& lse) override {
    make_current();
    cuda::attention(q, k, v, mask, causal, scale, out, lse);
  }
  void scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                             bool causal, double scale, const Tensor& out, const Tensor& lse,
                                             const Tensor& g, Tensor& dq, Tensor& dk, Tensor& dv) override {
    make_current();
    cuda::attention_backward(q, k, v, mask, causal, scale, out, lse, g, dq, dk, dv);
  }
};

}  // namespace

void make_current() {
  thread_local int current = -1;
  const int dev = g_device.load();
  if (current != dev) {
    check(cudaSetDevice(dev), "cudaSetDevice");
    current = dev;
  }
}

}  // namespace cuda

// ---------------------------------------------------------------------------
// entry points declared in runtime/backend.h

bool cuda_available() {
  static const bool present = cuda::device_count_or_zero(nullptr) > 0;
  return present;
}

int cuda_device_count() { return cuda::device_count_or_zero(nullptr); }

void select_cuda_device(int index) {
  std::string why;
  const int n = cuda::device_count_or_zero(&why);
  if (n == 0) fail("cannot select cuda:", index, ": no CUDA device is present (", why, ")");
  if (index < 0 || index >= n)
    fail("cannot select cuda:", index, ": this machine has ", n, " CUDA device", n == 1 ? "" : "s", " (cuda:0",
         n > 1 ? std::string(" to cuda:") + std::to_string(n - 1) : std::string(), ")");
  cuda::g_device.store(index);
  cuda::make_current();
}

void cuda_synchronize() {
  if (!cuda_available()) return;
  cuda::make_current();
  cuda::check(cudaDeviceSynchronize(), "cuda_synchronize");
}

Backend& cuda_backend() {
  static std::string why;
  static const bool present = [] { return cuda::device_count_or_zero(&why) > 0; }();
  if (!present)
    fail("no CUDA device is present (", why,
         "): this build has the CUDA backend, but tensors can only go to cuda on a machine with an NVIDIA GPU "
         "and its driver");
  static cuda::CudaBackend b;
  return b;
}

void copy_across_devices(const Tensor& src, Tensor& dst) {
  if (src.nbytes() != dst.nbytes())
    fail("[to_device] internal: copying ", src.desc(), " into ", dst.desc(), " of a different size");
  if (src.nbytes() == 0) return;
  const Device s = src.device(), d = dst.device();
  if (s == Device::meta || d == Device::meta)
    fail("[to_device] cannot copy ", src.desc(), " to ", dst.desc(), ": meta tensors have no data");
  if (s == Device::cpu && d == Device::cpu) {
    std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  cuda_backend();  // fails clearly without a device
  cuda::make_current();
  const cudaMemcpyKind kind = s == Device::cpu ? cudaMemcpyHostToDevice
                              : d == Device::cpu ? cudaMemcpyDeviceToHost
                                                 : cudaMemcpyDeviceToDevice;
  cuda::check(cudaMemcpy(dst.raw_data(), src.raw_data(), src.nbytes(), kind), "to_device");
}

}  // namespace peft
