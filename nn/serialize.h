// Saving and loading a module's state dict as a safetensors file.
#pragma once
#include <map>
#include <string>

#include "nn/module.h"

namespace peft::nn {

// Writes module.state_dict() atomically (temporary file + rename); metadata
// {"format": "pt"} plus `metadata`.
void save_state_dict(const Module& module, const std::string& path,
                     const std::map<std::string, std::string>& metadata = {});

// Loads a safetensors file into `module` (values converted to each
// parameter's dtype). strict: missing or unexpected keys throw, listing them.
// assign: parameters take over the file's tensors (zero-copy where possible;
// meta parameters become real).
LoadResult load_state_dict(Module& module, const std::string& path, bool strict = true,
                           bool assign = false);

}  // namespace peft::nn
