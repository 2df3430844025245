// Building blocks shared by the Hugging Face transformer hosts (bert.h, gpt2.h, llama.h):
// transformers' Conv1D, the activation modules, the inputs a model forward takes, the KV
// cache and the PreTrainedModel base class. Names and repr follow transformers 5 exactly,
// so PEFT's module keys and target_modules apply unchanged.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/layers.h"

namespace peft::nn {

// transformers.pytorch_utils.Conv1D: y = x·W + b with weight stored [nx, nf] = [in, out].
// A Linear whose weight is transposed: adapters see in_features = nx, out_features = nf and
// must use fan_in_fan_out (PEFT forces it, with a warning).
class Conv1D : public Linear {
 public:
  Conv1D(int64_t nf, int64_t nx, DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  std::shared_ptr<Module> clone() const override;
};

// Activation modules by transformers' ACT2CLS names ("gelu" -> GELUActivation, "gelu_new" ->
// NewGELUActivation, "gelu_pytorch_tanh" -> GELUTanh, "silu" -> SiLUActivation, "swish" ->
// SiLU, "relu" -> ReLU, "tanh" -> Tanh). Unknown names are a peft::Error naming `field`.
ModulePtr make_activation(const std::string& hidden_act, const std::string& field = "hidden_act");

// Inputs of a transformer forward (transformers' keyword arguments). Undefined tensors take
// the model's defaults: attention_mask all ones, token_type_ids zeros, position_ids
// past_length + arange(T).
struct KVCache;
struct ModelInputs {
  Tensor input_ids;       // int64 [B, T]
  Tensor attention_mask;  // int64/bool [B, past + T] (or [B, T] without cache): 1 = attend
  Tensor token_type_ids;  // int64 [B, T] (BERT)
  Tensor position_ids;    // int64 [B, T]
  KVCache* cache = nullptr;  // decoders: keys/values of earlier positions, extended in place
  // Encoders: positions whose attention_mask is 0 are not computed and their output rows
  // are zeros (transformers computes them; nothing reads them once embeddings are pooled).
  // The token-wise layers then run on the real tokens only: much faster on padded batches.
  bool skip_padding = false;
  // Language-model heads: logits only for the last N positions (0: all), transformers'
  // logits_to_keep; generation needs 1, perplexity the scored half of a window.
  int64_t logits_to_keep = 0;
  // Language-model heads: logits only for these rows of the flattened [B * T] positions
  // (int64 [N]; the head then returns [N, V]). Training scores only the label positions:
  // the head's [B, T, V] logits would be most of a step's memory.
  Tensor logits_index;
};

// Keys and values of every layer for positions already seen (decoders). Storage grows by
// doubling; `length` positions are valid. Inference only (no autograd through the cache).
struct KVCache {
  struct Layer {
    Tensor k, v;  // [B, Hkv, capacity, D]
  };
  std::vector<Layer> layers;
  int64_t length = 0;
  // Positions the first allocation reserves (0: grow by doubling from 64). Generation knows its
  // final length: reserving it allocates each layer's keys and values once, exactly.
  int64_t reserve = 0;
  // Appends k_new/v_new [B, Hkv, T, D] to layer `i` (positions length .. length+T-1) and
  // returns views of all valid positions. The caller advances `length` once per forward.
  std::pair<Tensor, Tensor> append(size_t i, const Tensor& k_new, const Tensor& v_new);
  void reset() { layers.clear(), length = 0; }
};

// Base of the transformer hosts: the parsed config.json, the family, and the forward with
// transformers' inputs. forward(const Tensor&) takes input_ids alone.
class PreTrainedModel : public Module {
 public:
  PreTrainedModel(std::string type_name, nlohmann::ordered_json config);
  const nlohmann::ordered_json& config() const { return config_; }
  // config.json "model_type" ("bert", "gpt2", "llama", "qwen2", "mistral").
  std::string model_type() const;
  // Dotted name of the output embedding layer (lm_head), "" when there is none.
  virtual std::string output_embeddings_name() const { return ""; }
  // The main output: last_hidden_state [B, T, H] for base models, logits [B, T, V] for LMs.
  virtual Tensor forward(const ModelInputs& in) = 0;
  // Language models: the rows the LM head (output_embeddings_name()) would score, before it:
  // [N, H] for in.logits_index, else [B, T', H] (logits_to_keep). A loss over a large
  // vocabulary then runs the head a chunk of rows at a time. Others: a peft::Error.
  virtual Tensor forward_head_inputs(const ModelInputs& in);
  Tensor forward(const Tensor& input_ids) override;
  // Causal decoders take a KV cache; encoders do not.
  virtual bool is_decoder() const { return false; }
  // Number of layers (the KV cache's size).
  virtual int64_t num_layers() const = 0;
  // Longest sequence the position embeddings allow (max_position_embeddings / n_positions).
  virtual int64_t max_positions() const = 0;
  // Gradient checkpointing (transformers' gradient_checkpointing_enable): while recording a
  // graph, each decoder block keeps only its input and is recomputed in backward, so the
  // activations of one block instead of all are alive at once. Llama-family models; the
  // setting reaches the model's inner models (LlamaForCausalLM -> LlamaModel).
  void set_gradient_checkpointing(bool on);
  bool gradient_checkpointing() const { return gradient_checkpointing_; }

 protected:
  nlohmann::ordered_json config_;
  bool gradient_checkpointing_ = false;
};

// sentence-transformers' Pooling(mean): Σ_t h[b, t]·mask[b, t] / max(Σ_t mask[b, t], 1e-9).
// hidden [B, T, H]; mask int64/bool [B, T] (undefined: every token). Returns [B, H].
Tensor mean_pooling(const Tensor& hidden, const Tensor& attention_mask);
// torch.nn.functional.normalize(x, p=2, dim=-1, eps=1e-12) (sentence-transformers' Normalize).
Tensor l2_normalize(const Tensor& x);

namespace hf_detail {
// hidden [B, T, H] -> its last `keep` positions (keep 0 or >= T: all of it).
Tensor keep_last_positions(const Tensor& hidden, int64_t keep);
// The rows of the final hidden states [B, T, H] the LM head scores: in.logits_index's rows
// ([N, H]) when set, else keep_last_positions(hidden, in.logits_to_keep).
Tensor logit_rows(const Tensor& hidden, const ModelInputs& in);
// Shared pieces of the family implementations.
// Checks ids (int64 [B, T], each in [0, vocab)) and the mask/position/token-type shapes, and
// fills the defaults; `past` = positions already in the cache.
struct Prepared {
  Tensor ids, mask, token_types, positions;
  int64_t B = 0, T = 0, past = 0;
};
Prepared prepare_inputs(const char* model, const ModelInputs& in, int64_t vocab, int64_t max_positions,
                        bool needs_token_types, int64_t type_vocab);
// [B, T, H*D] -> [B, H, T, D] as a view (no copy).
Tensor split_heads(const Tensor& x, int64_t heads, int64_t head_dim);
// [B, H, T, D] -> [B, T, H*D].
Tensor merge_heads(const Tensor& x);
// Typed config readers: a missing field takes `def`; a field of the wrong type is a
// peft::Error naming the field and config.json.
int64_t cfg_int(const nlohmann::ordered_json& c, const char* key, std::optional<int64_t> def = {});
double cfg_float(const nlohmann::ordered_json& c, const char* key, std::optional<double> def = {});
bool cfg_bool(const nlohmann::ordered_json& c, const char* key, std::optional<bool> def = {});
std::string cfg_str(const nlohmann::ordered_json& c, const char* key, std::optional<std::string> def = {});
}  // namespace hf_detail

}  // namespace peft::nn
