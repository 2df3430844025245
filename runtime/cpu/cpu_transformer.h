// Internal: the CPU's fused transformer kernels (runtime/cpu/cpu_norm_rotary.cpp and
// runtime/cpu/cpu_attention.cpp), reached through CpuBackend's overrides of the Backend
// methods of the same names (backend.h documents the arguments).
#pragma once
#include "runtime/backend.h"

namespace peft::cpu {

void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& out,
                Tensor& mean, Tensor& rstd);
void layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias);
void rms_norm(const Tensor& x, const Tensor& weight, double eps, DType round_to, bool ggml_rstd, Tensor& out, Tensor& rstd);
void rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                       DType round_to, Tensor& dx, Tensor& dweight);
void rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin, bool transpose, Tensor& out);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
               double scale, Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& grad, Tensor& dq,
                        Tensor& dk, Tensor& dv);

}  // namespace peft::cpu
