// Choosing where tensors live: parsing device names and asking whether a CUDA device is
// present. In a build without CUDA these report "no device" (and cuda requests fail with
// a message saying the build has no CUDA backend).
#pragma once
#include <string>

#include "runtime/dtype.h"

namespace peft {

// "cpu", "meta", "cuda" or "cuda:N" (which also makes device N the one cuda tensors go
// to); anything else fails with the accepted spellings, and cuda fails (saying why) when
// no CUDA device can be used.
Device parse_device(const std::string& name);

// True only when a CUDA device is actually usable; never throws (false in stub builds).
bool cuda_available();
int cuda_device_count();  // 0 without a device or in stub builds
// Makes cuda:index the device every later cuda tensor lives on.
void select_cuda_device(int index);
// Waits for every queued CUDA kernel (timing, before reading a clock); no-op without CUDA.
void cuda_synchronize();

}  // namespace peft
