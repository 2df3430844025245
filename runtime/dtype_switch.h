// Internal (not installed, host code of both backends): the switches that instantiate a
// kernel per element type, with the backend's own storage types for bfloat16 / float16,
// and the rounding mode of rms_norm. `backend` names the backend in internal errors.
#pragma once
#include <cstdint>
#include <type_traits>

#include "runtime/dtype.h"
#include "runtime/error.h"

namespace peft {

// Every dtype; f receives a value of the storage type (BF16 / F16 for the 16-bit floats).
template <class BF16, class F16, class F>
void dispatch_dtype_all(DType dt, F&& f) {
  switch (dt) {
    case DType::float32: f(float{}); break;
    case DType::float64: f(double{}); break;
    case DType::bfloat16: f(BF16{}); break;
    case DType::float16: f(F16{}); break;
    case DType::int64: f(int64_t{}); break;
    case DType::bool_: f(bool{}); break;
    default: fail("internal: no element kernel for the block-quantized dtype ", dtype_name(dt));
  }
}

// compute dtypes only: float32, float64, int64, bool
template <class F>
void dispatch_dtype_compute(DType dt, const char* backend, const char* what, F&& f) {
  switch (dt) {
    case DType::float32: f(float{}); break;
    case DType::float64: f(double{}); break;
    case DType::int64: f(int64_t{}); break;
    case DType::bool_: f(bool{}); break;
    default: fail("[", what, "] internal: ", backend, " kernel called with ", dtype_name(dt));
  }
}

template <class F>
void dispatch_dtype_float(DType dt, const char* backend, const char* what, F&& f) {
  switch (dt) {
    case DType::float32: f(float{}); break;
    case DType::float64: f(double{}); break;
    default: fail("[", what, "] internal: ", backend, " kernel needs float32/float64, got ", dtype_name(dt));
  }
}

// rms_norm's rounding of its result to `rt` and back, for element type T: 0 none,
// 1 through float32, 2 through bfloat16, 3 through float16.
template <class T>
int round_mode(DType rt) {
  switch (rt) {
    case DType::float32: return std::is_same_v<T, float> ? 0 : 1;
    case DType::bfloat16: return 2;
    case DType::float16: return 3;
    default: return 0;
  }
}

}  // namespace peft
