// `peft bench <name>`: benchmarks. Each is one row in kBenchmarks below (name,
// summary, function); add new ones there.
//   gemm        runtime `linear` (float32) vs calling oneDNN's sgemm directly
//   ops         the hot paths of a LoRA layer: linear forward/backward, add, ...
//   lora-layer, train-step (tools/bench_lora.cpp), inject, load
//   (tools/bench_inject.cpp): ours against the same workload in PyTorch + PEFT
//   (tools/bench/*.py), interleaved; `all` runs those four and prints one table.
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
#include "tools/bench_common.h"
#include "tools/cli.h"

namespace peft::cli {
namespace bench {
int bench_finetune_decoder(const std::vector<std::string>& args, Report& rep);  // tools/bench_finetune_decoder.cpp
int bench_transformer(const std::vector<std::string>& args, Report& rep);       // tools/bench_transformer.cpp
int bench_serve(const std::vector<std::string>& args, Report& rep);             // tools/bench_serve.cpp
}
namespace {

using namespace bench;

const char* kTimingHelp =
    "  --reps N      timed repetitions, the median is reported (default 10)\n"
    "  --warmup N    untimed calls first (default 3)\n"
    "  --threads N   CPU threads (default: all cores, or PEFT_NUM_THREADS)\n";

// Median seconds of `reps` calls of f after `warmup` untimed calls.
double time_median(const Options& t, const std::function<void()>& f) {
  for (int i = 0; i < t.warmup; ++i) f();
  std::vector<double> s;
  for (int i = 0; i < t.reps; ++i) {
    double t0 = now_s();
    f();
    s.push_back(now_s() - t0);
  }
  return median(s);
}

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

int bench_gemm(const std::vector<std::string>& args, Report&) {
  Options t;
  t.reps = 10;
  std::vector<GemmSize> sizes{{512, 1024, 1024}, {512, 4096, 4096}};
  std::vector<std::string> rest = parse_common(args, t);
  bool help = t.help;
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
        kTimingHelp);
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

int bench_ops(const std::vector<std::string>& args, Report&) {
  Options t;
  t.reps = 10;
  int64_t M = 2048, K = 1024, N = 1024, r = 16;
  std::vector<std::string> rest = parse_common(args, t);
  bool help = t.help;
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
        kTimingHelp);
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

int bench_all(const std::vector<std::string>& args, Report& rep);

struct Benchmark {
  const char* name;
  const char* summary;
  BenchFn run;
};

const Benchmark kBenchmarks[] = {
    {"gemm", "float32 linear vs direct oneDNN sgemm (GFLOP/s, ratio)", bench_gemm},
    {"ops", "LoRA hot paths: linear fwd/bwd, add, scalar mul, bias-grad sum", bench_ops},
    {"lora-layer", "one lora.Linear: base / LoRA fwd / fwd+bwd / merged, vs PyTorch+PEFT", bench_lora_layer},
    {"train-step", "one AdamW step of the fine-tuning demo (CharLM + LoRA), vs PyTorch+PEFT", bench_train_step},
    {"inject", "LoRA into a Llama-7B tree on meta, adapter load, peak RSS, vs PyTorch+PEFT", bench_inject},
    {"load", "open 1, 10, 100 adapter folders, vs PyTorch+PEFT", bench_load},
    {"tokenizer", "encode 2 MB of Debian text with three tokenizer.json files, vs the tokenizers library", bench_tokenizer},
    {"decode", "a GGUF decoder's prompt and generation tokens/s, vs llama.cpp (llama-bench) and transformers", bench_decode},
    {"finetune-decoder", "one LoRA SFT step of SmolLM2-135M (q4_1, f32, checkpointed), vs transformers + PEFT",
     bench_finetune_decoder},
    {"transformer", "the real all-MiniLM-L6-v2: forward, embed, LoRA train step, load, throughput, vs PyTorch, ONNX Runtime",
     bench_transformer},
    {"serve", "peft serve on the real MiniLM: req/s and latency with 1, 10, 100 adapters; one mixed batch vs 8", bench_serve},
    {"all", "lora-layer, train-step, inject and load; one table (--markdown)", bench_all},
};

// The four comparisons, options passed through, then one table naming the machine.
int bench_all(const std::vector<std::string>& args, Report& rep) {
  for (const std::string& a : args)
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: peft bench all [options]\n"
          "  Runs lora-layer, train-step, inject and load with their defaults and prints one\n"
          "  table: peft.cpp, PyTorch + PEFT, ratio (ours / PyTorch; below 1 = ours faster).\n"
          "  Options (passed to each):\n%s",
          kCommonHelp);
      return 0;
    }
  // --reps / --rounds / --warmup keep each benchmark's defaults unless given
  const double t0 = now_s();
  for (BenchFn f : {bench_lora_layer, bench_train_step, bench_inject, bench_load}) {
    int rc = f(args, rep);
    if (rc != 0) return rc;
    std::printf("\n");
  }
  bool markdown = false;
  for (const std::string& a : args) markdown |= a == "--markdown";
  std::printf("## peft bench all\n\n");
  std::printf("Machine: %s. PyTorch + PEFT: %s. Ratio = peft.cpp / PyTorch + PEFT (below 1: peft.cpp faster).\n"
              "Medians; rounds alternate peft.cpp / PyTorch. Total %.0f s.\n\n",
              machine_description().c_str(),
              rep.torch_versions.empty() ? ("not measured: " + rep.no_python_why).c_str() : rep.torch_versions.c_str(),
              now_s() - t0);
  print_rows(rep.rows, markdown);
  return 0;
}

void print_bench_usage(FILE* f) {
  std::fprintf(f, "usage: peft bench <name> [options]\n\nbenchmarks:\n");
  for (const Benchmark& b : kBenchmarks) std::fprintf(f, "  %-11s %s\n", b.name, b.summary);
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
  Report rep;
  for (const Benchmark& b : kBenchmarks)
    if (args[0] == b.name) return b.run(std::vector<std::string>(args.begin() + 1, args.end()), rep);
  throw UsageError{"unknown benchmark '" + args[0] + "'"};
}

Registrar reg({"bench", "benchmarks: runtime micro-benchmarks and comparisons with PyTorch + PEFT", run_bench});

}  // namespace
}  // namespace peft::cli
