// safetensors: the format's dtypes, and the header parser that maps a file and validates
// every rule io/safetensors.h lists, keeping each check next to the error message a user
// will read.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "io/safetensors_internal.h"

namespace peft::io {

using ojson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------
// dtypes

const char* st_dtype_name(StDType dt) {
  switch (dt) {
    case StDType::F64: return "F64";
    case StDType::F32: return "F32";
    case StDType::F16: return "F16";
    case StDType::BF16: return "BF16";
    case StDType::I64: return "I64";
    case StDType::I32: return "I32";
    case StDType::U8: return "U8";
    case StDType::BOOL: return "BOOL";
  }
  return "?";
}

size_t st_dtype_size(StDType dt) {
  switch (dt) {
    case StDType::F64: case StDType::I64: return 8;
    case StDType::F32: case StDType::I32: return 4;
    case StDType::F16: case StDType::BF16: return 2;
    case StDType::U8: case StDType::BOOL: return 1;
  }
  return 0;
}

DType runtime_dtype(StDType dt) {
  switch (dt) {
    case StDType::F64: return DType::float64;
    case StDType::F32: return DType::float32;
    case StDType::F16: return DType::float16;
    case StDType::BF16: return DType::bfloat16;
    case StDType::BOOL: return DType::bool_;
    case StDType::I64: case StDType::I32: case StDType::U8: return DType::int64;
  }
  return DType::int64;
}

StDType st_dtype_of(DType dt) {
  switch (dt) {
    case DType::float32: return StDType::F32;
    case DType::float64: return StDType::F64;
    case DType::bfloat16: return StDType::BF16;
    case DType::float16: return StDType::F16;
    case DType::int64: return StDType::I64;
    case DType::bool_: return StDType::BOOL;
    default: break;
  }
  fail("safetensors: no file dtype for ", dtype_name(dt),
       is_quantized(dt) ? " (a GGML block-quantized tensor: dequantize it with .to(float32), or write GGUF)" : "");
}

static bool parse_st_dtype(const std::string& s, StDType& out) {
  static const std::pair<const char*, StDType> table[] = {
      {"F64", StDType::F64}, {"F32", StDType::F32}, {"F16", StDType::F16},
      {"BF16", StDType::BF16}, {"I64", StDType::I64}, {"I32", StDType::I32},
      {"U8", StDType::U8}, {"BOOL", StDType::BOOL}};
  for (const auto& [name, dt] : table)
    if (s == name) {
      out = dt;
      return true;
    }
  return false;
}

// ---------------------------------------------------------------------------
// header parser

namespace {

using detail::Fd;

// Compact JSON of a (small) value for error messages, cut when long.
std::string brief(const ojson& j) {
  std::string s = j.dump(-1, ' ', false, ojson::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

const char* json_kind(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::object: return "an object";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::number_integer:
    case ojson::value_t::number_unsigned: return "an integer";
    case ojson::value_t::number_float: return "a floating-point number";
    default: return "an unsupported JSON value";
  }
}

// Non-negative integer that fits int64 (what shapes and offsets must be).
bool as_index(const ojson& j, uint64_t& out) {
  if (!j.is_number_unsigned() && !j.is_number_integer()) return false;
  if (j.is_number_integer() && !j.is_number_unsigned() && j.get<int64_t>() < 0) return false;
  uint64_t v = j.get<uint64_t>();
  if (v > uint64_t(std::numeric_limits<int64_t>::max())) return false;
  out = v;
  return true;
}

constexpr int kMaxJsonDepth = 8;

}  // namespace

namespace detail {

// Position in the Rust crate's `Dtype` enum (declared in increasing alignment order); the
// writer sorts by it, descending, exactly as `safetensors::tensor::prepare` does.
int st_dtype_rank(StDType dt) {
  switch (dt) {
    case StDType::BOOL: return 0;
    case StDType::U8: return 1;
    case StDType::F16: return 7;
    case StDType::BF16: return 8;
    case StDType::I32: return 9;
    case StDType::F32: return 11;
    case StDType::F64: return 12;
    case StDType::I64: return 13;
  }
  return 0;
}

std::string errno_str(int e) { return std::strerror(e); }

std::unique_ptr<SafetensorsFile::Impl> parse_file(const std::string& path, const ReadLimits& limits) {
  auto im = std::make_unique<SafetensorsFile::Impl>();
  im->path = path;

  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (f.fd < 0) fail_io(path, ": cannot open for reading: ", errno_str(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail_io(path, ": cannot stat: ", errno_str(errno));
  if (S_ISDIR(st.st_mode)) fail_io(path, ": is a directory, not a safetensors file");
  if (!S_ISREG(st.st_mode)) fail_io(path, ": is not a regular file, cannot map it");
  uint64_t size = uint64_t(st.st_size);
  if (size == 0) fail_format(path, ": file is empty (0 bytes), not a safetensors file");
  if (size < 8)
    fail_format(path, ": file is only ", size,
         " bytes; a safetensors file starts with an 8-byte header length");
  if (size > uint64_t(std::numeric_limits<size_t>::max()))
    fail_format(path, ": file of ", size, " bytes is too large to map on this platform");

  auto map = std::make_shared<Mapping>();
  // Private, copy-on-write mapping: tensors viewing it may be written in place (optimizers,
  // merging) without touching the file and without a fault on a read-only page.
  void* addr = ::mmap(nullptr, size_t(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE,
                      f.fd, 0);
  if (addr == MAP_FAILED) fail_io(path, ": cannot map ", size, " bytes: ", errno_str(errno));
  map->addr = addr;
  map->size = size_t(size);
  const uint8_t* base = static_cast<const uint8_t*>(addr);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > limits.max_header_bytes)
    fail_format(path, ": header length ", n, " exceeds the limit of ", limits.max_header_bytes,
         " bytes (ReadLimits::max_header_bytes); the file is corrupt or not a safetensors file");
  if (n > size - 8)
    fail_format(path, ": header length ", n, " exceeds the file size (", size, " bytes, so at most ",
         size - 8, " bytes of header); the file is truncated or not a safetensors file");
  im->map = map;
  im->file_size = size;
  im->header_size = n;
  im->data = base + 8 + n;
  im->data_size = size - 8 - n;

  // Parse straight from the mapping. The callback refuses duplicate keys (nlohmann would keep
  // the last silently) and deep nesting (a safetensors header is three levels deep).
  const char* hb = reinterpret_cast<const char*>(base + 8);
  std::vector<std::unordered_set<std::string>> keys;
  auto cb = [&](int depth, ojson::parse_event_t ev, ojson& parsed) -> bool {
    switch (ev) {
      case ojson::parse_event_t::object_start:
      case ojson::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth)
          fail_format(path, ": header JSON is nested more than ", kMaxJsonDepth,
               " levels deep; not a safetensors header");
        if (ev == ojson::parse_event_t::object_start) keys.emplace_back();
        break;
      case ojson::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case ojson::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() &&
            !keys.back().insert(parsed.get_ref<const std::string&>()).second)
          fail_format(path, ": header has the key '", parsed.get_ref<const std::string&>(),
               "' twice in one object");
        break;
      default:
        break;
    }
    return true;
  };
  ojson header;
  try {
    header = ojson::parse(hb, hb + n, cb);
  } catch (const ojson::parse_error& e) {
    std::string what = e.what();
    auto p = what.find("] ");
    if (what.rfind("[json.exception", 0) == 0 && p != std::string::npos) what = what.substr(p + 2);
    fail_format(path, ": header is not valid JSON (", n, "-byte header, error at byte ", e.byte,
         "): ", what);
  } catch (const ojson::exception& e) {
    fail_format(path, ": header is not valid JSON: ", e.what());
  }
  if (!header.is_object())
    fail_format(path, ": header is ", json_kind(header),
         ", not a JSON object of tensor entries; not a safetensors file");

  uint64_t count = header.size() - (header.contains("__metadata__") ? 1 : 0);
  if (count > limits.max_tensors)
    fail_format(path, ": header lists ", count, " tensors, more than the limit of ", limits.max_tensors,
         " (ReadLimits::max_tensors)");
  im->tensors.reserve(size_t(count));

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const ojson& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object())
        fail_format(path, ": __metadata__ must be an object of string to string, but it is ",
             json_kind(v), " (", brief(v), ")");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail_format(path, ": __metadata__ must be an object of string to string, but key '", m.key(),
               "' has ", json_kind(m.value()), " value ", brief(m.value()));
        im->metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tn = "tensor '" + name + "'";
    if (!v.is_object())
      fail_format(path, ": ", tn, " entry is ", json_kind(v),
           "; expected an object with dtype, shape and data_offsets");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) fail_format(path, ": ", tn, " has no '", field, "' field");

    TensorInfo ti;
    ti.name = name;
    const ojson& jd = v["dtype"];
    if (!jd.is_string())
      fail_format(path, ": ", tn, " has dtype ", brief(jd), ", which is not a string");
    if (!parse_st_dtype(jd.get<std::string>(), ti.dtype))
      fail_format(path, ": ", tn, " has dtype '", jd.get<std::string>(),
           "', which peft.cpp cannot read (supported: F64, F32, F16, BF16, I64, I32, U8, BOOL)");

    const ojson& js = v["shape"];
    if (!js.is_array()) fail_format(path, ": ", tn, " has shape ", brief(js), ", which is not a list");
    uint64_t numel = 1;
    bool overflow = false;
    for (const ojson& d : js) {
      uint64_t dim = 0;
      if (!as_index(d, dim))
        fail_format(path, ": ", tn, " has shape ", brief(js),
             ": dimensions must be non-negative integers below 2^63 (", brief(d), " is not)");
      ti.shape.push_back(int64_t(dim));
      if (__builtin_mul_overflow(numel, dim, &numel)) overflow = true;
    }
    const uint64_t esize = st_dtype_size(ti.dtype);
    uint64_t nbytes = 0;
    if (overflow || numel > uint64_t(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, esize, &nbytes))
      fail_format(path, ": ", tn, " has shape ", shape_str(ti.shape), " of ", st_dtype_name(ti.dtype),
           " whose byte size overflows 64 bits; the file is corrupt");

    const ojson& jo = v["data_offsets"];
    uint64_t b = 0, e = 0;
    if (!jo.is_array() || jo.size() != 2 || !as_index(jo[0], b) || !as_index(jo[1], e))
      fail_format(path, ": ", tn, " has data_offsets ", brief(jo),
           "; expected [begin, end], two non-negative integers");
    if (b > e) fail_format(path, ": ", tn, " has data_offsets [", b, ", ", e, "]: begin > end");
    if (e > im->data_size)
      fail_format(path, ": ", tn, " has data_offsets [", b, ", ", e, "] but the data section is only ",
           im->data_size, " bytes (file truncated?)");
    if (e - b != nbytes)
      fail_format(path, ": ", tn, " has data_offsets [", b, ", ", e, "] but shape ",
           shape_str(ti.shape), " of ", st_dtype_name(ti.dtype), " needs ", nbytes, " bytes");
    ti.begin = b;
    ti.end = e;
    im->index.emplace(name, im->tensors.size());
    im->tensors.push_back(std::move(ti));
  }

  // No two non-empty byte ranges may overlap (holes are allowed, see the header).
  std::vector<size_t> order(im->tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const auto& ts = im->tensors;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return ts[a].begin != ts[b].begin ? ts[a].begin < ts[b].begin : ts[a].end < ts[b].end;
  });
  const TensorInfo* prev = nullptr;
  for (size_t i : order) {
    const TensorInfo& t = ts[i];
    if (t.begin == t.end) continue;
    if (prev && t.begin < prev->end)
      fail_format(path, ": tensors '", prev->name, "' [", prev->begin, ", ", prev->end, "] and '", t.name,
           "' [", t.begin, ", ", t.end, "] overlap in the data section");
    if (!prev || t.end > prev->end) prev = &t;
  }
  return im;
}

}  // namespace detail

}  // namespace peft::io
