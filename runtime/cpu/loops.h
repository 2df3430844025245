// Internal: strided N-operand loops for CPU kernels. Dimensions of size 1 are
// dropped and contiguous runs coalesced, then the innermost run is handed to a
// tight inner loop (vectorisable when every operand has unit stride). Large
// loops are split across OpenMP threads.
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace peft::cpu {

constexpr int64_t kParallelGrain = 32768;

inline int num_threads_for(int64_t work) {
  if (work < kParallelGrain) return 1;
  int nt = omp_get_max_threads();
  return int(std::max<int64_t>(1, std::min<int64_t>(nt, work / (kParallelGrain / 4))));
}

template <int N>
struct LoopPlan {
  int ndim = 0;
  std::array<int64_t, 16> size{};
  std::array<std::array<int64_t, 16>, N> stride{};  // bytes
};

// strides_el[i]: operand i's strides (in elements) over `shape`; esize[i]: bytes per element.
template <int N>
LoopPlan<N> make_plan(const Shape& shape, const std::array<const Shape*, N>& strides_el,
                      const std::array<int64_t, N>& esize) {
  LoopPlan<N> p;
  // collect non-trivial dims, outermost first
  std::vector<int64_t> sz;
  std::vector<std::array<int64_t, N>> st;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    std::array<int64_t, N> s{};
    for (int i = 0; i < N; ++i) s[i] = (*strides_el[i])[d] * esize[i];
    if (!sz.empty()) {
      bool merge = true;
      for (int i = 0; i < N; ++i)
        if (st.back()[i] != s[i] * shape[d]) merge = false;
      if (merge) {
        sz.back() *= shape[d];
        st.back() = s;
        continue;
      }
    }
    sz.push_back(shape[d]);
    st.push_back(s);
  }
  if (sz.size() > 16) throw Error("tensor rank above 16 is not supported by CPU kernels");
  p.ndim = int(sz.size());
  for (int d = 0; d < p.ndim; ++d) {
    p.size[size_t(d)] = sz[size_t(d)];
    for (int i = 0; i < N; ++i) p.stride[size_t(i)][size_t(d)] = st[size_t(d)][size_t(i)];
  }
  return p;
}

// inner(ptrs, inner_strides_bytes, n) is called for runs of the innermost dim.
template <int N, class F>
void run_plan(const LoopPlan<N>& p, std::array<char*, N> base, F&& inner) {
  if (p.ndim == 0) {
    std::array<int64_t, N> zero{};
    inner(base, zero, int64_t(1));
    return;
  }
  for (int d = 0; d < p.ndim; ++d)
    if (p.size[size_t(d)] == 0) return;  // empty tensor: nothing to do
  const int last = p.ndim - 1;
  const int64_t n_inner = p.size[size_t(last)];
  int64_t n_outer = 1;
  for (int d = 0; d < last; ++d) n_outer *= p.size[size_t(d)];
  std::array<int64_t, N> inner_stride;
  for (int i = 0; i < N; ++i) inner_stride[size_t(i)] = p.stride[size_t(i)][size_t(last)];

  // Split the innermost run into chunks when there are few outer rows.
  const int nt = num_threads_for(n_outer * n_inner);
  int64_t chunk = n_inner;
  if (nt > 1 && n_outer < 4 * nt) chunk = std::max<int64_t>(4096, (n_inner + 4 * nt - 1) / (4 * nt));
  const int64_t n_chunks = (n_inner + chunk - 1) / chunk;
  const int64_t total = n_outer * n_chunks;

  auto body = [&](int64_t item) {
    int64_t o = item / n_chunks, c = item % n_chunks;
    std::array<char*, N> ptr = base;
    int64_t rem = o;
    for (int d = last - 1; d >= 0; --d) {
      int64_t idx = rem % p.size[size_t(d)];
      rem /= p.size[size_t(d)];
      for (int i = 0; i < N; ++i) ptr[size_t(i)] += idx * p.stride[size_t(i)][size_t(d)];
    }
    int64_t start = c * chunk;
    for (int i = 0; i < N; ++i) ptr[size_t(i)] += start * inner_stride[size_t(i)];
    inner(ptr, inner_stride, std::min(chunk, n_inner - start));
  };
  if (nt > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t item = 0; item < total; ++item) body(item);
  } else {
    for (int64_t item = 0; item < total; ++item) body(item);
  }
}

template <int N, class F>
void for_each(const Shape& shape, const std::array<const Tensor*, N>& ts, F&& inner) {
  std::array<const Shape*, N> st;
  std::array<int64_t, N> es;
  std::array<char*, N> base;
  for (int i = 0; i < N; ++i) {
    st[size_t(i)] = &ts[size_t(i)]->strides();
    es[size_t(i)] = int64_t(dtype_size(ts[size_t(i)]->dtype()));
    base[size_t(i)] = static_cast<char*>(ts[size_t(i)]->raw_data());
  }
  run_plan<N>(make_plan<N>(shape, st, es), base, inner);
}

}  // namespace peft::cpu
