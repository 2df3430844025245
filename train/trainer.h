// The training loop an application calls: the model's trainable parameters (a LoRA adapter
// after inject_adapter_in_model, or every parameter of a small model) are trained on a loss
// the application computes per micro-batch. The Trainer owns everything around it: gradient
// accumulation, clipping, AdamW with warm-up and a cosine, linear or constant schedule, the
// divergence guard, data parallelism over MPI ranks, evaluation every N steps, progress,
// atomic checkpoints and bit-exact resume.
//
//   train::TrainerOptions o;
//   o.steps = 200, o.lr = 2e-4, o.warmup_steps = 10, o.checkpoint_dir = "out/checkpoint";
//   train::Trainer trainer(model, o);
//   trainer.set_loss([&](const train::MicroBatch& mb) {
//     Batch b = data.batch(mb.step, mb.micro);          // the same batch for the same step
//     return train::MicroBatchLoss{causal_lm_loss(model, b), double(b.tokens)};
//   });
//   trainer.fit();                                       // or trainer.resume(dir); trainer.fit();
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nn/module.h"
#include "nn/optim.h"
#include "runtime/generator.h"
#include "runtime/tensor.h"
#include "train/data_parallel.h"
#include "train/guard.h"

namespace peft::train {

enum class Schedule { constant, linear, cosine };
// "constant", "linear", "cosine"; anything else is a peft::Error listing these.
Schedule parse_schedule(const std::string& name);
const char* schedule_name(Schedule s);
// The learning-rate multiplier of optimizer step `step` (0-based): step/warmup during warm-up,
// then transformers' schedules: constant 1; linear down to min_ratio at `total`; cosine
// (get_cosine_schedule_with_warmup) max(min_ratio, 0.5 (1 + cos(pi progress))).
double lr_multiplier(Schedule s, int64_t step, int64_t warmup, int64_t total, double min_ratio = 0.0);

struct TrainerOptions {
  std::string name = "train";  // prefixes progress lines and error messages ("finetune")
  int64_t steps = 100;         // optimizer steps
  int64_t grad_accum = 1;      // micro-batches per optimizer step
  // AdamW (torch.optim.AdamW's defaults, except weight decay 0)
  double lr = 1e-3;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  Schedule schedule = Schedule::cosine;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;
  // > 0: gradients are clipped to this L2 norm (clip_grad_norm_); else only measured
  double max_grad_norm = 0.0;
  // stop a diverging run (DivergenceGuard); its warm-up is max(warmup_steps, steps / 20)
  bool divergence_guard = true;
  // eval_fn every eval_every steps (0: never during training)
  int64_t eval_every = 0;
  // a checkpoint in checkpoint_dir every checkpoint_every steps (0 or no dir: none)
  int64_t checkpoint_every = 0;
  std::string checkpoint_dir;
  // the trainer's generator (MicroBatch::gen: batch sampling) and the dropout streams
  uint64_t seed = 0;
  // progress lines (rank 0 only); nullptr: silent
  FILE* log = stderr;
};

// What the loss callback is asked for: micro-batch `micro` (0 .. grad_accum-1) of optimizer
// step `step` (0-based), on this rank.
struct MicroBatch {
  int64_t step = 0;
  int64_t micro = 0;
  Generator& gen;          // the trainer's generator: saved in checkpoints, restored on resume
  DataParallel& dp;        // the ranks (rank(), size(), shard(), gather_rows())
};

struct MicroBatchLoss {
  Tensor loss;             // a scalar: the mean loss of this rank's micro-batch
  double weight = 1.0;     // the items it averages over (tokens, rows): micro-batches and ranks
                           // are averaged with these weights, so that a step's gradient is the
                           // mean over every item of the step
  double backward_scale = 1.0;  // the loss's gradient is multiplied by this: dp.size() for a
                                // loss over rows gathered from every rank (dp.gather_rows)
};

// One optimizer step, as the progress callback sees it.
struct StepReport {
  int64_t step = 0;        // steps done (1-based)
  int64_t steps = 0;       // of
  double loss = 0;         // the step's mean loss over micro-batches and ranks
  double grad_norm = 0;    // before clipping
  double lr = 0;
  double seconds = 0;
  double weight = 0;       // items (all ranks)
  std::optional<double> eval_loss;  // when evaluated after this step
};

struct TrainHistory {
  std::vector<double> losses, grad_norms, learning_rates, step_seconds, weights;
  std::vector<std::pair<int64_t, double>> evals;  // (steps done, eval loss)
};

class Trainer {
 public:
  using LossFn = std::function<MicroBatchLoss(const MicroBatch&)>;
  using EvalFn = std::function<double()>;
  using StepFn = std::function<void(const StepReport&)>;
  using CheckpointFn = std::function<void(const std::string& dir)>;

  // Trains the parameters of `model` that require grad, in named_parameters() order. `dp`:
  // the ranks of a data-parallel job (their parameters are made equal to rank 0's here);
  // nullptr: this process alone. The model and dp must outlive the trainer.
  Trainer(nn::Module& model, TrainerOptions opts, DataParallel* dp = nullptr);

  void set_loss(LossFn fn) { loss_fn_ = std::move(fn); }
  // Called on rank 0 in eval mode without autograd; returns an evaluation loss.
  void set_eval(EvalFn fn) { eval_fn_ = std::move(fn); }
  void on_step(StepFn fn) { step_fn_ = std::move(fn); }
  // Called on rank 0 with a checkpoint's folder before it replaces the previous one: add files.
  void on_checkpoint(CheckpointFn fn) { checkpoint_fn_ = std::move(fn); }

  // Runs the remaining optimizer steps (all of them, or those after a resume). A diverging run
  // stops with a peft::Error that says why and where the last checkpoint is.
  void fit();
  // The evaluation loss now (eval_fn on rank 0; NaN elsewhere or without one).
  double evaluate();

  // Writes a checkpoint into `dir` atomically (a crash leaves the previous one whole): the
  // trainable tensors (trainable.safetensors), the PEFT adapter folder when the model holds
  // adapters (adapter/), the AdamW state (optimizer.safetensors) and trainer_state.json (step,
  // generator, guard, history, options). Rank 0 writes; the others return.
  void save_checkpoint(const std::string& dir);
  // Restores a checkpoint of this run (same trainable names and shapes, same steps, lr, grad
  // accumulation, ...; a difference is a peft::Error naming it, before anything changes). The
  // next fit() continues at its step and ends with the bits of an uninterrupted run.
  void resume(const std::string& dir);
  // Whether `dir` holds a complete checkpoint.
  static bool has_checkpoint(const std::string& dir);

  int64_t step() const { return step_; }
  const TrainerOptions& options() const { return opts_; }
  const nn::NamedTensors& trainable() const { return trainable_; }
  int64_t trainable_numel() const;
  nn::AdamW& optimizer() { return *opt_; }
  Generator& generator() { return gen_; }
  DataParallel& data_parallel() { return *dp_; }
  const TrainHistory& history() const { return history_; }
  // Seconds spent in fit() (this process, resumed part only).
  double train_seconds() const { return train_seconds_; }

 private:
  void position_dropout_stream(int64_t step, int64_t micro);
  [[noreturn]] void stop(const std::string& why) const;

  nn::Module& model_;
  TrainerOptions opts_;
  std::unique_ptr<DataParallel> own_dp_;
  DataParallel* dp_;
  nn::NamedTensors trainable_;
  std::unique_ptr<nn::AdamW> opt_;
  Generator gen_;
  DivergenceGuard guard_;
  TrainHistory history_;
  LossFn loss_fn_;
  EvalFn eval_fn_;
  StepFn step_fn_;
  CheckpointFn checkpoint_fn_;
  int64_t step_ = 0;
  double train_seconds_ = 0;
  std::string last_checkpoint_;
};

// Replaces folder `dir` by what `write(tmp)` writes into a fresh temporary folder beside it:
// a crash or an exception leaves the old `dir` (or none) and no half-written one.
void replace_dir_atomic(const std::string& dir, const std::function<void(const std::string& tmp)>& write);

}  // namespace peft::train
