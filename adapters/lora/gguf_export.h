// convert_lora_to_gguf (`peft convert ADAPTER_DIR --to gguf --base MODEL.gguf --out X.gguf`): a PEFT LoRA adapter
// folder as llama.cpp's LoRA adapter file (the layout convert_lora_to_gguf.py writes, loaded by
// `llama-cli --lora`, `llama-perplexity --lora`, llama_adapter_lora_init):
//
//   general.architecture  the base file's (llama.cpp refuses an adapter of another architecture)
//   general.type          "adapter"
//   adapter.type          "lora"
//   adapter.lora.alpha    f32, the config's lora_alpha
//   adapter.alora.invocation_tokens  u32 array, when the config has alora_invocation_tokens
//   tensors               <gguf weight>.lora_a / .lora_b per adapted module, in the base file's
//                         tensor order: blk.N.attn_q.weight.lora_a [r, in], .lora_b [out, r]
//                         (PEFT's lora_A / lora_B weights as they are, row-major);
//                         token_embd.weight.lora_a [vocab, r] (PEFT's lora_embedding_A
//                         transposed, as llama.cpp's get_rows wants) and .lora_b [dim, r].
//
// Scaling. llama.cpp adds (alpha / r_m) * B A with one alpha for the whole file (r_m: the pair's
// rank), PEFT s_m * B A with s_m = alpha_m / r_m, or alpha_m / sqrt(r_m) with use_rslora, alpha_m
// and r_m after alpha_pattern / rank_pattern. The file stores alpha = lora_alpha and each lora_b
// multiplied by s_m * r_m / alpha (exact for every module; lora_b is unchanged where that factor is
// 1, i.e. without rsLoRA and alpha_pattern, as convert_lora_to_gguf.py writes it).
// llama: the rows of q_proj's and k_proj's lora_b are permuted as convert_hf_to_gguf.py permutes
// the base weights (the loader's unpermute_rotary undone).
//
// Refused, naming the option and the module (llama.cpp applies plain B A deltas to existing
// weights only): other methods than LoRA (IA3, AdaLoRA, ...), use_dora, lora_bias, trained
// biases (bias="all"/"lora_only" tensors), modules_to_save, trainable_token_indices,
// layer_replication, target_parameters, QALoRA and the other LoRA variants, init_lora_weights
// that change the base weights (pissa, olora, corda, loftq, lora_ga: convert them in PEFT with
// path_initial_model_for_weight_conversion first), modules with no GGUF tensor (lm_head of a
// tied base included), an embedding adapter on a tied base (llama.cpp would also apply it to
// the output projection), shapes that differ from the base file's, ranks that differ from the
// config's rank / rank_pattern. Any error leaves `out` as it was (the file is written atomically).
#pragma once
#include <string>

#include "runtime/tensor.h"

namespace peft {

struct LoraGGUFOptions {
  DType dtype = DType::float32;  // of lora_a / lora_b: float32 (default), float16 or bfloat16
};

struct LoraGGUFReport {
  std::string architecture;
  float alpha = 0;          // adapter.lora.alpha
  size_t modules = 0;       // lora_a / lora_b pairs written
  size_t rescaled = 0;      // pairs whose lora_b carries a factor != 1 (rsLoRA, alpha/rank patterns)
  size_t permuted = 0;      // llama q/k pairs whose lora_b rows were permuted
};

LoraGGUFReport convert_lora_to_gguf(const std::string& adapter_dir, const std::string& base_gguf,
                                    const std::string& out_path, const LoraGGUFOptions& opts = {});

}  // namespace peft
