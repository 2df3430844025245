// Hugging Face checkpoint folders: config.json + model.safetensors (or a sharded
// model.safetensors.index.json) -> a transformer host (models.h) with its weights.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nn/transformers/models.h"

namespace peft::io {
class GGUFFile;
}

namespace peft::nn {

struct PretrainedOptions {
  // Parameter dtype. Unset: config.json's "dtype" (or "torch_dtype") when it is float32,
  // bfloat16 or float16, else float32. Tensors stored in this dtype are used in place
  // (views of the mapped file, no copy); others are converted.
  std::optional<DType> dtype;
  // Class to build ("BertModel", "GPT2LMHeadModel", "LlamaForCausalLM", ...). Empty: the
  // first supported entry of config.json's "architectures", else the base model of its
  // model_type (checkpoint keys of a head it does not have are then ignored and listed).
  std::string architecture;
  // GGUF files: the precision of the attention's keys and values, as llama.cpp's KV cache type
  // (-ctk / -ctv). Unset: float16, llama.cpp's default, so that logits and tokens follow
  // llama.cpp's: queries, keys and values are rounded through float16 before attention (its CPU
  // flash attention also rounds the queries to the cache type). float32: no rounding.
  std::optional<DType> kv_cache_dtype;
};

// What load_pretrained did, for a caller that wants to show it.
struct PretrainedInfo {
  std::string architecture;               // the class built
  std::vector<std::string> files;         // safetensors files read
  std::vector<std::string> ignored_keys;  // checkpoint keys not used (known buffers, other heads)
  int64_t zero_copy_tensors = 0, converted_tensors = 0;
};

// `dir` may also be a .gguf file (llama.cpp's format; architectures llama and qwen2): see
// load_gguf.
// Builds the model on `meta` and fills every parameter from the checkpoint. Checks keys
// strictly (missing / unexpected / wrong shape are a peft::Error naming them and the
// folder); an unknown model_type or a config value it cannot honour is a peft::Error
// naming it. On any error nothing is returned (no half-loaded model).
std::shared_ptr<PreTrainedModel> load_pretrained(const std::string& dir, const PretrainedOptions& opts = {},
                                                 PretrainedInfo* info = nullptr);

// The class load_pretrained would build for this config (after `architecture` overrides),
// with random weights on `dev` (Device::meta: no data). `with_pooler` applies to BERT.
std::shared_ptr<PreTrainedModel> build_pretrained(const nlohmann::ordered_json& config,
                                                  const std::string& architecture = "",
                                                  DType dt = DType::float32, Device dev = Device::cpu,
                                                  bool with_pooler = true);

// A GGUF file as the transformers model it was converted from: the config rebuilt from the
// metadata (gguf_model_config), tensors renamed (token_embd -> model.embed_tokens, blk.N.attn_q
// -> model.layers.N.self_attn.q_proj, ... output -> lm_head), llama.cpp's Q/K row permutation
// undone for `llama`, so PEFT's target_modules and adapter keys apply unchanged. Weights keep
// the file's formats: GGML block-quantized tensors stay quantized (views of the mapped file,
// frozen), F32 tensors are views, F16/BF16 are widened to float32; opts.dtype converts every
// weight (a floating dtype: dequantizes). Unknown tensors or metadata it cannot honour (rope
// scaling, partial rotary) are a peft::Error naming them.
std::shared_ptr<PreTrainedModel> load_gguf(const std::string& path, const PretrainedOptions& opts = {},
                                           PretrainedInfo* info = nullptr);

// The transformers config.json a GGUF file's metadata describes.
nlohmann::ordered_json gguf_model_config(const io::GGUFFile& file);

// The transformers name of a GGUF tensor of a llama / qwen2 file ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight", "token_embd.weight" -> "model.embed_tokens.weight",
// "output.weight" -> "lm_head.weight"); "" when it has none. The table load_gguf renames by.
std::string gguf_tensor_hf_name(const std::string& gguf_name);

// Reads and parses DIR/config.json (peft::Error naming the file on failure).
nlohmann::ordered_json read_model_config(const std::string& dir);

// The class names build_pretrained supports.
std::vector<std::string> supported_architectures();

}  // namespace peft::nn
