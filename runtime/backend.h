// Internal: the kernel interface each device implements. Ops validate and
// shape everything before calling in, so kernels only compute. Not installed.
#pragma once
#include <memory>
#include <vector>

#include "runtime/device.h"
#include "runtime/tensor.h"

namespace peft {

struct AdamWConstants;  // runtime/ops.h

enum class UnaryKind {
  neg, exp, log, sqrt, rsqrt, abs, sign, erf, relu, gelu, silu, tanh, sigmoid, gelu_tanh,
  add_scalar, mul_scalar, div_scalar, rsub_scalar, rdiv_scalar, pow_scalar, clamp,
  // results are bool:
  isfinite, logical_not, eq_scalar, ne_scalar, gt_scalar, lt_scalar, ge_scalar, le_scalar
};

// tanh_grad: a·(1 - b²), the gradient through tanh given its output b;
// gelu_tanh_grad: a·gelu_tanh'(b), the gradient through gelu_tanh given its input b
// gelu_grad: a·gelu'(b), the same for the exact (erf) gelu
enum class BinaryKind { add, sub, mul, div, pow, maximum, tanh_grad, gelu_tanh_grad, gelu_grad, eq, ne, gt, lt, ge, le };

enum class ReduceKind { sum, max, argmax };

enum class RandomKind { uniform, normal, bernoulli };

DType compute_dtype(DType dt);  // bf16/f16 -> float32, others unchanged

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
  // out contiguous [B?,M,N]. All three in one dtype: float32 / float64, or whatever
  // gemm_dtype() returns for a half-precision input.
  virtual void gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) = 0;
  // The dtype gemm() wants for inputs of dtype dt. Devices with native half-precision
  // products (CUDA tensor cores, float32 accumulation) keep bfloat16/float16; the CPU
  // converts them to float32 first.
  virtual DType gemm_dtype(DType dt) const { return compute_dtype(dt); }
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

  // ---- in-place updates without autograd (runtime/ops_update.cpp) ----
  // Fused kernels; a device without them fails clearly.

  // y [M, out] contiguous += scale·(x·aᵀ)·bᵀ with x [M, in], a [r, in], b [out, r] (any strides),
  // all of one float dtype (float32, float64, or a half type this device's gemm keeps); M, in, r
  // and out are positive. Default (backend.cpp): two gemm calls, the second accumulating into y
  // through beta = 1 (the fused scale-and-add); the CPU overrides it with loops for tiny shapes.
  virtual void lora_linear_update(Tensor& y, const Tensor& x, const Tensor& a, const Tensor& b, double scale);
  // One AdamW update with the constants `c` (ops.h): param, grad, exp_avg, exp_avg_sq contiguous,
  // one shape and one float dtype (float32 computes in float32 with c narrowed, float64 in float64).
  virtual void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                          const AdamWConstants& c) {
    (void)param, (void)grad, (void)exp_avg, (void)exp_avg_sq, (void)c;
    fail("[adamw_step_] has no kernel on this device");
  }

  // ---- GGML block-quantized weights (linear / matmul / embedding / to_dtype) ----
  // Kernels a device without them refuses clearly. w is a contiguous quantized tensor.

  // x contiguous float32 [M, K], w [N, K]; out contiguous float32 [M, N] = x·wᵀ (overwritten).
  virtual void quantized_linear(const Tensor& x, const Tensor& w, Tensor& out) {
    (void)x, (void)out;
    fail("[linear] has no kernel for ", dtype_name(w.dtype()), " weights on this device");
  }
  // g contiguous float32 [M, N], w [N, K]; out contiguous float32 [M, K] = g·w (overwritten).
  virtual void quantized_matmul(const Tensor& g, const Tensor& w, Tensor& out) {
    (void)g, (void)out;
    fail("[matmul] has no kernel for ", dtype_name(w.dtype()), " weights on this device");
  }
  // out contiguous float32 of w's shape: ggml's reference dequantization.
  virtual void dequantize(const Tensor& w, Tensor& out) {
    (void)out;
    fail("[to_dtype] cannot dequantize ", dtype_name(w.dtype()), " on this device");
  }
  // w [N, K]; ids contiguous int64 (each in [0, N)); out contiguous float32 [ids.numel(), K].
  virtual void dequantize_rows(const Tensor& w, const Tensor& ids, Tensor& out) {
    (void)ids, (void)out;
    fail("[embedding] has no kernel for ", dtype_name(w.dtype()), " weights on this device");
  }

  // ---- transformer blocks (runtime/ops_transformer.cpp, layer_norm in ops_nn.cpp) ----
  // Fused kernels; a device without them fails clearly. All tensors share one float dtype
  // (float32 or float64) unless said otherwise; "rows" are the leading dims flattened.

  // x contiguous [rows, N]; weight, bias undefined or contiguous [N]; out contiguous like x;
  // mean, rstd contiguous [rows]: out = (x - mean)·rstd·weight + bias, rstd = 1/√(var + eps).
  virtual void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                          Tensor& out, Tensor& mean, Tensor& rstd) {
    (void)x, (void)weight, (void)bias, (void)eps, (void)out, (void)mean, (void)rstd;
    fail("[layer_norm] has no kernel on this device");
  }
  // grad, x contiguous [rows, N]; mean, rstd from the forward. dx contiguous like x;
  // dweight, dbias [N] (undefined: not wanted) are overwritten with the sums over rows.
  virtual void layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                   Tensor& dbias) {
    (void)grad, (void)x, (void)weight, (void)mean, (void)rstd, (void)dx, (void)dweight, (void)dbias;
    fail("[layer_norm_backward] has no kernel on this device");
  }
  // x contiguous [rows, N]; weight undefined or contiguous [N]; out = round(x·rstd)·weight with
  // rstd = 1/√(mean(x²) + eps) saved contiguous [rows]; round() rounds to `round_to` (x's
  // original dtype: bfloat16, float16, float32 or float64) and back. ggml_rstd: for float32,
  // rstd = 1.0f/sqrtf(float(Σ double(float(x²)) / N) + float(eps)) (llama.cpp's formula).
  virtual void rms_norm(const Tensor& x, const Tensor& weight, double eps, DType round_to, bool ggml_rstd, Tensor& out,
                        Tensor& rstd) {
    (void)x, (void)weight, (void)eps, (void)round_to, (void)ggml_rstd, (void)out, (void)rstd;
    fail("[rms_norm] has no kernel on this device");
  }
  // dx = rstd·(g·w - x̂·mean(g·w·x̂)) with x̂ = x·rstd; dweight [N] = Σ_rows g·round(x̂)
  // (undefined: not wanted). grad, x contiguous [rows, N]; dx contiguous like x.
  virtual void rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                 const Tensor& rstd, DType round_to, Tensor& dx, Tensor& dweight) {
    (void)grad, (void)x, (void)weight, (void)rstd, (void)round_to, (void)dx, (void)dweight;
    fail("[rms_norm_backward] has no kernel on this device");
  }
  // x [B, H, T, D] any strides; cos, sin [B, T, D] any strides (zero strides for broadcast);
  // out contiguous [B, H, T, D]. out = x·cos + rotate_half(x)·sin, or with `transpose` the
  // transposed map (the backward): out = x·cos + rotate_halfᵀ(x·sin).
  virtual void rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin, bool transpose,
                                Tensor& out) {
    (void)x, (void)cos, (void)sin, (void)transpose, (void)out;
    fail("[rotary_embedding] has no kernel on this device");
  }
  // q [B, Hq, Tq, D], k, v [B, Hkv, Tk, D] any strides; mask undefined or contiguous bool
  // [B, Tk]; causal as scaled_dot_product_attention documents. out contiguous [B, Hq, Tq, D];
  // lse contiguous [B, Hq, Tq]: the log-sum-exp of each row's visible scaled scores (-inf
  // for a row with none, whose output is 0).
  virtual void scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& mask, bool causal, double scale, Tensor& out,
                                            Tensor& lse) {
    (void)q, (void)k, (void)v, (void)mask, (void)causal, (void)scale, (void)out, (void)lse;
    fail("[scaled_dot_product_attention] has no kernel on this device");
  }
  // The gradients of the above for the output gradient `grad` (any strides), given the
  // forward's out and lse; dq, dk, dv contiguous of q's, k's and v's shapes (overwritten).
  virtual void scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& mask, bool causal, double scale,
                                                     const Tensor& out, const Tensor& lse,
                                                     const Tensor& grad, Tensor& dq, Tensor& dk, Tensor& dv) {
    (void)q, (void)k, (void)v, (void)mask, (void)causal, (void)scale, (void)out, (void)lse, (void)grad;
    (void)dq, (void)dk, (void)dv;
    fail("[scaled_dot_product_attention_backward] has no kernel on this device");
  }
};

Backend& backend(Device dev);
Backend& cpu_backend();
Backend& cuda_backend();  // throws "built without CUDA" in stub builds
// Copies between devices (contiguous src and dst of equal dtype and shape).
void copy_across_devices(const Tensor& src, Tensor& dst);

// Internal helpers shared by ops.
Tensor make_tensor(const Shape& shape, DType dt, Device dev);  // allocates (or meta)
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);
// Raw (no autograd) conversion to dtype `dt`, returning `t` itself when equal.
Tensor convert_raw(const Tensor& t, DType dt);
Tensor contiguous_raw(const Tensor& t);

}  // namespace peft
