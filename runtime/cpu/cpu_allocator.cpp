// CpuBackend::allocate: 64-byte aligned blocks, the large ones through a reuse cache.
#include <atomic>
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "runtime/cpu/cpu_backend.h"

namespace peft::cpu {
namespace {

// Large blocks are kept for reuse: glibc returns big frees to the OS, so every new
// activation-sized tensor would otherwise page-fault all of its memory again
// (about 2 ms per 8 MB). Blocks are reused for requests of the same rounded size;
// at most PEFT_CPU_CACHE_MB (default 1024, 0 disables) stay cached.
class BlockCache {
 public:
  static constexpr size_t kMinBlock = size_t(1) << 20;
  static size_t round(size_t n) {  // 64 KiB granularity
    constexpr size_t g = size_t(1) << 16;
    return (n + g - 1) / g * g;
  }
  BlockCache() {
    if (const char* s = std::getenv("PEFT_CPU_CACHE_MB")) limit_ = size_t(std::max(0L, std::atol(s))) << 20;
  }
  void* get(size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(n);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= n;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, n);
    if (!p) {
      release_all();
      p = std::aligned_alloc(64, n);
    }
    if (!p) fail("out of memory allocating ", n, " bytes on cpu");
    return p;
  }
  void put(void* p, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + n <= limit_) {
        free_.emplace(n, p);
        cached_ += n;
        return;
      }
    }
    std::free(p);
  }
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    cached_ = 0;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t limit_ = size_t(1024) << 20;
};

// Never destroyed: tensors held by other static objects may be freed after main.
// Live CPU tensor bytes (cpu_allocated_bytes): a relaxed counter, one add per allocation.
std::atomic<size_t> g_allocated{0};
std::atomic<size_t> g_allocated_peak{0};

BlockCache& block_cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}

}  // namespace

std::shared_ptr<Storage> CpuBackend::allocate(size_t nbytes) {
  auto st = std::make_shared<Storage>();
  size_t padded = ((nbytes + 63) / 64) * 64;
  void* p = nullptr;
  if (padded >= BlockCache::kMinBlock) {
    padded = BlockCache::round(padded);
    p = block_cache().get(padded);
    st->owner = std::shared_ptr<void>(p, [padded](void* q) {
      g_allocated.fetch_sub(padded, std::memory_order_relaxed);
      block_cache().put(q, padded);
    });
  } else {
    p = padded ? std::aligned_alloc(64, padded) : nullptr;
    if (padded && !p) fail("out of memory allocating ", nbytes, " bytes on cpu");
    st->owner = std::shared_ptr<void>(p, [padded](void* q) {
      g_allocated.fetch_sub(padded, std::memory_order_relaxed);
      std::free(q);
    });
  }
  const size_t now = g_allocated.fetch_add(padded, std::memory_order_relaxed) + padded;
  size_t peak = g_allocated_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_allocated_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  st->data = p;
  st->nbytes = nbytes;
  st->device = Device::cpu;
  return st;
}

}  // namespace peft::cpu

namespace peft {

size_t cpu_allocated_bytes() { return cpu::g_allocated.load(std::memory_order_relaxed); }
size_t cpu_allocated_peak_bytes() { return cpu::g_allocated_peak.load(std::memory_order_relaxed); }
void reset_cpu_allocated_peak() { cpu::g_allocated_peak.store(cpu_allocated_bytes(), std::memory_order_relaxed); }

}  // namespace peft
