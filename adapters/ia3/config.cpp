#include "adapters/ia3/config.h"

#include <algorithm>
#include <regex>

#include "adapters/core/detail.h"

namespace peft {

void IA3Config::validate() const {
  PeftConfig::validate();
  if (feedforward_modules.is_list() && target_modules.is_list()) {
    for (const auto& f : feedforward_modules.names)
      if (std::find(target_modules.names.begin(), target_modules.names.end(), f) == target_modules.names.end())
        fail("`feedforward_modules` should be a subset of `target_modules`");
  }
}

bool IA3Config::is_feedforward(const std::string& key) const {
  if (feedforward_modules.is_regex()) {
    return std::regex_match(key, compile_user_regex(feedforward_modules.pattern, "feedforward_modules"));
  }
  if (feedforward_modules.is_list())
    for (const auto& f : feedforward_modules.names)
      if (key.size() >= f.size() && key.compare(key.size() - f.size(), f.size(), f) == 0) return true;
  return false;
}

ordered_json IA3Config::to_json() const {
  ordered_json common = PeftConfig::to_json();
  ordered_json j = ordered_json::object();
  for (const char* k : {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                        "revision", "inference_mode", "target_modules", "exclude_modules"})
    j[k] = common[k];
  j["feedforward_modules"] = feedforward_modules.to_json();
  j["fan_in_fan_out"] = fan_in_fan_out;
  j["modules_to_save"] = common["modules_to_save"];
  j["init_ia3_weights"] = init_ia3_weights;
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}

std::shared_ptr<IA3Config> IA3Config::from_json(const ordered_json& j) {
  auto c = std::make_shared<IA3Config>();
  std::vector<std::string> used;
  c->read_common(j, used);
  if (c->peft_type != "IA3") fail("IA3Config: peft_type is '", c->peft_type, "', expected 'IA3'");
  auto take = [&](const char* k) -> const ordered_json* {
    used.push_back(k);
    auto it = j.find(k);
    return (it == j.end()) ? nullptr : &*it;
  };
  auto boolean = [&](const char* k, const ordered_json& v) -> bool {
    if (!v.is_boolean()) fail("IA3Config: field `", k, "` must be a boolean, got ", v.dump());
    return v.get<bool>();
  };
  if (auto* v = take("feedforward_modules")) c->feedforward_modules = TargetModules::from_json(*v, "feedforward_modules");
  if (auto* v = take("fan_in_fan_out")) c->fan_in_fan_out = boolean("fan_in_fan_out", *v);
  if (auto* v = take("init_ia3_weights")) c->init_ia3_weights = boolean("init_ia3_weights", *v);
  c->keep_unknown(j, used);
  c->validate();
  return c;
}

std::shared_ptr<IA3Config> IA3Config::from_json_string(const std::string& text) {
  return from_json(parse_config_text(text));
}

}  // namespace peft
