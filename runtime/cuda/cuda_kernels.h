// Internal: the CUDA backend's elementwise (cuda_elementwise.cu) and reduction / softmax /
// index / random (cuda_reduce_index.cu) launchers, called by CudaBackend (cuda_backend.cu)
// on the current device with the arguments runtime/backend.h documents. No CUDA types here.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/backend.h"

namespace peft::cuda {

void copy(const Tensor& src, Tensor& dst);
void fill(Tensor& dst, double value);
void unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1);
void binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out);
void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out);

void reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced, Tensor& out);
void softmax(const Tensor& x, int64_t dim, bool log, Tensor& out);
void index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out);
void index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src);
void gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out);
void scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src);
void random(RandomKind k, Tensor& out, double a, double b, uint64_t seed, uint64_t counter);

}  // namespace peft::cuda
