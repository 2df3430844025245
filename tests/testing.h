// Test helpers: CHECK_ALLCLOSE (prints the first mismatches) and a central
// finite-difference gradient check in float64.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "runtime/tensor.h"

namespace peft::testing {

// Returns "" when |a-b| <= atol + rtol*|b| everywhere, else a report.
inline std::string allclose_report(const Tensor& a, const Tensor& b, double rtol, double atol) {
  std::ostringstream os;
  if (a.shape() != b.shape()) {
    os << "shape mismatch: " << a.desc() << " vs " << b.desc();
    return os.str();
  }
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  int shown = 0;
  size_t bad = 0;
  double worst = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double d = std::fabs(va[i] - vb[i]);
    bool ok = d <= atol + rtol * std::fabs(vb[i]) || (std::isnan(va[i]) && std::isnan(vb[i])) ||
              (std::isinf(va[i]) && va[i] == vb[i]);
    if (!ok) {
      ++bad;
      worst = std::max(worst, d);
      if (shown < 5) {
        os << "  [" << i << "] got " << va[i] << " expected " << vb[i] << " (diff " << d << ")\n";
        ++shown;
      }
    }
  }
  if (!bad) return "";
  std::ostringstream head;
  head << bad << " of " << va.size() << " elements differ (max abs diff " << worst << ", rtol "
       << rtol << ", atol " << atol << "):\n";
  return head.str() + os.str();
}

// The message of the peft::Error that `f` throws; "<no exception>" or
// "<other exception: ...>" otherwise. Use: CHECK(error_of([&]{ op(); }).find("[op]") != npos).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  }
  return "<no exception>";
}

// Infinite when the shapes differ (never a comparison of a common prefix); NaN counts as infinite.
// The real all-MiniLM-L6-v2 folder scripts/fetch_minilm.sh unpacks (test.sh runs it first and
// exports PEFT_MINILM_DIR); else ${PEFT_CACHE:-~/.cache/peft}/all-MiniLM-L6-v2.
inline std::string minilm_dir() {
  if (const char* d = std::getenv("PEFT_MINILM_DIR"); d && *d) return d;
  std::string cache;
  if (const char* c = std::getenv("PEFT_CACHE"); c && *c) cache = c;
  else if (const char* h = std::getenv("HOME"); h && *h) cache = std::string(h) + "/.cache/peft";
  return cache + "/all-MiniLM-L6-v2";
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const double d = std::fabs(va[i] - vb[i]);
    m = std::max(m, std::isnan(d) ? INFINITY : d);
  }
  return m;
}

// Central finite differences of sum(f(inputs) * seed) against autograd, float64.
inline std::string gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                             std::vector<Tensor> inputs, double eps = 1e-6, double tol = 1e-6) {
  for (Tensor& t : inputs) t = t.to(DType::float64).detach().requires_grad_(true);
  Tensor out = f(inputs);
  Generator g(1234);
  Tensor seed = randn(out.shape(), g, DType::float64);
  Tensor loss = sum(mul(out, seed));
  loss.backward();
  std::ostringstream os;
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor x = inputs[k];
    Tensor analytic = x.grad();
    std::vector<double> num(size_t(x.numel()));
    Tensor flat = x.detach().contiguous();
    for (int64_t i = 0; i < x.numel(); ++i) {
      std::vector<Tensor> plus = inputs, minus = inputs;
      Tensor xp = flat.clone(), xm = flat.clone();
      std::vector<double> v = flat.to_vector<double>();
      Shape idx(size_t(x.dim()));
      int64_t rem = i;
      for (int64_t d = x.dim() - 1; d >= 0; --d) {
        idx[size_t(d)] = rem % x.size(d);
        rem /= x.size(d);
      }
      xp.set(idx, v[size_t(i)] + eps);
      xm.set(idx, v[size_t(i)] - eps);
      plus[k] = xp;
      minus[k] = xm;
      NoGradGuard ng;
      double fp = sum(mul(f(plus), seed)).item();
      double fm = sum(mul(f(minus), seed)).item();
      num[size_t(i)] = (fp - fm) / (2 * eps);
    }
    Tensor numeric = from_vector(num, x.shape(), DType::float64);
    if (!analytic.defined()) {
      os << "input " << k << ": no gradient computed\n";
      continue;
    }
    std::string r = allclose_report(analytic, numeric, 1e-4, tol);
    if (!r.empty()) os << "input " << k << ": " << r;
  }
  return os.str();
}

}  // namespace peft::testing

#define CHECK_ALLCLOSE(a, b, rtol, atol)                                              \
  do {                                                                                \
    std::string peft_report_ = ::peft::testing::allclose_report((a), (b), (rtol), (atol)); \
    CHECK_MESSAGE(peft_report_.empty(), peft_report_);                                \
  } while (0)

// CHECK_GRADCHECK(f, inputs[, eps, tol]); variadic so lambdas with commas need no parentheses.
#define CHECK_GRADCHECK(...)                                                       \
  do {                                                                             \
    std::string peft_report_ = ::peft::testing::gradcheck(__VA_ARGS__);            \
    CHECK_MESSAGE(peft_report_.empty(), peft_report_);                             \
  } while (0)
