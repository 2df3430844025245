// Reductions and softmax.
#include <cmath>
#include <limits>

#include "runtime/ops_common.h"

namespace peft {

using namespace detail;
using autograd::needs_grad;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

// Runs a reduction kernel; returns the keepdim-shaped result and the dims used.
Tensor reduce_forward(const char* op, ReduceKind k, const Tensor& a, const std::vector<int64_t>& dims,
                      DType out_dt, std::vector<int64_t>& rdims) {
  check_defined(op, a);
  rdims = reduce_dims(op, dims, a.dim());
  std::vector<bool> reduced(size_t(a.dim()), false);
  Shape sh = a.shape();
  for (int64_t d : rdims) {
    reduced[size_t(d)] = true;
    if (k != ReduceKind::sum && sh[size_t(d)] == 0)
      fail_shape("[", op, "] cannot reduce over dimension ", d, " of size 0 in ", a.desc());
    sh[size_t(d)] = 1;
  }
  DType cd = compute_dtype(out_dt == DType::int64 && k == ReduceKind::argmax ? a.dtype() : out_dt);
  Tensor out = make_tensor(sh, k == ReduceKind::argmax ? DType::int64 : cd, a.device());
  if (!a.is_meta()) {
    Tensor x = convert_raw(a, k == ReduceKind::argmax ? compute_dtype(a.dtype()) : cd);
    backend(a.device()).reduce(k, x, reduced, out);
  }
  if (k != ReduceKind::argmax && cd != out_dt) out = convert_raw(out, out_dt);
  return out;
}

Tensor drop_dims(const Tensor& t, const std::vector<int64_t>& rdims) {
  Shape sh;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (!std::binary_search(rdims.begin(), rdims.end(), d)) sh.push_back(t.size(d));
  return reshape_raw(t, sh);
}

}  // namespace

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  check_defined("sum", a);
  std::vector<int64_t> rd;
  DType dt = is_floating(a.dtype()) ? a.dtype() : DType::int64;
  Tensor out = reduce_forward("sum", ReduceKind::sum, a, dims, dt, rd);
  if (!keepdim) out = drop_dims(out, rd);
  if (needs_grad({&a})) {
    Shape in = a.shape();
    int64_t rank = a.dim();
    record("sum", {a}, out, [in, rd, rank, keepdim](const Tensor& g) {
      Tensor gk = keepdim ? g : unsqueeze_reduced(g, rd, rank);
      return Grads{gk.expand(in)};
    });
  }
  return out;
}

Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  check_defined("mean", a);
  if (!is_floating(a.dtype()))
    fail_shape("[mean] needs a floating-point input, got ", a.desc(), "; convert with .to(float32)");
  std::vector<int64_t> rd = reduce_dims("mean", dims, a.dim());
  // bf16/f16: sum and divide in float32, round once (as torch)
  if (compute_dtype(a.dtype()) != a.dtype())
    return mean(a.to(compute_dtype(a.dtype())), dims, keepdim).to(a.dtype());
  int64_t count = 1;
  for (int64_t d : rd) count *= a.size(d);
  return div(sum(a, dims, keepdim), double(count));
}

Tensor amax(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  check_defined("amax", a);
  std::vector<int64_t> rd;
  Tensor outk = reduce_forward("amax", ReduceKind::max, a, dims, a.dtype(), rd);
  Tensor out = keepdim ? outk : drop_dims(outk, rd);
  if (needs_grad({&a})) {
    Tensor ad = a.detach(), ok = outk.detach();
    int64_t rank = a.dim();
    record("amax", {a}, out, [ad, ok, rd, rank, keepdim](const Tensor& g) {
      // ties share the gradient evenly
      Tensor mask = eq(ad, ok).to(g.dtype());
      Tensor cnt = sum(mask, rd, true);
      Tensor gk = keepdim ? g : unsqueeze_reduced(g, rd, rank);
      return Grads{div(mul(mask, gk), cnt)};
    });
  }
  return out;
}

Tensor max(const Tensor& a) { return amax(a, {}, false); }
Tensor max(const Tensor& a, int64_t dim, bool keepdim) { return amax(a, {dim}, keepdim); }

Tensor argmax(const Tensor& a, int64_t dim, bool keepdim) {
  std::vector<int64_t> rd;
  Tensor out = reduce_forward("argmax", ReduceKind::argmax, a, {dim}, DType::int64, rd);
  return keepdim ? out : drop_dims(out, rd);
}

Tensor norm(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  check_defined("norm", a);
  if (!is_floating(a.dtype())) fail_shape("[norm] needs a floating-point input, got ", a.desc());
  std::vector<int64_t> rd = reduce_dims("norm", dims, a.dim());
  Tensor outk;
  {
    NoGradGuard ng;
    outk = sqrt(sum(mul(a, a), dims, true));
  }
  Tensor out = keepdim ? outk : drop_dims(outk, rd);
  if (needs_grad({&a})) {
    // ok is detached: with keepdim, out *is* outk, and a closure holding out's own handle
    // would be a reference cycle (out -> grad_fn -> closure -> out).
    Tensor ad = a.detach(), ok = outk.detach();
    int64_t rank = a.dim();
    record("norm", {a}, out, [ad, ok, rd, rank, keepdim](const Tensor& g) {
      Tensor gk = keepdim ? g : unsqueeze_reduced(g, rd, rank);
      // d‖x‖/dx = x/‖x‖, defined as 0 where the norm is 0 (as PyTorch)
      Tensor safe = where(eq(ok, 0.0), ones({}, ok.dtype(), ok.device()), ok);
      Tensor r = div(mul(ad, gk), safe);
      return Grads{where(eq(ok, 0.0), zeros({}, r.dtype(), r.device()), r)};
    });
  }
  return out;
}

static Tensor softmax_forward(const char* op, const Tensor& a, int64_t dim, bool log) {
  check_defined(op, a);
  if (!is_floating(a.dtype())) fail_shape("[", op, "] needs a floating-point input, got ", a.desc());
  if (a.dim() == 0) return log ? zeros_like(a) : ones_like(a);
  dim = wrap_dim(op, dim, a.dim());
  DType cd = compute_dtype(a.dtype());
  Tensor out = make_tensor(a.shape(), cd, a.device());
  if (!a.is_meta()) backend(a.device()).softmax(contiguous_raw(convert_raw(a, cd)), dim, log, out);
  return convert_raw(out, a.dtype());
}

Tensor softmax(const Tensor& a, int64_t dim) {
  Tensor out = softmax_forward("softmax", a, dim, false);
  if (needs_grad({&a})) {
    Tensor y = out.detach();
    record("softmax", {a}, out, [y, dim](const Tensor& g) {
      return Grads{mul(y, sub(g, sum(mul(g, y), {dim}, true)))};
    });
  }
  return out;
}

Tensor log_softmax(const Tensor& a, int64_t dim) {
  Tensor out = softmax_forward("log_softmax", a, dim, true);
  if (needs_grad({&a})) {
    Tensor y = out.detach();
    record("log_softmax", {a}, out, [y, dim](const Tensor& g) {
      return Grads{sub(g, mul(exp(y), sum(g, {dim}, true)))};
    });
  }
  return out;
}

}  // namespace peft
