// Per-model reader-writer lock: forward_mixed_batch and the state-dict readers hold it shared,
// every call that changes a model's adapters (inject, load, delete, set_adapter, merge, ...)
// holds it exclusive, so one thread may load or delete adapters while others serve forwards.
// The lock lives in the model's attachment slot "peft.lock". Re-entrant per thread: a call
// nested in another on the same model (load_adapter -> inject) does not lock again.
#pragma once
#include <memory>

#include "nn/module.h"

namespace peft {

struct ModelLock;  // writer-preferring: a waiting load/delete is not starved by a stream of forwards

// Holds the model's lock shared for its scope. Plain model.forward() takes no lock: wrap it in
// a ModelReadGuard when another thread may change the model's adapters meanwhile.
class ModelReadGuard {
 public:
  explicit ModelReadGuard(const nn::Module& model);
  ~ModelReadGuard();
  ModelReadGuard(const ModelReadGuard&) = delete;
  ModelReadGuard& operator=(const ModelReadGuard&) = delete;

 private:
  std::shared_ptr<ModelLock> lock_;  // null when this thread already held the lock
};

// Holds the model's lock exclusively for its scope. Throws peft::Error when the calling
// thread holds it shared (changing adapters inside forward_mixed_batch's callback would
// otherwise deadlock).
class ModelWriteGuard {
 public:
  explicit ModelWriteGuard(const nn::Module& model);
  ~ModelWriteGuard();
  ModelWriteGuard(const ModelWriteGuard&) = delete;
  ModelWriteGuard& operator=(const ModelWriteGuard&) = delete;

 private:
  std::shared_ptr<ModelLock> lock_;
};

}  // namespace peft
