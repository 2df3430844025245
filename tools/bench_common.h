// Shared pieces of `peft bench`: timing (median of samples, auto-batched short
// calls), the Python + PyTorch + PEFT worker that runs the same workload
// interleaved with ours, resident-memory probes and the result table.
#pragma once
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace peft::cli::bench {

double now_s();
double median(std::vector<double> v);
int parse_int(const std::string& opt, const std::string& v, int lo);

// Options every benchmark shares.
struct Options {
  int warmup = 3;            // untimed calls before the first round
  int reps = 3;              // timed samples per round and side
  int rounds = 6;            // ours / theirs alternations (many short rounds: a shared VM drifts)
  double min_sample_s = 2e-3;  // short calls are repeated until a sample lasts this long
  std::string python;        // --python, PEFT_BENCH_PYTHON, else python3
  bool no_python = false;
  bool markdown = false;
  bool help = false;
};
// Parses the shared options (and applies --threads); returns the ones it does not know.
std::vector<std::string> parse_common(const std::vector<std::string>& args, Options& o);
extern const char* kCommonHelp;

// One timed workload. `prepare` runs untimed before every sample (fresh model for the
// injection benchmarks); `batch` = several calls may share one sample (short calls).
struct Case {
  std::function<void()> run;
  std::function<void()> prepare;
  std::function<void()> after;  // untimed, after every sample (memory probes)
  bool batch = true;
};

// Samples of one case, measured in rounds: warm-up and calibration happen on the first.
class Sampler {
 public:
  Sampler(Case c, const Options& o) : c_(std::move(c)), o_(o) {}
  // Appends `o.reps` samples (seconds per call) to `out`.
  void round(std::vector<double>& out);

 private:
  Case c_;
  const Options& o_;
  int inner_ = 0;  // calls per sample, 0 until calibrated
};

// The Python counterpart: `python tools/bench/worker.py BENCH --threads N` speaking
// one JSON object per line. Absent (with the reason) when the interpreter cannot
// import torch and peft.
class PyWorker {
 public:
  static std::unique_ptr<PyWorker> start(const std::string& bench, const Options& o, std::string& why);
  ~PyWorker();
  // Sends a request; returns the reply (throws peft::Error on a worker error).
  nlohmann::json call(const nlohmann::json& request);
  // Appends `o.reps` samples of the case named by `request` (which carries its params).
  void round(const nlohmann::json& request, const Options& o, bool first, std::vector<double>& out);
  const nlohmann::json& hello() const { return hello_; }
  // The "notes" of the latest reply (e.g. the worker's peak memory growth).
  const nlohmann::json& last_notes() const { return notes_; }
  // The worker's peak resident memory (bytes) while it sampled the latest request; -1 unknown.
  int64_t last_peak_rss() const { return peak_rss_; }

 private:
  PyWorker() = default;
  int pid_ = -1, to_ = -1;
  FILE* from_ = nullptr;
  nlohmann::json hello_, notes_;
  int64_t peak_rss_ = -1;
};

// Resident memory of this process (bytes) and its peak since the last reset_peak_rss().
int64_t current_rss();
int64_t peak_rss();
void reset_peak_rss();  // /proc/self/clear_refs "5"; peak_rss() = current_rss() after it

// Result rows, printed by each benchmark and collected by `peft bench all`.
struct Row {
  Row() = default;
  Row(std::string b, std::string w, double o, std::optional<double> t, std::string n)
      : bench(std::move(b)), what(std::move(w)), ours(o), theirs(t), note(std::move(n)) {}
  std::string bench, what;
  double ours = 0;                    // seconds (median)
  std::optional<double> theirs;       // PyTorch + PEFT, seconds (median)
  std::string note;                   // e.g. memory
  int64_t peak_rss = -1;              // bytes, this process while the row ran; -1: not measured
  std::optional<int64_t> peak_rss_theirs;  // the PyTorch worker's, likewise
};
struct Report {
  std::vector<Row> rows;
  std::string torch_versions;  // "torch 2.11.0, peft 0.21.0" when measured
  std::string no_python_why;   // why PyTorch was not measured
  int threads = 0;
};
std::string fmt_time(double s);
void print_rows(const std::vector<Row>& rows, bool markdown, FILE* f = stdout);
// CPU model and core count, for the table header.
std::string machine_description();

// Runs `ours` and (when the worker is there) `theirs` interleaved for `o.rounds`
// rounds and returns {ours median, theirs median}. With `row`, also records each process's
// peak resident memory while it sampled into row->peak_rss / peak_rss_theirs (the two
// sides are separate processes, so each high-water mark is its own).
std::pair<double, std::optional<double>> interleave(Case ours, PyWorker* py, const nlohmann::json& request,
                                                    const Options& o, Row* row = nullptr);

// The benchmarks (tools/bench_*.cpp); each prints its rows and appends them to `rep`.
using BenchFn = int (*)(const std::vector<std::string>& args, Report& rep);
int bench_lora_layer(const std::vector<std::string>& args, Report& rep);
int bench_train_step(const std::vector<std::string>& args, Report& rep);
int bench_inject(const std::vector<std::string>& args, Report& rep);
int bench_load(const std::vector<std::string>& args, Report& rep);
int bench_tokenizer(const std::vector<std::string>& args, Report& rep);
int bench_decode(const std::vector<std::string>& args, Report& rep);

// Starts the worker for `bench` and notes the versions (or why not) in `rep`.
std::unique_ptr<PyWorker> start_worker(const std::string& bench, const Options& o, Report& rep);

// Where tools/bench/*.py live (the source tree the program was built from).
std::string bench_script_dir();

// A scratch folder removed when the benchmark ends.
struct ScratchDir {
  std::filesystem::path path;
  ScratchDir() {
    path = std::filesystem::temp_directory_path() / ("peft-bench-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

}  // namespace peft::cli::bench
