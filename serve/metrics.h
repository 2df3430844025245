// The server's counters and histograms, rendered as Prometheus' text format (GET /metrics).
// Thread-safe.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace peft::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // "name_bucket{le=...} n" lines (cumulative), name_sum, name_count.
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void request(const std::string& endpoint, int status, double seconds);
  void embedded(int64_t inputs, int64_t tokens);
  void batch(int64_t inputs, int64_t adapters, double seconds);
  // Rendered with the adapter registry's counters, which it does not own.
  std::string render(int64_t adapter_loads, int64_t adapter_evictions, size_t adapters_loaded);

 private:
  std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t inputs_ = 0, tokens_ = 0, batches_ = 0;
  Histogram latency_, batch_inputs_, batch_adapters_, batch_seconds_;
};

}  // namespace peft::serve
