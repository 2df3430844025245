// Internal (not installed, host code of both backends): the dims of a reduction as the
// kernels walk them, kept dims (matching out) and reduced dims, size-1 dims dropped and
// neighbours that form one run merged.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace peft {

// One dimension of a reduction: size, x stride, out stride (elements).
struct RDim {
  int64_t size, xs, os;
};

// Merges adjacent dims (outer, inner) whose strides make them one run.
inline void coalesce(std::vector<RDim>& dims) {
  std::vector<RDim> out;
  for (const RDim& d : dims) {
    if (!out.empty() && out.back().xs == d.xs * d.size && out.back().os == d.os * d.size) {
      out.back() = {out.back().size * d.size, d.xs, d.os};
      continue;
    }
    out.push_back(d);
  }
  dims = std::move(out);
}

// Splits x's dims into kept and reduced (reduced[d]), each list coalesced.
inline void split_reduce_dims(const Tensor& x, const std::vector<bool>& reduced, const Tensor& out,
                              std::vector<RDim>& kept, std::vector<RDim>& red) {
  for (int64_t d = 0; d < x.dim(); ++d) {
    const int64_t n = x.shape()[size_t(d)];
    if (n == 1) continue;
    if (reduced[size_t(d)])
      red.push_back({n, x.strides()[size_t(d)], 0});
    else
      kept.push_back({n, x.strides()[size_t(d)], out.strides()[size_t(d)]});
  }
  coalesce(kept);
  coalesce(red);
}

}  // namespace peft
