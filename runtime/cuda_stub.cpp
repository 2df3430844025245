// Chosen by meson.build when CUDA is not built: every CUDA entry point reports
// that clearly instead of spreading #ifdefs through the op code.
#include "runtime/backend.h"

namespace peft {

bool cuda_available() { return false; }

int cuda_device_count() { return 0; }

void cuda_synchronize() {}

void select_cuda_device(int index) {
  fail("cannot select cuda:", index, ": this build of peft.cpp has no CUDA backend (built without CUDA)");
}

Backend& cuda_backend() {
  fail("this build of peft.cpp has no CUDA backend (built without CUDA); "
       "rebuild with -Dcuda=enabled on a machine with nvcc and cuBLAS");
}

void copy_across_devices(const Tensor& src, Tensor& dst) {
  fail("cannot copy ", src.desc(), " to ", device_name(dst.device()),
       ": this build of peft.cpp has no CUDA backend (built without CUDA)");
}

}  // namespace peft
