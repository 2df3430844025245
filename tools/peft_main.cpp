#include <cstdio>
#include <cstring>
#include <exception>

#include "runtime/comm.h"
#include "runtime/error.h"
#include "tools/cli.h"

namespace peft::cli {

static std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
void register_command(const Command& c) { registry().push_back(c); }
const std::vector<Command>& commands() { return registry(); }

}  // namespace peft::cli

// A failure on one rank of a data-parallel job (mpirun) stops every rank: the others may be
// waiting for this one in a collective.
static int report_error(const char* command, const char* what) {
  peft::comm::Communicator* world = peft::comm::world_if_started();
  if (world && world->size() > 1)
    world->abort("peft " + std::string(command) + ": error on rank " + std::to_string(world->rank()) + " of " +
                 std::to_string(world->size()) + ": " + what);
  std::fprintf(stderr, "peft %s: error: %s\n", command, what);
  return 1;
}

static void print_usage(FILE* f) {
  std::fprintf(f, "usage: peft <command> [options]\n\ncommands:\n");
  for (const auto& c : peft::cli::commands()) std::fprintf(f, "  %-15s %s\n", c.name, c.summary);
  std::fprintf(f, "\nRun 'peft <command> --help' for a command's options.\n");
}

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_usage(stdout);
    return 0;
  }
  for (const auto& c : peft::cli::commands()) {
    if (c.name != std::string(argv[1])) continue;
    std::vector<std::string> args(argv + 2, argv + argc);
    try {
      return c.run(args);
    } catch (const peft::cli::UsageError& e) {
      if (peft::comm::Communicator* world = peft::comm::world_if_started(); world && world->size() > 1)
        return report_error(c.name, (e.message + " (see 'peft " + c.name + " --help')").c_str());
      std::fprintf(stderr, "peft %s: %s\n(see 'peft %s --help')\n", c.name, e.message.c_str(), c.name);
      return 2;
    } catch (const std::exception& e) {  // peft::Error and the rest
      return report_error(c.name, e.what());
    }
  }
  std::fprintf(stderr, "peft: unknown command '%s'\n\n", argv[1]);
  print_usage(stderr);
  return 2;
}
