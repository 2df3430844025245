// `peft bench finetune-decoder`: one LoRA SFT optimizer step (forward, causal-LM loss, backward,
// AdamW step) of a GGUF decoder (SmolLM2-135M-Instruct Q4_1), ours in three configurations (the
// base kept quantized, dequantized to float32 on load, quantized + gradient checkpointing)
// against transformers + PEFT on the dequantized float32 weights (with and without gradient
// checkpointing), in one run: rounds alternate the sides, medians, ratios, and each
// configuration's peak RSS, every configuration in its own process.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "adapters/peft.h"
#include "io/gguf.h"
#include "nn/optim.h"
#include "nn/transformers/pretrained.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/bench_common.h"
#include "tools/cli.h"
#include "train/lm_data.h"

namespace peft::cli::bench {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kTargets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// The workload's settings, the same for every configuration and side.
struct Workload {
  std::string model;
  int64_t batch = 8, seq = 256, r = 16;
  double alpha = 32, lr = 2e-4;
};

// Fixed pseudo-random token ids in [100, vocab): the same hash as tools/bench/finetune_decoder.py.
std::vector<int64_t> batch_ids(int64_t batch, int64_t seq, int64_t vocab) {
  std::vector<int64_t> out(size_t(batch * seq));
  for (size_t i = 0; i < out.size(); ++i) {
    uint32_t x = uint32_t(uint64_t(i) * 2654435761ull + 12345ull);
    x ^= x >> 13;
    out[i] = 100 + int64_t(x % uint32_t(vocab - 100));
  }
  return out;
}

void write_line(int fd, const std::string& s) {
  const std::string msg = s + "\n";
  for (size_t off = 0; off < msg.size();) {
    const ssize_t n = ::write(fd, msg.data() + off, msg.size() - off);
    if (n <= 0) fail("bench finetune-decoder: write: ", std::strerror(errno));
    off += size_t(n);
  }
}

// ------------------------------------------------------------------------------ child --
// `peft bench finetune-decoder --child CONFIG ...`: loads the model, injects LoRA, says
// {"ok": true, ...} on stdout, then answers {"reps": R, "warmup": W} lines with
// {"times": [...], "first_loss": x, "peak_rss": bytes} until stdin closes. CONFIG: q (the file's
// weights as stored), f32 (dequantized on load), q-gc (as stored, gradient checkpointing).
int run_child(const std::string& config, const Workload& w) {
  nn::PretrainedOptions po;
  po.kv_cache_dtype = DType::float32;  // as `peft finetune`: attention in float32
  if (config == "f32") po.dtype = DType::float32;
  else if (config != "q" && config != "q-gc") fail("bench finetune-decoder: unknown configuration ", config);
  auto m = nn::load_pretrained(w.model, po);
  manual_seed(0);  // lora_A's init
  LoraConfig cfg;
  cfg.r = w.r;
  cfg.lora_alpha = w.alpha;
  cfg.lora_dropout = 0.0;
  cfg.target_modules = TargetModules::list(kTargets);
  inject_adapter_in_model(cfg, *m);
  m->set_gradient_checkpointing(config == "q-gc");
  m->train();
  nn::NamedTensors trainable;
  int64_t numel = 0;
  for (const auto& [n, p] : m->named_parameters())
    if (p.requires_grad()) trainable.emplace_back(n, p), numel += p.numel();
  nn::AdamWOptions ao;
  ao.lr = w.lr;
  ao.weight_decay = 0.0;
  nn::AdamW opt(trainable, ao);
  // one example per row, labels = ids: the loss over every position (B x (T - 1) targets)
  const int64_t vocab = m->config()["vocab_size"].get<int64_t>();
  const std::vector<int64_t> ids = batch_ids(w.batch, w.seq, vocab);
  train::LMDataset data;
  std::vector<size_t> rows;
  for (int64_t b = 0; b < w.batch; ++b) {
    train::LMExample ex;
    ex.ids.assign(ids.begin() + b * w.seq, ids.begin() + (b + 1) * w.seq);
    ex.labels = ex.ids;
    data.examples.push_back(std::move(ex));
    rows.push_back(size_t(b));
  }
  const train::LMBatch batch = train::collate(data, rows, 0);
  std::string base_dtype = "float32";
  for (const auto& [n, p] : m->named_parameters())
    if (n.find("q_proj.base_layer") != std::string::npos) {
      base_dtype = dtype_name(p.dtype());
      break;
    }
  double first_loss = NAN;
  // a step as train::Trainer takes it (without clipping): forward + loss, backward, AdamW,
  // zero_grad, the loss read back, the allocator's cache trimmed
  auto step = [&] {
    Tensor loss = train::causal_lm_loss(*m, batch);
    loss.backward();
    opt.step();
    opt.zero_grad();
    const double v = loss.item();
    if (std::isnan(first_loss)) first_loss = v;
    trim_cpu_cache();
  };
  write_line(1, nlohmann::json({{"ok", true}, {"trainable", numel}, {"base_dtype", base_dtype},
                                {"load_peak_rss", peak_rss()}})
                    .dump());
  for (std::string line; std::getline(std::cin, line);) {
    if (line.empty()) continue;
    const auto req = nlohmann::json::parse(line);
    if (req.value("quit", false)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the other side's threads settle
    for (int i = 0; i < req.value("warmup", 0); ++i) step();
    std::vector<double> times;
    for (int i = 0; i < req.value("reps", 1); ++i) {
      const double t0 = now_s();
      step();
      times.push_back(now_s() - t0);
    }
    write_line(1, nlohmann::json({{"times", times}, {"first_loss", first_loss}, {"peak_rss", peak_rss()}}).dump());
  }
  return 0;
}

// ----------------------------------------------------------------------------- parent --

// One of our configurations in a child process of its own (this program, --child).
class OurProcess {
 public:
  OurProcess(const std::vector<std::string>& argv) {
    // close-on-exec: the processes started after this one must not hold its pipes (it would
    // never see the end of its input)
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)
      fail("bench finetune-decoder: pipe: ", std::strerror(errno));
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) fail("bench finetune-decoder: fork: ", std::strerror(errno));
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::close(in[0]), ::close(in[1]), ::close(out[0]), ::close(out[1]);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = ::fdopen(out[0], "r");
  }
  ~OurProcess() { finish(); }

  nlohmann::json read_reply(const std::string& what) {
    std::string line;
    char buf[65536];
    while (std::fgets(buf, sizeof buf, from_)) {
      line += buf;
      if (line.back() == '\n') break;
    }
    if (line.empty()) fail("bench finetune-decoder: our ", what, " process exited (see its messages above)");
    return nlohmann::json::parse(line);
  }
  nlohmann::json call(const nlohmann::json& req, const std::string& what) {
    write_line(to_, req.dump());
    return read_reply(what);
  }
  // Closes its input (it exits) and waits for it.
  void finish() {
    if (pid_ <= 0) return;
    ::close(to_);
    std::fclose(from_);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1;
  FILE* from_ = nullptr;
};

struct Side {
  std::vector<double> times;
  double first_loss = NAN;
  int64_t peak_rss = -1;
};

struct Config {
  std::string key, label, torch_key;  // torch_key: the PyTorch configuration compared with
  Side ours;
};

std::string mib(int64_t b) {
  if (b < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f", double(b) / (1 << 20));
  return buf;
}

std::string secs(const std::vector<double>& v) {
  if (v.empty()) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", median(v));
  return buf;
}

std::string loss_text(double v) {
  if (std::isnan(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.5f", v);
  return buf;
}

std::string default_model() {
  const char* c = std::getenv("PEFT_CACHE");
  const char* h = std::getenv("HOME");
  const std::string cache = c && *c ? c : h ? std::string(h) + "/.cache/peft" : ".cache/peft";
  return cache + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace

int bench_finetune_decoder(const std::vector<std::string>& args, Report& rep) {
  Options o;
  o.warmup = 1;
  o.reps = 1;
  o.rounds = 3;
  Workload w;
  w.model = default_model();
  std::string child;
  bool torch_gc = true;
  std::vector<std::string> only;
  std::vector<std::string> rest = parse_common(args, o);
  for (size_t i = 0; i < rest.size(); ++i) {
    auto value = [&]() -> std::string {
      if (i + 1 >= rest.size()) throw UsageError{rest[i] + " needs a value"};
      return rest[++i];
    };
    const std::string& a = rest[i];
    if (a == "--model") w.model = value();
    else if (a == "--batch") w.batch = parse_int(a, value(), 1);
    else if (a == "--seq") w.seq = parse_int(a, value(), 2);
    else if (a == "--r") w.r = parse_int(a, value(), 1);
    else if (a == "--alpha") w.alpha = std::atof(value().c_str());
    else if (a == "--no-torch-gc") torch_gc = false;
    else if (a == "--configs") only = split_commas(value());
    else if (a == "--child") child = value();
    else throw UsageError{"unknown option " + a};
  }
  if (o.help) {
    std::printf(
        "usage: peft bench finetune-decoder [--model FILE.gguf] [--batch B] [--seq T] [--r R] [--alpha A]\n"
        "                                   [--configs q,f32,q-gc] [--no-torch-gc] [--python PATH]\n"
        "                                   [--threads N] [--markdown] [--rounds N] [--reps N] [--warmup N]\n"
        "  One LoRA SFT optimizer step of a GGUF decoder, in seconds: forward, causal-LM loss over every\n"
        "  position (labels = the input ids, fixed pseudo-random ids), backward, AdamW step (weight decay 0).\n"
        "  Default model ~/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_smollm2.sh),\n"
        "  batch 8 x 256 tokens, LoRA r=16, alpha=32, dropout 0 on q,k,v,o,gate,up,down of every block.\n"
        "  Ours (train::causal_lm_loss, nn::AdamW) in three configurations: q (the base as stored, e.g.\n"
        "  q4_1, kept quantized), f32 (dequantized to float32 on load, as `peft finetune --dtype f32`),\n"
        "  q-gc (as stored, with gradient checkpointing). PyTorch: transformers' LlamaForCausalLM from the\n"
        "  same file (from_pretrained(gguf_file=...), float32), peft get_peft_model, torch.optim.AdamW,\n"
        "  without and (unless --no-torch-gc) with gradient_checkpointing_enable().\n"
        "  Every configuration runs in a process of its own (ours: this program; PyTorch: a\n"
        "  tools/bench/worker.py each), all started first; rounds alternate ours / PyTorch. The first\n"
        "  round starts with --warmup untimed steps (default 1), then every round times --reps steps\n"
        "  (default 1) of each configuration (default 3 rounds); medians in s/step. Peak RSS (MiB): the\n"
        "  whole process's high-water mark (load included). 'first loss': the first step's loss (LoRA B\n"
        "  is zero: the base model's loss on the batch), for checking that both sides compute the same.\n%s",
        kCommonHelp);
    return 0;
  }
  if (!io::is_gguf_file(w.model)) fail("bench finetune-decoder: ", w.model, " is not a GGUF file (scripts/fetch_smollm2.sh)");
  if (!child.empty()) return run_child(child, w);

  std::vector<Config> configs = {{"q", "", "torch", {}}, {"f32", "", "torch", {}}, {"q-gc", "", "torch-gc", {}}};
  std::string qname = "quantized";
  {
    auto f = io::GGUFFile::open(w.model);
    std::map<std::string, uint64_t> bytes;
    for (const auto& t : f->tensors()) bytes[io::ggml_type_info(t.ggml_type)->name] += t.nbytes;
    uint64_t best = 0;
    for (const auto& [k, v] : bytes)
      if (v > best) best = v, qname = k;
    for (char& c : qname) c = char(std::tolower(c));
  }
  configs[0].label = qname + " base";
  configs[1].label = "f32 base (dequantized on load)";
  configs[2].label = qname + " base + gradient checkpointing";
  if (!only.empty()) {
    std::vector<Config> keep;
    for (const auto& c : configs)
      if (std::find(only.begin(), only.end(), c.key) != only.end()) keep.push_back(c);
    if (keep.empty()) throw UsageError{"--configs: expected some of q, f32, q-gc"};
    configs = keep;
  }
  const double t0 = now_s();
  const std::string self_exe = fs::read_symlink("/proc/self/exe").string();
  const std::string model_abs = fs::absolute(w.model).string();
  const int threads = get_num_threads();
  // start every process (each loads its model) before the first round
  std::vector<std::unique_ptr<OurProcess>> procs;
  for (auto& c : configs) {
    std::fprintf(stderr, "bench finetune-decoder: loading ours (%s)\n", c.key.c_str());
    procs.push_back(std::make_unique<OurProcess>(std::vector<std::string>{
        self_exe, "bench", "finetune-decoder", "--child", c.key, "--model", model_abs, "--batch",
        std::to_string(w.batch), "--seq", std::to_string(w.seq), "--r", std::to_string(w.r), "--alpha",
        std::to_string(w.alpha), "--threads", std::to_string(threads)}));
    const auto hello = procs.back()->read_reply(c.key);
    if (!hello.value("ok", false)) fail("bench finetune-decoder: our ", c.key, " process failed to start");
    c.ours.peak_rss = hello.value("load_peak_rss", int64_t(-1));
  }
  struct Theirs {
    std::string key, label;
    bool gc = false;
    std::unique_ptr<PyWorker> py;
    Side side;
  };
  std::vector<Theirs> theirs;
  {
    bool need_plain = false, need_gc = false;
    for (const auto& c : configs) (c.torch_key == "torch" ? need_plain : need_gc) = true;
    need_gc &= torch_gc;
    if (need_plain) theirs.push_back({"torch", "float32 (dequantized)", false, nullptr, {}});
    if (need_gc) theirs.push_back({"torch-gc", "float32 + gradient_checkpointing_enable()", true, nullptr, {}});
    for (auto& t : theirs) {
      t.py = start_worker("finetune-decoder", o, rep);
      if (!t.py) break;
    }
    if (!theirs.empty() && !theirs[0].py) theirs.clear();
  }
  auto request = [&](const Theirs& t, bool first) {
    return nlohmann::json{{"case", "step"},   {"file", model_abs},        {"batch", w.batch},
                          {"seq", w.seq},     {"r", w.r},                 {"alpha", w.alpha},
                          {"lr", w.lr},       {"gc", t.gc},               {"reps", o.reps},
                          {"warmup", first ? o.warmup : 0}, {"min_sample_s", 0.0}, {"rewarm", false}};
  };
  for (int r = 0; r < o.rounds; ++r) {
    // ours and theirs alternate within the round: q, torch, f32, q-gc, torch-gc (each PyTorch
    // configuration after the first of ours compared with it)
    std::vector<bool> done(theirs.size(), false);
    for (size_t i = 0; i < configs.size(); ++i) {
      Config& c = configs[i];
      std::fprintf(stderr, "\rbench finetune-decoder: round %d/%d, ours %s\033[K", r + 1, o.rounds, c.key.c_str());
      const auto reply = procs[i]->call({{"reps", o.reps}, {"warmup", r == 0 ? o.warmup : 0}}, c.key);
      for (double v : reply["times"]) c.ours.times.push_back(v);
      c.ours.first_loss = reply.value("first_loss", NAN);
      c.ours.peak_rss = std::max(c.ours.peak_rss, reply.value("peak_rss", int64_t(-1)));
      for (size_t k = 0; k < theirs.size(); ++k) {
        Theirs& t = theirs[k];
        if (done[k] || t.key != c.torch_key) continue;
        done[k] = true;
        std::fprintf(stderr, "\rbench finetune-decoder: round %d/%d, PyTorch %s\033[K", r + 1, o.rounds, t.key.c_str());
        const nlohmann::json rt = t.py->call(request(t, r == 0));
        for (double v : rt["times"]) t.side.times.push_back(v);
        const auto notes = rt.value("notes", nlohmann::json::object());
        t.side.first_loss = notes.value("first_loss", NAN);
        // the worker resets its high-water mark before each sample: the whole run's peak is the
        // largest of the samples' and the load's
        t.side.peak_rss = std::max({t.side.peak_rss, rt.value("peak_rss", int64_t(-1)),
                                    notes.value("load_peak_rss", int64_t(-1))});
      }
    }
  }
  std::fprintf(stderr, "\n");
  // ours: the child's own VmHWM (its last reply: nothing runs after it). Not wait4's ru_maxrss,
  // which also counts the memory of this process that the child had between fork and exec.
  for (auto& p : procs) p->finish();
  for (auto& t : theirs) t.py.reset();

  auto find_theirs = [&](const std::string& key) -> const Theirs* {
    for (const auto& t : theirs)
      if (t.key == key) return &t;
    return nullptr;
  };
  std::printf("## peft bench finetune-decoder\n\n");
  std::printf("Model: %s (%s MiB). Machine: %s. PyTorch: %s. Total %.0f s.\n",
              fs::path(w.model).filename().string().c_str(), mib(int64_t(fs::file_size(w.model))).c_str(),
              machine_description().c_str(),
              theirs.empty() ? ("not measured: " + (rep.no_python_why.empty() ? std::string("no configuration") : rep.no_python_why)).c_str()
                             : (rep.torch_versions + ", transformers from_pretrained(gguf_file=...) float32").c_str(),
              now_s() - t0);
  std::printf("One LoRA SFT step (batch %lld x %lld tokens, loss over every position, r=%lld alpha=%g dropout 0 on "
              "q,k,v,o,gate,up,down, AdamW): seconds per step, medians of %d rounds x %d steps after %d warm-up "
              "step(s); ratio = ours / PyTorch (below 1: ours faster). Peak RSS: each configuration's own process, "
              "load included (MiB).\n\n",
              (long long)w.batch, (long long)w.seq, (long long)w.r, w.alpha, o.rounds, o.reps, o.warmup);
  if (o.markdown) {
    std::printf("| ours | s/step | PyTorch | s/step | ours / PyTorch | peak RSS ours | peak RSS PyTorch | first loss ours / PyTorch |\n");
    std::printf("|---|---:|---|---:|---:|---:|---:|---|\n");
  } else {
    std::printf("%-40s %8s  %-42s %8s %8s %10s %10s  %s\n", "ours", "s/step", "PyTorch", "s/step", "ratio", "RSS ours",
                "RSS torch", "first loss ours / PyTorch");
  }
  for (const Config& c : configs) {
    const Theirs* t = find_theirs(c.torch_key);
    const double a = c.ours.times.empty() ? 0 : median(c.ours.times);
    const double b = t && !t->side.times.empty() ? median(t->side.times) : 0;
    char ratio[32] = "-";
    if (a > 0 && b > 0) std::snprintf(ratio, sizeof ratio, "%.2f", a / b);
    const std::string tl = t ? t->label : "-", ts = t ? secs(t->side.times) : "-", trss = t ? mib(t->side.peak_rss) : "-";
    const std::string losses = loss_text(c.ours.first_loss) + " / " + (t ? loss_text(t->side.first_loss) : "-");
    if (o.markdown)
      std::printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", c.label.c_str(), secs(c.ours.times).c_str(), tl.c_str(),
                  ts.c_str(), ratio, mib(c.ours.peak_rss).c_str(), trss.c_str(), losses.c_str());
    else
      std::printf("%-40s %8s  %-42s %8s %8s %10s %10s  %s\n", c.label.c_str(), secs(c.ours.times).c_str(), tl.c_str(),
                  ts.c_str(), ratio, mib(c.ours.peak_rss).c_str(), trss.c_str(), losses.c_str());
    Row row("finetune-decoder", c.label, a, b > 0 ? std::optional<double>(b) : std::nullopt, "vs PyTorch " + tl);
    row.peak_rss = c.ours.peak_rss;
    if (t && t->side.peak_rss >= 0) row.peak_rss_theirs = t->side.peak_rss;
    rep.rows.push_back(row);
  }
  return 0;
}

}  // namespace peft::cli::bench
