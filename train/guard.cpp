#include "train/guard.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

namespace peft::train {

DivergenceGuard::DivergenceGuard(int64_t warmup_steps, double loss_factor, double grad_factor)
    : warmup_(warmup_steps), loss_factor_(loss_factor), grad_factor_(grad_factor) {}

std::string DivergenceGuard::check(int64_t step, double loss, std::optional<double> grad_norm) {
  char buf[256];
  // NaN prints as "nan" whatever its sign bit ("-nan" reads like a negative number)
  if (!std::isfinite(loss)) {
    std::snprintf(buf, sizeof buf, "the loss became %g at step %lld", std::isnan(loss) ? NAN : loss, (long long)step + 1);
    return buf;
  }
  if (grad_norm && !std::isfinite(*grad_norm)) {
    std::snprintf(buf, sizeof buf, "the gradient norm became %g at step %lld", std::isnan(*grad_norm) ? NAN : *grad_norm,
                  (long long)step + 1);
    return buf;
  }
  ema_ = started_ ? 0.9 * ema_ + 0.1 * loss : loss;
  best_ = started_ ? std::min(best_, ema_) : ema_;
  started_ = true;
  const bool after_warmup = step >= std::max<int64_t>(warmup_, 1);
  if (after_warmup && ema_ > loss_factor_ * best_ + 0.5) {
    std::snprintf(buf, sizeof buf,
                  "training diverged at step %lld: the smoothed loss %.4g is above %gx its lowest value %.4g",
                  (long long)step + 1, ema_, loss_factor_, best_);
    return buf;
  }
  if (grad_norm) {
    if (after_warmup && norms_.size() >= 10) {
      std::vector<double> v(norms_.begin(), norms_.end());
      std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
      const double median = v[v.size() / 2];
      if (median > 0 && *grad_norm > grad_factor_ * median) {
        std::snprintf(buf, sizeof buf,
                      "training diverged at step %lld: the gradient norm %.4g is over %gx its recent median %.4g",
                      (long long)step + 1, *grad_norm, grad_factor_, median);
        return buf;
      }
    }
    norms_.push_back(*grad_norm);
    if (norms_.size() > 50) norms_.pop_front();
  }
  return "";
}

}  // namespace peft::train
