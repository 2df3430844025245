// LoraModel.add_weighted_adapter (PEFT 0.21): a new LoRA adapter combining
// existing ones, for plain injected models.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "adapters/tuner.h"

namespace peft {

struct WeightedAdapterOptions {
  // "linear" (all ranks equal; A and B combined separately with sign(w·s)·√|w·s| / √|w·s|),
  // "cat" (exact: ranks concatenated, rank = Σ r_i) or "svd" (ΔW = Σ w_i·ΔW_i truncated to
  // svd_rank by SVD; 0.21 semantics: w_i is not multiplied by the scaling again).
  // With one adapter the combination is always "linear", as PEFT.
  std::string combination_type = "svd";
  std::optional<int64_t> svd_rank;   // default: the largest rank of the inputs
  std::optional<double> svd_clamp;   // q in [0, 1]: both factors clamped to ±quantile(their values, q)
  bool svd_full_matrices = true;     // accepted for parity; the truncated result is the same
};

// Adds adapter `adapter_name` = the weighted combination of `adapters` (LoRA only). Its
// config is the first adapter's with r = lora_alpha = the new rank (scaling 1), the union of
// the target modules (or "(re1)|(re2)" for regexes) and no rank/alpha patterns. The active
// adapters do not change and the new adapter is frozen, as PEFT. Returns false (and does
// nothing) when `adapter_name` already exists, as PEFT silently does.
bool add_weighted_adapter(nn::Module& model, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& adapter_name,
                          const WeightedAdapterOptions& opts = {});

}  // namespace peft
