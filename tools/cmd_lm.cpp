// `peft pretrain` and `peft generate`: the character-level language model of
// the fine-tuning demo (tools/charlm.h).
#include <sys/stat.h>

#include <cmath>
#include <cstdio>

#include "io/safetensors.h"
#include "nn/optim.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/charlm.h"
#include "tools/cli.h"
#include "tools/progress.h"

namespace peft::cli {
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
  lm::Examples train = lm::make_examples(words.train, cfg.context);
  lm::Examples held = lm::make_examples(words.heldout, cfg.context);
  lm::CharLM model(cfg, gen);
  int64_t nparams = 0;
  for (const auto& [n, p] : model.named_parameters()) nparams += p.numel();
  std::printf("pretrain: %zu train / %zu held-out words from %s, model %lld parameters\n",
              words.train.size(), words.heldout.size(), data.c_str(), (long long)nparams);

  nn::AdamW opt(model.named_parameters(), {.lr = lr, .weight_decay = 0.0});
  nn::WarmupCosineSchedule sched(opt, steps / 20, steps, 0.05);
  Progress bar("pretrain", steps);
  double ema = 0;
  for (int64_t s = 0; s < steps; ++s) {
    sched.apply(s);
    lm::Batch b = lm::sample_batch(train, batch, gen);
    Tensor loss = cross_entropy(model(b.ctx), b.target);
    loss.backward();
    opt.step();
    opt.zero_grad();
    double l = loss.item();
    if (!std::isfinite(l)) fail("pretrain: loss became ", l, " at step ", s + 1, "; nothing was written");
    ema = s == 0 ? l : 0.95 * ema + 0.05 * l;
    char info[96];
    std::snprintf(info, sizeof info, "loss %.3f  %.0f tok/s", ema,
                  double((s + 1) * batch) / std::max(1e-9, bar.elapsed()));
    bar.update(s + 1, info);
  }
  double hl = lm::evaluate(model, held);
  io::SaveOptions so;
  so.metadata = cfg.to_metadata();
  io::save_safetensors(out, model.state_dict(), so);
  std::printf("pretrain: held-out loss %.4f nats/char; wrote %s\n", hl, out.c_str());
  return 0;
}

Registrar reg_pretrain({"pretrain", "train the character-level base model on a word list", run_pretrain});

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
