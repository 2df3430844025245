// `peft generate --model DIR ...` (tools/cmd_text.cpp), reached from `peft generate`, which
// keeps --base for the character-level model.
#pragma once
#include <string>
#include <vector>

#include "nn/module.h"

namespace peft::cli {
int run_text_generate(const std::vector<std::string>& argv);
// Loads adapter folders DIR... onto `model` under their folder names ('.' -> '_'; adapter0,
// adapter1... when names clash), without PEFT's warning about several adapters on one model.
std::vector<std::string> load_adapter_folders(nn::Module& model, const std::vector<std::string>& dirs);
}  // namespace peft::cli
