// `peft demo`: the built-in example the README's first command runs until the
// fine-tuning job lands: a small module, forward, backward, one AdamW step.
#include <cstdio>

#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/cli.h"

namespace peft::cli {
namespace {

int run_demo(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::printf("usage: peft demo\n  Builds a two-layer MLP, runs forward and backward, prints the result.\n");
      return 0;
    }
    throw UsageError{"unknown option " + a};
  }
  Generator g(0);
  Tensor w1 = randn({16, 8}, g).requires_grad_(true);
  Tensor w2 = randn({4, 16}, g).requires_grad_(true);
  Tensor x = randn({32, 8}, g);
  Tensor y = linear(relu(linear(x, w1)), w2);
  Tensor loss = mean(mul(y, y));
  loss.backward();
  std::printf("forward: x %s -> y %s, loss %.6f\n", x.desc().c_str(), y.desc().c_str(), loss.item());
  std::printf("backward: |dL/dW1| = %.6f, |dL/dW2| = %.6f\n", norm(w1.grad()).item(),
              norm(w2.grad()).item());
  return 0;
}

Registrar reg({"demo", "run a small built-in forward/backward example", run_demo});

}  // namespace
}  // namespace peft::cli
