// The CPU backend instance, and its overrides that forward to kernels kept in their own
// translation units: svd (svd.cpp) and the transformer blocks
// (cpu_norm_rotary.cpp, cpu_attention.cpp).
#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/cpu_transformer.h"
#include "runtime/cpu/svd.h"

namespace peft {

namespace cpu {

void CpuBackend::svd(const Tensor& a, Tensor& u, Tensor& s, Tensor& vh) { cpu::svd_f64(a, u, s, vh); }

void CpuBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& out,
                            Tensor& mean, Tensor& rstd) {
  cpu::layer_norm(x, w, b, eps, out, mean, rstd);
}
void CpuBackend::layer_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean,
                                     const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db) {
  cpu::layer_norm_backward(g, x, w, mean, rstd, dx, dw, db);
}
void CpuBackend::rms_norm(const Tensor& x, const Tensor& w, double eps, DType rt, bool ggml_rstd, Tensor& out,
                          Tensor& rstd) {
  cpu::rms_norm(x, w, eps, rt, ggml_rstd, out, rstd);
}
void CpuBackend::rms_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& rstd,
                                   DType rt, Tensor& dx, Tensor& dw) {
  cpu::rms_norm_backward(g, x, w, rstd, rt, dx, dw);
}
void CpuBackend::rotary_embedding(const Tensor& x, const Tensor& c, const Tensor& s, bool tr, Tensor& out) {
  cpu::rotary_embedding(x, c, s, tr, out);
}
void CpuBackend::scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                              const Tensor& mask, bool causal, double scale, Tensor& out,
                                              Tensor& lse) {
  cpu::attention(q, k, v, mask, causal, scale, out, lse);
}
void CpuBackend::scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const Tensor& mask, bool causal, double scale,
                                                       const Tensor& out, const Tensor& lse, const Tensor& g,
                                                       Tensor& dq, Tensor& dk, Tensor& dv) {
  cpu::attention_backward(q, k, v, mask, causal, scale, out, lse, g, dq, dk, dv);
}

}  // namespace cpu

Backend& cpu_backend() {
  static cpu::CpuBackend b;
  return b;
}

}  // namespace peft
