// get_peft_model_state_dict / set_peft_model_state_dict: PEFT's checkpoint key mapping. (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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

// ------------------------------------------------------------ state dicts --

namespace {

// Removes the adapter name as PEFT does when saving.
std::string strip_adapter_name(const std::string& key, const std::string& adapter) {
  std::string suffix = "." + adapter;
  if (ends_with(key, suffix)) return key.substr(0, key.size() - suffix.size());
  // ".<adapter>" as the second-to-last component
  size_t last = key.rfind('.');
  if (last == std::string::npos) return key;
  std::string head = key.substr(0, last);
  if (ends_with(head, suffix)) return head.substr(0, head.size() - suffix.size()) + key.substr(last);
  return key;
}

// The structural adapter prefixes "<layer>.<dict>" of every tuner layer of `prefix`'s method.
std::vector<std::string> adapter_prefixes(const nn::Module& model, const std::string& method_prefix) {
  std::vector<std::string> out;
  for (auto& [name, t] : tuner_layers(model)) {
    if (t->prefix() != method_prefix) continue;
    std::string base = name.empty() ? "" : name + ".";
    for (const auto& [c, m] : t->children())
      if (c != "base_layer") out.push_back(base + c);
    for (const auto& [p, v] : t->own_parameters()) out.push_back(base + p);
    for (const auto& [b, v] : t->own_buffers()) out.push_back(base + b);
  }
  return out;
}

// The adapter prefixes as a hash set: "is this key equal to or under ('p.') one of
// them" costs one lookup per dotted prefix of the key, not a scan of every prefix
// (1,344 prefixes x 900 keys for a Llama-7B-shaped model made loading its adapter
// ~20 ms of string allocation).
class PrefixSet {
 public:
  explicit PrefixSet(const std::vector<std::string>& prefixes) : set_(prefixes.begin(), prefixes.end()) {}
  bool covers(std::string_view key) const {
    if (set_.find(key) != set_.end()) return true;
    for (size_t dot = key.find('.'); dot != std::string_view::npos; dot = key.find('.', dot + 1))
      if (set_.find(key.substr(0, dot)) != set_.end()) return true;
    return false;
  }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_set<std::string, Hash, std::equal_to<>> set_;
};

const char* kPeftPrefix = "base_model.model.";

// The load itself, after the method's before_load: checkpoint names -> the model's, then one
// validated nn::Module::load_state_dict (which writes nothing unless every tensor fits).
nn::LoadResult load_renamed(nn::Module& model, const StateDict& state_dict, const std::string& adapter_name,
                            bool low_cpu_mem_usage, const TunerMethod& method);

}  // namespace

StateDict get_peft_model_state_dict(const nn::Module& model, const std::string& adapter_name) {
  ModelReadGuard lock(model);  // see adapters/model_lock.h
  PeftConfigPtr cfg = peft_config(model, adapter_name);
  const TunerMethod& method = method_for(cfg->peft_type);
  PeftState* state = peft_state(model);
  StateDict full = model.state_dict();

  // Drop every other adapter's keys (raw substring rule).
  std::vector<StateDict::Item> items;
  for (const auto& [k, v] : full) {
    bool other = false;
    for (const auto& a : state->adapter_names())
      if (a != adapter_name && key_has_adapter(k, a)) other = true;
    if (!other) items.emplace_back(k, v);
  }
  if (items.empty()) items = full.items();

  const PrefixSet prefixes(adapter_prefixes(model, method.prefix));
  std::vector<StateDict::Item> picked;
  std::set<std::string> seen;
  for (const auto& [k, v] : items)
    if (prefixes.covers(k)) {
      picked.emplace_back(k, v);
      seen.insert(k);
    }
  std::string bias = cfg->bias_mode();
  if (bias == "all") {
    for (const auto& [k, v] : items)
      if ((k == "bias" || ends_with(k, ".bias")) && !seen.count(k)) {
        picked.emplace_back(k, v);
        seen.insert(k);
      }
  } else if (bias == "lora_only") {
    std::set<std::string> want;
    for (auto& [name, t] : tuner_layers(model)) want.insert((name.empty() ? "" : name + ".") + "base_layer.bias");
    for (const auto& [k, v] : items)
      if (want.count(k) && !seen.count(k)) {
        picked.emplace_back(k, v);
        seen.insert(k);
      }
  }
  // modules_to_save: "<m>.modules_to_save.<adapter>.<k>" -> "<m>.<k>"
  for (auto& [name, w] : modules_to_save_wrappers(model)) {
    std::string pre = (name.empty() ? "" : name + ".") + "modules_to_save." + adapter_name + ".";
    for (const auto& [k, v] : full)
      if (starts_with(k, pre)) picked.emplace_back((name.empty() ? "" : name + ".") + k.substr(pre.size()), v);
  }

  StateDict out;
  for (const auto& [k, v] : picked) {
    std::string key = method.to_checkpoint_key ? method.to_checkpoint_key(k, adapter_name) : k;
    out.set(strip_adapter_name(key, adapter_name), v);
  }
  if (method.finish_state_dict) method.finish_state_dict(model, adapter_name, *cfg, out);
  return out;
}

namespace {

// Both load paths: under the model's write lock, the method's before_load, then `load`; when
// `load` fails, before_load is undone, so a load is all-or-nothing.
nn::LoadResult load_all_or_nothing(nn::Module& model, const std::string& adapter_name,
                                   const std::function<nn::LoadResult(const TunerMethod&)>& load) {
  ModelWriteGuard lock(model);  // see adapters/model_lock.h
  PeftConfigPtr cfg = peft_config(model, adapter_name);
  const TunerMethod& method = method_for(cfg->peft_type);
  std::function<void()> undo_before_load;
  if (method.before_load) undo_before_load = method.before_load(model, adapter_name, *cfg);
  try {
    return load(method);
  } catch (...) {
    if (undo_before_load) undo_before_load();  // the model is as it was
    throw;
  }
}

}  // namespace

nn::LoadResult set_peft_model_state_dict(nn::Module& model, const StateDict& state_dict,
                                         const std::string& adapter_name, bool low_cpu_mem_usage) {
  return load_all_or_nothing(model, adapter_name, [&](const TunerMethod& method) {
    return load_renamed(model, state_dict, adapter_name, low_cpu_mem_usage, method);
  });
}

namespace {

// Checkpoint names -> the model's: "base_model.model." dropped when the model has no such
// names, modules_to_save keys moved under the wrapper's copy for `adapter`, and the adapter
// name put back into each checkpoint name of `own_keys` (the model's keys of this adapter).
StateDict to_model_names(const nn::Module& model, const StateDict& state_dict, const std::string& adapter_name,
                         const TunerMethod& method, bool model_prefixed, const std::vector<std::string>& own_keys) {
  std::vector<StateDict::Item> in;
  for (const auto& [k, v] : state_dict) {
    std::string key = k;
    if (!model_prefixed && starts_with(key, kPeftPrefix)) key = key.substr(std::string(kPeftPrefix).size());
    in.emplace_back(key, v);
  }
  // modules_to_save: "<m>.<k>" -> "<m>.modules_to_save.<adapter>.<k>"
  for (auto& [name, w] : modules_to_save_wrappers(model)) {
    std::string pre = name.empty() ? "" : name + ".";
    for (auto& [k, v] : in) {
      if (!starts_with(k, pre)) continue;
      std::string rest = k.substr(pre.size());
      if (starts_with(rest, "modules_to_save.") || starts_with(rest, "original_module.")) continue;
      if (w->modules_to_save().contains(adapter_name)) k = pre + "modules_to_save." + adapter_name + "." + rest;
    }
  }
  std::map<std::string, std::string> ckpt_to_model;
  for (const auto& k : own_keys) {
    std::string ck = method.to_checkpoint_key ? method.to_checkpoint_key(k, adapter_name) : k;
    ckpt_to_model[strip_adapter_name(ck, adapter_name)] = k;
  }
  StateDict renamed;
  for (auto& [k, v] : in) {
    auto it = ckpt_to_model.find(k);
    renamed.set(it == ckpt_to_model.end() ? k : it->second, v);
  }
  return renamed;
}

}  // namespace

namespace {

nn::LoadResult load_renamed(nn::Module& model, const StateDict& state_dict, const std::string& adapter_name,
                            bool low_cpu_mem_usage, const TunerMethod& method) {
  StateDict full = model.state_dict();
  bool model_prefixed = false;
  for (const auto& [k, v] : full)
    if (starts_with(k, kPeftPrefix)) model_prefixed = true;
  std::vector<std::string> own_keys;
  const PrefixSet prefixes(adapter_prefixes(model, method.prefix));
  for (const auto& [k, v] : full)
    if (prefixes.covers(k) && key_has_adapter(k, adapter_name)) own_keys.push_back(k);
  StateDict renamed = to_model_names(model, state_dict, adapter_name, method, model_prefixed, own_keys);

  nn::LoadResult r = model.load_state_dict(renamed, /*strict=*/false, /*assign=*/low_cpu_mem_usage);
  if (low_cpu_mem_usage)
    for (auto& [n, t] : tuner_layers(model)) t->move_adapter_to_base_device(adapter_name);
  return r;
}

}  // namespace

namespace {

// The module at dotted `path` ("" = model), or nullptr; never throws.
nn::Module* find_module(nn::Module& model, const std::string& path) {
  nn::Module* cur = &model;
  size_t start = 0;
  while (cur && start < path.size()) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    cur = cur->has_child(part) ? &cur->child(part) : nullptr;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

// The model's tensors of `adapter` in tuner layers of the method with `prefix` (model key names, tree order).
std::vector<std::string> adapter_model_keys(const nn::Module& model, const std::string& prefix, const std::string& adapter) {
  std::vector<std::string> keys;
  for (auto& [name, t] : tuner_layers(model)) {
    if (t->prefix() != prefix) continue;
    const std::string base = name.empty() ? "" : name + ".";
    for (const auto& [p, v] : t->own_parameters())
      if (key_has_adapter(base + p, adapter)) keys.push_back(base + p);
    for (const auto& [b, v] : t->own_buffers())
      if (key_has_adapter(base + b, adapter)) keys.push_back(base + b);
    for (const auto& [c, dict] : t->children()) {
      if (c == "base_layer") continue;
      const std::string at = base + c + "." + adapter;
      if (dict->has_param(adapter) || dict->has_buffer(adapter)) keys.push_back(at);
      if (dict->has_child(adapter))
        for (const auto& [k, v] : dict->child(adapter).state_dict()) keys.push_back(at + "." + k);
    }
  }
  return keys;
}

}  // namespace

nn::LoadResult detail::load_adapter_state(nn::Module& model, const StateDict& state_dict, const std::string& adapter_name,
                                          bool low_cpu_mem_usage) {
  return load_all_or_nothing(model, adapter_name, [&](const TunerMethod& method) {
    // The same renaming as set_peft_model_state_dict, from the tuner layers' own keys.
    const std::vector<std::string> own_keys = adapter_model_keys(model, method.prefix, adapter_name);
    StateDict renamed = to_model_names(model, state_dict, adapter_name, method,
                                       find_module(model, "base_model.model") != nullptr, own_keys);

    // Resolve each key to its owning module; check every shape before anything is written.
    nn::LoadResult r;
    std::map<nn::Module*, StateDict> by_owner;
    std::vector<nn::Module*> owner_order;
    std::vector<std::string> size_errors;
    for (const auto& [key, src] : renamed) {
      size_t dot = key.rfind('.');
      nn::Module* owner = find_module(model, dot == std::string::npos ? "" : key.substr(0, dot));
      const std::string leaf = dot == std::string::npos ? key : key.substr(dot + 1);
      const Tensor* dst = nullptr;
      if (owner && owner->has_param(leaf)) dst = &owner->param(leaf);
      else if (owner && owner->has_buffer(leaf)) dst = &owner->buffer(leaf);
      if (!dst || !dst->defined()) {
        r.unexpected_keys.push_back(key);
        continue;
      }
      if (!src.defined()) fail("load_state_dict: entry '", key, "' is an undefined tensor");
      if (src.shape() != dst->shape())
        size_errors.push_back("size mismatch for " + key + ": copying a param with shape " + shape_str(src.shape()) +
                              " from checkpoint, the shape in current model is " + shape_str(dst->shape()) + ".");
      if (!by_owner.count(owner)) owner_order.push_back(owner);
      by_owner[owner].set(leaf, src);
    }
    if (!size_errors.empty()) {
      std::string joined;
      for (const auto& e : size_errors) joined += "\n\t" + e;
      fail_shape("Error(s) in loading state_dict for ", model.type_name(), ":", joined);
    }
    for (nn::Module* owner : owner_order) owner->load_state_dict(by_owner.at(owner), /*strict=*/false, low_cpu_mem_usage);
    for (const auto& k : own_keys)
      if (!renamed.contains(k)) r.missing_keys.push_back(k);
    if (low_cpu_mem_usage)
      for (auto& [n, t] : tuner_layers(model)) t->move_adapter_to_base_device(adapter_name);
    return r;
  });
}

}  // namespace peft
