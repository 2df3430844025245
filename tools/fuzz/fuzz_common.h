// Helpers shared by the libFuzzer targets in tools/fuzz/ (see README.md there).
// The library reads files by path, so fuzzed bytes go to an anonymous in-memory
// file (memfd) named through /proc/self/fd: no disk writes, no cleanup.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "adapters/tuner.h"
#include "nn/module.h"
#include "runtime/error.h"

namespace peft::fuzz {

// Aborts the process (a libFuzzer finding) with a message: for invariant violations only;
// peft::Error thrown on bad input is the expected outcome and is caught by the targets.
[[noreturn]] inline void die(const std::string& why) {
  std::fprintf(stderr, "FUZZ INVARIANT VIOLATED: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}

// An in-memory file holding `bytes`; path() opens it like a regular file.
class MemFile {
 public:
  explicit MemFile(const uint8_t* data, size_t size) {
    fd_ = ::memfd_create("fuzz", MFD_CLOEXEC);
    if (fd_ < 0) die("memfd_create failed");
    size_t off = 0;
    while (off < size) {
      ssize_t n = ::write(fd_, data + off, size - off);
      if (n <= 0) die("write to memfd failed");
      off += size_t(n);
    }
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_ = -1;
};

// A per-process scratch folder on tmpfs when available (the folder target writes files),
// removed at exit.
inline const std::string& scratch_dir() {
  // Never destroyed: the atexit handler below runs after static destructors would have.
  static const std::string* dir = [] {
    std::string base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    auto* d = new std::string(base + "/peft-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(*d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return d;
  }();
  return *dir;
}

// Everything observable about a model: repr, every state_dict entry (name, dtype, shape,
// requires_grad, exact bytes) and the adapter names. Two snapshots compare equal iff a
// failed operation left the model exactly as it was.
inline std::string snapshot(const nn::Module& m) {
  std::ostringstream os;
  os << m.repr() << "\n";
  for (const auto& [name, t] : m.state_dict()) {
    os << name << " " << t.desc() << " rg=" << t.requires_grad() << " :";
    if (!t.is_meta()) {
      Tensor c = t.contiguous();
      const auto* p = static_cast<const unsigned char*>(c.raw_data());
      for (size_t i = 0; i < c.nbytes(); ++i) os << char(p[i]);
    }
    os << "\n";
  }
  if (const PeftState* st = peft_state(m))
    for (const auto& n : st->adapter_names()) os << "adapter " << n << "\n";
  return os.str();
}

inline void silence_warnings() {
  set_warning_handler([](const std::string&) {});
}

// LLVMFuzzerInitialize's shared part: warnings dropped; with PEFT_FUZZ_WRITE_SEEDS=DIR the
// target writes its seed corpus into DIR and the process exits.
inline void init_target(void (*write_seeds)(const std::string& dir)) {
  silence_warnings();
  if (const char* d = std::getenv("PEFT_FUZZ_WRITE_SEEDS")) {
    write_seeds(d);
    std::exit(0);
  }
}

// Inputs of two parts (a JSON text and the bytes that go with it): bytes 0-1 = n
// (little-endian), then n bytes of the first part, the rest is the second.
inline std::string two_part_input(const std::string& first, const std::string& second) {
  if (first.size() > 0xffff) die("two_part_input: the first part is over 65535 bytes");
  std::string s;
  s.push_back(char(first.size() & 0xff));
  s.push_back(char(first.size() >> 8));
  return s + first + second;
}
inline bool split_two_part(const uint8_t* data, size_t size, std::string& first, std::string& second) {
  if (size < 2) return false;
  const size_t n = std::min(size - 2, size_t(data[0]) | (size_t(data[1]) << 8));
  first.assign(reinterpret_cast<const char*>(data + 2), n);
  second.assign(reinterpret_cast<const char*>(data + 2 + n), size - 2 - n);
  return true;
}

}  // namespace peft::fuzz
