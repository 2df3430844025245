// The shared tuner core (PEFT's tuners_utils.py): configs common to every
// injection method, target matching, the injection loop, freezing, the
// per-model adapter state, tuner layers (set/enable/merge/unmerge/delete),
// modules_to_save wrappers and the method registry. LoRA, AdaLoRA and IA3 are
// built on this: a method is a config, a layer and one registry entry.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/state_dict.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace peft {

using ordered_json = nlohmann::ordered_json;

// target_modules / exclude_modules: None, a regex string (re.fullmatch against
// the full dotted name), or a list of names (exact or dot-boundary suffix).
struct TargetModules {
  enum class Kind : uint8_t { none, regex, list };
  Kind kind = Kind::none;
  std::string pattern;             // Kind::regex
  std::vector<std::string> names;  // Kind::list

  TargetModules() = default;
  TargetModules(const char* regex) : kind(Kind::regex), pattern(regex) {}  // NOLINT
  TargetModules(std::string regex) : kind(Kind::regex), pattern(std::move(regex)) {}  // NOLINT
  TargetModules(std::initializer_list<std::string> l) : kind(Kind::list), names(l) {}
  TargetModules(std::vector<std::string> l) : kind(Kind::list), names(std::move(l)) {}  // NOLINT
  static TargetModules list(std::vector<std::string> l) { return TargetModules(std::move(l)); }
  static TargetModules regex(std::string r) { return TargetModules(std::move(r)); }

  bool is_none() const { return kind == Kind::none; }
  bool is_regex() const { return kind == Kind::regex; }
  bool is_list() const { return kind == Kind::list; }
  // Truthiness as Python: None, "" and an empty list are false.
  bool truthy() const;
  // Python str() of the value as PEFT prints it in messages: {'a', 'b'} / regex bare / None.
  std::string py_str() const;
  ordered_json to_json() const;
  static TargetModules from_json(const ordered_json& j, const char* field);
};

// Helpers shared by the methods' layers.
// True when every element is finite (safe_merge's check).
bool all_finite(const Tensor& t);
// The nn::Linear a tuner layer wraps; `layer` ("lora.Linear") names the wrapper in the error.
const nn::Linear& base_linear(const nn::Module& base, const char* layer);

// Common configuration of every injection method (PeftConfig + the tuner fields).
struct PeftConfig {
  virtual ~PeftConfig() = default;

  std::string peft_type;  // "LORA", "ADALORA", "IA3"
  std::optional<std::string> task_type;
  std::optional<std::string> peft_version = std::string("0.21.0");
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> revision;
  bool inference_mode = false;
  ordered_json auto_mapping = nullptr;

  TargetModules target_modules;
  TargetModules exclude_modules;
  // int or list[int]; an int is stored as a one-element list with the flag set.
  std::optional<std::vector<int64_t>> layers_to_transform;
  bool layers_to_transform_is_int = false;
  // str or list[str]
  std::optional<std::vector<std::string>> layers_pattern;
  bool layers_pattern_is_str = false;
  std::optional<std::vector<std::string>> modules_to_save;

  // Fields of adapter_config.json this version does not know, kept verbatim.
  ordered_json extra = ordered_json::object();

  void set_layers_to_transform(int64_t i) {
    layers_to_transform = std::vector<int64_t>{i};
    layers_to_transform_is_int = true;
  }
  void set_layers_to_transform(std::vector<int64_t> v) {
    layers_to_transform = std::move(v);
    layers_to_transform_is_int = false;
  }
  void set_layers_pattern(std::string p) {
    layers_pattern = std::vector<std::string>{std::move(p)};
    layers_pattern_is_str = true;
  }
  void set_layers_pattern(std::vector<std::string> v) {
    layers_pattern = std::move(v);
    layers_pattern_is_str = false;
  }

  virtual std::shared_ptr<PeftConfig> clone() const = 0;
  // "none" | "all" | "lora_only" (methods without a bias option: "none").
  virtual std::string bias_mode() const { return "none"; }
  // Checks PEFT's __post_init__ rules; throws peft::Error with PEFT's messages.
  virtual void validate() const;
  // Every field, as PEFT's to_dict() (unknown fields included).
  virtual ordered_json to_json() const;
  // adapter_config.json text: keys sorted, 2-space indent (json.dumps(..., indent=2, sort_keys=True)).
  std::string to_json_string() const;

 protected:
  // Reads the common fields; `consumed` collects the keys it used.
  void read_common(const ordered_json& j, std::vector<std::string>& consumed);
  void keep_unknown(const ordered_json& j, const std::vector<std::string>& consumed);
};
using PeftConfigPtr = std::shared_ptr<PeftConfig>;

// Parses adapter_config.json text, choosing the config class by "peft_type".
PeftConfigPtr config_from_json(const std::string& text);
// Parses adapter_config.json text; malformed JSON is a peft::Error.
ordered_json parse_config_text(const std::string& text);
PeftConfigPtr config_from_json(const char* text);
PeftConfigPtr config_from_json(const ordered_json& j);

// A regex from a config (target_modules, patterns), ECMAScript; refuses patterns longer than
// 4096 characters or nesting groups deeper than 64 (std::regex recurses) and invalid ones,
// naming `what` in the peft::Error.
std::regex compile_user_regex(const std::string& pattern, const char* what);

// ---------------------------------------------------------------- matching --

enum class TargetMatch { unmatched, matched, excluded };

// PEFT's check_target_module_exists (PEFT's tuners/tuners_utils.py): exclude, modules_to_save guard,
// regex full match or exact / suffix match, layers_to_transform filter.
TargetMatch check_target_module_exists(const PeftConfig& cfg, const std::string& key);
// The layer index PEFT extracts from `key` (nullopt when none).
std::optional<int64_t> layer_index_of(const std::string& key,
                                      const std::optional<std::vector<std::string>>& layers_pattern);
// rank_pattern / alpha_pattern lookup: the first pattern p (in order) with
// re.match(r"(.*\.)?(p)$", key), else nullopt.
std::optional<std::string> get_pattern_key(const std::vector<std::string>& patterns,
                                           const std::string& key);

// ---------------------------------------------------------------- layers --

// Base of every adapter wrapper (PEFT's BaseTunerLayer): child "base_layer" is
// the original module object; per-adapter state lives in dict children.
class TunerLayer : public nn::Module {
 public:
  TunerLayer(std::string type_name, nn::ModulePtr base_layer);

  nn::Module& base_layer() const { return child("base_layer"); }
  nn::ModulePtr base_layer_ptr() const { return child_ptr("base_layer"); }
  // The innermost non-tuner module (unwraps nested tuner layers).
  nn::Module& get_base_layer() const;

  // Direct children holding per-adapter trainable state ("lora_A", ...).
  virtual std::vector<std::string> adapter_layer_names() const = 0;
  // Direct children holding per-adapter non-trainable state ("lora_dropout").
  virtual std::vector<std::string> other_layer_names() const { return {}; }
  // Method prefix of the state-dict keys ("lora_", "ia3_").
  virtual std::string prefix() const = 0;

  const std::vector<std::string>& active_adapters() const { return active_adapters_; }
  bool adapters_disabled() const { return disable_adapters_; }
  bool merged() const { return !merged_adapters_.empty(); }
  const std::vector<std::string>& merged_adapters() const { return merged_adapters_; }
  // Every adapter name held by this layer, in order of first appearance.
  std::vector<std::string> adapter_names() const;
  bool has_adapter(const std::string& name) const;

  // Makes `names` the active adapters; their parameters trainable (unless
  // inference_mode), every other adapter's parameters frozen.
  virtual void set_adapter(const std::vector<std::string>& names, bool inference_mode = false);
  // enabled=false: the layer behaves as its base layer (unmerging first in forward).
  virtual void enable_adapters(bool enabled);
  // Adds the delta of `adapter_names` (default: the active adapters) to the base weights.
  // PEFT's merge loop, shared by every method: validates the names, then for each adapter
  // this layer holds asks the method for the merged base tensors (merged_tensors), checks
  // them when safe_merge, and only then writes them, so a broken adapter changes nothing.
  void merge(bool safe_merge = false, std::vector<std::string> adapter_names = {});
  // Refuses (peft::Error naming `module_name` and the dtype) a base layer whose weights are GGML
  // block-quantized (a model loaded from GGUF): they are read-only storage, as PEFT refuses
  // merging into bitsandbytes' 4-bit weights without dequantizing. merge() calls it first.
  void check_mergeable(const std::string& module_name = "") const;
  // Undoes every merge, last merged first (unmerge_adapter per adapter).
  void unmerge();
  virtual Tensor get_delta_weight(const std::string& adapter) = 0;
  // Removes the adapter's state; the active set follows PEFT's rules.
  virtual void delete_adapter(const std::string& name);
  // Moves the adapter's tensors to the device and floating dtype of the base
  // layer (meta tensors stay on meta).
  virtual void move_adapter_to_base_device(const std::string& adapter);
  // Throws when a tensor of an active adapter is still on the meta device.
  void check_adapter_materialized(const std::string& adapter) const;

 protected:
  // Removes method-specific bookkeeping of an adapter (scaling, r, ...).
  virtual void erase_adapter_state(const std::string& name) { (void)name; }

  // The merge hooks of a method's layer. A base tensor and the value merging takes it to.
  struct MergedTensor {
    Tensor target;  // a parameter of the base layer (written in place)
    Tensor value;   // its merged value, target's dtype and shape
  };
  // The base tensors merging `adapter` changes, with their new values (computed, not written).
  virtual std::vector<MergedTensor> merged_tensors(const std::string& adapter) = 0;
  // Takes one merged adapter's change out of the base tensors.
  virtual void unmerge_adapter(const std::string& adapter) = 0;
  // A warning unmerge prints first ((IA)^3's "can be inaccurate"); "" for none.
  virtual std::string unmerge_warning() const { return ""; }
  // Tensors of one adapter in this layer, addressed "dict.entry[.param]".
  std::vector<std::pair<std::string, Tensor>> adapter_tensors(const std::string& adapter) const;
  // Merge-time validation of adapter names (PEFT's check_adapters_to_merge).
  std::vector<std::string> adapters_to_merge(std::vector<std::string> names) const;

  std::vector<std::string> active_adapters_;
  std::vector<std::string> merged_adapters_;
  bool disable_adapters_ = false;
};

// modules_to_save: the original (frozen) and one trainable deep copy per adapter.
class ModulesToSaveWrapper : public nn::Module {
 public:
  ModulesToSaveWrapper(nn::ModulePtr original, const std::string& adapter_name);
  Tensor forward(const Tensor& x) override;
  void update(const std::string& adapter_name);
  void set_adapter(const std::vector<std::string>& names, bool inference_mode = false);
  void enable_adapters(bool enabled);
  void delete_adapter(const std::string& name);
  nn::Module& original_module() const { return child("original_module"); }
  nn::ModuleDict& modules_to_save() const;
  const std::optional<std::string>& active_adapter() const { return active_adapter_; }

 private:
  std::optional<std::string> active_adapter_;
  bool disable_adapters_ = false;
};

// ---------------------------------------------------------------- per-model state --

// What PEFT keeps on the model object (`model.peft_config`) plus the tuner's
// active adapter.
struct PeftState {
  std::vector<std::pair<std::string, PeftConfigPtr>> configs;  // in injection order
  std::vector<std::string> active_adapters;
  // Tensors a method shares across every layer of one adapter (see TunerMethod::before_inject).
  std::map<std::string, StateDict> shared_tensors;
  PeftConfigPtr find(const std::string& adapter) const;
  std::vector<std::string> adapter_names() const;
};

// The state attached to `model` (nullptr when nothing was injected). It is owned by the
// model object (nn::Module::attachment) and dies with it; the pointer stays valid until
// forget_peft_state or the model's destruction.
PeftState* peft_state(const nn::Module& model);
PeftState& peft_state_or_create(nn::Module& model);
void forget_peft_state(const nn::Module& model);
// model.peft_config[adapter] (throws when absent).
PeftConfigPtr peft_config(const nn::Module& model, const std::string& adapter = "default");

// Every tuner layer / modules_to_save wrapper with its dotted name, in tree order.
std::vector<std::pair<std::string, std::shared_ptr<TunerLayer>>> tuner_layers(const nn::Module& model);
std::vector<std::pair<std::string, std::shared_ptr<ModulesToSaveWrapper>>> modules_to_save_wrappers(
    const nn::Module& model);

// ---------------------------------------------------------------- methods --

// One entry per injection method. The core calls these hooks; everything else
// (matching, loop, freezing, state dicts) is shared.
struct TunerMethod {
  std::string peft_type;    // "LORA"
  std::string prefix;       // "lora_"
  std::string model_class;  // "LoraModel" (used in messages)
  std::function<PeftConfigPtr(const ordered_json&)> parse_config;
  // Mutates the stored config before injection (PEFT's _prepare_adapter_config): target_modules
  // None -> the method's defaults for the host's model_type ("custom" for a host that is not
  // an nn::PreTrainedModel), or PEFT's error when it has none.
  std::function<void(PeftConfig&, const std::string& model_type)> prepare_config;
  // Checks the new config against the model's existing adapters.
  std::function<void(const PeftState&, const PeftConfig&)> check_new_adapter_config;
  // Wraps `target` (a new module is returned and put in its place) or adds the
  // adapter to an existing tuner layer of this method (nullptr returned).
  // The config is the adapter's stored one: like PEFT, a layer type that overrides a flag
  // (fan_in_fan_out for Linear / Conv1D) writes the corrected value back into it.
  // `shared` holds what before_inject created for this adapter (empty for most methods).
  std::function<nn::ModulePtr(PeftConfig&, const std::string& adapter, const nn::ModulePtr& target,
                              const std::string& key, bool low_cpu_mem_usage, const StateDict& shared)>
      create_and_replace;
  // Renames one saved key (adapter name still present); default: unchanged.
  std::function<std::string(const std::string& key, const std::string& adapter)> to_checkpoint_key;
  // Adjusts a saved adapter state dict (checkpoint names); may update the
  // stored config (AdaLoRA: drops ranknum, trims by rank_pattern).
  std::function<void(const nn::Module& model, const std::string& adapter, PeftConfig& cfg, StateDict& sd)>
      finish_state_dict;
  // Runs before an adapter state dict is loaded (AdaLoRA: resizes the layers by rank_pattern).
  // Returns how to undo what it changed (empty: nothing to undo), called when the load fails
  // afterwards so that set_peft_model_state_dict is all-or-nothing.
  std::function<std::function<void()>(nn::Module& model, const std::string& adapter, PeftConfig& cfg)> before_load;
  // Runs once per injected adapter before any layer is created (PEFT's _pre_injection_hook):
  // a method whose layers share tensors across the whole model (VeRA's vera_A / vera_B)
  // creates them into `shared`; create_and_replace receives them, and once injection
  // succeeds they are kept in PeftState::shared_tensors[adapter] (finish_state_dict can save
  // them; delete_adapter drops them). Default: nothing.
  std::function<void(const nn::Module& model, const std::string& adapter, const PeftConfig& cfg, StateDict& shared)>
      before_inject;
  // PEFT's defaults for a host model_type as adapter_config.json fields ({"target_modules":
  // [...]} plus method extras such as IA3's feedforward_modules); nullopt: PEFT has none.
  std::function<std::optional<ordered_json>(const std::string& model_type)> default_target_fields;
  // Why this adapter's delta cannot be scaled by a weight other than 1 (`peft merge
  // --weight`, weighted combinations): "" when the delta is additive and linear in its scale.
  std::function<std::string(const PeftConfig&)> weighted_delta_error;
  // For a weighted delta: whether a saved tensor (checkpoint key) is one the delta is linear
  // in, so scaling it by w scales the delta by w (LoRA: lora_B and lora_embedding_B).
  std::function<bool(const std::string& key)> delta_scales_with;
  // PEFT's error when add_weighted_adapter is called on adapters of this method ("" when the
  // method supports it: LoRA).
  std::string add_weighted_adapter_error;
};

// Adds (or replaces, by peft_type) a method; safe from several threads.
void register_method(TunerMethod m);
// Registers the built-in methods (LORA, IA3, ADALORA) exactly once (std::call_once); the
// lookups below call it. Defined in adapters/builtin_methods.cpp, one line per method.
void register_builtin_methods();
const TunerMethod& method_for(const std::string& peft_type);
const TunerMethod* find_method(const std::string& peft_type);
// Every registered method, in registration order (built-ins first).
std::vector<const TunerMethod*> registered_methods();
// True when `key` names a tensor of an adapter of any registered method (its prefix,
// "lora_", "ia3_", ... starts a component of the dotted key).
bool is_adapter_tensor_key(const std::string& key);

// Warnings PEFT emits with warnings.warn: printed to stderr unless a handler is set.
using WarningHandler = std::function<void(const std::string&)>;
WarningHandler set_warning_handler(WarningHandler h);
void warn(const std::string& msg);
// Installs `h` (default: drop every warning) for its scope and restores the previous
// handler on exit, exceptions included.
class ScopedWarningHandler {
 public:
  explicit ScopedWarningHandler(WarningHandler h = [](const std::string&) {}) : old_(set_warning_handler(std::move(h))) {}
  ~ScopedWarningHandler() { set_warning_handler(std::move(old_)); }
  ScopedWarningHandler(const ScopedWarningHandler&) = delete;
  ScopedWarningHandler& operator=(const ScopedWarningHandler&) = delete;

 private:
  WarningHandler old_;
};

// ---------------------------------------------------------------- core API --

// Injects `config` as adapter `adapter_name` into `model` in place (PEFT's tuners/tuners_utils.py).
// Returns `model`.
nn::Module& inject_adapter_in_model(const PeftConfig& config, nn::Module& model,
                                    const std::string& adapter_name = "default",
                                    bool low_cpu_mem_usage = false);

// PEFT's inject_adapter_in_model(..., state_dict=sd): the targets are the modules the
// checkpoint's keys name ("<module>.lora_A.weight" -> "<module>"), not the config's
// target_modules (the config still gives ranks, alpha, ...). Warns when the two disagree.
// Keys may carry PEFT's "base_model.model." prefix. The state dict's values are not loaded.
nn::Module& inject_from_state_dict(const PeftConfig& config, nn::Module& model, const StateDict& state_dict,
                                   const std::string& adapter_name = "default", bool low_cpu_mem_usage = false);

// The adapter's tensors under PEFT's checkpoint names (PEFT's utils/save_and_load.py).
StateDict get_peft_model_state_dict(const nn::Module& model, const std::string& adapter_name = "default");

// Loads an adapter checkpoint (PEFT's utils/save_and_load.py). missing/unexpected keys are unfiltered, as PEFT.
nn::LoadResult set_peft_model_state_dict(nn::Module& model, const StateDict& state_dict,
                                         const std::string& adapter_name = "default",
                                         bool low_cpu_mem_usage = false);

// Model-level helpers over every tuner layer (PEFT's peft.functional + BaseTuner methods).
void set_adapter(nn::Module& model, const std::vector<std::string>& adapter_names,
                 bool inference_mode = false);
void set_adapter(nn::Module& model, const std::string& adapter_name, bool inference_mode = false);
void enable_adapters(nn::Module& model, bool enabled);
void merge_adapters(nn::Module& model, bool safe_merge = false, const std::vector<std::string>& adapter_names = {});
void unmerge_adapters(nn::Module& model);
void delete_adapter(nn::Module& model, const std::string& adapter_name);
// Forward where input row i uses adapter adapter_names[i] ("__base__": no
// adapter), PEFT's model(x, adapter_names=...). Errors as PEFT for unknown
// names, a length mismatch, merged adapters and DoRA.
Tensor forward_mixed_batch(nn::Module& model, const Tensor& x, const std::vector<std::string>& adapter_names);
// The same around any computation on `model` (a transformer forward with ModelInputs, a whole
// generate() call): while `fn` runs, row i of every LoRA layer's input uses adapter_names[i].
Tensor forward_mixed_batch(nn::Module& model, const std::vector<std::string>& adapter_names,
                           const std::function<Tensor()>& fn);
// Names of trainable parameters (requires_grad), in named_parameters order.
std::vector<std::string> trainable_parameter_names(const nn::Module& model);

}  // namespace peft
