// safetensors reading (mmap, validated, zero-copy where alignment allows, lazy
// onto meta) and writing (atomic: temporary file in the same folder, fsync, rename).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/state_dict.h"
#include "runtime/tensor.h"

namespace peft::io {

// dtypes of the format; I32 and U8 are read (converted to int64 on load) but
// have no runtime dtype of their own.
enum class StDType { F64, F32, F16, BF16, I64, I32, U8, BOOL };

struct TensorInfo {
  std::string name;
  StDType dtype;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

struct ReadLimits {
  uint64_t max_header_bytes = 100ull << 20;  // 100 MiB of JSON
  uint64_t max_tensors = 1u << 20;
};

// An opened, validated file. Tensors are views into the mapping when their
// dtype is a runtime dtype and their data is suitably aligned; otherwise copies.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path, const ReadLimits& limits = {});
  const std::string& path() const;
  const std::map<std::string, std::string>& metadata() const;
  const std::vector<TensorInfo>& tensors() const;  // in header order
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  // The tensor, converted to `dt` when given (e.g. bf16 -> float32).
  Tensor get(const std::string& name) const;
  Tensor get(const std::string& name, DType dt) const;
  // A meta tensor with the stored shape and (runtime) dtype: no data touched.
  Tensor get_meta(const std::string& name) const;

  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  ~SafetensorsFile();

 private:
  std::unique_ptr<Impl> impl_;
};

struct LoadOptions {
  bool lazy = false;          // meta tensors only
  bool convert = false;       // convert every tensor to `dtype`
  DType dtype = DType::float32;
  ReadLimits limits;
};

StateDict load_safetensors(const std::string& path, const LoadOptions& opts = {});
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);

struct SaveOptions {
  std::map<std::string, std::string> metadata;  // written as __metadata__ when non-empty
  bool convert = false;
  DType dtype = DType::float32;  // target dtype when convert
};

// Writes atomically; tensors may be non-contiguous or on another device.
void save_safetensors(const std::string& path, const StateDict& tensors, const SaveOptions& opts = {});

}  // namespace peft::io
