// LoraModel's part of injection (PEFT's tuners/lora/model.py): layer dispatch,
// per-layer rank/alpha, the one-bias-adapter rule. Registered as method "LORA".
#pragma once
#include <memory>
#include <string>

#include "adapters/lora/config.h"
#include "adapters/lora/layer.h"
#include "adapters/tuner.h"

namespace peft::lora {

// Registers the LORA method with the tuner core (idempotent).
void register_lora_method();

// Wraps `target` for `adapter` (or adds the adapter to an existing LoRA layer,
// returning nullptr).
nn::ModulePtr create_and_replace(LoraConfig& cfg, const std::string& adapter, const nn::ModulePtr& target,
                                 const std::string& key, bool low_cpu_mem_usage);

}  // namespace peft::lora
