// GGUF (llama.cpp's model file format, versions 2 and 3): a validated reader with the file
// memory-mapped and tensors as zero-copy views of it.
//
// Reading rules (every violation is a peft::FormatError naming the file and the field):
//  - magic "GGUF", version 2 or 3 (version 1's 32-bit counts are refused), tensor and metadata
//    counts within ReadLimits, every string and array length within what is left of the file;
//  - metadata values of every GGUF type (u8 .. f64, bool, string, arrays of them and nested
//    arrays), unknown type codes refused, duplicate keys refused, nesting depth <= 4;
//  - `general.alignment` a u32 power of two (default 32); the data section starts at the
//    header's end rounded up to it;
//  - tensor infos: unique non-empty names, 1 to 4 dimensions, every dimension > 0 and the
//    element count and byte size free of overflow, a known GGML type whose block size divides
//    the first dimension, offsets multiples of the alignment, data inside the file, no two
//    tensors overlapping.
// Tensors: F32, F16, BF16, F64 and I64 are views of the mapping in the runtime dtype; the
// GGML block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K are views as quantized
// runtime dtypes (kept quantized); other GGML types are listed and sized (inspect) but
// refused by tensor(). Shapes are row-major: GGUF's ne = [cols, rows] becomes [rows, cols].
// The mapping is private and copy-on-write, so writing into a loaded tensor never changes
// the file.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tensor.h"

namespace peft::io {

enum class GGUFValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
  u64 = 10, i64 = 11, f64 = 12
};
const char* gguf_value_type_name(GGUFValueType t);  // "u32", "string", "array", ...

// One metadata value: its type (for arrays also the element type) and the value as JSON
// (integers as integers, floats as floats, strings as strings, arrays as arrays).
struct GGUFValue {
  GGUFValueType type = GGUFValueType::u8;
  GGUFValueType elem_type = GGUFValueType::u8;  // arrays only
  nlohmann::ordered_json value;
};

// GGML's tensor type codes (ggml.h); every one that has a fixed block layout is sized.
struct GGMLTypeInfo {
  uint32_t code;
  const char* name;      // "F32", "Q4_1", "Q6_K", ...
  int64_t block_elems;   // values per block
  uint64_t block_bytes;  // bytes per block
};
// nullptr for a code GGML does not define (or that was removed).
const GGMLTypeInfo* ggml_type_info(uint32_t code);
// The runtime dtype a GGML type loads as; nullopt when peft.cpp cannot use it.
std::optional<DType> ggml_runtime_dtype(uint32_t code);

struct GGUFTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // GGUF's dimensions, innermost first
  Shape shape;               // row-major: ne reversed
  uint32_t ggml_type = 0;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
};

struct GGUFLimits {
  uint64_t max_tensors = 1u << 20;
  uint64_t max_kv = 1u << 20;
  uint64_t max_string_bytes = 64ull << 20;
  uint64_t max_array_elems = 1ull << 28;
};

class GGUFFile {
 public:
  static std::shared_ptr<GGUFFile> open(const std::string& path, const GGUFLimits& limits = {});
  const std::string& path() const;
  uint32_t version() const;
  uint64_t alignment() const;
  uint64_t file_size() const;
  uint64_t data_offset() const;  // file offset of the data section

  // Metadata in file order.
  const std::vector<std::pair<std::string, GGUFValue>>& metadata() const;
  bool has(const std::string& key) const;
  const GGUFValue* find(const std::string& key) const;
  // Typed reads; a missing key or a wrong type is a peft::FormatError naming both.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;  // any integer type
  double get_float(const std::string& key) const;  // f32 / f64 (or an integer)
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  // Defaults for absent keys (a present key of the wrong type still throws).
  std::string get_string(const std::string& key, const std::string& dflt) const;
  int64_t get_int(const std::string& key, int64_t dflt) const;
  double get_float(const std::string& key, double dflt) const;
  bool get_bool(const std::string& key, bool dflt) const;

  const std::vector<GGUFTensorInfo>& tensors() const;  // in file order
  bool contains(const std::string& name) const;
  const GGUFTensorInfo& info(const std::string& name) const;  // peft::KeyError naming the file when absent
  // The tensor as a view of the mapping (quantized types stay quantized).
  Tensor tensor(const std::string& name) const;
  // Converted to `dt` (a floating dtype; quantized tensors are dequantized).
  Tensor tensor(const std::string& name, DType dt) const;
  // The raw bytes of a tensor's data.
  const uint8_t* data(const GGUFTensorInfo& ti) const;
  // Gives the resident pages wholly inside a tensor's data back to the OS (madvise DONTNEED; a
  // later read faults them in again from the file). For a tensor the caller has copied and will
  // not read through the mapping (a re-ordered copy), so it is not resident twice.
  void release_pages(const GGUFTensorInfo& ti) const;

  struct Impl;
  explicit GGUFFile(std::unique_ptr<Impl> impl);
  ~GGUFFile();

 private:
  std::unique_ptr<Impl> impl_;
};

// True when the file at `path` starts with the GGUF magic (a cheap check for dispatch).
bool is_gguf_file(const std::string& path);

}  // namespace peft::io
