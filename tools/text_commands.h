// `peft generate --model DIR ...` (tools/cmd_text.cpp), reached from `peft generate`, which
// keeps --base for the character-level model.
#pragma once
#include <string>
#include <vector>

#include "nn/module.h"
#include "nn/transformers/pretrained.h"
#include "tools/args.h"

namespace peft::cli {
int run_text_generate(const std::vector<std::string>& argv);
// Loads adapter folders DIR... onto `model` under their folder names ('.' -> '_'; adapter0,
// adapter1... when names clash), without PEFT's warning about several adapters on one model.
std::vector<std::string> load_adapter_folders(nn::Module& model, const std::vector<std::string>& dirs);
// --dtype f32|bf16|f16 (a GGUF model's quantized weights are dequantized; else kept).
nn::PretrainedOptions model_options(const Args& a);
// --kv-cache f16|f32|bf16 (GGUF models: llama.cpp's KV-cache type).
void apply_kv_cache_option(const Args& a, nn::PretrainedOptions& o);
// --threads N
void apply_threads_option(const Args& a);
// `peft finetune --model ...` (tools/cmd_finetune_lm.cpp): LoRA SFT of a decoder.
int run_finetune_lm(const std::vector<std::string>& argv);
}  // namespace peft::cli
