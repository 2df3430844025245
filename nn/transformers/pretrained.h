// Hugging Face checkpoint folders: config.json + model.safetensors (or a sharded
// model.safetensors.index.json) -> a transformer host (models.h) with its weights.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nn/transformers/models.h"

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
};

// What load_pretrained did, for a caller that wants to show it.
struct PretrainedInfo {
  std::string architecture;               // the class built
  std::vector<std::string> files;         // safetensors files read
  std::vector<std::string> ignored_keys;  // checkpoint keys not used (known buffers, other heads)
  int64_t zero_copy_tensors = 0, converted_tensors = 0;
};

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

// Reads and parses DIR/config.json (peft::Error naming the file on failure).
nlohmann::ordered_json read_model_config(const std::string& dir);

// The class names build_pretrained supports.
std::vector<std::string> supported_architectures();

}  // namespace peft::nn
