#include "adapters/defaults.h"

#include <map>

#include "nn/transformers/common.h"

namespace peft {

namespace {

using Table = std::map<std::string, std::vector<std::string>>;

const Table& table_for(const std::string& peft_type) {
  static const Table lora = {{"bert", {"query", "value"}},
                             {"gpt2", {"c_attn"}},
                             {"llama", {"q_proj", "v_proj"}},
                             {"mistral", {"q_proj", "v_proj"}},
                             {"qwen2", {"q_proj", "v_proj"}}};
  static const Table ia3 = {{"bert", {"key", "value", "output.dense"}},
                            {"gpt2", {"c_attn", "mlp.c_proj"}},
                            {"llama", {"k_proj", "v_proj", "down_proj"}},
                            {"mistral", {"k_proj", "v_proj", "down_proj"}},
                            {"qwen2", {"q_proj", "v_proj", "down_proj"}}};
  // AdaLoRA's table has no mistral entry in PEFT 0.21.
  static const Table adalora = {{"bert", {"query", "value"}},
                                {"gpt2", {"c_attn"}},
                                {"llama", {"q_proj", "v_proj"}},
                                {"qwen2", {"q_proj", "v_proj"}}};
  static const Table none;
  if (peft_type == "LORA") return lora;
  if (peft_type == "IA3") return ia3;
  if (peft_type == "ADALORA") return adalora;
  return none;
}

}  // namespace

std::string host_model_type(const nn::Module& model) {
  if (const auto* pm = dynamic_cast<const nn::PreTrainedModel*>(&model)) return pm->model_type();
  return "custom";
}

std::optional<std::vector<std::string>> default_target_modules(const std::string& peft_type,
                                                               const std::string& model_type) {
  const Table& t = table_for(peft_type);
  auto it = t.find(model_type);
  if (it == t.end()) return std::nullopt;
  return it->second;
}

std::optional<std::vector<std::string>> default_feedforward_modules(const std::string& model_type) {
  static const Table ff = {{"bert", {"output.dense"}},
                           {"gpt2", {"mlp.c_proj"}},
                           {"llama", {"down_proj"}},
                           {"mistral", {"down_proj"}},
                           {"qwen2", {"down_proj"}}};
  auto it = ff.find(model_type);
  if (it == ff.end()) return std::nullopt;
  return it->second;
}

}  // namespace peft
