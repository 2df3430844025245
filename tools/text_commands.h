// `peft generate --model DIR ...` (tools/cmd_text.cpp), reached from `peft generate`, which
// keeps --base for the character-level model.
#pragma once
#include <string>
#include <vector>

namespace peft::cli {
int run_text_generate(const std::vector<std::string>& argv);
}  // namespace peft::cli
