// The built-in tuner methods: a new method is its config / layer / model files plus one line
// here (the core itself never includes the methods' headers).
#include <mutex>

#include "adapters/adalora/model.h"
#include "adapters/ia3/model.h"
#include "adapters/lora/model.h"

namespace peft {

void register_builtin_methods() {
  static std::once_flag once;
  std::call_once(once, [] {
    lora::register_lora_method();
    ia3::register_ia3_method();
    adalora::register_adalora_method();
  });
}

}  // namespace peft
