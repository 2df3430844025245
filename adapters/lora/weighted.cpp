#include "adapters/lora/weighted.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "adapters/core/detail.h"
#include "adapters/lora/config.h"
#include "adapters/lora/layer.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft {

namespace {

// The adapter's (A, B) in one layer: lora_A/lora_B weights, or the embedding parameters.
// Empty tensors when the layer does not hold it.
std::pair<Tensor, Tensor> factors(lora::LoraLayer& l, const std::string& a) {
  if (l.lora_A().contains(a)) return {l.lora_A()[a].param("weight"), l.lora_B()[a].param("weight")};
  if (l.lora_embedding_A().contains(a)) return {l.lora_embedding_A()[a], l.lora_embedding_B()[a]};
  return {};
}

// torch.quantile(values, q) with linear interpolation.
double quantile(const Tensor& t, double q) {
  std::vector<double> v = t.to(DType::float64).contiguous().to_vector<double>();
  if (v.empty()) fail("add_weighted_adapter: svd_clamp on empty factors");
  std::sort(v.begin(), v.end());
  double pos = q * double(v.size() - 1);
  size_t lo = size_t(std::floor(pos)), hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

// Σ w_i·t_i, checking the shapes agree (torch.stack would refuse them).
Tensor weighted_sum(const std::vector<Tensor>& ts, const std::vector<double>& ws, const std::string& layer,
                    const char* what) {
  Tensor acc;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (acc.defined() && ts[i].shape() != acc.shape())
      fail("add_weighted_adapter: layer '", layer, "': the ", what, " of the adapters have different shapes (",
           shape_str(acc.shape()), " vs ", shape_str(ts[i].shape()),
           "); use combination_type 'cat' or 'svd' for adapters of different ranks");
    Tensor term = mul(ts[i].to(DType::float32), ws[i]);
    acc = acc.defined() ? add(acc, term) : term;
  }
  return acc;
}

}  // namespace

bool add_weighted_adapter(nn::Module& model, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& adapter_name,
                          const WeightedAdapterOptions& opts) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  PeftState* state = peft_state(model);
  if (!state) fail("add_weighted_adapter: the model has no adapters (inject one first)");
  if (state->find(adapter_name)) return false;
  if (adapters.empty()) fail("add_weighted_adapter: no adapters given");
  if (weights.size() != adapters.size())
    fail("add_weighted_adapter: ", adapters.size(), " adapters but ", weights.size(),
         " weights; give one weight per adapter");
  std::vector<std::shared_ptr<LoraConfig>> cfgs;
  for (const auto& a : adapters) {
    PeftConfigPtr c = state->find(a);
    if (!c) fail("Adapter ", a, " does not exist");
    if (const TunerMethod* m = find_method(c->peft_type); m && !m->add_weighted_adapter_error.empty())
      fail(m->add_weighted_adapter_error);
    auto lc = std::dynamic_pointer_cast<LoraConfig>(c);
    if (!lc)
      fail("add_weighted_adapter combines LoRA adapters; adapter '", a, "' is ", c->peft_type);
    if (!lc->target_parameters.is_null() && !(lc->target_parameters.is_array() && lc->target_parameters.empty()))
      fail("add_weighted_adapter does not support targeting nn.Parameter (problematic adapter '", a, "')");
    cfgs.push_back(lc);
  }
  size_t problematic = 0;
  for (auto& [n, w] : modules_to_save_wrappers(model)) {
    size_t k = 0;
    for (const auto& a : adapters) k += w->modules_to_save().contains(a);
    problematic += k > 1;
  }
  if (problematic)
    fail("Cannot add weighted adapters if they target the same module with modules_to_save, but found ",
         problematic, " such instance(s).");

  std::string type = adapters.size() == 1 ? "linear" : opts.combination_type;
  std::vector<int64_t> ranks;
  for (auto& c : cfgs) {
    int64_t r = c->r;
    for (auto& [p, v] : c->rank_pattern) r = std::max(r, v);
    ranks.push_back(r);
  }
  int64_t new_rank = 0;
  if (type == "linear") {
    if (std::set<int64_t>(ranks.begin(), ranks.end()).size() != 1)
      fail("All adapters must have the same r value when using combination_type linear, ties, dare_ties or "
           "dare_linear.");
    new_rank = ranks[0];
  } else if (type == "cat") {
    for (int64_t r : ranks) new_rank += r;
  } else if (type == "svd") {
    new_rank = opts.svd_rank ? *opts.svd_rank : *std::max_element(ranks.begin(), ranks.end());
    if (new_rank <= 0) fail("add_weighted_adapter: svd_rank must be positive, got ", new_rank);
  } else if (type == "ties" || type == "dare_ties" || type == "dare_linear" || type == "magnitude_prune" ||
             type == "ties_svd" || type == "dare_ties_svd" || type == "dare_linear_svd" ||
             type == "magnitude_prune_svd") {
    fail("add_weighted_adapter: combination_type '", type,
         "' is not implemented in peft.cpp; use 'linear', 'cat' or 'svd'");
  } else {
    fail("Invalid combination_type: ", type);
  }
  if (opts.svd_clamp && !(*opts.svd_clamp >= 0.0 && *opts.svd_clamp <= 1.0))
    fail("add_weighted_adapter: svd_clamp must be a quantile in [0, 1], got ", *opts.svd_clamp);

  TargetModules targets;
  const TargetModules::Kind kind = cfgs[0]->target_modules.kind;
  for (auto& c : cfgs)
    if (c->target_modules.kind != kind)
      fail("all adapter configs should follow the same target modules type. Combining adapters with "
           "`target_modules` type being a mix of list/set and string is not supported.");
  if (kind == TargetModules::Kind::regex) {
    std::string re;
    for (size_t i = 0; i < cfgs.size(); ++i) re += (i ? "|(" : "(") + cfgs[i]->target_modules.pattern + ")";
    targets = TargetModules::regex(re);
  } else if (kind == TargetModules::Kind::list) {
    std::vector<std::string> names;
    for (auto& c : cfgs)
      for (const auto& n : c->target_modules.names)
        if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
    targets = TargetModules::list(names);
  } else {
    fail("Invalid type NoneType found in target_modules");
  }

  auto cfg = std::static_pointer_cast<LoraConfig>(cfgs[0]->clone());
  cfg->r = new_rank;
  cfg->lora_alpha = double(new_rank);
  cfg->target_modules = targets;
  cfg->alpha_pattern.clear();
  cfg->rank_pattern.clear();
  detail::InjectOptions io;
  io.warn_existing = false;
  io.activate = false;
  // Any failure below removes the half-built adapter again: the model is left as it was.
  detail::inject_adapter(*cfg, model, adapter_name, false, io);
  try {
    NoGradGuard ng;
    for (auto& [name, t] : tuner_layers(model)) {
      auto l = std::dynamic_pointer_cast<lora::LoraLayer>(t);
      if (!l) continue;
      auto [tA, tB] = factors(*l, adapter_name);
      if (!tA.defined()) continue;
      const bool is_embedding = l->lora_embedding_A().contains(adapter_name);
      std::vector<std::string> valid;
      std::vector<double> w;
      for (size_t i = 0; i < adapters.size(); ++i)
        if (factors(*l, adapters[i]).first.defined()) {
          valid.push_back(adapters[i]);
          w.push_back(weights[i]);
        }
      if (valid.empty()) fail("No matching LoRAs found. Please raise an issue on GitHub.");
      Tensor newA, newB;
      if (type == "cat") {
        std::vector<Tensor> as, bs;
        for (size_t i = 0; i < valid.size(); ++i) {
          auto [a, b] = factors(*l, valid[i]);
          as.push_back(mul(a.to(DType::float32), w[i] * l->scaling.at(valid[i])));
          bs.push_back(b.to(DType::float32));
        }
        Tensor ca = cat(as, 0), cb = cat(bs, 1);
        newA = zeros(tA.shape());
        newB = zeros(tB.shape());
        newA.narrow(0, 0, ca.size(0)).copy_(ca);
        newB.narrow(1, 0, cb.size(1)).copy_(cb);
      } else if (type == "svd") {
        std::vector<Tensor> deltas;
        for (const auto& a : valid) deltas.push_back(l->get_delta_weight(a));
        Tensor delta = weighted_sum(deltas, w, name, "delta weights");
        const bool fan_in_fan_out = [&] {
          auto* lin = dynamic_cast<lora::Linear*>(l.get());
          return lin && lin->fan_in_fan_out;
        }();
        if (fan_in_fan_out || is_embedding) delta = delta.t();
        SvdResult r = svd(delta, opts.svd_full_matrices);
        const int64_t k = std::min(new_rank, r.S.size(0));
        Tensor U = mul(r.U.narrow(1, 0, k), r.S.narrow(0, 0, k));  // U·diag(S)
        Tensor Vh = r.Vh.narrow(0, 0, k);
        if (opts.svd_clamp) {
          double hi = quantile(cat({U.flatten(), Vh.flatten()}, 0), *opts.svd_clamp);
          U = clamp(U, -hi, hi);
          Vh = clamp(Vh, -hi, hi);
        }
        newA = Vh.contiguous();
        newB = U.contiguous();
      } else {  // linear
        std::vector<Tensor> as, bs;
        std::vector<double> wa, wb;
        for (size_t i = 0; i < valid.size(); ++i) {
          auto [a, b] = factors(*l, valid[i]);
          double ws = w[i] * l->scaling.at(valid[i]);
          double root = std::sqrt(std::abs(ws));
          wa.push_back(ws >= 0 ? root : -root);  // the sign goes on one side only
          wb.push_back(root);
          as.push_back(a);
          bs.push_back(b);
        }
        newA = weighted_sum(as, wa, name, "lora_A weights");
        newB = weighted_sum(bs, wb, name, "lora_B weights");
      }
      newA = newA.to(tA.dtype()).to(tA.device());
      newB = newB.to(tB.dtype()).to(tB.device());
      if (newA.shape() == tA.shape()) tA.copy_(newA);
      else tA.set_data(newA);  // svd of a matrix smaller than the rank: PEFT assigns .data too
      if (newB.shape() == tB.shape()) tB.copy_(newB);
      else tB.set_data(newB);
    }
  } catch (...) {
    delete_adapter(model, adapter_name);
    throw;
  }
  return true;
}

}  // namespace peft
