// Counter-based random numbers (Philox4x32-10): a seed and an offset fully
// determine the stream, so CPU and CUDA kernels can produce identical values.
#pragma once
#include <cstdint>

namespace peft {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  void manual_seed(uint64_t seed) {
    seed_ = seed;
    counter_ = 0;
    buffered_ = 0;
  }
  uint64_t seed() const { return seed_; }
  uint64_t counter() const { return counter_; }

  // The whole stream position (torch.Generator.get_state / set_state): a checkpoint that
  // saves it resumes with the same random numbers.
  struct State {
    uint64_t seed = 0, counter = 0;
    uint32_t buf[4] = {0, 0, 0, 0};
    int buffered = 0;
  };
  State get_state() const {
    State s;
    s.seed = seed_, s.counter = counter_, s.buffered = buffered_;
    for (int i = 0; i < 4; ++i) s.buf[i] = buf_[i];
    return s;
  }
  void set_state(const State& s) {
    seed_ = s.seed, counter_ = s.counter, buffered_ = s.buffered;
    for (int i = 0; i < 4; ++i) buf_[i] = s.buf[i];
  }

  uint32_t next_u32();
  double next_double();     // uniform in [0, 1), 53 bits
  float next_float();       // uniform in [0, 1), 24 bits
  double next_normal();     // standard normal (Box-Muller)

  // Reserves `n` blocks of 4 numbers for a kernel that generates in parallel:
  // returns the first counter value; block i uses counter + i.
  uint64_t reserve_blocks(uint64_t n) {
    uint64_t c = counter_;
    counter_ += n;
    buffered_ = 0;
    return c;
  }

 private:
  uint64_t seed_;
  uint64_t counter_ = 0;
  uint32_t buf_[4] = {0, 0, 0, 0};
  int buffered_ = 0;
};

// Philox4x32-10 block: 4 random words for (seed, counter).
void philox4x32(uint64_t seed, uint64_t counter, uint32_t out[4]);

// Process-wide generator used where the caller passes none (module init).
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace peft
