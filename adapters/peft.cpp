#include "adapters/peft.h"

namespace peft {

void register_builtin_methods() {
  static bool done = false;
  if (done) return;
  done = true;
  // One line per method.
  lora::register_lora_method();
  ia3::register_ia3_method();
  adalora::register_adalora_method();
}

}  // namespace peft
