// nn functional ops: embedding, dropout, losses, layer_norm.
#include <cmath>

#include "runtime/generator.h"
#include "runtime/ops_common.h"

namespace peft {

using namespace detail;
using autograd::needs_grad;
using autograd::record;
using Grads = std::vector<Tensor>;

Tensor embedding(const Tensor& ids, const Tensor& weight, std::optional<int64_t> padding_idx) {
  check_defined("embedding", ids, "ids");
  check_defined("embedding", weight, "weight");
  if (ids.dtype() != DType::int64) fail_shape("[embedding] ids must be int64, got ", ids.desc());
  if (weight.dim() != 2) fail_shape("[embedding] weight must be 2-D [num, dim], got ", weight.desc());
  const int64_t num = weight.size(0), dim = weight.size(1);
  if (padding_idx && (*padding_idx >= num || *padding_idx < -num))
    fail_shape("[embedding] padding_idx ", *padding_idx, " is out of range for ", num,
         " embeddings (weight ", weight.desc(), ")");
  Tensor flat = ids.reshape({-1});
  if (!flat.is_meta()) {
    Tensor host = flat.device() == Device::cpu ? contiguous_raw(flat) : flat.to(Device::cpu);
    const int64_t* p = host.data_ptr<int64_t>();
    for (int64_t i = 0; i < host.numel(); ++i)
      if (p[i] < 0 || p[i] >= num)
        fail_shape("[embedding] index ", p[i], " is out of range for ", num, " embeddings (weight ",
             weight.desc(), ", ids ", ids.desc(), ")");
  }
  Tensor rows;
  if (is_quantized(weight.dtype())) {
    // rows read from block storage, dequantized (a frozen table: no gradient for it)
    if (weight.device() != Device::cpu && !weight.is_meta())
      fail_shape("[embedding] ", dtype_name(weight.dtype()), " weights run on the cpu only, got ", weight.desc());
    if (flat.device() != weight.device())
      fail_shape("[embedding] ids ", ids.desc(), " and weight ", weight.desc(), " are on different devices");
    rows = make_tensor({flat.numel(), dim}, DType::float32, weight.device());
    if (!rows.is_meta() && rows.numel() > 0) backend(weight.device()).dequantize_rows(weight, contiguous_raw(flat), rows);
    Shape sh = ids.shape();
    sh.push_back(dim);
    return reshape_raw(rows, sh);
  }
  {
    NoGradGuard ng;
    rows = index_select(weight, 0, flat);
  }
  Shape sh = ids.shape();
  sh.push_back(dim);
  Tensor out = reshape_raw(rows, sh);
  if (needs_grad({&weight})) {
    record("embedding", {weight}, out, [flat, num, dim, padding_idx](const Tensor& g) {
      Tensor gw = index_add(zeros({num, dim}, g.dtype(), g.device()), 0, flat, g.reshape({-1, dim}));
      if (padding_idx) {
        Tensor keep = ones({num, 1}, g.dtype(), Device::cpu);
        int64_t p = *padding_idx < 0 ? *padding_idx + num : *padding_idx;
        keep.set({p, 0}, 0.0);
        gw = mul(gw, keep.to(g.device()));
      }
      return Grads{gw};
    });
  }
  return out;
}

Tensor dropout(const Tensor& a, double p, bool training, Generator& gen) {
  check_defined("dropout", a);
  if (p < 0 || p > 1) fail_shape("[dropout] probability has to be between 0 and 1, but got ", p);
  if (!training || p == 0) return a;
  if (p == 1) return mul(a, 0.0);
  Tensor mask = make_tensor(a.shape(), compute_dtype(a.dtype()), a.device());
  if (!mask.is_meta()) {
    uint64_t counter = gen.reserve_blocks(uint64_t((a.numel() + 3) / 4));
    backend(a.device()).random(RandomKind::bernoulli, mask, 1.0 - p, 0.0, gen.seed(), counter);
  }
  return mul(a, mul(convert_raw(mask, a.dtype()), 1.0 / (1.0 - p)));
}

Tensor mse_loss(const Tensor& input, const Tensor& target) {
  check_defined("mse_loss", input);
  check_defined("mse_loss", target, "target");
  if (input.shape() != target.shape())
    fail_shape("[mse_loss] input ", input.desc(), " and target ", target.desc(), " must have the same shape");
  Tensor d = sub(input, target);
  return mean(mul(d, d));
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index) {
  check_defined("cross_entropy", logits, "logits");
  check_defined("cross_entropy", target, "target");
  if (target.dtype() != DType::int64)
    fail_shape("[cross_entropy] target must hold int64 class indices, got ", target.desc());
  Tensor lg = logits, tg = target;
  if (lg.dim() == 1) {
    lg = lg.unsqueeze(0);
    tg = tg.reshape({1});
  }
  if (lg.dim() != 2 || tg.dim() != 1 || tg.size(0) != lg.size(0))
    fail_shape("[cross_entropy] expects logits [N, C] and target [N], got ", logits.desc(), " and ",
         target.desc());
  const int64_t C = lg.size(1);
  Tensor valid = ne(tg, double(ignore_index));
  if (!tg.is_meta()) {
    std::vector<int64_t> tv = tg.to_vector<int64_t>();
    for (size_t i = 0; i < tv.size(); ++i)
      if (tv[i] != ignore_index && (tv[i] < 0 || tv[i] >= C))
        fail_shape("[cross_entropy] target ", tv[i], " at row ", i, " is out of range for ", C,
             " classes");
  }
  Tensor safe = where(valid, tg, zeros({}, DType::int64, tg.device()));
  Tensor lsm = log_softmax(lg, 1);
  Tensor picked = gather(lsm, 1, safe.unsqueeze(1)).squeeze(1);
  Tensor w = valid.to(lg.dtype());
  return div(neg(sum(mul(picked, w))), sum(w));
}

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps) {
  check_defined("layer_norm", x);
  const int64_t k = int64_t(normalized_shape.size());
  if (k == 0 || k > x.dim()) fail_shape("[layer_norm] normalized_shape ", shape_str(normalized_shape),
                                  " does not fit input ", x.desc());
  for (int64_t i = 0; i < k; ++i)
    if (x.size(x.dim() - k + i) != normalized_shape[size_t(i)])
      fail_shape("[layer_norm] input ", x.desc(), " does not end with normalized_shape ",
           shape_str(normalized_shape));
  if (weight.defined() && weight.shape() != normalized_shape)
    fail_shape("[layer_norm] weight ", weight.desc(), " must have normalized_shape ",
         shape_str(normalized_shape));
  if (bias.defined() && bias.shape() != normalized_shape)
    fail_shape("[layer_norm] bias ", bias.desc(), " must have normalized_shape ",
         shape_str(normalized_shape));
  if (!is_floating(x.dtype())) fail_shape("[layer_norm] needs a floating-point input, got ", x.desc());
  if (weight.defined()) common_device("layer_norm", x, weight);
  if (bias.defined()) common_device("layer_norm", x, bias);
  if (!(eps >= 0) || !std::isfinite(eps)) fail_shape("[layer_norm] eps must be finite and >= 0, got ", eps);
  int64_t N = 1;
  for (int64_t n : normalized_shape) N *= n;
  return layer_norm_fused(x, N, weight, bias, eps);
}

}  // namespace peft
