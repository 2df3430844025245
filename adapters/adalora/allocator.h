// AdaLoRA's rank allocator (PEFT's RankAllocator + AdaLoraModel.update_and_allocate,
// PEFT's tuners/adalora/), usable on a model injected with the low-level API (PEFT loses it
// there, issue #3373), and the orthogonal regularisation loss.
//
//   peft::inject_adapter_in_model(cfg, *model);
//   peft::adalora::AdaLoraAllocator alloc(*model, cfg);
//   for (int64_t step = 0; step < cfg.total_step; ++step) {
//     Tensor loss = add(task_loss, peft::adalora::orthogonal_regularization(*model));
//     loss.backward(); opt.step();
//     alloc.update_and_allocate(step);   // after backward, before zero_grad
//     opt.zero_grad();
//   }
#pragma once
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adapters/adalora/config.h"
#include "adapters/tuner.h"

namespace peft::adalora {

// Result of selecting triplets against a budget.
struct MaskSelection {
  double threshold = 0;                  // the k-th smallest score (kthvalue)
  std::vector<std::vector<bool>> keep;   // per layer: score > threshold
};
// torch.kthvalue over all scores (k = 1 is the smallest; every score <= the
// threshold is masked, ties included). k must lie in [1, #scores].
MaskSelection select_by_budget(const std::vector<std::vector<float>>& scores, int64_t k);

class AdaLoraAllocator {
 public:
  // Schedule from `config`; the rank_pattern is also stored in the model's
  // config for `adapter_name` (model.peft_config[adapter].rank_pattern).
  AdaLoraAllocator(nn::Module& model, const AdaLoraConfig& config, std::string adapter_name = "default");
  // Uses the config the adapter was injected with.
  explicit AdaLoraAllocator(nn::Module& model, std::string adapter_name = "default");

  // (budget, mask now) at `step` (PEFT's tuners/adalora/).
  std::pair<int64_t, bool> budget_schedule(int64_t step) const;
  // Importance EMA and uncertainty from the current gradients.
  void update_ipt();
  void reset_ipt();
  // Masks lora_E to `budget` triplets; returns {"<layer>.lora_E.<adapter>": keep}.
  AdaLoraConfig::RankPattern mask_to_budget(int64_t budget);
  // Zeroes the lora_E rows a pattern drops (keys with or without the adapter name).
  void mask_using_rank_pattern(const AdaLoraConfig::RankPattern& rank_pattern);
  // AdaLoraModel.update_and_allocate: call after backward(), before zero_grad().
  void update_and_allocate(int64_t global_step);

  int64_t init_bgt() const { return init_bgt_; }
  int64_t target_bgt() const { return target_bgt_; }
  const std::optional<AdaLoraConfig::RankPattern>& rank_pattern() const { return config_.rank_pattern; }
  const AdaLoraConfig& config() const { return config_; }

 private:
  void store_rank_pattern(AdaLoraConfig::RankPattern rp);
  nn::Module& model_;
  AdaLoraConfig config_;
  std::string adapter_;
  int64_t init_bgt_ = 0, target_bgt_ = 0;
  std::map<std::string, Tensor> exp_avg_ipt_, exp_avg_unc_;
};

// orth_reg_weight · mean over the adapter's lora_A / lora_B of ‖AAᵀ−I‖_F /
// ‖BᵀB−I‖_F, differentiable; add it to the task loss (AdaLoraModel.forward).
Tensor orthogonal_regularization(const nn::Module& model, const std::string& adapter_name, double orth_reg_weight);
// Same, with orth_reg_weight from the adapter's stored config.
Tensor orthogonal_regularization(const nn::Module& model, const std::string& adapter_name = "default");

}  // namespace peft::adalora
