// The runtime's differentiable ops. Every op checks shapes/dtypes once (same
// error on every device, free on meta), then dispatches to the device's kernel,
// then records its backward (written with these same ops) when a gradient is needed.
// The canonical list of op names is runtime/op_list.h.
#pragma once
#include <optional>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace peft {

class Generator;

// ---- elementwise, broadcasting ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor sub(const Tensor& a, double s);
Tensor rsub(const Tensor& a, double s);  // s - a
Tensor mul(const Tensor& a, double s);
Tensor div(const Tensor& a, double s);
Tensor rdiv(const Tensor& a, double s);  // s / a
Tensor pow(const Tensor& a, double exponent);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor sign(const Tensor& a);
Tensor erf(const Tensor& a);
Tensor relu(const Tensor& a);
Tensor gelu(const Tensor& a);  // exact (erf) form, PyTorch's default
// grad·gelu'(x) in one pass (gelu's backward, as torch's gelu_backward); twice differentiable.
Tensor gelu_backward(const Tensor& grad, const Tensor& x);
Tensor silu(const Tensor& a);
Tensor tanh(const Tensor& a);
// grad·(1 - y²): the gradient through tanh from its output y, in one pass (as torch.tanh_backward)
Tensor tanh_backward(const Tensor& grad, const Tensor& y);
Tensor sigmoid(const Tensor& a);
Tensor clamp(const Tensor& a, double lo, double hi);

// comparisons -> bool tensors (not differentiable)
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double s);
Tensor ne(const Tensor& a, double s);
Tensor gt(const Tensor& a, double s);
Tensor lt(const Tensor& a, double s);
Tensor ge(const Tensor& a, double s);
Tensor le(const Tensor& a, double s);
Tensor isfinite(const Tensor& a);
Tensor logical_not(const Tensor& a);

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& a, const Tensor& mask, double value);

// ---- linear algebra ----
// 1-D, 2-D and batched (broadcast batch dims) as torch.matmul.
Tensor matmul(const Tensor& a, const Tensor& b);
// x·Wᵀ + b with W [out, in]; x [..., in].
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
// a = U·diag(S)·Vh for a 2-D floating tensor [M, N] (torch.linalg.svd): U [M, M] and Vh [N, N]
// when full_matrices, else U [M, K] and Vh [K, N] with K = min(M, N); S [K] descending.
// Computed in float64 and returned in a's dtype. Not differentiable (used to combine adapters).
struct SvdResult {
  Tensor U, S, Vh;
};
SvdResult svd(const Tensor& a, bool full_matrices = true);

// ---- reductions (dims may be negative; empty dims = all) ----
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor amax(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor max(const Tensor& a);  // over everything
Tensor max(const Tensor& a, int64_t dim, bool keepdim = false);  // values
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim = false);  // int64
Tensor norm(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);  // L2
// Reduces a broadcast gradient back to `shape` (sums over broadcast dims).
Tensor sum_to(const Tensor& a, const Shape& shape);

Tensor softmax(const Tensor& a, int64_t dim);
Tensor log_softmax(const Tensor& a, int64_t dim);

// ---- indexing ----
Tensor index_select(const Tensor& a, int64_t dim, const Tensor& index);
// Adds rows of `src` into a copy of `a` at `index` along `dim` (out-of-place).
Tensor index_add(const Tensor& a, int64_t dim, const Tensor& index, const Tensor& src);
Tensor gather(const Tensor& a, int64_t dim, const Tensor& index);
Tensor scatter_add(const Tensor& a, int64_t dim, const Tensor& index, const Tensor& src);
Tensor cat(const std::vector<Tensor>& ts, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& ts, int64_t dim = 0);

// ---- nn functional ----
// weight [num, dim]; ids int64 of any shape -> [..., dim]. Rows at padding_idx get no gradient.
Tensor embedding(const Tensor& ids, const Tensor& weight, std::optional<int64_t> padding_idx = {});
Tensor dropout(const Tensor& a, double p, bool training, Generator& gen);
Tensor mse_loss(const Tensor& input, const Tensor& target);  // mean reduction
// logits [N, C] (or [C]), target int64 [N]; mean over non-ignored rows.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100);
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps = 1e-5);

// ---- transformer blocks ----
// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (transformers'
// gelu_new / gelu_pytorch_tanh, torch's gelu(approximate='tanh')).
Tensor gelu_tanh(const Tensor& a);
// grad·gelu_tanh'(x) in one pass (gelu_tanh's backward; not itself differentiable).
Tensor gelu_tanh_backward(const Tensor& grad, const Tensor& x);
// x·rsqrt(mean(x², -1) + eps)·weight over the last dim (LlamaRMSNorm: statistics in float32,
// the normalised value rounded to x's dtype before the weight multiplies it).
// ggml_rstd: rstd as llama.cpp computes it in float32 (1.0f/sqrtf(float(Σ float(x²) / N) + eps)),
// for models loaded from GGUF files, so their quantized products see llama.cpp's inputs bit for
// bit; the default is 1/√ in double precision, nearest to PyTorch's float32 statistics.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps, bool ggml_rstd = false);
// Rotary position embedding as transformers' apply_rotary_pos_emb: x·cos + rotate_half(x)·sin
// with rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]). x [B, H, T, D]; cos, sin [B, T, D]
// (or [T, D]), broadcast over heads.
Tensor rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin);
// cos and sin [B, T, D] for int64 position_ids [B, T] as LlamaRotaryEmbedding (default rope
// type): inv_freq = 1 / theta^(2i/D) in float32, angles = position·inv_freq, emb = cat(a, a).
// Not differentiable (no parameters).
std::pair<Tensor, Tensor> rotary_cos_sin(const Tensor& position_ids, int64_t head_dim, double theta,
                                         DType dt = DType::float32);
// softmax(q·kᵀ·scale + mask)·v. q [B, Hq, Tq, D]; k, v [B, Hkv, Tk, D] with Hq a multiple of Hkv
// (grouped-query attention: query head h reads key/value head h / (Hq / Hkv)); any strides
// (permuted views are read in place). key_padding_mask: undefined, or bool / int64 [B, Tk]
// (nonzero = attend). causal: query i sits at position Tk - Tq + i and sees keys j <= that
// (a KV cache's new queries see the whole cache). A query row with no visible key gives 0.
// scale defaults to 1/√D. Returns [B, Hq, Tq, D].
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_padding_mask = Tensor(), bool causal = false,
                                    std::optional<double> scale = {});
// torch.chunk: `chunks` views along dim (the last one smaller when the size does not divide).
std::vector<Tensor> chunk(const Tensor& a, int64_t chunks, int64_t dim);

// ---- in-place updates (no autograd: they fail when a gradient would be needed) ----
// y += scale·(x·aᵀ)·bᵀ in place, LoRA's inference update (PEFT's lora.Linear forward without
// dropout) in one kernel, without the [..., r] and [..., out] temporaries of the op-by-op form.
// x [..., in], a [r, in], b [out, r], y [..., out] contiguous with x's leading dims; one float
// dtype (float32 or float64) and one device. Returns y.
Tensor& lora_linear_update_(Tensor& y, const Tensor& x, const Tensor& a, const Tensor& b, double scale);

// The constants of an AdamW update at step t >= 1 (PyTorch's formulas), computed in float64:
// sign = -1 when maximizing else 1, decay = 1 - lr·weight_decay, w1 = 1 - beta1 (exp_avg
// follows torch.lerp), w2 = 1 - beta2, step_size = lr / (1 - beta1^t), bc2_sqrt = √(1 - beta2^t).
struct AdamWConstants {
  double sign, decay, w1, beta2, w2, step_size, bc2_sqrt, eps;
};
AdamWConstants adamw_constants(double lr, double beta1, double beta2, double eps, double weight_decay,
                               int64_t step, bool maximize = false);
// One torch.optim.AdamW update (single-tensor, non-amsgrad) at step t in place, g = ±grad:
// param = param·decay - step_size·m / (√v / bc2_sqrt + eps) with m = lerp(exp_avg, g, w1) and
// v = exp_avg_sq·beta2 + w2·g², which become the new exp_avg and exp_avg_sq. param, exp_avg
// and exp_avg_sq contiguous, grad any strides; one shape, float dtype (float32, computed in
// float32 with the constants narrowed, or float64) and device.
void adamw_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int64_t step, bool maximize = false);

// ---- operators ----
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return sub(a, s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return div(a, s); }
inline Tensor operator+(double s, const Tensor& a) { return add(a, s); }
inline Tensor operator-(double s, const Tensor& a) { return rsub(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator/(double s, const Tensor& a) { return rdiv(a, s); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

}  // namespace peft
