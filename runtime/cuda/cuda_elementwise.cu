// CUDA elementwise kernels of the Backend interface: dtype-converting copy, fill, unary
// (and the scalar predicates), binary (and the comparisons) and where, each a grid-stride
// loop over the strided index plan (cuda_common.cuh). The scalar formulas are the CPU's,
// shared through runtime/scalar_math.h.
#include "runtime/cuda/cuda_common.cuh"
#include "runtime/cuda/cuda_kernels.h"
#include "runtime/scalar_math.h"

namespace peft::cuda {

namespace {

using scalar::binary_value;
using scalar::compare_value;
using scalar::predicate_value;
using scalar::unary_value;

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

}  // namespace

void copy(const Tensor& src, Tensor& dst) {
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

void fill(Tensor& dst, double value) {
  if (dst.numel() == 0) return;
  Iter<1> it = make_iter<1>(dst.shape(), {&dst}, "fill");
  dispatch_all(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, dptr<T>(dst), value);
  });
  check_launch("fill");
}

void unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1) {
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

void binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out) {
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

void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  if (out.numel() == 0) return;
  Iter<4> it = make_iter<4>(out.shape(), {&out, &cond, &a, &b}, "where");
  dispatch_all(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    where_kernel<T><<<blocks_for(it.numel), kThreads>>>(it, dptr<T>(out), dptr<bool>(cond), dptr<T>(a),
                                                        dptr<T>(b));
  });
  check_launch("where");
}

}  // namespace peft::cuda
