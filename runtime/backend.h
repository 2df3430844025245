// Internal: the kernel interface each device implements. Ops validate and
// shape everything before calling in, so kernels only compute. Not installed.
#pragma once
#include <memory>
#include <vector>

#include "runtime/tensor.h"

namespace peft {

enum class UnaryKind {
  neg, exp, log, sqrt, rsqrt, abs, sign, erf, relu, gelu, silu, tanh, sigmoid,
  add_scalar, mul_scalar, div_scalar, rsub_scalar, rdiv_scalar, pow_scalar, clamp,
  // results are bool:
  isfinite, logical_not, eq_scalar, ne_scalar, gt_scalar, lt_scalar, ge_scalar, le_scalar
};

// tanh_grad: a·(1 - b²), the gradient through tanh given its output b
enum class BinaryKind { add, sub, mul, div, pow, maximum, tanh_grad, eq, ne, gt, lt, ge, le };

enum class ReduceKind { sum, max, argmax };

enum class RandomKind { uniform, normal, bernoulli };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::shared_ptr<Storage> allocate(size_t nbytes) = 0;
  // dst = src elementwise; same shape (src may carry zero strides), any dtypes.
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  virtual void fill(Tensor& dst, double value) = 0;
  // x and out have the same shape; x's dtype is float32/float64/int64/bool;
  // out has x's dtype, or bool for the predicate kinds.
  virtual void unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1) = 0;
  // a and b are already expanded to out's shape and share one dtype.
  virtual void binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // out has x's rank with size 1 on reduced dims; reduced[d] says which.
  virtual void reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced,
                      Tensor& out) = 0;
  // out[b] = alpha * a[b] @ b[b] + beta * out[b]; a [B?,M,K], b [B?,K,N] any strides,
  // out contiguous [B?,M,N]. float32 / float64.
  virtual void gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) = 0;
  // a = u·diag(s)·vh; a contiguous float64 [M,N]; u, s, vh contiguous float64 of the shapes
  // svd() documents. Only the CPU has a kernel: other devices go through the CPU.
  virtual void svd(const Tensor& a, Tensor& u, Tensor& s, Tensor& vh) {
    (void)a, (void)u, (void)s, (void)vh;
    fail("[svd] has no kernel on this device");
  }
  virtual void softmax(const Tensor& x, int64_t dim, bool log, Tensor& out) = 0;
  virtual void index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) = 0;
  // out.index_add_(dim, index, src) in place.
  virtual void index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) = 0;
  virtual void gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) = 0;
  // out.scatter_add_(dim, index, src) in place.
  virtual void scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) = 0;
  // Fills contiguous `out` from Philox(seed, counter + i/4): uniform in [a, b),
  // normal(mean a, std b) or bernoulli(keep probability a) as 0/1.
  virtual void random(RandomKind k, Tensor& out, double a, double b, uint64_t seed,
                      uint64_t counter) = 0;
};

Backend& backend(Device dev);
Backend& cpu_backend();
Backend& cuda_backend();  // throws "built without CUDA" in stub builds
bool cuda_available();
// Copies between devices (contiguous src and dst of equal dtype and shape).
void copy_across_devices(const Tensor& src, Tensor& dst);

// Internal helpers shared by ops.
Tensor make_tensor(const Shape& shape, DType dt, Device dev);  // allocates (or meta)
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);
DType compute_dtype(DType dt);  // bf16/f16 -> float32, others unchanged
// Raw (no autograd) conversion to dtype `dt`, returning `t` itself when equal.
Tensor convert_raw(const Tensor& t, DType dt);
Tensor contiguous_raw(const Tensor& t);

}  // namespace peft
