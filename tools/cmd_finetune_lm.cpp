// `peft finetune --model MODEL --data TRAIN.jsonl --out DIR`: LoRA supervised fine-tuning of a
// decoder LLM (a GGUF file, kept quantized: QLoRA on a CPU; or a model folder), on the library's
// Trainer and causal-LM data (train/).
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/atomic_file.h"
#include "io/gguf.h"
#include "nn/transformers/generate.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/cli.h"
#include "tools/plot.h"
#include "tools/text_commands.h"
#include "nn/transformers/text_model.h"
#include "train/lm_data.h"
#include "train/sampler.h"
#include "train/trainer.h"

namespace peft::cli {

namespace {

namespace fs = std::filesystem;

const char* kHelp = R"(usage: peft finetune --model MODEL --data TRAIN.jsonl --out DIR [options]

LoRA supervised fine-tuning of a decoder LLM. MODEL is a GGUF file (llama / qwen2
architecture; its quantized weights stay quantized and frozen: QLoRA on the CPU) or a
Hugging Face model folder (Llama, Qwen2, Mistral, GPT-2). Only the adapter trains.

TRAIN.jsonl holds one example per line: {"prompt": ..., "completion": ...} (only the
completion and EOS are scored) or {"messages": [{"role", "content"}, ...]} (rendered with the
model's chat template; only the assistant turns are scored). Any other file is plain text,
packed into blocks of --max-length tokens. Batches group examples of similar length.

Before and after training it prints the eval loss and perplexity and greedy completions of a
few eval prompts. Writes DIR/adapter/ (a PEFT adapter folder), DIR/loss.svg,
DIR/samples.txt (those completions) and DIR/report.json; with --checkpoint-every,
DIR/checkpoint/ (adapter, optimizer, generator, step; replaced atomically), from which
--resume continues with the bits of an uninterrupted run.

options:
  --eval FILE            evaluation examples (default: a seeded 5% of TRAIN, at most 200,
                         held out of training)
  --steps N              optimizer steps (default 100)
  --batch B              examples per step (default 8)
  --grad-accum K         micro-batches of B per step (default 1)
  --lr X                 peak AdamW learning rate (default 2e-4), weight decay 0
  --warmup N             warm-up steps (default steps / 10)
  --schedule S           cosine (default), linear or constant
  --max-grad-norm X      clip gradients to this norm (default 1.0; 0: no clipping)
  --r R                  LoRA rank (default 16)
  --alpha A              lora_alpha (default 2 x r)
  --dropout P            lora_dropout (default 0.05)
  --target-modules LIST  comma-separated names, or all-linear (default: PEFT's defaults for
                         the model type, q_proj,v_proj for llama)
  --use-rslora           alpha / sqrt(r) scaling
  --use-dora             weight-decomposed LoRA (DoRA)
  --max-length L         tokens per example; longer ones are cut and counted (default 512)
  --dtype f32|bf16|f16   dequantize / convert the base on load (default: as stored)
  --gradient-checkpointing  recompute each decoder block in backward: the activations of
                         one block are kept instead of all (less memory, ~1/3 more time)
  --checkpoint-every N   write DIR/checkpoint every N steps (default 0: never)
  --resume               continue from DIR/checkpoint (same options and data)
  --eval-every N         eval loss every N steps during training (default 0)
  --samples N            eval prompts to complete before and after (default 3)
  --max-new-tokens N     tokens per sampled completion (default 48)
  --seed S               adapter init, batch order and dropout (default 0)
  --threads N            CPU threads

Data parallel: `mpirun -n N peft finetune --model ...` splits every batch of B examples over
the N ranks (B must be a multiple of N); the gradients are averaged weighted by each rank's
scored tokens, so the step equals one process's. See docs/distributed.md.
)";

int64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return int64_t(ru.ru_maxrss) * 1024;
}

// The rows of `data` at `rows`, as a dataset of their own.
train::LMDataset subset(const train::LMDataset& data, const std::vector<size_t>& rows) {
  train::LMDataset out;
  out.path = data.path, out.format = data.format;
  for (size_t r : rows) {
    out.examples.push_back(data.examples[r]);
    out.tokens += int64_t(data.examples[r].ids.size());
    out.loss_tokens += data.examples[r].loss_tokens();
    out.max_example_tokens = std::max(out.max_example_tokens, int64_t(data.examples[r].ids.size()));
  }
  return out;
}

// The token-weighted mean loss over every eval example (batches of similar length, no grad).
double eval_loss(nn::PreTrainedModel& model, const train::LMDataset& data, int64_t batch, int64_t pad_id) {
  NoGradGuard ng;
  const bool was_training = model.is_training();
  model.eval();
  std::vector<size_t> order(data.examples.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return data.examples[a].ids.size() < data.examples[b].ids.size(); });
  double sum = 0;
  int64_t n = 0;
  for (size_t at = 0; at < order.size(); at += size_t(batch)) {
    std::vector<size_t> rows(order.begin() + ptrdiff_t(at), order.begin() + ptrdiff_t(std::min(order.size(), at + size_t(batch))));
    train::LMBatch b = train::collate(data, rows, pad_id);
    sum += train::causal_lm_loss(model, b).item() * double(b.loss_tokens);
    n += b.loss_tokens;
  }
  if (was_training) model.train();
  return sum / double(n);
}

// Greedy completions of the first `count` eval prompts.
std::vector<std::string> complete(nn::PreTrainedModel& model, const Tokenizer& tok, const train::LMDataset& data,
                                  int64_t count, const nn::GenerateOptions& gen) {
  std::vector<std::string> out;
  const bool was_training = model.is_training();
  for (int64_t i = 0; i < count && i < int64_t(data.examples.size()); ++i) {
    const std::vector<int64_t> p = data.examples[size_t(i)].prompt_ids();
    const Tensor ids = from_vector(p, {1, int64_t(p.size())});
    const Tensor all = nn::generate(model, ids, Tensor(), gen);
    std::vector<int64_t> v = all.to_vector<int64_t>();
    out.push_back(tok.decode(std::vector<int64_t>(v.begin() + ptrdiff_t(p.size()), v.end()), true));
  }
  if (was_training) model.train();
  return out;
}

std::string one_line(std::string s, size_t max = 160) {
  for (char& c : s)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  const size_t b = s.find_first_not_of(' ');
  s = b == std::string::npos ? "" : s.substr(b);
  if (s.size() > max) {
    size_t cut = max - 3;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
    s = s.substr(0, cut) + "...";
  }
  return s;
}

}  // namespace

int run_finetune_lm(const std::vector<std::string>& argv) {
  Args a(argv,
         {"model", "data", "eval", "out", "steps", "batch", "grad-accum", "lr", "warmup", "schedule", "max-grad-norm",
          "r", "alpha", "dropout", "target-modules", "max-length", "dtype", "checkpoint-every", "eval-every", "samples",
          "max-new-tokens", "seed", "threads"},
         {"use-rslora", "use-dora", "resume", "gradient-checkpointing"});
  if (a.help) {
    std::printf("%s", kHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  train::DataParallel dp("finetune");
  const std::string model_path = a.required("model"), data_path = a.required("data");
  const fs::path out = a.required("out");
  const int64_t steps = a.get_int("steps", 100), batch = a.get_int("batch", 8), accum = a.get_int("grad-accum", 1);
  const int64_t r = a.get_int("r", 16), samples = a.get_int("samples", 3), max_new = a.get_int("max-new-tokens", 48);
  const int64_t ckpt_every = a.get_int("checkpoint-every", 0), eval_every = a.get_int("eval-every", 0);
  const double lr = a.get_double("lr", 2e-4), alpha = a.get_double("alpha", 2.0 * double(r));
  if (steps <= 0 || batch <= 0 || accum <= 0 || r <= 0 || samples < 0 || max_new <= 0 || ckpt_every < 0 || eval_every < 0)
    throw UsageError{"--steps, --batch, --grad-accum, --r and --max-new-tokens must be positive"};
  if (!(lr > 0)) throw UsageError{"--lr must be positive"};
  const train::DataParallel::Shard shard = dp.shard(batch);
  apply_threads_option(a);
  const uint64_t seed = uint64_t(a.get_int("seed", 0));

  // the model: quantized weights stay quantized; attention in float32 (no KV-cache rounding,
  // which is llama.cpp's inference numerics, not a training one)
  nn::PretrainedOptions mo = model_options(a);
  mo.kv_cache_dtype = DType::float32;
  nn::TextModel tm = nn::TextModel::load(model_path, mo);
  auto* lm = tm.model.get();
  if (!lm->is_decoder())
    throw UsageError{model_path + " is a " + lm->type_name() + ", not a causal language model (a decoder)"};
  const Tokenizer& tok = tm.tok();
  const bool gguf = fs::is_regular_file(model_path) && io::is_gguf_file(model_path);
  nn::GenerateOptions gen = gguf ? nn::gguf_generation_config(model_path) : nn::read_generation_config(model_path);
  gen.max_new_tokens = max_new;
  gen.do_sample = false;
  const int64_t eos = gen.eos_token_ids.empty() ? -1 : gen.eos_token_ids[0];
  const int64_t pad = gen.pad_token_id.value_or(eos >= 0 ? eos : 0);

  train::LMDataOptions dopt;
  dopt.max_length = a.get_int("max-length", std::min<int64_t>(512, lm->max_positions()));
  if (dopt.max_length > lm->max_positions())
    throw UsageError{"--max-length " + std::to_string(dopt.max_length) + " exceeds the model's " +
                     std::to_string(lm->max_positions()) + " positions"};
  dopt.chat_template = tm.chat_template;
  dopt.eos_id = eos;
  train::LMDataset all = train::load_lm_data(data_path, tok, dopt);
  train::LMDataset train_set, eval_set;
  if (a.has("eval")) {
    train_set = std::move(all);
    eval_set = train::load_lm_data(a.get("eval"), tok, dopt);
  } else {
    const size_t n = all.examples.size(), k = std::clamp<size_t>(n / 20, 1, 200);
    if (n < 2) fail("finetune: ", data_path, " has ", n, " example; give --eval, or more examples");
    const std::vector<size_t> order = train::EpochSampler(n, seed ^ 0x5eedull).epoch_order(0);
    eval_set = subset(all, std::vector<size_t>(order.begin(), order.begin() + ptrdiff_t(k)));
    std::vector<size_t> rest(order.begin() + ptrdiff_t(k), order.end());
    std::sort(rest.begin(), rest.end());
    train_set = subset(all, rest);
    train_set.truncated = all.truncated, train_set.dropped = all.dropped;
  }
  if (dp.size() > 1) {
    std::vector<std::pair<std::string, std::string>> settings;
    for (const char* o : {"steps", "batch", "grad-accum", "lr", "warmup", "schedule", "max-grad-norm", "r", "alpha",
                          "dropout", "target-modules", "max-length", "dtype", "seed", "use-rslora", "use-dora"})
      settings.emplace_back(std::string("--") + o, a.get(o, ""));
    settings.emplace_back("--model (the file)", train::DataParallel::file_digest(
                                                   gguf ? model_path : (fs::path(model_path) / "config.json").string()));
    settings.emplace_back("--data (the file)", train::DataParallel::file_digest(data_path));
    dp.require_same(settings);
  }
  FILE* log = dp.is_main() ? stdout : nullptr;
  if (log) {
    std::fprintf(log, "finetune: %s (%s%s), %zu train / %zu eval examples (%s), %lld train tokens",
                 model_path.c_str(), lm->type_name().c_str(), gguf ? ", GGUF" : "", train_set.examples.size(),
                 eval_set.examples.size(), train_set.format.c_str(), (long long)train_set.tokens);
    if (train_set.truncated) std::fprintf(log, ", %lld cut at %lld tokens", (long long)train_set.truncated, (long long)dopt.max_length);
    if (train_set.dropped) std::fprintf(log, ", %lld dropped (nothing scored left)", (long long)train_set.dropped);
    std::fprintf(log, "\n");
  }

  // before: eval loss and sampled completions (rank 0)
  double loss_before = NAN;
  std::vector<std::string> before;
  if (dp.is_main()) {
    loss_before = eval_loss(*lm, eval_set, batch, pad);
    std::printf("eval before: loss %.4f, perplexity %.2f\n", loss_before, std::exp(loss_before));
    std::fflush(stdout);
    before = complete(*lm, tok, eval_set, samples, gen);
  }

  LoraConfig cfg;
  cfg.r = r;
  cfg.lora_alpha = alpha;
  cfg.lora_dropout = a.get_double("dropout", 0.05);
  cfg.use_rslora = a.has("use-rslora");
  cfg.use_dora = a.has("use-dora");
  if (a.has("target-modules")) {
    const std::string t = a.get("target-modules");
    cfg.target_modules = t == "all-linear" ? TargetModules::regex("all-linear") : TargetModules::list(split_commas(t));
  }
  manual_seed(seed);  // lora_A's init
  inject_adapter_in_model(cfg, *lm);
  lm->set_gradient_checkpointing(a.has("gradient-checkpointing"));

  train::TrainerOptions topts;
  topts.name = "finetune";
  topts.steps = steps, topts.grad_accum = accum, topts.lr = lr, topts.weight_decay = 0.0;
  topts.warmup_steps = a.get_int("warmup", steps / 10);
  topts.schedule = train::parse_schedule(a.get("schedule", "cosine"));
  topts.max_grad_norm = a.get_double("max-grad-norm", 1.0);
  topts.seed = seed;
  topts.eval_every = eval_every;
  topts.log = stderr;
  if (ckpt_every > 0) topts.checkpoint_every = ckpt_every, topts.checkpoint_dir = (out / "checkpoint").string();
  train::Trainer trainer(*lm, topts, &dp);
  if (log) {
    const std::string targets = a.get("target-modules", "PEFT's defaults");
    std::fprintf(log, "LoRA r=%lld alpha=%g on %s: %lld trainable parameters; %lld steps of %lld x %lld examples\n",
                 (long long)r, alpha, targets.c_str(), (long long)trainer.trainable_numel(), (long long)steps,
                 (long long)accum, (long long)batch);
    std::fflush(log);
  }
  train::LengthBucketBatcher batches(train_set, batch, seed);
  trainer.set_loss([&](const train::MicroBatch& mb) {
    const std::vector<size_t> rows = batches.rows(mb.step * accum + mb.micro);
    const std::vector<size_t> mine(rows.begin() + ptrdiff_t(shard.begin), rows.begin() + ptrdiff_t(shard.end));
    train::LMBatch b = train::collate(train_set, mine, pad);
    return train::MicroBatchLoss{train::causal_lm_loss(*lm, b), double(b.loss_tokens)};
  });
  trainer.set_eval([&] { return eval_loss(*lm, eval_set, batch, pad); });
  if (a.has("resume")) {
    const std::string ck = (out / "checkpoint").string();
    if (!train::Trainer::has_checkpoint(ck)) fail("finetune: --resume: ", ck, " holds no checkpoint");
    trainer.resume(ck);
    if (log) std::fprintf(log, "resuming at step %lld of %lld from %s\n", (long long)trainer.step(), (long long)steps, ck.c_str());
  }
  if (dp.is_main()) fs::create_directories(out);
  trainer.fit();
  std::vector<double> sorted = trainer.history().step_seconds;
  std::sort(sorted.begin(), sorted.end());
  const double median_step = sorted.empty() ? 0.0 : sorted[sorted.size() / 2];
  const int64_t peak_rss = peak_rss_bytes();
  if (!dp.is_main()) return 0;

  const double loss_after = eval_loss(*lm, eval_set, batch, pad);
  const std::vector<std::string> after = complete(*lm, tok, eval_set, samples, gen);
  train::replace_dir_atomic((out / "adapter").string(), [&](const std::string& tmp) { save_pretrained(*lm, tmp); });
  std::error_code ec;
  fs::remove_all(out / "checkpoint", ec);  // the final adapter supersedes it
  write_loss_svg((out / "loss.svg").string(), trainer.history().losses,
                 "LoRA SFT of " + fs::path(model_path).filename().string() + ": loss per step");

  std::printf("\neval loss %.4f -> %.4f (perplexity %.2f -> %.2f) on %zu examples\n", loss_before, loss_after,
              std::exp(loss_before), std::exp(loss_after), eval_set.examples.size());
  nlohmann::json sample_json = nlohmann::json::array();
  std::string samples_text;
  for (size_t i = 0; i < after.size(); ++i) {
    const std::string& prompt = eval_set.examples[i].prompt_text;
    const std::string shown = "\n  prompt: " + one_line(prompt) + "\n  base:   " + one_line(before[i], 400) +
                              "\n  tuned:  " + one_line(after[i], 400) + "\n";
    std::printf("%s", shown.c_str());
    samples_text += shown;
    sample_json.push_back({{"prompt", prompt}, {"base", before[i]}, {"tuned", after[i]}});
  }
  nlohmann::json evals = nlohmann::json::array();
  for (const auto& [s, l] : trainer.history().evals) evals.push_back({{"step", s}, {"loss", l}});
  std::string base_dtype = "float32";
  for (const auto& [n, p] : lm->named_parameters())
    if (n.find("q_proj") != std::string::npos && !p.requires_grad()) {
      base_dtype = dtype_name(p.dtype());
      break;
    }
  nlohmann::json report = {{"model", model_path},
                           {"base_dtype", base_dtype},
                           {"data", data_path},
                           {"eval_data", a.get("eval", "")},
                           {"format", train_set.format},
                           {"train_examples", train_set.examples.size()},
                           {"eval_examples", eval_set.examples.size()},
                           {"train_tokens", train_set.tokens},
                           {"truncated", train_set.truncated},
                           {"dropped", train_set.dropped},
                           {"max_length", dopt.max_length},
                           {"steps", steps},
                           {"batch", batch},
                           {"grad_accum", accum},
                           {"lr", lr},
                           {"r", r},
                           {"lora_alpha", alpha},
                           {"lora_dropout", cfg.lora_dropout},
                           {"target_modules", a.get("target-modules", "")},
                           {"use_rslora", cfg.use_rslora},
                           {"use_dora", cfg.use_dora},
                           {"gradient_checkpointing", a.has("gradient-checkpointing")},
                           {"trainable_parameters", trainer.trainable_numel()},
                           {"eval_loss_before", loss_before},
                           {"eval_loss_after", loss_after},
                           {"eval_perplexity_before", std::exp(loss_before)},
                           {"eval_perplexity_after", std::exp(loss_after)},
                           {"seconds_per_step", median_step},
                           {"seconds", trainer.train_seconds()},
                           {"peak_rss_bytes", peak_rss},
                           {"ranks", dp.size()},
                           {"threads", get_num_threads()},
                           {"losses", trainer.history().losses},
                           {"gradient_norms", trainer.history().grad_norms},
                           {"evals", evals},
                           {"samples", sample_json}};
  io::write_file_atomic((out / "samples.txt").string(), samples_text);
  io::write_file_atomic((out / "report.json").string(), report.dump(2) + "\n");
  std::printf("\nfinetune: %lld steps, median %.2f s/step, peak RSS %.0f MiB; wrote %s/{adapter,loss.svg,samples.txt,report.json}\n",
              (long long)steps, median_step, double(peak_rss) / 1048576.0, out.string().c_str());
  return 0;
}

}  // namespace peft::cli
