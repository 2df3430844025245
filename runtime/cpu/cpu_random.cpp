// CpuBackend::random: uniform, normal (Box-Muller) and bernoulli values from Philox
// blocks of four, so each element depends only on (seed, counter, index).
#include <cmath>

#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/dtype_dispatch.h"
#include "runtime/cpu/loops.h"
#include "runtime/generator.h"

namespace peft::cpu {

void CpuBackend::random(RandomKind k, Tensor& out, double a, double b, uint64_t seed, uint64_t counter) {
  const int64_t n = out.numel();
  const int64_t blocks = (n + 3) / 4;
  dispatch_float(out.dtype(), "random", [&](auto tag) {
    using T = decltype(tag);
    T* op = out.data_ptr<T>();
    const int nt = cpu::num_threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      uint32_t w[4];
      philox4x32(seed, counter + uint64_t(blk), w);
      double u[4];
      for (int j = 0; j < 4; ++j) u[j] = (double(w[j] >> 8) + 0.5) * (1.0 / 16777216.0);
      double v[4];
      if (k == RandomKind::normal) {
        for (int j = 0; j < 4; j += 2) {
          double rad = std::sqrt(-2.0 * std::log(u[j]));
          v[j] = a + b * rad * std::cos(6.283185307179586 * u[j + 1]);
          v[j + 1] = a + b * rad * std::sin(6.283185307179586 * u[j + 1]);
        }
      } else if (k == RandomKind::uniform) {
        for (int j = 0; j < 4; ++j) v[j] = a + (b - a) * (double(w[j] >> 8) * (1.0 / 16777216.0));
      } else {
        for (int j = 0; j < 4; ++j) v[j] = u[j] < a ? 1.0 : 0.0;
      }
      for (int j = 0; j < 4; ++j) {
        int64_t i = blk * 4 + j;
        if (i < n) op[i] = T(v[j]);
      }
    }
  });
}

}  // namespace peft::cpu
