// The per-model reader-writer lock (see adapters/model_lock.h).
#include "adapters/model_lock.h"

#include <algorithm>
#include <mutex>
#include <shared_mutex>
#include <utility>
#include <vector>

#include "runtime/error.h"

namespace peft {

// std::shared_mutex alone may let a steady stream of readers starve a writer (glibc's rwlock
// prefers readers). A writer holds `gate` while it waits for `mu`, which stops new readers.
struct ModelLock {
  std::mutex gate;
  std::shared_mutex mu;
};

namespace {

// The locks the calling thread holds, with whether exclusively: makes nested entry points re-entrant.
thread_local std::vector<std::pair<const ModelLock*, bool>> t_held;

std::shared_ptr<ModelLock> model_lock(const nn::Module& model) {
  // const_cast: the slot is bookkeeping, not model state (as peft_state's slot).
  auto p = const_cast<nn::Module&>(model).attachment_or_insert("peft.lock",
                                                               [] { return std::make_shared<ModelLock>(); });
  return std::static_pointer_cast<ModelLock>(p);
}

const std::pair<const ModelLock*, bool>* held(const ModelLock* l) {
  for (const auto& h : t_held)
    if (h.first == l) return &h;
  return nullptr;
}

void release(const ModelLock* l) {
  auto it = std::find_if(t_held.rbegin(), t_held.rend(), [&](const auto& h) { return h.first == l; });
  t_held.erase(std::next(it).base());
}

}  // namespace

ModelReadGuard::ModelReadGuard(const nn::Module& model) {
  auto l = model_lock(model);
  if (held(l.get())) return;
  {
    std::lock_guard<std::mutex> g(l->gate);
    l->mu.lock_shared();
  }
  t_held.emplace_back(l.get(), false);
  lock_ = std::move(l);
}

ModelReadGuard::~ModelReadGuard() {
  if (!lock_) return;
  release(lock_.get());
  lock_->mu.unlock_shared();
}

ModelWriteGuard::ModelWriteGuard(const nn::Module& model) {
  auto l = model_lock(model);
  if (const auto* h = held(l.get())) {
    if (!h->second)
      fail("cannot change the model's adapters (load, delete, set_adapter, merge, ...) while this thread "
           "runs a forward_mixed_batch or holds a ModelReadGuard on it");
    return;
  }
  {
    std::lock_guard<std::mutex> g(l->gate);
    l->mu.lock();
  }
  t_held.emplace_back(l.get(), true);
  lock_ = std::move(l);
}

ModelWriteGuard::~ModelWriteGuard() {
  if (!lock_) return;
  release(lock_.get());
  lock_->mu.unlock();
}

}  // namespace peft
