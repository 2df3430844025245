// AdaLoraModel's part of injection (PEFT's tuners/adalora/model.py): every
// target gets an SVDLinear of rank init_r; one trainable AdaLoRA adapter per
// model; state dicts drop ranknum, are trimmed by rank_pattern on save and the
// layers resized by it before a load (PEFT's tuners/adalora/). Registered as method "ADALORA".
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "adapters/adalora/config.h"
#include "adapters/adalora/layer.h"
#include "adapters/tuner.h"

namespace peft::adalora {

// Registers the ADALORA method with the tuner core (idempotent).
void register_adalora_method();

nn::ModulePtr create_and_replace(AdaLoraConfig& cfg, const std::string& adapter, const nn::ModulePtr& target,
                                 const std::string& key, bool low_cpu_mem_usage);

// PEFT's resize_modules_by_rank_pattern: each layer named in `rank_pattern` is
// rebuilt with rank = #true, keeping the selected rows of A/E and columns of B;
// ranknum keeps its old value (init_r), so the scale stays alpha/(init_r+1e-5).
// All-or-nothing: every entry is checked first; the returned function puts every resized
// layer back exactly as it was (set_peft_model_state_dict calls it when the load fails).
std::function<void()> resize_modules_by_rank_pattern(nn::Module& model, const AdaLoraConfig::RankPattern& rank_pattern,
                                                     const std::string& adapter = "default");

// PEFT's resize_state_dict_by_rank_pattern on a checkpoint-named state dict
// ("<module>.lora_A" ...): rows of A/E, columns of B selected by the mask.
void resize_state_dict_by_rank_pattern(StateDict& sd, const AdaLoraConfig::RankPattern& rank_pattern);

}  // namespace peft::adalora
