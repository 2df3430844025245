// Scalar float32 math shared by the generic strided kernels (cpu_elementwise.cpp, cpu_attention.cpp)
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
  // e^88 is the largest finite float; NaN counts as big too, so v stays finite and the
  // integer conversion below is defined (the NaN mask at the end restores NaN)
  const uint32_t big = -uint32_t(!(ax <= 44.0f));
  const float v =
      2.0f * std::bit_cast<float>((std::bit_cast<uint32_t>(ax) & ~big) | (std::bit_cast<uint32_t>(44.0f) & big));
  // exp_f32's core, inlined: v is in [0, 88], so none of its range handling is needed
  // (calling exp_f32 here gives the same bits but made tanh 1.6x slower)
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

// float32 e^x, vectorisable (selects are bit masks or plain ternaries on floats).
// Cephes expf: x = n·ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial, 2^n from
// the exponent bits; max relative error 1e-7 where the result is a normal float.
// Results below FLT_MIN (x < -87.3365) flush to 0 (absolute error < 1.2e-38);
// x > 88.7228 gives +inf; NaN stays NaN.
inline float exp_f32(float x) {
  const uint32_t xb = std::bit_cast<uint32_t>(x);
  const uint32_t nan = -uint32_t(x != x);
  const uint32_t tiny = -uint32_t(x < -87.33654f);
  const uint32_t huge = -uint32_t(x > 88.72283f);
  // Above 88.376, n = 128 has no float exponent: scale by 2^(n-1) and then by 2.
  const int32_t high = int32_t(x > 88.37626f);
  // the clamp as bit masks (GCC does not if-convert float ternaries under -ftrapping-math);
  // NaN is replaced by 0 so that the integer conversion below is defined
  const uint32_t keep = ~(tiny | huge | nan);
  const float xc = std::bit_cast<float>((xb & keep) | (std::bit_cast<uint32_t>(-87.33654f) & tiny) |
                                        (std::bit_cast<uint32_t>(88.72283f) & huge));
  const float t = xc * 1.44269504088896341f + 0.5f;
  int32_t i = int32_t(t);
  i -= int32_t(float(i) > t);  // floor for negative t
  const float fx = float(i);
  const float r = xc - fx * 0.693359375f - fx * -2.12194440e-4f;
  float e = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
              1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r + 1.0f;
  e *= std::bit_cast<float>(uint32_t(i + 127 - high) << 23);
  e *= float(1 + high);
  uint32_t res = std::bit_cast<uint32_t>(e) & ~tiny;
  res = (res & ~huge) | (0x7f800000u & huge);
  res = (res & ~nan) | (xb & nan);
  return std::bit_cast<float>(res);
}

// float32 erf, vectorisable (libm's erff is a scalar call, ~13 ns/element, and was 13% of
// the MiniLM fine-tuning step through GELU; this is ~2.6 ns). Two minimax polynomials (after
// N. Juffa's erff): t + t·P(x²) for |x| <= 0.927734375, else 1 - e^{Q(|x|)} with exp_f32 and
// |x| clamped at 4 (erf(4) rounds to 1); both are computed and selected by bit masks. Max
// error 1.17 ulp against erf in double, over every 7th float (libm's erff: 0.90).
inline float erf_f32(float x) {
  const uint32_t xb = std::bit_cast<uint32_t>(x);
  const float t = std::bit_cast<float>(xb & 0x7fffffffu);
  const float s = x * x;
  float p = -5.96761703e-4f * s + 4.99119423e-3f;
  p = p * s - 2.67681349e-2f;
  p = p * s + 1.12819925e-1f;
  p = p * s - 3.76125336e-1f;
  p = p * s + 1.28379166e-1f;
  p = p * t + t;
  // NaN counts as over, so the clamped value is finite (the NaN mask at the end restores it)
  const uint32_t over = -uint32_t(!(t <= 4.0f));
  const float tc = std::bit_cast<float>((std::bit_cast<uint32_t>(t) & ~over) | (std::bit_cast<uint32_t>(4.0f) & over));
  float r = -1.72853470e-5f * tc + 3.83197126e-4f;
  const float u = -3.88396438e-3f * tc + 2.42546219e-2f;
  r = r * (tc * tc) + u;
  r = r * tc - 1.06777877e-1f;
  r = r * tc - 6.34846687e-1f;
  r = r * tc - 1.28717512e-1f;
  r = r * tc - tc;
  const float q = 1.0f - exp_f32(r);
  const uint32_t small = -uint32_t(t <= 0.927734375f);
  uint32_t res = ((std::bit_cast<uint32_t>(p) & small) | (std::bit_cast<uint32_t>(q) & ~small)) | (xb & 0x80000000u);
  const uint32_t nan = -uint32_t(x != x);
  res = (res & ~nan) | (xb & nan);
  return std::bit_cast<float>(res);
}

// GELU, exact form: 0.5·x·(1 + erf(x/√2)), on erf_f32.
inline float gelu_f32(float x) { return 0.5f * x * (1.0f + erf_f32(x * 0.70710678118654752f)); }

// g·d/dx gelu(x) = g·(Φ(x) + x·φ(x)): Φ(x) = 0.5·(1 + erf(x/√2)), φ(x) = e^{-x²/2}/√(2π).
inline float gelu_grad_f32(float g, float x) {
  const float cdf = 0.5f * (1.0f + erf_f32(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * exp_f32(-0.5f * (x * x));
  return g * (cdf + x * pdf);
}

// GELU, tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), on tanh_f32 (vectorisable).
inline float gelu_tanh_f32(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * (x * x * x));
  return 0.5f * x * (1.0f + tanh_f32(u));
}

// g·d/dx gelu_tanh(x) = g·(0.5·(1 + t) + 0.5·x·(1 - t²)·√(2/π)·(1 + 3·0.044715·x²)), t = tanh(u).
inline float gelu_tanh_grad_f32(float g, float x) {
  const float x2 = x * x;
  const float t = tanh_f32(0.7978845608028654f * (x + 0.044715f * (x2 * x)));
  const float du = 0.7978845608028654f * (1.0f + 0.134145f * x2);
  return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
}

}  // namespace peft::cpu
