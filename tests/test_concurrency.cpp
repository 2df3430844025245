// Concurrent inference (README "Thread safety"): one model with several LoRA adapters serves
// mixed-batch forwards from 8 threads while a 9th loads and deletes another adapter; every
// output equals the single-threaded one bit for bit. scripts/tsan.sh runs this under
// ThreadSanitizer as well.
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>

#include "adapters/folder.h"
#include "adapters/lora/config.h"
#include "adapters/model_lock.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/host_models.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<nn::Module> host() {
  return tools::build_host_model("mlp", nlohmann::json{{"in", 32}, {"hidden", 64}, {"out", 16}});
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

struct Folders {
  fs::path root = fs::temp_directory_path() / ("peft-concurrency-" + std::to_string(::getpid()));
  Folders() {
    fs::remove_all(root);
    // each adapter trained nowhere but random (init_lora_weights=false: lora_B non-zero)
    int seed = 1;
    for (const char* name : {"a", "b", "c", "extra"}) {
      manual_seed(uint64_t(seed++));
      auto src = host();
      LoraConfig c;
      c.r = 4;
      c.target_modules = {"lin0", "lin1", "lin2"};
      c.init_lora_weights = false;
      inject_adapter_in_model(c, *src);
      save_pretrained(*src, (root / name).string());
    }
  }
  ~Folders() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
  std::string operator/(const char* name) const { return (root / name).string(); }
};

}  // namespace

TEST_CASE("8 threads of mixed-batch forwards while a 9th loads and deletes adapters match the single-threaded outputs") {
  ScopedWarningHandler quiet;  // "Adapter extra was active which is now deleted ..."
  Folders dirs;
  manual_seed(0);
  auto model = host();
  for (const char* name : {"a", "b", "c"}) load_adapter(*model, dirs / name, name);
  model->eval();

  // fixed batches, each row its own adapter; references with and without grad mode
  const std::vector<std::vector<std::string>> rows = {
      {"a", "b", "c", "__base__", "a", "c"},
      {"c", "c", "b", "a", "__base__", "b"},
      {"__base__", "a", "a", "b", "c", "__base__"},
      {"b", "a", "c", "b", "a", "c"},
  };
  Generator g(7);
  std::vector<Tensor> xs, ref_nograd, ref_grad;
  for (const auto& r : rows) {
    xs.push_back(randn({int64_t(r.size()), 32}, g));
    {
      NoGradGuard ng;
      ref_nograd.push_back(forward_mixed_batch(*model, xs.back(), r));
    }
    ref_grad.push_back(forward_mixed_batch(*model, xs.back(), r).detach());
  }
  // the rows really differ per adapter, so a row given another thread's adapter shows
  CHECK_FALSE(same_bits(ref_nograd[0], forward_mixed_batch(*model, xs[0], rows[1])));

  constexpr int kReaders = 8, kIters = 800;
  std::atomic<int> readers_left{kReaders}, mismatches{0}, errors{0}, loads{0};
  std::vector<std::string> messages(kReaders + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kReaders; ++t)
    threads.emplace_back([&, t] {
      try {
        std::optional<NoGradGuard> ng;
        if (t % 2 == 0) ng.emplace();  // half the readers build autograd graphs
        for (int i = 0; i < kIters; ++i) {
          size_t k = size_t(t + i) % rows.size();
          Tensor y = forward_mixed_batch(*model, xs[k], rows[k]);
          if (!same_bits(y, t % 2 == 0 ? ref_nograd[k] : ref_grad[k])) ++mismatches;
        }
      } catch (const std::exception& e) {
        ++errors;
        messages[size_t(t)] = e.what();
      }
      --readers_left;
    });
  threads.emplace_back([&] {
    try {
      while (readers_left > 0) {
        load_adapter(*model, dirs / "extra", "extra");
        delete_adapter(*model, "extra");
        ++loads;
      }
    } catch (const std::exception& e) {
      ++errors;
      messages[kReaders] = e.what();
    }
  });
  for (auto& th : threads) th.join();
  for (const auto& m : messages)
    if (!m.empty()) MESSAGE("thread error: " << m);
  CHECK(errors == 0);
  CHECK(mismatches == 0);
  CHECK(loads > 0);
  MESSAGE(kReaders << " readers x " << kIters << " mixed-batch forwards, " << loads.load() << " load/delete cycles");
  CHECK(peft_state(*model)->adapter_names() == std::vector<std::string>{"a", "b", "c"});
}

TEST_CASE("changing a model's adapters inside its own forward_mixed_batch is refused, not a deadlock") {
  manual_seed(0);
  auto model = host();
  LoraConfig c;
  c.r = 2;
  c.target_modules = {"lin0"};
  inject_adapter_in_model(c, *model, "a");
  Tensor x = zeros({1, 32});
  CHECK_THROWS_WITH_AS(forward_mixed_batch(*model, {"a"}, [&] {
                         delete_adapter(*model, "a");
                         return x;
                       }),
                       doctest::Contains("while this thread runs a forward_mixed_batch"), Error);
  // the lock was released: writers and nested readers work again
  {
    ModelReadGuard outer(*model);
    ModelReadGuard nested(*model);
  }
  delete_adapter(*model, "a");
  CHECK(peft_state(*model)->adapter_names().empty());
}
