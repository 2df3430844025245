// Internal to adapters/ (and the tools built on it): not installed, not part of the API.
// Python-style formatting for messages as PEFT prints them, and the injection entry point
// with the options the public inject_* functions and add_weighted_adapter choose between.
#pragma once
#include <string>
#include <vector>

#include "adapters/model_lock.h"
#include "adapters/tuner.h"

namespace peft {

std::string py_repr(const std::string& s);               // 'text'
std::string py_list(const std::vector<std::string>& v);  // ['a', 'b']
std::string py_int_list(const std::vector<int64_t>& v);  // [0, 1]

namespace detail {
struct InjectOptions {
  const StateDict* state_dict = nullptr;  // targets from its keys (inject_from_state_dict)
  bool warn_existing = true;              // "Already found a `peft_config` attribute ..."
  // true: the new adapter becomes the active one (the low-level API's fresh tuner);
  // false: the active adapters stay and the new one is frozen (LoraModel.inject_adapter,
  // used by add_weighted_adapter).
  bool activate = true;
};
nn::Module& inject_adapter(const PeftConfig& config, nn::Module& model, const std::string& adapter_name,
                           bool low_cpu_mem_usage, const InjectOptions& opts);

// The model's modules in named_modules() order, but below a tuner layer only its base_layer
// chain, never its per-adapter dicts: what matching, wrapping and bookkeeping need, at a cost
// that does not grow with the number of adapters loaded (loading N adapters stays linear).
std::vector<std::pair<std::string, nn::ModulePtr>> host_modules(const nn::Module& model);
// Every parameter of the tree without building names (a parameter shared by two modules
// appears twice): for saving and restoring flags, where that is harmless.
std::vector<Tensor> all_parameters(const nn::Module& model);
// set_peft_model_state_dict for load_adapter: the same loading, all-or-nothing, but it resolves
// the checkpoint's keys through the tuner layers instead of the whole model's state dict and
// reports only this adapter's missing tensors (load_adapter's result) and unexpected keys.
nn::LoadResult load_adapter_state(nn::Module& model, const StateDict& state_dict, const std::string& adapter_name,
                                  bool low_cpu_mem_usage);
}  // namespace detail

}  // namespace peft
