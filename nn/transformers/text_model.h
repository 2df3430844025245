// A Hugging Face model folder (or GGUF file) with its tokenizer, as an application embeds or
// generates with it: load_pretrained + tokenizer.json + sentence-transformers' settings
// (modules.json, 1_Pooling/config.json, sentence_bert_config.json) when present.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "nn/transformers/pretrained.h"

namespace peft::nn {

struct SentenceSettings {
  std::string pool = "mean";       // "mean" or "cls" (1_Pooling/config.json)
  bool normalize = false;          // a Normalize module in modules.json
  std::optional<size_t> max_seq_length;  // sentence_bert_config.json
  bool from_sentence_transformers = false;
};

struct TextModel {
  std::string dir;
  std::shared_ptr<nn::PreTrainedModel> model;
  std::optional<Tokenizer> tokenizer;  // absent when the folder has no tokenizer.json
  SentenceSettings sentence;
  std::string chat_template;  // a GGUF file's tokenizer.chat_template ("" when none)

  // Loads DIR (config.json + weights) and DIR/tokenizer.json when present, or a .gguf file
  // (weights, tokenizer and chat template from the file).
  static TextModel load(const std::string& dir, const nn::PretrainedOptions& opts = {});
  const Tokenizer& tok() const;  // peft::Error naming the folder when it has no tokenizer

  // Token ids, mask and token types [B, T] for a batch of texts: padded to the longest,
  // truncated at max_len (default: sentence_bert_config's max_seq_length, else the model's
  // max positions), special tokens added.
  nn::ModelInputs batch(const std::vector<std::string>& texts, std::optional<size_t> max_len = {}) const;
  // Sentence embeddings [B, H] as sentence-transformers computes them (pool, then normalize
  // when the folder says so); `pool` overrides the folder's setting ("mean" or "cls").
  // skip_padding false: padded positions are computed as transformers does (a mixed-adapter
  // batch needs every layer's input as [B, T, ...] rows, one adapter per row).
  Tensor embed(const std::vector<std::string>& texts, const std::string& pool = "", std::optional<size_t> max_len = {},
               bool skip_padding = true);
  // The same from inputs batch() made (the caller reads their attention mask, e.g. to count tokens).
  Tensor embed(const nn::ModelInputs& in, const std::string& pool = "");
};

// Reads sentence-transformers' files in `dir` (defaults when absent).
SentenceSettings read_sentence_settings(const std::string& dir);

}  // namespace peft::nn
