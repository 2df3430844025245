// Elementwise ops (broadcasting binary, unary, scalar variants, comparisons)
// with their backward formulas.
#include <cmath>

#include "runtime/ops_common.h"

namespace peft {

using namespace detail;
using autograd::needs_grad;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

Tensor binary_forward(const char* op, BinaryKind k, const Tensor& a, const Tensor& b,
                      DType result) {
  check_defined(op, a);
  check_defined(op, b);
  Shape sh = broadcast_shapes(op, a.shape(), b.shape());
  Device dev = common_device(op, a, b);
  const bool cmp = k >= BinaryKind::eq;
  DType cd = compute_dtype(result);
  Tensor out = make_tensor(sh, cmp ? DType::bool_ : cd, dev);
  if (dev != Device::meta) {
    Tensor A = convert_raw(a, cd), B = convert_raw(b, cd);
    if (A.device() != dev) A = A.to(dev);
    if (B.device() != dev) B = B.to(dev);
    backend(dev).binary(k, expand_raw(A, sh), expand_raw(B, sh), out);
  }
  if (!cmp && cd != result) out = convert_raw(out, result);
  return out;
}

Tensor unary_forward(const char* op, UnaryKind k, const Tensor& a, double s0 = 0, double s1 = 0,
                     bool float_result = false) {
  check_defined(op, a);
  const bool pred = k >= UnaryKind::isfinite;
  DType result = a.dtype();
  if (float_result && !is_floating(result)) result = DType::float32;
  DType cd = compute_dtype(result);
  Tensor out = make_tensor(a.shape(), pred ? DType::bool_ : cd, a.device());
  if (!a.is_meta()) backend(a.device()).unary(k, convert_raw(a, cd), out, s0, s1);
  if (!pred && cd != result) out = convert_raw(out, result);
  return out;
}

DType binary_result(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a);
  check_defined(op, b);
  // 0-d tensors (scalars) do not promote a higher-rank float tensor
  if (a.dim() == 0 && b.dim() > 0 && is_floating(b.dtype()) == is_floating(a.dtype()))
    return b.dtype();
  if (b.dim() == 0 && a.dim() > 0 && is_floating(a.dtype()) == is_floating(b.dtype()))
    return a.dtype();
  return promote_types(a.dtype(), b.dtype());
}

// A one-pass backward op: grad·f'(x) as the binary kernel `k` (floating result), itself
// differentiable. `second(g, grad, x, want_grad, want_x)` gives g's contributions to grad and
// to x from the detached inputs, each only when wanted (an input that requires grad); they
// are summed back to the input's shape.
template <class SecondOrder>
Tensor one_pass_backward(const char* op, BinaryKind k, const Tensor& grad, const Tensor& x, SecondOrder second) {
  DType r = binary_result(op, grad, x);
  if (!is_floating(r)) r = DType::float32;
  Tensor out = binary_forward(op, k, grad, x, r);
  if (needs_grad({&grad, &x})) {
    Tensor gd = grad.detach(), xd = x.detach();
    bool gg = grad.requires_grad(), gx = x.requires_grad();
    Shape sg = grad.shape(), sx = x.shape();
    record(op, {grad, x}, out, [=](const Tensor& g) {
      auto [d_grad, d_x] = second(g, gd, xd, gg, gx);
      return Grads{gg ? sum_to(d_grad, sg) : Tensor(), gx ? sum_to(d_x, sx) : Tensor()};
    });
  }
  return out;
}

}  // namespace

Tensor sum_to(const Tensor& a, const Shape& shape) {
  if (a.shape() == shape) return a;
  size_t lead = a.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < a.shape().size(); ++i) {
    if (i < lead)
      dims.push_back(int64_t(i));
    else if (shape[i - lead] == 1 && a.shape()[i] != 1)
      dims.push_back(int64_t(i));
  }
  Tensor s = dims.empty() ? a : sum(a, dims, true);
  return s.reshape(shape);
}

// ---- binary ----

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("add", BinaryKind::add, a, b, binary_result("add", a, b));
  if (needs_grad({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    record("add", {a, b}, out, [sa, sb](const Tensor& g) { return Grads{sum_to(g, sa), sum_to(g, sb)}; });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("sub", BinaryKind::sub, a, b, binary_result("sub", a, b));
  if (needs_grad({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    record("sub", {a, b}, out, [sa, sb](const Tensor& g) { return Grads{sum_to(g, sa), sum_to(neg(g), sb)}; });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("mul", BinaryKind::mul, a, b, binary_result("mul", a, b));
  if (needs_grad({&a, &b})) {
    Tensor ad = a.detach(), bd = b.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Shape sa = a.shape(), sb = b.shape();
    record("mul", {a, b}, out, [=](const Tensor& g) {
      return Grads{ga ? sum_to(mul(g, bd), sa) : Tensor(), gb ? sum_to(mul(g, ad), sb) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  DType r = binary_result("div", a, b);
  if (!is_floating(r)) r = DType::float32;  // true division, as torch
  Tensor out = binary_forward("div", BinaryKind::div, a, b, r);
  if (needs_grad({&a, &b})) {
    Tensor ad = a.detach(), bd = b.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Shape sa = a.shape(), sb = b.shape();
    record("div", {a, b}, out, [=](const Tensor& g) {
      return Grads{ga ? sum_to(div(g, bd), sa) : Tensor(),
                   gb ? sum_to(neg(div(mul(g, ad), mul(bd, bd))), sb) : Tensor()};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("pow", BinaryKind::pow, a, b, binary_result("pow", a, b));
  if (needs_grad({&a, &b})) {
    Tensor ad = a.detach(), bd = b.detach(), od = out.detach();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Shape sa = a.shape(), sb = b.shape();
    record("pow", {a, b}, out, [=](const Tensor& g) {
      Tensor da, db;
      if (ga) da = sum_to(mul(g, mul(bd, pow(ad, sub(bd, 1.0)))), sa);
      if (gb) {
        Tensor t = mul(g, mul(od, log(ad)));
        db = sum_to(where(eq(ad, 0.0), zeros({}, t.dtype(), t.device()), t), sb);
      }
      return Grads{da, db};
    });
  }
  return out;
}

Tensor maximum(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("maximum", BinaryKind::maximum, a, b, binary_result("maximum", a, b));
  if (needs_grad({&a, &b})) {
    Tensor ad = a.detach(), bd = b.detach();
    Shape sa = a.shape(), sb = b.shape();
    record("maximum", {a, b}, out, [=](const Tensor& g) {
      // ties split the gradient evenly, as torch.maximum
      Tensor wa = add(gt(ad, bd).to(g.dtype()), mul(eq(ad, bd).to(g.dtype()), 0.5));
      Tensor wb = rsub(wa, 1.0);
      return Grads{sum_to(mul(g, wa), sa), sum_to(mul(g, wb), sb)};
    });
  }
  return out;
}

#define PEFT_COMPARE(name)                                                                  \
  Tensor name(const Tensor& a, const Tensor& b) {                                           \
    return binary_forward(#name, BinaryKind::name, a, b, promote_types(a.dtype(), b.dtype())); \
  }                                                                                         \
  Tensor name(const Tensor& a, double s) {                                                  \
    return unary_forward(#name, UnaryKind::name##_scalar, a, s);                            \
  }
PEFT_COMPARE(eq)
PEFT_COMPARE(ne)
PEFT_COMPARE(gt)
PEFT_COMPARE(lt)
PEFT_COMPARE(ge)
PEFT_COMPARE(le)
#undef PEFT_COMPARE

Tensor isfinite(const Tensor& a) { return unary_forward("isfinite", UnaryKind::isfinite, a); }
Tensor logical_not(const Tensor& a) { return unary_forward("logical_not", UnaryKind::logical_not, a); }

// ---- scalar variants ----

// An integer tensor combined with a fractional scalar gives a float result (as torch).
static bool fractional(const char* op, const Tensor& a, double s) {
  check_defined(op, a);
  return !is_floating(a.dtype()) && s != std::floor(s);
}

Tensor add(const Tensor& a, double s) {
  Tensor out = unary_forward("add_scalar", UnaryKind::add_scalar, a, s, 0, fractional("add_scalar", a, s));
  if (needs_grad({&a})) record("add_scalar", {a}, out, [](const Tensor& g) { return Grads{g}; });
  return out;
}

Tensor sub(const Tensor& a, double s) { return add(a, -s); }

Tensor rsub(const Tensor& a, double s) {
  Tensor out = unary_forward("rsub_scalar", UnaryKind::rsub_scalar, a, s, 0, fractional("rsub_scalar", a, s));
  if (needs_grad({&a})) record("rsub_scalar", {a}, out, [](const Tensor& g) { return Grads{neg(g)}; });
  return out;
}

Tensor mul(const Tensor& a, double s) {
  Tensor out = unary_forward("mul_scalar", UnaryKind::mul_scalar, a, s, 0, fractional("mul_scalar", a, s));
  if (needs_grad({&a})) record("mul_scalar", {a}, out, [s](const Tensor& g) { return Grads{mul(g, s)}; });
  return out;
}

// True division by the scalar (not multiplication by 1/s, which rounds twice).
Tensor div(const Tensor& a, double s) {
  Tensor out = unary_forward("div_scalar", UnaryKind::div_scalar, a, s, 0, true);
  if (needs_grad({&a})) record("div_scalar", {a}, out, [s](const Tensor& g) { return Grads{div(g, s)}; });
  return out;
}

Tensor rdiv(const Tensor& a, double s) {
  Tensor out = unary_forward("rdiv_scalar", UnaryKind::rdiv_scalar, a, s, 0, true);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("rdiv_scalar", {a}, out, [ad, s](const Tensor& g) {
      return Grads{neg(div(mul(g, s), mul(ad, ad)))};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, double p) {
  Tensor out = unary_forward("pow_scalar", UnaryKind::pow_scalar, a, p);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("pow_scalar", {a}, out, [ad, p](const Tensor& g) {
      if (p == 0) return Grads{zeros_like(g)};
      if (p == 1) return Grads{g};
      if (p == 2) return Grads{mul(g, mul(ad, 2.0))};
      return Grads{mul(g, mul(pow(ad, p - 1), p))};
    });
  }
  return out;
}

// ---- unary ----

Tensor neg(const Tensor& a) {
  Tensor out = unary_forward("neg", UnaryKind::neg, a);
  if (needs_grad({&a})) record("neg", {a}, out, [](const Tensor& g) { return Grads{neg(g)}; });
  return out;
}

Tensor exp(const Tensor& a) {
  Tensor out = unary_forward("exp", UnaryKind::exp, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor od = out.detach();
    record("exp", {a}, out, [od](const Tensor& g) { return Grads{mul(g, od)}; });
  }
  return out;
}

Tensor log(const Tensor& a) {
  Tensor out = unary_forward("log", UnaryKind::log, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("log", {a}, out, [ad](const Tensor& g) { return Grads{div(g, ad)}; });
  }
  return out;
}

Tensor sqrt(const Tensor& a) {
  Tensor out = unary_forward("sqrt", UnaryKind::sqrt, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor od = out.detach();
    record("sqrt", {a}, out, [od](const Tensor& g) { return Grads{div(g, mul(od, 2.0))}; });
  }
  return out;
}

Tensor rsqrt(const Tensor& a) {
  Tensor out = unary_forward("rsqrt", UnaryKind::rsqrt, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor od = out.detach();
    record("rsqrt", {a}, out, [od](const Tensor& g) {
      return Grads{mul(g, mul(pow(od, 3.0), -0.5))};
    });
  }
  return out;
}

Tensor abs(const Tensor& a) {
  Tensor out = unary_forward("abs", UnaryKind::abs, a);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("abs", {a}, out, [ad](const Tensor& g) { return Grads{mul(g, sign(ad))}; });
  }
  return out;
}

Tensor sign(const Tensor& a) {
  Tensor out = unary_forward("sign", UnaryKind::sign, a);
  if (needs_grad({&a})) record("sign", {a}, out, [](const Tensor& g) { return Grads{zeros_like(g)}; });
  return out;
}

Tensor erf(const Tensor& a) {
  Tensor out = unary_forward("erf", UnaryKind::erf, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("erf", {a}, out, [ad](const Tensor& g) {
      return Grads{mul(g, mul(exp(neg(mul(ad, ad))), 1.1283791670955126))};  // 2/sqrt(pi)
    });
  }
  return out;
}

Tensor relu(const Tensor& a) {
  Tensor out = unary_forward("relu", UnaryKind::relu, a);
  if (needs_grad({&a})) {
    Tensor od = out.detach();
    record("relu", {a}, out, [od](const Tensor& g) {
      return Grads{mul(g, gt(od, 0.0).to(g.dtype()))};
    });
  }
  return out;
}

Tensor gelu(const Tensor& a) {
  Tensor out = unary_forward("gelu", UnaryKind::gelu, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("gelu", {a}, out, [ad](const Tensor& g) { return Grads{gelu_backward(g, ad)}; });
  }
  return out;
}

Tensor gelu_backward(const Tensor& grad, const Tensor& x) {
  // double backward: d/dgrad = gelu'(x), d/dx = grad·φ(x)·(2 - x²)
  return one_pass_backward("gelu_backward", BinaryKind::gelu_grad, grad, x,
                           [](const Tensor& g, const Tensor& gd, const Tensor& xd, bool want_grad, bool want_x) {
                             Tensor d_x;
                             if (want_x) {
                               Tensor pdf = mul(exp(mul(mul(xd, xd), -0.5)), 0.3989422804014327);  // 1/sqrt(2 pi)
                               d_x = mul(mul(g, gd), mul(pdf, rsub(mul(xd, xd), 2.0)));
                             }
                             return std::pair{want_grad ? gelu_backward(g, xd) : Tensor(), d_x};
                           });
}

Tensor silu(const Tensor& a) {
  Tensor out = unary_forward("silu", UnaryKind::silu, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("silu", {a}, out, [ad](const Tensor& g) {
      Tensor s = sigmoid(ad);
      return Grads{mul(g, mul(s, add(mul(ad, rsub(s, 1.0)), 1.0)))};
    });
  }
  return out;
}

Tensor tanh(const Tensor& a) {
  Tensor out = unary_forward("tanh", UnaryKind::tanh, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor od = out.detach();
    record("tanh", {a}, out, [od](const Tensor& g) { return Grads{tanh_backward(g, od)}; });
  }
  return out;
}

Tensor tanh_backward(const Tensor& grad, const Tensor& y) {
  // double backward: d/dgrad = 1 - y², d/dy = -2·grad·y
  return one_pass_backward("tanh_backward", BinaryKind::tanh_grad, grad, y,
                           [](const Tensor& g, const Tensor& gd, const Tensor& yd, bool want_grad, bool want_y) {
                             return std::pair{want_grad ? mul(g, rsub(mul(yd, yd), 1.0)) : Tensor(),
                                              want_y ? mul(mul(g, gd), mul(yd, -2.0)) : Tensor()};
                           });
}

Tensor sigmoid(const Tensor& a) {
  Tensor out = unary_forward("sigmoid", UnaryKind::sigmoid, a, 0, 0, true);
  if (needs_grad({&a})) {
    Tensor od = out.detach();
    record("sigmoid", {a}, out, [od](const Tensor& g) { return Grads{mul(g, mul(od, rsub(od, 1.0)))}; });
  }
  return out;
}

Tensor clamp(const Tensor& a, double lo, double hi) {
  if (lo > hi) fail_shape("[clamp] min ", lo, " is greater than max ", hi);
  Tensor out = unary_forward("clamp", UnaryKind::clamp, a, lo, hi);
  if (needs_grad({&a})) {
    Tensor ad = a.detach();
    record("clamp", {a}, out, [ad, lo, hi](const Tensor& g) {
      Tensor inside = mul(ge(ad, lo).to(g.dtype()), le(ad, hi).to(g.dtype()));
      return Grads{mul(g, inside)};
    });
  }
  return out;
}

}  // namespace peft
