// Internal to the CUDA backend (compiled by nvcc only): error checks, the strided index
// plan every elementwise kernel walks, dtype dispatch and the device-side conversions
// that give the CPU's bits (runtime/half.h) for bfloat16 / float16.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "runtime/backend.h"
#include "runtime/dtype_switch.h"

namespace peft::cuda {

// Throws peft::Error "[what] CUDA error: <text>" unless e is cudaSuccess.
void check(cudaError_t e, const char* what);
// Reports a failed kernel launch (bad configuration, no kernel image for this GPU).
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// Makes the selected device current on the calling thread (cudaSetDevice is per thread).
void make_current();

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > 1048576 ? 1048576 : b));  // grid-stride loops cover the rest
}

// ---------------------------------------------------------------------------
// Strided iteration: up to kMaxDims dims after dropping size-1 dims and merging dims
// that form one run in every operand. Strides in elements.
constexpr int kMaxDims = 12;

template <int N>
struct Iter {
  int ndim = 0;
  bool contiguous = true;  // every operand dense row-major: offset = linear index
  int64_t numel = 1;
  int64_t size[kMaxDims];
  int64_t stride[N][kMaxDims];
};

template <int N>
Iter<N> make_iter(const Shape& shape, std::initializer_list<const Tensor*> ops, const char* what) {
  Iter<N> it;
  const Tensor* const* t = ops.begin();
  for (int64_t s : shape) it.numel *= s;
  int nd = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (nd > 0) {  // merge with the previous (outer) dim when every operand allows it
      bool merge = true;
      for (int k = 0; k < N; ++k)
        if (it.stride[k][nd - 1] != t[k]->strides()[d] * shape[d]) merge = false;
      if (merge) {
        it.size[nd - 1] *= shape[d];
        for (int k = 0; k < N; ++k) it.stride[k][nd - 1] = t[k]->strides()[d];
        continue;
      }
    }
    if (nd == kMaxDims)
      fail("[", what, "] CUDA kernels take tensors of up to ", kMaxDims, " non-mergeable dims, got ",
           t[0]->desc());
    it.size[nd] = shape[d];
    for (int k = 0; k < N; ++k) it.stride[k][nd] = t[k]->strides()[d];
    ++nd;
  }
  it.ndim = nd;
  it.contiguous = nd == 0 || (nd == 1 && [&] {
                    for (int k = 0; k < N; ++k)
                      if (it.stride[k][0] != 1) return false;
                    return true;
                  }());
  return it;
}

template <int N>
__device__ inline void iter_offsets(const Iter<N>& it, int64_t i, int64_t off[N]) {
  for (int k = 0; k < N; ++k) off[k] = 0;
  if (it.contiguous) {
    for (int k = 0; k < N; ++k) off[k] = it.ndim == 0 ? 0 : i;
    return;
  }
  for (int d = it.ndim - 1; d >= 0; --d) {
    const int64_t idx = i % it.size[d];
    i /= it.size[d];
    for (int k = 0; k < N; ++k) off[k] += idx * it.stride[k][d];
  }
}

#define PEFT_GRID_LOOP(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// ---------------------------------------------------------------------------
// Conversions: bfloat16 rounding is the CPU's bit recipe (half.h), float16 is IEEE RNE.
__device__ inline float bf16_bits_to_float(__nv_bfloat16 h) { return __bfloat162float(h); }
__device__ inline __nv_bfloat16 float_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  unsigned short r;
  if ((u & 0x7fffffffu) > 0x7f800000u)
    r = (unsigned short)((u >> 16) | 0x40);
  else
    r = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return __ushort_as_bfloat16(r);
}

template <class T>
__device__ inline double to_d(T x) {
  return double(x);
}
template <>
__device__ inline double to_d<__nv_bfloat16>(__nv_bfloat16 x) {
  return double(__bfloat162float(x));
}
template <>
__device__ inline double to_d<__half>(__half x) {
  return double(__half2float(x));
}
template <class T>
__device__ inline T from_d(double x) {
  return T(x);
}
template <>
__device__ inline __nv_bfloat16 from_d<__nv_bfloat16>(double x) {
  return float_to_bf16_bits(float(x));
}
template <>
__device__ inline __half from_d<__half>(double x) {
  return __float2half_rn(float(x));
}
template <>
__device__ inline bool from_d<bool>(double x) {
  return x != 0;
}

template <class S, class D>
__device__ inline D convert(S x) {
  if constexpr (std::is_same_v<S, D>) {
    return x;
  } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, __nv_bfloat16>) {
    return float_to_bf16_bits(x);
  } else if constexpr (std::is_same_v<S, __nv_bfloat16> && std::is_same_v<D, float>) {
    return __bfloat162float(x);
  } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<S, __half> && std::is_same_v<D, float>) {
    return __half2float(x);
  } else {
    return from_d<D>(to_d<S>(x));
  }
}

// ---------------------------------------------------------------------------
// dtype dispatch (host): runtime/dtype_switch.h with the device storage types.
template <class F>
void dispatch_all(DType dt, F&& f) {
  dispatch_dtype_all<__nv_bfloat16, __half>(dt, static_cast<F&&>(f));
}
template <class F>
void dispatch_compute(DType dt, const char* what, F&& f) {
  dispatch_dtype_compute(dt, "CUDA", what, static_cast<F&&>(f));
}
template <class F>
void dispatch_float(DType dt, const char* what, F&& f) {
  dispatch_dtype_float(dt, "CUDA", what, static_cast<F&&>(f));
}

template <class T>
inline T* dptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// Block-wide sum of one value per thread (blockDim.x a multiple of 32, at most 1024).
template <class A>
__device__ inline A block_sum(A v) {
  __shared__ A part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) / 32;
  A r = A(0);
  if (warp == 0) {
    r = lane < nw ? part[lane] : A(0);
    for (int o = 16; o > 0; o >>= 1) r += __shfl_down_sync(0xffffffffu, r, o);
    if (lane == 0) part[0] = r;
  }
  __syncthreads();
  return part[0];
}

template <class A>
__device__ inline A block_max(A v) {
  __shared__ A part[32];
  for (int o = 16; o > 0; o >>= 1) {
    A w = __shfl_down_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) / 32;
  if (warp == 0) {
    A r = lane < nw ? part[lane] : part[0];
    for (int o = 16; o > 0; o >>= 1) {
      A w = __shfl_down_sync(0xffffffffu, r, o);
      r = w > r ? w : r;
    }
    if (lane == 0) part[0] = r;
  }
  __syncthreads();
  return part[0];
}

}  // namespace peft::cuda
