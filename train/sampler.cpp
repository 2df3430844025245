#include "train/sampler.h"

#include <algorithm>

#include "runtime/error.h"
#include "runtime/generator.h"

namespace peft::train {

EpochSampler::EpochSampler(size_t n, uint64_t seed) : n_(n), seed_(seed) {
  PEFT_CHECK(n > 0, "EpochSampler: no examples to sample from");
}

const std::vector<size_t>& EpochSampler::epoch_order(int64_t epoch) {
  PEFT_CHECK(epoch >= 0, "EpochSampler: epoch ", epoch, " is negative");
  if (epoch == cached_epoch_) return order_;
  // epoch e draws from its own stretch of the seed's Philox stream (2^32 blocks per epoch)
  Generator g(seed_);
  Generator::State st = g.get_state();
  st.counter = uint64_t(epoch) << 32;
  g.set_state(st);
  order_.resize(n_);
  for (size_t i = 0; i < n_; ++i) order_[i] = i;
  for (size_t i = n_ - 1; i > 0; --i) std::swap(order_[i], order_[std::min(i, size_t(g.next_double() * double(i + 1)))]);
  cached_epoch_ = epoch;
  return order_;
}

std::vector<size_t> EpochSampler::take(int64_t first, int64_t count) {
  PEFT_CHECK(first >= 0 && count >= 0, "EpochSampler: positions [", first, ", ", first + count, ") are invalid");
  std::vector<size_t> out;
  out.reserve(size_t(count));
  for (int64_t k = first; k < first + count; ++k) {
    const int64_t epoch = k / int64_t(n_);
    out.push_back(epoch_order(epoch)[size_t(k % int64_t(n_))]);
  }
  return out;
}

}  // namespace peft::train
