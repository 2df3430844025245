// AdaLoraConfig (PEFT's tuners/adalora/config.py): a LoraConfig with the
// rank-allocation schedule. rank_pattern here is AdaLoRA's boolean keep-mask
// per lora_E ("lin0.lora_E[.default]" -> [true, false, ...]), not LoRA's ranks.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adapters/lora/config.h"

namespace peft {

struct AdaLoraConfig : LoraConfig {
  AdaLoraConfig() { peft_type = "ADALORA"; }

  int64_t target_r = 8;
  int64_t init_r = 12;
  int64_t tinit = 0;
  int64_t tfinal = 0;
  int64_t deltaT = 1;
  double beta1 = 0.85;
  double beta2 = 0.85;
  double orth_reg_weight = 0.5;
  std::optional<int64_t> total_step;  // required, > 0

  using RankPattern = std::vector<std::pair<std::string, std::vector<bool>>>;
  // None until the allocator (or a loaded adapter_config.json) sets it. Shadows
  // LoraConfig::rank_pattern, which AdaLoRA does not use.
  std::optional<RankPattern> rank_pattern;

  PeftConfigPtr clone() const override { return std::make_shared<AdaLoraConfig>(*this); }
  // LoraConfig's checks, then AdaLoRA's (PEFT's messages).
  void validate() const override;
  ordered_json to_json() const override;

  static std::shared_ptr<AdaLoraConfig> from_json(const ordered_json& j);
  static std::shared_ptr<AdaLoraConfig> from_json_string(const std::string& text);
};

}  // namespace peft
