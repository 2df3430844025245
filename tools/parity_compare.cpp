#include "tools/parity_compare.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "runtime/error.h"

namespace fs = std::filesystem;

namespace peft::tools::parity_detail {

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("cannot read ", p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

std::string list_diff(const std::vector<std::string>& got, const std::vector<std::string>& want) {
  std::set<std::string> g(got.begin(), got.end()), w(want.begin(), want.end());
  std::vector<std::string> extra, missing;
  for (const auto& x : got)
    if (!w.count(x)) extra.push_back(x);
  for (const auto& x : want)
    if (!g.count(x)) missing.push_back(x);
  if (extra.empty() && missing.empty()) {
    for (size_t i = 0; i < got.size() && i < want.size(); ++i)
      if (got[i] != want[i]) return "order differs at " + std::to_string(i) + ": got " + got[i] + ", want " + want[i];
    return "lengths differ";
  }
  std::string s;
  if (!extra.empty()) s += "unexpected [" + join(extra) + "]";
  if (!missing.empty()) s += std::string(s.empty() ? "" : "; ") + "missing [" + join(missing) + "]";
  return s;
}

std::vector<std::string> str_list(const ordered_json& j) {
  std::vector<std::string> v;
  for (const auto& e : j) v.push_back(e.get<std::string>());
  return v;
}

Compare compare(const Tensor& got, const Tensor& want, const ParityTolerance& tol, const std::string& what) {
  Compare c;
  if (!got.defined()) {
    c.ok = false;
    c.err = INFINITY;
    c.detail = what + ": not computed";
    return c;
  }
  if (got.shape() != want.shape()) {
    c.ok = false;
    c.err = INFINITY;
    c.detail = what + ": shape " + shape_str(got.shape()) + " vs expected " + shape_str(want.shape());
    return c;
  }
  if (got.is_meta()) {
    c.ok = false;
    c.err = INFINITY;
    c.detail = what + ": tensor is on meta";
    return c;
  }
  std::vector<double> a = got.to(DType::float64).to_vector<double>(), b = want.to(DType::float64).to_vector<double>();
  double maxb = 0, err = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    maxb = std::max(maxb, std::fabs(b[i]));
    double d = std::fabs(a[i] - b[i]);
    if (std::isnan(d)) d = INFINITY;
    err = std::max(err, d);
  }
  c.err = err;
  c.ok = err <= tol.atol + tol.rtol * maxb;
  if (!c.ok) c.detail = what;
  return c;
}

void Accum::add(const Compare& c) {
  err = std::max(err, c.err);
  if (!c.ok) {
    ok = false;
    if (bad.size() < 3) bad.push_back(c.detail);
  }
}

void Accum::fail_with(const std::string& d) {
  ok = false;
  err = INFINITY;
  if (bad.size() < 3) bad.push_back(d);
}

}  // namespace peft::tools::parity_detail
