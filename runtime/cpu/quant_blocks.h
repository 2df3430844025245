// Internal: GGML's block formats (ggml-common.h) as plain structs, the activation formats the
// fused kernels quantize to (q8_0, q8_1, q8_K), and the per-ISA kernel table. Not installed.
#pragma once
#include <cstddef>
#include <cstdint>

#include "runtime/dtype.h"

namespace peft::quant {

constexpr int64_t QK = 32;     // values per block of the 32-value formats
constexpr int64_t QK_K = 256;  // values per super-block of the k-quants

// f16 scales are stored as raw uint16_t bits.
struct block_q4_0 { uint16_t d; uint8_t qs[16]; };
struct block_q4_1 { uint16_t d, m; uint8_t qs[16]; };
struct block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q8_0 { uint16_t d; int8_t qs[32]; };
struct block_q8_1 { uint16_t d, s; int8_t qs[32]; };  // s = d * sum(qs)
struct block_q4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct block_q5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
struct block_q8_K { float d; int8_t qs[256]; int16_t bsums[16]; };  // activations of k-quant dots

static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 && sizeof(block_q5_0) == 22 &&
                  sizeof(block_q5_1) == 24 && sizeof(block_q8_0) == 34 && sizeof(block_q8_1) == 36,
              "GGML block layout");
static_assert(sizeof(block_q4_K) == 144 && sizeof(block_q5_K) == 176 && sizeof(block_q6_K) == 210 &&
                  sizeof(block_q8_K) == 292,
              "GGML k-quant block layout");

// The activation format a weight format's dot product pairs with (ggml's vec_dot_type).
enum class ActFormat { q8_0, q8_1, q8_K };
ActFormat act_format(DType weight);
size_t act_row_bytes(ActFormat f, int64_t k);  // bytes of one quantized activation row of k values

// Dot products of one weight row (k values) with `nx` (1..4) quantized activation rows,
// `xq_stride` bytes apart: out[j] = w · x_j.
using DotFn = void (*)(int64_t k, const void* w, const void* xq, size_t xq_stride, int nx, float* out);
using QuantizeFn = void (*)(const float* x, void* y, int64_t k);
// n values of one weight format to float32, bit-equal to dequantize_row (the same IEEE products
// and sums, only vectorized); nullptr: use dequantize_row.
using DequantizeFn = void (*)(const void* src, float* dst, int64_t n);

// One ISA's kernels, indexed by weight dtype (q4_0 .. q6_k) and activation format.
struct KernelTable {
  const char* isa;
  QuantizeFn quantize[3];  // by ActFormat
  DotFn dot[8];            // by DType - q4_0
  DequantizeFn dequantize[8];  // by DType - q4_0
};

namespace generic { const KernelTable& kernels(); }
namespace avx2 { const KernelTable& kernels(); }
namespace avx512vnni { const KernelTable& kernels(); }

// f16 bits -> float for every half value (ggml's ggml_table_f32_f16): a load is cheaper than
// vcvtph2ps on the dot products' critical path. Filled at load time (cpu_quant.cpp).
extern float f16_table[65536];

// The best table this CPU runs (picked once). PEFT_QUANT_ISA=generic|avx2|avx512vnni forces one.
const KernelTable& best_kernels();
// ggml's reference dequantization (dequantize_row_*): n values of `dt` from `src`.
void dequantize_row(DType dt, const void* src, float* dst, int64_t n);
// The same values through the best ISA's kernel where it has one (bulk dequantization).
void dequantize_row_fast(DType dt, const void* src, float* dst, int64_t n);

}  // namespace peft::quant
