#include "adapters/ia3/model.h"

#include "adapters/defaults.h"
#include "nn/transformers/common.h"

namespace peft::ia3 {

namespace {

const char* const kUnsupported =
    " is not supported. Currently, only `torch.nn.Linear`, `torch.nn.Conv2d`, and `Conv1D` are supported.";

}  // namespace

nn::ModulePtr create_and_replace(IA3Config& cfg, const std::string& adapter, const nn::ModulePtr& target,
                                 const std::string& key, bool low_cpu_mem_usage) {
  if (auto existing = std::dynamic_pointer_cast<IA3Layer>(target)) {
    // PEFT keeps the layer's feed-forward flag for every further adapter.
    existing->update_layer(adapter, cfg.init_ia3_weights, low_cpu_mem_usage, cfg.inference_mode);
    return nullptr;
  }
  const bool ff = cfg.is_feedforward(key);
  nn::Module* base = target.get();
  while (auto* t = dynamic_cast<TunerLayer*>(base)) base = &t->base_layer();
  if (dynamic_cast<nn::Conv1D*>(base)) {  // before Linear: a Conv1D is a Linear stored [in, out]
    if (!cfg.fan_in_fan_out) {
      warn("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
      cfg.fan_in_fan_out = true;  // PEFT writes it back into the config
    }
    return std::make_shared<Linear>(target, adapter, ff, cfg.init_ia3_weights, /*fan_in_fan_out=*/true,
                                    low_cpu_mem_usage, cfg.inference_mode);
  }
  if (dynamic_cast<nn::Linear*>(base)) {
    if (cfg.fan_in_fan_out) {
      warn("fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to "
           "False.");
      cfg.fan_in_fan_out = false;
    }
    return std::make_shared<Linear>(target, adapter, ff, cfg.init_ia3_weights, /*fan_in_fan_out=*/false,
                                    low_cpu_mem_usage, cfg.inference_mode);
  }
  fail("Target module ", target->repr(), kUnsupported);
}

void register_ia3_method() {
  TunerMethod m;
  m.peft_type = "IA3";
  m.prefix = "ia3_";
  m.model_class = "IA3Model";
  m.parse_config = [](const ordered_json& j) -> PeftConfigPtr { return IA3Config::from_json(j); };
  m.prepare_config = [](PeftConfig& c, const std::string& model_type) {
    // A custom (non-transformers) model has no default module lists.
    auto* ic = dynamic_cast<IA3Config*>(&c);
    if (!ic) fail("IA3 injection needs an IA3Config (peft_type IA3)");
    if (c.target_modules.is_none()) {
      auto defaults = default_target_modules("IA3", model_type);
      if (!defaults) fail("Please specify `target_modules` in `peft_config`");
      c.target_modules = TargetModules::list(*defaults);
    }
    if (ic->feedforward_modules.is_none()) {
      auto defaults = default_feedforward_modules(model_type);
      if (!defaults) fail("Please specify `feedforward_modules` in `peft_config`");
      ic->feedforward_modules = TargetModules::list(*defaults);
    }
  };
  m.create_and_replace = [](PeftConfig& c, const std::string& adapter, const nn::ModulePtr& target,
                            const std::string& key, bool low_cpu, const StateDict&) -> nn::ModulePtr {
    auto* ic = dynamic_cast<IA3Config*>(&c);
    if (!ic) fail("IA3 injection needs an IA3Config (peft_type IA3)");
    return create_and_replace(*ic, adapter, target, key, low_cpu);
  };
  m.default_target_fields = [](const std::string& model_type) -> std::optional<ordered_json> {
    auto t = default_target_modules("IA3", model_type);
    if (!t) return std::nullopt;
    ordered_json j{{"target_modules", *t}};
    if (auto ff = default_feedforward_modules(model_type)) j["feedforward_modules"] = *ff;
    return j;
  };
  m.weighted_delta_error = [](const PeftConfig&) -> std::string {
    return "IA3 scales the weights multiplicatively, so its delta cannot be weighted";
  };
  register_method(std::move(m));
}

}  // namespace peft::ia3
