// PEFT's adapter folder format both ways (PEFT 0.21 peft/utils/save_and_load.py):
// adapter_config.json + adapter_model.safetensors with keys prefixed
// "base_model.model."; the adapter "default" at the top, others in
// sub-folders named after them. Works on any model injected with
// inject_adapter_in_model, so C++ users need no PeftModel.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "adapters/tuner.h"

namespace peft {

struct SavePretrainedOptions {
  std::optional<DType> dtype;  // float32 / bfloat16 / float16; default: as in the model
};

// Writes every adapter (or the named ones). Each file is written atomically
// (temporary file + rename), so an interrupted save leaves the old folder intact.
void save_pretrained(const nn::Module& model, const std::string& dir,
                     const std::vector<std::string>& adapter_names = {},
                     const SavePretrainedOptions& opts = {});

struct LoadAdapterResult {
  PeftConfigPtr config;
  // Filtered as PeftModel.load_adapter: only adapter keys of this adapter.
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
  // adapter_config.json fields this version does not know (another PEFT version's): kept
  // in the config (and written back by save_pretrained) but not used; also logged via warn().
  std::vector<std::string> unknown_config_fields;
};

// Reads DIR/adapter_config.json, injects the adapter under `adapter_name`
// and loads DIR/adapter_model.safetensors (float32/bfloat16/float16 on disk,
// converted to the model's dtype). On any error the adapter is removed again,
// leaving the model as it was.
LoadAdapterResult load_adapter(nn::Module& model, const std::string& dir,
                               const std::string& adapter_name = "default",
                               bool low_cpu_mem_usage = false);

}  // namespace peft
