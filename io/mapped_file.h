// Internal to io/ (not installed): the file descriptor and private mapping the safetensors and
// GGUF readers share.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <string>

namespace peft::io::detail {

// Closes the descriptor when it goes out of scope.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// A file's private mapping; tensor views of it keep it alive.
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

std::string errno_str(int e);  // strerror (safetensors_header.cpp)

}  // namespace peft::io::detail
