// `peft bench <name>`: micro-benchmarks of the runtime. Each benchmark is one
// row in kBenchmarks below (name, summary, function); add new ones there.
//   gemm  runtime `linear` (float32) vs calling oneDNN's sgemm directly
//   ops   the hot paths of a LoRA layer: linear forward/backward, add, scalar mul,
//         bias-gradient sum over dim 0, a whole LoRA forward+backward
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/cli.h"

namespace peft::cli {
namespace {

// ---------------------------------------------------------------------------
// shared helpers

struct Timing {
  int warmup = 3;
  int reps = 10;
};

double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median seconds of `reps` calls of f after `warmup` untimed calls.
double time_median(const Timing& t, const std::function<void()>& f) {
  for (int i = 0; i < t.warmup; ++i) f();
  std::vector<double> s;
  for (int i = 0; i < t.reps; ++i) {
    double t0 = now_s();
    f();
    s.push_back(now_s() - t0);
  }
  return median(s);
}

int parse_int(const std::string& opt, const std::string& v, int lo) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end || x < lo) throw UsageError{opt + " expects an integer >= " + std::to_string(lo) + ", got '" + v + "'"};
  return int(x);
}

// Parses the options every benchmark shares; returns the ones it does not know.
std::vector<std::string> parse_common(const std::vector<std::string>& args, Timing& t, bool& help) {
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw UsageError{a + " needs a value"};
      return args[++i];
    };
    if (a == "--help" || a == "-h") help = true;
    else if (a == "--reps") t.reps = parse_int(a, value(), 1);
    else if (a == "--warmup") t.warmup = parse_int(a, value(), 0);
    else if (a == "--threads") set_num_threads(parse_int(a, value(), 1));
    else rest.push_back(a);
  }
  return rest;
}

const char* kCommonHelp =
    "  --reps N      timed repetitions, the median is reported (default 10)\n"
    "  --warmup N    untimed calls first (default 3)\n"
    "  --threads N   CPU threads (default: all cores, or PEFT_NUM_THREADS)\n";

// ---------------------------------------------------------------------------
// gemm

struct GemmSize {
  int64_t M, K, N;
};

std::vector<GemmSize> parse_sizes(const std::string& s) {
  std::vector<GemmSize> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    long m = 0, k = 0, n = 0;
    char tail = 0;
    if (std::sscanf(item.c_str(), "%ldx%ldx%ld%c", &m, &k, &n, &tail) != 3 || m <= 0 || k <= 0 || n <= 0)
      throw UsageError{"--sizes expects MxKxN[,MxKxN...], got '" + item + "'"};
    out.push_back({m, k, n});
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

int bench_gemm(const std::vector<std::string>& args) {
  Timing t;
  bool help = false;
  std::vector<GemmSize> sizes{{512, 1024, 1024}, {512, 4096, 4096}};
  std::vector<std::string> rest = parse_common(args, t, help);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--sizes" && i + 1 < rest.size()) sizes = parse_sizes(rest[++i]);
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (help) {
    std::printf(
        "usage: peft bench gemm [--sizes MxKxN,...] [--reps N] [--warmup N] [--threads N]\n"
        "  Times the runtime's linear(x, W) in float32 (x [M,K], W [N,K]) and a direct\n"
        "  dnnl_sgemm call on the same buffers in the same run; prints GFLOP/s of both and\n"
        "  the ratio runtime/direct (time). Default sizes 512x1024x1024,512x4096x4096.\n%s",
        kCommonHelp);
    return 0;
  }
  std::printf("gemm: float32 linear(x[M,K], W[N,K]) vs direct dnnl_sgemm; threads %d, median of %d (warmup %d)\n",
              get_num_threads(), t.reps, t.warmup);
  std::printf("%6s %6s %6s | %12s %10s | %12s %10s | %7s | %s\n", "M", "K", "N", "runtime ms", "GFLOP/s",
              "direct ms", "GFLOP/s", "ratio", "max|diff|");
  NoGradGuard ng;
  Generator g(0);
  for (const GemmSize& s : sizes) {
    Tensor x = randn({s.M, s.K}, g), w = randn({s.N, s.K}, g);
    Tensor y;
    Tensor c = empty({s.M, s.N});
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    float* cp = c.data_ptr<float>();
    auto direct = [&] {
      dnnl_status_t st = dnnl_sgemm('N', 'T', s.M, s.N, s.K, 1.0f, xp, s.K, wp, s.K, 0.0f, cp, s.N);
      if (st != dnnl_success) fail("dnnl_sgemm failed with status ", int(st));
    };
    auto runtime = [&] { y = linear(x, w); };
    // warm both, then alternate so drift (clock, other load) hits both alike
    for (int i = 0; i < t.warmup; ++i) {
      runtime();
      direct();
    }
    std::vector<double> tr, td;
    for (int i = 0; i < t.reps; ++i) {
      double t0 = now_s();
      runtime();
      double t1 = now_s();
      direct();
      double t2 = now_s();
      tr.push_back(t1 - t0);
      td.push_back(t2 - t1);
    }
    double mr = median(tr), md = median(td);
    double flop = 2.0 * double(s.M) * double(s.N) * double(s.K);
    double diff = max(abs(sub(y, c))).item();
    std::printf("%6ld %6ld %6ld | %12.3f %10.1f | %12.3f %10.1f | %6.3fx | %.2g\n", long(s.M), long(s.K),
                long(s.N), mr * 1e3, flop / mr * 1e-9, md * 1e3, flop / md * 1e-9, mr / md, diff);
  }
  return 0;
}

// ---------------------------------------------------------------------------
// ops: a LoRA layer's hot paths

int bench_ops(const std::vector<std::string>& args) {
  Timing t;
  bool help = false;
  int64_t M = 2048, K = 1024, N = 1024, r = 16;
  std::vector<std::string> rest = parse_common(args, t, help);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--tokens" && i + 1 < rest.size()) M = parse_int(rest[i], rest[i + 1], 1), ++i;
    else if (rest[i] == "--hidden" && i + 1 < rest.size()) K = N = parse_int(rest[i], rest[i + 1], 1), ++i;
    else if (rest[i] == "--rank" && i + 1 < rest.size()) r = parse_int(rest[i], rest[i + 1], 1), ++i;
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (help) {
    std::printf(
        "usage: peft bench ops [--tokens M] [--hidden H] [--rank R] [--reps N] [--warmup N] [--threads N]\n"
        "  Times the runtime ops a LoRA layer spends its time in (float32, x [M,H], W [H,H],\n"
        "  LoRA A [R,H], B [H,R]): linear forward and backward, add, scalar mul, sum over\n"
        "  dim 0 (bias gradient), and one whole LoRA forward+backward. Defaults 2048, 1024, 16.\n%s",
        kCommonHelp);
    return 0;
  }
  Generator g(0);
  Tensor x = randn({M, K}, g), w = randn({N, K}, g), bias = randn({N}, g);
  Tensor a = randn({r, K}, g), b = randn({N, r}, g);
  Tensor y = randn({M, N}, g), y2 = randn({M, N}, g);
  const double bytes_mn = double(M * N) * 4;
  std::printf("ops: tokens %ld, hidden %ld, rank %ld, float32; threads %d, median of %d\n", long(M), long(K),
              long(r), get_num_threads(), t.reps);
  std::printf("%-44s %10s %12s\n", "op", "ms", "rate");
  auto row = [](const char* name, double s, double rate, const char* unit) {
    std::printf("%-44s %10.3f %9.1f %s\n", name, s * 1e3, rate, unit);
  };
  const double fl = 2.0 * double(M) * double(N) * double(K);
  {
    NoGradGuard ng;
    double s = time_median(t, [&] { linear(x, w, bias); });
    row("linear forward (with bias)", s, fl / s * 1e-9, "GFLOP/s");
    s = time_median(t, [&] { add(y, y2); });
    row("add [M,N] + [M,N]", s, 3 * bytes_mn / s * 1e-9, "GB/s");
    s = time_median(t, [&] { add(y, bias); });
    row("add [M,N] + [N] (broadcast)", s, 2 * bytes_mn / s * 1e-9, "GB/s");
    s = time_median(t, [&] { mul(y, 0.5); });
    row("mul [M,N] * scalar", s, 2 * bytes_mn / s * 1e-9, "GB/s");
    s = time_median(t, [&] { sum(y, {0}); });
    row("sum [M,N] over dim 0 (bias grad)", s, bytes_mn / s * 1e-9, "GB/s");
    s = time_median(t, [&] { sum(y, {1}); });
    row("sum [M,N] over dim 1", s, bytes_mn / s * 1e-9, "GB/s");
    s = time_median(t, [&] { sum(y); });
    row("sum [M,N] over everything", s, bytes_mn / s * 1e-9, "GB/s");
    s = time_median(t, [&] { y.t().contiguous(); });
    row("transpose + contiguous [M,N]", s, 2 * bytes_mn / s * 1e-9, "GB/s");
  }
  {
    Tensor xg = x.detach().requires_grad_(), wg = w.detach().requires_grad_(), bg = bias.detach().requires_grad_();
    double s = time_median(t, [&] {
      Tensor out = linear(xg, wg, bg);
      out.backward(y);
      xg.zero_grad();
      wg.zero_grad();
      bg.zero_grad();
    });
    row("linear forward+backward (x, W, b grads)", s, 3 * fl / s * 1e-9, "GFLOP/s");
  }
  {
    // LoRA: y = x W^T + b + scale * (x A^T) B^T with W, b frozen
    Tensor xg = x.detach().requires_grad_(), ag = a.detach().requires_grad_(), bg = b.detach().requires_grad_();
    double s = time_median(t, [&] {
      Tensor out = add(linear(xg, w, bias), mul(linear(linear(xg, ag), bg), 2.0));
      out.backward(y);
      xg.zero_grad();
      ag.zero_grad();
      bg.zero_grad();
    });
    // frozen W: forward and the input gradient are the two big products; six rank-r ones
    double lfl = 2 * fl + 6 * 2.0 * double(M) * double(r) * double(K);
    row("LoRA layer forward+backward (frozen W)", s, lfl / s * 1e-9, "GFLOP/s");
  }
  return 0;
}

// ---------------------------------------------------------------------------

struct Benchmark {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

const Benchmark kBenchmarks[] = {
    {"gemm", "float32 linear vs direct oneDNN sgemm (GFLOP/s, ratio)", bench_gemm},
    {"ops", "LoRA hot paths: linear fwd/bwd, add, scalar mul, bias-grad sum", bench_ops},
};

void print_bench_usage(FILE* f) {
  std::fprintf(f, "usage: peft bench <name> [options]\n\nbenchmarks:\n");
  for (const Benchmark& b : kBenchmarks) std::fprintf(f, "  %-8s %s\n", b.name, b.summary);
  std::fprintf(f, "\nRun 'peft bench <name> --help' for a benchmark's options.\n");
}

int run_bench(const std::vector<std::string>& args) {
  if (args.empty()) {
    print_bench_usage(stderr);
    return 2;
  }
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    print_bench_usage(stdout);
    return 0;
  }
  for (const Benchmark& b : kBenchmarks)
    if (args[0] == b.name) return b.run(std::vector<std::string>(args.begin() + 1, args.end()));
  throw UsageError{"unknown benchmark '" + args[0] + "'"};
}

Registrar reg({"bench", "micro-benchmarks of the runtime (gemm, ops)", run_bench});

}  // namespace
}  // namespace peft::cli
