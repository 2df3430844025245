// Warnings (PEFT's warnings.warn) and the registry of tuner methods. (PEFT 0.21's tuners/tuners_utils.py, utils/save_and_load.py.)
#include "adapters/tuner.h"
#include <algorithm>
#include <cstdio>
#include <limits>
#include <deque>
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
// A deque: a TunerMethod& handed out stays valid when more methods register.
struct Registry {
  std::mutex mu;
  std::deque<TunerMethod> methods;
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void register_method(TunerMethod m) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (auto& e : r.methods)
    if (e.peft_type == m.peft_type) {
      e = std::move(m);
      return;
    }
  r.methods.push_back(std::move(m));
}

const TunerMethod* find_method(const std::string& peft_type) {
  register_builtin_methods();  // once (std::call_once inside)
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const auto& e : r.methods)
    if (e.peft_type == peft_type) return &e;
  return nullptr;
}

const TunerMethod& method_for(const std::string& peft_type) {
  const TunerMethod* m = find_method(peft_type);
  if (!m) fail("`inject_adapter_in_model` does not support ", peft_type, " yet. Please use `get_peft_model`.");
  return *m;
}

std::vector<const TunerMethod*> registered_methods() {
  register_builtin_methods();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<const TunerMethod*> out;
  for (const auto& e : r.methods) out.push_back(&e);
  return out;
}

bool is_adapter_tensor_key(const std::string& key) {
  for (const TunerMethod* m : registered_methods()) {
    if (m->prefix.empty()) continue;
    for (size_t p = key.find(m->prefix); p != std::string::npos; p = key.find(m->prefix, p + 1))
      if (p == 0 || key[p - 1] == '.') return true;
  }
  return false;
}

}  // namespace peft
