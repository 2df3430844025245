// inject_adapter_in_model and its variants: matching, default targets, all-linear, replacement. (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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

// -------------------------------------------------------------- injection --

namespace {

std::string layer_notes(const PeftConfig& cfg) {
  std::string s;
  if (cfg.layers_to_transform) {
    s += " Note: You specified 'layers_to_transform': " +
         (cfg.layers_to_transform_is_int ? std::to_string(cfg.layers_to_transform->front())
                                         : py_int_list(*cfg.layers_to_transform)) +
         ".";
  }
  if (cfg.layers_pattern) {
    s += " You also specified 'layers_pattern': " +
         (cfg.layers_pattern_is_str ? cfg.layers_pattern->front() : py_list(*cfg.layers_pattern)) + ".";
  }
  return s;
}

// Every parameter outside adapters and modules_to_save wrappers is frozen.
void freeze_non_adapter(nn::Module& m) {
  if (auto* t = dynamic_cast<TunerLayer*>(&m)) {
    freeze_non_adapter(t->base_layer());
    return;
  }
  if (dynamic_cast<ModulesToSaveWrapper*>(&m)) return;
  for (const auto& [n, p] : m.own_parameters()) {
    Tensor h = p;
    h.requires_grad_(false);
  }
  for (const auto& [n, c] : m.children()) freeze_non_adapter(*c);
}

void mark_bias_trainable(nn::Module& model, const PeftConfig& cfg) {
  std::string bias = cfg.bias_mode();
  if (bias == "none") return;
  if (bias == "all") {
    for (auto& [n, p] : model.named_parameters())
      if (n == "bias" || ends_with(n, ".bias")) p.requires_grad_(true);
  } else if (bias == "lora_only") {
    for (auto& [n, t] : tuner_layers(model)) {
      nn::Module& b = t->get_base_layer();
      if (b.has_param("bias") && b.param("bias").defined()) b.param("bias").requires_grad_(true);
    }
  } else {
    fail("Requested bias: ", bias, ", is not implemented.");
  }
}

}  // namespace

nn::Module& inject_adapter_in_model(const PeftConfig& config, nn::Module& model, const std::string& adapter_name,
                                    bool low_cpu_mem_usage) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  return detail::inject_adapter(config, model, adapter_name, low_cpu_mem_usage, {});
}

nn::Module& inject_from_state_dict(const PeftConfig& config, nn::Module& model, const StateDict& state_dict,
                                   const std::string& adapter_name, bool low_cpu_mem_usage) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  detail::InjectOptions opts;
  opts.state_dict = &state_dict;
  return detail::inject_adapter(config, model, adapter_name, low_cpu_mem_usage, opts);
}

nn::Module& detail::inject_adapter(const PeftConfig& config, nn::Module& model, const std::string& adapter_name,
                                   bool low_cpu_mem_usage, const InjectOptions& opts) {
  register_builtin_methods();
  const TunerMethod* method = find_method(config.peft_type);
  if (!method || !method->create_and_replace)
    fail("`inject_adapter_in_model` does not support ", config.peft_type, " yet. Please use `get_peft_model`.");
  PEFT_CHECK(!adapter_name.empty() && adapter_name.find('.') == std::string::npos,
             "adapter name must be non-empty and contain no '.', got '", adapter_name, "'");
  PeftConfigPtr cfg = config.clone();
  cfg->validate();

  PeftState* existing = peft_state(model);
  bool second = existing && !existing->configs.empty();
  if (second && opts.warn_existing)
    warn("Already found a `peft_config` attribute in the model. This will lead to having multiple adapters in the "
         "model. Make sure to know what you are doing!");
  // 0.21.0: flags of pre-existing parameters are restored after a second injection.
  std::vector<std::pair<Tensor, bool>> snapshot;
  if (second)
    for (auto& p : detail::all_parameters(model)) snapshot.emplace_back(p, p.requires_grad());

  {
    PeftState probe = existing ? *existing : PeftState{};
    bool replaced = false;
    for (auto& [n, c] : probe.configs)
      if (n == adapter_name) {
        c = cfg;
        replaced = true;
      }
    if (!replaced) probe.configs.emplace_back(adapter_name, cfg);
    if (method->prepare_config) method->prepare_config(*cfg, host_model_type(model));
    if (method->check_new_adapter_config) method->check_new_adapter_config(probe, *cfg);
  }

  auto named = detail::host_modules(model);  // taken before any replacement

  // "all-linear": every nn::Linear (Conv1D included) and Linear-like tuner layer, not below
  // tuner layers, minus a transformer's output embeddings (lm_head), as PEFT's
  // _maybe_include_all_linear_layers.
  if (cfg->target_modules.is_regex() && lower(cfg->target_modules.pattern) == "all-linear") {
    std::string output_embeddings;
    if (const auto* pm = dynamic_cast<const nn::PreTrainedModel*>(&model)) output_embeddings = pm->output_embeddings_name();
    std::vector<std::string> tuner_names;
    for (auto& [n, m] : named)
      if (dynamic_cast<TunerLayer*>(m.get())) tuner_names.push_back(n);
    std::vector<std::string> names;
    for (auto& [n, m] : named) {
      if (n.empty()) continue;
      bool below = false;
      for (const auto& t : tuner_names)
        if (starts_with(n, t + ".")) below = true;
      if (below) continue;
      bool is_linear = dynamic_cast<nn::Linear*>(m.get()) != nullptr ||
                       (dynamic_cast<TunerLayer*>(m.get()) && m->type_name().find("Linear") != std::string::npos);
      if (is_linear && n != output_embeddings && !contains(names, n)) names.push_back(n);
    }
    cfg->target_modules = TargetModules::list(names);
  }

  std::vector<std::string> skip_below;  // existing tuner layers and modules_to_save wrappers
  for (auto& [n, m] : named)
    if (!n.empty() && (dynamic_cast<TunerLayer*>(m.get()) || dynamic_cast<ModulesToSaveWrapper*>(m.get())))
      skip_below.push_back(n);

  // With a state dict, its keys name the targets: "<module>.<prefix>..." -> "<module>"
  // (rsplit on the last ".<prefix>"); "base_model.model." is dropped when the model has no
  // such names (PEFT expects keys without it).
  std::set<std::string> sd_targets;
  std::vector<std::string> matched_by_config;
  if (opts.state_dict) {
    bool model_prefixed = false;
    for (auto& [n, m] : named)
      if (starts_with(n, "base_model.model")) model_prefixed = true;
    const std::string sep = "." + method->prefix;
    for (const auto& [k, v] : *opts.state_dict) {
      std::string key = k;
      if (!model_prefixed && starts_with(key, "base_model.model.")) key = key.substr(17);
      size_t p = key.rfind(sep);
      sd_targets.insert(p == std::string::npos ? key : key.substr(0, p));
    }
  }

  StateDict shared;  // tensors every layer of this adapter shares (VeRA-style methods)
  if (method->before_inject) method->before_inject(model, adapter_name, *cfg, shared);

  std::vector<std::string> targeted, excluded, unmatched;
  for (auto& [key, module] : named) {
    if (key.empty()) continue;
    bool below = false;
    for (const auto& s : skip_below)
      if (starts_with(key, s + ".")) {
        below = true;
        break;
      }
    if (below) continue;
    TargetMatch r;
    if (opts.state_dict) {
      r = sd_targets.count(key) ? TargetMatch::matched : TargetMatch::unmatched;
      if (check_target_module_exists(*cfg, key) == TargetMatch::matched) matched_by_config.push_back(key);
    } else {
      r = check_target_module_exists(*cfg, key);
    }
    if (r == TargetMatch::excluded) {
      excluded.push_back(key);
    } else if (r == TargetMatch::unmatched) {
      unmatched.push_back(key);
    } else {
      targeted.push_back(key);
      nn::ModulePtr target = model.get_submodule(key);
      nn::ModulePtr replacement = method->create_and_replace(*cfg, adapter_name, target, key, low_cpu_mem_usage, shared);
      if (replacement) model.replace_module(key, replacement);
    }
  }

  if (opts.state_dict) {
    std::vector<std::string> only_config, only_sd;
    for (const auto& k : matched_by_config)
      if (!contains(targeted, k)) only_config.push_back(k);
    for (const auto& k : targeted)
      if (!contains(matched_by_config, k)) only_sd.push_back(k);
    std::sort(only_config.begin(), only_config.end());
    std::sort(only_sd.begin(), only_sd.end());
    std::string msg;
    if (!only_config.empty() || !only_sd.empty())
      msg = "While injecting the PEFT adapters, an inconsistency was discovered between the PEFT config and the "
            "provided state_dict. This is not necessarily an issue and can be ignored if this was the intent. ";
    if (!only_config.empty())
      msg += "The PEFT config contained these additional target modules: " + py_list(only_config) + ". ";
    if (!only_sd.empty()) msg += "The state_dict contained these additional target modules: " + py_list(only_sd) + ". ";
    if (!msg.empty()) warn(msg);
  }

  if (targeted.empty()) {
    if (!excluded.empty() && unmatched.empty())
      fail("All modules were excluded. This is likely unintended. Check your `target_modules`, `exclude_modules` "
           "and `modules_to_save` configuration.");
    if (excluded.empty() && !cfg->target_modules.truthy())
      fail("No `target_modules` passed but also no `target_parameters` found. Please check the values for these "
           "arguments.");
    if (excluded.empty())
      fail("Target modules ", cfg->target_modules.py_str(),
           " not found in the base model. Please check the target modules and try again.", layer_notes(*cfg));
    fail("No modules were targeted for adaptation. This might be caused by a combination of mismatched target "
         "modules and excluded modules. Please check your `target_modules` and `exclude_modules` configuration. You "
         "may also have only targeted modules that are marked to be saved (`modules_to_save`).",
         layer_notes(*cfg));
  }
  if (cfg->exclude_modules.truthy() && excluded.empty())
    warn("You have passed exclude_modules=" + cfg->exclude_modules.py_str() +
         " but no modules were excluded. Please check that exclude_modules was set correctly.");

  // model.peft_config[adapter_name] = config
  PeftState& state = peft_state_or_create(model);
  {
    bool replaced = false;
    for (auto& [n, c] : state.configs)
      if (n == adapter_name) {
        c = cfg;
        replaced = true;
      }
    if (!replaced) state.configs.emplace_back(adapter_name, cfg);
  }
  if (!shared.empty()) state.shared_tensors[adapter_name] = std::move(shared);
  else state.shared_tensors.erase(adapter_name);
  const std::vector<std::string> previous_active = state.active_adapters;
  state.active_adapters = {adapter_name};

  // modules_to_save: plain endswith (no dot boundary) over the names before wrapping.
  if (cfg->modules_to_save && !cfg->modules_to_save->empty()) {
    auto names_now = detail::host_modules(model);
    std::vector<std::string> wrapped;
    for (auto& [key, m] : names_now) {
      if (key.empty()) continue;
      bool hit = false;
      for (const auto& t : *cfg->modules_to_save)
        if (ends_with(key, t)) hit = true;
      if (!hit) continue;
      bool below = false;
      for (const auto& w : wrapped)
        if (starts_with(key, w + ".")) below = true;
      if (below) continue;
      nn::ModulePtr target = model.get_submodule(key);
      if (auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(target)) {
        w->update(adapter_name);
        w->set_adapter({adapter_name}, cfg->inference_mode);
      } else {
        auto w2 = std::make_shared<ModulesToSaveWrapper>(target, adapter_name);
        w2->set_adapter({adapter_name}, cfg->inference_mode);
        model.replace_module(key, w2);
      }
      wrapped.push_back(key);
    }
  }

  // Freezing (PEFT's tuners/tuners_utils.py).
  freeze_non_adapter(model);
  for (auto& [n, t] : tuner_layers(model)) t->set_adapter({adapter_name}, cfg->inference_mode);
  mark_bias_trainable(model, *cfg);
  for (auto& [n, w] : modules_to_save_wrappers(model))
    if (w->modules_to_save().contains(adapter_name)) w->set_adapter({adapter_name}, cfg->inference_mode);
  for (auto& [t, flag] : snapshot) t.requires_grad_(flag);
  if (!opts.activate) {
    // LoraModel.inject_adapter: the active adapters stay; the new one is frozen.
    set_adapter(model, previous_active, cfg->inference_mode);
    for (auto& [n, p] : model.named_parameters())
      if (key_has_adapter(n, adapter_name)) p.requires_grad_(false);
  }
  return model;
}

}  // namespace peft
