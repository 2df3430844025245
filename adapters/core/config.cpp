// TargetModules and PeftConfig: the fields every method shares, from/to adapter_config.json. (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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
      if (!e.is_string()) fail_format("`", field, "` must be a string or a list of strings, got ", j.dump());
      v.push_back(e.get<std::string>());
    }
    return TargetModules(std::move(v));
  }
  fail_format("`", field, "` must be null, a string or a list of strings, got ", j.dump());
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
    if (!e.is_string()) fail_format("adapter config field `", field, "` must hold strings, got ", e.dump());
    out.push_back(e.get<std::string>());
  }
  return out;
}
static std::vector<int64_t> int_list(const ordered_json& v, const char* field) {
  std::vector<int64_t> out;
  for (const auto& e : v) {
    if (!e.is_number_integer() ||
        (e.is_number_unsigned() && e.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
      fail_format("adapter config field `", field, "` must hold 64-bit integers, got ", e.dump());
    out.push_back(e.get<int64_t>());
  }
  return out;
}

void PeftConfig::read_common(const ordered_json& j, std::vector<std::string>& consumed) {
  if (!j.is_object()) fail_format("adapter config must be a JSON object, got ", j.dump());
  auto take = [&](const char* k) -> const ordered_json* {
    consumed.push_back(k);
    auto it = j.find(k);
    return it == j.end() ? nullptr : &*it;
  };
  auto get_opt_str = [&](const char* k, std::optional<std::string>& dst) {
    if (const auto* v = take(k)) {
      if (v->is_null()) dst.reset();
      else if (v->is_string()) dst = v->get<std::string>();
      else fail_format("adapter config field `", k, "` must be a string or null, got ", v->dump());
    }
  };
  if (const auto* v = take("peft_type")) {
    if (!v->is_string()) fail_format("adapter config field `peft_type` must be a string");
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
    else fail_format("adapter config field `modules_to_save` must be a list of strings or null, got ", v->dump());
  }
  if (const auto* v = take("layers_to_transform")) {
    if (v->is_null()) layers_to_transform.reset();
    else if (v->is_number_integer()) set_layers_to_transform(int_list(ordered_json::array({*v}), "layers_to_transform")[0]);
    else if (v->is_array()) set_layers_to_transform(int_list(*v, "layers_to_transform"));
    else fail_format("adapter config field `layers_to_transform` must be an int, a list of ints or null, got ", v->dump());
  }
  if (const auto* v = take("layers_pattern")) {
    if (v->is_null()) layers_pattern.reset();
    else if (v->is_string()) set_layers_pattern(v->get<std::string>());
    else if (v->is_array()) set_layers_pattern(string_list(*v, "layers_pattern"));
    else fail_format("adapter config field `layers_pattern` must be a string, a list of strings or null, got ", v->dump());
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
    fail_format("adapter config has no string field `peft_type`");
  std::string type = j["peft_type"].get<std::string>();
  const TunerMethod* m = find_method(type);
  if (!m || !m->parse_config) fail_format("unsupported peft_type '", type, "' in adapter config");
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
      fail_format("adapter config is nested more than ", kMaxDepth, " levels deep; not an adapter_config.json");
    return true;
  };
  try {
    return ordered_json::parse(text, depth_check);
  } catch (const ordered_json::exception& e) {
    fail_format("adapter config is not valid JSON: ", e.what());
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

}  // namespace peft
