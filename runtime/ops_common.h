// Internal helpers shared by the op definitions (runtime/ops_*.cpp).
#pragma once
#include <string>

#include "runtime/autograd.h"
#include "runtime/backend.h"
#include "runtime/op_list.h"
#include "runtime/ops.h"

namespace peft::detail {

int64_t wrap_dim(const char* op, int64_t dim, int64_t rank);
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
Device common_device(const char* op, const Tensor& a, const Tensor& b);
// View of `t` broadcast to `shape` (zero strides), no autograd.
Tensor expand_raw(const Tensor& t, const Shape& shape);
// Reshape without autograd: a view when strides allow, else a contiguous copy.
Tensor reshape_raw(const Tensor& t, const Shape& shape);
// Sorted, wrapped, de-duplicated reduction dims (empty input = all dims).
std::vector<int64_t> reduce_dims(const char* op, const std::vector<int64_t>& dims, int64_t rank);
// Re-inserts size-1 dims at the reduced positions of a keepdim=false result.
Tensor unsqueeze_reduced(const Tensor& g, const std::vector<int64_t>& dims, int64_t rank);
void check_defined(const char* op, const Tensor& t, const char* what = "input");
// layer_norm after its argument checks: the fused kernel over the last N elements
// (ops_transformer.cpp).
Tensor layer_norm_fused(const Tensor& x, int64_t N, const Tensor& weight, const Tensor& bias, double eps);

}  // namespace peft::detail
