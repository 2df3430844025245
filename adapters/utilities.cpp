#include "adapters/utilities.h"

#include <cstdio>
#include <map>

#include "adapters/lora/config.h"
#include "adapters/lora/layer.h"
#include "adapters/model_lock.h"

namespace peft {

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// The innermost non-tuner module below `t`, as the shared_ptr that owns it.
nn::ModulePtr innermost_base(const TunerLayer& t) {
  nn::ModulePtr m = t.base_layer_ptr();
  while (auto inner = std::dynamic_pointer_cast<TunerLayer>(m)) m = inner->base_layer_ptr();
  return m;
}

// PEFT's _check_merge_allowed for the adapters the model holds.
void check_merge_allowed(const nn::Module& model) {
  if (PeftState* s = peft_state(model))
    for (const auto& [name, cfg] : s->configs)
      if (auto lc = std::dynamic_pointer_cast<LoraConfig>(cfg); lc && !lc->layer_replication.is_null())
        fail("Cannot merge LORA layers when base model layers are replicated");
}

nn::Module& unload_and_optionally_merge(nn::Module& model, bool merge, const MergeAndUnloadOptions& opts) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  if (merge) check_merge_allowed(model);
  auto layers = tuner_layers(model);
  if (merge)
    for (auto& [name, t] : layers) t->check_mergeable(name);
  if (merge) {
    // Merge everything first, so a refused safe merge leaves the model whole.
    std::vector<std::shared_ptr<TunerLayer>> merged_now;
    try {
      size_t i = 0;
      for (auto& [name, t] : layers) {
        bool was_merged = t->merged();
        t->merge(opts.safe_merge, opts.adapter_names);
        if (!was_merged && t->merged()) merged_now.push_back(t);
        if (opts.progressbar)
          std::fprintf(stderr, "\rUnloading and merging model: %zu/%zu %s\033[K", ++i, layers.size(), name.c_str());
      }
      if (opts.progressbar) std::fprintf(stderr, "\n");
    } catch (...) {
      if (opts.progressbar) std::fprintf(stderr, "\n");
      for (auto& t : merged_now) t->unmerge();
      throw;
    }
  }
  // Replace top-down; a tuner layer's own children are never visited (they go with it).
  std::vector<std::string> replaced;
  auto under_replaced = [&](const std::string& key) {
    for (const auto& r : replaced)
      if (starts_with(key, r + ".")) return true;
    return false;
  };
  for (auto& [key, m] : model.named_modules()) {
    if (key.empty() || under_replaced(key)) continue;
    if (auto t = std::dynamic_pointer_cast<TunerLayer>(m)) {
      model.replace_module(key, innermost_base(*t));
      replaced.push_back(key);
    } else if (auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(m)) {
      const auto& active = w->active_adapter();
      nn::ModulePtr keep = active && w->modules_to_save().contains(*active) ? w->modules_to_save().child_ptr(*active)
                                                                               : w->child_ptr("original_module");
      model.replace_module(key, keep);
      replaced.push_back(key);
    }
  }
  forget_peft_state(model);
  return model;
}

std::vector<std::shared_ptr<lora::LoraLayer>> lora_layers(const nn::Module& model) {
  std::vector<std::shared_ptr<lora::LoraLayer>> out;
  for (auto& [n, t] : tuner_layers(model))
    if (auto l = std::dynamic_pointer_cast<lora::LoraLayer>(t)) out.push_back(l);
  return out;
}

}  // namespace

nn::Module& merge_and_unload(nn::Module& model, const MergeAndUnloadOptions& opts) {
  return unload_and_optionally_merge(model, true, opts);
}

nn::Module& unload(nn::Module& model) { return unload_and_optionally_merge(model, false, {}); }

void set_scale(nn::Module& model, const std::string& adapter, double scale) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  bool found = false;
  for (auto& l : lora_layers(model))
    if (l->scaling.count(adapter)) {
      l->set_scale(adapter, scale);
      found = true;
    }
  if (!found) fail("set_scale: no LoRA layer of the model holds adapter '", adapter, "'");
}

DisableAdapterGuard::DisableAdapterGuard(nn::Module& model) : model_(model) {
  auto layers = tuner_layers(model);
  size_t disabled = 0;
  for (auto& [n, t] : layers) disabled += t->adapters_disabled();
  if (disabled != 0 && disabled != layers.size())
    warn("The model contains some adapter layers that are enabled and others that are disabled. This is most likely "
         "unintentional. After exiting the disable_adapter context, all adapters will be enabled");
  // enabled is True or "irregular" -> enable on exit; all disabled -> stay disabled.
  restore_ = layers.empty() || disabled != layers.size();
  enable_adapters(model, false);
}

DisableAdapterGuard::~DisableAdapterGuard() {
  if (!restore_) return;
  try {
    enable_adapters(model_, true);
  } catch (const std::exception& e) {
    warn(std::string("DisableAdapterGuard: could not enable the adapters again: ") + e.what());
  }
}

struct RescaleAdapterScale::Saved {
  std::shared_ptr<lora::LoraLayer> layer;
  std::map<std::string, double> scaling;
};

RescaleAdapterScale::RescaleAdapterScale(nn::Module& model, double multiplier) {
  for (auto& l : lora_layers(model)) {
    saved_.push_back(std::make_shared<Saved>(Saved{l, l->scaling}));
    for (auto& [k, v] : l->scaling) v *= multiplier;
  }
  if (saved_.empty()) fail("scaling is only supported for models with `LoraLayer`s");
}

RescaleAdapterScale::~RescaleAdapterScale() {
  for (auto& s : saved_) s->layer->scaling = s->scaling;
}

}  // namespace peft
