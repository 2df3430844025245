#include "io/gguf_writer.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "io/atomic_file.h"
#include "runtime/error.h"

namespace peft::io {

namespace {

constexpr size_t kMaxTensorName = 64;  // GGML_MAX_NAME: llama.cpp refuses names this long or longer

uint64_t pad_to(uint64_t n, uint64_t align) { return (n + align - 1) / align * align; }

template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // GGUF is little-endian, as every machine peft.cpp runs on
  out.append(b, sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

const char* type_name(GGUFValueType t) { return gguf_value_type_name(t); }

bool is_scalar_type(GGUFValueType t) { return t != GGUFValueType::array && uint32_t(t) <= 12; }

// One scalar (or string) of type `t` from its JSON form, range-checked.
void put_scalar(std::string& out, GGUFValueType t, const nlohmann::ordered_json& v, const std::string& key) {
  auto bad = [&](const char* why) {
    fail("GGUFWriter: metadata '", key, "': ", why, " for type ", type_name(t), " (got ", v.dump(), ")");
  };
  auto integer = [&](auto lo, auto hi) -> long double {
    if (!v.is_number_integer()) bad("not an integer");
    long double x = v.is_number_unsigned() ? (long double)v.get<uint64_t>() : (long double)v.get<int64_t>();
    if (x < (long double)lo || x > (long double)hi) bad("out of range");
    return x;
  };
  switch (t) {
    case GGUFValueType::u8: put<uint8_t>(out, uint8_t(integer(0, 255))); break;
    case GGUFValueType::i8: put<int8_t>(out, int8_t(integer(-128, 127))); break;
    case GGUFValueType::u16: put<uint16_t>(out, uint16_t(integer(0, 65535))); break;
    case GGUFValueType::i16: put<int16_t>(out, int16_t(integer(-32768, 32767))); break;
    case GGUFValueType::u32: put<uint32_t>(out, uint32_t(integer(0, std::numeric_limits<uint32_t>::max()))); break;
    case GGUFValueType::i32:
      put<int32_t>(out, int32_t(integer(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max())));
      break;
    case GGUFValueType::u64:
      if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) bad("not a non-negative integer");
      put<uint64_t>(out, v.get<uint64_t>());
      break;
    case GGUFValueType::i64:
      if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)))
        bad("not an int64");
      put<int64_t>(out, v.get<int64_t>());
      break;
    case GGUFValueType::f32:
      if (!v.is_number()) bad("not a number");
      put<float>(out, float(v.get<double>()));
      break;
    case GGUFValueType::f64:
      if (!v.is_number()) bad("not a number");
      put<double>(out, v.get<double>());
      break;
    case GGUFValueType::boolean:
      if (!v.is_boolean()) bad("not a boolean");
      put<uint8_t>(out, v.get<bool>() ? 1 : 0);
      break;
    case GGUFValueType::string:
      if (!v.is_string()) bad("not a string");
      put_string(out, v.get<std::string>());
      break;
    default: bad("unknown type");
  }
}

void put_value(std::string& out, const std::string& key, const GGUFValue& v) {
  put<uint32_t>(out, uint32_t(v.type));
  if (v.type != GGUFValueType::array) return put_scalar(out, v.type, v.value, key);
  put<uint32_t>(out, uint32_t(v.elem_type));
  put<uint64_t>(out, v.value.size());
  for (const auto& e : v.value) put_scalar(out, v.elem_type, e, key);
}

}  // namespace

uint32_t ggml_type_of(DType dt) {
  switch (dt) {
    case DType::float32: return 0;
    case DType::float16: return 1;
    case DType::q4_0: return 2;
    case DType::q4_1: return 3;
    case DType::q5_0: return 6;
    case DType::q5_1: return 7;
    case DType::q8_0: return 8;
    case DType::q4_k: return 12;
    case DType::q5_k: return 13;
    case DType::q6_k: return 14;
    case DType::int64: return 27;
    case DType::float64: return 28;
    case DType::bfloat16: return 30;
    default: fail("GGUF has no tensor type for dtype ", dtype_name(dt));
  }
}

GGUFWriter::GGUFWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    fail("GGUFWriter: alignment ", alignment, " is not a power of two");
  if (alignment != 32) add_u32("general.alignment", alignment);
}

void GGUFWriter::check_new_key(const std::string& key) const {
  if (key.empty()) fail("GGUFWriter: a metadata key is empty");
  if (has(key)) fail("GGUFWriter: metadata key '", key, "' is added twice");
}

bool GGUFWriter::has(const std::string& key) const {
  for (const auto& [k, v] : kv_)
    if (k == key) return true;
  return false;
}

void GGUFWriter::add(const std::string& key, const GGUFValue& value) {
  check_new_key(key);
  if (key == "general.alignment" && (value.type != GGUFValueType::u32 || !value.value.is_number_integer() ||
                                     value.value.get<int64_t>() != int64_t(alignment_)))
    fail("GGUFWriter: general.alignment ", value.value.dump(), " differs from the writer's alignment ", alignment_,
         " (construct the writer with it)");
  if (value.type == GGUFValueType::array) {
    if (!is_scalar_type(value.elem_type))
      fail("GGUFWriter: metadata '", key, "': arrays of ", type_name(value.elem_type), " are not supported");
    if (!value.value.is_array()) fail("GGUFWriter: metadata '", key, "': an array value is not a JSON array");
  } else if (!is_scalar_type(value.type)) {
    fail("GGUFWriter: metadata '", key, "': unknown value type ", uint32_t(value.type));
  }
  std::string probe;  // refuses a value that does not fit its type now, not at write()
  put_value(probe, key, value);
  kv_.emplace_back(key, value);
}

#define PEFT_GGUF_ADD(fn, T, code)                          \
  void GGUFWriter::fn(const std::string& key, T value) {   \
    GGUFValue v;                                           \
    v.type = GGUFValueType::code;                          \
    v.value = value;                                       \
    add(key, v);                                           \
  }
PEFT_GGUF_ADD(add_string, const std::string&, string)
PEFT_GGUF_ADD(add_u32, uint32_t, u32)
PEFT_GGUF_ADD(add_i32, int32_t, i32)
PEFT_GGUF_ADD(add_u64, uint64_t, u64)
PEFT_GGUF_ADD(add_f64, double, f64)
PEFT_GGUF_ADD(add_bool, bool, boolean)
#undef PEFT_GGUF_ADD

void GGUFWriter::add_f32(const std::string& key, float value) {
  GGUFValue v;
  v.type = GGUFValueType::f32;
  v.value = double(value);
  add(key, v);
}

#define PEFT_GGUF_ADD_ARRAY(fn, T, code)                                \
  void GGUFWriter::fn(const std::string& key, const std::vector<T>& values) { \
    GGUFValue v;                                                       \
    v.type = GGUFValueType::array;                                     \
    v.elem_type = GGUFValueType::code;                                 \
    v.value = nlohmann::ordered_json::array();                         \
    for (const auto& x : values) v.value.push_back(x);                 \
    add(key, v);                                                       \
  }
PEFT_GGUF_ADD_ARRAY(add_string_array, std::string, string)
PEFT_GGUF_ADD_ARRAY(add_u32_array, uint32_t, u32)
PEFT_GGUF_ADD_ARRAY(add_i32_array, int32_t, i32)
#undef PEFT_GGUF_ADD_ARRAY

void GGUFWriter::add_f32_array(const std::string& key, const std::vector<float>& values) {
  GGUFValue v;
  v.type = GGUFValueType::array;
  v.elem_type = GGUFValueType::f32;
  v.value = nlohmann::ordered_json::array();
  for (float x : values) v.value.push_back(double(x));
  add(key, v);
}

void GGUFWriter::add_tensor(const std::string& name, const Tensor& t) {
  if (name.empty()) fail("GGUFWriter: a tensor name is empty");
  if (name.size() >= kMaxTensorName)
    fail("GGUFWriter: tensor name '", name, "' is ", name.size(), " bytes; llama.cpp allows at most ",
         kMaxTensorName - 1);
  for (const auto& e : tensors_)
    if (e.name == name) fail("GGUFWriter: tensor '", name, "' is added twice");
  if (!t.defined()) fail("GGUFWriter: tensor '", name, "' is undefined");
  if (t.device() != Device::cpu) fail("GGUFWriter: tensor '", name, "' is on ", device_name(t.device()), ", not cpu");
  if (t.dim() < 1 || t.dim() > 4)
    fail("GGUFWriter: tensor '", name, "' has ", t.dim(), " dimensions; GGUF holds 1 to 4");
  for (int64_t d : t.shape())
    if (d <= 0) fail("GGUFWriter: tensor '", name, "' has shape ", shape_str(t.shape()), "; every dimension must be > 0");
  const uint32_t type = ggml_type_of(t.dtype());
  const GGMLTypeInfo* ti = ggml_type_info(type);
  if (!ti) fail("GGUFWriter: GGML type ", type, " is unknown");
  if (t.size(t.dim() - 1) % ti->block_elems)
    fail("GGUFWriter: tensor '", name, "' is ", ti->name, " but its last dimension ", t.size(t.dim() - 1),
         " is not a multiple of the block size ", ti->block_elems);
  Tensor c = t.is_contiguous() ? t : t.contiguous();
  TensorEntry e{name, c, type, data_size_, uint64_t(c.nbytes())};
  data_size_ = pad_to(data_size_ + e.nbytes, alignment_);
  tensors_.push_back(std::move(e));
}

std::string GGUFWriter::header_bytes() const {
  std::string out;
  out.append("GGUF", 4);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_.size());
  for (const auto& [k, v] : kv_) {
    put_string(out, k);
    put_value(out, k, v);
  }
  for (const auto& e : tensors_) {
    put_string(out, e.name);
    const Shape& s = e.t.shape();
    put<uint32_t>(out, uint32_t(s.size()));
    for (size_t i = s.size(); i-- > 0;) put<uint64_t>(out, uint64_t(s[i]));  // ne: innermost first
    put<uint32_t>(out, e.type);
    put<uint64_t>(out, e.offset);
  }
  out.resize(pad_to(out.size(), alignment_), '\0');
  return out;
}

std::string GGUFWriter::to_bytes() const {
  std::string out = header_bytes();
  const size_t data_start = out.size();
  for (const auto& e : tensors_) {
    out.append(static_cast<const char*>(e.t.raw_data()), e.nbytes);
    out.resize(data_start + pad_to(e.offset + e.nbytes, alignment_), '\0');
  }
  return out;
}

void GGUFWriter::write(const std::string& path) const {
  if (std::filesystem::path(path).filename().empty()) fail_io(path, ": cannot save: not a file name");
  const std::string header = header_bytes();
  write_file_atomic_stream(path, [&](const AtomicWrite& write) {
    write(header.data(), header.size());
    static const char zeros[256] = {};
    for (const auto& e : tensors_) {
      write(e.t.raw_data(), e.nbytes);
      const uint64_t written = e.offset + e.nbytes;
      for (uint64_t pad = pad_to(written, alignment_) - written; pad;) {
        const size_t n = size_t(std::min<uint64_t>(pad, sizeof zeros));
        write(zeros, n);
        pad -= n;
      }
    }
  });
}

}  // namespace peft::io
