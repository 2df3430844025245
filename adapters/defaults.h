// PEFT 0.21's defaults per transformers model_type (peft/utils/constants.py), used when a
// config leaves target_modules unset, limited to the families peft.cpp hosts.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "nn/module.h"

namespace peft {

// The model_type of a transformer host (config.json's), "custom" for any other module
// (PEFT's DUMMY_MODEL_CONFIG).
std::string host_model_type(const nn::Module& model);

// TRANSFORMERS_MODELS_TO_{LORA,IA3,ADALORA}_TARGET_MODULES_MAPPING[model_type]; nullopt when
// PEFT has no entry (the caller raises PEFT's "Please specify `target_modules`" error).
std::optional<std::vector<std::string>> default_target_modules(const std::string& peft_type,
                                                               const std::string& model_type);
// TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[model_type].
std::optional<std::vector<std::string>> default_feedforward_modules(const std::string& model_type);

}  // namespace peft
