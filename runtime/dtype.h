#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace peft {

// Element dtypes, then GGML's block-quantized formats (ggml-common.h): a quantized tensor's
// last dimension is a whole number of blocks, each block holding `dtype_block_elems` values in
// `dtype_block_bytes` bytes. Quantized tensors are frozen storage: linear / matmul / embedding
// read them directly, `to(float32)` dequantizes, other ops refuse them.
enum class DType : uint8_t {
  float32, float64, bfloat16, float16, int64, bool_,
  q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k
};

enum class Device : uint8_t { cpu, cuda, meta };

// Bytes per element; a peft::Error for a block-quantized dtype (use dtype_nbytes).
size_t dtype_size(DType dt);
const char* dtype_name(DType dt);  // "float32", "bfloat16", "q4_1", ...
bool is_floating(DType dt);        // float32, float64, bfloat16, float16 (not quantized types)
bool is_quantized(DType dt);       // the GGML block formats
int64_t dtype_block_elems(DType dt);  // values per block (1 for element dtypes)
size_t dtype_block_bytes(DType dt);   // bytes per block (dtype_size for element dtypes)
// Bytes of `numel` values; for a quantized dtype numel must be a multiple of the block size.
size_t dtype_nbytes(DType dt, int64_t numel);
// Result dtype of a binary op, following PyTorch's promotion for tensor/tensor.
DType promote_types(DType a, DType b);
const char* device_name(Device d);  // "cpu", "cuda", "meta"

}  // namespace peft
