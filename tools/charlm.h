// A character-level language model over words (makemore-MLP style) and the
// word-list data it trains on: the model the `peft pretrain / finetune /
// generate` commands work with.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"
#include "runtime/generator.h"
#include "runtime/tensor.h"

namespace peft::lm {

// Token 0 is '.', the word boundary; then a-z and the accented letters of the
// French and German word lists. Words with any other character are skipped.
class Vocab {
 public:
  static const Vocab& standard();
  int64_t size() const { return int64_t(tokens_.size()); }
  // -1 when the code point is not in the vocabulary.
  int64_t id(char32_t cp) const;
  const std::string& token(int64_t id) const { return tokens_.at(size_t(id)); }
  // Lower-cases ASCII and the listed accented capitals; empty result = skip.
  std::vector<int64_t> encode_word(const std::string& utf8) const;
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  Vocab();
  std::vector<std::string> tokens_;
  std::map<char32_t, int64_t> ids_;
};

struct WordData {
  std::vector<std::vector<int64_t>> train, heldout;
  size_t read = 0, skipped = 0;
};

// Reads a word list (one word per line), keeps words the vocabulary can
// encode, de-duplicates, shuffles with `seed` and holds out `heldout_fraction`.
WordData load_words(const std::string& path, uint64_t seed = 1, double heldout_fraction = 0.1,
                    size_t max_words = 0);

struct CharLMConfig {
  int64_t context = 5;   // previous characters seen
  int64_t embed = 24;    // per-character embedding size
  int64_t hidden = 512;  // width of the two hidden layers
  int64_t vocab = 0;
  std::map<std::string, std::string> to_metadata() const;
  static CharLMConfig from_metadata(const std::map<std::string, std::string>& md);
};

// wte: Embedding(vocab, embed) -> flatten context -> fc1 -> tanh -> fc2 -> tanh -> lm_head.
class CharLM : public nn::Module {
 public:
  CharLM(const CharLMConfig& cfg, Generator& gen);
  // ctx: int64 [B, context] -> logits [B, vocab]
  Tensor forward(const Tensor& ctx) override;
  const CharLMConfig& config() const { return cfg_; }

 private:
  CharLMConfig cfg_;
};

// Every (context, next character) pair of a set of words, in order; words
// are framed by boundary tokens: "..cat" -> c, ".cat" -> a, ... "cat" -> '.'.
struct Examples {
  std::vector<int64_t> ctx;     // [n * context]
  std::vector<int64_t> target;  // [n]
  int64_t context = 0;
  int64_t size() const { return int64_t(target.size()); }
};
Examples make_examples(const std::vector<std::vector<int64_t>>& words, int64_t context);

// Random mini-batches (with replacement) drawn from Examples.
struct Batch {
  Tensor ctx, target;
};
Batch sample_batch(const Examples& ex, int64_t batch_size, Generator& gen);
Batch slice_batch(const Examples& ex, int64_t begin, int64_t end);

// Mean cross-entropy (nats per character) over `ex`, in eval mode, no grad.
double evaluate(nn::Module& model, const Examples& ex, int64_t batch_size = 4096);

// Samples `n` words; `adapter_names` (optional, one per row) is passed to
// mixed-batch forwards by the caller through `forward`.
std::vector<std::string> sample_words(const std::function<Tensor(const Tensor&)>& forward,
                                      int64_t n, int64_t context, Generator& gen,
                                      double temperature = 1.0, int64_t max_len = 24);

}  // namespace peft::lm
