// Chosen by meson.build when the CUDA backend is built: libpeft.so does not link the CUDA libraries;
// the first CUDA question (cuda_available, a cuda device, a copy) loads libpeft_cuda.so from the
// folder libpeft.so was loaded from (else the library search path) and forwards to its table
// (runtime/cuda_plugin.h). A plugin that cannot be loaded (no libcudart / cuBLAS on this machine)
// reads as "no CUDA device", with the loader's message in every error.
#include <dlfcn.h>

#include <filesystem>
#include <mutex>
#include <string>

#include "runtime/cuda_plugin.h"

namespace peft {
namespace {

struct Plugin {
  const CudaPluginApi* api = nullptr;
  std::string why;  // why it is not loaded
};

const Plugin& plugin() {
  static const Plugin p = [] {
    Plugin r;
    std::string path = "libpeft_cuda.so";
    Dl_info info{};
    if (::dladdr(reinterpret_cast<void*>(&cuda_available), &info) && info.dli_fname)
      path = (std::filesystem::path(info.dli_fname).parent_path() / "libpeft_cuda.so").string();
    void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) h = ::dlopen("libpeft_cuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = ::dlerror();
      r.why = std::string("the CUDA backend libpeft_cuda.so could not be loaded: ") + (e ? e : "unknown error");
      return r;
    }
    auto fn = reinterpret_cast<const CudaPluginApi* (*)()>(::dlsym(h, "peft_cuda_plugin_api"));
    if (!fn) {
      r.why = "libpeft_cuda.so has no peft_cuda_plugin_api (a different build of peft.cpp)";
      return r;
    }
    const CudaPluginApi* api = fn();
    if (!api || api->version != kCudaPluginVersion) {
      r.why = "libpeft_cuda.so is from a different build of peft.cpp (plugin version mismatch)";
      return r;
    }
    r.api = api;
    return r;
  }();
  return p;
}

}  // namespace

bool cuda_available() { return plugin().api && plugin().api->available(); }

int cuda_device_count() { return plugin().api ? plugin().api->device_count() : 0; }

void cuda_synchronize() {
  if (plugin().api) plugin().api->synchronize();
}

void select_cuda_device(int index) {
  if (!plugin().api) fail("cannot select cuda:", index, ": ", plugin().why);
  plugin().api->select_device(index);
}

Backend& cuda_backend() {
  if (!plugin().api) fail("no CUDA device is usable: ", plugin().why);
  return plugin().api->backend();
}

void copy_across_devices(const Tensor& src, Tensor& dst) {
  if (!plugin().api)
    fail("cannot copy ", src.desc(), " to ", device_name(dst.device()), ": ", plugin().why);
  plugin().api->copy_across_devices(src, dst);
}

}  // namespace peft
