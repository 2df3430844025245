// LoRA layers (PEFT's tuners/lora/layer.py): lora.Linear and lora.Embedding
// wrappers, and DoRA's magnitude module.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "adapters/lora/config.h"
#include "adapters/tuner.h"

namespace peft::lora {

// Everything update_layer needs for one adapter on one layer.
struct AdapterArgs {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  InitLoraWeights init_lora_weights = true;
  bool use_rslora = false;
  bool use_dora = false;
  bool lora_bias = false;
  bool low_cpu_mem_usage = false;  // adapter tensors on meta
  bool inference_mode = false;
};

// DoRA magnitude: parameter "weight" of shape (out,); repr "lora.dora.DoraLinearLayer()".
class DoraLinearLayer : public nn::Module {
 public:
  explicit DoraLinearLayer(bool fan_in_fan_out);
  // ‖W + scaling·lora_weight‖ per output row (W transposed first when fan_in_fan_out).
  Tensor get_weight_norm(const Tensor& weight, const Tensor& lora_weight, double scaling) const;
  // Initialises the magnitude from the base weight and the current factors.
  void init_magnitude(const Tensor& base_weight, const Tensor& lora_A, const Tensor& lora_B, double scaling,
                      bool on_meta);
  std::shared_ptr<Module> clone() const override;
  bool fan_in_fan_out;
};

// Common state of the LoRA wrappers (PEFT's LoraLayer).
class LoraLayer : public TunerLayer {
 public:
  LoraLayer(std::string type_name, nn::ModulePtr base_layer, int64_t in_features, int64_t out_features);

  std::vector<std::string> adapter_layer_names() const override {
    return {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"};
  }
  std::vector<std::string> other_layer_names() const override { return {"lora_dropout"}; }
  std::string prefix() const override { return "lora_"; }

  virtual void update_layer(const std::string& adapter, const AdapterArgs& args) = 0;

  // Mixed-batch inference (PEFT's adapter_names=): while a scope lives, row i of the calling
  // thread's forwards through `layers` uses adapter names[i] ("__base__": none). Per thread,
  // not a member, so concurrent mixed batches on one model don't see each other's rows.
  class MixedBatchScope {
   public:
    MixedBatchScope(const std::vector<std::shared_ptr<LoraLayer>>& layers, const std::vector<std::string>& names);
    ~MixedBatchScope();
    MixedBatchScope(const MixedBatchScope&) = delete;
    MixedBatchScope& operator=(const MixedBatchScope&) = delete;

   private:
    std::vector<std::pair<const LoraLayer*, const std::vector<std::string>*>> saved_;  // restored on exit
  };
  // The row assignment in effect for this layer on the calling thread (nullptr: none).
  const std::vector<std::string>* mixed_batch() const;

  nn::ModuleDict& lora_dropout() const;
  nn::ModuleDict& lora_A() const;
  nn::ModuleDict& lora_B() const;
  nn::ParameterDict& lora_embedding_A() const;
  nn::ParameterDict& lora_embedding_B() const;
  nn::ModuleDict& lora_magnitude_vector() const;

  // scaling[adapter] = factor·alpha/r (or alpha/√r with rslora).
  void set_scale(const std::string& adapter, double factor);
  // Multiplies the scaling of every active adapter.
  void scale_layer(double factor);
  // Restores the base scaling (factor empty) or divides by `factor`.
  void unscale_layer(std::optional<double> factor = std::nullopt);

  int64_t in_features, out_features;
  std::map<std::string, int64_t> r;
  std::map<std::string, double> lora_alpha;
  std::map<std::string, double> scaling;
  std::map<std::string, bool> use_dora;
  std::map<std::string, bool> lora_bias;
  std::map<std::string, bool> use_rslora;

 protected:
  void erase_adapter_state(const std::string& name) override;
  void common_update(const std::string& adapter, const AdapterArgs& args);
  // Checks adapter_names against the input (PEFT's _check_forward_args) and
  // groups the rows per adapter, in order of first appearance.
  std::vector<std::pair<std::string, Tensor>> mixed_batch_groups(const Tensor& x,
                                                                 const std::vector<std::string>& names) const;
};

class Linear : public LoraLayer {
 public:
  Linear(nn::ModulePtr base_layer, const std::string& adapter, const AdapterArgs& args,
         bool fan_in_fan_out = false);
  void update_layer(const std::string& adapter, const AdapterArgs& args) override;
  Tensor forward(const Tensor& x) override;
  Tensor get_delta_weight(const std::string& adapter) override;
  void reset_lora_parameters(const std::string& adapter, const InitLoraWeights& init);
  bool fan_in_fan_out;

 protected:
  std::vector<MergedTensor> merged_tensors(const std::string& adapter) override;
  void unmerge_adapter(const std::string& adapter) override;

 private:
  std::map<std::string, Tensor> dora_weight_norm_cache_;
};

class Embedding : public LoraLayer {
 public:
  Embedding(nn::ModulePtr base_layer, const std::string& adapter, const AdapterArgs& args);
  void update_layer(const std::string& adapter, const AdapterArgs& args) override;
  Tensor forward(const Tensor& x) override;
  Tensor get_delta_weight(const std::string& adapter) override;

 protected:
  std::vector<MergedTensor> merged_tensors(const std::string& adapter) override;
  void unmerge_adapter(const std::string& adapter) override;
};

}  // namespace peft::lora
