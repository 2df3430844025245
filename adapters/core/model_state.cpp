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
#include "adapters/core/detail.h"

namespace peft {

using namespace core_detail;

// ------------------------------------------------------------ model state --

namespace {
// The Module attachment slot that holds a model's PeftState: the state lives and dies with
// the model object, so no table keyed by address can hand a dead model's adapters to a new
// model at the same address.
const char* const kStateSlot = "peft.state";
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

PeftState* peft_state(const nn::Module& model) {
  return static_cast<PeftState*>(model.attachment(kStateSlot).get());
}

PeftState& peft_state_or_create(nn::Module& model) {
  return *static_cast<PeftState*>(
      model.attachment_or_insert(kStateSlot, [] { return std::make_shared<PeftState>(); }).get());
}

void forget_peft_state(const nn::Module& model) {
  const_cast<nn::Module&>(model).set_attachment(kStateSlot, nullptr);
}

PeftConfigPtr peft_config(const nn::Module& model, const std::string& adapter) {
  PeftState* s = peft_state(model);
  PeftConfigPtr c = s ? s->find(adapter) : nullptr;
  if (!c) {
    std::string have = s ? py_list(s->adapter_names()) : "[]";
    fail_key("no adapter named '", adapter, "' was injected into this model (adapters: ", have, ")");
  }
  return c;
}

namespace {
void collect_host_modules(const std::string& prefix, const nn::ModulePtr& m, std::unordered_set<const nn::Module*>& seen,
                          std::vector<std::pair<std::string, nn::ModulePtr>>& out) {
  if (!seen.insert(m.get()).second) return;
  out.emplace_back(prefix, m);
  const std::string pre = prefix.empty() ? "" : prefix + ".";
  if (auto* t = dynamic_cast<TunerLayer*>(m.get())) {
    collect_host_modules(pre + "base_layer", t->base_layer_ptr(), seen, out);
    return;
  }
  for (const auto& [name, c] : m->children()) collect_host_modules(pre + name, c, seen, out);
}

void collect_parameters(const nn::Module& m, std::vector<Tensor>& out) {
  for (const auto& [n, t] : m.own_parameters())
    if (t.defined()) out.push_back(t);
  for (const auto& [n, c] : m.children()) collect_parameters(*c, out);
}
}  // namespace

std::vector<std::pair<std::string, nn::ModulePtr>> detail::host_modules(const nn::Module& model) {
  std::vector<std::pair<std::string, nn::ModulePtr>> out;
  std::unordered_set<const nn::Module*> seen;
  // The root may live outside a shared_ptr (stack object): then its entry holds a null pointer.
  auto self = std::const_pointer_cast<nn::Module>(model.weak_from_this().lock());
  seen.insert(&model);
  out.emplace_back("", self);
  if (auto* t = dynamic_cast<const TunerLayer*>(&model)) {
    collect_host_modules("base_layer", t->base_layer_ptr(), seen, out);
    return out;
  }
  for (const auto& [name, c] : model.children()) collect_host_modules(name, c, seen, out);
  return out;
}

std::vector<Tensor> detail::all_parameters(const nn::Module& model) {
  std::vector<Tensor> out;
  collect_parameters(model, out);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<TunerLayer>>> tuner_layers(const nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<TunerLayer>>> out;
  for (auto& [name, m] : detail::host_modules(model))
    if (auto t = std::dynamic_pointer_cast<TunerLayer>(m)) out.emplace_back(name, t);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<ModulesToSaveWrapper>>> modules_to_save_wrappers(
    const nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<ModulesToSaveWrapper>>> out;
  for (auto& [name, m] : detail::host_modules(model))
    if (auto t = std::dynamic_pointer_cast<ModulesToSaveWrapper>(m)) out.emplace_back(name, t);
  return out;
}

}  // namespace peft
