#include "tools/bench_common.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "runtime/tensor.h"
#include "tools/cli.h"

#ifndef PEFT_SOURCE_DIR
#define PEFT_SOURCE_DIR "."
#endif

namespace peft::cli::bench {

double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int parse_int(const std::string& opt, const std::string& v, int lo) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end || x < lo)
    throw UsageError{opt + " expects an integer >= " + std::to_string(lo) + ", got '" + v + "'"};
  return int(x);
}

std::vector<std::string> parse_common(const std::vector<std::string>& args, Options& o) {
  std::vector<std::string> rest;
  if (const char* p = std::getenv("PEFT_BENCH_PYTHON"); p && *p) o.python = p;
  if (o.python.empty()) o.python = "python3";
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw UsageError{a + " needs a value"};
      return args[++i];
    };
    if (a == "--help" || a == "-h") o.help = true;
    else if (a == "--reps") o.reps = parse_int(a, value(), 1);
    else if (a == "--warmup") o.warmup = parse_int(a, value(), 0);
    else if (a == "--rounds") o.rounds = parse_int(a, value(), 1);
    else if (a == "--threads") set_num_threads(parse_int(a, value(), 1));
    else if (a == "--python") o.python = value();
    else if (a == "--no-python") o.no_python = true;
    else if (a == "--markdown") o.markdown = true;
    else rest.push_back(a);
  }
  return rest;
}

const char* kCommonHelp =
    "  --reps N        timed samples per round and side (default 3); medians are reported\n"
    "  --rounds N      alternations ours / PyTorch, so drift hits both (default 6)\n"
    "  --warmup N      untimed calls first (default 3)\n"
    "  --threads N     CPU threads for both sides (default: all cores, or PEFT_NUM_THREADS)\n"
    "  --python PATH   interpreter with torch + peft (default $PEFT_BENCH_PYTHON, else python3)\n"
    "  --no-python     time ours only\n"
    "  --markdown      print the result table as markdown\n"
    "Rows with a 'peak RSS' entry give each process's resident high-water mark while the\n"
    "row was sampled (ours / the PyTorch worker; whole processes, earlier rows included).\n";

constexpr int kSettleMs = 20;

void Sampler::round(std::vector<double>& out) {
  // Let the other side's OpenMP threads finish spin-waiting and sleep: on two cores
  // their spinning took half the machine from the first samples of a round
  // (worker.py pauses the same way).
  std::this_thread::sleep_for(std::chrono::milliseconds(kSettleMs));
  if (inner_ == 0) {
    for (int i = 0; i < o_.warmup; ++i) {
      if (c_.prepare) c_.prepare();
      c_.run();
      if (c_.after) c_.after();
    }
    inner_ = 1;
    if (c_.batch) {
      // calibrate: enough calls per sample that the clock and loop overhead vanish
      double t0 = now_s();
      c_.run();
      double t = std::max(1e-7, now_s() - t0);
      inner_ = int(std::clamp(std::ceil(o_.min_sample_s / t), 1.0, 100000.0));
    }
  } else {
    // the other side just ran: one untimed call brings caches back
    if (c_.prepare) c_.prepare();
    c_.run();
    if (c_.after) c_.after();
  }
  for (int i = 0; i < o_.reps; ++i) {
    if (c_.prepare) c_.prepare();
    double t0 = now_s();
    for (int k = 0; k < inner_; ++k) c_.run();
    out.push_back((now_s() - t0) / inner_);
    if (c_.after) c_.after();
  }
}

// --------------------------------------------------------------- worker --

std::string bench_script_dir() {
  if (const char* d = std::getenv("PEFT_BENCH_SCRIPTS"); d && *d) return d;
  return std::string(PEFT_SOURCE_DIR) + "/tools/bench";
}

std::unique_ptr<PyWorker> PyWorker::start(const std::string& bench, const Options& o, std::string& why) {
  if (o.no_python) {
    why = "--no-python given";
    return nullptr;
  }
  std::string script = bench_script_dir() + "/worker.py";
  if (::access(script.c_str(), R_OK) != 0) {
    why = "cannot read " + script + " (set PEFT_BENCH_SCRIPTS to the tools/bench folder)";
    return nullptr;
  }
  int in[2], out[2];
  if (::pipe(in) != 0 || ::pipe(out) != 0) {
    why = std::string("pipe failed: ") + std::strerror(errno);
    return nullptr;
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    why = std::string("fork failed: ") + std::strerror(errno);
    return nullptr;
  }
  std::string threads = std::to_string(get_num_threads());
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::close(in[0]), ::close(in[1]), ::close(out[0]), ::close(out[1]);
    const char* argv[] = {o.python.c_str(), "-u", script.c_str(), bench.c_str(), "--threads", threads.c_str(), nullptr};
    ::execvp(argv[0], const_cast<char* const*>(argv));
    std::fprintf(stderr, "bench: cannot run %s: %s\n", o.python.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  std::unique_ptr<PyWorker> w(new PyWorker());
  w->pid_ = pid;
  w->to_ = in[1];
  w->from_ = ::fdopen(out[0], "r");
  // The first line says whether torch and peft import.
  std::string line;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, w->from_)) {
    line += buf;
    if (!line.empty() && line.back() == '\n') break;
  }
  if (line.empty()) {
    why = "could not start '" + o.python + "' with " + script;
    return nullptr;
  }
  try {
    w->hello_ = nlohmann::json::parse(line);
  } catch (const std::exception&) {
    why = "unexpected output from " + script + ": " + line;
    return nullptr;
  }
  if (!w->hello_.value("ok", false)) {
    why = "'" + o.python + "' cannot import torch and peft (" + w->hello_.value("why", std::string("?")) + ")";
    return nullptr;
  }
  return w;
}

PyWorker::~PyWorker() {
  if (to_ >= 0) {
    const char quit[] = "{\"quit\": true}\n";
    (void)!::write(to_, quit, sizeof quit - 1);
    ::close(to_);
  }
  if (from_) std::fclose(from_);
  if (pid_ > 0) {
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
}

nlohmann::json PyWorker::call(const nlohmann::json& request) {
  std::string msg = request.dump() + "\n";
  for (size_t off = 0; off < msg.size();) {
    ssize_t n = ::write(to_, msg.data() + off, msg.size() - off);
    if (n <= 0) fail("bench: the Python worker went away (write: ", std::strerror(errno), ")");
    off += size_t(n);
  }
  std::string line;
  char buf[65536];
  while (std::fgets(buf, sizeof buf, from_)) {
    line += buf;
    if (line.back() == '\n') break;
  }
  if (line.empty()) fail("bench: the Python worker exited during ", request.dump());
  nlohmann::json r = nlohmann::json::parse(line);
  if (r.contains("error")) fail("bench: the Python worker failed on ", request.dump(), ": ", r["error"].get<std::string>());
  return r;
}

void PyWorker::round(const nlohmann::json& request, const Options& o, bool first, std::vector<double>& out) {
  nlohmann::json req = request;
  req["reps"] = o.reps;
  req["warmup"] = first ? o.warmup : 1;
  req["min_sample_s"] = o.min_sample_s;
  nlohmann::json r = call(req);
  for (double t : r["times"]) out.push_back(t);
  notes_ = r.value("notes", nlohmann::json::object());
  peak_rss_ = r.value("peak_rss", int64_t(-1));
}

std::pair<double, std::optional<double>> interleave(Case ours, PyWorker* py, const nlohmann::json& request,
                                                    const Options& o, Row* row) {
  Sampler s(std::move(ours), o);
  std::vector<double> a, b;
  if (row) reset_peak_rss();
  for (int r = 0; r < o.rounds; ++r) {
    s.round(a);
    if (py) py->round(request, o, r == 0, b);
    if (row && py && py->last_peak_rss() >= 0)
      row->peak_rss_theirs = std::max(row->peak_rss_theirs.value_or(0), py->last_peak_rss());
  }
  if (row) row->peak_rss = peak_rss();
  std::optional<double> theirs;
  if (py) theirs = median(b);
  return {median(a), theirs};
}

std::unique_ptr<PyWorker> start_worker(const std::string& bench, const Options& o, Report& rep) {
  std::string why;
  auto w = PyWorker::start(bench, o, why);
  rep.threads = get_num_threads();
  if (w) {
    rep.torch_versions = "torch " + w->hello().value("torch", std::string("?")) + ", peft " +
                         w->hello().value("peft", std::string("?"));
  } else {
    rep.no_python_why = why;
    std::fprintf(stderr, "bench: PyTorch + PEFT not measured: %s\n", why.c_str());
  }
  return w;
}

// --------------------------------------------------------------- memory --

static int64_t status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n);
  return -1;
}

int64_t current_rss() { return status_kb("VmRSS:") * 1024; }
int64_t peak_rss() { return status_kb("VmHWM:") * 1024; }
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// ---------------------------------------------------------------- table --

std::string fmt_time(double s) {
  char buf[32];
  if (s < 1e-3) std::snprintf(buf, sizeof buf, "%.1f µs", s * 1e6);
  else if (s < 1) std::snprintf(buf, sizeof buf, "%.2f ms", s * 1e3);
  else std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

void print_rows(const std::vector<Row>& rows, bool markdown, FILE* f) {
  auto ratio = [](const Row& r) -> std::string {
    if (!r.theirs || *r.theirs <= 0) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", r.ours / *r.theirs);
    return buf;
  };
  // "ours / theirs" in MiB, "-" where not measured
  auto rss = [](const Row& r) -> std::string {
    if (r.peak_rss < 0) return "-";
    char buf[64];
    if (r.peak_rss_theirs)
      std::snprintf(buf, sizeof buf, "%.0f / %.0f MiB", double(r.peak_rss) / (1 << 20),
                    double(*r.peak_rss_theirs) / (1 << 20));
    else
      std::snprintf(buf, sizeof buf, "%.0f MiB / -", double(r.peak_rss) / (1 << 20));
    return buf;
  };
  if (markdown) {
    std::fprintf(f, "| benchmark | case | peft.cpp | PyTorch + PEFT | ratio | peak RSS (ours / PyTorch) | notes |\n");
    std::fprintf(f, "|---|---|---:|---:|---:|---:|---|\n");
    for (const Row& r : rows)
      std::fprintf(f, "| %s | %s | %s | %s | %s | %s | %s |\n", r.bench.c_str(), r.what.c_str(),
                   fmt_time(r.ours).c_str(), r.theirs ? fmt_time(*r.theirs).c_str() : "-", ratio(r).c_str(),
                   rss(r).c_str(), r.note.c_str());
    return;
  }
  std::fprintf(f, "%-11s %-34s %12s %15s %7s %18s  %s\n", "benchmark", "case", "peft.cpp", "PyTorch+PEFT", "ratio",
               "peak RSS", "notes");
  for (const Row& r : rows)
    std::fprintf(f, "%-11s %-34s %12s %15s %7s %18s  %s\n", r.bench.c_str(), r.what.c_str(), fmt_time(r.ours).c_str(),
                 r.theirs ? fmt_time(*r.theirs).c_str() : "-", ratio(r).c_str(), rss(r).c_str(), r.note.c_str());
}

std::string machine_description() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
  std::ostringstream s;
  s << model << ", " << cores << " cores online, " << get_num_threads() << " threads used";
  return s.str();
}

}  // namespace peft::cli::bench
