// `peft parity CASE_DIR...`: checks this implementation against the PEFT 0.21
// goldens (tests/data/peft/<case>/). One line per check, then a summary;
// exit status 1 if any check failed.
#include <cstdio>

#include "tools/cli.h"
#include "tools/parity.h"

namespace peft::cli {
namespace {

int run_parity(const std::vector<std::string>& args) {
  std::vector<std::string> dirs;
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: peft parity CASE_DIR...\n"
          "  Rebuilds each golden case (case.json, base.safetensors, adapter_*.safetensors, io.safetensors),\n"
          "  injects its adapters and compares repr, keys, trainable names, init, outputs, gradients,\n"
          "  merged weights, low_cpu_mem_usage loading and training against PEFT 0.21.\n"
          "  Prints PASS/FAIL/SKIP per check; exits 1 if any check failed.\n");
      return 0;
    }
    if (!a.empty() && a[0] == '-') throw UsageError{"unknown option " + a};
    dirs.push_back(a);
  }
  if (dirs.empty()) throw UsageError{"no case folder given"};
  int passed = 0, failed = 0, skipped = 0;
  for (const auto& d : dirs) {
    tools::ParityReport r = tools::run_parity_case(d, [](const tools::ParityCheck& c) {
      std::printf("%s\n", tools::format_check(c).c_str());
      std::fflush(stdout);
    });
    passed += r.passed;
    failed += r.failed;
    skipped += r.skipped;
  }
  if (skipped) std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  else std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

Registrar reg({"parity", "compare adapters against PEFT 0.21 golden cases", run_parity});

}  // namespace
}  // namespace peft::cli
