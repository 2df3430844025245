// safetensors reader (mmap + validated header) and atomic writer. See io/safetensors.h for
// the rules; this file keeps every check next to the error message a user will read.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "io/atomic_file.h"

namespace peft::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; peft.cpp's I/O assumes a little-endian host");

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
  }
  fail("safetensors: no file dtype for runtime dtype ", int(dt));
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

// Position in the Rust crate's `Dtype` enum (declared in increasing alignment order); the
// writer sorts by it, descending, exactly as `safetensors::tensor::prepare` does.
static int st_dtype_rank(StDType dt) {
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

// ---------------------------------------------------------------------------
// reader

namespace {

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr) ::munmap(addr, size);
  }
};

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string errno_str(int e) { return std::strerror(e); }

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

struct SafetensorsFile::Impl {
  std::string path;
  std::shared_ptr<Mapping> map;
  uint64_t file_size = 0;
  uint64_t header_size = 0;
  uint64_t data_size = 0;
  const uint8_t* data = nullptr;  // start of the data section inside the mapping
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, size_t> index;
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const { return impl_->path; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}
const std::vector<TensorInfo>& SafetensorsFile::tensors() const { return impl_->tensors; }
bool SafetensorsFile::contains(const std::string& name) const {
  return impl_->index.count(name) != 0;
}
uint64_t SafetensorsFile::file_size() const { return impl_->file_size; }
uint64_t SafetensorsFile::header_size() const { return impl_->header_size; }
uint64_t SafetensorsFile::data_size() const { return impl_->data_size; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = impl_->index.find(name);
  if (it != impl_->index.end()) return impl_->tensors[it->second];
  std::string msg = impl_->path + ": no tensor named '" + name + "'";
  const auto& ts = impl_->tensors;
  if (ts.empty()) {
    msg += " (the file holds no tensors)";
  } else {
    msg += "; the file holds " + std::to_string(ts.size()) + " tensors, e.g. ";
    size_t shown = std::min<size_t>(ts.size(), 3);
    for (size_t i = 0; i < shown; ++i) msg += (i ? ", '" : "'") + ts[i].name + "'";
    if (ts.size() > shown) msg += ", ...";
  }
  throw Error(msg);
}

static std::unique_ptr<SafetensorsFile::Impl> parse_file(const std::string& path,
                                                         const ReadLimits& limits) {
  auto im = std::make_unique<SafetensorsFile::Impl>();
  im->path = path;

  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (f.fd < 0) fail(path, ": cannot open for reading: ", errno_str(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail(path, ": cannot stat: ", errno_str(errno));
  if (S_ISDIR(st.st_mode)) fail(path, ": is a directory, not a safetensors file");
  if (!S_ISREG(st.st_mode)) fail(path, ": is not a regular file, cannot map it");
  uint64_t size = uint64_t(st.st_size);
  if (size == 0) fail(path, ": file is empty (0 bytes), not a safetensors file");
  if (size < 8)
    fail(path, ": file is only ", size,
         " bytes; a safetensors file starts with an 8-byte header length");
  if (size > uint64_t(std::numeric_limits<size_t>::max()))
    fail(path, ": file of ", size, " bytes is too large to map on this platform");

  auto map = std::make_shared<Mapping>();
  // Private, copy-on-write mapping: tensors viewing it may be written in place (optimizers,
  // merging) without touching the file and without a fault on a read-only page.
  void* addr = ::mmap(nullptr, size_t(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE,
                      f.fd, 0);
  if (addr == MAP_FAILED) fail(path, ": cannot map ", size, " bytes: ", errno_str(errno));
  map->addr = addr;
  map->size = size_t(size);
  const uint8_t* base = static_cast<const uint8_t*>(addr);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > limits.max_header_bytes)
    fail(path, ": header length ", n, " exceeds the limit of ", limits.max_header_bytes,
         " bytes (ReadLimits::max_header_bytes); the file is corrupt or not a safetensors file");
  if (n > size - 8)
    fail(path, ": header length ", n, " exceeds the file size (", size, " bytes, so at most ",
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
          fail(path, ": header JSON is nested more than ", kMaxJsonDepth,
               " levels deep; not a safetensors header");
        if (ev == ojson::parse_event_t::object_start) keys.emplace_back();
        break;
      case ojson::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case ojson::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() &&
            !keys.back().insert(parsed.get_ref<const std::string&>()).second)
          fail(path, ": header has the key '", parsed.get_ref<const std::string&>(),
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
    fail(path, ": header is not valid JSON (", n, "-byte header, error at byte ", e.byte,
         "): ", what);
  } catch (const ojson::exception& e) {
    fail(path, ": header is not valid JSON: ", e.what());
  }
  if (!header.is_object())
    fail(path, ": header is ", json_kind(header),
         ", not a JSON object of tensor entries; not a safetensors file");

  uint64_t count = header.size() - (header.contains("__metadata__") ? 1 : 0);
  if (count > limits.max_tensors)
    fail(path, ": header lists ", count, " tensors, more than the limit of ", limits.max_tensors,
         " (ReadLimits::max_tensors)");
  im->tensors.reserve(size_t(count));

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const ojson& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object())
        fail(path, ": __metadata__ must be an object of string to string, but it is ",
             json_kind(v), " (", brief(v), ")");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(path, ": __metadata__ must be an object of string to string, but key '", m.key(),
               "' has ", json_kind(m.value()), " value ", brief(m.value()));
        im->metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tn = "tensor '" + name + "'";
    if (!v.is_object())
      fail(path, ": ", tn, " entry is ", json_kind(v),
           "; expected an object with dtype, shape and data_offsets");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) fail(path, ": ", tn, " has no '", field, "' field");

    TensorInfo ti;
    ti.name = name;
    const ojson& jd = v["dtype"];
    if (!jd.is_string())
      fail(path, ": ", tn, " has dtype ", brief(jd), ", which is not a string");
    if (!parse_st_dtype(jd.get<std::string>(), ti.dtype))
      fail(path, ": ", tn, " has dtype '", jd.get<std::string>(),
           "', which peft.cpp cannot read (supported: F64, F32, F16, BF16, I64, I32, U8, BOOL)");

    const ojson& js = v["shape"];
    if (!js.is_array()) fail(path, ": ", tn, " has shape ", brief(js), ", which is not a list");
    uint64_t numel = 1;
    bool overflow = false;
    for (const ojson& d : js) {
      uint64_t dim = 0;
      if (!as_index(d, dim))
        fail(path, ": ", tn, " has shape ", brief(js),
             ": dimensions must be non-negative integers below 2^63 (", brief(d), " is not)");
      ti.shape.push_back(int64_t(dim));
      if (__builtin_mul_overflow(numel, dim, &numel)) overflow = true;
    }
    const uint64_t esize = st_dtype_size(ti.dtype);
    uint64_t nbytes = 0;
    if (overflow || numel > uint64_t(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, esize, &nbytes))
      fail(path, ": ", tn, " has shape ", shape_str(ti.shape), " of ", st_dtype_name(ti.dtype),
           " whose byte size overflows 64 bits; the file is corrupt");

    const ojson& jo = v["data_offsets"];
    uint64_t b = 0, e = 0;
    if (!jo.is_array() || jo.size() != 2 || !as_index(jo[0], b) || !as_index(jo[1], e))
      fail(path, ": ", tn, " has data_offsets ", brief(jo),
           "; expected [begin, end], two non-negative integers");
    if (b > e) fail(path, ": ", tn, " has data_offsets [", b, ", ", e, "]: begin > end");
    if (e > im->data_size)
      fail(path, ": ", tn, " has data_offsets [", b, ", ", e, "] but the data section is only ",
           im->data_size, " bytes (file truncated?)");
    if (e - b != nbytes)
      fail(path, ": ", tn, " has data_offsets [", b, ", ", e, "] but shape ",
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
      fail(path, ": tensors '", prev->name, "' [", prev->begin, ", ", prev->end, "] and '", t.name,
           "' [", t.begin, ", ", t.end, "] overlap in the data section");
    if (!prev || t.end > prev->end) prev = &t;
  }
  return im;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path,
                                                       const ReadLimits& limits) {
  return std::make_shared<SafetensorsFile>(parse_file(path, limits));
}

Tensor SafetensorsFile::get_meta(const std::string& name) const {
  const TensorInfo& ti = info(name);
  return empty(ti.shape, runtime_dtype(ti.dtype), Device::meta);
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const DType dt = runtime_dtype(ti.dtype);
  const uint64_t nbytes = ti.end - ti.begin;
  const uint8_t* src = impl_->data + ti.begin;
  const uint64_t numel = nbytes / st_dtype_size(ti.dtype);

  if (ti.dtype == StDType::I32 || ti.dtype == StDType::U8) {
    Tensor out = empty(ti.shape, DType::int64);
    if (numel == 0) return out;
    int64_t* dst = out.data_ptr<int64_t>();
    if (ti.dtype == StDType::I32) {
      for (uint64_t i = 0; i < numel; ++i) {
        int32_t v;
        std::memcpy(&v, src + 4 * i, 4);
        dst[i] = v;
      }
    } else {
      for (uint64_t i = 0; i < numel; ++i) dst[i] = src[i];
    }
    return out;
  }

  bool copy = false;
  const uint64_t file_offset = 8 + impl_->header_size + ti.begin;
  if (file_offset % st_dtype_size(ti.dtype) != 0) copy = true;
  bool normalise_bool = false;
  if (ti.dtype == StDType::BOOL)
    for (uint64_t i = 0; i < nbytes; ++i)
      if (src[i] > 1) {
        normalise_bool = copy = true;
        break;
      }
  if (!copy)
    return from_blob(const_cast<uint8_t*>(src), ti.shape, dt, std::shared_ptr<void>(impl_->map));

  Tensor out = empty(ti.shape, dt);
  if (nbytes == 0) return out;
  uint8_t* dst = static_cast<uint8_t*>(out.raw_data());
  if (normalise_bool) {
    for (uint64_t i = 0; i < nbytes; ++i) dst[i] = src[i] ? 1 : 0;
  } else {
    std::memcpy(dst, src, size_t(nbytes));
  }
  return out;
}

Tensor SafetensorsFile::get(const std::string& name, DType dt) const { return get(name).to(dt); }

StateDict load_safetensors(const std::string& path, const LoadOptions& opts) {
  if (opts.convert && !is_floating(opts.dtype))
    fail(path, ": cannot load: LoadOptions::dtype must be a floating dtype when convert is set, got ",
         dtype_name(opts.dtype));
  auto file = SafetensorsFile::open(path, opts.limits);
  std::vector<const TensorInfo*> infos;
  for (const TensorInfo& ti : file->tensors()) infos.push_back(&ti);
  std::sort(infos.begin(), infos.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->name < b->name; });
  StateDict sd;
  for (const TensorInfo* ti : infos) {
    const DType stored = runtime_dtype(ti->dtype);
    const bool conv = opts.convert && is_floating(stored) && stored != opts.dtype;
    if (opts.lazy) {
      sd.set(ti->name, empty(ti->shape, conv ? opts.dtype : stored, Device::meta));
    } else {
      sd.set(ti->name, conv ? file->get(ti->name, opts.dtype) : file->get(ti->name));
    }
  }
  return sd;
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path,
                                                             const ReadLimits& limits) {
  return SafetensorsFile::open(path, limits)->metadata();
}

// ---------------------------------------------------------------------------
// writer

namespace {

std::string json_string(const std::string& s, const char* what) {
  try {
    return ojson(s).dump();
  } catch (const ojson::exception&) {
    fail("cannot save: ", what, " '", s, "' is not valid UTF-8");
  }
}

// A temporary file that is removed unless committed.
struct TempFile {
  std::string path;
  int fd = -1;
  bool committed = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!committed && !path.empty()) ::unlink(path.c_str());
  }
};

void write_all(int fd, const void* data, uint64_t n, const std::string& target,
               const std::string& tmp) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    size_t chunk = size_t(std::min<uint64_t>(n, 1u << 30));
    ssize_t r = ::write(fd, p, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(target, ": cannot save: writing the temporary file '", tmp, "' failed: ",
           errno_str(errno), "; the existing file (if any) was left unchanged");
    }
    if (r == 0)
      fail(target, ": cannot save: writing the temporary file '", tmp,
           "' made no progress; the existing file (if any) was left unchanged");
    p += r;
    n -= uint64_t(r);
  }
}

}  // namespace

// ------------------------------------------------------------------ writer --

struct SafetensorsWriter::Impl {
  std::string path;    // as given (for messages)
  std::string target;  // the file renamed over (a symlink's target, so the link survives)
  std::string dir;
  struct Slot {
    TensorSpec spec;
    StDType dt;
    uint64_t nbytes;
  };
  std::vector<Slot> slots;  // in file order
  std::vector<std::string> order;
  size_t next = 0;
  TempFile tmp;
};

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<TensorSpec> specs,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(std::make_unique<Impl>()) {
  Impl& w = *impl_;
  w.path = path;
  if (path.empty()) fail("cannot save safetensors: the path is empty");
  std::set<std::string> names;
  for (TensorSpec& sp : specs) {
    if (sp.name == "__metadata__")
      fail(path, ": cannot save a tensor named '__metadata__' (the name is reserved by the format)");
    if (!names.insert(sp.name).second) fail(path, ": cannot save: tensor name '", sp.name, "' appears twice");
    uint64_t n = 1;
    for (int64_t d : sp.shape) {
      if (d < 0) fail(path, ": cannot save tensor '", sp.name, "': negative dimension in ", shape_str(sp.shape));
      if (d != 0 && n > UINT64_MAX / uint64_t(d))
        fail(path, ": cannot save tensor '", sp.name, "': ", shape_str(sp.shape), " overflows 64 bits");
      n *= uint64_t(d);
    }
    StDType dt = st_dtype_of(sp.dtype);
    if (n > UINT64_MAX / st_dtype_size(dt))
      fail(path, ": cannot save tensor '", sp.name, "': ", shape_str(sp.shape), " overflows 64 bits");
    w.slots.push_back({std::move(sp), dt, n * st_dtype_size(dt)});
  }
  // Python safetensors' order: dtype alignment descending, then name.
  std::sort(w.slots.begin(), w.slots.end(), [](const Impl::Slot& a, const Impl::Slot& b) {
    int ra = st_dtype_rank(a.dt), rb = st_dtype_rank(b.dt);
    return ra != rb ? ra > rb : a.spec.name < b.spec.name;
  });
  for (const auto& sl : w.slots) w.order.push_back(sl.spec.name);

  // The header, exactly as serde_json writes it in the Rust crate.
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool mfirst = true;
    for (const auto& [k, v] : metadata) {
      if (!mfirst) h += ',';
      h += json_string(k, "metadata key") + ":" + json_string(v, "metadata value");
      mfirst = false;
    }
    h += '}';
    first = false;
  }
  uint64_t offset = 0;
  for (const auto& sl : w.slots) {
    if (!first) h += ',';
    first = false;
    h += json_string(sl.spec.name, "tensor name");
    h += ":{\"dtype\":\"";
    h += st_dtype_name(sl.dt);
    h += "\",\"shape\":[";
    for (size_t i = 0; i < sl.spec.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(sl.spec.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + sl.nbytes) + "]}";
    offset += sl.nbytes;
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(h.size()) >> (8 * i));

  // A temporary file next to the target.
  w.target = path;
  struct stat lst {};
  if (::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
    if (char* rp = ::realpath(path.c_str(), nullptr)) {
      w.target = rp;
      std::free(rp);
    }
  }
  if (w.target.back() == '/') fail(path, ": cannot save: the path names a folder, not a file");
  auto slash = w.target.rfind('/');
  w.dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : w.target.substr(0, slash));
  std::string base = slash == std::string::npos ? w.target : w.target.substr(slash + 1);

  remove_stale_temp_files(w.dir, base);  // what a killed writer of this file left
  TempFile& tmp = w.tmp;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string cand = (w.dir == "/" ? "" : w.dir) + "/." + base + ".tmp." + unique_temp_suffix();
    int fd = ::open(cand.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      tmp.path = cand;
      tmp.fd = fd;
      break;
    }
    if (errno == EEXIST) continue;
    int err = errno;
    struct stat dst {};
    if (err == ENOENT || err == ENOTDIR) {
      if (::stat(w.dir.c_str(), &dst) != 0) fail(path, ": cannot save: the folder '", w.dir, "' does not exist");
      if (!S_ISDIR(dst.st_mode)) fail(path, ": cannot save: '", w.dir, "' is not a folder");
    }
    fail(path, ": cannot save: cannot create a temporary file in '", w.dir, "': ", errno_str(err));
  }
  if (tmp.fd < 0) fail(path, ": cannot save: no unique temporary file name in '", w.dir, "'");

  // Keep the permissions of a file being replaced.
  struct stat old {};
  if (::stat(w.target.c_str(), &old) == 0 && S_ISREG(old.st_mode)) (void)::fchmod(tmp.fd, old.st_mode & 07777);

  write_all(tmp.fd, len, 8, path, tmp.path);
  write_all(tmp.fd, h.data(), h.size(), path, tmp.path);
}

SafetensorsWriter::~SafetensorsWriter() = default;  // TempFile removes an uncommitted file

const std::vector<std::string>& SafetensorsWriter::order() const { return impl_->order; }

void SafetensorsWriter::write(const std::string& name, const Tensor& t0) {
  Impl& w = *impl_;
  if (w.tmp.fd < 0) fail(w.path, ": cannot save: the writer is already committed");
  if (w.next >= w.slots.size())
    fail(w.path, ": cannot save tensor '", name, "': all ", w.slots.size(), " tensors were already written");
  const Impl::Slot& sl = w.slots[w.next];
  if (name != sl.spec.name)
    fail(w.path, ": cannot save tensor '", name, "': the file's layout needs '", sl.spec.name, "' next");
  if (!t0.defined()) fail(w.path, ": cannot save tensor '", name, "': it is undefined");
  if (t0.is_meta())
    fail(w.path, ": cannot save meta tensor '", name, "' (", t0.desc(), "): it has no data; load or materialize it first");
  if (t0.dtype() != sl.spec.dtype || t0.shape() != sl.spec.shape)
    fail(w.path, ": cannot save tensor '", name, "': got ", t0.desc(), " but the header says ",
         dtype_name(sl.spec.dtype), shape_str(sl.spec.shape));
  Tensor t = t0.detach();
  if (t.device() != Device::cpu) t = t.to(Device::cpu);
  t = t.contiguous();
  if (sl.nbytes) write_all(w.tmp.fd, t.raw_data(), sl.nbytes, w.path, w.tmp.path);
  ++w.next;
}

void SafetensorsWriter::commit() {
  Impl& w = *impl_;
  TempFile& tmp = w.tmp;
  const std::string& path = w.path;
  if (tmp.fd < 0) fail(path, ": cannot save: the writer is already committed");
  if (w.next != w.slots.size())
    fail(path, ": cannot save: only ", w.next, " of ", w.slots.size(), " tensors were written (next: '",
         w.slots[w.next].spec.name, "'); the existing file (if any) was left unchanged");
  if (::fsync(tmp.fd) != 0)
    fail(path, ": cannot save: fsync of the temporary file '", tmp.path, "' failed: ", errno_str(errno),
         "; the existing file (if any) was left unchanged");
  int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0)
    fail(path, ": cannot save: closing the temporary file '", tmp.path, "' failed: ", errno_str(errno),
         "; the existing file (if any) was left unchanged");
  if (::rename(tmp.path.c_str(), w.target.c_str()) != 0) {
    int err = errno;
    if (err == EISDIR) fail(path, ": cannot save: the path is an existing folder, not a file");
    fail(path, ": cannot save: renaming the temporary file '", tmp.path, "' over it failed: ", errno_str(err),
         "; the existing file (if any) was left unchanged");
  }
  tmp.committed = true;
  // Make the rename itself durable (best effort: some file systems refuse fsync on folders).
  int dfd = ::open(w.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void save_safetensors(const std::string& path, const StateDict& tensors, const SaveOptions& opts) {
  if (path.empty()) fail("cannot save safetensors: the path is empty");
  if (opts.convert && !is_floating(opts.dtype))
    fail(path, ": cannot save: SaveOptions::dtype must be a floating dtype when convert is set, got ",
         dtype_name(opts.dtype));
  // Everything that can fail on the inputs fails before the disk is touched.
  std::map<std::string, Tensor> prepared;
  std::vector<TensorSpec> specs;
  for (const auto& [name, t0] : tensors) {
    if (name == "__metadata__")
      fail(path, ": cannot save a tensor named '__metadata__' (the name is reserved by the format)");
    if (!t0.defined()) fail(path, ": cannot save tensor '", name, "': it is undefined");
    if (t0.is_meta())
      fail(path, ": cannot save meta tensor '", name, "' (", t0.desc(),
           "): it has no data; load or materialize it first");
    Tensor t = t0.detach();
    if (opts.convert && is_floating(t.dtype()) && t.dtype() != opts.dtype) t = t.to(opts.dtype);
    specs.push_back({name, t.dtype(), t.shape()});
    prepared[name] = t;
  }
  SafetensorsWriter w(path, std::move(specs), opts.metadata);
  for (const std::string& name : w.order()) w.write(name, prepared.at(name));
  w.commit();
}

}  // namespace peft::io
