// `peft bench inject` and `peft bench load`: injecting LoRA into a Llama-7B-shaped
// tree on the meta device and loading a 40M-parameter adapter into it, and opening
// adapter folders; against PyTorch + PEFT (tools/bench/inject.py, tools/bench/load.py).
#include <optional>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "adapters/peft.h"
#include "io/safetensors.h"
#include "nn/layers.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tools/bench_common.h"
#include "tools/charlm.h"
#include "tools/cli.h"

namespace peft::cli::bench {

namespace {

const std::vector<std::string> kLlamaTargets = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"};

// Llama-7B's module tree on meta (no bias; embed_tokens and lm_head untargeted), as
// tools/bench/inject.py builds it.
std::shared_ptr<nn::Module> llama_on_meta(int layers, int64_t d = 4096, int64_t f = 11008, int64_t vocab = 32000) {
  const DType f32 = DType::float32;
  const Device meta = Device::meta;
  auto lin = [&](int64_t in, int64_t out) { return std::make_shared<nn::Linear>(in, out, false, nullptr, f32, meta); };
  auto model = std::make_shared<nn::Module>("Llama");
  model->register_module("embed_tokens", std::make_shared<nn::Embedding>(vocab, d, std::nullopt, nullptr, f32, meta));
  auto list = std::make_shared<nn::ModuleList>();
  for (int i = 0; i < layers; ++i) {
    auto block = std::make_shared<nn::Module>("Block");
    auto attn = std::make_shared<nn::Module>("Attn");
    for (const char* n : {"q_proj", "k_proj", "v_proj", "o_proj"}) attn->register_module(n, lin(d, d));
    auto mlp = std::make_shared<nn::Module>("MLP");
    mlp->register_module("gate_proj", lin(d, f));
    mlp->register_module("up_proj", lin(d, f));
    mlp->register_module("down_proj", lin(f, d));
    block->register_module("self_attn", attn);
    block->register_module("mlp", mlp);
    list->push_back(block);
  }
  model->register_module("layers", list);
  model->register_module("lm_head", lin(d, vocab));
  return model;
}

LoraConfig llama_lora(int64_t r) {
  LoraConfig cfg;
  cfg.r = r;
  cfg.lora_alpha = double(2 * r);
  cfg.target_modules = TargetModules::list(kLlamaTargets);
  return cfg;
}

std::string mib(int64_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

int bench_inject(const std::vector<std::string>& args, Report& rep) {
  Options o;
  o.reps = 3;
  o.rounds = 2;
  o.warmup = 1;
  std::vector<std::string> rest = parse_common(args, o);
  int layers = 32;
  std::string write_to;  // internal: the child that writes the adapter file
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--layers" && i + 1 < rest.size()) layers = parse_int(rest[i], rest[i + 1], 1), ++i;
    else if (rest[i] == "--write-adapter" && i + 1 < rest.size()) write_to = rest[++i];
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (!write_to.empty()) {
    auto m = llama_on_meta(layers);
    inject_adapter_in_model(llama_lora(16), *m, "default", true);
    StateDict sd;
    Generator g(0);
    for (const auto& [k, t] : get_peft_model_state_dict(*m)) sd.set(k, mul(randn(t.shape(), g), 0.01));
    io::save_safetensors(write_to, sd);
    return 0;
  }
  if (o.help) {
    std::printf(
        "usage: peft bench inject [--layers N] [options]\n"
        "  A Llama-7B-shaped module tree on the meta device (N blocks x q,k,v,o 4096->4096,\n"
        "  gate,up 4096->11008, down 11008->4096; default N = 32), LoRA r=16 on all seven\n"
        "  (224 modules, 40M adapter parameters): injection with and without\n"
        "  low_cpu_mem_usage, then loading the adapter from a safetensors file (mmapped)\n"
        "  onto a low_cpu_mem_usage tree; peak resident-memory growth of each step.\n"
        "  Defaults --reps 3 --rounds 2 --warmup 1.\n%s",
        kCommonHelp);
    return 0;
  }
  auto py = start_worker("inject", o, rep);
  ScratchDir scratch;
  const std::string file = (scratch.path / "adapter_model.safetensors").string();
  int64_t adapter_params = 0;
  {
    auto m = llama_on_meta(layers);
    inject_adapter_in_model(llama_lora(16), *m, "default", true);
    StateDict meta_sd = get_peft_model_state_dict(*m);
    for (const auto& [k, t] : meta_sd) adapter_params += t.numel();
    // The adapter file both sides load (PEFT's key names, random values), written by a
    // child `peft bench inject --write-adapter FILE`: the 160 MB it takes would otherwise
    // stay in this process's block cache, be reused by the timed steps and hide their
    // memory growth. A fresh program, not a bare fork: OpenMP's thread pool does not
    // survive fork().
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
      std::string n = std::to_string(layers);
      const char* argv[] = {"peft", "bench", "inject", "--write-adapter", file.c_str(), "--layers", n.c_str(), nullptr};
      ::execv("/proc/self/exe", const_cast<char* const*>(argv));
      ::_exit(127);
    }
    int st = 0;
    if (pid < 0 || ::waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
      fail("bench inject: could not write the adapter file ", file);
  }
  std::vector<Row> rows;
  for (const char* kind : {"inject", "inject-low-mem", "load"}) {
    const std::string k = kind;
    std::shared_ptr<nn::Module> model;
    int64_t rss0 = 0, growth = 0;
    Case c;
    c.batch = false;
    c.prepare = [&] {
      model = llama_on_meta(layers);
      if (k == "load") inject_adapter_in_model(llama_lora(16), *model, "default", true);
      rss0 = current_rss();
      reset_peak_rss();
    };
    if (k == "load") {
      c.run = [&] {
        auto f = io::SafetensorsFile::open(file);
        StateDict sd;
        for (const auto& info : f->tensors()) sd.set(info.name, f->get(info.name));
        set_peft_model_state_dict(*model, sd, "default", true);
      };
    } else {
      const bool low = k == "inject-low-mem";
      c.run = [&, low] { inject_adapter_in_model(llama_lora(16), *model, "default", low); };
    }
    c.after = [&] {
      growth = std::max(growth, peak_rss() - rss0);
      model.reset();
    };
    nlohmann::json req = {{"case", k}, {"layers", layers}, {"r", 16}, {"file", file}};
    auto [ours, theirs] = interleave(c, py.get(), req, o);
    std::string note = "peak RSS +" + mib(growth);
    if (py && py->last_notes().contains("peak_rss_growth"))
      note += "; PyTorch +" + mib(py->last_notes()["peak_rss_growth"].get<int64_t>());
    char what[96];
    std::snprintf(what, sizeof what, "%s (%d modules%s)", kind, layers * 7,
                  k == "load" ? (", " + std::to_string(adapter_params / 1000000) + "M params").c_str() : "");
    rows.push_back({"inject", what, ours, theirs, note});
    std::fprintf(stderr, "  %-34s %s  %s\n", what, fmt_time(ours).c_str(), note.c_str());
  }
  print_rows(rows, o.markdown);
  rep.rows.insert(rep.rows.end(), rows.begin(), rows.end());
  return 0;
}

int bench_load(const std::vector<std::string>& args, Report& rep) {
  Options o;
  o.reps = 3;
  o.rounds = 2;
  o.warmup = 1;
  std::vector<std::string> rest = parse_common(args, o);
  std::vector<int> counts{1, 10, 100};
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--adapters" && i + 1 < rest.size()) counts = {parse_int(rest[i], rest[i + 1], 1)}, ++i;
    else throw UsageError{"unknown option " + rest[i]};
  }
  if (o.help) {
    std::printf(
        "usage: peft bench load [--adapters N] [options]\n"
        "  Time to open adapter folders and be ready to run: load_adapter of a LoRA folder\n"
        "  (r=8 on fc1, fc2, lm_head of the fine-tuning demo's CharLM, written by\n"
        "  save_pretrained) N times under different names onto a fresh model; PyTorch +\n"
        "  PEFT does PeftModel.from_pretrained + load_adapter. Default N = 1, 10, 100.\n"
        "  Defaults --reps 3 --rounds 2 --warmup 1.\n%s",
        kCommonHelp);
    return 0;
  }
  auto py = start_worker("load", o, rep);
  ScratchDir scratch;
  const std::string dir = (scratch.path / "adapter").string();
  lm::CharLMConfig cfg;
  cfg.vocab = lm::Vocab::standard().size();
  LoraConfig lc;
  lc.r = 8;
  lc.lora_alpha = 16;
  lc.target_modules = TargetModules::list({"fc1", "fc2", "lm_head"});
  {
    Generator g(0);
    lm::CharLM m(cfg, g);
    inject_adapter_in_model(lc, m);
    save_pretrained(m, dir);
  }
  // Several adapters on one model are what this measures: drop the warning about it.
  std::optional<ScopedWarningHandler> quiet(std::in_place);
  std::vector<Row> rows;
  for (int n : counts) {
    std::shared_ptr<lm::CharLM> model;
    Case c;
    c.batch = false;
    c.prepare = [&] {
      Generator g(0);
      model = std::make_shared<lm::CharLM>(cfg, g);
    };
    c.run = [&] {
      for (int i = 0; i < n; ++i) load_adapter(*model, dir, std::string("a").append(std::to_string(i)));
    };
    c.after = [&] { model.reset(); };
    auto [ours, theirs] = interleave(c, py.get(), {{"case", "load"}, {"adapters", n}, {"dir", dir}}, o);
    char what[64];
    std::snprintf(what, sizeof what, "%d adapter folder%s", n, n == 1 ? "" : "s");
    rows.push_back({"load", what, ours, theirs, ""});
    std::fprintf(stderr, "  %-34s %s\n", what, fmt_time(ours).c_str());
  }
  quiet.reset();
  print_rows(rows, o.markdown);
  rep.rows.insert(rep.rows.end(), rows.begin(), rows.end());
  return 0;
}

}  // namespace peft::cli::bench
