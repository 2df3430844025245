// Perplexity of a causal decoder over a token stream, as llama.cpp's llama-perplexity computes
// it: the tokens are cut into windows of `ctx` (the tail that does not fill a window is
// dropped), each window is evaluated from an empty cache with its first token replaced by BOS
// when the model adds one, and only the second half of each window is scored (positions
// ctx/2 .. ctx-2 predicting their next token), so every scored token has at least ctx/2
// tokens of context.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "nn/transformers/common.h"

namespace peft::nn {

struct PerplexityResult {
  double perplexity = 0;      // exp(mean negative log-likelihood)
  double nll = 0;             // mean negative log-likelihood (nats)
  double nll_stderr = 0;      // llama.cpp's "+/-" uncertainty of the perplexity
  int64_t scored_tokens = 0;  // windows x (ctx - ctx/2 - 1)
  int64_t windows = 0;
  int64_t ctx = 0;
};

// tokens: the whole text (at least 2·ctx tokens, llama.cpp's requirement); bos: the id that
// replaces each window's first token (nullopt: the model adds no BOS). on_window(done, total,
// running perplexity) is called after each window. Runs without autograd, model in eval mode.
PerplexityResult perplexity(PreTrainedModel& model, const std::vector<int64_t>& tokens, int64_t ctx,
                            std::optional<int64_t> bos,
                            const std::function<void(int64_t, int64_t, double)>& on_window = {});

}  // namespace peft::nn
