// CpuBackend's reductions: reduce (sum, max, argmax over any dims and strides) and softmax.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/dtype_dispatch.h"
#include "runtime/cpu/loops.h"
#include "runtime/cpu/vec_f32.h"
#include "runtime/reduce_dims.h"

namespace peft::cpu {
namespace {

// Visits reduced elements [begin, end) (row-major over `dims`) as runs along the
// innermost dim: f(offset, length, stride), offsets in elements.
template <class F>
void for_runs(const std::vector<RDim>& dims, int64_t begin, int64_t end, F&& f) {
  if (begin >= end) return;
  if (dims.empty()) {
    f(int64_t(0), int64_t(1), int64_t(0));
    return;
  }
  const size_t nd = dims.size();
  int64_t idx[16];
  int64_t rem = begin;
  for (size_t d = nd; d-- > 0;) {
    idx[d] = rem % dims[d].size;
    rem /= dims[d].size;
  }
  const RDim& in = dims.back();
  int64_t pos = begin;
  while (pos < end) {
    int64_t off = 0;
    for (size_t d = 0; d < nd; ++d) off += idx[d] * dims[d].xs;
    const int64_t len = std::min(in.size - idx[nd - 1], end - pos);
    f(off, len, in.xs);
    pos += len;
    idx[nd - 1] += len;
    for (size_t d = nd - 1; d > 0 && idx[d] >= dims[d].size; --d) {
      idx[d] = 0;
      ++idx[d - 1];
    }
  }
}

}  // namespace

void CpuBackend::reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced, Tensor& out) {
  // Kept dims (matching out) and reduced dims, size-1 dims dropped, each list coalesced.
  std::vector<RDim> kept, red;
  split_reduce_dims(x, reduced, out, kept, red);
  int64_t n_out = 1, n_red = 1;
  for (const RDim& d : kept) n_out *= d.size;
  for (const RDim& d : red) n_red *= d.size;
  if (n_out == 0) return;
  dispatch_compute(x.dtype(), "reduce", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.raw_data());
    T* op_t = static_cast<T*>(out.raw_data());
    int64_t* op_i = k == ReduceKind::argmax ? static_cast<int64_t*>(out.raw_data()) : nullptr;
    const int nt = cpu::num_threads_for(n_out * std::max<int64_t>(n_red, 1));

    // Output offset and input base offset of output element o.
    auto locate = [&](int64_t o, int64_t& xoff, int64_t& ooff) {
      xoff = 0;
      ooff = 0;
      for (size_t d = kept.size(); d-- > 0;) {
        const int64_t i = o % kept[d].size;
        o /= kept[d].size;
        xoff += i * kept[d].xs;
        ooff += i * kept[d].os;
      }
    };

    if (k == ReduceKind::sum) {
      using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
      // Fast path: the innermost kept dim is contiguous in x and out (sum over leading
      // dims, e.g. a bias gradient): accumulate whole rows, vectorised, parallel over
      // column blocks.
      if (!kept.empty() && kept.back().xs == 1 && kept.back().os == 1 && n_red > 1) {
        const int64_t C = kept.back().size, n_ko = n_out / C;
        constexpr int64_t kMaxBlock = 512;
        int64_t bw = std::min<int64_t>(kMaxBlock, (C + nt - 1) / nt);
        bw = std::max<int64_t>(std::min<int64_t>(C, 16), (bw + 15) / 16 * 16);
        const int64_t n_blocks = (C + bw - 1) / bw, items = n_ko * n_blocks;
        std::vector<RDim> outer_kept(kept.begin(), kept.end() - 1);
        auto body = [&](int64_t item) {
          const int64_t ko = item / n_blocks, c0 = (item % n_blocks) * bw;
          const int64_t w = std::min(bw, C - c0);
          int64_t xoff = 0, ooff = 0, rem = ko;
          for (size_t d = outer_kept.size(); d-- > 0;) {
            const int64_t i = rem % outer_kept[d].size;
            rem /= outer_kept[d].size;
            xoff += i * outer_kept[d].xs;
            ooff += i * outer_kept[d].os;
          }
          Acc acc[kMaxBlock];
          for (int64_t c = 0; c < w; ++c) acc[c] = 0;
          const T* base = xp + xoff + c0;
          for_runs(red, 0, n_red, [&](int64_t off, int64_t len, int64_t stride) {
            for (int64_t j = 0; j < len; ++j) {
              const T* row = base + off + j * stride;
#pragma omp simd
              for (int64_t c = 0; c < w; ++c) acc[c] += Acc(row[c]);
            }
          });
          T* o = op_t + ooff + c0;
          for (int64_t c = 0; c < w; ++c) o[c] = T(acc[c]);
        };
        if (nt > 1 && items > 1) {
#pragma omp parallel for num_threads(int(std::min<int64_t>(nt, items))) schedule(static)
          for (int64_t it = 0; it < items; ++it) body(it);
        } else {
          for (int64_t it = 0; it < items; ++it) body(it);
        }
        return;
      }
      auto partial = [&](int64_t xoff, int64_t r0, int64_t r1) {
        Acc acc = 0;
        for_runs(red, r0, r1, [&](int64_t off, int64_t len, int64_t stride) {
          const T* p = xp + xoff + off;
          Acc s = 0;
          if (stride == 1) {
#pragma omp simd reduction(+ : s)
            for (int64_t j = 0; j < len; ++j) s += Acc(p[j]);
          } else {
            for (int64_t j = 0; j < len; ++j) s += Acc(p[j * stride]);
          }
          acc += s;
        });
        return acc;
      };
      if (n_out >= nt || nt == 1) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t o = 0; o < n_out; ++o) {
          int64_t xoff, ooff;
          locate(o, xoff, ooff);
          op_t[ooff] = T(partial(xoff, 0, n_red));
        }
      } else {
        // few outputs, long reductions: split each reduction across threads
        for (int64_t o = 0; o < n_out; ++o) {
          int64_t xoff, ooff;
          locate(o, xoff, ooff);
          std::vector<Acc> parts(size_t(nt), Acc(0));
#pragma omp parallel for num_threads(nt) schedule(static)
          for (int t = 0; t < nt; ++t)
            parts[size_t(t)] = partial(xoff, n_red * t / nt, n_red * (t + 1) / nt);
          Acc acc = 0;
          for (Acc p : parts) acc += p;
          op_t[ooff] = T(acc);
        }
      }
      return;
    }

    // max / argmax: the first NaN wins, else the first maximum (as PyTorch)
    struct Best {
      T v{};
      int64_t i = -1;
    };
    auto better = [](const Best& a, const Best& b) {  // b comes after a
      if (a.i < 0) return b;
      if (b.i < 0) return a;
      if constexpr (std::is_floating_point_v<T>) {
        if (a.v != a.v) return a;
        if (b.v != b.v) return b;
      }
      return b.v > a.v ? b : a;
    };
    auto partial = [&](int64_t xoff, int64_t r0, int64_t r1) {
      Best best;
      int64_t pos = r0;
      for_runs(red, r0, r1, [&](int64_t off, int64_t len, int64_t stride) {
        const T* p = xp + xoff + off;
        for (int64_t j = 0; j < len; ++j) {
          const T v = p[j * stride];
          if (best.i < 0) {
            best = {v, pos + j};
            continue;
          }
          if constexpr (std::is_floating_point_v<T>) {
            if (best.v != best.v) return;
            if (v > best.v || v != v) best = {v, pos + j};
          } else {
            if (v > best.v) best = {v, pos + j};
          }
        }
        pos += len;
      });
      return best;
    };
    auto store = [&](int64_t ooff, const Best& b) {
      if (op_i)
        op_i[ooff] = std::max<int64_t>(b.i, 0);
      else
        op_t[ooff] = b.v;
    };
    if (n_out >= nt || nt == 1) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
      for (int64_t o = 0; o < n_out; ++o) {
        int64_t xoff, ooff;
        locate(o, xoff, ooff);
        store(ooff, partial(xoff, 0, n_red));
      }
    } else {
      for (int64_t o = 0; o < n_out; ++o) {
        int64_t xoff, ooff;
        locate(o, xoff, ooff);
        std::vector<Best> parts{size_t(nt), Best{}};
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int t = 0; t < nt; ++t) parts[size_t(t)] = partial(xoff, n_red * t / nt, n_red * (t + 1) / nt);
        Best b;
        for (const Best& p : parts) b = better(b, p);
        store(ooff, b);
      }
    }
  });
}

void CpuBackend::softmax(const Tensor& x, int64_t dim, bool log, Tensor& out) {
  // x and out contiguous; view as [outer, n, inner]
  int64_t outer = 1, inner = 1, n = x.size(dim);
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  dispatch_float(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const int64_t rows = outer * inner;
    auto body = [&](int64_t r) {
      int64_t o = r / inner, i = r % inner;
      const T* xr = xp + o * n * inner + i;
      T* yr = op + o * n * inner + i;
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, xr[j * inner]);
      if (!std::isfinite(mx)) mx = 0;
      if constexpr (std::is_same_v<T, float>) {
        if (inner == 1) {  // rows contiguous: vectorised exp, written to y first
          const double s = cpu::exp_shifted_f32(xr, yr, n, mx);
          if (log) {
            const T ls = T(std::log(s));
            for (int64_t j = 0; j < n; ++j) yr[j] = xr[j] - mx - ls;
          } else {
            const T inv = T(1.0 / s);
            for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
          }
          return;
        }
      }
      double s = 0;
      for (int64_t j = 0; j < n; ++j) s += std::exp(double(xr[j * inner] - mx));
      if (log) {
        T ls = T(std::log(s));
        for (int64_t j = 0; j < n; ++j) yr[j * inner] = xr[j * inner] - mx - ls;
      } else {
        T inv = T(1.0 / s);
        for (int64_t j = 0; j < n; ++j) yr[j * inner] = std::exp(xr[j * inner] - mx) * inv;
      }
    };
    const int nt = cpu::num_threads_for(rows * n);
    if (nt > 1 && rows >= nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t r = 0; r < rows; ++r) body(r);
    } else {
      for (int64_t r = 0; r < rows; ++r) body(r);
    }
  });
}

}  // namespace peft::cpu
