// The fused kernels of quantized matrix products, compiled once per ISA (runtime/meson.build
// builds this file with -DPEFT_QUANT_ISA=generic, avx2 and avx512vnni and the matching -m
// flags; quant_blocks.h's best_kernels() picks one at load time). As in ggml, activations are
// quantized per block (q8_0, q8_1 or q8_K, the x86 rounding of ggml-cpu's quantize_row_*)
// and the dot products run in integers, one float scale per block; the SIMD paths follow
// ggml-cpu/arch/x86/quants.c, so results match llama.cpp's up to float summation order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "runtime/cpu/quant_blocks.h"
#include "runtime/half.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef PEFT_QUANT_ISA
#error "build with -DPEFT_QUANT_ISA=<namespace>"
#endif

namespace peft::quant::PEFT_QUANT_ISA {
namespace {

inline float h2f(uint16_t h) { return f16_table[h]; }
inline uint16_t f2h(float f) { return float_to_f16(f); }

// ---------------------------------------------------------------- activation quantizers --
// q8_0 / q8_1: d = amax / 127, q = round-half-even(x · 127 / amax) (ggml-cpu's AVX path;
// its scalar reference rounds half away from zero); q8_1 also keeps s = d · Σq.
template <bool with_sum>
void quantize_q8_blocks(const float* x, void* vy, int64_t k) {
  const int64_t nb = k / QK;
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float amax = 0.f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    int8_t* qs;
    if constexpr (with_sum) {
      auto* y = static_cast<block_q8_1*>(vy) + i;
      y->d = f2h(d);
      qs = y->qs;
    } else {
      auto* y = static_cast<block_q8_0*>(vy) + i;
      y->d = f2h(d);
      qs = y->qs;
    }
    int sum = 0;
    for (int j = 0; j < QK; ++j) {
      const int q = int(std::nearbyint(x[j] * id));  // the default rounding mode: half to even
      qs[j] = int8_t(q);
      sum += q;
    }
    if constexpr (with_sum) (static_cast<block_q8_1*>(vy) + i)->s = f2h(d * float(sum));
  }
}
void quantize_q8_0(const float* x, void* y, int64_t k) { quantize_q8_blocks<false>(x, y, k); }
void quantize_q8_1(const float* x, void* y, int64_t k) { quantize_q8_blocks<true>(x, y, k); }

// ggml's nearest_int: round half to even through the float mantissa.
inline int nearest_int(float f) {
  float v = f + 12582912.f;
  int i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// quantize_row_q8_K_ref: scale by -127 / (the value of largest magnitude), sums per 16.
void quantize_q8_K(const float* x, void* vy, int64_t k) {
  auto* y = static_cast<block_q8_K*>(vy);
  const int64_t nb = k / QK_K;
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float max = 0, amax = 0;
    for (int j = 0; j < QK_K; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) amax = ax, max = x[j];
    }
    if (!amax) {
      y[i].d = 0;
      std::memset(y[i].qs, 0, QK_K);
      std::memset(y[i].bsums, 0, sizeof(y[i].bsums));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < QK_K; ++j) y[i].qs[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
    for (int j = 0; j < QK_K / 16; ++j) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += y[i].qs[j * 16 + l];
      y[i].bsums[j] = int16_t(s);
    }
    y[i].d = 1 / iscale;
  }
}

// ------------------------------------------------------------------- SIMD helpers (x86) --
#if defined(__AVX2__)
inline float hsum_float_8(__m256 x) {
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}
// 32 nibbles -> 32 bytes in [0, 15]: the low nibbles first, then the high ones
inline __m256i bytes_from_nibbles_32(const uint8_t* p) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(_mm256_set1_epi8(0xF), b);
}
// 32 bits -> 32 bytes of 0x00 / 0xFF
inline __m256i bytes_from_bits_32(const uint8_t* p) {
  uint32_t x32;
  std::memcpy(&x32, p, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(x32)), shuf);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}
// unsigned bytes · signed bytes, summed in groups of four, as floats
inline __m256 mul_sum_us8_pairs_float(__m256i ax, __m256i sy) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy));
#elif defined(__AVXVNNI__)
  return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sy));
#else
  const __m256i dot = _mm256_maddubs_epi16(ax, sy);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot));
#endif
}
inline __m256 mul_sum_i8_pairs_float(__m256i x, __m256i y) {
  return mul_sum_us8_pairs_float(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}
#endif

// ------------------------------------------------------------------------ dot products --
// Each takes one weight row and nx activation rows; the weight block is unpacked once and
// used for every activation row (the prompt-processing case), as ggml does per row pair.

#define PEFT_XQ(T, j) reinterpret_cast<const T*>(static_cast<const char*>(xq) + size_t(j) * xq_stride)

#if defined(__AVX2__)
// The frame of the 32-value formats' dot products: NX activation rows at compile time (the
// accumulators stay in registers), one float chain per row in block order as ggml's vec_dot,
// the per-block work in `block(b, acc, mins)`; with_mins adds the q4_1 / q5_1 min terms.
template <int NX, bool with_mins, class Block>
inline __attribute__((always_inline)) void rows_frame(int64_t nb, float* out, Block&& block) {
  __m256 acc[NX];
  float mins[NX] = {};
  for (int j = 0; j < NX; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) block(b, acc, mins);
  for (int j = 0; j < NX; ++j) out[j] = with_mins ? hsum_float_8(acc[j]) + mins[j] : hsum_float_8(acc[j]);
}
// Runs f(std::integral_constant<int, NX>) for nx in 1..4.
template <class F>
inline void with_rows(int nx, F&& f) {
  switch (nx) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}
#endif

void dot_q4_0(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q4_0*>(vw);
  const int64_t nb = k / QK;
#if defined(__AVX2__)
  with_rows(nx, [&](auto rows) {
    constexpr int NX = decltype(rows)::value;
    rows_frame<NX, false>(nb, out, [&](int64_t b, __m256* a, float* sm) {
      (void)sm;
      const float dw = h2f(w[b].d);
      const __m256i qx = _mm256_sub_epi8(bytes_from_nibbles_32(w[b].qs), _mm256_set1_epi8(8));
      for (int j = 0; j < NX; ++j) {
        const block_q8_0& y = PEFT_XQ(block_q8_0, j)[b];
        const __m256 d = _mm256_set1_ps(dw * h2f(y.d));
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y.qs));
        a[j] = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), a[j]);
      }
    });
  });
#else
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_0, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 16; ++l) {
        s0 += ((w[b].qs[l] & 0x0F) - 8) * y[b].qs[l];
        s1 += ((w[b].qs[l] >> 4) - 8) * y[b].qs[l + 16];
      }
      sumf += float(s0 + s1) * h2f(w[b].d) * h2f(y[b].d);
    }
    out[j] = sumf;
  }
#endif
}

void dot_q4_1(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q4_1*>(vw);
  const int64_t nb = k / QK;
#if defined(__AVX2__)
  with_rows(nx, [&](auto rows) {
    constexpr int NX = decltype(rows)::value;
    rows_frame<NX, true>(nb, out, [&](int64_t b, __m256* a, float* sm) {
      (void)sm;
      const float dw = h2f(w[b].d), mw = h2f(w[b].m);
      const __m256i qx = bytes_from_nibbles_32(w[b].qs);
      for (int j = 0; j < NX; ++j) {
        const block_q8_1& y = PEFT_XQ(block_q8_1, j)[b];
        sm[j] += mw * h2f(y.s);
        const __m256 d = _mm256_set1_ps(dw * h2f(y.d));
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y.qs));
        a[j] = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), a[j]);
      }
    });
  });
#else
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_1, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 16; ++l) {
        s0 += (w[b].qs[l] & 0x0F) * y[b].qs[l];
        s1 += (w[b].qs[l] >> 4) * y[b].qs[l + 16];
      }
      sumf += (h2f(w[b].d) * h2f(y[b].d)) * float(s0 + s1) + h2f(w[b].m) * h2f(y[b].s);
    }
    out[j] = sumf;
  }
#endif
}

// The 5th bit of value l of a q5 block.
inline int q5_high(uint32_t qh, int l) { return int((qh >> l) & 1u) << 4; }

void dot_q5_0(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q5_0*>(vw);
  const int64_t nb = k / QK;
#if defined(__AVX2__)
  with_rows(nx, [&](auto rows) {
    constexpr int NX = decltype(rows)::value;
    rows_frame<NX, false>(nb, out, [&](int64_t b, __m256* a, float* sm) {
      (void)sm;
      const float dw = h2f(w[b].d);
      __m256i qx = bytes_from_nibbles_32(w[b].qs);
      const __m256i hi = _mm256_andnot_si256(bytes_from_bits_32(w[b].qh), _mm256_set1_epi8(char(0xF0)));
      qx = _mm256_or_si256(qx, hi);  // value - 16 as a signed byte
      for (int j = 0; j < NX; ++j) {
        const block_q8_0& y = PEFT_XQ(block_q8_0, j)[b];
        const __m256 d = _mm256_set1_ps(dw * h2f(y.d));
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y.qs));
        a[j] = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), a[j]);
      }
    });
  });
#else
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_0, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      uint32_t qh;
      std::memcpy(&qh, w[b].qh, 4);
      int s = 0;
      for (int l = 0; l < 16; ++l) {
        s += (((w[b].qs[l] & 0x0F) | q5_high(qh, l)) - 16) * y[b].qs[l];
        s += (((w[b].qs[l] >> 4) | q5_high(qh, l + 16)) - 16) * y[b].qs[l + 16];
      }
      sumf += float(s) * h2f(w[b].d) * h2f(y[b].d);
    }
    out[j] = sumf;
  }
#endif
}

void dot_q5_1(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q5_1*>(vw);
  const int64_t nb = k / QK;
#if defined(__AVX2__)
  with_rows(nx, [&](auto rows) {
    constexpr int NX = decltype(rows)::value;
    rows_frame<NX, true>(nb, out, [&](int64_t b, __m256* a, float* sm) {
      (void)sm;
      const float dw = h2f(w[b].d), mw = h2f(w[b].m);
      __m256i qx = bytes_from_nibbles_32(w[b].qs);
      qx = _mm256_or_si256(qx, _mm256_and_si256(bytes_from_bits_32(w[b].qh), _mm256_set1_epi8(0x10)));
      const __m256 dx = _mm256_set1_ps(dw);
      for (int j = 0; j < NX; ++j) {
        const block_q8_1& y = PEFT_XQ(block_q8_1, j)[b];
        sm[j] += mw * h2f(y.s);
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y.qs));
        a[j] = _mm256_fmadd_ps(mul_sum_us8_pairs_float(qx, qy), _mm256_mul_ps(dx, _mm256_set1_ps(h2f(y.d))), a[j]);
      }
    });
  });
#else
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_1, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      uint32_t qh;
      std::memcpy(&qh, w[b].qh, 4);
      int s = 0;
      for (int l = 0; l < 16; ++l) {
        s += ((w[b].qs[l] & 0x0F) | q5_high(qh, l)) * y[b].qs[l];
        s += ((w[b].qs[l] >> 4) | q5_high(qh, l + 16)) * y[b].qs[l + 16];
      }
      sumf += (h2f(w[b].d) * h2f(y[b].d)) * float(s) + h2f(w[b].m) * h2f(y[b].s);
    }
    out[j] = sumf;
  }
#endif
}

void dot_q8_0(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q8_0*>(vw);
  const int64_t nb = k / QK;
#if defined(__AVX2__)
  with_rows(nx, [&](auto rows) {
    constexpr int NX = decltype(rows)::value;
    rows_frame<NX, false>(nb, out, [&](int64_t b, __m256* a, float* sm) {
      (void)sm;
      const float dw = h2f(w[b].d);
      const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs));
      for (int j = 0; j < NX; ++j) {
        const block_q8_0& y = PEFT_XQ(block_q8_0, j)[b];
        const __m256 d = _mm256_set1_ps(dw * h2f(y.d));
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y.qs));
        a[j] = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), a[j]);
      }
    });
  });
#else
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_0, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int s = 0;
      for (int l = 0; l < QK; ++l) s += w[b].qs[l] * y[b].qs[l];
      sumf += float(s) * (h2f(w[b].d) * h2f(y[b].d));
    }
    out[j] = sumf;
  }
#endif
}

// k-quants: the six-bit scales and mins of q4_K / q5_K (get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, int& d, int& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Integer dot of 32 unsigned weight values with 32 activation bytes.
inline int dot32(const uint8_t* a, const int8_t* q8) {
  int s = 0;
  for (int l = 0; l < 32; ++l) s += int(a[l]) * q8[l];
  return s;
}

// A q4_K / q5_K super-block's sum once its 256 values are unpacked: 6-bit scales times the
// integer sub-block dots, minus the mins times the activations' sums.
inline float kquant_minmax_sum(const uint8_t* a, const uint8_t* scales, uint16_t d, uint16_t dmin, const block_q8_K& y) {
  int sumi = 0, summ = 0;
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    scale_min_k4(s, scales, sc, m);
    sumi += sc * dot32(a + 32 * s, y.qs + 32 * s);
    summ += m * (y.bsums[2 * s] + y.bsums[2 * s + 1]);
  }
  return h2f(d) * y.d * float(sumi) - h2f(dmin) * y.d * float(summ);
}

[[maybe_unused]] void dot_q4_K_scalar(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q4_K*>(vw);
  const int64_t nb = k / QK_K;
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_K, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t a[QK_K];
      const uint8_t* q4 = w[b].qs;
      for (int g = 0; g < 4; ++g, q4 += 32)
        for (int l = 0; l < 32; ++l) a[g * 64 + l] = q4[l] & 0xF, a[g * 64 + 32 + l] = q4[l] >> 4;
      sumf += kquant_minmax_sum(a, w[b].scales, w[b].d, w[b].dmin, y[b]);
    }
    out[j] = sumf;
  }
}

[[maybe_unused]] void dot_q5_K_scalar(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q5_K*>(vw);
  const int64_t nb = k / QK_K;
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_K, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t a[QK_K];
      const uint8_t* ql = w[b].qs;
      const uint8_t* qh = w[b].qh;
      uint8_t u1 = 1, u2 = 2;
      for (int g = 0; g < 4; ++g, ql += 32, u1 <<= 2, u2 <<= 2)
        for (int l = 0; l < 32; ++l) {
          a[g * 64 + l] = uint8_t((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0));
          a[g * 64 + 32 + l] = uint8_t((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0));
        }
      sumf += kquant_minmax_sum(a, w[b].scales, w[b].d, w[b].dmin, y[b]);
    }
    out[j] = sumf;
  }
}

[[maybe_unused]] void dot_q6_K_scalar(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q6_K*>(vw);
  const int64_t nb = k / QK_K;
  for (int j = 0; j < nx; ++j) {
    const auto* y = PEFT_XQ(block_q8_K, j);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int8_t a[QK_K];
      const uint8_t* ql = w[b].ql;
      const uint8_t* qh = w[b].qh;
      for (int n = 0; n < QK_K; n += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; ++l) {
          a[n + l] = int8_t(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
          a[n + l + 32] = int8_t(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
          a[n + l + 64] = int8_t(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
          a[n + l + 96] = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
      int sumi = 0;
      for (int s = 0; s < 16; ++s) {
        int d = 0;
        for (int l = 0; l < 16; ++l) d += a[16 * s + l] * y[b].qs[16 * s + l];
        sumi += w[b].scales[s] * d;
      }
      sumf += h2f(w[b].d) * y[b].d * float(sumi);
    }
    out[j] = sumf;
  }
}

// k-quants on AVX2: the integer dot of each 32-value sub-block (u8 x s8 pairs in maddubs, never
// saturating: 63·127·2 < 2^15) times its 6-bit scale, summed in int32 lanes; the mins (q4_K,
// q5_K) and q6_K's -32 offset through the activations' per-16 sums (bsums). Exact integers;
// the float sum runs in another order than ggml's (results equal to float rounding).
#if defined(__AVX2__)
inline int32_t hsum_i32_8(__m256i a) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}
// maddubs of 32 unsigned bytes with 32 activation bytes, pairs then times the scale of each
// 16-byte half (int16 lanes 0-7: scale a, 8-15: scale b), as 8 int32 sums
inline __m256i scaled_dot32(__m256i u, __m256i q8, int16_t a, int16_t b) {
  const __m256i p = _mm256_maddubs_epi16(u, q8);
  const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a));
  return _mm256_madd_epi16(p, sc);
}

// q4_K (Block = block_q4_K) and q5_K (block_q5_K: the 5th bit of each value from qh).
template <class Block>
void dot_q45_K_avx2(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  constexpr bool five_bits = std::is_same_v<Block, block_q5_K>;
  const auto* w = static_cast<const Block*>(vw);
  const int64_t nb = k / QK_K;
  const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
  for (int j = 0; j < nx; ++j) {
    const auto* y = reinterpret_cast<const block_q8_K*>(static_cast<const char*>(xq) + size_t(j) * xq_stride);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int sc[8], m[8];
      for (int s = 0; s < 8; ++s) scale_min_k4(s, w[b].scales, sc[s], m[s]);
      __m256i qh = _mm256_setzero_si256();
      if constexpr (five_bits) qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qh));
      __m256i sumi = _mm256_setzero_si256();
      for (int g = 0; g < 4; ++g) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs + 32 * g));
        __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
        if constexpr (five_bits) {  // qh bits 2g (low nibbles) and 2g+1 (high nibbles)
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g + 1), one), 4));
        }
        const __m256i q8l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b].qs + 64 * g));
        const __m256i q8h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b].qs + 64 * g + 32));
        sumi = _mm256_add_epi32(sumi, scaled_dot32(lo, q8l, int16_t(sc[2 * g]), int16_t(sc[2 * g])));
        sumi = _mm256_add_epi32(sumi, scaled_dot32(hi, q8h, int16_t(sc[2 * g + 1]), int16_t(sc[2 * g + 1])));
      }
      int summ = 0;
      for (int s = 0; s < 8; ++s) summ += m[s] * (y[b].bsums[2 * s] + y[b].bsums[2 * s + 1]);
      sumf += h2f(w[b].d) * y[b].d * float(hsum_i32_8(sumi)) - h2f(w[b].dmin) * y[b].d * float(summ);
    }
    out[j] = sumf;
  }
}

void dot_q6_K_avx2(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
  const auto* w = static_cast<const block_q6_K*>(vw);
  const int64_t nb = k / QK_K;
  const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
  for (int j = 0; j < nx; ++j) {
    const auto* y = reinterpret_cast<const block_q8_K*>(static_cast<const char*>(xq) + size_t(j) * xq_stride);
    float sumf = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* sc = w[b].scales;
      __m256i sumi = _mm256_setzero_si256();
      for (int half = 0; half < 2; ++half) {
        const uint8_t* ql = w[b].ql + 64 * half;
        const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
        const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qh + 32 * half));
        // unsigned 6-bit values (the -32 comes back through bsums below), as dequantize_row
        const __m256i u[4] = {
            _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)),
            _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4))};
        for (int q = 0; q < 4; ++q) {
          const __m256i q8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[b].qs + 128 * half + 32 * q));
          const int s0 = 8 * half + 2 * q;
          sumi = _mm256_add_epi32(sumi, scaled_dot32(u[q], q8, int16_t(sc[s0]), int16_t(sc[s0 + 1])));
        }
      }
      int offset = 0;  // 32 · Σ_groups scale · Σ q8
      for (int s = 0; s < 16; ++s) offset += int(sc[s]) * y[b].bsums[s];
      sumf += h2f(w[b].d) * y[b].d * float(hsum_i32_8(sumi) - 32 * offset);
    }
    out[j] = sumf;
  }
}
#endif

void dot_q4_K(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
#if defined(__AVX2__)
  dot_q45_K_avx2<block_q4_K>(k, vw, xq, xq_stride, nx, out);
#else
  dot_q4_K_scalar(k, vw, xq, xq_stride, nx, out);
#endif
}
void dot_q5_K(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
#if defined(__AVX2__)
  dot_q45_K_avx2<block_q5_K>(k, vw, xq, xq_stride, nx, out);
#else
  dot_q5_K_scalar(k, vw, xq, xq_stride, nx, out);
#endif
}
void dot_q6_K(int64_t k, const void* vw, const void* xq, size_t xq_stride, int nx, float* out) {
#if defined(__AVX2__)
  dot_q6_K_avx2(k, vw, xq, xq_stride, nx, out);
#else
  dot_q6_K_scalar(k, vw, xq, xq_stride, nx, out);
#endif
}

#undef PEFT_XQ

// ----------------------------------------------------------------- bulk dequantization --
// The reference formulas (cpu_quant.cpp) with the same float operations, 8 values at a time:
// q4_0 (q - 8)·d, q4_1 q·d + m, q8_0 q·d.
#if defined(__AVX2__)
inline void store_nibble_block(const uint8_t* qs, __m256 d, const __m256* m, int offset, float* y) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i lo = _mm_and_si128(t, _mm_set1_epi8(0xF)), hi = _mm_and_si128(_mm_srli_epi16(t, 4), _mm_set1_epi8(0xF));
  const __m128i parts[2] = {lo, hi};
  for (int h = 0; h < 2; ++h)
    for (int q = 0; q < 2; ++q) {
      const __m128i bytes = q == 0 ? parts[h] : _mm_srli_si128(parts[h], 8);
      __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_set1_epi32(offset)));
      v = _mm256_mul_ps(v, d);
      if (m) v = _mm256_add_ps(v, *m);
      _mm256_storeu_ps(y + h * 16 + q * 8, v);
    }
}
void deq_q4_0(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_0*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) store_nibble_block(x[i].qs, _mm256_set1_ps(h2f(x[i].d)), nullptr, 8, y);
}
void deq_q4_1(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_1*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const __m256 m = _mm256_set1_ps(h2f(x[i].m));
    store_nibble_block(x[i].qs, _mm256_set1_ps(h2f(x[i].d)), &m, 0, y);
  }
}
// q5_0 ((q | 5th bit) - 16)·d and q5_1 (q | 5th bit)·d + m: the nibbles and bits as the dot
// products unpack them, then the reference's float products
template <bool with_min>
void deq_q5(const uint8_t* qs, const uint8_t* qh, float d, float m, float* y) {
  const __m256i q = _mm256_or_si256(bytes_from_nibbles_32(qs), _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10)));
  alignas(32) uint8_t bytes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), q);
  const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
  for (int part = 0; part < 4; ++part) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + 8 * part)));
    if constexpr (!with_min) v = _mm256_sub_epi32(v, _mm256_set1_epi32(16));
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), vd);
    if constexpr (with_min) f = _mm256_add_ps(f, vm);
    _mm256_storeu_ps(y + 8 * part, f);
  }
}
void deq_q5_0(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q5_0*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) deq_q5<false>(x[i].qs, x[i].qh, h2f(x[i].d), 0.f, y);
}
void deq_q5_1(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q5_1*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) deq_q5<true>(x[i].qs, x[i].qh, h2f(x[i].d), h2f(x[i].m), y);
}

// 32 unsigned bytes as floats: y = a·float(u) - b (q4_K, q5_K: d·sc and dmin·m, as the reference)
inline void store_u8x32_affine(__m256i u, float a, float b, float* y) {
  const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  alignas(32) uint8_t bytes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), u);
  for (int q = 0; q < 4; ++q) {
    const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + 8 * q))));
    _mm256_storeu_ps(y + 8 * q, _mm256_sub_ps(_mm256_mul_ps(va, f), vb));
  }
}
void deq_q4_K(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_K*>(src);
  const __m256i m4 = _mm256_set1_epi8(0xF);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = h2f(x[i].d), min = h2f(x[i].dmin);
    for (int g = 0; g < 4; ++g, y += 64) {
      int sc0, m0, sc1, m1;
      scale_min_k4(2 * g, x[i].scales, sc0, m0);
      scale_min_k4(2 * g + 1, x[i].scales, sc1, m1);
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs + 32 * g));
      store_u8x32_affine(_mm256_and_si256(bits, m4), d * float(sc0), min * float(m0), y);
      store_u8x32_affine(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), d * float(sc1), min * float(m1), y + 32);
    }
  }
}
void deq_q6_K(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q6_K*>(src);
  const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = h2f(x[i].d);
    for (int half = 0; half < 2; ++half, y += 128) {
      const uint8_t* ql = x[i].ql + 64 * half;
      const int8_t* sc = x[i].scales + 8 * half;
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qh + 32 * half));
      const __m256i u[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4))};
      for (int q = 0; q < 4; ++q) {
        alignas(32) uint8_t bytes[32];
        _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), u[q]);
        for (int part = 0; part < 4; ++part) {
          // reference: d·sc·(q - 32), evaluated as (d·sc)·float(q - 32)
          const __m256 ds = _mm256_set1_ps(d * float(sc[2 * q + part / 2]));
          const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + 8 * part))),
                                             _mm256_set1_epi32(32));
          _mm256_storeu_ps(y + 32 * q + 8 * part, _mm256_mul_ps(ds, _mm256_cvtepi32_ps(v)));
        }
      }
    }
  }
}
void deq_q8_0(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q8_0*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const __m256 d = _mm256_set1_ps(h2f(x[i].d));
    for (int q = 0; q < 4; ++q) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[i].qs + 8 * q));
      _mm256_storeu_ps(y + 8 * q, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), d));
    }
  }
}
#endif

}  // namespace

#define PEFT_STR2(x) #x
#define PEFT_STR(x) PEFT_STR2(x)

const KernelTable& kernels() {
  static const KernelTable table{
      PEFT_STR(PEFT_QUANT_ISA),
      {quantize_q8_0, quantize_q8_1, quantize_q8_K},
      {dot_q4_0, dot_q4_1, dot_q5_0, dot_q5_1, dot_q8_0, dot_q4_K, dot_q5_K, dot_q6_K},
#if defined(__AVX2__)
      {deq_q4_0, deq_q4_1, deq_q5_0, deq_q5_1, deq_q8_0, deq_q4_K, nullptr, deq_q6_K}};
#else
      {}};
#endif
  return table;
}

}  // namespace peft::quant::PEFT_QUANT_ISA
