// safetensors reading (mmap, validated, zero-copy where alignment allows, lazy
// onto meta) and writing (atomic: temporary file in the same folder, fsync, rename).
//
// Reading rules (every violation throws peft::Error naming the file and the problem):
//  - 8-byte little-endian header length N, N <= file size - 8 and N <= ReadLimits::max_header_bytes
//    (checked before anything is allocated; the JSON is parsed straight from the mapping);
//  - the header is a JSON object (no duplicate keys, nesting depth <= 8) whose entries are
//    `__metadata__` (an object of string -> string) or tensors
//    {"dtype": F64|F32|F16|BF16|I64|I32|U8|BOOL, "shape": [non-negative ints],
//     "data_offsets": [begin, end]}; unknown extra fields of an entry are ignored;
//  - begin <= end <= data section size, end - begin == numel * element size (overflow checked),
//    no two tensors overlap, at most ReadLimits::max_tensors tensors.
//  - Lenient on layout: holes between tensors and trailing bytes after the last tensor are
//    accepted (Python's safetensors rejects them; it never writes them, and they are harmless
//    to a reader that checks every range).
// Loaded tensors:
//  - F64/F32/F16/BF16/I64/BOOL are views into the file mapping (no copy) when the data's file
//    offset is a multiple of the element size, else copies. The mapping is private and
//    copy-on-write: writing into a loaded tensor never changes the file. The file stays mapped
//    while any tensor view of it lives. (Truncating the file on disk while it is mapped is
//    outside what any mmap reader can guard against: the OS raises SIGBUS.)
//  - I32 and U8 have no runtime dtype: they are converted to int64 (a copy) on load.
//  - BOOL bytes other than 0/1 are normalised to 1 (a copy), as "nonzero is true".
//  - The private writable mapping is made with MAP_NORESERVE; under strict overcommit
//    (vm.overcommit_memory=2) the kernel still counts it against the commit limit.
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

const char* st_dtype_name(StDType dt);  // "F32", "BF16", ...
size_t st_dtype_size(StDType dt);       // bytes per element
DType runtime_dtype(StDType dt);        // the dtype get() returns (I32/U8 -> int64)
StDType st_dtype_of(DType dt);          // the dtype a runtime tensor is saved as

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
  const TensorInfo& info(const std::string& name) const;  // throws naming the file when absent
  // The tensor, converted to `dt` when given (e.g. bf16 -> float32).
  Tensor get(const std::string& name) const;
  Tensor get(const std::string& name, DType dt) const;
  // A meta tensor with the stored shape and (runtime) dtype: no data touched.
  Tensor get_meta(const std::string& name) const;
  // Byte sizes of the mapped file, its JSON header and its data section.
  uint64_t file_size() const;
  uint64_t header_size() const;
  uint64_t data_size() const;

  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  ~SafetensorsFile();

 private:
  std::unique_ptr<Impl> impl_;
};

struct LoadOptions {
  bool lazy = false;          // meta tensors only
  bool convert = false;       // convert every floating tensor to `dtype` (integer/bool kept)
  DType dtype = DType::float32;
  ReadLimits limits;
};

// All tensors of the file, ordered by name (as Python's safetensors.torch.load_file).
StateDict load_safetensors(const std::string& path, const LoadOptions& opts = {});
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path,
                                                             const ReadLimits& limits = {});

struct SaveOptions {
  std::map<std::string, std::string> metadata;  // written as __metadata__ when non-empty
  bool convert = false;
  DType dtype = DType::float32;  // target dtype when convert (floating tensors only)
};

// Writes atomically; tensors may be non-contiguous or on another device. Tensors sharing
// storage (tied weights) are each written in full (Python's save_file refuses them instead). The layout is
// Python safetensors' byte for byte: compact JSON header with `__metadata__` first (keys
// sorted), tensors ordered by dtype alignment descending then by name, header padded with
// spaces to a multiple of 8, then the raw little-endian data in the same order.
// The file is written to a unique temporary file in the target's folder, checked, fsync'ed and
// renamed over `path`; on any failure the temporary file is removed, the old file stays intact
// and peft::Error says what failed.
void save_safetensors(const std::string& path, const StateDict& tensors, const SaveOptions& opts = {});

struct TensorSpec {
  std::string name;
  DType dtype;
  Shape shape;
};

// save_safetensors one tensor at a time, for outputs larger than memory (`peft merge`): the
// header is written from the specs first, then each tensor in order(), then commit() makes
// the file appear atomically. Destroyed without commit() (an exception, a refused tensor),
// it removes its temporary file and the previous file stays intact.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, std::vector<TensorSpec> specs,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // The order write() must follow (Python's layout: dtype alignment descending, then name).
  const std::vector<std::string>& order() const;
  // The next tensor of order(); its dtype and shape must be the spec's.
  void write(const std::string& name, const Tensor& t);
  // Every tensor written: fsync, rename over the path.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft::io
