// GGUF reader: header parsing with every length and offset checked against the file before
// it is used, then tensors as views of the private mapping (io/gguf.h lists the rules).
#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <unordered_map>

#include "io/mapped_file.h"
#include "runtime/ops.h"

namespace peft::io {

static_assert(std::endian::native == std::endian::little, "GGUF is little-endian; peft.cpp assumes a little-endian host");

using ojson = nlohmann::ordered_json;

const char* gguf_value_type_name(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::u8: return "u8";
    case GGUFValueType::i8: return "i8";
    case GGUFValueType::u16: return "u16";
    case GGUFValueType::i16: return "i16";
    case GGUFValueType::u32: return "u32";
    case GGUFValueType::i32: return "i32";
    case GGUFValueType::f32: return "f32";
    case GGUFValueType::boolean: return "bool";
    case GGUFValueType::string: return "string";
    case GGUFValueType::array: return "array";
    case GGUFValueType::u64: return "u64";
    case GGUFValueType::i64: return "i64";
    case GGUFValueType::f64: return "f64";
  }
  return "?";
}

namespace {

// ggml.c's type_traits: block sizes and bytes per block (removed codes have no entry).
constexpr GGMLTypeInfo kGgmlTypes[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},      {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},   {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},   {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
    {40, "NVFP4", 64, 36},    {41, "Q1_0", 128, 18},    {42, "Q2_0", 64, 18},
};

using detail::errno_str;
using detail::Fd;
using detail::Mapping;

constexpr int kMaxArrayDepth = 4;

// Reads the header front to back; every read checks what is left of the file first.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size, const std::string& path, const GGUFLimits& lim)
      : base_(base), size_(size), path_(path), lim_(lim) {}
  uint64_t pos() const { return pos_; }

  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const uint64_t n = read<uint64_t>(what + " (string length)");
    if (n > lim_.max_string_bytes)
      fail_format(path_, ": ", what, ": string length ", n, " exceeds the limit of ", lim_.max_string_bytes,
                  " bytes (GGUFLimits::max_string_bytes); the file is corrupt");
    need(n, what + " (string of " + std::to_string(n) + " bytes)");
    std::string s(reinterpret_cast<const char*>(base_ + pos_), size_t(n));
    pos_ += n;
    return s;
  }
  GGUFValueType read_type(const std::string& what) {
    const uint32_t t = read<uint32_t>(what + " (value type)");
    if (t > uint32_t(GGUFValueType::f64))
      fail_format(path_, ": ", what, ": unknown value type ", t, " at byte ", pos_ - 4, " (GGUF defines 0 to 12)");
    return GGUFValueType(t);
  }
  // One value of type t; arrays recurse up to kMaxArrayDepth.
  ojson read_value(GGUFValueType t, const std::string& what, int depth, GGUFValueType* elem_out = nullptr) {
    switch (t) {
      case GGUFValueType::u8: return read<uint8_t>(what);
      case GGUFValueType::i8: return read<int8_t>(what);
      case GGUFValueType::u16: return read<uint16_t>(what);
      case GGUFValueType::i16: return read<int16_t>(what);
      case GGUFValueType::u32: return read<uint32_t>(what);
      case GGUFValueType::i32: return read<int32_t>(what);
      case GGUFValueType::u64: return read<uint64_t>(what);
      case GGUFValueType::i64: return read<int64_t>(what);
      case GGUFValueType::f32: return double(read<float>(what));
      case GGUFValueType::f64: return read<double>(what);
      case GGUFValueType::boolean: {
        const uint8_t b = read<uint8_t>(what);
        if (b > 1) fail_format(path_, ": ", what, ": bool value ", int(b), " at byte ", pos_ - 1, " is not 0 or 1");
        return b == 1;
      }
      case GGUFValueType::string: return read_string(what);
      case GGUFValueType::array: {
        if (depth >= kMaxArrayDepth)
          fail_format(path_, ": ", what, ": arrays nested deeper than ", kMaxArrayDepth, " levels");
        const GGUFValueType et = read_type(what + " (array element type)");
        if (elem_out) *elem_out = et;
        const uint64_t n = read<uint64_t>(what + " (array length)");
        if (n > lim_.max_array_elems)
          fail_format(path_, ": ", what, ": array length ", n, " exceeds the limit of ", lim_.max_array_elems,
                      " (GGUFLimits::max_array_elems)");
        // every element takes at least one byte: a length past the file's end is refused here,
        // before anything is allocated
        const uint64_t min_elem = min_size(et);
        if (n > (size_ - pos_) / min_elem)
          fail_format(path_, ": ", what, ": array of ", n, " ", gguf_value_type_name(et), " values needs at least ",
                      n, " x ", min_elem, " bytes but only ", size_ - pos_, " are left in the file");
        ojson arr = ojson::array();
        arr.get_ref<ojson::array_t&>().reserve(size_t(n));
        for (uint64_t i = 0; i < n; ++i) arr.push_back(read_value(et, what + "[" + std::to_string(i) + "]", depth + 1));
        return arr;
      }
    }
    fail_format(path_, ": ", what, ": unknown value type");
  }

  void need(uint64_t n, const std::string& what) const {
    if (n > size_ - pos_)
      fail_format(path_, ": ", what, " needs ", n, " bytes at byte ", pos_, " but the file ends at byte ", size_,
                  " (truncated or not a GGUF file)");
  }

 private:
  static uint64_t min_size(GGUFValueType t) {
    switch (t) {
      case GGUFValueType::u16: case GGUFValueType::i16: return 2;
      case GGUFValueType::u32: case GGUFValueType::i32: case GGUFValueType::f32: return 4;
      case GGUFValueType::u64: case GGUFValueType::i64: case GGUFValueType::f64: case GGUFValueType::string: return 8;
      case GGUFValueType::array: return 12;
      default: return 1;
    }
  }
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
  const GGUFLimits& lim_;
};

bool mul_overflows(uint64_t a, uint64_t b, uint64_t& out) { return __builtin_mul_overflow(a, b, &out); }

}  // namespace

const GGMLTypeInfo* ggml_type_info(uint32_t code) {
  for (const auto& t : kGgmlTypes)
    if (t.code == code) return &t;
  return nullptr;
}

std::optional<DType> ggml_runtime_dtype(uint32_t code) {
  switch (code) {
    case 0: return DType::float32;
    case 1: return DType::float16;
    case 30: return DType::bfloat16;
    case 28: return DType::float64;
    case 27: return DType::int64;
    case 2: return DType::q4_0;
    case 3: return DType::q4_1;
    case 6: return DType::q5_0;
    case 7: return DType::q5_1;
    case 8: return DType::q8_0;
    case 12: return DType::q4_k;
    case 13: return DType::q5_k;
    case 14: return DType::q6_k;
    default: return std::nullopt;
  }
}

struct GGUFFile::Impl {
  std::string path;
  std::shared_ptr<Mapping> map;
  uint64_t file_size = 0, data_offset = 0, alignment = 32;
  uint32_t version = 0;
  std::vector<std::pair<std::string, GGUFValue>> metadata;
  std::unordered_map<std::string, size_t> meta_index;
  std::vector<GGUFTensorInfo> tensors;
  std::unordered_map<std::string, size_t> tensor_index;
};

GGUFFile::GGUFFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GGUFFile::~GGUFFile() = default;

std::shared_ptr<GGUFFile> GGUFFile::open(const std::string& path, const GGUFLimits& limits) {
  auto im = std::make_unique<Impl>();
  im->path = path;
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (f.fd < 0) fail_io(path, ": cannot open for reading: ", errno_str(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail_io(path, ": cannot stat: ", errno_str(errno));
  if (S_ISDIR(st.st_mode)) fail_io(path, ": is a directory, not a GGUF file");
  if (!S_ISREG(st.st_mode)) fail_io(path, ": is not a regular file, cannot map it");
  const uint64_t size = uint64_t(st.st_size);
  if (size < 24)
    fail_format(path, ": file is only ", size, " bytes; a GGUF file starts with a 24-byte header (magic, version, counts)");
  auto map = std::make_shared<Mapping>();
  void* addr = ::mmap(nullptr, size_t(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, f.fd, 0);
  if (addr == MAP_FAILED) fail_io(path, ": cannot map ", size, " bytes: ", errno_str(errno));
  map->addr = addr;
  map->size = size_t(size);
  const auto* base = static_cast<const uint8_t*>(addr);
  im->map = map;
  im->file_size = size;

  if (std::memcmp(base, "GGUF", 4) != 0) {
    std::string got;
    for (int i = 0; i < 4; ++i) got += (base[i] >= 32 && base[i] < 127) ? char(base[i]) : '?';
    fail_format(path, ": magic is '", got, "', not 'GGUF' (not a GGUF file)");
  }
  Cursor c(base, size, path, limits);
  c.read<uint32_t>("magic");
  im->version = c.read<uint32_t>("version");
  if (im->version == 1)
    fail_format(path, ": GGUF version 1 (32-bit counts, 2023) is not supported; convert it with a current llama.cpp");
  if (im->version != 2 && im->version != 3)
    fail_format(path, ": GGUF version ", im->version, " is not supported (only 2 and 3)");
  const uint64_t n_tensors = c.read<uint64_t>("tensor_count"), n_kv = c.read<uint64_t>("metadata_kv_count");
  if (n_tensors > limits.max_tensors)
    fail_format(path, ": tensor_count ", n_tensors, " exceeds the limit of ", limits.max_tensors, " (GGUFLimits::max_tensors)");
  if (n_kv > limits.max_kv)
    fail_format(path, ": metadata_kv_count ", n_kv, " exceeds the limit of ", limits.max_kv, " (GGUFLimits::max_kv)");
  // each key-value takes >= 12 bytes and each tensor info >= 24: counts past the file are refused early
  if (n_kv > (size - c.pos()) / 12)
    fail_format(path, ": metadata_kv_count ", n_kv, " cannot fit in the ", size - c.pos(), " bytes left of the file");
  if (n_tensors > (size - c.pos()) / 24)
    fail_format(path, ": tensor_count ", n_tensors, " cannot fit in the ", size - c.pos(), " bytes left of the file");

  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string where = "metadata entry " + std::to_string(i);
    std::string key = c.read_string(where + " key");
    if (key.empty()) fail_format(path, ": ", where, " has an empty key");
    if (im->meta_index.count(key)) fail_format(path, ": duplicate metadata key '", key, "'");
    GGUFValue v;
    v.type = c.read_type("metadata '" + key + "'");
    v.value = c.read_value(v.type, "metadata '" + key + "'", 0, &v.elem_type);
    im->meta_index[key] = im->metadata.size();
    im->metadata.emplace_back(std::move(key), std::move(v));
  }
  if (auto it = im->meta_index.find("general.alignment"); it != im->meta_index.end()) {
    const GGUFValue& v = im->metadata[it->second].second;
    if (v.type != GGUFValueType::u32)
      fail_format(path, ": general.alignment must be a u32, got ", gguf_value_type_name(v.type));
    const uint64_t a = v.value.get<uint64_t>();
    if (a == 0 || (a & (a - 1)) != 0) fail_format(path, ": general.alignment ", a, " is not a power of two");
    im->alignment = a;
  }

  for (uint64_t i = 0; i < n_tensors; ++i) {
    GGUFTensorInfo ti;
    const std::string where = "tensor info " + std::to_string(i);
    ti.name = c.read_string(where + " name");
    if (ti.name.empty()) fail_format(path, ": ", where, " has an empty name");
    const std::string tw = "tensor '" + ti.name + "'";
    if (im->tensor_index.count(ti.name)) fail_format(path, ": duplicate tensor name '", ti.name, "'");
    const uint32_t nd = c.read<uint32_t>(tw + " n_dims");
    if (nd < 1 || nd > 4) fail_format(path, ": ", tw, " has ", nd, " dimensions (GGUF allows 1 to 4)");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t ne = c.read<uint64_t>(tw + " dimension " + std::to_string(d));
      if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max()))
        fail_format(path, ": ", tw, " dimension ", d, " is ", ne, " (must be in [1, 2^63))");
      if (mul_overflows(numel, ne, numel) || numel > uint64_t(std::numeric_limits<int64_t>::max()))
        fail_format(path, ": ", tw, ": the element count overflows 64 bits");
      ti.ne.push_back(ne);
    }
    ti.ggml_type = c.read<uint32_t>(tw + " type");
    const GGMLTypeInfo* tt = ggml_type_info(ti.ggml_type);
    if (!tt) fail_format(path, ": ", tw, " has GGML type ", ti.ggml_type, ", which GGML does not define");
    if (ti.ne[0] % uint64_t(tt->block_elems))
      fail_format(path, ": ", tw, " is ", tt->name, " but its first dimension ", ti.ne[0], " is not a multiple of the block size ",
                  tt->block_elems);
    if (mul_overflows(numel / uint64_t(tt->block_elems), tt->block_bytes, ti.nbytes))
      fail_format(path, ": ", tw, ": the byte size overflows 64 bits");
    ti.offset = c.read<uint64_t>(tw + " offset");
    if (ti.offset % im->alignment)
      fail_format(path, ": ", tw, " offset ", ti.offset, " is not a multiple of the alignment ", im->alignment);
    for (auto it = ti.ne.rbegin(); it != ti.ne.rend(); ++it) ti.shape.push_back(int64_t(*it));
    im->tensor_index[ti.name] = im->tensors.size();
    im->tensors.push_back(std::move(ti));
  }
  im->data_offset = (c.pos() + im->alignment - 1) / im->alignment * im->alignment;
  if (im->data_offset > size && !im->tensors.empty())
    fail_format(path, ": the data section would start at byte ", im->data_offset, ", past the end of the file (", size, " bytes)");
  const uint64_t data_size = size > im->data_offset ? size - im->data_offset : 0;
  std::vector<std::pair<uint64_t, size_t>> ranges;
  for (size_t i = 0; i < im->tensors.size(); ++i) {
    const GGUFTensorInfo& ti = im->tensors[i];
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
      fail_format(path, ": tensor '", ti.name, "' data [", ti.offset, ", ", ti.offset + ti.nbytes,
                  ") of the data section runs past the end of the file (the data section holds ", data_size,
                  " bytes); the file is truncated");
    ranges.emplace_back(ti.offset, i);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t r = 1; r < ranges.size(); ++r) {
    const GGUFTensorInfo& a = im->tensors[ranges[r - 1].second];
    const GGUFTensorInfo& b = im->tensors[ranges[r].second];
    if (a.nbytes && b.nbytes && a.offset + a.nbytes > b.offset)
      fail_format(path, ": tensors '", a.name, "' and '", b.name, "' overlap in the data section");
  }
  return std::make_shared<GGUFFile>(std::move(im));
}

const std::string& GGUFFile::path() const { return impl_->path; }
uint32_t GGUFFile::version() const { return impl_->version; }
uint64_t GGUFFile::alignment() const { return impl_->alignment; }
uint64_t GGUFFile::file_size() const { return impl_->file_size; }
uint64_t GGUFFile::data_offset() const { return impl_->data_offset; }
const std::vector<std::pair<std::string, GGUFValue>>& GGUFFile::metadata() const { return impl_->metadata; }
bool GGUFFile::has(const std::string& key) const { return impl_->meta_index.count(key) != 0; }
const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = impl_->meta_index.find(key);
  return it == impl_->meta_index.end() ? nullptr : &impl_->metadata[it->second].second;
}

namespace {
bool is_int_type(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::u8: case GGUFValueType::i8: case GGUFValueType::u16: case GGUFValueType::i16:
    case GGUFValueType::u32: case GGUFValueType::i32: case GGUFValueType::u64: case GGUFValueType::i64: return true;
    default: return false;
  }
}
bool is_float_type(GGUFValueType t) { return t == GGUFValueType::f32 || t == GGUFValueType::f64; }
std::string type_desc(const GGUFValue& v) {
  return v.type == GGUFValueType::array ? std::string("array of ") + gguf_value_type_name(v.elem_type)
                                        : gguf_value_type_name(v.type);
}
}  // namespace

#define PEFT_GGUF_GET(key, expect)                                                                      \
  const GGUFValue* v = find(key);                                                                       \
  if (!v) fail_format(impl_->path, ": metadata key '", key, "' is missing (expected ", expect, ")");

std::string GGUFFile::get_string(const std::string& key) const {
  PEFT_GGUF_GET(key, "a string");
  if (v->type != GGUFValueType::string) fail_format(impl_->path, ": metadata '", key, "' is ", type_desc(*v), ", expected a string");
  return v->value.get<std::string>();
}
int64_t GGUFFile::get_int(const std::string& key) const {
  PEFT_GGUF_GET(key, "an integer");
  if (!is_int_type(v->type)) fail_format(impl_->path, ": metadata '", key, "' is ", type_desc(*v), ", expected an integer");
  if (v->value.is_number_unsigned() && v->value.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    fail_format(impl_->path, ": metadata '", key, "' value ", v->value.get<uint64_t>(), " does not fit int64");
  return v->value.get<int64_t>();
}
double GGUFFile::get_float(const std::string& key) const {
  PEFT_GGUF_GET(key, "a number");
  if (!is_float_type(v->type) && !is_int_type(v->type))
    fail_format(impl_->path, ": metadata '", key, "' is ", type_desc(*v), ", expected a number");
  return v->value.get<double>();
}
bool GGUFFile::get_bool(const std::string& key) const {
  PEFT_GGUF_GET(key, "a bool");
  if (v->type != GGUFValueType::boolean) fail_format(impl_->path, ": metadata '", key, "' is ", type_desc(*v), ", expected a bool");
  return v->value.get<bool>();
}
std::vector<std::string> GGUFFile::get_string_array(const std::string& key) const {
  PEFT_GGUF_GET(key, "an array of strings");
  if (v->type != GGUFValueType::array || v->elem_type != GGUFValueType::string)
    fail_format(impl_->path, ": metadata '", key, "' is ", type_desc(*v), ", expected an array of strings");
  std::vector<std::string> out;
  out.reserve(v->value.size());
  for (const auto& e : v->value) out.push_back(e.get<std::string>());
  return out;
}
std::vector<double> GGUFFile::get_float_array(const std::string& key) const {
  PEFT_GGUF_GET(key, "an array of numbers");
  if (v->type != GGUFValueType::array || !(is_float_type(v->elem_type) || is_int_type(v->elem_type)))
    fail_format(impl_->path, ": metadata '", key, "' is ", type_desc(*v), ", expected an array of numbers");
  std::vector<double> out;
  out.reserve(v->value.size());
  for (const auto& e : v->value) out.push_back(e.get<double>());
  return out;
}
std::vector<int64_t> GGUFFile::get_int_array(const std::string& key) const {
  PEFT_GGUF_GET(key, "an array of integers");
  if (v->type != GGUFValueType::array || !is_int_type(v->elem_type))
    fail_format(impl_->path, ": metadata '", key, "' is ", type_desc(*v), ", expected an array of integers");
  std::vector<int64_t> out;
  out.reserve(v->value.size());
  for (const auto& e : v->value) out.push_back(e.get<int64_t>());
  return out;
}
#undef PEFT_GGUF_GET

std::string GGUFFile::get_string(const std::string& key, const std::string& dflt) const {
  return has(key) ? get_string(key) : dflt;
}
int64_t GGUFFile::get_int(const std::string& key, int64_t dflt) const { return has(key) ? get_int(key) : dflt; }
double GGUFFile::get_float(const std::string& key, double dflt) const { return has(key) ? get_float(key) : dflt; }
bool GGUFFile::get_bool(const std::string& key, bool dflt) const { return has(key) ? get_bool(key) : dflt; }

const std::vector<GGUFTensorInfo>& GGUFFile::tensors() const { return impl_->tensors; }
bool GGUFFile::contains(const std::string& name) const { return impl_->tensor_index.count(name) != 0; }

const GGUFTensorInfo& GGUFFile::info(const std::string& name) const {
  auto it = impl_->tensor_index.find(name);
  if (it != impl_->tensor_index.end()) return impl_->tensors[it->second];
  std::string msg = impl_->path + ": no tensor named '" + name + "'";
  const auto& ts = impl_->tensors;
  if (!ts.empty()) {
    msg += "; the file holds " + std::to_string(ts.size()) + " tensors, e.g. ";
    for (size_t i = 0; i < std::min<size_t>(ts.size(), 3); ++i) msg += (i ? ", '" : "'") + ts[i].name + "'";
  }
  throw KeyError(msg);
}

const uint8_t* GGUFFile::data(const GGUFTensorInfo& ti) const {
  return static_cast<const uint8_t*>(impl_->map->addr) + impl_->data_offset + ti.offset;
}

void GGUFFile::release_pages(const GGUFTensorInfo& ti) const {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data(ti)), end = begin + ti.nbytes;
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

Tensor GGUFFile::tensor(const std::string& name) const {
  const GGUFTensorInfo& ti = info(name);
  const auto dt = ggml_runtime_dtype(ti.ggml_type);
  if (!dt) {
    std::string supported;
    for (const auto& t : kGgmlTypes)
      if (ggml_runtime_dtype(t.code)) supported += (supported.empty() ? "" : ", ") + std::string(t.name);
    fail_format(impl_->path, ": tensor '", name, "' is ", ggml_type_info(ti.ggml_type)->name,
                ", which peft.cpp cannot read (supported: ", supported, ")");
  }
  void* p = const_cast<uint8_t*>(data(ti));
  // element dtypes need natural alignment for a zero-copy view; GGUF's default of 32 gives it
  const size_t align = is_quantized(*dt) ? 2 : dtype_size(*dt);
  if (reinterpret_cast<uintptr_t>(p) % align == 0) return from_blob(p, ti.shape, *dt, impl_->map);
  Tensor copy = empty(ti.shape, *dt);
  std::memcpy(copy.raw_data(), p, size_t(ti.nbytes));
  return copy;
}

Tensor GGUFFile::tensor(const std::string& name, DType dt) const {
  if (!is_floating(dt)) fail("GGUFFile::tensor: ", dtype_name(dt), " is not a floating dtype to convert '", name, "' to");
  return tensor(name).to(dt);
}

bool is_gguf_file(const std::string& path) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (f.fd < 0) return false;
  char magic[4];
  return ::read(f.fd, magic, 4) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace peft::io
