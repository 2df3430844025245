// The shared tuner core (PEFT 0.21's tuners/tuners_utils.py and utils/save_and_load.py). See tuner.h.
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
#include "adapters/peft.h"
#include "nn/transformers/common.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft {

// ------------------------------------------------------------------ helpers --

std::regex compile_user_regex(const std::string& pattern, const char* what) {
  // libstdc++ compiles (and matches) regexes recursively: thousands of nested groups overflow
  // the stack. Real target patterns are short and shallow, so bound both before compiling.
  constexpr size_t kMaxLength = 4096;
  constexpr int kMaxNesting = 64;
  if (pattern.size() > kMaxLength)
    fail("regular expression in ", what, " is ", pattern.size(), " characters long; the limit is ", kMaxLength);
  int depth = 0;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\') {
      ++i;  // an escaped character is never a group or a class bracket
    } else if (in_class) {
      in_class = c != ']';
    } else if (c == '[') {
      in_class = true;
    } else if (c == '(' && ++depth > kMaxNesting) {
      fail("regular expression in ", what, " nests groups more than ", kMaxNesting, " deep: '",
           pattern.substr(0, 80), pattern.size() > 80 ? "...'" : "'");
    } else if (c == ')' && depth > 0) {
      --depth;
    }
  }
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    fail("invalid regular expression in ", what, ": '", pattern, "' (", e.what(), ")");
  }
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
bool key_has_adapter(const std::string& key, const std::string& adapter) {
  return key.find("." + adapter + ".") != std::string::npos || ends_with(key, "." + adapter);
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::regex compile_regex(const std::string& pattern, const char* what) { return compile_user_regex(pattern, what); }

// re.fullmatch
bool py_fullmatch(const std::string& pattern, const std::string& s, const char* what) {
  return std::regex_match(s, compile_regex(pattern, what));
}

// re.match: anchored at the start, may stop before the end.
bool py_match(const std::string& pattern, const std::string& s, std::smatch* m, const char* what) {
  std::regex re = compile_regex(pattern, what);
  std::smatch local;
  std::smatch& mm = m ? *m : local;
  return std::regex_search(s, mm, re, std::regex_constants::match_continuous);
}

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

std::string py_repr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == q) out += std::string("\\") + q;
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  out += q;
  return out;
}

std::string py_list(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_repr(v[i]);
  return out + "]";
}

std::string py_int_list(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

// ------------------------------------------------------------ TargetModules --

bool TargetModules::truthy() const {
  switch (kind) {
    case Kind::none: return false;
    case Kind::regex: return !pattern.empty();
    case Kind::list: return !names.empty();
  }
  return false;
}

std::string TargetModules::py_str() const {
  switch (kind) {
    case Kind::none: return "None";
    case Kind::regex: return pattern;
    case Kind::list: {
      if (names.empty()) return "set()";
      std::string out = "{";
      for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + py_repr(names[i]);
      return out + "}";
    }
  }
  return "None";
}

ordered_json TargetModules::to_json() const {
  switch (kind) {
    case Kind::none: return nullptr;
    case Kind::regex: return pattern;
    case Kind::list: return names;
  }
  return nullptr;
}

TargetModules TargetModules::from_json(const ordered_json& j, const char* field) {
  if (j.is_null()) return {};
  if (j.is_string()) return TargetModules(j.get<std::string>());
  if (j.is_array()) {
    std::vector<std::string> v;
    for (const auto& e : j) {
      if (!e.is_string()) fail("`", field, "` must be a string or a list of strings, got ", j.dump());
      v.push_back(e.get<std::string>());
    }
    return TargetModules(std::move(v));
  }
  fail("`", field, "` must be null, a string or a list of strings, got ", j.dump());
}

// --------------------------------------------------------------- PeftConfig --

void PeftConfig::validate() const {
  if (target_modules.is_regex() && layers_to_transform.has_value())
    fail("`layers_to_transform` cannot be used when `target_modules` is a str.");
  if (target_modules.is_regex() && layers_pattern.has_value())
    fail("`layers_pattern` cannot be used when `target_modules` is a str.");
  bool pattern_truthy = layers_pattern.has_value() && !layers_pattern->empty() &&
                        !(layers_pattern_is_str && layers_pattern->front().empty());
  bool ltt_truthy = layers_to_transform.has_value() &&
                    (layers_to_transform_is_int ? layers_to_transform->front() != 0 : !layers_to_transform->empty());
  if (pattern_truthy && !ltt_truthy)
    fail("When `layers_pattern` is specified, `layers_to_transform` must also be specified. ");
}

namespace {
ordered_json opt_str(const std::optional<std::string>& s) {
  return s ? ordered_json(*s) : ordered_json(nullptr);
}
}  // namespace

ordered_json PeftConfig::to_json() const {
  ordered_json j = ordered_json::object();
  j["task_type"] = opt_str(task_type);
  j["peft_type"] = peft_type;
  j["auto_mapping"] = auto_mapping;
  j["peft_version"] = opt_str(peft_version);
  j["base_model_name_or_path"] = opt_str(base_model_name_or_path);
  j["revision"] = opt_str(revision);
  j["inference_mode"] = inference_mode;
  j["target_modules"] = target_modules.to_json();
  j["exclude_modules"] = exclude_modules.to_json();
  j["modules_to_save"] = modules_to_save ? ordered_json(*modules_to_save) : ordered_json(nullptr);
  if (!layers_to_transform) j["layers_to_transform"] = nullptr;
  else if (layers_to_transform_is_int) j["layers_to_transform"] = layers_to_transform->front();
  else j["layers_to_transform"] = *layers_to_transform;
  if (!layers_pattern) j["layers_pattern"] = nullptr;
  else if (layers_pattern_is_str) j["layers_pattern"] = layers_pattern->front();
  else j["layers_pattern"] = *layers_pattern;
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}

std::string PeftConfig::to_json_string() const {
  nlohmann::json sorted = nlohmann::json::parse(to_json().dump());  // std::map: keys sorted
  return sorted.dump(2, ' ', /*ensure_ascii=*/true);
}

// A list field element by element: nlohmann's get<vector<...>> would throw its own
// type_error on a wrong element, and silently truncate 1.5 to 1.
static std::vector<std::string> string_list(const ordered_json& v, const char* field) {
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) fail("adapter config field `", field, "` must hold strings, got ", e.dump());
    out.push_back(e.get<std::string>());
  }
  return out;
}
static std::vector<int64_t> int_list(const ordered_json& v, const char* field) {
  std::vector<int64_t> out;
  for (const auto& e : v) {
    if (!e.is_number_integer() ||
        (e.is_number_unsigned() && e.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
      fail("adapter config field `", field, "` must hold 64-bit integers, got ", e.dump());
    out.push_back(e.get<int64_t>());
  }
  return out;
}

void PeftConfig::read_common(const ordered_json& j, std::vector<std::string>& consumed) {
  if (!j.is_object()) fail("adapter config must be a JSON object, got ", j.dump());
  auto take = [&](const char* k) -> const ordered_json* {
    consumed.push_back(k);
    auto it = j.find(k);
    return it == j.end() ? nullptr : &*it;
  };
  auto get_opt_str = [&](const char* k, std::optional<std::string>& dst) {
    if (const auto* v = take(k)) {
      if (v->is_null()) dst.reset();
      else if (v->is_string()) dst = v->get<std::string>();
      else fail("adapter config field `", k, "` must be a string or null, got ", v->dump());
    }
  };
  if (const auto* v = take("peft_type")) {
    if (!v->is_string()) fail("adapter config field `peft_type` must be a string");
    peft_type = v->get<std::string>();
  }
  get_opt_str("task_type", task_type);
  get_opt_str("peft_version", peft_version);
  get_opt_str("base_model_name_or_path", base_model_name_or_path);
  get_opt_str("revision", revision);
  if (const auto* v = take("inference_mode")) inference_mode = v->is_boolean() && v->get<bool>();
  if (const auto* v = take("auto_mapping")) auto_mapping = *v;
  if (const auto* v = take("target_modules")) target_modules = TargetModules::from_json(*v, "target_modules");
  if (const auto* v = take("exclude_modules")) exclude_modules = TargetModules::from_json(*v, "exclude_modules");
  if (const auto* v = take("modules_to_save")) {
    if (v->is_null()) modules_to_save.reset();
    else if (v->is_array()) modules_to_save = string_list(*v, "modules_to_save");
    else fail("adapter config field `modules_to_save` must be a list of strings or null, got ", v->dump());
  }
  if (const auto* v = take("layers_to_transform")) {
    if (v->is_null()) layers_to_transform.reset();
    else if (v->is_number_integer()) set_layers_to_transform(int_list(ordered_json::array({*v}), "layers_to_transform")[0]);
    else if (v->is_array()) set_layers_to_transform(int_list(*v, "layers_to_transform"));
    else fail("adapter config field `layers_to_transform` must be an int, a list of ints or null, got ", v->dump());
  }
  if (const auto* v = take("layers_pattern")) {
    if (v->is_null()) layers_pattern.reset();
    else if (v->is_string()) set_layers_pattern(v->get<std::string>());
    else if (v->is_array()) set_layers_pattern(string_list(*v, "layers_pattern"));
    else fail("adapter config field `layers_pattern` must be a string, a list of strings or null, got ", v->dump());
  }
}

void PeftConfig::keep_unknown(const ordered_json& j, const std::vector<std::string>& consumed) {
  extra = ordered_json::object();
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!contains(consumed, it.key())) extra[it.key()] = it.value();
}

PeftConfigPtr config_from_json(const ordered_json& j) {
  register_builtin_methods();
  if (!j.is_object() || !j.contains("peft_type") || !j["peft_type"].is_string())
    fail("adapter config has no string field `peft_type`");
  std::string type = j["peft_type"].get<std::string>();
  const TunerMethod* m = find_method(type);
  if (!m || !m->parse_config) fail("unsupported peft_type '", type, "' in adapter config");
  return m->parse_config(j);
}

PeftConfigPtr config_from_json(const char* text) { return config_from_json(std::string(text)); }

ordered_json parse_config_text(const std::string& text) {
  // An adapter_config.json is a few levels deep; the bound keeps recursive JSON code
  // (dump, compare) from running out of stack on hostile input.
  static constexpr int kMaxDepth = 64;
  auto depth_check = [](int depth, ordered_json::parse_event_t ev, ordered_json&) {
    if ((ev == ordered_json::parse_event_t::object_start || ev == ordered_json::parse_event_t::array_start) &&
        depth >= kMaxDepth)
      fail("adapter config is nested more than ", kMaxDepth, " levels deep; not an adapter_config.json");
    return true;
  };
  try {
    return ordered_json::parse(text, depth_check);
  } catch (const ordered_json::exception& e) {
    fail("adapter config is not valid JSON: ", e.what());
  }
}

PeftConfigPtr config_from_json(const std::string& text) { return config_from_json(parse_config_text(text)); }

bool all_finite(const Tensor& t) {
  NoGradGuard ng;
  return sum(logical_not(isfinite(t)).to(DType::int64)).item() == 0;
}

const nn::Linear& base_linear(const nn::Module& base, const char* layer) {
  auto* l = dynamic_cast<const nn::Linear*>(&base);
  if (!l) fail(layer, ": base layer ", base.type_name(), " is not a Linear");
  return *l;
}

// ----------------------------------------------------------------- matching --

std::optional<int64_t> layer_index_of(const std::string& key,
                                      const std::optional<std::vector<std::string>>& layers_pattern) {
  std::smatch m;
  if (!layers_pattern || layers_pattern->empty()) {
    if (py_match(R"(.*?\.[^.]*\.(\d+)\.)", key, &m, "layer index")) return std::stoll(m[1].str());
    return std::nullopt;
  }
  for (const auto& p : *layers_pattern) {
    if (py_match("(?:^|.*?\\.)" + p + R"(\.(\d+)\.)", key, &m, "layers_pattern"))
      return std::stoll(m[1].str());
  }
  return std::nullopt;
}

std::optional<std::string> get_pattern_key(const std::vector<std::string>& patterns, const std::string& key) {
  for (const auto& p : patterns)
    if (py_fullmatch("(.*\\.)?(" + p + ")", key, "rank_pattern/alpha_pattern")) return p;
  return std::nullopt;
}

TargetMatch check_target_module_exists(const PeftConfig& cfg, const std::string& key) {
  // 1. exclude_modules
  if (cfg.exclude_modules.truthy()) {
    if (cfg.exclude_modules.is_regex()) {
      if (py_fullmatch(cfg.exclude_modules.pattern, key, "exclude_modules")) return TargetMatch::excluded;
    } else {
      for (const auto& e : cfg.exclude_modules.names)
        if (key == e || ends_with(key, "." + e)) return TargetMatch::excluded;
    }
  }
  // 2. never adapt modules_to_save modules or anything below them
  if (cfg.modules_to_save && !cfg.modules_to_save->empty()) {
    for (const auto& m : *cfg.modules_to_save)
      if (py_match("(^|.*\\.)" + m + "($|\\..*)", key, nullptr, "modules_to_save")) return TargetMatch::excluded;
  }
  // 3./4. regex
  if (cfg.target_modules.is_none()) return TargetMatch::unmatched;
  if (cfg.target_modules.is_regex()) {
    return py_fullmatch(cfg.target_modules.pattern, key, "target_modules") ? TargetMatch::matched
                                                                           : TargetMatch::unmatched;
  }
  // 5. list: exact (no layer filter), else dot-boundary suffix (+ layer filter)
  const auto& names = cfg.target_modules.names;
  if (contains(names, key)) return TargetMatch::matched;
  bool suffix = false;
  for (const auto& t : names)
    if (ends_with(key, "." + t)) {
      suffix = true;
      break;
    }
  if (!suffix) return TargetMatch::unmatched;
  bool use_layers = cfg.layers_to_transform.has_value() &&
                    (cfg.layers_to_transform_is_int || !cfg.layers_to_transform->empty());
  if (!use_layers) return TargetMatch::matched;
  std::optional<int64_t> idx = layer_index_of(key, cfg.layers_pattern);
  if (!idx) return TargetMatch::unmatched;
  const auto& l = *cfg.layers_to_transform;
  return std::find(l.begin(), l.end(), *idx) != l.end() ? TargetMatch::matched : TargetMatch::unmatched;
}

// --------------------------------------------------------------- warnings --

namespace {
WarningHandler& warning_handler() {
  static WarningHandler h;
  return h;
}
}  // namespace

WarningHandler set_warning_handler(WarningHandler h) {
  WarningHandler old = std::move(warning_handler());
  warning_handler() = std::move(h);
  return old;
}

void warn(const std::string& msg) {
  if (warning_handler()) warning_handler()(msg);
  else std::fprintf(stderr, "peft warning: %s\n", msg.c_str());
}

// --------------------------------------------------------------- registry --

namespace {
std::vector<TunerMethod>& methods() {
  static std::vector<TunerMethod> m;
  return m;
}
}  // namespace

void register_method(TunerMethod m) {
  for (auto& e : methods())
    if (e.peft_type == m.peft_type) {
      e = std::move(m);
      return;
    }
  methods().push_back(std::move(m));
}

const TunerMethod* find_method(const std::string& peft_type) {
  register_builtin_methods();
  for (const auto& e : methods())
    if (e.peft_type == peft_type) return &e;
  return nullptr;
}

const TunerMethod& method_for(const std::string& peft_type) {
  const TunerMethod* m = find_method(peft_type);
  if (!m) fail("`inject_adapter_in_model` does not support ", peft_type, " yet. Please use `get_peft_model`.");
  return *m;
}

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
  return detail::inject_adapter(config, model, adapter_name, low_cpu_mem_usage, {});
}

nn::Module& inject_from_state_dict(const PeftConfig& config, nn::Module& model, const StateDict& state_dict,
                                   const std::string& adapter_name, bool low_cpu_mem_usage) {
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
    for (auto& [n, p] : model.named_parameters()) snapshot.emplace_back(p, p.requires_grad());

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

  auto named = model.named_modules();  // taken before any replacement

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
      nn::ModulePtr replacement = method->create_and_replace(*cfg, adapter_name, target, key, low_cpu_mem_usage);
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
  const std::vector<std::string> previous_active = state.active_adapters;
  state.active_adapters = {adapter_name};

  // modules_to_save: plain endswith (no dot boundary) over the names before wrapping.
  if (cfg->modules_to_save && !cfg->modules_to_save->empty()) {
    auto names_now = model.named_modules();
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

  // Freezing (§1.5, §2.6).
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

}  // namespace

StateDict get_peft_model_state_dict(const nn::Module& model, const std::string& adapter_name) {
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

nn::LoadResult set_peft_model_state_dict(nn::Module& model, const StateDict& state_dict,
                                         const std::string& adapter_name, bool low_cpu_mem_usage) {
  PeftConfigPtr cfg = peft_config(model, adapter_name);
  const TunerMethod& method = method_for(cfg->peft_type);
  if (method.before_load) method.before_load(model, adapter_name, *cfg);
  StateDict full = model.state_dict();

  // Strip "base_model.model." when the model itself has no such names.
  bool model_prefixed = false;
  for (const auto& [k, v] : full)
    if (starts_with(k, kPeftPrefix)) model_prefixed = true;
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

  // Re-insert the adapter name: checkpoint name of each of the model's own adapter keys.
  std::map<std::string, std::string> ckpt_to_model;
  const PrefixSet prefixes(adapter_prefixes(model, method.prefix));
  for (const auto& [k, v] : full) {
    if (!prefixes.covers(k) || !key_has_adapter(k, adapter_name)) continue;
    std::string ck = method.to_checkpoint_key ? method.to_checkpoint_key(k, adapter_name) : k;
    ckpt_to_model[strip_adapter_name(ck, adapter_name)] = k;
  }
  StateDict renamed;
  for (auto& [k, v] : in) {
    auto it = ckpt_to_model.find(k);
    renamed.set(it == ckpt_to_model.end() ? k : it->second, v);
  }

  nn::LoadResult r = model.load_state_dict(renamed, /*strict=*/false, /*assign=*/low_cpu_mem_usage);
  if (low_cpu_mem_usage)
    for (auto& [n, t] : tuner_layers(model)) t->move_adapter_to_base_device(adapter_name);
  return r;
}

// ------------------------------------------------------- model-level helpers --

void set_adapter(nn::Module& model, const std::vector<std::string>& adapter_names, bool inference_mode) {
  for (auto& [n, t] : tuner_layers(model)) t->set_adapter(adapter_names, inference_mode);
  for (auto& [n, w] : modules_to_save_wrappers(model)) w->set_adapter(adapter_names, inference_mode);
  if (PeftState* s = peft_state(model)) s->active_adapters = adapter_names;
}

void set_adapter(nn::Module& model, const std::string& adapter_name, bool inference_mode) {
  set_adapter(model, std::vector<std::string>{adapter_name}, inference_mode);
}

void enable_adapters(nn::Module& model, bool enabled) {
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
  for (auto& [n, t] : tuner_layers(model)) t->merge(safe_merge, adapter_names);
}

void unmerge_adapters(nn::Module& model) {
  for (auto& [n, t] : tuner_layers(model))
    if (t->merged()) t->unmerge();
}

void delete_adapter(nn::Module& model, const std::string& adapter_name) {
  PeftState* s = peft_state(model);
  if (!s || !s->find(adapter_name)) fail("Adapter ", adapter_name, " does not exist");
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
  s->active_adapters = new_active.value_or(std::vector<std::string>{});
}

std::vector<std::string> trainable_parameter_names(const nn::Module& model) {
  std::vector<std::string> out;
  for (const auto& [n, p] : model.named_parameters())
    if (p.requires_grad()) out.push_back(n);
  return out;
}

}  // namespace peft
