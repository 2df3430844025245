// Internal to io/safetensors_*.cpp (not installed): what the header parser
// (safetensors_header.cpp), the reader (safetensors_read.cpp) and the writer
// (safetensors_write.cpp) share.
#pragma once
#include <sys/mman.h>

#include <bit>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/mapped_file.h"
#include "io/safetensors.h"

namespace peft::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; peft.cpp's I/O assumes a little-endian host");


struct SafetensorsFile::Impl {
  std::string path;
  std::shared_ptr<detail::Mapping> map;
  uint64_t file_size = 0;
  uint64_t header_size = 0;
  uint64_t data_size = 0;
  const uint8_t* data = nullptr;  // start of the data section inside the mapping
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, size_t> index;
};

namespace detail {

// Opens, maps and validates `path` (safetensors_header.cpp).
std::unique_ptr<SafetensorsFile::Impl> parse_file(const std::string& path, const ReadLimits& limits);
// Position in the Rust crate's `Dtype` enum (the writer's sort key).
int st_dtype_rank(StDType dt);

}  // namespace detail

}  // namespace peft::io
