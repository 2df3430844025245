// safetensors reader: SafetensorsFile's tensors as views into the file mapping (or copies
// where alignment or dtype need one), load_safetensors and read_safetensors_metadata.
#include <algorithm>
#include <cstring>

#include "io/safetensors_internal.h"

namespace peft::io {

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

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path,
                                                       const ReadLimits& limits) {
  return std::make_shared<SafetensorsFile>(detail::parse_file(path, limits));
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

}  // namespace peft::io
