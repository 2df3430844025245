// Helpers shared by the tuner core: user regexes (bounded), Python-style reprs. (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
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

}  // namespace peft
