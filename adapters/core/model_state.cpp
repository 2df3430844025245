// The per-model adapter bookkeeping (PEFT's model.peft_config and active adapters). (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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

// ------------------------------------------------------------ model state --

namespace {
struct StateEntry {
  std::weak_ptr<const nn::Module> owner;
  bool had_owner = false;
  PeftState state;
};
std::map<const nn::Module*, StateEntry>& states() {
  static std::map<const nn::Module*, StateEntry> s;
  return s;
}
}  // namespace

PeftConfigPtr PeftState::find(const std::string& adapter) const {
  for (const auto& [n, c] : configs)
    if (n == adapter) return c;
  return nullptr;
}

std::vector<std::string> PeftState::adapter_names() const {
  std::vector<std::string> v;
  for (const auto& [n, c] : configs) v.push_back(n);
  return v;
}

std::mutex& states_mutex() {
  static std::mutex m;
  return m;
}

PeftState* peft_state(const nn::Module& model) {
  std::lock_guard<std::mutex> lock(states_mutex());
  auto& s = states();
  auto it = s.find(&model);
  if (it == s.end()) return nullptr;
  bool stale;
  if (it->second.had_owner) {
    auto locked = it->second.owner.lock();
    stale = !locked || locked.get() != &model;  // a dead model's address reused
  } else {
    // Not owned by a shared_ptr: a model at a reused address has no tuner layers.
    stale = tuner_layers(model).empty() && modules_to_save_wrappers(model).empty();
  }
  if (stale) {
    s.erase(it);
    return nullptr;
  }
  return &it->second.state;
}

PeftState& peft_state_or_create(nn::Module& model) {
  if (PeftState* p = peft_state(model)) return *p;
  std::lock_guard<std::mutex> lock(states_mutex());
  auto& s = states();
  for (auto it = s.begin(); it != s.end();)  // drop entries of models that are gone
    it = (it->second.had_owner && it->second.owner.expired()) ? s.erase(it) : std::next(it);
  StateEntry e;
  e.owner = model.weak_from_this();
  e.had_owner = !e.owner.expired();
  auto& slot = s[&model];
  slot = std::move(e);
  return slot.state;
}

void forget_peft_state(const nn::Module& model) {
  std::lock_guard<std::mutex> lock(states_mutex());
  states().erase(&model);
}

PeftConfigPtr peft_config(const nn::Module& model, const std::string& adapter) {
  PeftState* s = peft_state(model);
  PeftConfigPtr c = s ? s->find(adapter) : nullptr;
  if (!c) {
    std::string have = s ? py_list(s->adapter_names()) : "[]";
    fail("no adapter named '", adapter, "' was injected into this model (adapters: ", have, ")");
  }
  return c;
}

std::vector<std::pair<std::string, std::shared_ptr<TunerLayer>>> tuner_layers(const nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<TunerLayer>>> out;
  for (auto& [name, m] : model.named_modules())
    if (auto t = std::dynamic_pointer_cast<TunerLayer>(m)) out.emplace_back(name, t);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<ModulesToSaveWrapper>>> modules_to_save_wrappers(
    const nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<ModulesToSaveWrapper>>> out;
  for (auto& [name, m] : model.named_modules())
    if (auto t = std::dynamic_pointer_cast<ModulesToSaveWrapper>(m)) out.emplace_back(name, t);
  return out;
}

}  // namespace peft
