// Internal to the parity tool: one golden case rebuilt and checked (tools/parity.cpp runs it,
// tools/parity_checks.cpp holds the comparison families, tools/parity_training.cpp the
// training replays). Not installed.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/state_dict.h"
#include "nn/module.h"
#include "runtime/dtype.h"
#include "tools/parity.h"
#include "tools/parity_compare.h"

namespace peft::tools::parity_detail {

class CaseRunner : CheckEmitter {
  using Status = ParityCheck::Status;

 public:
  CaseRunner(const std::string& dir, const std::function<void(const ParityCheck&)>& cb, const ParityTolerance& tol,
             Device device)
      : CheckEmitter(cb), dir_(dir), tol_(tol), device_(device) {}

  ParityReport run();

 private:
  // ------------------------------------------------------------ plumbing --

  bool supported(std::string& why);
  std::shared_ptr<nn::Module> host();
  std::vector<std::string> adapter_names() const;
  std::shared_ptr<nn::Module> injected(bool low_cpu);
  void setup();

  // Loads adapter_<name>.safetensors for every adapter.
  void load_adapters(nn::Module& m, bool low_cpu, bool report);
  Tensor input(const StateDict& io) const;

  // Runs the outputs, gradients, mixed-batch and training checks with model_ on device_
  // (`peft parity --device cuda`); model_ returns to the CPU afterwards.
  struct OnDevice {
    OnDevice(nn::Module& m, Device d) : m_(m), moved_(d != Device::cpu) {
      if (moved_) m_.to(d);
    }
    ~OnDevice() {
      if (moved_) m_.to(Device::cpu);
    }
    nn::Module& m_;
    bool moved_;
  };

  // ---------------------------------------------------------------- checks --
  // A check whose case.json field is absent is reported as skipped, by name.
  void skip_absent(const char* field) { emit(field, Status::skip, 0, "not recorded in case.json"); }

  void check_repr();
  void check_keys();
  void check_trainable();
  void check_init_zero();
  void check_adapter_keys();

  // Output and gradients of sum(output * grad_seed) with each adapter active.
  void check_outputs();

  // Row i uses adapter adapter_names[i]; also checked against per-adapter forwards.
  void check_mixed_batch();

  // Host key (as in merged.* / merged_<adapter>.safetensors) -> the model's tensor.
  std::map<std::string, Tensor> host_view(const nn::Module& m);
  void check_merge();

  // bfloat16: host converted to bf16, the bf16 adapter (peft_bfloat16/) loaded and merged.
  void check_merged_bf16(const std::string& first);

  // The same adapters saved by PeftModel.save_pretrained (keys prefixed base_model.model.).
  void check_peft_dirs();
  std::vector<std::string> device_names(const nn::Module& m, const std::string& adapter);
  void check_low_cpu();

  // AdaLoRA with its rank allocator: from init_full.*, `steps` steps of
  // mse -> backward -> SGD(lr=0.02) -> update_and_allocate(step) -> zero_grad.
  void check_adalora_training();
  void check_training();
  std::string dir_;
  ParityTolerance tol_;
  Device device_ = Device::cpu;
  ordered_json meta_;
  std::shared_ptr<nn::Module> model_;
  bool ready_ = false, loaded_ = false;
};

}  // namespace peft::tools::parity_detail
