// ModulesToSaveWrapper: trainable copies of whole modules (modules_to_save). (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
#include "adapters/tuner.h"
#include <algorithm>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string_view>
#include <unordered_set>
#include "adapters/defaults.h"
#include "nn/transformers/common.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "adapters/core/internal.h"

namespace peft {

using namespace core_detail;

// --------------------------------------------------------- ModulesToSave --

ModulesToSaveWrapper::ModulesToSaveWrapper(nn::ModulePtr original, const std::string& adapter_name)
    : nn::Module("ModulesToSaveWrapper") {
  register_child("original_module", original);
  register_child("modules_to_save", std::make_shared<nn::ModuleDict>());
  update(adapter_name);
  set_adapter({adapter_name});
}

nn::ModuleDict& ModulesToSaveWrapper::modules_to_save() const {
  return static_cast<nn::ModuleDict&>(child("modules_to_save"));
}

void ModulesToSaveWrapper::update(const std::string& adapter_name) {
  auto copy = original_module().clone();
  modules_to_save().insert(adapter_name, copy);
  original_module().requires_grad_(false);
  if (!active_adapter_) active_adapter_ = adapter_name;
}

void ModulesToSaveWrapper::set_adapter(const std::vector<std::string>& names, bool inference_mode) {
  std::vector<std::string> mine;
  for (const auto& n : names)
    if (modules_to_save().contains(n)) mine.push_back(n);
  if (mine.size() > 1)
    fail("Attempted to set multiple (", py_list(mine), ") adapters at once for modules_to_save, which is not allowed.");
  for (const auto& [k, m] : modules_to_save().children()) m->requires_grad_(false);
  original_module().requires_grad_(false);
  if (mine.empty()) {
    active_adapter_.reset();
    return;
  }
  modules_to_save()[mine[0]].requires_grad_(!inference_mode);
  active_adapter_ = mine[0];
}

void ModulesToSaveWrapper::enable_adapters(bool enabled) { disable_adapters_ = !enabled; }

void ModulesToSaveWrapper::delete_adapter(const std::string& name) {
  modules_to_save().erase(name);
  if (active_adapter_ && *active_adapter_ == name) {
    auto keys = modules_to_save().keys();
    active_adapter_.reset();
    if (!keys.empty()) set_adapter({keys[0]});
  }
}

Tensor ModulesToSaveWrapper::forward(const Tensor& x) {
  if (disable_adapters_ || !active_adapter_ || !modules_to_save().contains(*active_adapter_))
    return original_module().forward(x);
  return modules_to_save()[*active_adapter_].forward(x);
}

}  // namespace peft
