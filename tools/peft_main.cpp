#include <cstdio>
#include <string>

#include "runtime/generator.h"
#include "runtime/ops.h"

using namespace peft;

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "demo";
  if (cmd == "demo") {
    Generator g(0);
    Tensor w = randn({4, 3}, g).requires_grad_(true);
    Tensor x = randn({2, 3}, g);
    Tensor y = linear(x, w);
    Tensor loss = mean(mul(y, y));
    loss.backward();
    std::printf("loss %.6f, grad norm %.6f\n", loss.item(), norm(w.grad()).item());
    return 0;
  }
  std::fprintf(stderr, "unknown command %s\n", cmd.c_str());
  return 2;
}
