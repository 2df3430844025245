// What PEFT keeps on PeftModel / the tuner object, for plain injected models:
// merge_and_unload / unload, set_scale and the scoped guards (disable_adapter,
// rescale_adapter_scale). A C++ user needs no PeftModel wrapper: every function
// takes the model inject_adapter_in_model returned.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "adapters/tuner.h"

namespace peft {

struct MergeAndUnloadOptions {
  bool safe_merge = false;                 // refuse non-finite merged weights
  std::vector<std::string> adapter_names;  // default: the active adapters
  bool progressbar = false;                // one line per layer on stderr
};

// PEFT's merge_and_unload: merges the adapters into the base weights and puts each
// tuner layer's base layer back in its place (modules_to_save: the active trained
// copy). The model's adapter state is forgotten: it is a plain model again. On a
// failed (safe) merge nothing is replaced and the layers merged so far are unmerged.
nn::Module& merge_and_unload(nn::Module& model, const MergeAndUnloadOptions& opts = {});
// PEFT's unload: the same without merging (the base model as it was; modules_to_save
// keep the active trained copy, as PEFT).
nn::Module& unload(nn::Module& model);

// LoraLayer.set_scale on every LoRA layer holding `adapter`: scaling = scale·alpha/r
// (alpha/√r with rsLoRA). Throws when no layer holds it.
void set_scale(nn::Module& model, const std::string& adapter, double scale);

// PeftModel.disable_adapter(): adapters off for the guard's lifetime. On exit,
// adapters are enabled again unless every layer was disabled on entry (PEFT 0.21).
class DisableAdapterGuard {
 public:
  explicit DisableAdapterGuard(nn::Module& model);
  ~DisableAdapterGuard();
  DisableAdapterGuard(const DisableAdapterGuard&) = delete;
  DisableAdapterGuard& operator=(const DisableAdapterGuard&) = delete;

 private:
  nn::Module& model_;
  bool restore_;
};

// peft.helpers.rescale_adapter_scale: every LoRA layer's scalings multiplied by
// `multiplier` for the guard's lifetime, restored exactly on exit.
class RescaleAdapterScale {
 public:
  RescaleAdapterScale(nn::Module& model, double multiplier);
  ~RescaleAdapterScale();
  RescaleAdapterScale(const RescaleAdapterScale&) = delete;
  RescaleAdapterScale& operator=(const RescaleAdapterScale&) = delete;

 private:
  struct Saved;
  std::vector<std::shared_ptr<Saved>> saved_;
};

}  // namespace peft
