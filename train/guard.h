// Stops a fine-tuning run that has gone wrong, with a message that says how: a non-finite
// loss or gradient norm at once; after warm-up, a smoothed loss far above its lowest value,
// or a gradient norm far above its recent median (PyTorch users watch for these by eye).
#pragma once
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace peft::train {

class DivergenceGuard {
 public:
  // loss_factor: the smoothed loss (EMA, 0.9) may rise to loss_factor x its minimum + 0.5;
  // grad_factor: a gradient norm may reach grad_factor x the median of the last 50.
  explicit DivergenceGuard(int64_t warmup_steps, double loss_factor = 4.0, double grad_factor = 100.0);
  // Call once per step (0-based) with the step's loss and, when measured, its gradient norm.
  // Returns "" while training is healthy, else why it must stop.
  std::string check(int64_t step, double loss, std::optional<double> grad_norm = std::nullopt);

  // What it has seen so far, for a checkpoint: a resumed run judges as the uninterrupted one.
  struct State {
    double ema = 0, best = 0;
    bool started = false;
    std::vector<double> recent_grad_norms;
  };
  State state() const { return {ema_, best_, started_, {norms_.begin(), norms_.end()}}; }
  void set_state(const State& s) {
    ema_ = s.ema, best_ = s.best, started_ = s.started;
    norms_.assign(s.recent_grad_norms.begin(), s.recent_grad_norms.end());
  }

 private:
  int64_t warmup_;
  double loss_factor_, grad_factor_;
  double ema_ = 0, best_ = 0;
  bool started_ = false;
  std::deque<double> norms_;
};

}  // namespace peft::train
