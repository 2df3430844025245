// CpuBackend's kernels for GGML block-quantized weights: ggml's reference dequantization
// (bit-equal to dequantize_row_* and gguf-py), the fused quantized linear (activations
// quantized per block, integer block dot products from quant_kernels.cpp, threads over weight
// rows), the product with the weight itself for backward (dequantized row tiles into sgemm),
// and embedding rows read from quantized storage.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/quant_blocks.h"
#include "runtime/half.h"

namespace peft::quant {

float f16_table[65536];
namespace {
const bool f16_table_ready = [] {
  for (uint32_t h = 0; h < 65536; ++h) f16_table[h] = f16_to_float(uint16_t(h));
  return true;
}();
}  // namespace

namespace {
inline float h2f(uint16_t h) { return f16_to_float(h); }

void deq_q4_0(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_0*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < 16; ++j) {
      const int x0 = (x[i].qs[j] & 0x0F) - 8, x1 = (x[i].qs[j] >> 4) - 8;
      y[j] = float(x0) * d;
      y[j + 16] = float(x1) * d;
    }
  }
}
void deq_q4_1(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_1*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(x[i].d), m = h2f(x[i].m);
    for (int j = 0; j < 16; ++j) {
      const int x0 = x[i].qs[j] & 0x0F, x1 = x[i].qs[j] >> 4;
      y[j] = float(x0) * d + m;
      y[j + 16] = float(x1) * d + m;
    }
  }
}
void deq_q5_0(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q5_0*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(x[i].d);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      const uint8_t xh0 = uint8_t(((qh >> (j + 0)) << 4) & 0x10), xh1 = uint8_t((qh >> (j + 12)) & 0x10);
      const int x0 = ((x[i].qs[j] & 0x0F) | xh0) - 16, x1 = ((x[i].qs[j] >> 4) | xh1) - 16;
      y[j] = float(x0) * d;
      y[j + 16] = float(x1) * d;
    }
  }
}
void deq_q5_1(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q5_1*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(x[i].d), m = h2f(x[i].m);
    uint32_t qh;
    std::memcpy(&qh, x[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      const uint8_t xh0 = uint8_t(((qh >> (j + 0)) << 4) & 0x10), xh1 = uint8_t((qh >> (j + 12)) & 0x10);
      const int x0 = (x[i].qs[j] & 0x0F) | xh0, x1 = (x[i].qs[j] >> 4) | xh1;
      y[j] = float(x0) * d + m;
      y[j + 16] = float(x1) * d + m;
    }
  }
}
void deq_q8_0(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q8_0*>(src);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < QK; ++j) y[j] = float(x[i].qs[j]) * d;
  }
}
void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}
void deq_q4_K(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q4_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* q = x[i].qs;
    const float d = h2f(x[i].d), min = h2f(x[i].dmin);
    int is = 0;
    uint8_t sc, m;
    for (int j = 0; j < QK_K; j += 64) {
      scale_min_k4(is + 0, x[i].scales, sc, m);
      const float d1 = d * float(sc), m1 = min * float(m);
      scale_min_k4(is + 1, x[i].scales, sc, m);
      const float d2 = d * float(sc), m2 = min * float(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}
void deq_q5_K(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q5_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    const float d = h2f(x[i].d), min = h2f(x[i].dmin);
    int is = 0;
    uint8_t sc, m, u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
      scale_min_k4(is + 0, x[i].scales, sc, m);
      const float d1 = d * float(sc), m1 = min * float(m);
      scale_min_k4(is + 1, x[i].scales, sc, m);
      const float d2 = d * float(sc), m2 = min * float(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      ql += 32;
      is += 2;
      u1 = uint8_t(u1 << 2);
      u2 = uint8_t(u2 << 2);
    }
  }
}
void deq_q6_K(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const block_q6_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = h2f(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (int nn = 0; nn < QK_K; nn += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int8_t q1 = int8_t(((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
        const int8_t q2 = int8_t(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        const int8_t q3 = int8_t(((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        const int8_t q4 = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        y[l + 0] = d * float(sc[is + 0]) * float(q1);
        y[l + 32] = d * float(sc[is + 2]) * float(q2);
        y[l + 64] = d * float(sc[is + 4]) * float(q3);
        y[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

}  // namespace

void dequantize_row(DType dt, const void* src, float* dst, int64_t n) {
  switch (dt) {
    case DType::q4_0: return deq_q4_0(src, dst, n);
    case DType::q4_1: return deq_q4_1(src, dst, n);
    case DType::q5_0: return deq_q5_0(src, dst, n);
    case DType::q5_1: return deq_q5_1(src, dst, n);
    case DType::q8_0: return deq_q8_0(src, dst, n);
    case DType::q4_k: return deq_q4_K(src, dst, n);
    case DType::q5_k: return deq_q5_K(src, dst, n);
    case DType::q6_k: return deq_q6_K(src, dst, n);
    default: fail("internal: dequantize_row of non-quantized dtype ", dtype_name(dt));
  }
}

void dequantize_row_fast(DType dt, const void* src, float* dst, int64_t n) {
  const DequantizeFn f = best_kernels().dequantize[int(dt) - int(DType::q4_0)];
  if (f) f(src, dst, n);
  else dequantize_row(dt, src, dst, n);
}

ActFormat act_format(DType w) {
  switch (w) {
    case DType::q4_1: case DType::q5_1: return ActFormat::q8_1;
    case DType::q4_k: case DType::q5_k: case DType::q6_k: return ActFormat::q8_K;
    default: return ActFormat::q8_0;
  }
}

size_t act_row_bytes(ActFormat f, int64_t k) {
  switch (f) {
    case ActFormat::q8_0: return size_t(k / QK) * sizeof(block_q8_0);
    case ActFormat::q8_1: return size_t(k / QK) * sizeof(block_q8_1);
    case ActFormat::q8_K: return size_t(k / QK_K) * sizeof(block_q8_K);
  }
  return 0;
}

const KernelTable& best_kernels() {
  static const KernelTable* table = [] {
    const char* force = std::getenv("PEFT_QUANT_ISA");
    const std::string f = force ? force : "";
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");  // f16c: every AVX2 CPU
    const bool vnni = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (f == "generic") return &generic::kernels();
    if (f == "avx2" && avx2) return &avx2::kernels();
    if (f.empty() || f == "avx512vnni") {
      if (vnni) return &avx512vnni::kernels();
      if (avx2) return &avx2::kernels();
    }
    return &generic::kernels();
  }();
  return *table;
}

}  // namespace peft::quant

namespace peft::cpu {

using namespace peft::quant;

namespace {
int threads_for(double work) {
  if (omp_in_parallel()) return 1;
  const int nt = omp_get_max_threads();
  return work < 2e5 ? 1 : nt;  // below ~0.1 ms of work a parallel region costs more than it saves
}
}  // namespace

void CpuBackend::dequantize(const Tensor& w, Tensor& out) {
  const int64_t K = w.size(-1), rows = K ? w.numel() / K : 0;
  const size_t row_bytes = dtype_nbytes(w.dtype(), K);
  const auto* src = static_cast<const uint8_t*>(w.raw_data());
  float* dst = out.data_ptr<float>();
  const DType dt = w.dtype();
  const int nt = threads_for(double(w.numel()));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) dequantize_row_fast(dt, src + size_t(r) * row_bytes, dst + r * K, K);
}

void CpuBackend::dequantize_rows(const Tensor& w, const Tensor& ids, Tensor& out) {
  const int64_t K = w.size(1), n = ids.numel();
  const size_t row_bytes = dtype_nbytes(w.dtype(), K);
  const auto* src = static_cast<const uint8_t*>(w.raw_data());
  const int64_t* id = ids.data_ptr<int64_t>();
  float* dst = out.data_ptr<float>();
  const DType dt = w.dtype();
  const int nt = threads_for(double(n * K));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < n; ++i) dequantize_row_fast(dt, src + size_t(id[i]) * row_bytes, dst + i * K, K);
}

namespace {
// From this many activation rows the product runs as float32 sgemm on dequantized tiles of the
// weight (prompts, training batches): faster than block dots once each dequantized row is used
// by many activation rows, and exact in the activations. Below it (generation) the block dots
// with quantized activations, as llama.cpp computes every batch size. PEFT_QUANT_SGEMM_ROWS
// overrides it (0: never, e.g. to reproduce llama.cpp's prompt numerics).
int64_t sgemm_min_rows() {
  static const int64_t rows = [] {
    const char* s = std::getenv("PEFT_QUANT_SGEMM_ROWS");
    if (!s || !*s) return int64_t(32);
    const long long v = std::atoll(s);
    return v <= 0 ? std::numeric_limits<int64_t>::max() : int64_t(v);
  }();
  return rows;
}
}  // namespace

void CpuBackend::quantized_linear(const Tensor& x, const Tensor& w, Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  if (M == 0 || N == 0) return;
  if (M >= sgemm_min_rows()) {
    // out[:, tile] = x · deq(w[tile])ᵀ, a tile of weight rows at a time (~1 MiB of float32)
    const int64_t tile = std::max<int64_t>(16, std::min<int64_t>(N, (int64_t(1) << 20) / (4 * K)));
    const size_t row_bytes = dtype_nbytes(w.dtype(), K);
    const auto* wp = static_cast<const uint8_t*>(w.raw_data());
    const DType dt = w.dtype();
    thread_local Tensor deq, part;
    if (!deq.defined() || deq.numel() < tile * K) deq = empty({tile * K});
    if (!part.defined() || part.numel() < M * tile) part = empty({M * tile});
    for (int64_t t0 = 0; t0 < N; t0 += tile) {
      const int64_t rows = std::min(tile, N - t0);
      float* d = deq.data_ptr<float>();
      const int nt = threads_for(double(rows * K));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
      for (int64_t r = 0; r < rows; ++r) dequantize_row_fast(dt, wp + size_t(t0 + r) * row_bytes, d + r * K, K);
      Tensor wt = deq.narrow(0, 0, rows * K).view({rows, K});
      Tensor pt = part.narrow(0, 0, M * rows).view({M, rows});  // gemm writes contiguous rows
      gemm(x, wt.t(), pt, 1.0, 0.0);
      Tensor ot = out.narrow(1, t0, rows);
      copy(pt, ot);
    }
    return;
  }
  const KernelTable& kt = best_kernels();
  const ActFormat af = act_format(w.dtype());
  const size_t xq_row = act_row_bytes(af, K), w_row = dtype_nbytes(w.dtype(), K);
  const DotFn dot = kt.dot[int(w.dtype()) - int(DType::q4_0)];
  const QuantizeFn quantize = kt.quantize[int(af)];
  thread_local std::vector<uint8_t> xq_buf;
  xq_buf.resize(size_t(M) * xq_row);
  uint8_t* xq = xq_buf.data();
  const float* xp = x.data_ptr<float>();
  const auto* wp = static_cast<const uint8_t*>(w.raw_data());
  float* op = out.data_ptr<float>();
  // from ~50k multiply-adds (a 192 x 576 projection of one token: ~9 us) two threads pay off
  const int nt = omp_in_parallel() || double(M) * double(N) * double(K) < 5e4 ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int parts = omp_get_num_threads(), me = omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) quantize(xp + m * K, xq + size_t(m) * xq_row, K);
    // weight rows in blocks handed out dynamically (a thread that finishes early takes the
    // next block: DRAM bandwidth per thread is uneven); each block runs against every
    // activation row, four activation rows per dot call
    (void)parts, (void)me;
    // about 8 blocks per thread (at least 8 rows): measured best for one token on 2 threads
    // (tools: the 211 projections of SmolLM2 per token, 12.6 -> 11.1 ms against 64-row blocks)
    const int64_t row_block = std::max<int64_t>(M == 1 ? 8 : 16, N / (int64_t(parts) * 8));
    const int64_t nblocks = (N + row_block - 1) / row_block;
    // PEFT_QUANT_PREFETCH=BYTES overrides the distance (0: off)
    static const size_t pf_bytes = std::getenv("PEFT_QUANT_PREFETCH") ? size_t(std::atoll(std::getenv("PEFT_QUANT_PREFETCH"))) : 1536;
    float r[4];
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t nb = blk * row_block, ne = std::min(N, nb + row_block);
      for (int64_t m = 0; m < M; m += 4) {
        const int nx = int(std::min<int64_t>(4, M - m));
        for (int64_t n = nb; n < ne; ++n) {
          if (m == 0 && pf_bytes > 0) {
            // few tokens stream the weights from memory once, latency-bound: bring the bytes
            // ~pf_bytes ahead into L1 now (the hardware prefetcher stops at page boundaries and
            // runs too short a distance). SmolLM2 Q4_1, one token, the 211 projections: 21.9 ->
            // 13.5 ms on 1 thread, 12.3 -> 7.6 ms on 2 (Xeon VM).
            const uint8_t* ahead = wp + size_t(n) * w_row + pf_bytes;
            if (ahead < wp + size_t(N) * w_row)
              for (size_t c = 0; c < w_row; c += 64) __builtin_prefetch(ahead + c, 0, 3);
          }
          dot(K, wp + size_t(n) * w_row, xq + size_t(m) * xq_row, xq_row, nx, r);
          for (int j = 0; j < nx; ++j) op[(m + j) * N + n] = r[j];
        }
      }
    }
  }
}

void CpuBackend::quantized_matmul(const Tensor& g, const Tensor& w, Tensor& out) {
  // out [M, K] = g [M, N] · w [N, K], through dequantized tiles of w's rows, so memory stays
  // at one tile (not a float copy of the weight).
  const int64_t M = g.size(0), N = w.size(0), K = w.size(1);
  fill(out, 0.0);
  if (M == 0 || N == 0 || K == 0) return;
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(4) << 20) / (4 * K)));
  const size_t row_bytes = dtype_nbytes(w.dtype(), K);
  const auto* wp = static_cast<const uint8_t*>(w.raw_data());
  Tensor deq = empty({tile, K});
  for (int64_t t0 = 0; t0 < N; t0 += tile) {
    const int64_t rows = std::min(tile, N - t0);
    float* d = deq.data_ptr<float>();
    const DType dt = w.dtype();
    const int nt = threads_for(double(rows * K));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t r = 0; r < rows; ++r) dequantize_row_fast(dt, wp + size_t(t0 + r) * row_bytes, d + r * K, K);
    Tensor wt = deq.narrow(0, 0, rows);
    Tensor gt = g.narrow(1, t0, rows);
    gemm(gt, wt, out, 1.0, 1.0);
  }
}

}  // namespace peft::cpu
