// A complete application of the library's Trainer: LoRA supervised fine-tuning of a decoder
// LLM from a GGUF file (its quantized weights stay quantized and frozen) on chat or
// prompt/completion JSONL, with a held-out evaluation, checkpoints every 20 steps and resume.
// docs/training.md walks through it; CI builds it and runs it on the tiny test model.
//
//   finetune_decoder MODEL.gguf TRAIN.jsonl OUT_DIR [STEPS]
//
// Run it again after an interruption: it continues from OUT_DIR/checkpoint and ends with the
// same adapter bits as an uninterrupted run.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "adapters/peft.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/pretrained.h"
#include "runtime/autograd.h"
#include "train/lm_data.h"
#include "train/trainer.h"

using namespace peft;

namespace {

// The mean loss per scored token over a whole dataset, without autograd.
double eval_loss(nn::Module& model, const train::LMDataset& data, int64_t pad_id) {
  NoGradGuard no_grad;
  double sum = 0, tokens = 0;
  for (size_t first = 0; first < data.examples.size(); first += 8) {
    std::vector<size_t> rows;
    for (size_t i = first; i < std::min(data.examples.size(), first + 8); ++i) rows.push_back(i);
    train::LMBatch b = train::collate(data, rows, pad_id);
    sum += train::causal_lm_loss(model, b).item() * double(b.loss_tokens);
    tokens += double(b.loss_tokens);
  }
  return sum / tokens;
}

int run(const std::string& model_path, const std::string& data_path, const std::string& out, int64_t steps) {
  // 1. The base model, its tokenizer, chat template and end-of-sequence token.
  std::shared_ptr<nn::PreTrainedModel> model = nn::load_pretrained(model_path);
  auto gguf = io::GGUFFile::open(model_path);
  const Tokenizer tok = Tokenizer::from_gguf(*gguf);
  const nn::GenerateOptions gen = nn::gguf_generation_config(model_path);
  const int64_t eos = gen.eos_token_ids.empty() ? -1 : gen.eos_token_ids[0];
  const int64_t pad = gen.pad_token_id.value_or(std::max<int64_t>(eos, 0));

  // 2. The data: only completion / assistant tokens are scored; every 10th example held out.
  train::LMDataOptions dopt;
  dopt.max_length = 256;
  dopt.chat_template = gguf->get_string("tokenizer.chat_template", "chatml");
  dopt.eos_id = eos;
  train::LMDataset all = train::load_lm_data(data_path, tok, dopt), train_set = all, eval_set = all;
  train_set.examples.clear(), eval_set.examples.clear();
  for (size_t i = 0; i < all.examples.size(); ++i) (i % 10 == 9 ? eval_set : train_set).examples.push_back(all.examples[i]);
  if (train_set.examples.empty() || eval_set.examples.empty())
    throw std::runtime_error(data_path + ": needs at least 10 examples (every 10th is held out)");
  std::printf("%zu train / %zu eval examples, %lld cut at %lld tokens\n", train_set.examples.size(),
              eval_set.examples.size(), (long long)all.truncated, (long long)dopt.max_length);

  // 3. A LoRA adapter on every linear layer of the blocks; only it will train.
  LoraConfig cfg;
  cfg.r = 16;
  cfg.lora_alpha = 32;
  cfg.lora_dropout = 0.05;
  cfg.target_modules = TargetModules::regex("all-linear");
  inject_adapter_in_model(cfg, *model);
  model->set_gradient_checkpointing(true);  // recompute each block in backward: less memory

  // 4. The Trainer: AdamW, warm-up then cosine decay, clipping, checkpoints every 20 steps.
  train::TrainerOptions o;
  o.name = "finetune";
  o.steps = steps;
  o.lr = 2e-4;
  o.warmup_steps = std::max<int64_t>(1, steps / 10);
  o.max_grad_norm = 1.0;
  o.checkpoint_every = 20;
  o.checkpoint_dir = out + "/checkpoint";
  train::Trainer trainer(*model, o);
  const int64_t batch = 4;
  train::LengthBucketBatcher batches(train_set, std::min<int64_t>(batch, int64_t(train_set.examples.size())), o.seed);
  // A micro-batch is a pure function of the step: a resumed run sees the same batches.
  trainer.set_loss([&](const train::MicroBatch& mb) {
    train::LMBatch b = train::collate(train_set, batches.rows(mb.step), pad);
    return train::MicroBatchLoss{train::causal_lm_loss(*model, b), double(b.loss_tokens)};
  });
  trainer.set_eval([&] { return eval_loss(*model, eval_set, pad); });

  if (train::Trainer::has_checkpoint(o.checkpoint_dir)) {
    trainer.resume(o.checkpoint_dir);
    std::printf("resumed at step %lld\n", (long long)trainer.step());
  }
  const double before = trainer.evaluate();
  trainer.fit();
  const double after = trainer.evaluate();
  std::printf("eval loss %.4f -> %.4f (perplexity %.2f -> %.2f)\n", before, after, std::exp(before), std::exp(after));

  // 5. The adapter as a PEFT folder: Python's PeftModel.from_pretrained loads it unchanged.
  save_pretrained(*model, out + "/adapter");
  std::printf("wrote %s/adapter\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::fprintf(stderr, "usage: %s MODEL.gguf TRAIN.jsonl OUT_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  try {
    return run(argv[1], argv[2], argv[3], argc == 5 ? std::stoll(argv[4]) : 100);
  } catch (const std::exception& e) {  // peft::Error says which op, module, file or line
    std::fprintf(stderr, "finetune_decoder: %s\n", e.what());
    return 1;
  }
}
