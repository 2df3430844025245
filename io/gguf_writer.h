// GGUF writer (version 3, llama.cpp's model / adapter file format), the layout gguf-py's
// GGUFWriter produces: header (magic, version 3, tensor count, metadata count), metadata in the
// order added, tensor infos in the order added, zero padding to the alignment, then each
// tensor's data padded to the alignment (offsets multiples of it). The alignment is 32 unless
// another is asked for (then `general.alignment` is written as a u32, as gguf-py does).
//
// Values: every scalar GGUF type, strings, and arrays of scalars or strings (GGUFValue, the
// reader's type, so a file's metadata can be copied through). Tensors: float32, float16,
// bfloat16, float64, int64 and the block-quantized runtime dtypes (their GGML blocks as they
// are); shapes row-major as the reader gives them (written as GGUF's reversed `ne`), 1 to 4
// dimensions. Names follow llama.cpp's limits (non-empty, < 64 bytes for tensors).
//
// write() streams to a hidden temporary file in the target's folder, fsyncs it and renames it
// over the target: on any error (a peft::Error naming the file) the old file is unchanged and
// the temporary file removed. Mistakes (a duplicate key or tensor, a non-contiguous tensor, a
// value that does not fit its type) are refused when added, naming the key or tensor.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "runtime/tensor.h"

namespace peft::io {

// The GGML type code of a runtime dtype (F32 = 0, F16 = 1, BF16 = 30, Q8_0 = 8, ...); a
// peft::Error for dtypes GGUF has no type for (bool).
uint32_t ggml_type_of(DType dt);

class GGUFWriter {
 public:
  explicit GGUFWriter(uint32_t alignment = 32);

  void add_string(const std::string& key, const std::string& value);
  void add_u32(const std::string& key, uint32_t value);
  void add_i32(const std::string& key, int32_t value);
  void add_u64(const std::string& key, uint64_t value);
  void add_f32(const std::string& key, float value);
  void add_f64(const std::string& key, double value);
  void add_bool(const std::string& key, bool value);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);
  void add_u32_array(const std::string& key, const std::vector<uint32_t>& values);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& values);
  void add_f32_array(const std::string& key, const std::vector<float>& values);
  // Any value as the reader returns it (GGUFFile::metadata()), e.g. to copy a file's metadata.
  // Nested arrays are refused.
  void add(const std::string& key, const GGUFValue& value);
  bool has(const std::string& key) const;

  // `t` is kept by reference until write() (a contiguous cpu tensor; it is not copied).
  void add_tensor(const std::string& name, const Tensor& t);
  size_t tensor_count() const { return tensors_.size(); }

  // The whole file's bytes (small files, tests).
  std::string to_bytes() const;
  // Writes the file atomically (temporary file, fsync, rename, fsync of the folder).
  void write(const std::string& path) const;

 private:
  struct TensorEntry {
    std::string name;
    Tensor t;
    uint32_t type;
    uint64_t offset;
    uint64_t nbytes;
  };
  std::string header_bytes() const;
  void check_new_key(const std::string& key) const;
  uint32_t alignment_;
  std::vector<std::pair<std::string, GGUFValue>> kv_;
  std::vector<TensorEntry> tensors_;
  uint64_t data_size_ = 0;
};

}  // namespace peft::io
