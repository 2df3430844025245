// Internal: the table of entry points libpeft_cuda.so (runtime/cuda/, cuBLAS, the CUDA runtime)
// hands to libpeft.so, which loads it on the first CUDA question (runtime/cuda_loader.cpp).
// A CPU-only process therefore never maps the CUDA libraries (~200 MiB of resident memory and
// their start-up time); a build without CUDA links runtime/cuda_stub.cpp instead.
#pragma once
#include "runtime/backend.h"

namespace peft {

struct CudaPluginApi {
  int version;  // kCudaPluginVersion of the build that made the plugin
  bool (*available)();
  int (*device_count)();
  void (*select_device)(int index);
  void (*synchronize)();
  Backend& (*backend)();
  void (*copy_across_devices)(const Tensor& src, Tensor& dst);
};

constexpr int kCudaPluginVersion = 1;

}  // namespace peft

// Exported by libpeft_cuda.so.
extern "C" const peft::CudaPluginApi* peft_cuda_plugin_api();
