#include "adapters/adalora/allocator.h"

#include <algorithm>
#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::adalora {

namespace {

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
  return s;
}

}  // namespace

MaskSelection select_by_budget(const std::vector<std::vector<float>>& scores, int64_t k) {
  std::vector<float> all;
  for (const auto& s : scores) all.insert(all.end(), s.begin(), s.end());
  if (k < 1 || k > int64_t(all.size()))
    fail("kthvalue(): selected number k out of range for dimension 0 (AdaLoRA: k = init_bgt - budget = ", k,
         " with ", all.size(), " triplets; a budget equal to the initial budget masks nothing, PEFT issue #2337)");
  std::vector<float> sorted = all;
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), [](float a, float b) {
    if (std::isnan(a)) return false;  // NaN sorts last
    if (std::isnan(b)) return true;
    return a < b;
  });
  MaskSelection m;
  float thr = sorted[size_t(k - 1)];
  m.threshold = thr;
  for (const auto& s : scores) {
    std::vector<bool> keep;
    for (float v : s) keep.push_back(!(v <= thr));
    m.keep.push_back(std::move(keep));
  }
  return m;
}

AdaLoraAllocator::AdaLoraAllocator(nn::Module& model, const AdaLoraConfig& config, std::string adapter_name)
    : model_(model), config_(config), adapter_(std::move(adapter_name)) {
  if (!(config_.beta1 > 0 && config_.beta1 < 1) || !(config_.beta2 > 0 && config_.beta2 < 1))
    fail("AdaLoraAllocator: beta1 and beta2 must lie in (0, 1)");
  if (!config_.total_step) fail("AdaLoRA does not work when `total_step` is None, supply a value > 0.");
  std::vector<std::string> names;
  for (const auto& [n, p] : model_.named_parameters())
    if (has(n, "lora_A." + adapter_)) {
      init_bgt_ += p.size(0);
      std::string m = replace_all(n, "lora_A", "%s");
      if (std::find(names.begin(), names.end(), m) == names.end()) names.push_back(m);
    }
  if (names.empty()) fail("AdaLoraAllocator: the model has no AdaLoRA layers for adapter '", adapter_, "'");
  target_bgt_ = config_.target_r * int64_t(names.size());
}

namespace {
const AdaLoraConfig& stored_config(const nn::Module& model, const std::string& adapter) {
  auto c = std::dynamic_pointer_cast<AdaLoraConfig>(peft_config(model, adapter));
  if (!c) fail("AdaLoraAllocator: adapter '", adapter, "' is not an AdaLoRA adapter");
  return *c;
}
}  // namespace

AdaLoraAllocator::AdaLoraAllocator(nn::Module& model, std::string adapter_name)
    : AdaLoraAllocator(model, stored_config(model, adapter_name), adapter_name) {}

std::pair<int64_t, bool> AdaLoraAllocator::budget_schedule(int64_t step) const {
  int64_t tinit = config_.tinit, tfinal = config_.tfinal, total = *config_.total_step;
  if (step <= tinit) return {init_bgt_, false};
  if (step > total - tfinal) return {target_bgt_, true};
  double mul_coeff = 1.0 - double(step - tinit) / double(total - tfinal - tinit);
  auto budget = int64_t(double(init_bgt_ - target_bgt_) * (mul_coeff * mul_coeff * mul_coeff) + double(target_bgt_));
  return {budget, step % config_.deltaT == 0};
}

void AdaLoraAllocator::reset_ipt() {
  exp_avg_ipt_.clear();
  exp_avg_unc_.clear();
}

void AdaLoraAllocator::update_ipt() {
  NoGradGuard ng;
  const double b1 = config_.beta1, b2 = config_.beta2;
  for (const auto& [n, p] : model_.named_parameters()) {
    if (!has(n, "lora_") || !has(n, adapter_)) continue;
    if (!exp_avg_ipt_.count(n)) {
      exp_avg_ipt_[n] = zeros_like(p);
      exp_avg_unc_[n] = zeros_like(p);
    }
    Tensor g = p.grad();
    if (!g.defined()) fail("AdaLoraAllocator: ", n, " has no gradient; call update_and_allocate after backward()");
    Tensor ipt = abs(mul(p.detach(), g));
    exp_avg_ipt_[n] = add(mul(exp_avg_ipt_[n], b1), mul(ipt, 1 - b1));
    exp_avg_unc_[n] = add(mul(exp_avg_unc_[n], b2), mul(abs(sub(ipt, exp_avg_ipt_[n])), 1 - b2));
  }
}

AdaLoraConfig::RankPattern AdaLoraAllocator::mask_to_budget(int64_t budget) {
  NoGradGuard ng;
  auto score = [&](const std::string& n) -> Tensor {
    auto it = exp_avg_ipt_.find(n);
    if (it == exp_avg_ipt_.end()) fail("AdaLoraAllocator: no importance scores for ", n, " (call update_ipt first)");
    return mul(it->second, exp_avg_unc_.at(n));
  };
  std::vector<std::string> order;  // name_m in first-seen order
  std::map<std::string, std::vector<Tensor>> vec;
  std::map<std::string, Tensor> val;
  for (const auto& [n, p] : model_.named_parameters()) {
    std::string m;
    if (has(n, "lora_A." + adapter_)) {
      m = replace_all(n, "lora_A", "%s");
      vec[m].push_back(mean(score(n), {1}, true));
    } else if (has(n, "lora_B." + adapter_)) {
      m = replace_all(n, "lora_B", "%s");
      vec[m].push_back(mean(score(n), {0}, false).view({-1, 1}));
    } else if (has(n, "lora_E." + adapter_)) {
      m = replace_all(n, "lora_E", "%s");
      val[m] = score(n);
    } else {
      continue;
    }
    if (std::find(order.begin(), order.end(), m) == order.end()) order.push_back(m);
  }
  std::vector<std::string> e_names;
  std::vector<std::vector<float>> scores;
  for (const auto& m : order) {
    if (!vec.count(m)) continue;
    Tensor ab = sum(cat(vec[m], 1), {1}, false);
    Tensor s = add(val.at(m).view({-1}), ab.view({-1}));
    e_names.push_back(replace_all(m, "%s", "lora_E"));
    scores.push_back(s.contiguous().to(DType::float32).to_vector<float>());
  }
  MaskSelection sel = select_by_budget(scores, init_bgt_ - budget);
  AdaLoraConfig::RankPattern rp;
  for (const auto& [n, p] : model_.named_parameters()) {
    auto it = std::find(e_names.begin(), e_names.end(), n);
    if (it == e_names.end()) continue;
    const auto& keep = sel.keep[size_t(it - e_names.begin())];
    std::vector<float> mask(keep.begin(), keep.end());
    Tensor mt = from_vector(mask, {int64_t(mask.size()), 1}).to(p.dtype());
    Tensor h = p;
    h.copy_(masked_fill(p.detach(), eq(mt, 0.0), 0.0));
    rp.emplace_back(n, keep);
  }
  return rp;
}

void AdaLoraAllocator::mask_using_rank_pattern(const AdaLoraConfig::RankPattern& rank_pattern) {
  if (rank_pattern.empty()) return;
  bool truncated = !has(rank_pattern.front().first, adapter_);
  NoGradGuard ng;
  for (const auto& [n, p] : model_.named_parameters()) {
    if (!has(n, "lora_E." + adapter_)) continue;
    std::string key = truncated ? replace_all(n, "." + adapter_, "") : n;
    auto it = std::find_if(rank_pattern.begin(), rank_pattern.end(), [&](const auto& e) { return e.first == key; });
    if (it == rank_pattern.end()) fail("AdaLoraAllocator: rank_pattern has no entry '", key, "'");
    if (int64_t(it->second.size()) != p.size(0))
      fail("AdaLoraAllocator: rank_pattern['", key, "'] has ", it->second.size(), " entries, lora_E has ", p.size(0),
           " rows");
    std::vector<float> mask(it->second.begin(), it->second.end());
    Tensor mt = from_vector(mask, {int64_t(mask.size()), 1}).to(p.dtype());
    Tensor h = p;
    h.copy_(masked_fill(p.detach(), eq(mt, 0.0), 0.0));
  }
}

void AdaLoraAllocator::store_rank_pattern(AdaLoraConfig::RankPattern rp) {
  config_.rank_pattern = rp;
  if (PeftState* st = peft_state(model_))
    if (auto c = std::dynamic_pointer_cast<AdaLoraConfig>(st->find(adapter_))) c->rank_pattern = std::move(rp);
}

void AdaLoraAllocator::update_and_allocate(int64_t step) {
  const int64_t T = *config_.total_step - config_.tfinal;
  if (step < T) {
    update_ipt();
    auto [budget, mask] = budget_schedule(step);
    if (mask) {
      auto rp = mask_to_budget(budget);
      if (!rp.empty()) store_rank_pattern(std::move(rp));
    }
  } else if (step == T) {
    auto [budget, mask] = budget_schedule(step);
    (void)mask;
    store_rank_pattern(mask_to_budget(budget));
    reset_ipt();
  } else {
    if (!config_.rank_pattern) fail("AdaLoraAllocator: no rank_pattern to apply at step ", step);
    mask_using_rank_pattern(*config_.rank_pattern);
  }
}

Tensor orthogonal_regularization(const nn::Module& model, const std::string& adapter, double weight) {
  if (weight <= 0) fail("orth_reg_weight should be greater than 0. ");
  Tensor total;
  int64_t n = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    bool is_a = has(name, "lora_A"), is_b = has(name, "lora_B");
    if (!(is_a || is_b) || !has(name, adapter)) continue;
    Tensor cov = is_a ? matmul(p, p.t()) : matmul(p.t(), p);
    int64_t r = cov.size(0);
    std::vector<float> eye(size_t(r * r), 0.0f);
    for (int64_t i = 0; i < r; ++i) eye[size_t(i * r + i)] = 1.0f;
    Tensor I = from_vector(eye, {r, r}).to(cov.dtype()).to(cov.device());
    Tensor term = norm(sub(cov, I));
    total = total.defined() ? add(total, term) : term;
    ++n;
  }
  if (n == 0) return zeros({}, DType::float32);
  return mul(div(total, double(n)), weight);
}

Tensor orthogonal_regularization(const nn::Module& model, const std::string& adapter) {
  auto c = std::dynamic_pointer_cast<AdaLoraConfig>(peft_config(model, adapter));
  if (!c) fail("orthogonal_regularization: adapter '", adapter, "' is not an AdaLoRA adapter");
  return orthogonal_regularization(model, adapter, c->orth_reg_weight);
}

}  // namespace peft::adalora
