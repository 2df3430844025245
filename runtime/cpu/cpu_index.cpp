// CpuBackend's indexing kernels: index_select, index_add, gather and scatter_add, each
// checking its indices (only the kernel reads them, so the check costs no extra pass).
#include <algorithm>
#include <cstring>

#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/dtype_dispatch.h"
#include "runtime/cpu/loops.h"

namespace peft::cpu {
namespace {

void check_indices(const int64_t* idx, int64_t n, int64_t bound, const char* op, int64_t dim) {
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= bound)
      fail("[", op, "] index ", idx[i], " is out of bounds for dimension ", dim, " with size ",
           bound);
}

}  // namespace

// x, out contiguous; index contiguous int64 [nidx]
void CpuBackend::index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) {
  int64_t outer = 1, inner = 1, n = x.size(dim), nidx = index.numel();
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  const int64_t* idx = index.data_ptr<int64_t>();
  check_indices(idx, nidx, n, "index_select", dim);
  const size_t es = dtype_size(x.dtype());
  const char* xp = static_cast<const char*>(x.raw_data());
  char* op = static_cast<char*>(out.raw_data());
  const int64_t rows = outer * nidx;
  const size_t row_bytes = size_t(inner) * es;
  const int nt = cpu::num_threads_for(rows * inner);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t o = r / nidx, i = r % nidx;
    std::memcpy(op + size_t(r) * row_bytes, xp + size_t(o * n + idx[i]) * row_bytes, row_bytes);
  }
}

void CpuBackend::index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  int64_t outer = 1, inner = 1, n = out.size(dim), nidx = index.numel();
  for (int64_t d = 0; d < dim; ++d) outer *= out.size(d);
  for (int64_t d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
  const int64_t* idx = index.data_ptr<int64_t>();
  check_indices(idx, nidx, n, "index_add", dim);
  dispatch_compute(out.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) {
      T* op = static_cast<T*>(out.raw_data());
      const T* sp = static_cast<const T*>(src.raw_data());
      // parallel over (outer, column blocks): rows with equal index never race
      const int nt = cpu::num_threads_for(outer * nidx * inner);
      const int64_t blocks = nt > 1 ? std::max<int64_t>(1, std::min<int64_t>(nt, inner / 16)) : 1;
      const int64_t bw = (inner + blocks - 1) / blocks;
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static) if (nt > 1)
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t bl = 0; bl < blocks; ++bl) {
          int64_t c0 = bl * bw, c1 = std::min(inner, c0 + bw);
          for (int64_t i = 0; i < nidx; ++i) {
            T* dst = op + (o * n + idx[i]) * inner;
            const T* s = sp + (o * nidx + i) * inner;
            for (int64_t c = c0; c < c1; ++c) dst[c] += s[c];
          }
        }
    } else {
      fail("[index_add] not defined for bool tensors");
    }
  });
}

// x, index, out contiguous; index has x's shape except along dim
void CpuBackend::gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) {
  int64_t outer = 1, inner = 1, n = x.size(dim), m = index.size(dim);
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  const int64_t* idx = index.data_ptr<int64_t>();
  check_indices(idx, index.numel(), n, "gather", dim);
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.raw_data());
    T* op = static_cast<T*>(out.raw_data());
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < m; ++j)
        for (int64_t c = 0; c < inner; ++c) {
          int64_t at = (o * m + j) * inner + c;
          op[at] = xp[(o * n + idx[at]) * inner + c];
        }
  });
}

void CpuBackend::scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  int64_t outer = 1, inner = 1, n = out.size(dim), m = index.size(dim);
  for (int64_t d = 0; d < dim; ++d) outer *= out.size(d);
  for (int64_t d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
  const int64_t* idx = index.data_ptr<int64_t>();
  check_indices(idx, index.numel(), n, "scatter_add", dim);
  dispatch_compute(out.dtype(), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) {
      T* op = static_cast<T*>(out.raw_data());
      const T* sp = static_cast<const T*>(src.raw_data());
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t j = 0; j < m; ++j)
          for (int64_t c = 0; c < inner; ++c) {
            int64_t at = (o * m + j) * inner + c;
            op[(o * n + idx[at]) * inner + c] += sp[at];
          }
    } else {
      fail("[scatter_add] not defined for bool tensors");
    }
  });
}

}  // namespace peft::cpu
