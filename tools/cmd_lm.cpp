// `peft pretrain` and `peft generate`: the character-level language model of
// the fine-tuning demo (tools/charlm.h).
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include <nlohmann/json.hpp>

#include "nn/optim.h"
#include "runtime/device.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/charlm.h"
#include "tools/cli.h"
#include "tools/plot.h"
#include "tools/text_commands.h"
#include "train/trainer.h"

namespace peft::cli {

std::shared_ptr<lm::CharLM> load_charlm(const std::string& path);

namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

const char* kPretrainHelp = R"(usage: peft pretrain --data WORDS --out BASE.safetensors [options]

Trains the character-level language model (makemore-style MLP) from scratch
on a word list and saves it as safetensors. An existing --out is reused
unless --force is given.

options:
  --data FILE      word list, one word per line (e.g. /usr/share/dict/american-english)
  --out FILE       where to write the model
  --steps N        optimizer steps (default 3000)
  --batch N        examples per step (default 256)
  --lr X           peak AdamW learning rate (default 3e-3; warmup + cosine decay)
  --context N      previous characters seen (default 5)
  --embed N        character embedding size (default 24)
  --hidden N       hidden width (default 512)
  --seed N         random seed (default 0)
  --force          retrain even if --out exists
)";

int run_pretrain(const std::vector<std::string>& argv) {
  Args a(argv, {"data", "out", "steps", "batch", "lr", "context", "embed", "hidden", "seed"},
         {"force"});
  if (a.help) {
    std::printf("%s", kPretrainHelp);
    return 0;
  }
  std::string out = a.required("out");
  std::string data = a.required("data");
  if (file_exists(out) && !a.has("force")) {
    std::printf("pretrain: reusing cached base model %s (pass --force to retrain)\n", out.c_str());
    return 0;
  }
  lm::CharLMConfig cfg;
  cfg.context = a.get_int("context", 5);
  cfg.embed = a.get_int("embed", 24);
  cfg.hidden = a.get_int("hidden", 512);
  cfg.vocab = lm::Vocab::standard().size();
  const int64_t steps = a.get_int("steps", 3000), batch = a.get_int("batch", 256);
  const double lr = a.get_double("lr", 3e-3);
  if (steps <= 0 || batch <= 0 || lr <= 0) throw UsageError{"--steps, --batch and --lr must be positive"};
  Generator gen(uint64_t(a.get_int("seed", 0)));

  lm::WordData words = lm::load_words(data);
  lm::Examples train_ex = lm::make_examples(words.train, cfg.context);
  lm::Examples held = lm::make_examples(words.heldout, cfg.context);
  lm::CharLM model(cfg, gen);
  int64_t nparams = 0;
  for (const auto& [n, p] : model.named_parameters()) nparams += p.numel();
  std::printf("pretrain: %zu train / %zu held-out words from %s, model %lld parameters\n",
              words.train.size(), words.heldout.size(), data.c_str(), (long long)nparams);

  train::TrainerOptions topts;
  topts.name = "pretrain";
  topts.steps = steps, topts.lr = lr, topts.warmup_steps = steps / 20, topts.min_lr_ratio = 0.05;
  topts.seed = uint64_t(a.get_int("seed", 0));
  train::Trainer trainer(model, topts);
  // the model's initialisation drew from `gen`; batches continue its stream
  trainer.generator().set_state(gen.get_state());
  trainer.set_loss([&](const train::MicroBatch& mb) {
    lm::Batch b = lm::sample_batch(train_ex, batch, mb.gen);
    return train::MicroBatchLoss{cross_entropy(model(b.ctx), b.target)};
  });
  trainer.fit();
  double hl = lm::evaluate(model, held);
  io::SaveOptions so;
  so.metadata = cfg.to_metadata();
  io::save_safetensors(out, model.state_dict(), so);
  std::printf("pretrain: held-out loss %.4f nats/char; wrote %s\n", hl, out.c_str());
  return 0;
}

Registrar reg_pretrain({"pretrain", "train the character-level base model on a word list", run_pretrain});

const char* kFinetuneHelp = R"(usage: peft finetune --base BASE.safetensors --data WORDS --out DIR [options]
       peft finetune --model MODEL --data TRAIN.jsonl --out DIR ...   (a decoder LLM: see
                                                   peft finetune --model x --help)

Fine-tunes the base model (written by peft pretrain) on a word list with a
LoRA adapter (only the adapter trains), evaluates held-out loss before and
after, and writes DIR/ as a PEFT adapter folder (adapter_config.json +
adapter_model.safetensors, loadable by Python PEFT), DIR/loss.svg (the
training curve) and DIR/report.json.

options:
  --target-modules LIST  comma-separated module names (default fc1,fc2,lm_head)
  --r N                  LoRA rank (default 8)
  --alpha X              lora_alpha (default 16)
  --dropout X            lora_dropout (default 0)
  --steps N              optimizer steps (default 600)
  --batch N              examples per step (default 256)
  --lr X                 peak AdamW learning rate (default 1e-2)
  --seed N               random seed (default 0)
  --full                 full fine-tuning instead of LoRA (for comparison; writes
                         DIR/model.safetensors instead of an adapter)
  --device D             train on cpu (default), cuda or cuda:N; the held-out
                         evaluations and the saved files stay on the CPU

Data parallel: `mpirun -n N peft finetune ...` (a build with MPI) splits each batch of
--batch examples into N equal shards (--batch must be a multiple of N), averages the
gradients over the ranks once per step, and gives the adapter of one process with the same
--batch (up to float32 rounding). Every rank needs the same options and files (checked at
the start); rank 0 prints and writes DIR/. See docs/distributed.md.
)";

int run_finetune(const std::vector<std::string>& argv) {
  for (const auto& s : argv)
    if (s == "--model" || s.rfind("--model=", 0) == 0) return run_finetune_lm(argv);
  Args a(argv, {"base", "data", "out", "target-modules", "r", "alpha", "dropout", "steps", "batch",
                "lr", "seed", "device"},
         {"full"});
  if (a.help) {
    std::printf("%s", kFinetuneHelp);
    return 0;
  }
  train::DataParallel dp("finetune");
  const std::string base = a.required("base"), data = a.required("data"), out = a.required("out");
  const int64_t steps = a.get_int("steps", 600), batch = a.get_int("batch", 256);
  const double lr = a.get_double("lr", 1e-2);
  const bool full = a.has("full");
  const Device device = parse_device(a.get("device", "cpu"));
  if (device == Device::meta) throw UsageError{"--device meta cannot train; use cpu or cuda"};
  // the communicator moves host float32 buffers; a device-side one (NCCL) is future work
  if (device != Device::cpu && dp.size() > 1)
    throw UsageError{"--device cuda under mpirun is not supported yet (the gradients are averaged on the CPU)"};
  if (steps <= 0 || batch <= 0 || lr <= 0) throw UsageError{"--steps, --batch and --lr must be positive"};
  const train::DataParallel::Shard shard = dp.shard(batch);

  auto model = load_charlm(base);
  lm::WordData words = lm::load_words(data);
  lm::Examples train_ex = lm::make_examples(words.train, model->config().context);
  lm::Examples held = lm::make_examples(words.heldout, model->config().context);
  std::vector<std::pair<std::string, std::string>> settings;
  for (const char* opt : {"target-modules", "r", "alpha", "dropout", "steps", "batch", "lr", "seed", "full"})
    settings.emplace_back(std::string("--") + opt, a.get(opt, ""));
  settings.emplace_back("--base (the model file)", train::DataParallel::file_digest(base));
  settings.emplace_back("--data (the training examples)", train::DataParallel::digest(train_ex.ctx) + train::DataParallel::digest(train_ex.target));
  dp.require_same(settings);
  const double base_loss = dp.is_main() ? lm::evaluate(*model, held) : 0.0;

  LoraConfig cfg;
  cfg.r = a.get_int("r", 8);
  cfg.lora_alpha = a.get_double("alpha", 16);
  cfg.lora_dropout = a.get_double("dropout", 0.0);
  cfg.target_modules = TargetModules::list(split_commas(a.get("target-modules", "fc1,fc2,lm_head")));
  if (!full) inject_adapter_in_model(cfg, *model);
  int64_t n_train = 0, n_total = 0;
  for (const auto& [n, p] : model->named_parameters()) {
    n_total += p.numel();
    if (p.requires_grad()) n_train += p.numel();
  }
  if (dp.is_main())
    std::printf("finetune: %s on %zu words of %s, %s, trainable %lld of %lld parameters (%.2f%%)%s\n",
              full ? "full fine-tuning" : "LoRA", words.train.size(), data.c_str(),
              full ? "all layers" : ("r=" + std::to_string(cfg.r) + " on " + a.get("target-modules", "fc1,fc2,lm_head")).c_str(),
              (long long)n_train, (long long)n_total, 100.0 * double(n_train) / double(n_total),
                dp.size() > 1 ? (", " + std::to_string(dp.size()) + " ranks").c_str() : "");

  model->to(device);
  train::TrainerOptions topts;
  topts.name = "finetune";
  topts.steps = steps, topts.lr = lr, topts.warmup_steps = steps / 20, topts.min_lr_ratio = 0.05;
  topts.seed = uint64_t(a.get_int("seed", 0));
  train::Trainer trainer(*model, topts, &dp);  // rank 0's adapter on every rank
  trainer.set_loss([&](const train::MicroBatch& mb) {
    lm::Batch b = lm::sample_batch(train_ex, batch, mb.gen);  // the global batch; this rank's rows below
    return train::MicroBatchLoss{
        cross_entropy((*model)(b.ctx.narrow(0, shard.begin, shard.size()).contiguous().to(device)),
                      b.target.narrow(0, shard.begin, shard.size()).contiguous().to(device))};
  });
  trainer.fit();
  const std::vector<double>& losses = trainer.history().losses;
  const std::vector<double>& grad_norms = trainer.history().grad_norms;
  const double train_seconds = trainer.train_seconds();
  if (!dp.is_main()) return 0;
  model->to(Device::cpu);
  const double tuned_loss = lm::evaluate(*model, held);

  std::filesystem::create_directories(out);
  if (full)
    io::save_safetensors(out + "/model.safetensors", model->state_dict(), {model->config().to_metadata()});
  else
    save_pretrained(*model, out);
  write_loss_svg(out + "/loss.svg", losses, (full ? "full fine-tuning on " : "LoRA fine-tuning on ") + data);
  nlohmann::json report = {{"data", data},
                           {"base", base},
                           {"method", full ? "full" : "lora"},
                           {"steps", steps},
                           {"batch", batch},
                           {"lr", lr},
                           {"trainable_parameters", n_train},
                           {"total_parameters", n_total},
                           {"ranks", dp.size()},
                           // after the ranks' average: what one process gets on the global batch
                           {"gradient_norms", grad_norms},
                           {"heldout_loss_base", base_loss},
                           {"heldout_loss_tuned", tuned_loss},
                           {"device", a.get("device", "cpu")},
                           {"train_seconds", train_seconds},
                           {"tokens_per_second", double(steps * batch) / train_seconds}};
  io::write_file_atomic(out + "/report.json", report.dump(2) + "\n");
  std::printf("finetune: held-out loss %.4f -> %.4f nats/char; wrote %s\n", base_loss, tuned_loss, out.c_str());
  return 0;
}

const char* kGenerateHelp = R"(usage: peft generate --base BASE.safetensors [--adapter DIR ...] [options]
       peft generate --model HF_MODEL_DIR --prompt TEXT ...   (see peft generate --model x --help)

Samples words from the base model, or with one or more LoRA adapters. With
several adapters the rows of one batch use different adapters (mixed-batch
inference): row i uses adapter i mod count.

options:
  --adapter DIR    adapter folder written by peft finetune (repeatable)
  --n N            words per adapter (default 10)
  --temperature X  sampling temperature (default 1.0)
  --merge          merge the (single) adapter into the base weights first
  --seed N         random seed (default 0)
)";

int run_generate(const std::vector<std::string>& argv) {
  for (const auto& s : argv)
    if (s == "--model" || s.rfind("--model=", 0) == 0) return run_text_generate(argv);
  Args a(argv, {"base", "n", "temperature", "seed"}, {"merge"}, {"adapter"});
  if (a.help) {
    std::printf("%s", kGenerateHelp);
    return 0;
  }
  auto model = load_charlm(a.required("base"));
  std::vector<std::string> dirs = a.all("adapter");
  const int64_t n = a.get_int("n", 10);
  Generator gen(uint64_t(a.get_int("seed", 0)));
  std::vector<std::string> names = load_adapter_folders(*model, dirs);
  model->eval();
  const int64_t k = model->config().context;
  if (a.has("merge")) {
    if (names.size() != 1) throw UsageError{"--merge needs exactly one --adapter"};
    merge_adapters(*model);
  }
  std::vector<std::string> row_adapter;
  if (names.size() <= 1) {
    row_adapter.assign(size_t(n), names.empty() ? "__base__" : names[0]);
  } else {
    for (int64_t i = 0; i < n * int64_t(names.size()); ++i) row_adapter.push_back(names[size_t(i) % names.size()]);
  }
  const int64_t rows = int64_t(row_adapter.size());
  auto forward = [&](const Tensor& ctx) {
    if (names.size() > 1) return forward_mixed_batch(*model, ctx, row_adapter);
    return (*model)(ctx);
  };
  std::vector<std::string> words = lm::sample_words(forward, rows, k, gen, a.get_double("temperature", 1.0));
  for (int64_t i = 0; i < rows; ++i)
    std::printf("%-12s %s\n", (row_adapter[size_t(i)] == "__base__" ? "base" : row_adapter[size_t(i)]).c_str(),
                words[size_t(i)].c_str());
  return 0;
}

Registrar reg_finetune({"finetune", "LoRA fine-tuning: a decoder LLM (--model) or the character-level model (--base)", run_finetune});
Registrar reg_generate({"generate", "sample words (character LM), or continue a prompt with --model (GPT-2, Llama)", run_generate});

}  // namespace

// Loads a base model written by `peft pretrain`.
std::shared_ptr<lm::CharLM> load_charlm(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  lm::CharLMConfig cfg = lm::CharLMConfig::from_metadata(f->metadata());
  Generator g(0);
  auto model = std::make_shared<lm::CharLM>(cfg, g);
  StateDict sd;
  for (const auto& info : f->tensors()) sd.set(info.name, f->get(info.name, DType::float32));
  model->load_state_dict(sd, true);
  return model;
}

}  // namespace peft::cli
