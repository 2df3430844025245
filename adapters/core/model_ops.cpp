// Model-level helpers over every tuner layer (set_adapter, merge, delete, mixed batches...). (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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

// ------------------------------------------------------- model-level helpers --

void set_adapter(nn::Module& model, const std::vector<std::string>& adapter_names, bool inference_mode) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  for (auto& [n, t] : tuner_layers(model)) t->set_adapter(adapter_names, inference_mode);
  for (auto& [n, w] : modules_to_save_wrappers(model)) w->set_adapter(adapter_names, inference_mode);
  if (PeftState* s = peft_state(model)) s->active_adapters = adapter_names;
}

void set_adapter(nn::Module& model, const std::string& adapter_name, bool inference_mode) {
  set_adapter(model, std::vector<std::string>{adapter_name}, inference_mode);
}

void enable_adapters(nn::Module& model, bool enabled) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  for (auto& [n, t] : tuner_layers(model)) {
    if (!enabled) {
      if (PeftState* s = peft_state(model))
        for (const auto& a : t->active_adapters())
          if (auto c = s->find(a); c && c->bias_mode() != "none")
            warn("Careful, disabling adapter layers with bias configured to be '" + c->bias_mode() +
                 "' does not produce the same output as the base model would without adaption.");
    }
    t->enable_adapters(enabled);
  }
  for (auto& [n, w] : modules_to_save_wrappers(model)) w->enable_adapters(enabled);
}

void merge_adapters(nn::Module& model, bool safe_merge, const std::vector<std::string>& adapter_names) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  auto layers = tuner_layers(model);
  for (auto& [n, t] : layers) t->check_mergeable(n);  // all or nothing: refuse before the first merge
  for (auto& [n, t] : layers) t->merge(safe_merge, adapter_names);
}

void unmerge_adapters(nn::Module& model) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  for (auto& [n, t] : tuner_layers(model))
    if (t->merged()) t->unmerge();
}

void delete_adapter(nn::Module& model, const std::string& adapter_name) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  PeftState* s = peft_state(model);
  if (!s || !s->find(adapter_name)) fail_key("Adapter ", adapter_name, " does not exist");
  for (auto& [n, t] : tuner_layers(model))
    if (std::find(t->merged_adapters().begin(), t->merged_adapters().end(), adapter_name) != t->merged_adapters().end())
      fail("Cannot delete adapter(s) ['", adapter_name, "'] while they are merged. Please unmerge them first.");
  std::optional<std::vector<std::string>> new_active;
  for (auto& [n, t] : tuner_layers(model)) {
    t->delete_adapter(adapter_name);
    if (!new_active) new_active = t->active_adapters();
  }
  for (auto& [n, w] : modules_to_save_wrappers(model)) w->delete_adapter(adapter_name);
  auto& cs = s->configs;
  cs.erase(std::remove_if(cs.begin(), cs.end(), [&](const auto& p) { return p.first == adapter_name; }), cs.end());
  s->shared_tensors.erase(adapter_name);
  s->active_adapters = new_active.value_or(std::vector<std::string>{});
}

std::vector<std::string> trainable_parameter_names(const nn::Module& model) {
  std::vector<std::string> out;
  for (const auto& [n, p] : model.named_parameters())
    if (p.requires_grad()) out.push_back(n);
  return out;
}

}  // namespace peft
