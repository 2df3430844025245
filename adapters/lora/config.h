// LoraConfig: PEFT 0.21's fields and defaults (PEFT's tuners/lora/), from/to adapter_config.json.
#pragma once
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "adapters/tuner.h"

namespace peft {

// init_lora_weights: true, false, or a named scheme ("gaussian", ...).
struct InitLoraWeights {
  std::variant<bool, std::string> value = true;
  InitLoraWeights() = default;
  InitLoraWeights(bool b) : value(b) {}  // NOLINT
  InitLoraWeights(const char* s) : value(std::string(s)) {}  // NOLINT
  InitLoraWeights(std::string s) : value(std::move(s)) {}  // NOLINT
  bool is_bool() const { return std::holds_alternative<bool>(value); }
  bool as_bool() const { return std::get<bool>(value); }
  const std::string& as_string() const { return std::get<std::string>(value); }
  // Python truthiness (non-empty strings are true).
  bool truthy() const { return is_bool() ? as_bool() : !as_string().empty(); }
  bool operator==(const InitLoraWeights& o) const { return value == o.value; }
};

struct LoraConfig : PeftConfig {
  LoraConfig() { peft_type = "LORA"; }

  // Ranks above this are refused by validate() before anything is allocated: a layer
  // holds r x (in + out) adapter weights, so a corrupt or hostile r (2^40) would otherwise
  // end in bad_alloc or the OOM killer. No real LoRA comes near it.
  static constexpr int64_t kMaxRank = int64_t(1) << 16;

  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  bool fan_in_fan_out = false;
  std::string bias = "none";  // "none" | "all" | "lora_only"
  bool use_rslora = false;
  InitLoraWeights init_lora_weights = true;
  // Insertion order matters: the first matching pattern wins.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  bool use_dora = false;
  bool lora_bias = false;

  // Kept for round trips; not used by the implementation.
  ordered_json megatron_config = nullptr;
  std::string megatron_core = "megatron.core";
  ordered_json trainable_token_indices = nullptr;
  ordered_json loftq_config = ordered_json::object();
  ordered_json eva_config = nullptr, corda_config = nullptr, lora_ga_config = nullptr;
  ordered_json velora_config = nullptr, alora_invocation_tokens = nullptr, monteclora_config = nullptr;
  bool use_qalora = false;
  int64_t qalora_group_size = 16;
  ordered_json layer_replication = nullptr;
  ordered_json target_parameters = nullptr;
  ordered_json use_bdlora = nullptr, arrow_config = nullptr, kasa_config = nullptr;
  bool ensure_weight_tying = false;

  PeftConfigPtr clone() const override { return std::make_shared<LoraConfig>(*this); }
  std::string bias_mode() const override { return bias; }
  void validate() const override;
  ordered_json to_json() const override;

  static std::shared_ptr<LoraConfig> from_json(const ordered_json& j);
  static std::shared_ptr<LoraConfig> from_json_string(const std::string& text);

  // Per-layer rank / alpha after rank_pattern / alpha_pattern.
  int64_t rank_for(const std::string& key) const;
  double alpha_for(const std::string& key) const;
};

// A config field as int64, refusing non-integers and unsigned values above 2^63-1 (which
// would otherwise wrap to negative ones); `cls` and `field` name it in the error.
int64_t config_int64(const char* cls, const std::string& field, const ordered_json& v);

}  // namespace peft
