#include "io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "runtime/error.h"

namespace peft::io {

std::string unique_temp_suffix() {
  static std::atomic<uint64_t> counter{0};
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%ld.%llu.%08llx", long(::getpid()),
                static_cast<unsigned long long>(counter.fetch_add(1)),
                static_cast<unsigned long long>(rng() & 0xffffffffu));
  return buf;
}

int remove_stale_temp_files(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code ec;
  int removed = 0;
  const std::string d = dir.empty() ? "." : dir;
  for (const char* kind : {".tmp.", ".saving."}) {
    const std::string prefix = "." + name + kind;
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string f = it->path().filename().string();
      if (f.compare(0, prefix.size(), prefix) != 0) continue;
      const std::string rest = f.substr(prefix.size());  // "<pid>.<counter>.<random>"
      char* endp = nullptr;
      const long pid = std::strtol(rest.c_str(), &endp, 10);
      if (pid <= 0 || endp == rest.c_str() || *endp != '.') continue;
      if (::kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
      if (::unlink(it->path().c_str()) == 0) ++removed;
    }
  }
  return removed;
}

void fsync_dir(const std::string& dir) {
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic_stream(path, [&](const AtomicWrite& write) { write(bytes.data(), bytes.size()); });
}

void write_file_atomic_stream(const std::string& path, const std::function<void(const AtomicWrite& write)>& body) {
  const std::filesystem::path target(path);
  const std::string dir = target.parent_path().string();
  remove_stale_temp_files(dir, target.filename().string());
  const std::string tmp =
      (target.parent_path() / ("." + target.filename().string() + ".tmp." + unique_temp_suffix())).string();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail_io(path, ": cannot save: cannot create the temporary file '", tmp, "': ", std::strerror(errno));
  auto fail_removing = [&](const char* what, int e) {
    if (fd >= 0) ::close(fd);
    fd = -1;
    ::unlink(tmp.c_str());
    fail_io(path, ": cannot save: ", what, " the temporary file '", tmp, "' failed: ", std::strerror(e),
         "; the existing file (if any) was left unchanged");
  };
  const AtomicWrite write = [&](const void* data, size_t n) {
    const auto* b = static_cast<const char*>(data);
    while (n) {
      const ssize_t w = ::write(fd, b, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail_removing("writing", w < 0 ? errno : EIO);
      b += w;
      n -= size_t(w);
    }
  };
  try {
    body(write);
  } catch (...) {
    if (fd >= 0) {
      ::close(fd);
      ::unlink(tmp.c_str());
    }
    throw;
  }
  if (::fsync(fd) != 0) fail_removing("flushing", errno);
  const int c = ::close(fd);
  fd = -1;
  if (c != 0) fail_removing("closing", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_removing("renaming", errno);
  fsync_dir(dir);
}

}  // namespace peft::io
