// CUDA kernels of the Backend's reductions (sum, max, argmax), softmax / log_softmax,
// index ops (index_select, index_add, gather, scatter_add) and random fills (the CPU's
// Philox stream), with their host-side launchers.
#include <cmath>
#include <vector>

#include "runtime/cuda/cuda_common.cuh"
#include "runtime/cuda/cuda_kernels.h"
#include "runtime/reduce_dims.h"

namespace peft::cuda {

namespace {

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

// Bounds are checked on the host copy of the indices (one small transfer) so a bad index
// is an exception naming the op, as on the CPU, never a device fault.
void check_indices(const Tensor& index, int64_t bound, const char* op, int64_t dim) {
  const int64_t n = index.numel();
  if (n == 0) return;
  std::vector<int64_t> host(static_cast<size_t>(n));
  check(cudaMemcpy(host.data(), index.raw_data(), size_t(n) * sizeof(int64_t), cudaMemcpyDeviceToHost), op);
  for (int64_t v : host)
    if (v < 0 || v >= bound)
      fail("[", op, "] index ", v, " is out of bounds for dimension ", dim, " with size ", bound);
}

template <class F>
void dispatch_size(size_t es, F&& f) {
  switch (es) {
    case 1: f(uint8_t{}); break;
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    default: f(uint64_t{}); break;
  }
}

}  // namespace

void reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced, Tensor& out) {
  RPlan p;
  std::vector<RDim> kept, red;
  split_reduce_dims(x, reduced, out, kept, red);
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

void softmax(const Tensor& x, int64_t dim, bool log, Tensor& out) {
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

void index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) {
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

void index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
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

void gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) {
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

void scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
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

void random(RandomKind k, Tensor& out, double a, double b, uint64_t seed, uint64_t counter) {
  const int64_t n = out.numel();
  if (n == 0) return;
  dispatch_float(out.dtype(), "random", [&](auto tag) {
    using T = decltype(tag);
    random_kernel<T><<<blocks_for((n + 3) / 4), kThreads>>>(k, dptr<T>(out), n, a, b, seed, counter);
  });
  check_launch("random");
}

}  // namespace peft::cuda
