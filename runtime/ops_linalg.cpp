// matmul and linear. The CPU kernel takes strided operands (transposed views
// are passed to sgemm as transpose flags, not copied).
#include "runtime/ops_common.h"

namespace peft {

using namespace detail;
using autograd::needs_grad;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

void check_float_pair(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a);
  check_defined(op, b);
  if (!is_floating(a.dtype()) || a.dtype() != b.dtype())
    fail_shape("[", op, "] expects two floating-point tensors of the same dtype, got ", a.desc(), " and ",
         b.desc());
  if (a.device() != b.device())
    fail_shape("[", op, "] tensors on different devices: ", a.desc(), " and ", b.desc());
}

// The dtype the device's gemm computes x's dtype in (meta: as the CPU).
DType gemm_dtype_on(const Tensor& x) {
  return x.is_meta() ? compute_dtype(x.dtype()) : backend(x.device()).gemm_dtype(x.dtype());
}

// a [M,K] or [B,M,K]; b [K,N] or [B,K,N] with equal B. No autograd.
Tensor mm_raw(const Tensor& a, const Tensor& b) {
  const bool batched = a.dim() == 3;
  Shape sh = batched ? Shape{a.size(0), a.size(1), b.size(2)} : Shape{a.size(0), b.size(1)};
  DType cd = gemm_dtype_on(a);
  Tensor out = make_tensor(sh, cd, a.device());
  if (!out.is_meta()) backend(a.device()).gemm(convert_raw(a, cd), convert_raw(b, cd), out, 1.0, 0.0);
  return convert_raw(out, a.dtype());
}

// The differentiable core: 2-D·2-D or 3-D·3-D (same batch).
Tensor mm(const Tensor& a, const Tensor& b) {
  Tensor out = mm_raw(a, b);
  if (needs_grad({&a, &b})) {
    Tensor ad = a.detach(), bd = b.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record("matmul", {a, b}, out, [=](const Tensor& g) {
      return Grads{ga ? mm(g, bd.transpose(-1, -2)) : Tensor(),
                   gb ? mm(ad.transpose(-1, -2), g) : Tensor()};
    });
  }
  return out;
}


// ---- GGML block-quantized right-hand sides (frozen weights: no gradient for them) ----

void check_quantized_weight(const char* op, const Tensor& x, const Tensor& w) {
  check_defined(op, x);
  check_defined(op, w, "weight");
  if (!is_floating(x.dtype()))
    fail_shape("[", op, "] input must be floating-point with a ", dtype_name(w.dtype()), " weight, got ", x.desc());
  if (w.dim() != 2) fail_shape("[", op, "] a quantized weight must be 2-D, got ", w.desc());
  if (x.device() != w.device())
    fail_shape("[", op, "] tensors on different devices: ", x.desc(), " and ", w.desc());
  if (w.device() == Device::cuda)
    fail_shape("[", op, "] ", dtype_name(w.dtype()), " weights run on the cpu only (no CUDA kernels for GGML blocks yet): ",
               w.desc(), "; dequantize with .to(float32) before moving the model");
}

// x [..., K] · w [N, K]ᵀ -> [..., N] with the fused block kernels; float32 inside.
Tensor quantized_linear(const Tensor& x, const Tensor& w) {
  const int64_t K = w.size(1), N = w.size(0);
  if (x.size(-1) != K)
    fail_shape("[linear] input ", x.desc(), " has ", x.size(-1), " features but weight ", w.desc(), " expects ", K);
  Shape osh = x.shape();
  osh.back() = N;
  const int64_t M = K ? x.numel() / K : 0;
  Tensor out2 = make_tensor({M, N}, DType::float32, x.device());
  if (!out2.is_meta() && M > 0 && N > 0) {
    Tensor x2 = contiguous_raw(reshape_raw(convert_raw(x, DType::float32), {M, K}));
    backend(x.device()).quantized_linear(x2, w, out2);
  }
  Tensor out = convert_raw(make_view(out2, osh, contiguous_strides(osh), 0), x.dtype());
  if (needs_grad({&x})) {
    Tensor wd = w.detach();
    record("linear", {x}, out, [wd](const Tensor& g) { return Grads{matmul(g, wd)}; });
  }
  return out;
}

// g [..., N] · w [N, K] -> [..., K]: the input gradient of quantized_linear (and its own
// gradient is quantized_linear again, so the pair is twice differentiable).
Tensor quantized_matmul(const Tensor& g, const Tensor& w) {
  const int64_t N = w.size(0), K = w.size(1);
  if (g.dim() == 0 || g.size(-1) != N)
    fail_shape("[matmul] shapes ", shape_str(g.shape()), " and ", shape_str(w.shape()), " cannot be multiplied (",
               g.dim() ? g.size(-1) : 0, " != ", N, ")");
  Shape osh = g.shape();
  osh.back() = K;
  const int64_t M = N ? g.numel() / N : 0;
  Tensor out2 = make_tensor({M, K}, DType::float32, g.device());
  if (!out2.is_meta() && M > 0 && K > 0) {
    Tensor g2 = contiguous_raw(reshape_raw(convert_raw(g, DType::float32), {M, N}));
    backend(g.device()).quantized_matmul(g2, w, out2);
  }
  Tensor out = convert_raw(make_view(out2, osh, contiguous_strides(osh), 0), g.dtype());
  if (needs_grad({&g})) {
    Tensor wd = w.detach();
    record("matmul", {g}, out, [wd](const Tensor& gg) { return Grads{linear(gg, wd)}; });
  }
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  if (b.defined() && is_quantized(b.dtype())) {
    check_quantized_weight("matmul", a, b);
    return quantized_matmul(a, b);
  }
  if (a.defined() && is_quantized(a.dtype()))
    fail_shape("[matmul] a quantized left operand is not supported (", a.desc(),
               "): quantized tensors are weights, on the right of matmul or in linear");
  check_float_pair("matmul", a, b);
  const int64_t ra = a.dim(), rb = b.dim();
  if (ra == 0 || rb == 0)
    fail_shape("[matmul] both arguments need at least 1 dimension, got ", a.desc(), " and ", b.desc());
  const int64_t ka = a.size(-1), kb = rb == 1 ? b.size(0) : b.size(-2);
  if (ka != kb)
    fail_shape("[matmul] shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()),
         " cannot be multiplied (", ka, " != ", kb, ")");
  if (ra == 1 && rb == 1) return mm(a.unsqueeze(0), b.unsqueeze(1)).reshape({});
  if (ra == 2 && rb == 1) return mm(a, b.unsqueeze(1)).squeeze(1);
  if (ra == 1 && rb == 2) return mm(a.unsqueeze(0), b).squeeze(0);
  if (ra == 2 && rb == 2) return mm(a, b);
  if (rb == 1) return matmul(a, b.unsqueeze(1)).squeeze(-1);
  if (ra == 1) return matmul(a.unsqueeze(0), b).squeeze(-2);
  // batched: broadcast batch dims
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  const int64_t M = a.size(-2), N = b.size(-1);
  if (rb == 2) {
    // fold batch into rows: [..., M, K] -> [B*M, K]
    Tensor out = mm(a.reshape({-1, ka}), b);
    Shape sh = ba;
    sh.push_back(M);
    sh.push_back(N);
    return out.reshape(sh);
  }
  Shape batch = broadcast_shapes("matmul", ba, bb);
  int64_t B = shape_numel(batch);
  Shape sa = batch, sb = batch;
  sa.push_back(M);
  sa.push_back(ka);
  sb.push_back(kb);
  sb.push_back(N);
  Tensor a3 = a.expand(sa).reshape({B, M, ka});
  Tensor b3 = b.expand(sb).reshape({B, kb, N});
  Shape so = batch;
  so.push_back(M);
  so.push_back(N);
  return mm(a3, b3).reshape(so);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (weight.defined() && is_quantized(weight.dtype())) {
    check_quantized_weight("linear", x, weight);
    Tensor y = quantized_linear(x, weight);
    if (!bias.defined()) return y;
    check_float_pair("linear", x, bias);
    if (bias.dim() != 1 || bias.size(0) != weight.size(0))
      fail_shape("[linear] bias ", bias.desc(), " must be [", weight.size(0), "] for weight ", weight.desc());
    return add(y, bias);
  }
  check_float_pair("linear", x, weight);
  if (weight.dim() != 2) fail_shape("[linear] weight must be 2-D [out, in], got ", weight.desc());
  if (x.dim() == 0) fail_shape("[linear] input must have at least 1 dimension, got ", x.desc());
  const int64_t in = weight.size(1), outf = weight.size(0);
  if (x.size(-1) != in)
    fail_shape("[linear] input ", x.desc(), " has ", x.size(-1), " features but weight ", weight.desc(),
         " expects ", in);
  if (bias.defined()) {
    check_float_pair("linear", x, bias);
    if (bias.dim() != 1 || bias.size(0) != outf)
      fail_shape("[linear] bias ", bias.desc(), " must be [", outf, "] for weight ", weight.desc());
  }
  Shape osh = x.shape();
  osh.back() = outf;
  const int64_t M = x.numel() / std::max<int64_t>(in, 1);
  DType cd = gemm_dtype_on(x);
  Tensor out2 = make_tensor({M, outf}, cd, x.device());
  if (!out2.is_meta()) {
    Backend& be = backend(x.device());
    Tensor x2 = reshape_raw(convert_raw(x, cd), {M, in});
    Tensor w = convert_raw(weight, cd);
    double beta = 0.0;
    if (bias.defined()) {
      be.copy(expand_raw(convert_raw(bias, cd), {M, outf}), out2);
      beta = 1.0;
    }
    be.gemm(x2, w.t(), out2, 1.0, beta);
  }
  Tensor out = make_view(out2, osh, contiguous_strides(osh), 0);
  out = convert_raw(out, x.dtype());
  if (needs_grad({&x, &weight, &bias})) {
    Tensor xd = x.detach(), wd = weight.detach();
    bool gx = x.requires_grad(), gw = weight.requires_grad(),
         gb = bias.defined() && bias.requires_grad();
    std::vector<Tensor> inputs{x, weight};
    if (bias.defined()) inputs.push_back(bias);
    bool has_bias = bias.defined();
    record("linear", inputs, out, [=](const Tensor& g) {
      Tensor g2 = g.reshape({M, outf});
      Grads r{gx ? matmul(g, wd) : Tensor(), gw ? matmul(g2.t(), xd.reshape({M, in})) : Tensor()};
      if (has_bias) r.push_back(gb ? sum(g2, {0}) : Tensor());
      return r;
    });
  }
  return out;
}

SvdResult svd(const Tensor& a, bool full_matrices) {
  check_defined("svd", a);
  if (!is_floating(a.dtype())) fail_shape("[svd] expects a floating-point tensor, got ", a.desc());
  if (a.dim() != 2) fail_shape("[svd] expects a 2-D tensor [M, N], got ", a.desc());
  if (is_grad_enabled() && a.requires_grad())
    fail("[svd] is not differentiable; call it on a detached tensor or under NoGradGuard, got ", a.desc());
  const int64_t M = a.size(0), N = a.size(1), K = std::min(M, N);
  Shape ush = full_matrices ? Shape{M, M} : Shape{M, K};
  Shape vsh = full_matrices ? Shape{N, N} : Shape{K, N};
  if (a.is_meta())
    return {make_tensor(ush, a.dtype(), a.device()), make_tensor({K}, a.dtype(), a.device()),
            make_tensor(vsh, a.dtype(), a.device())};
  // float64 on the CPU whatever the input: the factors feed adapter weights, where accuracy
  // matters more than speed, and only the CPU has a kernel.
  Tensor a64 = contiguous_raw(convert_raw(a.to(Device::cpu), DType::float64));
  Tensor u = make_tensor(ush, DType::float64, Device::cpu), s = make_tensor({K}, DType::float64, Device::cpu),
         vh = make_tensor(vsh, DType::float64, Device::cpu);
  if (M > 0 && N > 0) cpu_backend().svd(a64, u, s, vh);
  else {
    // empty input: identity bases, no singular values
    cpu_backend().fill(u, 0.0);
    cpu_backend().fill(vh, 0.0);
    for (int64_t i = 0; i < ush[1] && i < M; ++i) u.data_ptr<double>()[i * ush[1] + i] = 1.0;
    for (int64_t i = 0; i < vsh[0] && i < N; ++i) vh.data_ptr<double>()[i * N + i] = 1.0;
  }
  auto back = [&](const Tensor& t) { return convert_raw(t, a.dtype()).to(a.device()); };
  return {back(u), back(s), back(vh)};
}

}  // namespace peft
