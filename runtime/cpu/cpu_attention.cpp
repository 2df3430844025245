// CPU kernels of scaled_dot_product_attention, forward and backward (cpu_transformer.h),
// flash-attention style.
//
// Attention. Keys are processed in tiles of kTile (64): for a block of query rows the
// tile's scores are computed, masked (padding mask as an additive 0/-inf bias, causal as a
// per-row count of visible keys), and folded into the output with an online softmax
// (running max m and sum l per row), so no more than one tile of the Tq x Tk scores
// exists at a time. The query rows of one work item are the Hq/Hkv query heads that share a
// key/value head (grouped-query attention), so each key tile is packed once for all of
// them (a decode step's 8 query heads read 2 packed kv heads). The backward follows
// FlashAttention-2: the scores are recomputed per tile from q, k and the saved
// log-sum-exp, Di = rowsum(dO∘O), dS = P∘(dP - Di), and dq, dk, dv are accumulated; one
// work item is one (batch, kv head), which owns its dk/dv rows and the dq rows of its query
// heads, so threads never write the same memory.
//
// The float32 inner loops are register-blocked products written with GCC vector
// extensions (acc_rows: out[0..w) += Σ_i c_i·row_i[0..w), 16-float vectors, up to 4
// accumulators) and built per ISA with target_clones, like vec_f32.cpp; each output element
// is summed in the same order whatever the width, so a strided view gives the bits of a
// contiguous one (the v3/v4 clones may contract into FMAs, so bits can differ across CPUs).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "runtime/cpu/cpu_transformer.h"
#include "runtime/cpu/dtype_dispatch.h"
#include "runtime/cpu/math_f32.h"

// Not under TSan: the loader runs the clones' ifunc resolver, instrumented, before TSan is up.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define PEFT_TX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PEFT_TX_CLONES
#endif
#define PEFT_TX_INLINE inline __attribute__((always_inline))

#pragma GCC diagnostic ignored "-Wpsabi"

namespace peft::cpu {

namespace {

// Runs body(i) for i in [0, n) on up to `nt` threads (dynamic schedule: items differ in cost).
template <class F>
void parallel_items(int64_t n, int nt, F&& body) {
  nt = int(std::min<int64_t>(nt, n));
  if (nt > 1 && !omp_in_parallel()) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

template <class T>
PEFT_TX_INLINE T exp_t(T x) {
  if constexpr (std::is_same_v<T, float>)
    return exp_f32(x);
  else
    return std::exp(x);
}

constexpr int64_t kTile = 64;   // keys per tile
constexpr int64_t kRows = 64;   // query rows per block

typedef float vf16 __attribute__((vector_size(64)));

PEFT_TX_INLINE vf16 ld16(const float* p) {
  vf16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
PEFT_TX_INLINE void st16(float* p, vf16 v) { __builtin_memcpy(p, &v, sizeof v); }

// out[0..w) (+)= Σ_{i<n} c[i·cs]·rows[i·ld + 0..w); `init` starts from 0 instead of out.
// Every element sums its terms in order i = 0, 1, ..., whatever w and the vector width.
template <class T>
PEFT_TX_INLINE void acc_rows(T* out, const T* c, int64_t cs, const T* rows, int64_t ld, int64_t n, int64_t w,
                             bool init) {
  int64_t d0 = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; d0 + 64 <= w; d0 += 64) {
      vf16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      if (!init) {
        a0 = ld16(out + d0), a1 = ld16(out + d0 + 16), a2 = ld16(out + d0 + 32), a3 = ld16(out + d0 + 48);
      }
      const float* rp = rows + d0;
      for (int64_t i = 0; i < n; ++i, rp += ld) {
        const float ci = c[i * cs];
        a0 += ci * ld16(rp);
        a1 += ci * ld16(rp + 16);
        a2 += ci * ld16(rp + 32);
        a3 += ci * ld16(rp + 48);
      }
      st16(out + d0, a0), st16(out + d0 + 16, a1), st16(out + d0 + 32, a2), st16(out + d0 + 48, a3);
    }
    if (d0 + 32 <= w) {
      vf16 a0 = {}, a1 = {};
      if (!init) a0 = ld16(out + d0), a1 = ld16(out + d0 + 16);
      const float* rp = rows + d0;
      for (int64_t i = 0; i < n; ++i, rp += ld) {
        const float ci = c[i * cs];
        a0 += ci * ld16(rp);
        a1 += ci * ld16(rp + 16);
      }
      st16(out + d0, a0), st16(out + d0 + 16, a1);
      d0 += 32;
    }
    if (d0 + 16 <= w) {
      vf16 a0 = {};
      if (!init) a0 = ld16(out + d0);
      const float* rp = rows + d0;
      for (int64_t i = 0; i < n; ++i, rp += ld) a0 += c[i * cs] * ld16(rp);
      st16(out + d0, a0);
      d0 += 16;
    }
  }
  if (d0 >= w) return;
  const int64_t rest = w - d0;
  if (init)
    for (int64_t d = 0; d < rest; ++d) out[d0 + d] = T(0);
  for (int64_t i = 0; i < n; ++i) {
    const T ci = c[i * cs];
    const T* rp = rows + i * ld + d0;
    T* o = out + d0;
    for (int64_t d = 0; d < rest; ++d) o[d] += ci * rp[d];
  }
}

// acc_rows for four rows at once: out_r[0..w) (+)= Σ_{i<n} c_r[i]·rows[i·ld + 0..w), r < 4,
// float32. Each row's elements sum their terms in the same order as acc_rows (so the bits
// are the same as four acc_rows calls); sharing every loaded row vector between four
// accumulator sets keeps 8 independent FMA chains in flight instead of 2-4, which is what
// bounds the one-row loop at head dims of 32-64 (MiniLM: attention 13% of a forward -> ~4%).
PEFT_TX_INLINE void acc_rows4(float* const out[4], const float* const c[4], const float* rows, int64_t ld,
                              int64_t n, int64_t w, bool init) {
  int64_t d0 = 0;
  for (; d0 + 32 <= w; d0 += 32) {
    vf16 a[4][2];
    for (int r = 0; r < 4; ++r) {
      if (init) {
        a[r][0] = vf16{}, a[r][1] = vf16{};
      } else {
        a[r][0] = ld16(out[r] + d0), a[r][1] = ld16(out[r] + d0 + 16);
      }
    }
    const float* rp = rows + d0;
    for (int64_t i = 0; i < n; ++i, rp += ld) {
      const vf16 x0 = ld16(rp), x1 = ld16(rp + 16);
      for (int r = 0; r < 4; ++r) {
        const float ci = c[r][i];
        a[r][0] += ci * x0;
        a[r][1] += ci * x1;
      }
    }
    for (int r = 0; r < 4; ++r) st16(out[r] + d0, a[r][0]), st16(out[r] + d0 + 16, a[r][1]);
  }
  if (d0 < w)
    for (int r = 0; r < 4; ++r) acc_rows(out[r] + d0, c[r], 1, rows + d0, ld, n, w - d0, init);
}

template <class T>
struct AttnArgs {
  int64_t B, Hq, Hkv, Tq, Tk, D, g, off;
  const T *q, *k, *v;
  int64_t qs[4], ks[4], vs[4];
  const bool* mask;  // [B, Tk] or null
  bool causal;
  T scale;
  T* out;  // [B, Hq, Tq, D]
  T* lse;  // [B, Hq, Tq]
  // backward
  const T *o, *dout;
  int64_t gs[4];
  T *dq, *dk, *dv;
};

// Query row r of kv head `kvh`'s group: query head, time.
template <class T>
PEFT_TX_INLINE void row_of(const AttnArgs<T>& a, int64_t kvh, int64_t r, int64_t& hq, int64_t& t) {
  hq = kvh * a.g + r / a.Tq;
  t = r % a.Tq;
}

// Number of keys query time t sees (all of them without causal).
template <class T>
PEFT_TX_INLINE int64_t visible_keys(const AttnArgs<T>& a, int64_t t) {
  return a.causal ? std::min(a.Tk, a.off + t + 1) : a.Tk;
}

// bias[j] = 0 for an attended key j0 + j, -inf otherwise; false when the tile has none.
template <class T>
PEFT_TX_INLINE bool tile_bias(const AttnArgs<T>& a, int64_t b, int64_t j0, int64_t n, T* bias) {
  if (!a.mask) return true;
  const bool* m = a.mask + b * a.Tk + j0;
  bool any = false;
  for (int64_t j = 0; j < n; ++j) {
    bias[j] = m[j] ? T(0) : -std::numeric_limits<T>::infinity();
    any |= m[j];
  }
  return any;
}

// kt[d·kTile + j] = k[b, kvh, j0 + j, d] for j < n, zero up to w.
template <class T>
PEFT_TX_INLINE void pack_transposed(const T* base, const int64_t* s, int64_t b, int64_t kvh, int64_t j0, int64_t n,
                                    int64_t w, int64_t D, T* kt) {
  const T* p = base + b * s[0] + kvh * s[1] + j0 * s[2];
  for (int64_t j = 0; j < n; ++j) {
    const T* row = p + j * s[2];
    for (int64_t d = 0; d < D; ++d) kt[d * kTile + j] = row[d * s[3]];
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = n; j < w; ++j) kt[d * kTile + j] = T(0);
}

// Rows j0..j0+n of k or v as a [n, D] matrix with leading dimension ld: in place when its
// last dim is contiguous, else copied into buf.
template <class T>
PEFT_TX_INLINE const T* rows_of(const T* base, const int64_t* s, int64_t b, int64_t kvh, int64_t j0, int64_t n,
                                int64_t D, T* buf, int64_t& ld) {
  const T* p = base + b * s[0] + kvh * s[1] + j0 * s[2];
  if (s[3] == 1) {
    ld = s[2];
    return p;
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) buf[j * D + d] = p[j * s[2] + d * s[3]];
  ld = D;
  return buf;
}

template <class T>
PEFT_TX_INLINE void load_row(const T* base, const int64_t* s, int64_t b, int64_t h, int64_t t, int64_t D, T mul,
                             T* dst) {
  const T* p = base + b * s[0] + h * s[1] + t * s[2];
  if (s[3] == 1) {
    for (int64_t d = 0; d < D; ++d) dst[d] = p[d] * mul;
  } else {
    for (int64_t d = 0; d < D; ++d) dst[d] = p[d * s[3]] * mul;
  }
}

inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

template <class T>
std::vector<T>& scratch() {
  thread_local std::vector<T> buf;
  return buf;
}

// One row's step of the online softmax over a tile's scores s[0..nv) (the mask's 0/-inf bias
// added first): updates the running max m and sum l, rescales the row's output o by
// e^{m_old - m_new}, and leaves the probabilities in s. False when every key of the tile is
// hidden from the row (nothing to add).
template <class T>
PEFT_TX_INLINE bool softmax_tile(T* s, const T* bias, int64_t nv, T& m, T& l, T* o, int64_t D, bool masked) {
  const T ninf = -std::numeric_limits<T>::infinity();
  T mx = ninf;
  int64_t j0 = 0;
  if constexpr (std::is_same_v<T, float>) {
    // by hand: GCC keeps `omp simd reduction(max)` and the masked add scalar here, a chain of
    // dependent vmaxss that was a third of this kernel's time
    const vf16 vninf = vf16{} + ninf;
    vf16 mv = vninf;
    for (; j0 + 16 <= nv; j0 += 16) {
      vf16 x = ld16(s + j0);
      if (masked) x += ld16(bias + j0), st16(s + j0, x);
      mv = x > mv ? x : mv;
    }
    for (int k = 0; k < 16; ++k) mx = std::max(mx, mv[k]);
  }
  for (int64_t j = j0; j < nv; ++j) {
    if (masked) s[j] += bias[j];
    mx = std::max(mx, s[j]);
  }
  if (mx == ninf) return false;
  const T mnew = std::max(m, mx);
  const T alpha = exp_t(m - mnew);  // 0 on the first visible tile (m = -inf)
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < nv; ++j) {
    const T p = exp_t(s[j] - mnew);
    s[j] = p;
    sum += p;
  }
  l = l * alpha + sum;
  m = mnew;
  if (alpha != T(1))
    for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
  return true;
}

// One forward work item: rows [r0, r0 + R) of batch b, kv head kvh's group.
template <class T>
PEFT_TX_INLINE void attn_fwd_item(const AttnArgs<T>& a, int64_t b, int64_t kvh, int64_t r0, int64_t R) {
  const int64_t D = a.D;
  std::vector<T>& buf = scratch<T>();
  const size_t need = size_t(R * D * 2 + R * 3 + D * kTile + kTile * D + kTile * 2 + 4 * kTile);
  if (buf.size() < need) buf.resize(need);
  T* Q = buf.data();       // [R, D] scaled queries
  T* O = Q + R * D;        // [R, D] unnormalised output
  T* m = O + R * D;        // running max
  T* l = m + R;            // running sum
  T* lim = l + R;          // visible key count (as T)
  T* kt = lim + R;         // [D, kTile]
  T* vbuf = kt + D * kTile;  // [kTile, D] when v is not row-contiguous
  T* S = vbuf + kTile * D;   // [kTile] scores, then probabilities, of one row
  T* bias = S + kTile;
  T* S4 = bias + kTile;      // [4, kTile]: four rows' scores
  const T ninf = -std::numeric_limits<T>::infinity();
  int64_t jend = 0;
  for (int64_t i = 0; i < R; ++i) {
    int64_t hq, t;
    row_of(a, kvh, r0 + i, hq, t);
    load_row(a.q, a.qs, b, hq, t, D, a.scale, Q + i * D);
    for (int64_t d = 0; d < D; ++d) O[i * D + d] = T(0);
    m[i] = ninf;
    l[i] = T(0);
    const int64_t vis = visible_keys(a, t);
    lim[i] = T(vis);
    jend = std::max(jend, vis);
  }
  for (int64_t j0 = 0; j0 < jend; j0 += kTile) {
    const int64_t n = std::min(kTile, jend - j0), w = round16(n);
    if (!tile_bias(a, b, j0, n, bias)) continue;
    pack_transposed(a.k, a.ks, b, kvh, j0, n, w, D, kt);
    int64_t ldv;
    const T* vr = rows_of(a.v, a.vs, b, kvh, j0, n, D, vbuf, ldv);
    for (int64_t i = 0; i < R;) {
      const int64_t nv = std::min(n, int64_t(lim[i]) - j0);
      if constexpr (std::is_same_v<T, float>) {
        // four rows that see the same keys of this tile: their products share each loaded
        // k and v vector (same sums, same order, as the row-by-row path below)
        if (nv > 0 && i + 4 <= R && lim[i + 3] == lim[i] && lim[i + 1] == lim[i] && lim[i + 2] == lim[i]) {
          float* s4[4] = {S4, S4 + kTile, S4 + 2 * kTile, S4 + 3 * kTile};
          const float* q4[4] = {Q + i * D, Q + (i + 1) * D, Q + (i + 2) * D, Q + (i + 3) * D};
          acc_rows4(s4, q4, kt, kTile, D, w, true);  // s_r[j] = Σ_d q_r[d]·k[j, d]
          bool live[4];
          for (int r = 0; r < 4; ++r) live[r] = softmax_tile(s4[r], bias, nv, m[i + r], l[i + r], O + (i + r) * D, D, a.mask != nullptr);
          if (live[0] && live[1] && live[2] && live[3]) {
            float* o4[4] = {O + i * D, O + (i + 1) * D, O + (i + 2) * D, O + (i + 3) * D};
            const float* p4[4] = {s4[0], s4[1], s4[2], s4[3]};
            acc_rows4(o4, p4, vr, ldv, nv, D, false);  // o_r += Σ_j p_r[j]·v[j]
          } else {
            for (int r = 0; r < 4; ++r)
              if (live[r]) acc_rows(O + (i + r) * D, s4[r], 1, vr, ldv, nv, D, false);
          }
          i += 4;
          continue;
        }
      }
      if (nv <= 0) {
        ++i;
        continue;
      }
      T* s = S;
      acc_rows(s, Q + i * D, 1, kt, kTile, D, w, true);  // s[j] = Σ_d q[d]·k[j, d]
      if (softmax_tile(s, bias, nv, m[i], l[i], O + i * D, D, a.mask != nullptr)) {
        T* o = O + i * D;
        acc_rows(o, s, 1, vr, ldv, nv, D, false);  // o += Σ_j p[j]·v[j]
      }
      ++i;
    }
  }
  for (int64_t i = 0; i < R; ++i) {
    int64_t hq, t;
    row_of(a, kvh, r0 + i, hq, t);
    const int64_t at = (b * a.Hq + hq) * a.Tq + t;
    T* dst = a.out + at * D;
    if (l[i] > T(0)) {
      const T inv = T(1) / l[i];
      for (int64_t d = 0; d < D; ++d) dst[d] = O[i * D + d] * inv;
      a.lse[at] = m[i] + std::log(l[i]);
    } else {  // no visible key: 0 (and no gradient)
      for (int64_t d = 0; d < D; ++d) dst[d] = T(0);
      a.lse[at] = ninf;
    }
  }
}

// One backward work item: batch b, kv head kvh, all query rows of its group.
template <class T>
PEFT_TX_INLINE void attn_bwd_item(const AttnArgs<T>& a, int64_t b, int64_t kvh) {
  const int64_t D = a.D, R = a.g * a.Tq;
  std::vector<T>& buf = scratch<T>();
  const size_t need = size_t(R * D * 3 + R * 3 + D * kTile * 2 + kTile * D * 3 + kRows * kTile * 2 + kTile);
  if (buf.size() < need) buf.resize(need);
  T* Q = buf.data();        // [R, D] scaled queries
  T* dO = Q + R * D;        // [R, D] output gradient
  T* dQ = dO + R * D;       // [R, D] Σ dS·k (scaled at the end)
  T* Di = dQ + R * D;       // rowsum(dO∘O)
  T* L = Di + R;            // saved log-sum-exp
  T* lim = L + R;           // visible key count (0 for rows with none)
  T* kt = lim + R;          // [D, kTile]
  T* vt = kt + D * kTile;   // [D, kTile]
  T* kbuf = vt + D * kTile;  // [kTile, D] when k is not row-contiguous
  T* dK = kbuf + kTile * D;  // [kTile, D]
  T* dV = dK + kTile * D;    // [kTile, D]
  T* P = dV + kTile * D;     // [kRows, kTile]
  T* dS = P + kRows * kTile;  // [kRows, kTile]
  T* bias = dS + kRows * kTile;
  const T ninf = -std::numeric_limits<T>::infinity();
  int64_t jend = 0;
  for (int64_t r = 0; r < R; ++r) {
    int64_t hq, t;
    row_of(a, kvh, r, hq, t);
    load_row(a.q, a.qs, b, hq, t, D, a.scale, Q + r * D);
    load_row(a.dout, a.gs, b, hq, t, D, T(1), dO + r * D);
    const int64_t at = (b * a.Hq + hq) * a.Tq + t;
    const T* o = a.o + at * D;
    T di = 0;
    for (int64_t d = 0; d < D; ++d) di += dO[r * D + d] * o[d];
    Di[r] = di;
    L[r] = a.lse[at];
    const int64_t vis = L[r] == ninf ? 0 : visible_keys(a, t);
    lim[r] = T(vis);
    jend = std::max(jend, vis);
    for (int64_t d = 0; d < D; ++d) dQ[r * D + d] = T(0);
  }
  // dk, dv rows of keys no query sees stay 0
  T* dkb = a.dk + (b * a.Hkv + kvh) * a.Tk * D;
  T* dvb = a.dv + (b * a.Hkv + kvh) * a.Tk * D;
  for (int64_t i = 0; i < a.Tk * D; ++i) dkb[i] = dvb[i] = T(0);
  for (int64_t j0 = 0; j0 < jend; j0 += kTile) {
    const int64_t n = std::min(kTile, jend - j0), w = round16(n);
    if (!tile_bias(a, b, j0, n, bias)) continue;
    pack_transposed(a.k, a.ks, b, kvh, j0, n, w, D, kt);
    pack_transposed(a.v, a.vs, b, kvh, j0, n, w, D, vt);
    int64_t ldk;
    const T* kr = rows_of(a.k, a.ks, b, kvh, j0, n, D, kbuf, ldk);
    for (int64_t i = 0; i < n * D; ++i) dK[i] = dV[i] = T(0);
    for (int64_t rb = 0; rb < R; rb += kRows) {
      const int64_t Rb = std::min(kRows, R - rb);
      bool any = false;
      for (int64_t i = 0; i < Rb; ++i) {
        const int64_t r = rb + i;
        T* p = P + i * kTile;
        T* ds = dS + i * kTile;
        const int64_t nv = std::min(n, int64_t(lim[r]) - j0);
        if (nv <= 0) {
          for (int64_t j = 0; j < n; ++j) p[j] = ds[j] = T(0);
          continue;
        }
        any = true;
        acc_rows(p, Q + r * D, 1, kt, kTile, D, w, true);  // scores
        const T lr = L[r];
        if (a.mask) {
#pragma omp simd
          for (int64_t j = 0; j < nv; ++j) p[j] = exp_t(p[j] + bias[j] - lr);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < nv; ++j) p[j] = exp_t(p[j] - lr);
        }
        for (int64_t j = nv; j < n; ++j) p[j] = T(0);
        acc_rows(ds, dO + r * D, 1, vt, kTile, D, w, true);  // dP[j] = dO·v[j]
        const T di = Di[r];
        for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - di);
        acc_rows(dQ + r * D, ds, 1, kr, ldk, nv, D, false);  // dQ += dS·k
      }
      if (!any) continue;
      for (int64_t j = 0; j < n; ++j) {
        acc_rows(dV + j * D, P + j, kTile, dO + rb * D, D, Rb, D, false);  // dV[j] += Σ_r P[r, j]·dO[r]
        acc_rows(dK + j * D, dS + j, kTile, Q + rb * D, D, Rb, D, false);  // dK[j] += Σ_r dS[r, j]·q[r]
      }
    }
    for (int64_t i = 0; i < n * D; ++i) {
      dkb[j0 * D + i] = dK[i];
      dvb[j0 * D + i] = dV[i];
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    int64_t hq, t;
    row_of(a, kvh, r, hq, t);
    T* dst = a.dq + ((b * a.Hq + hq) * a.Tq + t) * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = dQ[r * D + d] * a.scale;
  }
}

PEFT_TX_CLONES void attn_fwd_item_f32(const AttnArgs<float>& a, int64_t b, int64_t kvh, int64_t r0, int64_t R) {
  attn_fwd_item<float>(a, b, kvh, r0, R);
}
void attn_fwd_item_f64(const AttnArgs<double>& a, int64_t b, int64_t kvh, int64_t r0, int64_t R) {
  attn_fwd_item<double>(a, b, kvh, r0, R);
}
PEFT_TX_CLONES void attn_bwd_item_f32(const AttnArgs<float>& a, int64_t b, int64_t kvh) {
  attn_bwd_item<float>(a, b, kvh);
}
void attn_bwd_item_f64(const AttnArgs<double>& a, int64_t b, int64_t kvh) { attn_bwd_item<double>(a, b, kvh); }

template <class T>
AttnArgs<T> attn_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                      double scale) {
  AttnArgs<T> a{};
  a.B = q.size(0), a.Hq = q.size(1), a.Tq = q.size(2), a.D = q.size(3);
  a.Hkv = k.size(1), a.Tk = k.size(2);
  a.g = a.Hq / a.Hkv;
  a.off = a.Tk - a.Tq;
  a.q = q.data_ptr<T>(), a.k = k.data_ptr<T>(), a.v = v.data_ptr<T>();
  for (int d = 0; d < 4; ++d) a.qs[d] = q.stride(d), a.ks[d] = k.stride(d), a.vs[d] = v.stride(d);
  a.mask = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  a.causal = causal;
  a.scale = T(scale);
  return a;
}

// Threads for `macs` multiply-adds of attention (a thread per ~64k).
int attn_threads(double macs) {
  if (omp_in_parallel()) return 1;
  return int(std::max<double>(1, std::min<double>(omp_get_max_threads(), macs / 65536.0)));
}

}  // namespace

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale,
               Tensor& out, Tensor& lse) {
  dispatch_float(q.dtype(), "scaled_dot_product_attention", [&](auto tag) {
    using T = decltype(tag);
    AttnArgs<T> a = attn_args<T>(q, k, v, mask, causal, scale);
    a.out = out.data_ptr<T>();
    a.lse = lse.data_ptr<T>();
    if (a.B == 0 || a.Hq == 0 || a.Tq == 0) return;
    const int64_t R = a.g * a.Tq, blocks = (R + kRows - 1) / kRows, items = a.B * a.Hkv * blocks;
    const double macs = 2.0 * double(a.B * a.Hq * a.Tq) * double(a.Tk) * double(std::max<int64_t>(a.D, 1));
    parallel_items(items, attn_threads(macs), [&](int64_t it) {
      const int64_t blk = it % blocks, kvh = (it / blocks) % a.Hkv, b = it / (blocks * a.Hkv);
      const int64_t r0 = blk * kRows, nr = std::min(kRows, R - r0);
      if constexpr (std::is_same_v<T, float>)
        attn_fwd_item_f32(a, b, kvh, r0, nr);
      else
        attn_fwd_item_f64(a, b, kvh, r0, nr);
    });
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& grad, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  dispatch_float(q.dtype(), "scaled_dot_product_attention_backward", [&](auto tag) {
    using T = decltype(tag);
    AttnArgs<T> a = attn_args<T>(q, k, v, mask, causal, scale);
    a.o = out.data_ptr<T>();
    a.lse = lse.data_ptr<T>();
    a.dout = grad.data_ptr<T>();
    for (int d = 0; d < 4; ++d) a.gs[d] = grad.stride(d);
    a.dq = dq.data_ptr<T>(), a.dk = dk.data_ptr<T>(), a.dv = dv.data_ptr<T>();
    if (a.B == 0 || a.Hkv == 0) return;
    const int64_t items = a.B * a.Hkv;
    const double macs = 5.0 * double(a.B * a.Hq * a.Tq) * double(a.Tk) * double(std::max<int64_t>(a.D, 1));
    parallel_items(items, attn_threads(macs), [&](int64_t it) {
      const int64_t kvh = it % a.Hkv, b = it / a.Hkv;
      if constexpr (std::is_same_v<T, float>)
        attn_bwd_item_f32(a, b, kvh);
      else
        attn_bwd_item_f64(a, b, kvh);
    });
  });
}

}  // namespace peft::cpu
