// CpuBackend::allocate: 64-byte aligned blocks; the large ones are mapped pages kept in a
// best-fit reuse cache.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>

#include "runtime/cpu/cpu_backend.h"

namespace peft::cpu {
namespace {

// Large blocks are mapped straight from the kernel and kept for reuse. Straight mapping,
// because glibc raises its mmap threshold after each large free and then serves later large
// requests from its heap, which it cannot give back while anything above them lives: the
// resident size of a training run grew to twice its live tensors that way. Reuse, because a
// fresh mapping page-faults all of its memory again (about 2 ms per 8 MB).
//
// A request takes the smallest cached block that holds it with at most 25% to spare (so
// sequences of different lengths share blocks). At most PEFT_CPU_CACHE_MB (default 1024,
// 0 disables) stay cached, and trim_cpu_cache() unmaps what was not reused since its last call.
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
  // Returns a block of at least n bytes and its size.
  std::pair<void*, size_t> get(size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(n);
      if (it != free_.end() && it->first <= n + n / 4) {
        std::pair<void*, size_t> block{it->second.ptr, it->first};
        cached_ -= it->first;
        free_.erase(it);
        return block;
      }
    }
    void* p = map(n);
    if (!p) {
      release(false);
      p = map(n);
    }
    if (!p) fail("out of memory allocating ", n, " bytes on cpu");
    return {p, n};
  }
  // live: bytes of blocks in use after this one's release; peak: the most ever in use.
  void put(void* p, size_t n, size_t live, size_t peak) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // idle plus live blocks stay within a quarter above the peak in use, so the cache
      // never holds more than that slack besides what the program has needed at once
      if (cached_ + n <= limit_ && live + cached_ + n <= peak + peak / 4) {
        free_.emplace(n, Entry{p, generation_});
        cached_ += n;
        return;
      }
    }
    munmap(p, n);
  }
  // Unmaps every cached block (unused_only: those put back before the previous call).
  void release(bool unused_only) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = free_.begin(); it != free_.end();) {
      if (unused_only && it->second.generation == generation_) {
        ++it;
        continue;
      }
      munmap(it->second.ptr, it->first);
      cached_ -= it->first;
      it = free_.erase(it);
    }
    ++generation_;
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

 private:
  // Blocks from 4 MiB start on a 2 MiB boundary and ask for transparent huge pages: a
  // 2 MiB fault instead of 512 small ones when the block is first written.
  static void* map(size_t n) {
    constexpr size_t huge = size_t(2) << 20;
    if (n < 2 * huge) {
      void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    }
    void* raw = mmap(nullptr, n + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = (base + huge - 1) & ~(uintptr_t(huge) - 1);
    if (start > base) munmap(raw, start - base);
    if (const size_t tail = base + n + huge - (start + n)) munmap(reinterpret_cast<void*>(start + n), tail);
    void* p = reinterpret_cast<void*>(start);
    madvise(p, n, MADV_HUGEPAGE);
    return p;
  }
  struct Entry {
    void* ptr;
    uint64_t generation;
  };
  std::mutex mu_;
  std::multimap<size_t, Entry> free_;
  size_t cached_ = 0;
  size_t limit_ = size_t(1024) << 20;
  uint64_t generation_ = 0;
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
    auto [block, size] = block_cache().get(BlockCache::round(padded));
    p = block;
    padded = size;
    st->owner = std::shared_ptr<void>(p, [size](void* q) {
      const size_t live = g_allocated.fetch_sub(size, std::memory_order_relaxed) - size;
      block_cache().put(q, size, live, g_allocated_peak.load(std::memory_order_relaxed));
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
size_t cpu_cached_bytes() { return cpu::block_cache().cached(); }
void trim_cpu_cache(bool all) { cpu::block_cache().release(!all); }

}  // namespace peft
