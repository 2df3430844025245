// The transformer hosts: BERT, GPT-2 and the Llama family (Llama, Qwen2, Mistral), built from
// a config.json as transformers 5 builds them: same module names, order, parameter shapes and
// repr, so Hugging Face checkpoints and PEFT adapters apply unchanged. Construct on Device::meta
// and fill with load_pretrained (pretrained.h), or on cpu with random weights.
#pragma once
#include "nn/transformers/common.h"

namespace peft::nn {

// BertModel: embeddings (word, position, token type, LayerNorm), encoder, optional pooler.
// forward returns last_hidden_state [B, T, hidden].
class BertModel : public PreTrainedModel {
 public:
  BertModel(const nlohmann::ordered_json& config, bool add_pooling_layer = true, DType dt = DType::float32,
            Device dev = Device::cpu);
  Tensor forward(const ModelInputs& in) override;
  // tanh(dense(last_hidden_state[:, 0])) (needs the pooler).
  Tensor pool(const Tensor& last_hidden_state);
  int64_t num_layers() const override { return layers_; }
  int64_t max_positions() const override { return max_pos_; }
  bool has_pooler() const { return has_child("pooler"); }

 private:
  int64_t vocab_, layers_, max_pos_, type_vocab_, heads_;
};

// GPT2Model (forward returns last_hidden_state) and GPT2LMHeadModel (forward returns logits;
// lm_head's weight is wte's tensor when tie_word_embeddings).
class GPT2Model : public PreTrainedModel {
 public:
  GPT2Model(const nlohmann::ordered_json& config, DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const ModelInputs& in) override;
  bool is_decoder() const override { return true; }
  int64_t num_layers() const override { return layers_; }
  int64_t max_positions() const override { return max_pos_; }

 private:
  int64_t vocab_, layers_, max_pos_, embd_, heads_;
  bool scale_weights_, scale_by_layer_;
};

class GPT2LMHeadModel : public PreTrainedModel {
 public:
  GPT2LMHeadModel(const nlohmann::ordered_json& config, DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const ModelInputs& in) override;
  Tensor forward_head_inputs(const ModelInputs& in) override;
  std::string output_embeddings_name() const override { return "lm_head"; }
  bool is_decoder() const override { return true; }
  int64_t num_layers() const override;
  int64_t max_positions() const override;
  GPT2Model& transformer() const;
  // Shares wte's weight with lm_head (called after loading when tie_word_embeddings).
  void tie_weights();
};

// LlamaModel / LlamaForCausalLM, and the same classes for "qwen2" (Qwen2*: q/k/v with bias)
// and "mistral" (Mistral*): RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP.
class LlamaModel : public PreTrainedModel {
 public:
  LlamaModel(const nlohmann::ordered_json& config, DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const ModelInputs& in) override;
  bool is_decoder() const override { return true; }
  int64_t num_layers() const override { return layers_; }
  int64_t max_positions() const override { return max_pos_; }
  // "Llama", "Qwen2" or "Mistral": the class-name prefix of this family.
  static std::string family_prefix(const std::string& model_type);
  // Computes like llama.cpp where the two differ by rounding: the RMSNorm statistics, and with
  // `kv_round` float16 / bfloat16 the queries, keys and values rounded through it before attention
  // (llama.cpp's KV cache type; float32: none). Set for models loaded from GGUF, whose
  // quantized products then see llama.cpp's inputs.
  void set_ggml_numerics(bool on, DType kv_round = DType::float32);

 private:
  int64_t vocab_, layers_, max_pos_, heads_, kv_heads_, head_dim_;
  double rope_theta_;
  std::optional<int64_t> sliding_window_;
  DType kv_round_ = DType::float32;  // set_ggml_numerics
};

class LlamaForCausalLM : public PreTrainedModel {
 public:
  LlamaForCausalLM(const nlohmann::ordered_json& config, DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const ModelInputs& in) override;
  Tensor forward_head_inputs(const ModelInputs& in) override;
  std::string output_embeddings_name() const override { return "lm_head"; }
  bool is_decoder() const override { return true; }
  int64_t num_layers() const override;
  int64_t max_positions() const override;
  LlamaModel& model() const;
  void tie_weights();
};

}  // namespace peft::nn
