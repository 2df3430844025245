// Training data for causal language models (supervised fine-tuning), as TRL's SFTTrainer
// prepares it: token ids with labels aligned to them (transformers' convention: the loss at
// position t predicts labels[t] from ids[..t-1]; -100 is not scored).
//
// Formats, one example per line of a JSONL file (blank lines skipped):
//   {"prompt": "...", "completion": "..."}  the text prompt + completion, tokenized together
//       (BOS where the tokenizer adds one) with EOS after the completion; only the completion
//       and its EOS are scored.
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}  rendered
//       with the model's chat template (io/chat_template.h); only the assistant turns
//       (content and end-of-turn) are scored.
// or a plain-text file (any other extension): the whole text tokenized once and cut into
// blocks of max_length, every token scored (pre-training style packing).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "nn/transformers/common.h"
#include "runtime/tensor.h"

namespace peft::train {

inline constexpr int64_t kIgnoreIndex = -100;

struct LMExample {
  std::vector<int64_t> ids;
  std::vector<int64_t> labels;  // same length; kIgnoreIndex where not scored
  std::string source;           // "FILE:LINE", for messages about it
  std::string prompt_text;      // the prompt (the last user message before the first assistant
                                // turn), for showing sampled completions; "" for plain text
  // labels scored by a causal LM (those after the first position)
  int64_t loss_tokens() const;
  // the ids before the first scored token: what a model continues to produce the answer
  std::vector<int64_t> prompt_ids() const;
};

struct LMDataOptions {
  // examples longer than this are cut (the end goes) and counted in LMDataset::truncated
  int64_t max_length = 512;
  // for "messages" lines (a GGUF file's tokenizer.chat_template); empty: such a line is an error
  std::string chat_template;
  std::string bos_token, eos_token;  // texts for templates that write them (llama2, mistral)
  // the token that ends a completion ({"prompt", "completion"} lines) and separates plain-text
  // documents; -1: none
  int64_t eos_id = -1;
};

struct LMDataset {
  std::string path;
  std::string format;               // "prompt-completion", "messages", "text"
  std::vector<LMExample> examples;
  int64_t truncated = 0;            // examples cut at max_length
  int64_t dropped = 0;              // examples with nothing left to score after the cut
  int64_t tokens = 0, loss_tokens = 0;
  int64_t max_example_tokens = 0;   // the longest example (after the cut)
};

// JSONL (.jsonl or .json: one object per line) or plain text. A malformed line is a
// peft::Error naming the file and the line; a file without a single example is one too. The
// JSONL format is fixed by the first example; a later line in the other format is an error.
LMDataset load_lm_data(const std::string& path, const Tokenizer& tok, const LMDataOptions& opts);
// The same for text in memory; `origin` names it in messages ("train.jsonl"); `jsonl` picks the
// format family.
LMDataset lm_data_from_text(const std::string& text, const std::string& origin, bool jsonl, const Tokenizer& tok,
                            const LMDataOptions& opts);

// A padded batch of examples: ids and mask [B, T] (T: the longest), labels [B, T]
// (kIgnoreIndex at padding), and the flattened positions and targets a causal LM's loss
// scores (position t predicts labels[t + 1]).
struct LMBatch {
  nn::ModelInputs inputs;   // input_ids, attention_mask; logits_index = the scored positions
  Tensor labels;            // int64 [B, T]
  Tensor targets;           // int64 [N]: the labels those positions predict
  int64_t loss_tokens = 0;  // N
  int64_t tokens = 0;       // real (unpadded) tokens
};
LMBatch collate(const LMDataset& data, const std::vector<size_t>& rows, int64_t pad_id);

// The mean next-token cross-entropy over the batch's scored positions (transformers'
// ForCausalLMLoss: shift by one, ignore -100). `model` is a causal LM (LlamaForCausalLM,
// GPT2LMHeadModel). The LM head runs on chunk_rows scored positions at a time, each chunk's
// logits recomputed in backward (0: all at once): memory for chunk_rows x vocabulary logits
// instead of N x vocabulary.
Tensor causal_lm_loss(nn::Module& model, const LMBatch& batch, int64_t chunk_rows = 256);

// Batches of examples of similar length (less padding), a pure function of the batch's index
// (resume-safe): each epoch shuffles the examples (seeded), sorts each run of 32 batches'
// worth by length, cuts them into batches and shuffles the batches. Every batch has exactly
// `batch` examples; an epoch's remainder (< batch) waits for a later epoch's shuffle.
class LengthBucketBatcher {
 public:
  LengthBucketBatcher(const LMDataset& data, int64_t batch, uint64_t seed);
  // The rows of batch `index` (0, 1, ... over the epochs).
  std::vector<size_t> rows(int64_t index);
  int64_t batches_per_epoch() const { return per_epoch_; }

 private:
  void build_epoch(int64_t epoch);
  std::vector<int64_t> lengths_;
  int64_t batch_, per_epoch_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<std::vector<size_t>> epoch_batches_;
};

}  // namespace peft::train
