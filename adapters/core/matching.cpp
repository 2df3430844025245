// Which module keys a config targets (PEFT's check_target_module_exists). (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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

}  // namespace peft
