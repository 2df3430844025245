#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace peft {

enum class DType : uint8_t { float32, float64, bfloat16, float16, int64, bool_ };

enum class Device : uint8_t { cpu, cuda, meta };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);  // "float32", "bfloat16", ...
bool is_floating(DType dt);
// Result dtype of a binary op, following PyTorch's promotion for tensor/tensor.
DType promote_types(DType a, DType b);
const char* device_name(Device d);  // "cpu", "cuda", "meta"

}  // namespace peft
