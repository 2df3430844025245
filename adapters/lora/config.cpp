#include "adapters/lora/config.h"

#include <cmath>
#include <limits>

namespace peft {

namespace {

const char* const kSupportedInit = "true, false, \"gaussian\"";

ordered_json number_json(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9e15) return ordered_json(int64_t(v));
  return ordered_json(v);
}

}  // namespace

int64_t config_int64(const char* cls, const std::string& field, const ordered_json& v) {
  if (!v.is_number_integer()) fail(cls, ": field `", field, "` must be an integer, got ", v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(cls, ": field `", field, "` = ", v.dump(), " does not fit a 64-bit signed integer");
  return v.get<int64_t>();
}

void LoraConfig::validate() const {
  PeftConfig::validate();
  if (r <= 0) fail("`r` should be a positive integer value but the value passed is ", r);
  if (r > kMaxRank)
    fail("`r` = ", r, " is above peft.cpp's limit of ", kMaxRank,
         " (LoraConfig::kMaxRank): every targeted layer would allocate r x (in + out) weights; "
         "the config is corrupt");
  if (bias != "none" && bias != "all" && bias != "lora_only")
    fail("Requested bias: ", bias, ", is not implemented.");
  if (!init_lora_weights.is_bool() && init_lora_weights.as_string() != "gaussian")
    fail("init_lora_weights=\"", init_lora_weights.as_string(), "\" is not supported by peft.cpp yet (supported: ",
         kSupportedInit, ")");
  if (use_dora && lora_bias) fail("The argument lora_bias=True is not supported for DoRA, please pass use_dora=False");
  if (lora_bias && !init_lora_weights.is_bool())
    fail("The argument lora_bias=True is only supported with init_lora_weights=True or False.");
  if (!target_parameters.is_null() && !(target_parameters.is_array() && target_parameters.empty()))
    fail("target_parameters is not supported by peft.cpp yet");
  for (const auto& [p, rr] : rank_pattern) {
    if (rr <= 0) fail("`r` should be a positive integer value but the value passed is ", rr, " (rank_pattern '", p, "')");
    if (rr > kMaxRank)
      fail("rank_pattern['", p, "'] = ", rr, " is above peft.cpp's limit of ", kMaxRank,
           " (LoraConfig::kMaxRank); the config is corrupt");
  }
}

ordered_json LoraConfig::to_json() const {
  ordered_json common = PeftConfig::to_json();
  ordered_json j = ordered_json::object();
  for (const char* k : {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                        "revision", "inference_mode"})
    j[k] = common[k];
  j["r"] = r;
  j["target_modules"] = common["target_modules"];
  j["exclude_modules"] = common["exclude_modules"];
  j["lora_alpha"] = number_json(lora_alpha);
  j["lora_dropout"] = lora_dropout;
  j["fan_in_fan_out"] = fan_in_fan_out;
  j["bias"] = bias;
  j["use_rslora"] = use_rslora;
  j["modules_to_save"] = common["modules_to_save"];
  if (init_lora_weights.is_bool()) j["init_lora_weights"] = init_lora_weights.as_bool();
  else j["init_lora_weights"] = init_lora_weights.as_string();
  j["layers_to_transform"] = common["layers_to_transform"];
  j["layers_pattern"] = common["layers_pattern"];
  ordered_json rp = ordered_json::object(), ap = ordered_json::object();
  for (const auto& [k, v] : rank_pattern) rp[k] = v;
  for (const auto& [k, v] : alpha_pattern) ap[k] = number_json(v);
  j["rank_pattern"] = rp;
  j["alpha_pattern"] = ap;
  j["megatron_config"] = megatron_config;
  j["megatron_core"] = megatron_core;
  j["trainable_token_indices"] = trainable_token_indices;
  j["loftq_config"] = loftq_config;
  j["eva_config"] = eva_config;
  j["corda_config"] = corda_config;
  j["lora_ga_config"] = lora_ga_config;
  j["use_dora"] = use_dora;
  j["velora_config"] = velora_config;
  j["alora_invocation_tokens"] = alora_invocation_tokens;
  j["use_qalora"] = use_qalora;
  j["qalora_group_size"] = qalora_group_size;
  j["monteclora_config"] = monteclora_config;
  j["layer_replication"] = layer_replication;
  j["lora_bias"] = lora_bias;
  j["target_parameters"] = target_parameters;
  j["use_bdlora"] = use_bdlora;
  j["arrow_config"] = arrow_config;
  j["kasa_config"] = kasa_config;
  j["ensure_weight_tying"] = ensure_weight_tying;
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}

std::shared_ptr<LoraConfig> LoraConfig::from_json(const ordered_json& j) {
  auto c = std::make_shared<LoraConfig>();
  std::vector<std::string> used;
  c->read_common(j, used);
  if (c->peft_type != "LORA") fail("LoraConfig: peft_type is '", c->peft_type, "', expected 'LORA'");
  auto take = [&](const char* k) -> const ordered_json* {
    used.push_back(k);
    auto it = j.find(k);
    return (it == j.end()) ? nullptr : &*it;
  };
  auto num = [&](const char* k, const ordered_json& v) -> double {
    if (!v.is_number()) fail("LoraConfig: field `", k, "` must be a number, got ", v.dump());
    return v.get<double>();
  };
  auto boolean = [&](const char* k, const ordered_json& v) -> bool {
    if (!v.is_boolean()) fail("LoraConfig: field `", k, "` must be a boolean, got ", v.dump());
    return v.get<bool>();
  };
  if (auto* v = take("r")) c->r = config_int64("LoraConfig", "r", *v);
  if (auto* v = take("lora_alpha")) c->lora_alpha = num("lora_alpha", *v);
  if (auto* v = take("lora_dropout")) c->lora_dropout = num("lora_dropout", *v);
  if (auto* v = take("fan_in_fan_out")) c->fan_in_fan_out = boolean("fan_in_fan_out", *v);
  if (auto* v = take("bias")) {
    if (!v->is_string()) fail("LoraConfig: field `bias` must be a string, got ", v->dump());
    c->bias = v->get<std::string>();
  }
  if (auto* v = take("use_rslora")) c->use_rslora = boolean("use_rslora", *v);
  if (auto* v = take("init_lora_weights")) {
    if (v->is_boolean()) c->init_lora_weights = v->get<bool>();
    else if (v->is_string()) c->init_lora_weights = v->get<std::string>();
    else fail("LoraConfig: field `init_lora_weights` must be a boolean or a string, got ", v->dump());
  }
  if (auto* v = take("rank_pattern"); v && !v->is_null()) {
    if (!v->is_object()) fail("LoraConfig: field `rank_pattern` must be an object, got ", v->dump());
    for (auto it = v->begin(); it != v->end(); ++it) {
      if (!it.value().is_number_integer()) fail("LoraConfig: rank_pattern['", it.key(), "'] must be an integer");
      c->rank_pattern.emplace_back(it.key(), config_int64("LoraConfig", "rank_pattern['" + it.key() + "']", it.value()));
    }
  }
  if (auto* v = take("alpha_pattern"); v && !v->is_null()) {
    if (!v->is_object()) fail("LoraConfig: field `alpha_pattern` must be an object, got ", v->dump());
    for (auto it = v->begin(); it != v->end(); ++it) c->alpha_pattern.emplace_back(it.key(), num("alpha_pattern", it.value()));
  }
  if (auto* v = take("use_dora")) c->use_dora = boolean("use_dora", *v);
  if (auto* v = take("lora_bias")) c->lora_bias = boolean("lora_bias", *v);
  if (auto* v = take("megatron_config")) c->megatron_config = *v;
  if (auto* v = take("megatron_core"); v && v->is_string()) c->megatron_core = v->get<std::string>();
  if (auto* v = take("trainable_token_indices")) c->trainable_token_indices = *v;
  if (auto* v = take("loftq_config")) c->loftq_config = *v;
  if (auto* v = take("eva_config")) c->eva_config = *v;
  if (auto* v = take("corda_config")) c->corda_config = *v;
  if (auto* v = take("lora_ga_config")) c->lora_ga_config = *v;
  if (auto* v = take("velora_config")) c->velora_config = *v;
  if (auto* v = take("alora_invocation_tokens")) c->alora_invocation_tokens = *v;
  if (auto* v = take("use_qalora"); v && v->is_boolean()) c->use_qalora = v->get<bool>();
  if (auto* v = take("qalora_group_size"); v && v->is_number_integer())
    c->qalora_group_size = config_int64("LoraConfig", "qalora_group_size", *v);
  if (auto* v = take("monteclora_config")) c->monteclora_config = *v;
  if (auto* v = take("layer_replication")) c->layer_replication = *v;
  if (auto* v = take("target_parameters")) c->target_parameters = *v;
  if (auto* v = take("use_bdlora")) c->use_bdlora = *v;
  if (auto* v = take("arrow_config")) c->arrow_config = *v;
  if (auto* v = take("kasa_config")) c->kasa_config = *v;
  if (auto* v = take("ensure_weight_tying"); v && v->is_boolean()) c->ensure_weight_tying = v->get<bool>();
  c->keep_unknown(j, used);
  c->validate();
  return c;
}

std::shared_ptr<LoraConfig> LoraConfig::from_json_string(const std::string& text) {
  return from_json(parse_config_text(text));
}

int64_t LoraConfig::rank_for(const std::string& key) const {
  std::vector<std::string> keys;
  for (const auto& [p, v] : rank_pattern) keys.push_back(p);
  if (auto p = get_pattern_key(keys, key))
    for (const auto& [k, v] : rank_pattern)
      if (k == *p) return v;
  return r;
}

double LoraConfig::alpha_for(const std::string& key) const {
  std::vector<std::string> keys;
  for (const auto& [p, v] : alpha_pattern) keys.push_back(p);
  if (auto p = get_pattern_key(keys, key))
    for (const auto& [k, v] : alpha_pattern)
      if (k == *p) return v;
  return lora_alpha;
}

}  // namespace peft
