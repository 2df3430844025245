// safetensors writer: SafetensorsWriter (Python safetensors' layout byte for byte, written
// to a temporary file and renamed over the target) and save_safetensors on top of it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>

#include "io/atomic_file.h"
#include "io/safetensors_internal.h"

namespace peft::io {

using detail::errno_str;
using detail::st_dtype_rank;
using ojson = nlohmann::ordered_json;

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
      fail_io(target, ": cannot save: writing the temporary file '", tmp, "' failed: ",
           errno_str(errno), "; the existing file (if any) was left unchanged");
    }
    if (r == 0)
      fail_io(target, ": cannot save: writing the temporary file '", tmp,
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
      if (::stat(w.dir.c_str(), &dst) != 0) fail_io(path, ": cannot save: the folder '", w.dir, "' does not exist");
      if (!S_ISDIR(dst.st_mode)) fail_io(path, ": cannot save: '", w.dir, "' is not a folder");
    }
    fail_io(path, ": cannot save: cannot create a temporary file in '", w.dir, "': ", errno_str(err));
  }
  if (tmp.fd < 0) fail_io(path, ": cannot save: no unique temporary file name in '", w.dir, "'");

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
    fail_io(path, ": cannot save: fsync of the temporary file '", tmp.path, "' failed: ", errno_str(errno),
         "; the existing file (if any) was left unchanged");
  int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0)
    fail_io(path, ": cannot save: closing the temporary file '", tmp.path, "' failed: ", errno_str(errno),
         "; the existing file (if any) was left unchanged");
  if (::rename(tmp.path.c_str(), w.target.c_str()) != 0) {
    int err = errno;
    if (err == EISDIR) fail_io(path, ": cannot save: the path is an existing folder, not a file");
    fail_io(path, ": cannot save: renaming the temporary file '", tmp.path, "' over it failed: ", errno_str(err),
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
