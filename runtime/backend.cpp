#include "runtime/backend.h"

#include <omp.h>

#include <cstdlib>

#include "runtime/op_list.h"

namespace peft {

Backend& backend(Device dev) {
  switch (dev) {
    case Device::cpu: return cpu_backend();
    case Device::cuda: return cuda_backend();
    case Device::meta: break;
  }
  fail("internal: no kernels for device ", device_name(dev));
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  if (name == "meta") return Device::meta;
  if (name == "cuda") {
    if (!cuda_available()) select_cuda_device(0);  // throws why: no device, or no CUDA in this build
    return Device::cuda;
  }
  if (name.rfind("cuda:", 0) == 0) {
    const std::string n = name.substr(5);
    if (!n.empty() && n.size() < 4 && n.find_first_not_of("0123456789") == std::string::npos) {
      select_cuda_device(std::stoi(n));
      return Device::cuda;
    }
  }
  fail("unknown device '", name, "': expected cpu, cuda, cuda:N (N = 0, 1, ...) or meta");
}

const char* op_name(Op op) {
  static const char* names[] = {
#define PEFT_OP_NAME(name) #name,
      PEFT_OP_LIST(PEFT_OP_NAME)
#undef PEFT_OP_NAME
  };
  static_assert(sizeof(names) / sizeof(names[0]) == size_t(Op::count_),
                "op name table out of sync with PEFT_OP_LIST");
  return names[int(op)];
}

void Backend::lora_linear_update(Tensor& y, const Tensor& x, const Tensor& a, const Tensor& b, double scale) {
  Tensor t = make_tensor({x.size(0), a.size(0)}, x.dtype(), x.device());
  gemm(x, a.t(), t, 1.0, 0.0);
  gemm(t, b.t(), y, scale, 1.0);
}

Tensor convert_raw(const Tensor& t, DType dt) {
  if (t.dtype() == dt) return t;
  if (is_quantized(dt))
    fail_shape("[to_dtype] converting ", t.desc(), " to ", dtype_name(dt),
               " is not supported: peft.cpp reads GGML block formats but does not quantize");
  if (is_quantized(t.dtype())) {
    // dequantize: ggml's reference values in float32, then the requested dtype
    if (!t.is_contiguous())
      fail_shape("[to_dtype] ", t.desc(), " is not contiguous (internal: quantized views are whole rows)");
    Tensor f = make_tensor(t.shape(), DType::float32, t.device());
    if (!t.is_meta() && t.numel() > 0) backend(t.device()).dequantize(t, f);
    return dt == DType::float32 ? f : convert_raw(f, dt);
  }
  Tensor out = make_tensor(t.shape(), dt, t.device());
  if (!t.is_meta()) backend(t.device()).copy(t, out);
  return out;
}

Tensor contiguous_raw(const Tensor& t) {
  if (t.is_contiguous()) return t;
  if (is_quantized(t.dtype())) fail_shape("[contiguous] internal: non-contiguous quantized tensor ", t.desc());
  Tensor out = make_tensor(t.shape(), t.dtype(), t.device());
  if (!t.is_meta()) backend(t.device()).copy(t, out);
  return out;
}

namespace {
struct ThreadInit {
  ThreadInit() {
    if (const char* s = std::getenv("PEFT_NUM_THREADS")) {
      int n = std::atoi(s);
      if (n > 0) omp_set_num_threads(n);
    }
  }
} thread_init;
}  // namespace

void set_num_threads(int n) {
  if (n <= 0) fail("set_num_threads: thread count must be positive, got ", n);
  omp_set_num_threads(n);
}

int get_num_threads() { return omp_get_max_threads(); }

}  // namespace peft
