// `peft parity CASE_DIR...`: checks this implementation against the PEFT 0.21
// goldens (tests/data/peft/<case>/). One line per check, then a summary;
// exit status 1 if any check failed.
#include <cstdio>

#include "runtime/device.h"
#include "tools/cli.h"
#include "tools/parity.h"

namespace peft::cli {
namespace {

int run_parity(const std::vector<std::string>& args) {
  std::vector<std::string> dirs;
  std::string model_dir;
  Device device = Device::cpu;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: peft parity [--model-dir DIR] [--device cpu|cuda|cuda:N] CASE_DIR...\n"
          "  Rebuilds each golden case (case.json, base.safetensors, adapter_*.safetensors, io.safetensors),\n"
          "  injects its adapters and compares repr, keys, trainable names, init, outputs, gradients,\n"
          "  merged weights, low_cpu_mem_usage loading and training against PEFT 0.21.\n"
          "  Cases on Hugging Face hosts (hf_*) load their model/ folder; --model-dir DIR gives the\n"
          "  checkpoint for a case that names a model_source instead (hf_minilm_lora_real:\n"
          "  scripts/fetch_minilm.sh prints the folder).\n"
          "  --device cuda runs the outputs, gradients, mixed-batch and training checks of the PEFT\n"
          "  cases on the GPU (the rest, and the hf_ cases, stay on the CPU).\n"
          "  Prints PASS/FAIL/SKIP per check; exits 1 if any check failed.\n");
      return 0;
    }
    if (a == "--device") {
      if (i + 1 >= args.size()) throw UsageError{"--device needs cpu, cuda or cuda:N"};
      device = parse_device(args[++i]);
      if (device == Device::meta) throw UsageError{"--device meta has no data to compare; use cpu or cuda"};
      continue;
    }
    if (a == "--model-dir") {
      if (i + 1 >= args.size()) throw UsageError{"--model-dir needs a folder"};
      model_dir = args[++i];
      continue;
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
    }, {}, model_dir, device);
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
