#include "adapters/adalora/config.h"

#include <cmath>

namespace peft {

namespace {

const char* const kAdaFields[] = {"target_r", "init_r", "tinit", "tfinal", "deltaT",
                                  "beta1", "beta2", "orth_reg_weight", "total_step", "rank_pattern"};

bool loftq_truthy(const ordered_json& j) {
  if (j.is_null()) return false;
  if (j.is_object() || j.is_array() || j.is_string()) return !j.empty();
  if (j.is_boolean()) return j.get<bool>();
  return true;
}

}  // namespace

void AdaLoraConfig::validate() const {
  LoraConfig::validate();
  // PeftType is a (str, Enum): f"{self.peft_type}" prints "PeftType.ADALORA".
  if (use_dora) fail("PeftType.ADALORA does not support DoRA.");
  if (loftq_truthy(loftq_config)) fail("PeftType.ADALORA does not support LOFTQ.");
  if (r != 8)
    warn("Note that `r` is not used in AdaLora and will be ignored.If you intended to set the initial rank, use "
         "`init_r` instead.");
  if (!total_step || *total_step <= 0) fail("AdaLoRA does not work when `total_step` is None, supply a value > 0.");
  // In 128 bits: Python's ints do not overflow, and int64 subtraction could (UB).
  if (__int128(tinit) >= __int128(*total_step) - __int128(tfinal))
    fail("The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or increase "
         "`total_step`.");
  if (orth_reg_weight < 0) fail("orth_reg_weight should be greater than 0. ");
  if (init_r < 0) fail("`r` should be a positive integer or 0, but the value passed is ", init_r);
  if (init_r > kMaxRank)
    fail("AdaLoRA: init_r = ", init_r, " is above peft.cpp's limit of ", kMaxRank,
         " (LoraConfig::kMaxRank): every targeted layer would allocate init_r x (in + out) weights; "
         "the config is corrupt");
  if (target_r < 0 || target_r > kMaxRank)
    fail("AdaLoRA: target_r = ", target_r, " must lie in [0, ", kMaxRank, "] (LoraConfig::kMaxRank)");
  if (rank_pattern)
    for (const auto& [k, keep] : *rank_pattern)
      if (int64_t(keep.size()) > kMaxRank)
        fail("AdaLoRA: rank_pattern['", k, "'] lists ", keep.size(), " ranks, above peft.cpp's limit of ", kMaxRank,
             " (LoraConfig::kMaxRank); the config is corrupt");
  if (!(beta1 > 0 && beta1 < 1)) fail("AdaLoRA: beta1 must lie in (0, 1), got ", beta1);
  if (!(beta2 > 0 && beta2 < 1)) fail("AdaLoRA: beta2 must lie in (0, 1), got ", beta2);
  if (deltaT <= 0) fail("AdaLoRA: deltaT must be a positive integer, got ", deltaT);
}

ordered_json AdaLoraConfig::to_json() const {
  ordered_json j = LoraConfig::to_json();
  if (!rank_pattern) {
    j["rank_pattern"] = nullptr;
  } else {
    ordered_json rp = ordered_json::object();
    for (const auto& [k, v] : *rank_pattern) rp[k] = v;
    j["rank_pattern"] = rp;
  }
  j["target_r"] = target_r;
  j["init_r"] = init_r;
  j["tinit"] = tinit;
  j["tfinal"] = tfinal;
  j["deltaT"] = deltaT;
  j["beta1"] = beta1;
  j["beta2"] = beta2;
  j["orth_reg_weight"] = orth_reg_weight;
  j["total_step"] = total_step ? ordered_json(*total_step) : ordered_json(nullptr);
  return j;
}

std::shared_ptr<AdaLoraConfig> AdaLoraConfig::from_json(const ordered_json& j) {
  if (!j.is_object()) fail("adapter config must be a JSON object, got ", j.dump());
  if (!j.contains("peft_type") || !j["peft_type"].is_string() || j["peft_type"].get<std::string>() != "ADALORA")
    fail("AdaLoraConfig: peft_type is ", j.contains("peft_type") ? j["peft_type"].dump() : "missing",
         ", expected \"ADALORA\"");
  // The LoRA part through LoraConfig's parser (without AdaLoRA's fields).
  ordered_json lj = j;
  for (const char* k : kAdaFields) lj.erase(k);
  lj["peft_type"] = "LORA";
  if (lj.contains("r") && lj["r"].is_number_integer() && lj["r"].get<int64_t>() <= 0) lj["r"] = 8;
  auto lc = LoraConfig::from_json(lj);
  auto c = std::make_shared<AdaLoraConfig>();
  static_cast<LoraConfig&>(*c) = *lc;
  c->peft_type = "ADALORA";
  if (j.contains("r")) c->r = j["r"].get<int64_t>();
  auto integer = [&](const char* k, int64_t& dst) {
    auto it = j.find(k);
    if (it == j.end()) return;
    dst = config_int64("AdaLoraConfig", k, *it);
  };
  auto number = [&](const char* k, double& dst) {
    auto it = j.find(k);
    if (it == j.end()) return;
    if (!it->is_number()) fail("AdaLoraConfig: field `", k, "` must be a number, got ", it->dump());
    dst = it->get<double>();
  };
  integer("target_r", c->target_r);
  integer("init_r", c->init_r);
  integer("tinit", c->tinit);
  integer("tfinal", c->tfinal);
  integer("deltaT", c->deltaT);
  number("beta1", c->beta1);
  number("beta2", c->beta2);
  number("orth_reg_weight", c->orth_reg_weight);
  if (auto it = j.find("total_step"); it != j.end() && !it->is_null()) {
    c->total_step = config_int64("AdaLoraConfig", "total_step", *it);
  }
  if (auto it = j.find("rank_pattern"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) fail("AdaLoraConfig: field `rank_pattern` must be an object, got ", it->dump());
    RankPattern rp;
    for (auto e = it->begin(); e != it->end(); ++e) {
      std::vector<bool> keep;
      if (!e.value().is_array()) fail("AdaLoraConfig: rank_pattern['", e.key(), "'] must be a list of booleans");
      for (const auto& b : e.value()) {
        if (!b.is_boolean()) fail("AdaLoraConfig: rank_pattern['", e.key(), "'] must be a list of booleans");
        keep.push_back(b.get<bool>());
      }
      rp.emplace_back(e.key(), std::move(keep));
    }
    c->rank_pattern = std::move(rp);
  }
  c->validate();
  return c;
}

std::shared_ptr<AdaLoraConfig> AdaLoraConfig::from_json_string(const std::string& text) {
  return from_json(parse_config_text(text));
}

}  // namespace peft
