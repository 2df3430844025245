// IA3Model's part of injection (PEFT's tuners/ia3/model.py): config
// preparation (target/feed-forward modules required on custom models), layer
// dispatch, feed-forward detection. Registered as method "IA3".
#pragma once
#include <memory>
#include <string>

#include "adapters/ia3/config.h"
#include "adapters/ia3/layer.h"
#include "adapters/tuner.h"

namespace peft::ia3 {

// Registers the IA3 method with the tuner core (idempotent).
void register_ia3_method();

// Wraps `target` for `adapter` (or adds the adapter to an existing IA3 layer,
// returning nullptr). Non-Linear targets (Embedding, ...) are rejected with
// PEFT's message.
nn::ModulePtr create_and_replace(IA3Config& cfg, const std::string& adapter, const nn::ModulePtr& target,
                                 const std::string& key, bool low_cpu_mem_usage);

}  // namespace peft::ia3
