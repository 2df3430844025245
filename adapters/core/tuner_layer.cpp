// TunerLayer: the base of every adapter layer (BaseTunerLayer). (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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

// -------------------------------------------------------------- TunerLayer --

TunerLayer::TunerLayer(std::string type_name, nn::ModulePtr base) : nn::Module(std::move(type_name)) {
  PEFT_CHECK(base != nullptr, "[", this->type_name(), "] base_layer must not be null");
  register_child("base_layer", std::move(base));
}

nn::Module& TunerLayer::get_base_layer() const {
  nn::Module* m = &base_layer();
  while (auto* t = dynamic_cast<TunerLayer*>(m)) m = &t->base_layer();
  return *m;
}

std::vector<std::string> TunerLayer::adapter_names() const {
  std::set<std::string> names;
  auto collect = [&](const std::string& ln) {
    if (!has_child(ln)) return;
    nn::Module& d = child(ln);
    for (const auto& [k, m] : d.children()) names.insert(k);
    for (const auto& [k, t] : d.own_parameters()) names.insert(k);
  };
  for (const auto& ln : adapter_layer_names()) collect(ln);
  for (const auto& ln : other_layer_names()) collect(ln);
  return {names.begin(), names.end()};
}

bool TunerLayer::has_adapter(const std::string& name) const { return contains(adapter_names(), name); }

void TunerLayer::set_adapter(const std::vector<std::string>& names, bool inference_mode) {
  for (const auto& ln : adapter_layer_names()) {
    if (!has_child(ln)) continue;
    nn::Module& d = child(ln);
    for (const auto& [k, m] : d.children()) m->requires_grad_(contains(names, k) && !inference_mode);
    for (const auto& [k, t] : d.own_parameters()) {
      Tensor h = t;
      h.requires_grad_(contains(names, k) && !inference_mode);
    }
  }
  active_adapters_ = names;
}

void TunerLayer::enable_adapters(bool enabled) {
  if (enabled) {
    set_adapter(active_adapters_);
    disable_adapters_ = false;
  } else {
    for (const auto& ln : adapter_layer_names())
      if (has_child(ln)) child(ln).requires_grad_(false);
    disable_adapters_ = true;
  }
}

void TunerLayer::delete_adapter(const std::string& name) {
  if (contains(merged_adapters_, name))
    fail("[", type_name(), "] cannot delete adapter '", name,
         "' while it is merged into the base weights; call unmerge() first");
  for (const auto& list : {adapter_layer_names(), other_layer_names()})
    for (const auto& ln : list) {
      if (!has_child(ln)) continue;
      nn::Module& d = child(ln);
      if (!d.remove_child(name)) d.remove_parameter(name);
    }
  erase_adapter_state(name);
  if (!contains(active_adapters_, name)) return;
  std::vector<std::string> rest;
  for (const auto& a : active_adapters_)
    if (a != name) rest.push_back(a);
  if (!rest.empty()) {
    set_adapter(rest);
    return;
  }
  std::vector<std::string> remaining = adapter_names();
  if (remaining.empty()) {
    set_adapter({});
  } else {
    warn("Adapter " + name + " was active which is now deleted. Setting active adapter to " + remaining[0] + ".");
    set_adapter({remaining[0]});
  }
}

std::vector<std::pair<std::string, Tensor>> TunerLayer::adapter_tensors(const std::string& adapter) const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& ln : adapter_layer_names()) {
    if (!has_child(ln)) continue;
    nn::Module& d = child(ln);
    if (d.has_child(adapter)) {
      nn::Module& e = d.child(adapter);
      for (auto& [n, t] : e.named_parameters()) out.emplace_back(ln + "." + adapter + "." + n, t);
      for (auto& [n, t] : e.named_buffers()) out.emplace_back(ln + "." + adapter + "." + n, t);
    }
    if (d.has_param(adapter)) out.emplace_back(ln + "." + adapter, d.param(adapter));
  }
  return out;
}

void TunerLayer::move_adapter_to_base_device(const std::string& adapter) {
  nn::Module& base = get_base_layer();
  Tensor ref;
  for (const auto& [n, t] : base.named_parameters()) {
    ref = t;
    if (n == "weight") break;
  }
  if (!ref.defined() || ref.is_meta()) return;
  for (auto& [n, t] : adapter_tensors(adapter)) {
    if (t.is_meta()) continue;
    Tensor moved = t.detach();
    if (moved.device() != ref.device()) moved = moved.to(ref.device());
    if (is_floating(moved.dtype()) && is_floating(ref.dtype()) && moved.dtype() != ref.dtype())
      moved = moved.to(ref.dtype());
    if (moved.impl_ptr() != t.impl_ptr() && !moved.same_storage(t)) {
      Tensor h = t;
      h.set_data(moved.contiguous());  // every handle follows; requires_grad kept
      h.impl().grad.reset();
      h.impl().grad_fn.reset();
    }
  }
}

void TunerLayer::check_adapter_materialized(const std::string& adapter) const {
  for (const auto& [n, t] : adapter_tensors(adapter))
    if (t.is_meta())
      fail("[", type_name(), "] adapter '", adapter, "' has tensors on the meta device (", n,
           "): it was injected with low_cpu_mem_usage=true and its weights were not loaded; call "
           "set_peft_model_state_dict(model, state_dict, \"",
           adapter, "\", /*low_cpu_mem_usage=*/true) first");
}

std::vector<std::string> TunerLayer::adapters_to_merge(std::vector<std::string> names) const {
  if (names.empty()) names = active_adapters_;
  if (merged()) {
    std::vector<std::string> rest;
    for (const auto& n : names)
      if (!contains(merged_adapters_, n)) rest.push_back(n);
    std::string joined_merged, joined_rest;
    for (size_t i = 0; i < merged_adapters_.size(); ++i) joined_merged += (i ? "," : "") + merged_adapters_[i];
    for (size_t i = 0; i < rest.size(); ++i) joined_rest += (i ? "," : "") + rest[i];
    if (!rest.empty())
      warn("Already following adapters were merged " + joined_merged + ". You are now additionally merging " +
           joined_rest + ".");
    else
      warn("All adapters are already merged, nothing to do.");
    names = rest;
  }
  return names;
}

void TunerLayer::check_mergeable(const std::string& module_name) const {
  for (const auto& [n, p] : base_layer().named_parameters())
    if (p.defined() && is_quantized(p.dtype()))
      fail("cannot merge into ", module_name.empty() ? std::string("the base layer") : "'" + module_name + "'", ": its ",
           n, " is ", p.desc(), ", GGML block-quantized storage (a GGUF model) that is read-only; load the model "
           "dequantized (dtype float32, `--dtype f32` on the command line) to merge, or keep the adapter separate");
}

void TunerLayer::merge(bool safe_merge, std::vector<std::string> names) {
  check_mergeable();
  names = adapters_to_merge(std::move(names));
  if (names.empty()) return;
  NoGradGuard ng;
  for (const auto& a : names) {
    if (!has_adapter(a)) continue;
    std::vector<MergedTensor> updates = merged_tensors(a);
    if (safe_merge)
      for (const auto& u : updates)
        if (!all_finite(u.value)) fail("NaNs detected in the merged weights. The adapter ", a, " seems to be broken");
    for (auto& u : updates) u.target.copy_(u.value);
    merged_adapters_.push_back(a);
  }
}

void TunerLayer::unmerge() {
  if (!merged()) {
    warn("Already unmerged. Nothing to do.");
    return;
  }
  if (std::string w = unmerge_warning(); !w.empty()) warn(w);
  NoGradGuard ng;
  while (!merged_adapters_.empty()) {
    std::string a = merged_adapters_.back();
    merged_adapters_.pop_back();
    if (has_adapter(a)) unmerge_adapter(a);
  }
}

}  // namespace peft
