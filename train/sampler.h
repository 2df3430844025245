// The order in which a training run visits its examples: every example once per epoch, in a
// seeded random order that changes every epoch. The order is a pure function of (seed,
// position), so a resumed run draws the same batches as an uninterrupted one without saving
// any sampler state.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace peft::train {

class EpochSampler {
 public:
  // `n` examples (> 0); `seed` fixes every epoch's order.
  EpochSampler(size_t n, uint64_t seed);
  // The examples at positions [first, first + count) of the endless sequence epoch 0, epoch 1,
  // ... (a batch of B at step s: take(s * B, B)).
  std::vector<size_t> take(int64_t first, int64_t count);
  // Epoch e's order (a permutation of 0..n-1).
  const std::vector<size_t>& epoch_order(int64_t epoch);
  size_t size() const { return n_; }

 private:
  size_t n_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<size_t> order_;
};

}  // namespace peft::train
