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
}  // namespace detail

}  // namespace peft
