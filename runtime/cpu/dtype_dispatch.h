// Internal: the CPU kernels' dtype plumbing, shared by the kernel files of
// CpuBackend (cpu_*.cpp): storage types for the 16-bit floats, conversions
// through double (or directly for the common float paths), and the switches
// that instantiate a kernel per element type.
#pragma once
#include <cstdint>
#include <type_traits>

#include "runtime/dtype.h"
#include "runtime/dtype_switch.h"
#include "runtime/error.h"
#include "runtime/half.h"

namespace peft::cpu {

struct BF16 {
  uint16_t v;
};
struct F16 {
  uint16_t v;
};

template <class T>
inline double to_d(T x) {
  return double(x);
}
template <>
inline double to_d<BF16>(BF16 x) {
  return bf16_to_float(x.v);
}
template <>
inline double to_d<F16>(F16 x) {
  return f16_to_float(x.v);
}
template <class T>
inline T from_d(double x) {
  return T(x);
}
template <>
inline BF16 from_d<BF16>(double x) {
  return BF16{float_to_bf16(float(x))};
}
template <>
inline F16 from_d<F16>(double x) {
  return F16{float_to_f16(float(x))};
}
template <>
inline bool from_d<bool>(double x) {
  return x != 0;
}

// Converting store without going through double for the common float paths.
template <class S, class D>
inline D convert(S x) {
  if constexpr (std::is_same_v<S, D>) {
    return x;
  } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, BF16>) {
    return BF16{float_to_bf16(x)};
  } else if constexpr (std::is_same_v<S, BF16> && std::is_same_v<D, float>) {
    return bf16_to_float(x.v);
  } else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, F16>) {
    return F16{float_to_f16(x)};
  } else if constexpr (std::is_same_v<S, F16> && std::is_same_v<D, float>) {
    return f16_to_float(x.v);
  } else {
    return from_d<D>(to_d<S>(x));
  }
}

// The switches of runtime/dtype_switch.h with the CPU's storage types.
template <class F>
void dispatch_all(DType dt, F&& f) {
  dispatch_dtype_all<BF16, F16>(dt, static_cast<F&&>(f));
}
template <class F>
void dispatch_compute(DType dt, const char* what, F&& f) {
  dispatch_dtype_compute(dt, "CPU", what, static_cast<F&&>(f));
}
template <class F>
void dispatch_float(DType dt, const char* what, F&& f) {
  dispatch_dtype_float(dt, "CPU", what, static_cast<F&&>(f));
}

}  // namespace peft::cpu
