#include "adapters/lora/model.h"

#include "adapters/defaults.h"
#include "adapters/model_lock.h"
#include "nn/transformers/common.h"

#include <algorithm>
#include <set>

namespace peft::lora {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const char* const kUnsupported =
    " is not supported. Currently, only the following modules are supported: `torch.nn.Linear`, "
    "`torch.nn.Embedding`, `torch.nn.Conv1d`, `torch.nn.Conv2d`, `torch.nn.Conv3d`, "
    "`transformers.pytorch_utils.Conv1D`, `torch.nn.MultiheadAttention.`.";

}  // namespace

nn::ModulePtr create_and_replace(LoraConfig& cfg, const std::string& adapter, const nn::ModulePtr& target,
                                 const std::string& key, bool low_cpu_mem_usage) {
  AdapterArgs args;
  args.r = cfg.rank_for(key);
  args.lora_alpha = cfg.alpha_for(key);
  args.lora_dropout = cfg.lora_dropout;
  args.init_lora_weights = cfg.init_lora_weights;
  args.use_rslora = cfg.use_rslora;
  args.use_dora = cfg.use_dora;
  args.lora_bias = cfg.lora_bias;
  args.low_cpu_mem_usage = low_cpu_mem_usage;
  args.inference_mode = cfg.inference_mode;

  if (auto existing = std::dynamic_pointer_cast<LoraLayer>(target)) {
    existing->update_layer(adapter, args);
    return nullptr;
  }
  nn::Module* base = target.get();
  while (auto* t = dynamic_cast<TunerLayer*>(base)) base = &t->base_layer();
  if (dynamic_cast<nn::Embedding*>(base)) return std::make_shared<Embedding>(target, adapter, args);
  if (dynamic_cast<nn::Conv1D*>(base)) {  // before Linear: a Conv1D is a Linear stored [in, out]
    if (!cfg.fan_in_fan_out) {
      warn("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
      cfg.fan_in_fan_out = true;  // PEFT writes it back into the config
    }
    return std::make_shared<Linear>(target, adapter, args, /*fan_in_fan_out=*/true);
  }
  if (dynamic_cast<nn::Linear*>(base)) {
    if (cfg.fan_in_fan_out) {
      warn("fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to "
           "False.");
      cfg.fan_in_fan_out = false;
    }
    return std::make_shared<Linear>(target, adapter, args, /*fan_in_fan_out=*/false);
  }
  fail("Target module ", target->repr(), kUnsupported);
}

void register_lora_method() {
  TunerMethod m;
  m.peft_type = "LORA";
  m.prefix = "lora_";
  m.model_class = "LoraModel";
  m.parse_config = [](const ordered_json& j) -> PeftConfigPtr { return LoraConfig::from_json(j); };
  m.prepare_config = [](PeftConfig& c, const std::string& model_type) {
    if (!c.target_modules.is_none()) return;
    auto defaults = default_target_modules("LORA", model_type);
    if (!defaults) fail("Please specify `target_modules` or `target_parameters`in `peft_config`");
    c.target_modules = TargetModules::list(*defaults);
  };
  m.check_new_adapter_config = [](const PeftState& state, const PeftConfig& c) {
    if (state.configs.size() > 1 && c.bias_mode() != "none")
      fail("LoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for all "
           "adapters.");
  };
  m.create_and_replace = [](PeftConfig& c, const std::string& adapter, const nn::ModulePtr& target,
                            const std::string& key, bool low_cpu, const StateDict&) -> nn::ModulePtr {
    auto* lc = dynamic_cast<LoraConfig*>(&c);
    if (!lc) fail("LoRA injection needs a LoraConfig (peft_type LORA)");
    return create_and_replace(*lc, adapter, target, key, low_cpu);
  };
  // DoRA: "<layer>.lora_magnitude_vector.<adapter>.weight" is saved without ".weight".
  m.to_checkpoint_key = [](const std::string& key, const std::string& adapter) {
    const std::string tail = "lora_magnitude_vector." + adapter + ".weight";
    if (key == tail || ends_with(key, "." + tail)) return key.substr(0, key.size() - std::string(".weight").size());
    return key;
  };
  m.default_target_fields = [](const std::string& model_type) -> std::optional<ordered_json> {
    auto t = default_target_modules("LORA", model_type);
    if (!t) return std::nullopt;
    return ordered_json{{"target_modules", *t}};
  };
  m.weighted_delta_error = [](const PeftConfig& c) -> std::string {
    auto* lc = dynamic_cast<const LoraConfig*>(&c);
    return lc && lc->use_dora ? "DoRA scales the weights multiplicatively, so its delta cannot be weighted" : "";
  };
  // ΔW = B·A·scaling (and lora_B's bias) is linear in B
  m.delta_scales_with = [](const std::string& key) {
    return key.find(".lora_B.") != std::string::npos || key.find(".lora_embedding_B") != std::string::npos;
  };
  register_method(std::move(m));
}

}  // namespace peft::lora

namespace peft {

Tensor forward_mixed_batch(nn::Module& model, const Tensor& x, const std::vector<std::string>& adapter_names) {
  return forward_mixed_batch(model, adapter_names, [&] { return model.forward(x); });
}

Tensor forward_mixed_batch(nn::Module& model, const std::vector<std::string>& adapter_names,
                           const std::function<Tensor()>& fn) {
  ModelReadGuard lock(model);  // see adapters/model_lock.h
  std::vector<std::shared_ptr<lora::LoraLayer>> layers;
  std::set<std::string> known;
  for (auto& [n, t] : tuner_layers(model))
    if (auto l = std::dynamic_pointer_cast<lora::LoraLayer>(t)) {
      layers.push_back(l);
      for (const auto& a : l->adapter_names()) known.insert(a);
    }
  std::vector<std::string> unknown;
  for (const auto& a : adapter_names)
    if (a != "__base__" && !known.count(a) && std::find(unknown.begin(), unknown.end(), a) == unknown.end())
      unknown.push_back(a);
  if (!unknown.empty()) {
    // an adapter of another method (IA3, AdaLoRA) is known but cannot be mixed per row
    if (const PeftState* st = peft_state(model))
      for (const auto& u : unknown)
        for (const auto& [n, c] : st->configs)
          if (n == u)
            fail("adapter '", u, "' is ", c->peft_type,
                 ": mixed batches (a different adapter per row) work with LoRA adapters only");
    std::string u, k;
    for (size_t i = 0; i < unknown.size(); ++i) u += (i ? ", " : "") + unknown[i];
    size_t i = 0;
    for (const auto& a : known) k += (i++ ? ", " : "") + a;
    fail("Trying to infer with non-existing adapter(s): ", u, ". Available adapters: ", k);
  }
  lora::LoraLayer::MixedBatchScope scope(layers, adapter_names);
  return fn();
}

}  // namespace peft
