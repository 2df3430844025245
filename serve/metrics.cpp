#include "serve/metrics.h"

#include <cstdio>

namespace peft::serve {

namespace {

std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

}  // namespace

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(count_) + "\n";
  return out;
}

Metrics::Metrics()
    : latency_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}),
      batch_inputs_({1, 2, 4, 8, 16, 32, 64, 128, 256}),
      batch_adapters_({1, 2, 4, 8, 16, 32}),
      batch_seconds_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void Metrics::request(const std::string& endpoint, int status, double seconds) {
  std::lock_guard<std::mutex> l(mu_);
  ++requests_[{endpoint, status}];
  latency_.observe(seconds);
}

void Metrics::embedded(int64_t inputs, int64_t tokens) {
  std::lock_guard<std::mutex> l(mu_);
  inputs_ += uint64_t(inputs);
  tokens_ += uint64_t(tokens);
}

void Metrics::batch(int64_t inputs, int64_t adapters, double seconds) {
  std::lock_guard<std::mutex> l(mu_);
  ++batches_;
  batch_inputs_.observe(double(inputs));
  batch_adapters_.observe(double(adapters));
  batch_seconds_.observe(seconds);
}

std::string Metrics::render(int64_t adapter_loads, int64_t adapter_evictions, size_t adapters_loaded) {
  std::lock_guard<std::mutex> l(mu_);
  std::string out = "# HELP peft_requests_total HTTP requests by endpoint and status.\n# TYPE peft_requests_total counter\n";
  for (const auto& [k, n] : requests_)
    out += "peft_requests_total{endpoint=\"" + k.first + "\",status=\"" + std::to_string(k.second) + "\"} " +
           std::to_string(n) + "\n";
  out += "# HELP peft_embedding_inputs_total Texts embedded.\n# TYPE peft_embedding_inputs_total counter\n";
  out += "peft_embedding_inputs_total " + std::to_string(inputs_) + "\n";
  out += "# HELP peft_tokens_total Tokens run through the model.\n# TYPE peft_tokens_total counter\n";
  out += "peft_tokens_total " + std::to_string(tokens_) + "\n";
  out += "# HELP peft_batches_total Forward batches run.\n# TYPE peft_batches_total counter\n";
  out += "peft_batches_total " + std::to_string(batches_) + "\n";
  out += "# HELP peft_adapter_loads_total Adapters loaded into the model.\n# TYPE peft_adapter_loads_total counter\n";
  out += "peft_adapter_loads_total " + std::to_string(adapter_loads) + "\n";
  out += "# HELP peft_adapter_evictions_total Adapters evicted to make room.\n# TYPE peft_adapter_evictions_total counter\n";
  out += "peft_adapter_evictions_total " + std::to_string(adapter_evictions) + "\n";
  out += "# HELP peft_adapters_loaded Adapters in the model now.\n# TYPE peft_adapters_loaded gauge\n";
  out += "peft_adapters_loaded " + std::to_string(adapters_loaded) + "\n";
  out += latency_.render("peft_request_duration_seconds", "Time from request to response.");
  out += batch_inputs_.render("peft_batch_inputs", "Texts per forward batch.");
  out += batch_adapters_.render("peft_batch_adapters", "Distinct adapters (and the base) per forward batch.");
  out += batch_seconds_.render("peft_batch_duration_seconds", "Time of one forward batch, adapter loads included.");
  return out;
}

}  // namespace peft::serve
