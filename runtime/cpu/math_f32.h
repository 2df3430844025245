// Scalar float32 math shared by the generic strided kernels (cpu_backend.cpp)
// and the contiguous ISA-specific loops (vec_f32.cpp): one definition, so both
// give the same bits.
#pragma once
#include <bit>
#include <cstdint>

namespace peft::cpu {

// float32 tanh, vectorisable (libm's tanhf is a scalar call, ~11 ns/element, and was a
// third of the fine-tuning step; this is ~2.2 ns). Cephes tanhf: x + x·z·P(z) below
// |x| = 0.625, else 1 - 2/(e^{2|x|} + 1) with Cephes expf; max relative error 1.4e-7 in
// [-20, 20]. Selects are bit masks so GCC vectorises it without -fno-trapping-math.
inline float tanh_f32(float x) {
  const uint32_t xb = std::bit_cast<uint32_t>(x);
  const uint32_t sign = xb & 0x80000000u;
  const float ax = std::bit_cast<float>(xb & 0x7fffffffu);
  const float z = x * x;
  const float p = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
                   3.33332819422e-1f) * z * x + x;
  const uint32_t big = -uint32_t(ax > 44.0f);  // e^88 is the largest finite float
  const float v =
      2.0f * std::bit_cast<float>((std::bit_cast<uint32_t>(ax) & ~big) | (std::bit_cast<uint32_t>(44.0f) & big));
  const int32_t i = int32_t(v * 1.44269504088896341f + 0.5f);  // v >= 0: truncation = floor
  const float fx = float(i);
  const float r = v - fx * 0.693359375f - fx * -2.12194440e-4f;
  float e = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
              1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r + 1.0f;
  e *= std::bit_cast<float>((uint32_t(i) + 127u) << 23);
  const uint32_t t = std::bit_cast<uint32_t>(1.0f - 2.0f / (e + 1.0f)) | sign;
  const uint32_t small = -uint32_t(ax < 0.625f);
  const uint32_t nan = -uint32_t(x != x);
  uint32_t res = ((std::bit_cast<uint32_t>(p) | sign) & small) | (t & ~small);
  res = (res & ~nan) | (xb & nan);
  return std::bit_cast<float>(res);
}

}  // namespace peft::cpu
