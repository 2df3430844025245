// IA3 layers (PEFT's tuners/ia3/layer.py): the ia3.Linear wrapper. It prints
// as plain "Linear(" (PEFT's IA3 classes have no "ia3." prefix).
#pragma once
#include <string>
#include <vector>

#include "adapters/ia3/config.h"
#include "adapters/tuner.h"

namespace peft::ia3 {

// Common state of the IA3 wrappers (PEFT's IA3Layer): one learned vector
// ia3_l[adapter] per adapter.
class IA3Layer : public TunerLayer {
 public:
  IA3Layer(std::string type_name, nn::ModulePtr base_layer, int64_t in_features, int64_t out_features,
           bool is_feedforward);

  std::vector<std::string> adapter_layer_names() const override { return {"ia3_l"}; }
  std::string prefix() const override { return "ia3_"; }

  nn::ParameterDict& ia3_l() const;

  // Adds (or replaces) the adapter's vector: shape (1, in) for feed-forward
  // layers, (out, 1) otherwise; drawn from randn, then set to ones when
  // init_ia3_weights. low_cpu_mem_usage puts it on the meta device.
  void update_layer(const std::string& adapter, bool init_ia3_weights, bool low_cpu_mem_usage = false,
                    bool inference_mode = false);
  void reset_ia3_parameters(const std::string& adapter);

  int64_t in_features, out_features;
  bool is_feedforward;
};

class Linear : public IA3Layer {
 public:
  Linear(nn::ModulePtr base_layer, const std::string& adapter, bool is_feedforward, bool init_ia3_weights = true,
         bool fan_in_fan_out = false, bool low_cpu_mem_usage = false, bool inference_mode = false);
  // Non-feed-forward: y = base(x)·∏ ia3_l (per output feature);
  // feed-forward: y = base(x·∏ ia3_l) (per input feature).
  Tensor forward(const Tensor& x) override;
  // W ← W ⊙ ia3_l (rows, or columns for feed-forward); non-feed-forward also b ← b ⊙ ia3_l.
  // The multiplicative factor as a weight-shaped broadcastable tensor.
  Tensor get_delta_weight(const std::string& adapter) override;
  bool fan_in_fan_out;

 protected:
  std::vector<MergedTensor> merged_tensors(const std::string& adapter) override;
  void unmerge_adapter(const std::string& adapter) override;
  // Merging multiplies, so unmerging divides by ia3_l + 1e-8 and can be inaccurate.
  std::string unmerge_warning() const override;
};

}  // namespace peft::ia3
