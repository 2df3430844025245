// Parity against the PEFT goldens (tests/data/peft/<case>/, format in
// GOLDENS_README.md): rebuild the host model, inject the recorded adapters,
// load their weights and compare everything the case records. Used by
// `peft parity` and by tests/test_adapters.cpp.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "runtime/dtype.h"

namespace peft::tools {

struct ParityCheck {
  enum class Status { pass, fail, skip };
  std::string case_name;
  std::string check;
  Status status = Status::pass;
  double max_abs_err = 0.0;
  std::string detail;  // reason for a skip, first mismatch for a failure
};

struct ParityReport {
  std::vector<ParityCheck> checks;
  int passed = 0, failed = 0, skipped = 0;
  void add(ParityCheck c);
};

// max|a-b| <= atol + rtol*max|b|, the goldens' tolerance.
struct ParityTolerance {
  double atol = 1e-5;
  double rtol = 1e-4;
};

// Runs every supported check of one case folder. `on_check` is called as each
// check finishes (for streaming output). Never throws for a failing case: an
// exception becomes a FAIL line.
// Cases on Hugging Face hosts ("host": "hf") load the case's model/ folder, or `model_dir`
// when given (cases that name a model_source instead of carrying model/).
// `device` runs the output, gradient, mixed-batch and training checks of the PEFT cases
// there (inputs and model moved; everything else, and the hf_ / tokenizer cases, on the CPU).
ParityReport run_parity_case(const std::string& case_dir, const std::function<void(const ParityCheck&)>& on_check = {},
                             const ParityTolerance& tol = {}, const std::string& model_dir = "",
                             Device device = Device::cpu);

// "PASS case check 1.2e-07" / "FAIL case check 3.0e-02 (detail)" / "SKIP case check (reason)".
std::string format_check(const ParityCheck& c);

}  // namespace peft::tools
