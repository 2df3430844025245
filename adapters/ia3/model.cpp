#include "adapters/ia3/model.h"

namespace peft::ia3 {

namespace {

const char* const kUnsupported =
    " is not supported. Currently, only `torch.nn.Linear`, `torch.nn.Conv2d`, and `Conv1D` are supported.";

}  // namespace

nn::ModulePtr create_and_replace(const IA3Config& cfg, const std::string& adapter, const nn::ModulePtr& target,
                                 const std::string& key, bool low_cpu_mem_usage) {
  if (auto existing = std::dynamic_pointer_cast<IA3Layer>(target)) {
    // PEFT keeps the layer's feed-forward flag for every further adapter.
    existing->update_layer(adapter, cfg.init_ia3_weights, low_cpu_mem_usage, cfg.inference_mode);
    return nullptr;
  }
  const bool ff = cfg.is_feedforward(key);
  nn::Module* base = target.get();
  while (auto* t = dynamic_cast<TunerLayer*>(base)) base = &t->base_layer();
  if (dynamic_cast<nn::Linear*>(base)) {
    if (cfg.fan_in_fan_out)
      warn("fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to "
           "False.");
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
  m.prepare_config = [](PeftConfig& c) {
    // A custom (non-transformers) model has no default module lists.
    if (c.target_modules.is_none()) fail("Please specify `target_modules` in `peft_config`");
    auto* ic = dynamic_cast<IA3Config*>(&c);
    if (!ic) fail("IA3 injection needs an IA3Config (peft_type IA3)");
    if (ic->feedforward_modules.is_none()) fail("Please specify `feedforward_modules` in `peft_config`");
  };
  m.create_and_replace = [](const PeftConfig& c, const std::string& adapter, const nn::ModulePtr& target,
                            const std::string& key, bool low_cpu) -> nn::ModulePtr {
    const auto* ic = dynamic_cast<const IA3Config*>(&c);
    if (!ic) fail("IA3 injection needs an IA3Config (peft_type IA3)");
    return create_and_replace(*ic, adapter, target, key, low_cpu);
  };
  register_method(std::move(m));
}

}  // namespace peft::ia3
