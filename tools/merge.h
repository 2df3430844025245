// `peft merge` without the model: merges PEFT adapter folders into a base
// safetensors file stored under the host model's own keys ("linear.weight"),
// tensor by tensor. Each adapted module is rebuilt alone (a Linear or an
// Embedding of the stored shape at its dotted path), the adapter injected from
// the checkpoint's keys, loaded, merged with the library's own merge and
// unloaded; every other tensor is copied through. Memory stays near one module.
#pragma once
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace peft::tools {

struct MergeInput {
  std::string dir;      // adapter_config.json + adapter_model.safetensors
  double weight = 1.0;  // the delta is scaled by this (LoRA and AdaLoRA without DoRA only)
};

struct MergeOptions {
  std::optional<DType> dtype;  // of the output's floating tensors; default: as in the base file
  // Modules whose weight is stored [in, out] (transformers' Conv1D, GPT-2), merged transposed.
  // Known only when the base is a model folder (merge_into_folder fills it); with a bare
  // file, an adapter saved with fan_in_fan_out=true is refused rather than merged wrongly.
  std::optional<std::set<std::string>> conv1d_modules;
  // Called after each output tensor: (done, total, name).
  std::function<void(size_t, size_t, const std::string&)> progress;
};

struct MergeReport {
  size_t tensors = 0;         // written
  size_t merged_modules = 0;  // modules with at least one adapter merged in
  size_t replaced = 0;        // tensors taken from an adapter as they are (bias="all", modules_to_save)
};

// Adapters are merged in the order given (IA3 and DoRA do not commute with others).
// Merges are safe merges (non-finite results are refused). The output is written
// atomically: on any error the previous file at `out_path` is intact.
MergeReport merge_into_file(const std::string& base_path, const std::vector<MergeInput>& adapters,
                            const std::string& out_path, const MergeOptions& opts = {});

// The same on a Hugging Face model folder (config.json + model.safetensors): the architecture
// is read from config.json so Conv1D layers merge transposed; out_dir receives the merged
// model.safetensors and copies of the folder's other files (config, tokenizer, ...).
MergeReport merge_into_folder(const std::string& base_dir, const std::vector<MergeInput>& adapters,
                              const std::string& out_dir, MergeOptions opts = {});

}  // namespace peft::tools
