#include "train/lm_data.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/chat_template.h"
#include "runtime/autograd.h"
#include "runtime/error.h"
#include "runtime/generator.h"
#include "runtime/ops.h"

namespace peft::train {

using json = nlohmann::json;

int64_t LMExample::loss_tokens() const {
  int64_t n = 0;
  for (size_t t = 1; t < labels.size(); ++t) n += labels[t] != kIgnoreIndex;
  return n;
}

std::vector<int64_t> LMExample::prompt_ids() const {
  size_t t = 0;
  while (t < labels.size() && labels[t] == kIgnoreIndex) ++t;
  return {ids.begin(), ids.begin() + ptrdiff_t(t)};
}

namespace {

// The tokenizer's ids without its file's truncation or padding (training decides the length).
std::vector<int64_t> encode(const Tokenizer& tok, const std::string& text, bool add_special) {
  return tok.encode_batch({text}, add_special, std::nullopt, std::nullopt)[0].ids;
}

bool starts_with(const std::vector<int64_t>& a, const std::vector<int64_t>& prefix) {
  return prefix.size() <= a.size() && std::equal(prefix.begin(), prefix.end(), a.begin());
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct Builder {
  const std::string& origin;
  const Tokenizer& tok;
  const LMDataOptions& opts;
  LMDataset& out;

  // Cuts, counts and keeps (or drops) one example.
  void add(LMExample ex) {
    if (int64_t(ex.ids.size()) > opts.max_length) {
      ex.ids.resize(size_t(opts.max_length));
      ex.labels.resize(size_t(opts.max_length));
      ++out.truncated;
    }
    const int64_t scored = ex.loss_tokens();
    if (scored == 0) {
      ++out.dropped;
      return;
    }
    out.tokens += int64_t(ex.ids.size());
    out.loss_tokens += scored;
    out.max_example_tokens = std::max(out.max_example_tokens, int64_t(ex.ids.size()));
    out.examples.push_back(std::move(ex));
  }

  std::string where(int64_t line) const { return origin + ":" + std::to_string(line); }

  void prompt_completion(const json& j, int64_t line) {
    if (!j.at("prompt").is_string() || !j.at("completion").is_string())
      fail(where(line), ": \"prompt\" and \"completion\" must be strings");
    const std::string prompt = j.at("prompt").get<std::string>(), completion = j.at("completion").get<std::string>();
    if (completion.empty()) fail(where(line), ": the completion is empty: nothing to learn");
    LMExample ex;
    ex.source = where(line);
    ex.prompt_text = prompt;
    // TRL: the prompt alone and prompt + completion, tokenized the same way; the prompt's
    // tokens are the start of the whole (else the boundary falls inside a token)
    const std::vector<int64_t> p = encode(tok, prompt, true);
    ex.ids = encode(tok, prompt + completion, true);
    // a tokenizer that appends EOS itself (add_eos_token) put it after the prompt too
    if (!p.empty() && opts.eos_id >= 0 && p.back() == opts.eos_id && !ex.ids.empty() && ex.ids.back() == opts.eos_id)
      fail(where(line), ": the tokenizer appends EOS to every text; prompt/completion data needs one that does not");
    if (!starts_with(ex.ids, p))
      fail(where(line), ": the prompt's tokens are not the start of prompt + completion's (the prompt ends inside a "
                        "token: end it with a space or newline, or start the completion with one)");
    if (opts.eos_id >= 0) ex.ids.push_back(opts.eos_id);
    ex.labels = ex.ids;
    std::fill(ex.labels.begin(), ex.labels.begin() + ptrdiff_t(p.size()), kIgnoreIndex);
    add(std::move(ex));
  }

  void messages(const json& j, int64_t line) {
    if (opts.chat_template.empty())
      fail(where(line), ": \"messages\" need the model's chat template, and this model has none");
    const json& arr = j.at("messages");
    if (!arr.is_array() || arr.empty()) fail(where(line), ": \"messages\" must be a non-empty array");
    std::vector<ChatMessage> msgs;
    for (size_t i = 0; i < arr.size(); ++i) {
      const json& m = arr[i];
      if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
          !m["content"].is_string())
        fail(where(line), ": messages[", i, "] must be {\"role\": string, \"content\": string}");
      msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    const auto render = [&](size_t n, bool gen_prompt) {
      return render_chat(opts.chat_template,
                         std::vector<ChatMessage>(msgs.begin(), msgs.begin() + ptrdiff_t(n)), gen_prompt,
                         opts.bos_token, opts.eos_token);
    };
    LMExample ex;
    ex.source = where(line);
    const std::string full = render(msgs.size(), false);
    ex.ids = encode(tok, full, true);
    ex.labels.assign(ex.ids.size(), kIgnoreIndex);
    bool any_assistant = false;
    for (size_t i = 0; i < msgs.size(); ++i) {
      if (msgs[i].role != "assistant") continue;
      if (!any_assistant)
        for (size_t k = i; k-- > 0;)
          if (msgs[k].role == "user") {
            ex.prompt_text = msgs[k].content;
            break;
          }
      any_assistant = true;
      // the assistant turn's tokens: between the conversation up to its header and up to its end
      const std::string before = render(i, true), upto = render(i + 1, false);
      if (full.compare(0, before.size(), before) != 0 || full.compare(0, upto.size(), upto) != 0)
        fail(where(line), ": the chat template does not render the conversation turn by turn (message ", i,
             "); use {\"prompt\", \"completion\"} lines");
      const std::vector<int64_t> a = encode(tok, before, true), b = encode(tok, upto, true);
      if (!starts_with(ex.ids, a) || !starts_with(ex.ids, b) || b.size() < a.size())
        fail(where(line), ": message ", i, "'s tokens do not line up with the conversation's (its text ends inside a token)");
      for (size_t t = a.size(); t < b.size(); ++t) ex.labels[t] = ex.ids[t];
    }
    if (!any_assistant) fail(where(line), ": no \"assistant\" message: nothing to learn");
    add(std::move(ex));
  }
};

}  // namespace

LMDataset lm_data_from_text(const std::string& text, const std::string& origin, bool jsonl, const Tokenizer& tok,
                            const LMDataOptions& opts) {
  if (opts.max_length < 2) fail(origin, ": the maximum length must be at least 2 tokens, not ", opts.max_length);
  LMDataset out;
  out.path = origin;
  Builder b{origin, tok, opts, out};
  if (!jsonl) {
    out.format = "text";
    std::vector<int64_t> ids;
    try {
      ids = encode(tok, text, true);
    } catch (const Error& e) {
      fail(origin, ": ", e.what());
    }
    if (opts.eos_id >= 0 && (ids.empty() || ids.back() != opts.eos_id)) ids.push_back(opts.eos_id);
    // blocks of max_length (the last one shorter), every token scored
    for (size_t at = 0; at + 1 < ids.size(); at += size_t(opts.max_length)) {
      LMExample ex;
      ex.source = origin + ": tokens " + std::to_string(at) + "..";
      ex.ids.assign(ids.begin() + ptrdiff_t(at), ids.begin() + ptrdiff_t(std::min(ids.size(), at + size_t(opts.max_length))));
      ex.labels = ex.ids;
      b.add(std::move(ex));
    }
  } else {
    std::istringstream in(text);
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception& e) {
        fail(b.where(n), ": not valid JSON: ", e.what());
      }
      if (!j.is_object()) fail(b.where(n), ": each line must be a JSON object");
      const bool pc = j.contains("prompt") && j.contains("completion"), chat = j.contains("messages");
      if (pc == chat)
        fail(b.where(n), ": expected {\"prompt\", \"completion\"} or {\"messages\": [...]}", pc ? ", not both" : "");
      const std::string fmt = pc ? "prompt-completion" : "messages";
      if (!out.format.empty() && out.format != fmt)
        fail(b.where(n), ": a ", fmt, " line in a file of ", out.format, " lines; use one format per file");
      out.format = fmt;
      try {
        if (pc) b.prompt_completion(j, n);
        else b.messages(j, n);
      } catch (const json::exception& e) {
        fail(b.where(n), ": ", e.what());
      } catch (const FormatError& e) {
        fail(b.where(n), ": ", e.what());
      }
    }
  }
  if (out.examples.empty())
    fail(origin, ": no training example", out.dropped ? " (every one lost its scored tokens to the maximum length " +
                                                              std::to_string(opts.max_length) + ")"
                                                        : "");
  return out;
}

LMDataset load_lm_data(const std::string& path, const Tokenizer& tok, const LMDataOptions& opts) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot read training data '", path, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  const bool jsonl = ends_with(path, ".jsonl") || ends_with(path, ".json");
  return lm_data_from_text(ss.str(), path, jsonl, tok, opts);
}

// ------------------------------------------------------------------------------------------

LMBatch collate(const LMDataset& data, const std::vector<size_t>& rows, int64_t pad_id) {
  PEFT_CHECK(!rows.empty(), "collate: an empty batch");
  int64_t T = 0;
  for (size_t r : rows) {
    PEFT_CHECK(r < data.examples.size(), "collate: row ", r, " of ", data.examples.size(), " examples");
    T = std::max(T, int64_t(data.examples[r].ids.size()));
  }
  const int64_t B = int64_t(rows.size());
  std::vector<int64_t> ids(size_t(B * T), pad_id), mask(size_t(B * T), 0), labels(size_t(B * T), kIgnoreIndex);
  std::vector<int64_t> positions, targets;
  LMBatch out;
  for (int64_t b = 0; b < B; ++b) {
    const LMExample& ex = data.examples[rows[size_t(b)]];
    for (size_t t = 0; t < ex.ids.size(); ++t) {
      ids[size_t(b * T) + t] = ex.ids[t];
      mask[size_t(b * T) + t] = 1;
      labels[size_t(b * T) + t] = ex.labels[t];
      if (t > 0 && ex.labels[t] != kIgnoreIndex) {
        positions.push_back(b * T + int64_t(t) - 1);
        targets.push_back(ex.labels[t]);
      }
    }
    out.tokens += int64_t(ex.ids.size());
  }
  out.inputs.input_ids = from_vector(ids, {B, T});
  out.inputs.attention_mask = from_vector(mask, {B, T});
  out.inputs.logits_index = from_vector(positions, {int64_t(positions.size())});
  out.labels = from_vector(labels, {B, T});
  out.targets = from_vector(targets, {int64_t(targets.size())});
  out.loss_tokens = int64_t(targets.size());
  return out;
}

Tensor causal_lm_loss(nn::Module& model, const LMBatch& batch, int64_t chunk_rows) {
  auto* lm = dynamic_cast<nn::PreTrainedModel*>(&model);
  if (!lm || !lm->is_decoder() || lm->output_embeddings_name().empty())
    fail("causal_lm_loss: needs a causal language model (a decoder with an LM head), got ", model.type_name());
  PEFT_CHECK(batch.loss_tokens > 0, "causal_lm_loss: the batch has no scored token");
  PEFT_CHECK(batch.inputs.logits_index.defined(), "causal_lm_loss: the batch has no logits_index (use collate)");
  const Tensor rows = lm->forward_head_inputs(batch.inputs);  // [N, H]: the scored positions only
  nn::Module& head = *model.get_submodule(lm->output_embeddings_name());
  const Tensor targets = batch.targets.to(rows.device());
  const int64_t N = rows.size(0);
  if (chunk_rows <= 0 || N <= chunk_rows) return cross_entropy(head(rows), targets);
  // The logits of N rows over the vocabulary would be most of the step's memory (N x V floats,
  // and as much again for their gradient): a chunk at a time, each recomputed in backward.
  std::vector<Tensor> head_params;
  for (const auto& [n, p] : head.named_parameters())
    if (p.requires_grad()) head_params.push_back(p);
  if (head_params.empty() && is_grad_enabled() && rows.requires_grad()) {
    // A frozen head (the usual LoRA case): each chunk's loss and its gradient with respect to
    // the rows are computed here, so backward needs no second pass over the vocabulary.
    // loss = sum + (<rows, G> - <rows, G>.detach()): the value is the sum exactly, the gradient G.
    const Tensor x = rows.detach();
    Tensor grads = empty(rows.shape(), rows.dtype(), rows.device());
    double loss_sum = 0;
    for (int64_t at = 0; at < N; at += chunk_rows) {
      const int64_t n = std::min(chunk_rows, N - at);
      Tensor h = x.narrow(0, at, n).clone();
      h.requires_grad_(true);
      const Tensor part = mul(cross_entropy(head(h), targets.narrow(0, at, n)), double(n));
      loss_sum += part.item();
      part.backward();
      NoGradGuard ng;
      Tensor slot = grads.narrow(0, at, n);
      slot.copy_(h.grad());
    }
    const Tensor linear = sum(mul(rows, grads));
    return div(add(sub(linear, linear.detach()), loss_sum), double(N));
  }
  Tensor total;
  for (int64_t at = 0; at < N; at += chunk_rows) {
    const int64_t n = std::min(chunk_rows, N - at);
    const Tensor t = targets.narrow(0, at, n);
    Tensor part = autograd::checkpoint(
        [&head, t, n](const Tensor& h) { return mul(cross_entropy(head(h), t), double(n)); }, rows.narrow(0, at, n),
        head_params);
    total = total.defined() ? add(total, part) : part;
  }
  return div(total, double(N));
}

// ------------------------------------------------------------------------------------------

LengthBucketBatcher::LengthBucketBatcher(const LMDataset& data, int64_t batch, uint64_t seed)
    : batch_(batch), seed_(seed) {
  if (batch <= 0) fail("LengthBucketBatcher: the batch size must be positive, not ", batch);
  if (int64_t(data.examples.size()) < batch)
    fail(data.path, ": ", data.examples.size(), " examples, fewer than one batch of ", batch);
  for (const LMExample& ex : data.examples) lengths_.push_back(int64_t(ex.ids.size()));
  per_epoch_ = int64_t(lengths_.size()) / batch;
}

void LengthBucketBatcher::build_epoch(int64_t epoch) {
  Generator g(seed_);
  Generator::State st = g.get_state();
  st.counter = uint64_t(epoch) << 32;
  g.set_state(st);
  const size_t n = lengths_.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  for (size_t i = n - 1; i > 0; --i) std::swap(order[i], order[std::min(i, size_t(g.next_double() * double(i + 1)))]);
  const size_t used = size_t(per_epoch_ * batch_), chunk = size_t(batch_) * 32;
  order.resize(used);
  for (size_t at = 0; at < used; at += chunk) {
    auto end = order.begin() + ptrdiff_t(std::min(used, at + chunk));
    std::stable_sort(order.begin() + ptrdiff_t(at), end, [&](size_t a, size_t b) { return lengths_[a] < lengths_[b]; });
  }
  epoch_batches_.clear();
  for (size_t at = 0; at < used; at += size_t(batch_))
    epoch_batches_.emplace_back(order.begin() + ptrdiff_t(at), order.begin() + ptrdiff_t(at + size_t(batch_)));
  for (size_t i = epoch_batches_.size() - 1; i > 0; --i)
    std::swap(epoch_batches_[i], epoch_batches_[std::min(i, size_t(g.next_double() * double(i + 1)))]);
  cached_epoch_ = epoch;
}

std::vector<size_t> LengthBucketBatcher::rows(int64_t index) {
  PEFT_CHECK(index >= 0, "LengthBucketBatcher: batch ", index, " is negative");
  const int64_t epoch = index / per_epoch_;
  if (epoch != cached_epoch_) build_epoch(epoch);
  return epoch_batches_[size_t(index % per_epoch_)];
}

}  // namespace peft::train
