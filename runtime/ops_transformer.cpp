// Transformer building blocks: gelu_tanh, rms_norm, rotary embeddings, attention, chunk.
// Shapes and dtypes are checked here once, before dispatch (so `meta` costs nothing); the
// arithmetic runs in the backend's fused kernels (runtime/cpu/cpu_norm_rotary.cpp and
// cpu_attention.cpp), and each backward is recorded beside its forward. bfloat16/float16
// inputs compute in float32 and round once at the end, as torch does.
#include <cmath>

#include "runtime/ops_common.h"

namespace peft {

using namespace detail;
using autograd::needs_grad;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

// `t` as a contiguous tensor of dtype `cd` (no autograd; no copy when it already is one).
Tensor dense(const Tensor& t, DType cd) {
  if (!t.defined()) return t;
  return contiguous_raw(convert_raw(t, cd));
}

Tensor to_dtype_raw(const Tensor& t, DType dt) { return t.dtype() == dt ? t : convert_raw(t, dt); }

}  // namespace

// ---- gelu_tanh ----

Tensor gelu_tanh(const Tensor& a) {
  check_defined("gelu_tanh", a);
  if (!is_floating(a.dtype())) fail_shape("[gelu_tanh] needs a floating-point input, got ", a.desc());
  const DType cd = compute_dtype(a.dtype());
  Tensor out = make_tensor(a.shape(), cd, a.device());
  if (!a.is_meta()) backend(a.device()).unary(UnaryKind::gelu_tanh, convert_raw(a, cd), out, 0, 0);
  out = to_dtype_raw(out, a.dtype());
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("gelu_tanh", {a}, out, [ad](const Tensor& g) { return Grads{gelu_tanh_backward(g, ad)}; });
  }
  return out;
}

Tensor gelu_tanh_backward(const Tensor& grad, const Tensor& x) {
  const char* op = "gelu_tanh_backward";
  check_defined(op, grad, "grad");
  check_defined(op, x);
  if (!is_floating(x.dtype())) fail_shape("[", op, "] needs a floating-point input, got ", x.desc());
  if (needs_grad({&grad, &x})) fail_shape("[", op, "] is not differentiable (it runs inside backward passes)");
  const Shape sh = broadcast_shapes(op, grad.shape(), x.shape());
  const Device dev = common_device(op, grad, x);
  const DType r = promote_types(grad.dtype(), x.dtype()), cd = compute_dtype(r);
  Tensor out = make_tensor(sh, cd, dev);
  if (dev != Device::meta)
    backend(dev).binary(BinaryKind::gelu_tanh_grad, expand_raw(convert_raw(grad, cd), sh),
                        expand_raw(convert_raw(x, cd), sh), out);
  return to_dtype_raw(out, r);
}

// ---- layer_norm (ops_nn.cpp checks the arguments; this is its fused body) ----

namespace detail {

Tensor layer_norm_fused(const Tensor& x, int64_t N, const Tensor& weight, const Tensor& bias, double eps) {
  const DType cd = compute_dtype(x.dtype());
  const int64_t rows = N ? x.numel() / N : 0;
  Tensor out = make_tensor(x.shape(), cd, x.device());
  Tensor mu = make_tensor({rows}, cd, x.device()), rstd = make_tensor({rows}, cd, x.device());
  if (!x.is_meta()) {
    Tensor o2 = reshape_raw(out, {rows, N});
    backend(x.device()).layer_norm(reshape_raw(dense(x, cd), {rows, N}), dense(weight, cd), dense(bias, cd),
                                   eps, o2, mu, rstd);
  }
  out = to_dtype_raw(out, x.dtype());
  if (needs_grad({&x, &weight, &bias})) {
    Tensor xd = x.detach(), wd = weight.defined() ? weight.detach() : Tensor();
    const bool gw = weight.defined() && weight.requires_grad(), gb = bias.defined() && bias.requires_grad();
    const bool gx = x.requires_grad();
    const DType xt = x.dtype(), wt = weight.defined() ? weight.dtype() : cd, bt = bias.defined() ? bias.dtype() : cd;
    const Shape ws = weight.defined() ? weight.shape() : Shape{}, bs = bias.defined() ? bias.shape() : Shape{};
    record("layer_norm", {x, weight, bias}, out, [=](const Tensor& g) {
      Tensor dx = gx ? make_tensor(xd.shape(), cd, xd.device()) : Tensor();
      Tensor dw = gw ? make_tensor({N}, cd, xd.device()) : Tensor();
      Tensor db = gb ? make_tensor({N}, cd, xd.device()) : Tensor();
      if (!xd.is_meta()) {
        Tensor dx2 = dx.defined() ? reshape_raw(dx, {rows, N}) : Tensor();  // undefined: not wanted
        backend(xd.device()).layer_norm_backward(reshape_raw(dense(g, cd), {rows, N}),
                                                 reshape_raw(dense(xd, cd), {rows, N}), dense(wd, cd), mu,
                                                 rstd, dx2, dw, db);
      }
      return Grads{dx.defined() ? to_dtype_raw(dx, xt) : Tensor(),
                   dw.defined() ? reshape_raw(to_dtype_raw(dw, wt), ws) : Tensor(),
                   db.defined() ? reshape_raw(to_dtype_raw(db, bt), bs) : Tensor()};
    });
  }
  return out;
}

}  // namespace detail

// ---- rms_norm ----

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps, bool ggml_rstd) {
  const char* op = "rms_norm";
  check_defined(op, x);
  if (!is_floating(x.dtype())) fail_shape("[rms_norm] needs a floating-point input, got ", x.desc());
  if (x.dim() < 1) fail_shape("[rms_norm] needs at least one dim, got ", x.desc());
  if (weight.defined() && (weight.dim() != 1 || weight.size(0) != x.size(-1)))
    fail_shape("[rms_norm] weight ", weight.desc(), " must be [", x.size(-1), "] for input ", x.desc());
  if (weight.defined() && !is_floating(weight.dtype()))
    fail_shape("[rms_norm] weight must be floating-point, got ", weight.desc());
  if (weight.defined()) common_device(op, x, weight);
  if (!(eps >= 0) || !std::isfinite(eps)) fail_shape("[rms_norm] eps must be finite and >= 0, got ", eps);
  // LlamaRMSNorm: weight · (x·rstd).to(x.dtype) — the result has the promoted dtype
  const DType result = weight.defined() ? promote_types(x.dtype(), weight.dtype()) : x.dtype();
  const DType cd = result == DType::float64 ? DType::float64 : DType::float32;
  const int64_t N = x.size(-1), rows = N ? x.numel() / N : 0;
  const DType round_to = x.dtype();
  Tensor out = make_tensor(x.shape(), cd, x.device());
  Tensor rstd = make_tensor({rows}, cd, x.device());
  if (!x.is_meta()) {
    Tensor o2 = reshape_raw(out, {rows, N});
    backend(x.device()).rms_norm(reshape_raw(dense(x, cd), {rows, N}), dense(weight, cd), eps, round_to, ggml_rstd, o2, rstd);
  }
  out = to_dtype_raw(out, result);
  if (needs_grad({&x, &weight})) {
    Tensor xd = x.detach(), wd = weight.defined() ? weight.detach() : Tensor();
    const bool gx = x.requires_grad(), gw = weight.defined() && weight.requires_grad();
    const DType xt = x.dtype(), wt = weight.defined() ? weight.dtype() : cd;
    record(op, {x, weight}, out, [=](const Tensor& g) {
      Tensor dx = gx ? make_tensor(xd.shape(), cd, xd.device()) : Tensor();
      Tensor dw = gw ? make_tensor({N}, cd, xd.device()) : Tensor();
      if (!xd.is_meta()) {
        Tensor dx2 = dx.defined() ? reshape_raw(dx, {rows, N}) : Tensor();
        backend(xd.device()).rms_norm_backward(reshape_raw(dense(g, cd), {rows, N}),
                                               reshape_raw(dense(xd, cd), {rows, N}), dense(wd, cd), rstd,
                                               round_to, dx2, dw);
      }
      return Grads{dx.defined() ? to_dtype_raw(dx, xt) : Tensor(), dw.defined() ? to_dtype_raw(dw, wt) : Tensor()};
    });
  }
  return out;
}

// ---- rotary embeddings ----

namespace {

// cos/sin as [B, T, D] views (zero strides where broadcast) in dtype cd.
Tensor rope_table(const Tensor& t, int64_t B, DType cd) {
  Tensor c = convert_raw(t, cd);
  if (c.dim() == 2) c = c.unsqueeze(0);
  return expand_raw(c, {B, c.size(1), c.size(2)});
}

Tensor rotary_apply(const Tensor& x, const Tensor& cos, const Tensor& sin, bool transpose) {
  const DType cd = compute_dtype(x.dtype());
  Tensor out = make_tensor(x.shape(), cd, x.device());
  if (!x.is_meta())
    backend(x.device()).rotary_embedding(convert_raw(x, cd), rope_table(cos, x.size(0), cd),
                                         rope_table(sin, x.size(0), cd), transpose, out);
  return to_dtype_raw(out, x.dtype());
}

}  // namespace

Tensor rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  const char* op = "rotary_embedding";
  check_defined(op, x);
  check_defined(op, cos, "cos");
  check_defined(op, sin, "sin");
  if (x.dim() != 4) fail_shape("[rotary_embedding] x must be [B, H, T, D], got ", x.desc());
  if (!is_floating(x.dtype()) || !is_floating(cos.dtype()) || !is_floating(sin.dtype()))
    fail_shape("[rotary_embedding] x, cos and sin must be floating-point, got ", x.desc(), ", ", cos.desc(), ", ",
         sin.desc());
  const int64_t B = x.size(0), T = x.size(2), D = x.size(3);
  if (D % 2) fail_shape("[rotary_embedding] head dim ", D, " must be even (x ", x.desc(), ")");
  if (cos.shape() != sin.shape())
    fail_shape("[rotary_embedding] cos ", cos.desc(), " and sin ", sin.desc(), " differ in shape");
  const bool ok = (cos.dim() == 3 && (cos.size(0) == B || cos.size(0) == 1) && cos.size(1) == T &&
                   cos.size(2) == D) ||
                  (cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D);
  if (!ok)
    fail_shape("[rotary_embedding] cos/sin ", cos.desc(), " do not fit x ", x.desc(), " (want [B, T, D] or [T, D])");
  common_device(op, x, cos);
  common_device(op, x, sin);
  if (cos.requires_grad() || sin.requires_grad())
    fail_shape("[rotary_embedding] does not differentiate through cos and sin; detach them");
  Tensor out = rotary_apply(x, cos, sin, false);
  if (needs_grad({&x})) {
    Tensor c = cos.detach(), s = sin.detach();
    record(op, {x}, out, [c, s](const Tensor& g) { return Grads{rotary_apply(g, c, s, true)}; });
  }
  return out;
}

std::pair<Tensor, Tensor> rotary_cos_sin(const Tensor& position_ids, int64_t head_dim, double theta,
                                         DType dt) {
  check_defined("rotary_embedding", position_ids, "position_ids");
  if (position_ids.dtype() != DType::int64 || position_ids.dim() != 2)
    fail_shape("[rotary_embedding] position_ids must be int64 [B, T], got ", position_ids.desc());
  if (head_dim <= 0 || head_dim % 2) fail_shape("[rotary_embedding] head dim ", head_dim, " must be even and positive");
  if (!(theta > 0) || !std::isfinite(theta)) fail_shape("[rotary_embedding] rope_theta must be positive, got ", theta);
  if (!is_floating(dt)) fail_shape("[rotary_embedding] cos/sin dtype must be floating-point");
  const int64_t B = position_ids.size(0), T = position_ids.size(1);
  if (position_ids.is_meta())
    return {make_tensor({B, T, head_dim}, dt, Device::meta), make_tensor({B, T, head_dim}, dt, Device::meta)};
  NoGradGuard ng;
  const int64_t half = head_dim / 2;
  // as transformers: inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim), freqs =
  // inv_freq @ position_ids.float() — all float32, cos/sin in float32, then cast
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[size_t(i)] = 1.0f / std::pow(float(theta), float(2 * i) / float(head_dim));
  const std::vector<int64_t> pos = position_ids.to(Device::cpu).to_vector<int64_t>();
  std::vector<float> cv(size_t(B * T * head_dim)), sv(cv.size());
  for (int64_t r = 0; r < B * T; ++r)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(pos[size_t(r)]) * inv_freq[size_t(i)];
      const float c = std::cos(angle), s = std::sin(angle);
      cv[size_t(r * head_dim + i)] = cv[size_t(r * head_dim + half + i)] = c;
      sv[size_t(r * head_dim + i)] = sv[size_t(r * head_dim + half + i)] = s;
    }
  Tensor c = from_vector(cv, {B, T, head_dim}), s = from_vector(sv, {B, T, head_dim});
  if (position_ids.device() != Device::cpu) c = c.to(position_ids.device()), s = s.to(position_ids.device());
  return {c.to(dt), s.to(dt)};
}

// ---- attention ----

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_padding_mask, bool causal,
                                    std::optional<double> scale) {
  const char* op = "scaled_dot_product_attention";
  check_defined(op, q, "query");
  check_defined(op, k, "key");
  check_defined(op, v, "value");
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    fail_shape("[", op, "] query, key and value must be [B, H, T, D], got ", q.desc(), ", ", k.desc(), ", ", v.desc());
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2);
  if (k.size(0) != B || v.size(0) != B || v.size(1) != Hkv || v.size(2) != Tk || k.size(3) != D ||
      v.size(3) != D)
    fail_shape("[", op, "] key ", k.desc(), " and value ", v.desc(), " do not fit query ", q.desc());
  if (Hkv == 0 || Hq % Hkv)
    fail_shape("[", op, "] query heads ", Hq, " must be a multiple of key/value heads ", Hkv);
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype() || !is_floating(q.dtype()))
    fail_shape("[", op, "] query, key and value must share one floating dtype, got ", q.desc(), ", ", k.desc(), ", ",
         v.desc());
  common_device(op, q, k);
  common_device(op, q, v);
  if (key_padding_mask.defined()) {
    if (key_padding_mask.dim() != 2 || key_padding_mask.size(0) != B || key_padding_mask.size(1) != Tk ||
        (key_padding_mask.dtype() != DType::bool_ && key_padding_mask.dtype() != DType::int64))
      fail_shape("[", op, "] key_padding_mask must be bool or int64 [", B, ", ", Tk, "], got ", key_padding_mask.desc());
    common_device(op, q, key_padding_mask);
  }
  if (causal && Tq > Tk) fail_shape("[", op, "] causal attention with more queries (", Tq, ") than keys (", Tk, ")");
  const double sc = scale ? *scale : 1.0 / std::sqrt(double(D));
  if (!std::isfinite(sc)) fail_shape("[", op, "] scale must be finite, got ", sc);
  const DType cd = compute_dtype(q.dtype());
  Tensor out = make_tensor({B, Hq, Tq, D}, cd, q.device());
  Tensor lse = make_tensor({B, Hq, Tq}, cd, q.device());
  Tensor mask;
  if (key_padding_mask.defined() && !key_padding_mask.is_meta())
    mask = contiguous_raw(key_padding_mask.dtype() == DType::bool_ ? key_padding_mask
                                                                   : convert_raw(key_padding_mask, DType::bool_));
  if (!q.is_meta())
    backend(q.device()).scaled_dot_product_attention(convert_raw(q, cd), convert_raw(k, cd), convert_raw(v, cd),
                                                     mask, causal, sc, out, lse);
  Tensor result = to_dtype_raw(out, q.dtype());
  if (needs_grad({&q, &k, &v})) {
    // `out` may be `result` itself (float32): capture a detached alias, or the node would
    // hold its own output and the graph would never be freed
    Tensor qd = q.detach(), kd = k.detach(), vd = v.detach(), od = out.detach();
    const DType dt = q.dtype();
    record(op, {q, k, v}, result, [=](const Tensor& g) {
      Tensor dq = make_tensor(qd.shape(), cd, qd.device());
      Tensor dk = make_tensor(kd.shape(), cd, qd.device());
      Tensor dv = make_tensor(vd.shape(), cd, qd.device());
      if (!qd.is_meta())
        backend(qd.device()).scaled_dot_product_attention_backward(
            convert_raw(qd, cd), convert_raw(kd, cd), convert_raw(vd, cd), mask, causal, sc, od, lse,
            convert_raw(g, cd), dq, dk, dv);
      return Grads{to_dtype_raw(dq, dt), to_dtype_raw(dk, dt), to_dtype_raw(dv, dt)};
    });
  }
  return result;
}

// ---- chunk ----

std::vector<Tensor> chunk(const Tensor& a, int64_t chunks, int64_t dim) {
  check_defined("chunk", a);
  if (chunks <= 0) fail_shape("[chunk] chunks must be positive, got ", chunks);
  const int64_t d = wrap_dim("chunk", dim, a.dim());
  const int64_t n = a.size(d), step = (n + chunks - 1) / chunks;
  std::vector<Tensor> out;
  for (int64_t s = 0; s < n; s += step) out.push_back(a.narrow(d, s, std::min(step, n - s)));
  if (n == 0) out.push_back(a);
  return out;
}

}  // namespace peft
