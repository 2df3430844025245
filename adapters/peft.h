// peft.cpp's public adapter API: PEFT's low-level API (inject_adapter_in_model,
// get_peft_model_state_dict, set_peft_model_state_dict), the model-level helpers
// (set_adapter, enable_adapters, merge/unmerge, delete_adapter, merge_and_unload,
// add_weighted_adapter, ...) and adapter folders (save_pretrained, load_adapter).
//
//   auto model = std::make_shared<MyModel>();
//   peft::LoraConfig cfg;
//   cfg.r = 64; cfg.lora_alpha = 16; cfg.lora_dropout = 0.1;
//   cfg.target_modules = {"linear"};
//   peft::inject_adapter_in_model(cfg, *model);
//   peft::StateDict sd = peft::get_peft_model_state_dict(*model);
#pragma once

#include "adapters/lora/config.h"
#include "adapters/lora/layer.h"
#include "adapters/lora/model.h"
#include "adapters/lora/weighted.h"
#include "adapters/ia3/config.h"
#include "adapters/ia3/layer.h"
#include "adapters/ia3/model.h"
#include "adapters/adalora/allocator.h"
#include "adapters/adalora/config.h"
#include "adapters/adalora/layer.h"
#include "adapters/adalora/model.h"
#include "adapters/tuner.h"
#include "adapters/utilities.h"
#include "adapters/folder.h"
#include "adapters/model_lock.h"

namespace peft {


}  // namespace peft
