// Internal to the tuner core (adapters/core/*.cpp): small helpers every part uses.
#pragma once
#include <algorithm>
#include <cctype>
#include <regex>
#include <string>
#include <vector>

#include "adapters/core/detail.h"
#include "adapters/tuner.h"

namespace peft::core_detail {


inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
inline bool key_has_adapter(const std::string& key, const std::string& adapter) {
  return key.find("." + adapter + ".") != std::string::npos || ends_with(key, "." + adapter);
}

inline bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

inline std::regex compile_regex(const std::string& pattern, const char* what) { return compile_user_regex(pattern, what); }

// re.fullmatch
inline bool py_fullmatch(const std::string& pattern, const std::string& s, const char* what) {
  return std::regex_match(s, compile_regex(pattern, what));
}

// re.match: anchored at the start, may stop before the end.
inline bool py_match(const std::string& pattern, const std::string& s, std::smatch* m, const char* what) {
  std::regex re = compile_regex(pattern, what);
  std::smatch local;
  std::smatch& mm = m ? *m : local;
  return std::regex_search(s, mm, re, std::regex_constants::match_continuous);
}

inline std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}


}  // namespace peft::core_detail
