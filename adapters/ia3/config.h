// IA3Config: PEFT 0.21's fields and defaults (PEFT's tuners/ia3/), from/to adapter_config.json.
#pragma once
#include <memory>
#include <string>

#include "adapters/tuner.h"

namespace peft {

struct IA3Config : PeftConfig {
  IA3Config() { peft_type = "IA3"; }

  // None, a regex (re.fullmatch against the full dotted name) or a list of
  // names matched as plain suffixes (no dot boundary, unlike target_modules).
  TargetModules feedforward_modules;
  bool fan_in_fan_out = false;
  bool init_ia3_weights = true;

  PeftConfigPtr clone() const override { return std::make_shared<IA3Config>(*this); }
  // PEFT's __post_init__: feedforward_modules must be a subset of
  // target_modules when both are lists.
  void validate() const override;
  ordered_json to_json() const override;

  // Whether the targeted module `key` is a feed-forward module (its input is scaled).
  bool is_feedforward(const std::string& key) const;

  static std::shared_ptr<IA3Config> from_json(const ordered_json& j);
  static std::shared_ptr<IA3Config> from_json_string(const std::string& text);
};

}  // namespace peft
