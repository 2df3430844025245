// `peft bench decode`: a GGUF decoder's prompt processing and generation speed, ours against
// llama.cpp's llama-bench on the same file and thread count and against transformers on the
// dequantized weights, in one run (rounds alternate the three), with each side's peak RSS.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <malloc.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "io/gguf.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/pretrained.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/bench_common.h"
#include "tools/cli.h"

namespace peft::cli::bench {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kTokens = 128;
// About 130 tokens of text for the memory run (`peft generate` in a fresh process).
const char* kRssPrompt =
    "The history of the city begins with a small settlement of farmers and fishermen on the banks of a "
    "wide river. Over the centuries it grew into a market town, then a busy port, and finally the capital "
    "of a province. Its old quarter still keeps the narrow streets, the stone bridges and the cathedral "
    "that travellers described in their letters, while the new districts spread along the railway and the "
    "highway. Today the city is known for its university, its museums, its food and its festivals, and "
    "every summer thousands of visitors walk along the river to watch the boats and the evening lights.";

// A child process's stdout and peak resident memory (wait4's ru_maxrss).
struct ChildResult {
  std::string out;
  int status = -1;
  int64_t peak_rss = -1;
};

ChildResult run_child(const std::vector<std::string>& argv) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) fail("bench decode: pipe: ", std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) fail("bench decode: fork: ", std::strerror(errno));
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    const int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) ::dup2(devnull, 2);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(pipefd[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) r.out.append(buf, size_t(n));
  ::close(pipefd[0]);
  struct rusage ru {};
  if (::wait4(pid, &r.status, 0, &ru) == pid) r.peak_rss = int64_t(ru.ru_maxrss) * 1024;
  return r;
}

struct LlamaBench {
  std::string bench, quantize;  // programs; empty when not found
  std::string why;              // why llama.cpp is not measured
};

LlamaBench find_llama(const std::string& given) {
  LlamaBench l;
  std::string b = given;
  if (b.empty())
    if (const char* e = std::getenv("PEFT_LLAMA_BENCH"); e && *e) b = e;
  if (b.empty()) {
    const char* h = std::getenv("HOME");
    const std::string cache = std::getenv("PEFT_CACHE") ? std::getenv("PEFT_CACHE") : h ? std::string(h) + "/.cache/peft" : "";
    b = cache + "/llama.cpp/build/bin/llama-bench";
  }
  if (::access(b.c_str(), X_OK) != 0) {
    l.why = b + " not found (scripts/build_llama_cpp.sh builds it; --llama-bench PATH)";
    return l;
  }
  l.bench = b;
  const std::string q = (fs::path(b).parent_path() / "llama-quantize").string();
  if (::access(q.c_str(), X_OK) == 0) l.quantize = q;
  return l;
}

// llama-bench's pp and tg tokens/s (-o json: avg_ts of each test) and its peak RSS.
struct LlamaResult {
  double pp = 0, tg = 0;
  int64_t peak_rss = -1;
};

LlamaResult run_llama_bench(const LlamaBench& l, const std::string& file, int threads, int reps) {
  ChildResult c = run_child({l.bench, "-m", file, "-t", std::to_string(threads), "-p", std::to_string(kTokens), "-n",
                             std::to_string(kTokens), "-r", std::to_string(reps), "--repack", "0", "-o", "json"});
  if (!WIFEXITED(c.status) || WEXITSTATUS(c.status) != 0)
    fail("bench decode: ", l.bench, " failed on ", file, " (exit status ", c.status, ")");
  LlamaResult r;
  r.peak_rss = c.peak_rss;
  const auto j = nlohmann::json::parse(c.out);
  for (const auto& t : j) {
    if (t.value("n_prompt", 0) == kTokens && t.value("n_gen", 0) == 0) r.pp = t.value("avg_ts", 0.0);
    if (t.value("n_gen", 0) == kTokens && t.value("n_prompt", 0) == 0) r.tg = t.value("avg_ts", 0.0);
  }
  if (r.pp <= 0 || r.tg <= 0) fail("bench decode: no pp/tg results in llama-bench's output");
  return r;
}

struct DecodeRow {
  std::string name;
  std::vector<double> ours, llama, torch;  // tokens per second, one per sample
  int64_t rss_ours = -1, rss_llama = -1, rss_torch = -1;
};

std::string rss_text(int64_t b) {
  if (b < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f", double(b) / (1 << 20));
  return buf;
}

}  // namespace

int bench_decode(const std::vector<std::string>& args, Report& rep) {
  Options o;
  o.reps = 3;
  o.rounds = 3;
  o.warmup = 1;
  std::vector<int> thread_counts;
  std::string model, llama_bench;
  bool threads_given = false;
  for (const auto& a : args) threads_given |= a == "--threads" || a.rfind("--threads=", 0) == 0;
  std::vector<std::string> rest = parse_common(args, o);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--model" && i + 1 < rest.size()) model = rest[++i];
    else if (rest[i] == "--llama-bench" && i + 1 < rest.size()) llama_bench = rest[++i];
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (o.help) {
    std::printf(
        "usage: peft bench decode --model FILE.gguf [--llama-bench PATH] [--python PATH] [--threads N]\n"
        "                         [--markdown] [--rounds N] [--reps N]\n"
        "  A GGUF decoder's speed, in tokens/s: prompt processing (%lld-token prompt, fresh cache, logits of\n"
        "  the last position) and generation (%lld tokens from one, with the KV cache), of the file as it is\n"
        "  (its quantized weights, e.g. q4_1) and of the same weights as F32 (llama-quantize\n"
        "  --allow-requantize FILE F32, in a scratch folder), at 1 and 2 threads (--threads N: N only).\n"
        "  In the same run: llama.cpp's llama-bench on the same file and threads (--repack 0; default\n"
        "  ~/.cache/peft/llama.cpp/build/bin/llama-bench, scripts/build_llama_cpp.sh; PEFT_LLAMA_BENCH) and\n"
        "  transformers on the dequantized weights (from_pretrained(gguf_file=...), float32; the same for\n"
        "  both rows of a thread count). Rounds alternate the three sides; medians. Peak RSS (MiB), each\n"
        "  side a whole run of the file: ours `peft generate` in a fresh process (load, a ~130-token\n"
        "  prompt, 128 tokens), llama.cpp llama-bench's run (pp128 + tg128), transformers its worker\n"
        "  process (it holds the dequantized float32 model).\n%s",
        (long long)kTokens, (long long)kTokens, kCommonHelp);
    return 0;
  }
  if (model.empty()) throw UsageError{"--model FILE.gguf is required"};
  if (!io::is_gguf_file(model)) fail("bench decode: ", model, " is not a GGUF file");
  if (threads_given) thread_counts = {get_num_threads()};
  else thread_counts = {1, 2};
  const LlamaBench llama = find_llama(llama_bench);
  if (!llama.why.empty()) std::fprintf(stderr, "bench decode: llama.cpp not measured: %s\n", llama.why.c_str());
  auto py = start_worker("decode", o, rep);

  ScratchDir scratch;
  const std::string self_exe = fs::read_symlink("/proc/self/exe").string();
  std::string f32_file;
  std::string qname = "q";
  {
    // the row label: llama.cpp's file type (general.file_type: q4_1, q4_k_m, ...), else the GGML
    // type holding the most bytes
    static const std::map<int64_t, std::string> ftypes = {
        {0, "f32"},     {1, "f16"},     {2, "q4_0"},    {3, "q4_1"},    {7, "q8_0"},    {8, "q5_0"},
        {9, "q5_1"},    {10, "q2_k"},   {11, "q3_k_s"}, {12, "q3_k_m"}, {13, "q3_k_l"}, {14, "q4_k_s"},
        {15, "q4_k_m"}, {16, "q5_k_s"}, {17, "q5_k_m"}, {18, "q6_k"},   {32, "bf16"}};
    auto f = io::GGUFFile::open(model);
    std::map<std::string, uint64_t> bytes;
    for (const auto& t : f->tensors()) bytes[io::ggml_type_info(t.ggml_type)->name] += t.nbytes;
    uint64_t best = 0;
    for (const auto& [k, v] : bytes)
      if (v > best) best = v, qname = k;
    for (char& c : qname) c = char(std::tolower(c));
    if (auto it = ftypes.find(f->get_int("general.file_type", -1)); it != ftypes.end()) qname = it->second;
  }
  if (!llama.quantize.empty()) {
    f32_file = (scratch.path / "f32.gguf").string();
    ChildResult c = run_child({llama.quantize, "--allow-requantize", model, f32_file, "F32"});
    if (!WIFEXITED(c.status) || WEXITSTATUS(c.status) != 0) fail("bench decode: llama-quantize failed on ", model);
  }
  const double t0 = now_s();
  std::vector<std::pair<int, std::vector<DecodeRow>>> tables;
  for (int threads : thread_counts) {
    set_num_threads(threads);
    std::vector<DecodeRow> rows;
    const std::vector<std::pair<std::string, std::string>> variants = {{qname, model}, {"f32", f32_file}};
    for (const auto& [kind, file] : variants) {
      DecodeRow pp{kind + " prompt " + std::to_string(kTokens)}, tg{kind + " generation " + std::to_string(kTokens)};
      // ours: the F32 file when llama-quantize made one, else the same weights dequantized on load
      nn::PretrainedOptions popts;
      if (file.empty()) popts.dtype = DType::float32;
      const std::string our_file = file.empty() ? model : file;
      auto m = nn::load_pretrained(our_file, popts);
      m->eval();
      // fixed pseudo-random prompt ids (the speed does not depend on them)
      const int64_t vocab = m->config()["vocab_size"].get<int64_t>();
      std::vector<int64_t> ids(static_cast<size_t>(kTokens));
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = 100 + int64_t((i * 7919 + 13) % uint64_t(std::max<int64_t>(1, vocab - 100)));
      Case prompt;
      prompt.batch = false;
      prompt.run = [&] {
        NoGradGuard ng;
        nn::ModelInputs in;
        in.input_ids = from_vector(ids, {1, kTokens});
        in.logits_to_keep = 1;
        (void)m->forward(in);
      };
      Case generation;
      generation.batch = false;
      generation.run = [&] {
        nn::GenerateOptions g;
        g.max_new_tokens = kTokens;  // no end-of-generation token: always kTokens steps
        (void)nn::generate(*m, from_vector(std::vector<int64_t>{ids[0]}, {1, 1}), Tensor(), g);
      };
      Sampler sp(prompt, o), sg(generation, o);
      const nlohmann::json preq = {{"case", "prompt"}, {"file", fs::absolute(our_file).string()}, {"tokens", kTokens}};
      const nlohmann::json greq = {{"case", "generation"}, {"file", fs::absolute(our_file).string()}, {"tokens", kTokens}};
      for (int r = 0; r < o.rounds; ++r) {
        std::fprintf(stderr, "\rbench decode: threads %d, %s, round %d/%d\033[K", threads, kind.c_str(), r + 1, o.rounds);
        std::vector<double> s;
        sp.round(s);
        for (double v : s) pp.ours.push_back(double(kTokens) / v);
        s.clear();
        sg.round(s);
        for (double v : s) tg.ours.push_back(double(kTokens) / v);
        if (llama.why.empty() && !file.empty()) {
          LlamaResult l = run_llama_bench(llama, file, threads, o.reps);
          pp.llama.push_back(l.pp);
          tg.llama.push_back(l.tg);
          pp.rss_llama = tg.rss_llama = std::max(pp.rss_llama, l.peak_rss);
        }
        if (py) {
          // transformers runs on the dequantized weights: the same for both rows
          std::vector<double> t;
          py->round(preq, o, r == 0, t);
          for (double v : t) pp.torch.push_back(double(kTokens) / v);
          pp.rss_torch = std::max(pp.rss_torch, py->last_peak_rss());
          t.clear();
          py->round(greq, o, r == 0, t);
          for (double v : t) tg.torch.push_back(double(kTokens) / v);
          tg.rss_torch = std::max(tg.rss_torch, py->last_peak_rss());
        }
      }
      std::fprintf(stderr, "\n");
      rows.push_back(pp);
      rows.push_back(tg);
      m.reset();
      ::malloc_trim(0);
      // our peak RSS as llama-bench's is measured: a fresh process that loads the file, reads a
      // prompt and generates kTokens tokens (`peft generate`, tokenizer included)
      {
        std::vector<std::string> cmd = {self_exe, "generate", "--model", our_file, "--prompt", kRssPrompt,
                                        "--max-new-tokens", std::to_string(kTokens), "--threads",
                                        std::to_string(threads), "--ids"};
        if (file.empty()) cmd.insert(cmd.end(), {"--dtype", "f32"});
        ChildResult c = run_child(cmd);
        if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0) rows[rows.size() - 1].rss_ours = rows[rows.size() - 2].rss_ours = c.peak_rss;
      }
    }
    tables.emplace_back(threads, rows);
  }
  // the table: case, ours tok/s, llama.cpp tok/s, transformers tok/s, ours / llama.cpp, peak RSS
  auto med = [](const std::vector<double>& v) { return v.empty() ? 0.0 : median(v); };
  auto num = [](double v) {
    if (v <= 0) return std::string("-");
    char b[32];
    std::snprintf(b, sizeof b, "%.1f", v);
    return std::string(b);
  };
  const std::string file_bytes = rss_text(int64_t(fs::file_size(model)));
  std::printf("## peft bench decode\n\n");
  std::printf("Model: %s (%s MiB). Machine: %s. llama.cpp: %s. transformers: %s. Total %.0f s.\n",
              fs::path(model).filename().string().c_str(), file_bytes.c_str(), machine_description().c_str(),
              llama.why.empty() ? "llama-bench from llama-cpp-python==0.3.36 (--repack 0)" : ("not measured: " + llama.why).c_str(),
              rep.torch_versions.empty() ? ("not measured: " + rep.no_python_why).c_str() : rep.torch_versions.c_str(),
              now_s() - t0);
  std::printf("Tokens/s, medians of %d rounds x %d samples (llama-bench: its average of %d repetitions per round); "
              "ratio = ours / llama.cpp (above 1: ours faster). Peak RSS in MiB of a whole run: ours / llama.cpp / "
              "transformers.\n",
              o.rounds, o.reps, o.reps);
  for (const auto& [threads, rows] : tables) {
    std::printf("\n%sthreads %d\n\n", o.markdown ? "### " : "", threads);
    if (o.markdown) {
      std::printf("| case | ours tok/s | llama.cpp tok/s | transformers tok/s | ours / llama.cpp | peak RSS |\n");
      std::printf("|---|---:|---:|---:|---:|---|\n");
    } else {
      std::printf("%-22s %12s %16s %19s %17s  %s\n", "case", "ours tok/s", "llama.cpp tok/s", "transformers tok/s",
                  "ours / llama.cpp", "peak RSS");
    }
    for (const DecodeRow& r : rows) {
      const double a = med(r.ours), b = med(r.llama), c = med(r.torch);
      char ratio[32] = "-";
      if (b > 0) std::snprintf(ratio, sizeof ratio, "%.2f", a / b);
      const std::string rss = rss_text(r.rss_ours) + " / " + rss_text(r.rss_llama) + " / " + rss_text(r.rss_torch);
      if (o.markdown)
        std::printf("| %s | %s | %s | %s | %s | %s |\n", r.name.c_str(), num(a).c_str(), num(b).c_str(), num(c).c_str(),
                    ratio, rss.c_str());
      else
        std::printf("%-22s %12s %16s %19s %17s  %s\n", r.name.c_str(), num(a).c_str(), num(b).c_str(), num(c).c_str(),
                    ratio, rss.c_str());
      Row row("decode", r.name + " (threads " + std::to_string(threads) + ")", a > 0 ? double(kTokens) / a : 0,
              c > 0 ? std::optional<double>(double(kTokens) / c) : std::nullopt, std::string("llama.cpp ") + num(b) + " tok/s");
      row.peak_rss = r.rss_ours;
      rep.rows.push_back(row);
    }
  }
  return 0;
}

}  // namespace peft::cli::bench
