// Singular value decomposition on the CPU (Eigen), kept in its own translation
// unit so the heavy Eigen SVD templates compile once and apart from the other kernels.
#pragma once
#include "runtime/tensor.h"

namespace peft::cpu {

// a = u·diag(s)·vh; all contiguous float64. u [M, M] and vh [N, N] for full
// matrices, else u [M, K] and vh [K, N], K = min(M, N); s [K] descending.
void svd_f64(const Tensor& a, Tensor& u, Tensor& s, Tensor& vh);

}  // namespace peft::cpu
