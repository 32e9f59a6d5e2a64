// sampler.h — token choice from logits: greedy, temperature, top-k, top-p,
// min-p, repetition penalty over a window of recent tokens. Deterministic for
// a given seed.
#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <vector>

#include "specode.h"

namespace specode {

class Sampler {
 public:
  explicit Sampler(const specode_sampler_params &p);
  void accept(int32_t token);
  int32_t sample(const float *logits, int32_t n_vocab);

 private:
  specode_sampler_params p_;
  std::deque<int32_t> recent_;  // last repeat_last_n accepted tokens
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;  // (logit, id) scratch
};

}  // namespace specode
