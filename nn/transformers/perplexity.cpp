#include "nn/transformers/perplexity.h"

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::nn {

PerplexityResult perplexity(PreTrainedModel& model, const std::vector<int64_t>& tokens, int64_t ctx,
                            std::optional<int64_t> bos, const std::function<void(int64_t, int64_t, double)>& on_window) {
  if (!model.is_decoder()) fail("[perplexity] ", model.type_name(), " is not a causal decoder");
  if (ctx < 4) fail("[perplexity] ctx must be at least 4, got ", ctx);
  if (ctx > model.max_positions())
    fail("[perplexity] ctx ", ctx, " is longer than the model's ", model.max_positions(), " positions");
  if (int64_t(tokens.size()) < 2 * ctx)
    fail("[perplexity] the text tokenizes to ", tokens.size(), " tokens; a context of ", ctx, " needs at least ", 2 * ctx,
         " (llama-perplexity's rule: two windows)");
  NoGradGuard ng;
  model.eval();
  PerplexityResult r;
  r.ctx = ctx;
  r.windows = int64_t(tokens.size()) / ctx;
  const int64_t first = ctx / 2, scored = ctx - first - 1;
  double nll = 0, nll2 = 0;
  for (int64_t w = 0; w < r.windows; ++w) {
    std::vector<int64_t> ids(tokens.begin() + w * ctx, tokens.begin() + (w + 1) * ctx);
    if (bos) ids[0] = *bos;
    ModelInputs in;
    in.input_ids = from_vector(ids, {1, ctx});
    in.logits_to_keep = ctx - first;  // positions first .. ctx-1
    Tensor logits = model.forward(in).to(DType::float32).contiguous();  // [1, ctx - first, V]
    const int64_t V = logits.size(2);
    const float* lp = logits.data_ptr<float>();
    for (int64_t j = 0; j < scored; ++j) {
      const float* row = lp + j * V;
      // llama.cpp's log_softmax: float max, double sum of expf
      float mx = row[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      const int64_t next = tokens[size_t(w * ctx + first + j + 1)];
      const double lsm = double(row[next] - mx) - std::log(sum);
      nll -= lsm;
      nll2 += lsm * lsm;
    }
    r.scored_tokens += scored;
    if (on_window) on_window(w + 1, r.windows, std::exp(nll / double(r.scored_tokens)));
  }
  const double n = double(r.scored_tokens);
  r.nll = nll / n;
  const double var = nll2 / n - r.nll * r.nll;
  r.nll_stderr = var > 0 && n > 1 ? std::sqrt(var / (n - 1)) : 0;
  r.perplexity = std::exp(r.nll);
  return r;
}

}  // namespace peft::nn
