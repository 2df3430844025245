// Internal: the CPU implementation of Backend (backend.h documents each method).
// Its methods are defined by job in runtime/cpu/: cpu_allocator.cpp (allocate),
// cpu_elementwise.cpp (copy, fill, unary, binary, where), cpu_reduce.cpp (reduce,
// softmax), cpu_gemm.cpp (gemm), cpu_index.cpp (index_select, index_add, gather,
// scatter_add), cpu_random.cpp (random), cpu_update.cpp (lora_linear_update, adamw_step)
// and cpu_backend.cpp (the instance, svd and the transformer blocks, which forward to
// cpu_norm_rotary.cpp and cpu_attention.cpp).
#pragma once
#include "runtime/backend.h"

namespace peft::cpu {

class CpuBackend final : public Backend {
 public:
  std::shared_ptr<Storage> allocate(size_t nbytes) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void fill(Tensor& dst, double value) override;
  void unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1) override;
  void binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) override;
  void reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced, Tensor& out) override;
  void gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) override;
  void svd(const Tensor& a, Tensor& u, Tensor& s, Tensor& vh) override;
  void softmax(const Tensor& x, int64_t dim, bool log, Tensor& out) override;
  void index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override;
  void index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  void gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override;
  void scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  void random(RandomKind k, Tensor& out, double a, double b, uint64_t seed, uint64_t counter) override;

  void lora_linear_update(Tensor& y, const Tensor& x, const Tensor& a, const Tensor& b, double scale) override;
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const AdamWConstants& c) override;

  // cpu_quant.cpp
  void quantized_linear(const Tensor& x, const Tensor& w, Tensor& out) override;
  void quantized_matmul(const Tensor& g, const Tensor& w, Tensor& out) override;
  void dequantize(const Tensor& w, Tensor& out) override;
  void dequantize_rows(const Tensor& w, const Tensor& ids, Tensor& out) override;

  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& out, Tensor& mean,
                  Tensor& rstd) override;
  void layer_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                           const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db) override;
  void rms_norm(const Tensor& x, const Tensor& w, double eps, DType rt, bool ggml_rstd, Tensor& out, Tensor& rstd) override;
  void rms_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& rstd, DType rt,
                         Tensor& dx, Tensor& dw) override;
  void rotary_embedding(const Tensor& x, const Tensor& c, const Tensor& s, bool tr, Tensor& out) override;
  void scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                    bool causal, double scale, Tensor& out, Tensor& lse) override;
  void scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const Tensor& mask, bool causal, double scale, const Tensor& out,
                                             const Tensor& lse, const Tensor& g, Tensor& dq, Tensor& dk,
                                             Tensor& dv) override;
};

}  // namespace peft::cpu
