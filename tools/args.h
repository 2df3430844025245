// Minimal --key value / --flag parsing for the sub-commands.
#pragma once
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tools/cli.h"

namespace peft::cli {

// "a,b,,c" -> {"a", "b", "c"} (option values such as --target-modules).
inline std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

class Args {
 public:
  // `flags`: options without a value; `multi`: options that may repeat.
  Args(const std::vector<std::string>& args, const std::set<std::string>& known_values,
       const std::set<std::string>& flags = {}, const std::set<std::string>& multi = {}) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "--help" || a == "-h") {
        help = true;
        continue;
      }
      if (a.rfind("--", 0) != 0) {
        positional.push_back(a);
        continue;
      }
      std::string key = a.substr(2), value;
      auto eq = key.find('=');
      bool inline_value = eq != std::string::npos;
      if (inline_value) {
        value = key.substr(eq + 1);
        key = key.substr(0, eq);
      }
      if (flags.count(key)) {
        if (inline_value) throw UsageError{"option --" + key + " takes no value"};
        values_[key].push_back("1");
        continue;
      }
      if (!known_values.count(key) && !multi.count(key)) throw UsageError{"unknown option --" + key};
      if (!inline_value) {
        if (i + 1 >= args.size()) throw UsageError{"option --" + key + " needs a value"};
        value = args[++i];
      }
      if (values_.count(key) && !multi.count(key))
        throw UsageError{"option --" + key + " given twice"};
      values_[key].push_back(value);
    }
  }

  bool has(const std::string& k) const { return values_.count(k) != 0; }
  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = values_.find(k);
    return it == values_.end() ? def : it->second.back();
  }
  std::string required(const std::string& k) const {
    if (!has(k)) throw UsageError{"missing required option --" + k};
    return get(k);
  }
  std::vector<std::string> all(const std::string& k) const {
    auto it = values_.find(k);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  int64_t get_int(const std::string& k, int64_t def) const {
    if (!has(k)) return def;
    try {
      size_t pos = 0;
      int64_t v = std::stoll(get(k), &pos);
      if (pos != get(k).size()) throw 0;
      return v;
    } catch (...) {
      throw UsageError{"option --" + k + " expects an integer, got '" + get(k) + "'"};
    }
  }
  double get_double(const std::string& k, double def) const {
    if (!has(k)) return def;
    try {
      size_t pos = 0;
      double v = std::stod(get(k), &pos);
      if (pos != get(k).size()) throw 0;
      return v;
    } catch (...) {
      throw UsageError{"option --" + k + " expects a number, got '" + get(k) + "'"};
    }
  }

  bool help = false;
  std::vector<std::string> positional;

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace peft::cli
