// Internal (not installed): the scalar formulas of the elementwise ops, one definition for
// the CPU kernels (g++) and the CUDA kernels (nvcc), so both backends compute the same
// expression in the same order. Math goes through std:: functions, which nvcc maps to the
// same device functions as the unqualified calls. A backend may substitute its own exp, tanh,
// erf, gelu and gelu_tanh through the Math policy (the CPU's float32 ones, math_f32.h).
#pragma once
#include <cmath>
#include <type_traits>

#include "runtime/backend.h"

#if defined(__CUDACC__)
#define PEFT_HOST_DEVICE __host__ __device__
#else
#define PEFT_HOST_DEVICE
#endif

namespace peft::scalar {

template <class T>
PEFT_HOST_DEVICE inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
template <class T>
PEFT_HOST_DEVICE inline T gelu(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
}
// g·gelu'(x) = g·(Φ(x) + x·φ(x)) (gelu's backward, one pass)
template <class T>
PEFT_HOST_DEVICE inline T gelu_grad(T g, T x) {
  const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
  const T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * (x * x));
  return g * (cdf + x * pdf);
}
template <class T>
PEFT_HOST_DEVICE inline T gelu_tanh(T x) {
  return T(0.5) * x * (T(1) + std::tanh(T(0.7978845608028654) * (x + T(0.044715) * (x * x * x))));
}
template <class T>
PEFT_HOST_DEVICE inline T gelu_tanh_grad(T g, T x) {
  const T x2 = x * x, t = std::tanh(T(0.7978845608028654) * (x + T(0.044715) * (x2 * x)));
  const T du = T(0.7978845608028654) * (T(1) + T(0.134145) * x2);
  return g * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
}

// The default Math policy: the formulas above and the std:: functions.
struct StdMath {
  template <class T>
  PEFT_HOST_DEVICE static T exp(T x) {
    return std::exp(x);
  }
  template <class T>
  PEFT_HOST_DEVICE static T tanh(T x) {
    return std::tanh(x);
  }
  template <class T>
  PEFT_HOST_DEVICE static T erf(T x) {
    return std::erf(x);
  }
  template <class T>
  PEFT_HOST_DEVICE static T gelu(T x) {
    return scalar::gelu(x);
  }
  template <class T>
  PEFT_HOST_DEVICE static T gelu_grad(T g, T x) {
    return scalar::gelu_grad(g, x);
  }
  template <class T>
  PEFT_HOST_DEVICE static T gelu_tanh(T x) {
    return scalar::gelu_tanh(x);
  }
  template <class T>
  PEFT_HOST_DEVICE static T gelu_tanh_grad(T g, T x) {
    return scalar::gelu_tanh_grad(g, x);
  }
};

template <class T, class Math = StdMath>
PEFT_HOST_DEVICE inline T unary_value(UnaryKind k, T x, double s0, double s1) {
  if constexpr (std::is_same_v<T, bool>) {
    return x;
  } else {
    const T a = T(s0);
    switch (k) {
      case UnaryKind::neg: return -x;
      case UnaryKind::abs: return x < 0 ? -x : x;
      case UnaryKind::sign: return T((x > 0) - (x < 0));
      case UnaryKind::relu: return x > 0 ? x : T(0);
      case UnaryKind::add_scalar: return x + a;
      case UnaryKind::mul_scalar: return x * a;
      case UnaryKind::div_scalar: return x / a;
      case UnaryKind::rsub_scalar: return a - x;
      case UnaryKind::clamp: return x < a ? a : (x > T(s1) ? T(s1) : x);
      case UnaryKind::rdiv_scalar: return a / x;
      default: break;
    }
    if constexpr (std::is_floating_point_v<T>) {
      switch (k) {
        case UnaryKind::exp: return Math::exp(x);
        case UnaryKind::log: return std::log(x);
        case UnaryKind::sqrt: return std::sqrt(x);
        case UnaryKind::rsqrt: return T(1) / std::sqrt(x);
        case UnaryKind::erf: return Math::erf(x);
        case UnaryKind::gelu: return Math::gelu(x);
        case UnaryKind::gelu_tanh: return Math::gelu_tanh(x);
        case UnaryKind::silu: return x * sigmoid(x);
        case UnaryKind::tanh: return Math::tanh(x);
        case UnaryKind::sigmoid: return sigmoid(x);
        case UnaryKind::pow_scalar:
          if (s0 == 2.0) return x * x;
          if (s0 == 1.0) return x;
          if (s0 == 0.5) return std::sqrt(x);
          return std::pow(x, a);
        default: break;
      }
    } else {
      if (k == UnaryKind::pow_scalar) return T(std::pow(double(x), s0));
    }
    return x;
  }
}

// Predicates read x as double (T is a compute dtype: float32, float64, int64, bool).
template <class T>
PEFT_HOST_DEVICE inline bool predicate_value(UnaryKind k, T x, double s) {
  const double v = double(x);
  switch (k) {
    case UnaryKind::isfinite: return std::isfinite(v);
    case UnaryKind::logical_not: return v == 0;
    case UnaryKind::eq_scalar: return v == s;
    case UnaryKind::ne_scalar: return v != s;
    case UnaryKind::gt_scalar: return v > s;
    case UnaryKind::lt_scalar: return v < s;
    case UnaryKind::ge_scalar: return v >= s;
    case UnaryKind::le_scalar: return v <= s;
    default: return false;
  }
}

template <class T, class Math = StdMath>
PEFT_HOST_DEVICE inline T binary_value(BinaryKind k, T a, T b) {
  if constexpr (std::is_same_v<T, bool>) {
    switch (k) {
      case BinaryKind::add: return a || b;
      case BinaryKind::mul: return a && b;
      case BinaryKind::maximum: return a || b;
      default: return a != b;
    }
  } else {
    switch (k) {
      case BinaryKind::add: return a + b;
      case BinaryKind::sub: return a - b;
      case BinaryKind::mul: return a * b;
      case BinaryKind::div: return a / b;
      case BinaryKind::maximum: return (a != a) ? a : (a > b ? a : b);
      case BinaryKind::tanh_grad: return a * (T(1) - b * b);
      case BinaryKind::gelu_tanh_grad:
        if constexpr (std::is_floating_point_v<T>) return Math::gelu_tanh_grad(a, b);
        else return a;
      case BinaryKind::gelu_grad:
        if constexpr (std::is_floating_point_v<T>) return Math::gelu_grad(a, b);
        else return a;
      case BinaryKind::pow:
        if constexpr (std::is_floating_point_v<T>) return std::pow(a, b);
        else return T(std::pow(double(a), double(b)));
      default: return a;
    }
  }
}

template <class T>
PEFT_HOST_DEVICE inline bool compare_value(BinaryKind k, T a, T b) {
  switch (k) {
    case BinaryKind::eq: return a == b;
    case BinaryKind::ne: return a != b;
    case BinaryKind::gt: return a > b;
    case BinaryKind::lt: return a < b;
    case BinaryKind::ge: return a >= b;
    case BinaryKind::le: return a <= b;
    default: return false;
  }
}

}  // namespace peft::scalar
