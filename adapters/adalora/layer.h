// AdaLoRA's SVD layer (PEFT's tuners/adalora/layer.py): ΔW = B·(A⊙E),
// scaled by lora_alpha/(ranknum+1e-5). lora_A (r,in), lora_E (r,1),
// lora_B (out,r) and ranknum (1,) are ParameterDicts keyed by adapter name.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "adapters/adalora/config.h"
#include "adapters/tuner.h"

namespace peft::adalora {

struct AdapterArgs {
  int64_t r = 12;  // init_r
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  bool init_lora_weights = true;
  bool low_cpu_mem_usage = false;
  bool inference_mode = false;
};

// adalora.SVDLinear (repr prefix "adalora."); children in PEFT's order.
class SVDLinear : public TunerLayer {
 public:
  SVDLinear(nn::ModulePtr base_layer, const std::string& adapter, const AdapterArgs& args,
            bool fan_in_fan_out = false);

  std::vector<std::string> adapter_layer_names() const override {
    return {"lora_A", "lora_B", "lora_E", "lora_embedding_A", "lora_embedding_B"};
  }
  std::vector<std::string> other_layer_names() const override { return {"lora_dropout", "ranknum"}; }
  std::string prefix() const override { return "lora_"; }

  // (Re)creates the adapter with rank args.r (r = 0 allowed).
  void update_layer(const std::string& adapter, const AdapterArgs& args);
  // E = 0, A ~ N(0, 0.02), B ~ N(0, 0.02).
  void reset_lora_parameters(const std::string& adapter);
  Tensor forward(const Tensor& x) override;
  Tensor get_delta_weight(const std::string& adapter) override;

  nn::ModuleDict& lora_dropout() const;
  nn::ParameterDict& lora_A() const;
  nn::ParameterDict& lora_B() const;
  nn::ParameterDict& lora_E() const;
  nn::ParameterDict& ranknum() const;

  int64_t in_features = 0, out_features = 0;
  bool fan_in_fan_out = false;
  std::map<std::string, int64_t> r;
  std::map<std::string, double> lora_alpha;
  std::map<std::string, double> scaling;

 protected:
  void erase_adapter_state(const std::string& name) override;
  std::vector<MergedTensor> merged_tensors(const std::string& adapter) override;
  void unmerge_adapter(const std::string& adapter) override;
};

}  // namespace peft::adalora
