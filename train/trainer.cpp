#include "train/trainer.h"

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "adapters/folder.h"
#include "adapters/tuner.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "runtime/autograd.h"
#include "runtime/device.h"
#include "runtime/error.h"
#include "runtime/ops.h"
#include "train/progress.h"

namespace peft::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

Schedule parse_schedule(const std::string& name) {
  if (name == "constant") return Schedule::constant;
  if (name == "linear") return Schedule::linear;
  if (name == "cosine") return Schedule::cosine;
  fail("unknown learning-rate schedule '", name, "'; use constant, linear or cosine");
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::constant: return "constant";
    case Schedule::linear: return "linear";
    case Schedule::cosine: return "cosine";
  }
  return "?";
}

double lr_multiplier(Schedule s, int64_t step, int64_t warmup, int64_t total, double min_ratio) {
  if (warmup < 0 || total < 0) fail("[lr schedule] warmup and total steps must be >= 0");
  switch (s) {
    case Schedule::cosine: return nn::warmup_cosine_multiplier(step, warmup, total, min_ratio);
    case Schedule::constant:
      return step < warmup ? double(step) / double(std::max<int64_t>(1, warmup)) : 1.0;
    case Schedule::linear:
      if (step < warmup) return double(step) / double(std::max<int64_t>(1, warmup));
      return std::max(min_ratio, std::max(0.0, double(total - step) / double(std::max<int64_t>(1, total - warmup))));
  }
  return 1.0;
}

// ------------------------------------------------------------------------------------------

namespace {

// The pid in a temporary name ".NAME.<kind><pid>.<counter>.<random>", or 0.
long temp_owner(const std::string& file, const std::string& prefix) {
  if (file.compare(0, prefix.size(), prefix) != 0) return 0;
  const std::string rest = file.substr(prefix.size());
  char* end = nullptr;
  const long pid = std::strtol(rest.c_str(), &end, 10);
  return pid > 0 && end != rest.c_str() && *end == '.' ? pid : 0;
}

bool process_gone(long pid) { return ::kill(pid_t(pid), 0) != 0 && errno == ESRCH; }

// Cleans up after a writer of folder `dir` that was killed: its half-written ".saving." folders
// go; if it died between its two renames, its ".old." folder (the previous complete one) is put
// back as `dir`.
void recover_dir(const fs::path& target) {
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  const std::string name = target.filename().string();
  std::error_code ec;
  std::vector<fs::path> saving, old;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string f = it->path().filename().string();
    if (long pid = temp_owner(f, "." + name + ".saving."); pid && process_gone(pid)) saving.push_back(it->path());
    if (long pid = temp_owner(f, "." + name + ".old."); pid && process_gone(pid)) old.push_back(it->path());
  }
  for (const fs::path& p : saving) fs::remove_all(p, ec);
  for (const fs::path& p : old) {
    if (!fs::exists(target, ec)) fs::rename(p, target, ec);
    else fs::remove_all(p, ec);
  }
}

}  // namespace

void replace_dir_atomic(const std::string& dir, const std::function<void(const std::string& tmp)>& write) {
  const fs::path target(dir);
  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  fs::create_directories(parent);
  recover_dir(target);
  const std::string suffix = io::unique_temp_suffix();
  const fs::path tmp = parent / ("." + target.filename().string() + ".saving." + suffix);
  const fs::path old = parent / ("." + target.filename().string() + ".old." + suffix);
  std::error_code ec;
  try {
    fs::create_directories(tmp);
    write(tmp.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  // a kill between the two renames leaves the previous folder as ".old.": recover_dir puts it back
  if (fs::exists(target)) fs::rename(target, old);
  fs::rename(tmp, target);
  io::fsync_dir(parent.string());
  fs::remove_all(old, ec);
}

// ------------------------------------------------------------------------------------------

namespace {

json generator_to_json(const Generator::State& s) {
  return {{"seed", s.seed},
          {"counter", s.counter},
          {"buffer", {s.buf[0], s.buf[1], s.buf[2], s.buf[3]}},
          {"buffered", s.buffered}};
}

Generator::State generator_from_json(const json& j) {
  Generator::State s;
  s.seed = j.at("seed").get<uint64_t>();
  s.counter = j.at("counter").get<uint64_t>();
  for (int i = 0; i < 4; ++i) s.buf[i] = j.at("buffer").at(size_t(i)).get<uint32_t>();
  s.buffered = j.at("buffered").get<int>();
  if (s.buffered < 0 || s.buffered > 4) fail("generator state: 'buffered' must be 0..4, not ", s.buffered);
  return s;
}

// The options a resumed run must share with the checkpoint's (anything else changes the bits).
json options_identity(const TrainerOptions& o) {
  return {{"steps", o.steps},       {"grad_accum", o.grad_accum},     {"lr", o.lr},
          {"weight_decay", o.weight_decay}, {"beta1", o.beta1},       {"beta2", o.beta2},
          {"eps", o.eps},           {"schedule", schedule_name(o.schedule)},
          {"warmup_steps", o.warmup_steps}, {"min_lr_ratio", o.min_lr_ratio},
          {"max_grad_norm", o.max_grad_norm}, {"seed", o.seed}};
}

constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kTrainableFile = "trainable.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";

}  // namespace

Trainer::Trainer(nn::Module& model, TrainerOptions opts, DataParallel* dp)
    : model_(model),
      opts_(std::move(opts)),
      dp_(dp),
      gen_(opts_.seed),
      guard_(std::max<int64_t>(opts_.warmup_steps, opts_.steps / 20)) {
  const std::string& n = opts_.name;
  if (opts_.steps <= 0) fail(n, ": steps must be positive, not ", opts_.steps);
  if (opts_.grad_accum <= 0) fail(n, ": gradient accumulation must be >= 1, not ", opts_.grad_accum);
  if (!(opts_.lr > 0) || !std::isfinite(opts_.lr)) fail(n, ": the learning rate must be positive, not ", opts_.lr);
  if (opts_.warmup_steps < 0 || opts_.eval_every < 0 || opts_.checkpoint_every < 0)
    fail(n, ": warm-up, eval and checkpoint intervals must be >= 0");
  if (!(opts_.min_lr_ratio >= 0 && opts_.min_lr_ratio <= 1)) fail(n, ": min_lr_ratio must be in [0, 1]");
  if (opts_.checkpoint_every > 0 && opts_.checkpoint_dir.empty())
    fail(n, ": checkpoint_every is set but checkpoint_dir is empty");
  if (!dp_) {
    own_dp_ = std::make_unique<DataParallel>(n, comm::single_process());
    dp_ = own_dp_.get();
  }
  for (const auto& [name, p] : model_.named_parameters())
    if (p.requires_grad()) trainable_.emplace_back(name, p);
  if (trainable_.empty())
    fail(n, ": the model has no parameter that requires grad (inject an adapter, or unfreeze parameters)");
  dp_->broadcast_parameters(trainable_);
  nn::AdamWOptions ao;
  ao.lr = opts_.lr, ao.weight_decay = opts_.weight_decay, ao.beta1 = opts_.beta1, ao.beta2 = opts_.beta2;
  ao.eps = opts_.eps;
  opt_ = std::make_unique<nn::AdamW>(trainable_, ao);
}

int64_t Trainer::trainable_numel() const {
  int64_t n = 0;
  for (const auto& [name, p] : trainable_) n += p.numel();
  return n;
}

void Trainer::position_dropout_stream(int64_t step, int64_t micro) {
  // Dropout draws from the default generator. Each micro-batch of each rank gets its own
  // stretch of a stream fixed by (seed, rank), so masks depend on the step alone: a resumed run
  // draws the masks of the uninterrupted one, and ranks never share masks.
  Generator::State st;
  st.seed = opts_.seed * 0x9e3779b97f4a7c15ull + uint64_t(dp_->rank()) + 0x632be59bd9b4e019ull;
  st.counter = uint64_t(step * opts_.grad_accum + micro) << 36;
  default_generator().set_state(st);
}

void Trainer::stop(const std::string& why) const {
  fail(opts_.name, ": ", why, "; stopping (",
       last_checkpoint_.empty() ? std::string("no checkpoint was written in this run")
                                : "the last checkpoint, " + last_checkpoint_ + ", is intact",
       "); try a lower learning rate");
}

double Trainer::evaluate() {
  if (!eval_fn_ || !dp_->is_main()) return NAN;
  const bool was_training = model_.is_training();
  model_.eval();
  double loss;
  {
    NoGradGuard ng;
    loss = eval_fn_();
  }
  if (was_training) model_.train();
  return loss;
}

void Trainer::fit() {
  if (!loss_fn_) fail(opts_.name, ": no loss function (Trainer::set_loss)");
  FILE* log = dp_->is_main() ? opts_.log : nullptr;
  Progress bar(opts_.name, opts_.steps, log, step_);
  const auto t_fit = std::chrono::steady_clock::now();
  model_.train();
  while (step_ < opts_.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = opts_.lr * lr_multiplier(opts_.schedule, step_, opts_.warmup_steps, opts_.steps, opts_.min_lr_ratio);
    opt_->set_lr(lr);
    double weight_sum = 0, loss_sum = 0;
    for (int64_t m = 0; m < opts_.grad_accum; ++m) {
      position_dropout_stream(step_, m);
      MicroBatchLoss ml = loss_fn_(MicroBatch{step_, m, gen_, *dp_});
      if (!ml.loss.defined() || ml.loss.numel() != 1)
        fail(opts_.name, ": the loss function must return a scalar loss, got ",
             ml.loss.defined() ? ml.loss.desc() : std::string("an undefined tensor"));
      if (!(ml.weight > 0) || !std::isfinite(ml.weight))
        fail(opts_.name, ": a micro-batch's weight must be positive, not ", ml.weight, " (step ", step_ + 1, ")");
      // one micro-batch: its own mean. Several: sum of weight x mean, divided below by the sum
      const double factor = (opts_.grad_accum == 1 ? 1.0 : ml.weight) * ml.backward_scale;
      (factor == 1.0 ? ml.loss : mul(ml.loss, factor)).backward();
      loss_sum += ml.loss.item() * ml.weight;
      weight_sum += ml.weight;
    }
    if (opts_.grad_accum > 1) {
      NoGradGuard ng;
      for (auto& [name, p] : trainable_)
        if (Tensor g = p.grad(); g.defined()) Tensor(p).set_grad(div(g, weight_sum));
    }
    const double loss = dp_->average_gradients(trainable_, loss_sum / weight_sum, weight_sum);
    const double grad_norm = nn::clip_grad_norm_(trainable_, opts_.max_grad_norm > 0 ? opts_.max_grad_norm : INFINITY);
    if (!std::isfinite(loss) || !std::isfinite(grad_norm) || opts_.divergence_guard)
      if (std::string why = guard_.check(step_, loss, grad_norm); !why.empty()) stop(why);
    opt_->step();
    opt_->zero_grad();
    ++step_;
    cuda_synchronize();
    trim_cpu_cache();  // blocks sized for an earlier batch's lengths go back to the OS
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    history_.losses.push_back(loss);
    history_.grad_norms.push_back(grad_norm);
    history_.learning_rates.push_back(lr);
    history_.step_seconds.push_back(seconds);
    history_.weights.push_back(weight_sum * double(dp_->size()));
    StepReport r{step_, opts_.steps, loss, grad_norm, lr, seconds, history_.weights.back(), std::nullopt};
    if (opts_.eval_every > 0 && step_ % opts_.eval_every == 0 && eval_fn_ && dp_->is_main()) {
      r.eval_loss = evaluate();
      history_.evals.emplace_back(step_, *r.eval_loss);
    }
    if (step_fn_) step_fn_(r);
    char info[128];
    int len = std::snprintf(info, sizeof info, "loss %.4f  %.2f s/step", loss, seconds);
    if (r.eval_loss) std::snprintf(info + len, sizeof info - size_t(len), "  eval %.4f", *r.eval_loss);
    bar.update(step_, info);
    if (opts_.checkpoint_every > 0 && step_ % opts_.checkpoint_every == 0 && step_ < opts_.steps)
      save_checkpoint(opts_.checkpoint_dir);
  }
  train_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_fit).count();
}

// ------------------------------------------------------------------------------------------

void Trainer::save_checkpoint(const std::string& dir) {
  if (!dp_->is_main()) return;
  replace_dir_atomic(dir, [&](const std::string& tmp) {
    StateDict weights;
    for (const auto& [name, p] : trainable_) weights.set(name, p.to(Device::cpu));
    io::save_safetensors(tmp + "/" + kTrainableFile, weights);
    StateDict opt_state = opt_->state_dict();
    StateDict opt_cpu;
    for (const auto& [k, t] : opt_state) opt_cpu.set(k, t.to(Device::cpu));
    io::save_safetensors(tmp + "/" + kOptimizerFile, opt_cpu);
    if (peft_state(model_) != nullptr) save_pretrained(model_, tmp + "/adapter");
    const DivergenceGuard::State g = guard_.state();
    json evals = json::array();
    for (const auto& [s, l] : history_.evals) evals.push_back({s, l});
    json state = {{"step", step_},
                  {"options", options_identity(opts_)},
                  {"generator", generator_to_json(gen_.get_state())},
                  {"guard", {{"ema", g.ema}, {"best", g.best}, {"started", g.started}, {"recent_grad_norms", g.recent_grad_norms}}},
                  {"history",
                   {{"losses", history_.losses},
                    {"grad_norms", history_.grad_norms},
                    {"learning_rates", history_.learning_rates},
                    {"step_seconds", history_.step_seconds},
                    {"weights", history_.weights},
                    {"evals", evals}}},
                  {"ranks", dp_->size()}};
    if (checkpoint_fn_) checkpoint_fn_(tmp);
    // written last: a folder with trainer_state.json is complete
    io::write_file_atomic(tmp + "/" + kStateFile, state.dump(1) + "\n");
  });
  last_checkpoint_ = dir;
}

bool Trainer::has_checkpoint(const std::string& dir) {
  recover_dir(fs::path(dir));
  std::error_code ec;
  return fs::is_regular_file(fs::path(dir) / kStateFile, ec) && fs::is_regular_file(fs::path(dir) / kTrainableFile, ec) &&
         fs::is_regular_file(fs::path(dir) / kOptimizerFile, ec);
}

void Trainer::resume(const std::string& dir) {
  const std::string& n = opts_.name;
  if (!has_checkpoint(dir))
    fail(n, ": '", dir, "' holds no complete checkpoint (", kStateFile, ", ", kTrainableFile, ", ", kOptimizerFile, ")");
  json state;
  {
    std::ifstream f(fs::path(dir) / kStateFile);
    try {
      state = json::parse(f);
    } catch (const json::exception& e) {
      fail(n, ": ", dir, "/", kStateFile, " is not valid JSON: ", e.what());
    }
  }
  int64_t step;
  Generator::State gen_state;
  DivergenceGuard::State guard_state;
  TrainHistory hist;
  try {
    const json want = options_identity(opts_), have = state.at("options");
    for (auto it = want.begin(); it != want.end(); ++it)
      if (!have.contains(it.key()) || have.at(it.key()) != it.value())
        fail(n, ": the checkpoint in ", dir, " was written with ", it.key(), " = ",
             have.contains(it.key()) ? have.at(it.key()).dump() : std::string("(none)"), ", this run has ",
             it.value().dump(), "; resume with the same settings");
    if (state.at("ranks").get<int>() != dp_->size())
      fail(n, ": the checkpoint in ", dir, " was written by ", state.at("ranks").get<int>(), " ranks, this run has ",
           dp_->size());
    step = state.at("step").get<int64_t>();
    if (step < 0 || step > opts_.steps) fail(n, ": the checkpoint's step ", step, " is outside 0..", opts_.steps);
    gen_state = generator_from_json(state.at("generator"));
    const json& g = state.at("guard");
    guard_state = {g.at("ema").get<double>(), g.at("best").get<double>(), g.at("started").get<bool>(),
                   g.at("recent_grad_norms").get<std::vector<double>>()};
    const json& h = state.at("history");
    hist.losses = h.at("losses").get<std::vector<double>>();
    hist.grad_norms = h.at("grad_norms").get<std::vector<double>>();
    hist.learning_rates = h.at("learning_rates").get<std::vector<double>>();
    hist.step_seconds = h.at("step_seconds").get<std::vector<double>>();
    hist.weights = h.at("weights").get<std::vector<double>>();
    for (const json& e : h.at("evals")) hist.evals.emplace_back(e.at(0).get<int64_t>(), e.at(1).get<double>());
    if (int64_t(hist.losses.size()) != step)
      fail(n, ": the checkpoint's history has ", hist.losses.size(), " steps, its step is ", step);
  } catch (const json::exception& e) {
    fail(n, ": ", dir, "/", kStateFile, " is incomplete or malformed: ", e.what());
  }
  // the tensors: every trainable one, same shapes, nothing else
  const StateDict weights = io::load_safetensors((fs::path(dir) / kTrainableFile).string());
  for (const auto& [name, p] : trainable_) {
    const Tensor* t = weights.find(name);
    if (!t) fail(n, ": the checkpoint in ", dir, " has no '", name, "' (a different adapter or model?)");
    if (t->shape() != p.shape() || t->dtype() != p.dtype())
      fail(n, ": the checkpoint's '", name, "' is ", t->desc(), ", the model's is ", p.desc());
  }
  if (weights.size() != trainable_.size())
    fail(n, ": the checkpoint in ", dir, " holds ", weights.size(), " trainable tensors, the model has ",
         trainable_.size());
  const StateDict opt_state = io::load_safetensors((fs::path(dir) / kOptimizerFile).string());
  opt_->load_state_dict(opt_state);  // validates before it changes anything
  {
    NoGradGuard ng;
    for (const auto& [name, p] : trainable_) Tensor(p).copy_(weights.at(name));
  }
  gen_.set_state(gen_state);
  guard_.set_state(guard_state);
  history_ = std::move(hist);
  step_ = step;
  last_checkpoint_ = dir;
}

}  // namespace peft::train
