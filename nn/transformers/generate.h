// Text generation for the decoder hosts (GPT-2, Llama family): a KV cache, greedy decoding
// and seeded sampling (temperature, top-k, top-p) as transformers' generate() applies them.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "nn/transformers/common.h"

namespace peft::nn {

struct GenerateOptions {
  int64_t max_new_tokens = 20;
  bool do_sample = false;     // false: greedy (argmax)
  double temperature = 1.0;   // > 0; logits are divided by it before top-k / top-p
  int64_t top_k = 0;          // 0: off; else keep the k most likely tokens
  double top_p = 1.0;         // (0, 1]; 1: off; else the smallest set with mass >= top_p
  uint64_t seed = 0;          // sampling stream (peft's Philox generator)
  std::vector<int64_t> eos_token_ids;  // a row stops after emitting one of these; the first is the
                                       // model's own EOS (appended to completions in training data)
  std::optional<int64_t> pad_token_id; // what finished rows emit (default: the first eos id)
};

// generation_config.json (else config.json) of a model folder: eos_token_id (int or list),
// pad_token_id, and sampling defaults (do_sample, temperature, top_k, top_p) when present.
// A .gguf file: gguf_generation_config.
GenerateOptions read_generation_config(const std::string& model_dir);

// A GGUF file's end-of-generation tokens as llama.cpp stops on them: tokenizer.ggml.eos / eot /
// eom_token_id and the tokens llama.cpp recognises by their text ("<|im_end|>", "<|eot_id|>",
// "<|endoftext|>", "<end_of_turn>", ...); pad from tokenizer.ggml.padding_token_id.
GenerateOptions gguf_generation_config(const std::string& path);

// Continues every row of input_ids [B, T] (int64). attention_mask [B, T] (optional, 1 =
// token, 0 = left padding) gives the positions as transformers: cumsum(mask) - 1. Returns
// [B, T + n] with n <= max_new_tokens (fewer when every row has finished). on_step, when
// set, receives each new column [B] of token ids as it is chosen (for streaming output).
// Runs without autograd; the model is put in eval mode for the call.
Tensor generate(PreTrainedModel& model, const Tensor& input_ids, const Tensor& attention_mask,
                const GenerateOptions& opts,
                const std::function<void(const std::vector<int64_t>& step_tokens)>& on_step = {});

// The next-token choice for one row of logits (exposed for tests): greedy, or sampling
// with temperature / top-k / top-p from `gen`.
int64_t choose_token(const std::vector<float>& logits, const GenerateOptions& opts, Generator& gen);

}  // namespace peft::nn
