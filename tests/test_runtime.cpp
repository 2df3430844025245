#include "runtime/generator.h"
#include "tests/testing.h"

using namespace peft;

TEST_CASE("add broadcasts and backward sums to input shape") {
  Tensor a = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector(std::vector<float>{10, 20, 30}, {3});
  Tensor c = add(a, b);
  CHECK_ALLCLOSE(c, from_vector(std::vector<float>{11, 22, 33, 14, 25, 36}, {2, 3}), 0, 0);
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return add(x[0], x[1]); },
                  (std::vector<Tensor>{a, b}));
}
