// The one list of the runtime's ops. Grepping an op's name finds its entry
// here, its definition (runtime/ops_*.cpp), its kernels (runtime/cpu/,
// runtime/cuda/) and its tests.
#pragma once
#include <cstddef>

#define PEFT_OP_LIST(X)                                                                      \
  /* memory / layout */                                                                      \
  X(copy) X(to_dtype) X(to_device) X(contiguous) X(clone) X(view) X(reshape) X(transpose)   \
  X(permute) X(narrow) X(slice) X(select) X(unsqueeze) X(squeeze) X(expand)                  \
  X(cat) X(stack) X(index_select) X(index_add) X(gather) X(scatter_add) X(masked_fill)       \
  X(where)                                                                                   \
  /* elementwise binary */                                                                   \
  X(add) X(sub) X(mul) X(div) X(pow) X(maximum) X(tanh_backward) X(gelu_tanh_backward)      \
  X(gelu_backward) X(eq) X(ne) X(gt) X(lt) X(ge) X(le)                                                        \
  /* elementwise unary (scalar variants included) */                                         \
  X(add_scalar) X(mul_scalar) X(div_scalar) X(rsub_scalar) X(rdiv_scalar) X(pow_scalar) X(neg) X(exp)      \
  X(log) X(sqrt) X(rsqrt) X(abs) X(sign) X(erf) X(relu) X(gelu) X(silu) X(tanh) X(sigmoid)   \
  X(clamp) X(isfinite) X(logical_not)                                                        \
  /* linear algebra */                                                                       \
  X(matmul) X(linear) X(svd)                                                                 \
  /* reductions */                                                                           \
  X(sum) X(mean) X(amax) X(argmax) X(norm) X(softmax) X(log_softmax)                         \
  /* nn */                                                                                   \
  X(embedding) X(dropout) X(mse_loss) X(cross_entropy) X(layer_norm) X(layer_norm_backward)  \
  /* transformer blocks (fused kernels; their *_backward ops are internal) */                   \
  X(gelu_tanh) X(rms_norm) X(rms_norm_backward) X(rotary_embedding)                          \
  X(rotary_embedding_backward) X(scaled_dot_product_attention)                               \
  X(scaled_dot_product_attention_backward) X(chunk)                                          \
  /* in-place updates without autograd */                                                    \
  X(lora_linear_update_) X(adamw_step_)

namespace peft {

enum class Op : int {
#define PEFT_OP_ENUM(name) name,
  PEFT_OP_LIST(PEFT_OP_ENUM)
#undef PEFT_OP_ENUM
      count_
};

const char* op_name(Op op);

}  // namespace peft
