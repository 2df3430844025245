// The peft program's sub-commands register themselves here (one file each).
// Exit codes: 0 ok, 1 failure, 2 usage error.
#pragma once
#include <string>
#include <vector>

namespace peft::cli {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);  // args exclude the command name
};

void register_command(const Command& c);
const std::vector<Command>& commands();

struct Registrar {
  explicit Registrar(const Command& c) { register_command(c); }
};

// Thrown for bad command-line usage; main prints it with the command's help and exits 2.
struct UsageError {
  std::string message;
};

}  // namespace peft::cli
