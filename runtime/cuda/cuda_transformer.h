// Internal: the CUDA kernels of the transformer blocks (cuda_transformer.cu), called by
// the CUDA backend with the arguments runtime/backend.h documents. No CUDA types here.
#pragma once
#include "runtime/tensor.h"

namespace peft::cuda {

void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& out, Tensor& mean,
                Tensor& rstd);
void layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias);
void rms_norm(const Tensor& x, const Tensor& weight, double eps, DType round_to, bool ggml_rstd, Tensor& out, Tensor& rstd);
void rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& rstd, DType round_to,
                       Tensor& dx, Tensor& dweight);
void rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin, bool transpose, Tensor& out);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale,
               Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& grad, Tensor& dq,
                        Tensor& dk, Tensor& dv);

}  // namespace peft::cuda
