// train/: the Trainer (accumulation, schedules, guard, checkpoints, bit-exact resume), the
// epoch sampler and the atomic folder writer.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "adapters/peft.h"
#include "io/safetensors.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tests/testing.h"
#include "tools/host_models.h"
#include "train/sampler.h"
#include "train/trainer.h"

using namespace peft;
namespace fs = std::filesystem;
using testing::error_of;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A fresh temporary folder, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("peft_train_test_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(Generator(uint64_t(clock())).next_u32()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// An MLP (10 -> 20 -> 2) with a LoRA adapter (dropout 0.2, so the dropout stream matters) on
// every linear layer: the same bits for the same seed.
std::shared_ptr<nn::Module> lora_mlp(double dropout = 0.2) {
  Generator g(3);
  tools::HostOptions o;
  o.gen = &g;
  auto model = tools::build_host_model("mlp", {{"in", 10}, {"hidden", 20}, {"out", 2}}, o);
  manual_seed(17);
  LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.lora_dropout = dropout;
  cfg.target_modules = TargetModules::list({"lin0", "lin1", "lin2"});
  cfg.init_lora_weights = false;  // B random too: every parameter moves from step 1
  inject_adapter_in_model(cfg, *model);
  return model;
}

// A regression task: a fixed data set of 64 rows.
struct Data {
  Tensor x, y;
  Data() {
    Generator g(99);
    x = randn({64, 10}, g);
    y = randn({64, 2}, g);
  }
  // rows [begin, begin + n) of the step's shuffled order
  std::pair<Tensor, Tensor> rows(train::EpochSampler& s, int64_t first, int64_t n) const {
    std::vector<int64_t> idx;
    for (size_t i : s.take(first, n)) idx.push_back(int64_t(i));
    Tensor ix = from_vector(idx, {n});
    return {index_select(x, 0, ix), index_select(y, 0, ix)};
  }
};

Tensor mse(const Tensor& a, const Tensor& b) { return mean(mul(sub(a, b), sub(a, b))); }

train::TrainerOptions options(const std::string& ckpt_dir = "") {
  train::TrainerOptions o;
  o.name = "test";
  o.steps = 10;
  o.grad_accum = 2;
  o.lr = 1e-2;
  o.weight_decay = 0.01;
  o.warmup_steps = 2;
  o.max_grad_norm = 1.0;
  o.seed = 5;
  o.log = nullptr;
  if (!ckpt_dir.empty()) o.checkpoint_every = 4, o.checkpoint_dir = ckpt_dir;
  return o;
}

// Micro-batches of 8 rows then 4 rows (weights 8 and 4): the loss function of every run below.
void set_loss(train::Trainer& t, nn::Module& model, const Data& d, train::EpochSampler& s,
              int64_t crash_at_step = -1) {
  t.set_loss([&, crash_at_step](const train::MicroBatch& mb) {
    if (mb.step == crash_at_step) throw std::runtime_error("simulated crash");
    const int64_t n = mb.micro == 0 ? 8 : 4;
    auto [x, y] = d.rows(s, mb.step * 12 + mb.micro * 8, n);
    // a draw from the trainer's generator (as batch sampling would): resume must restore it
    const double jitter = 1.0 + 0.5 * mb.gen.next_double();
    return train::MicroBatchLoss{mul(mse(model.forward(x), y), jitter), double(n)};
  });
}

std::vector<std::vector<float>> trainable_values(const train::Trainer& t) {
  std::vector<std::vector<float>> v;
  for (const auto& [n, p] : t.trainable()) v.push_back(p.to_vector<float>());
  return v;
}

}  // namespace

TEST_CASE("Trainer: a run resumed from a checkpoint ends with the bits of an uninterrupted run") {
  TempDir tmp;
  Data d;
  // uninterrupted
  auto m1 = lora_mlp();
  train::EpochSampler s1(64, 5);
  train::Trainer t1(*m1, options());
  set_loss(t1, *m1, d, s1);
  t1.fit();
  CHECK(t1.step() == 10);
  CHECK(t1.history().losses.size() == 10);

  // interrupted after step 6 (checkpoint at step 4), then resumed in a new process's objects
  const std::string ckpt = tmp / "ckpt";
  {
    auto m2 = lora_mlp();
    train::EpochSampler s2(64, 5);
    train::Trainer t2(*m2, options(ckpt));
    set_loss(t2, *m2, d, s2, /*crash_at_step=*/6);
    CHECK_THROWS_WITH_AS(t2.fit(), "simulated crash", std::runtime_error);
    CHECK(t2.step() == 6);
  }
  REQUIRE(train::Trainer::has_checkpoint(ckpt));
  CHECK(fs::exists(fs::path(ckpt) / "adapter" / "adapter_config.json"));  // a PEFT folder too
  auto m3 = lora_mlp();
  for (auto& [n, p] : m3->named_parameters())  // the checkpoint, not the init, must set these
    if (p.requires_grad()) Tensor(p).fill_(0.5);
  train::EpochSampler s3(64, 5);
  train::Trainer t3(*m3, options(ckpt));
  set_loss(t3, *m3, d, s3);
  t3.resume(ckpt);
  CHECK(t3.step() == 4);
  t3.fit();
  CHECK(t3.step() == 10);
  CHECK(trainable_values(t3) == trainable_values(t1));
  CHECK(t3.history().losses == t1.history().losses);
  CHECK(t3.history().grad_norms == t1.history().grad_norms);

  // without the optimizer state (a fresh AdamW) the same resume gives other bits
  auto m4 = lora_mlp();
  train::EpochSampler s4(64, 5);
  train::Trainer t4(*m4, options(ckpt));
  set_loss(t4, *m4, d, s4);
  t4.resume(ckpt);
  t4.optimizer().load_state_dict([&] {
    StateDict sd;
    for (const auto& [n, p] : t4.trainable()) sd.set(n + ".step", from_vector(std::vector<int64_t>{0}, {}));
    sd.set("optimizer.step", from_vector(std::vector<int64_t>{0}, {}));
    sd.set("optimizer.lr", from_vector(std::vector<double>{1e-2}, {}));
    return sd;
  }());
  t4.fit();
  CHECK(trainable_values(t4) != trainable_values(t1));
}

TEST_CASE("Trainer: resume refuses another run's checkpoint and changes nothing") {
  TempDir tmp;
  Data d;
  const std::string ckpt = tmp / "ckpt";
  {
    auto m = lora_mlp();
    train::EpochSampler s(64, 5);
    train::Trainer t(*m, options(ckpt));
    set_loss(t, *m, d, s);
    t.fit();
  }
  REQUIRE(train::Trainer::has_checkpoint(ckpt));
  auto m = lora_mlp();
  train::TrainerOptions o = options(ckpt);
  o.lr = 2e-2;
  train::Trainer t(*m, o);
  const std::vector<std::vector<float>> before = trainable_values(t);
  std::string e = error_of([&] { t.resume(ckpt); });
  CHECK(contains(e, "was written with lr = 0.01, this run has 0.02"));
  CHECK(trainable_values(t) == before);
  CHECK(t.step() == 0);

  // another adapter shape (r = 2): named tensor and shapes
  Generator g(3);
  tools::HostOptions ho;
  ho.gen = &g;
  auto other = tools::build_host_model("mlp", {{"in", 10}, {"hidden", 20}, {"out", 2}}, ho);
  LoraConfig cfg;
  cfg.r = 2;
  cfg.target_modules = TargetModules::list({"lin0", "lin1", "lin2"});
  inject_adapter_in_model(cfg, *other);
  train::Trainer t2(*other, options(ckpt));
  CHECK(contains(error_of([&] { t2.resume(ckpt); }), "lora_A.default.weight' is"));

  CHECK(contains(error_of([&] { t2.resume(tmp / "nothing"); }), "holds no complete checkpoint"));
  // a damaged state file
  fs::create_directories(tmp / "bad");
  for (const char* f : {"trainable.safetensors", "optimizer.safetensors"})
    fs::copy_file(fs::path(ckpt) / f, fs::path(tmp / "bad") / f);
  std::ofstream(tmp / "bad/trainer_state.json") << "{\"step\": 3";
  CHECK(contains(error_of([&] { t.resume(tmp / "bad"); }), "trainer_state.json is not valid JSON"));
}

TEST_CASE("Trainer: gradient accumulation weights micro-batches by their items") {
  Data d;
  // one step on 12 rows at once vs 8 + 4 rows accumulated: the same mean gradient
  auto run = [&](int64_t accum) {
    auto m = lora_mlp(0.0);
    train::TrainerOptions o = options();
    o.steps = 1, o.grad_accum = accum, o.warmup_steps = 0, o.max_grad_norm = 0, o.weight_decay = 0;
    train::Trainer t(*m, o);
    t.set_loss([&](const train::MicroBatch& mb) {
      const int64_t first = accum == 1 ? 0 : (mb.micro == 0 ? 0 : 8), n = accum == 1 ? 12 : (mb.micro == 0 ? 8 : 4);
      Tensor x = d.x.narrow(0, first, n), y = d.y.narrow(0, first, n);
      return train::MicroBatchLoss{mse(m->forward(x), y), double(n)};
    });
    t.fit();
    return std::make_pair(t.history().grad_norms[0], t.history().losses[0]);
  };
  auto [g1, l1] = run(1);
  auto [g2, l2] = run(2);
  CHECK(g2 == doctest::Approx(g1).epsilon(1e-6));
  CHECK(l2 == doctest::Approx(l1).epsilon(1e-6));
  // an unweighted mean of the two micro-batch means would differ
  auto m = lora_mlp(0.0);
  NoGradGuard ng;
  const double a = mse(m->forward(d.x.narrow(0, 0, 8)), d.y.narrow(0, 0, 8)).item();
  const double b = mse(m->forward(d.x.narrow(0, 8, 4)), d.y.narrow(0, 8, 4)).item();
  CHECK(std::fabs((a + b) / 2 - l1) > 1e-4);
}

TEST_CASE("Trainer: schedules, evaluation every N steps, the divergence guard") {
  using train::Schedule;
  CHECK(train::lr_multiplier(Schedule::linear, 0, 2, 10) == 0.0);
  CHECK(train::lr_multiplier(Schedule::linear, 1, 2, 10) == 0.5);
  CHECK(train::lr_multiplier(Schedule::linear, 2, 2, 10) == 1.0);
  CHECK(train::lr_multiplier(Schedule::linear, 6, 2, 10) == 0.5);
  CHECK(train::lr_multiplier(Schedule::linear, 10, 2, 10) == 0.0);
  CHECK(train::lr_multiplier(Schedule::linear, 10, 2, 10, 0.1) == 0.1);
  CHECK(train::lr_multiplier(Schedule::constant, 1, 4, 10) == 0.25);
  CHECK(train::lr_multiplier(Schedule::constant, 9, 4, 10) == 1.0);
  CHECK(train::lr_multiplier(Schedule::cosine, 6, 2, 10) == doctest::Approx(0.5));
  CHECK(train::parse_schedule("linear") == Schedule::linear);
  CHECK(contains(error_of([] { train::parse_schedule("step"); }), "use constant, linear or cosine"));

  Data d;
  auto m = lora_mlp();
  train::TrainerOptions o = options();
  o.eval_every = 3;
  o.schedule = Schedule::linear;
  train::Trainer t(*m, o);
  train::EpochSampler s(64, 1);
  set_loss(t, *m, d, s);
  std::vector<int64_t> eval_steps;
  t.set_eval([&] {
    CHECK(!m->is_training());
    CHECK(!is_grad_enabled());
    return mse(m->forward(d.x), d.y).item();
  });
  int64_t reports = 0;
  t.on_step([&](const train::StepReport& r) {
    ++reports;
    if (r.eval_loss) eval_steps.push_back(r.step);
    CHECK(r.weight == 12.0);
  });
  t.fit();
  CHECK(reports == 10);
  CHECK(eval_steps == std::vector<int64_t>{3, 6, 9});
  CHECK(t.history().evals.size() == 3);
  CHECK(m->is_training());
  // the learning rates follow the linear schedule: lr x multiplier(step)
  for (int64_t k = 0; k < 10; ++k)
    CHECK(t.history().learning_rates[size_t(k)] == 1e-2 * train::lr_multiplier(Schedule::linear, k, 2, 10));

  // a loss that turns NaN stops the run with the step and the checkpoint's fate
  auto m2 = lora_mlp();
  TempDir tmp;
  train::Trainer t2(*m2, options(tmp / "ck"));
  t2.set_loss([&](const train::MicroBatch& mb) {
    Tensor l = mse(m2->forward(d.x), d.y);
    return train::MicroBatchLoss{mb.step == 5 ? mul(l, NAN) : l};
  });
  std::string e = error_of([&] { t2.fit(); });
  CHECK(contains(e, "test: the loss became nan at step 6; stopping (the last checkpoint, "));
  CHECK(contains(e, "ck, is intact)"));
  CHECK(train::Trainer::has_checkpoint(tmp / "ck"));

  // options and the loss function are checked
  CHECK(contains(error_of([&] {
                   train::TrainerOptions bad = options();
                   bad.grad_accum = 0;
                   train::Trainer x(*m, bad);
                 }),
                 "gradient accumulation must be >= 1"));
  auto frozen = tools::build_host_model("mlp", {{"in", 2}, {"hidden", 2}, {"out", 2}});
  for (auto& [n, p] : frozen->named_parameters()) Tensor(p).requires_grad_(false);
  CHECK(contains(error_of([&] { train::Trainer x(*frozen, options()); }), "no parameter that requires grad"));
  train::Trainer t3(*m, options());
  CHECK(contains(error_of([&] { t3.fit(); }), "no loss function"));
  t3.set_loss([&](const train::MicroBatch&) { return train::MicroBatchLoss{m->forward(d.x)}; });
  CHECK(contains(error_of([&] { t3.fit(); }), "must return a scalar loss, got"));
}

TEST_CASE("EpochSampler: every example once per epoch, a new order each epoch, a pure function of the position") {
  train::EpochSampler s(10, 42);
  std::vector<size_t> two = s.take(0, 20);
  std::set<size_t> e0(two.begin(), two.begin() + 10), e1(two.begin() + 10, two.end());
  CHECK(e0.size() == 10);
  CHECK(e1.size() == 10);
  CHECK(std::vector<size_t>(two.begin(), two.begin() + 10) != std::vector<size_t>(two.begin() + 10, two.end()));
  train::EpochSampler fresh(10, 42);
  CHECK(fresh.take(13, 4) == std::vector<size_t>(two.begin() + 13, two.begin() + 17));  // across no history
  CHECK(train::EpochSampler(10, 43).take(0, 10) != std::vector<size_t>(two.begin(), two.begin() + 10));
  CHECK(contains(error_of([] { train::EpochSampler(0, 1); }), "no examples"));
}

TEST_CASE("replace_dir_atomic: a failed write leaves the old folder; a killed writer's leftovers are cleaned up") {
  TempDir tmp;
  const std::string dir = tmp / "out";
  train::replace_dir_atomic(dir, [](const std::string& t) { std::ofstream(t + "/a") << "first"; });
  CHECK(fs::exists(dir + "/a"));
  CHECK(contains(error_of([&] {
                   train::replace_dir_atomic(dir, [](const std::string& t) {
                     std::ofstream(t + "/b") << "half";
                     fail("disk full");
                   });
                 }),
                 "disk full"));
  CHECK(fs::exists(dir + "/a"));
  CHECK(!fs::exists(dir + "/b"));
  int entries = 0;
  for (const auto& e : fs::directory_iterator(tmp.path)) ++entries, (void)e;
  CHECK(entries == 1);
  // a writer killed between its renames left only ".out.old.<dead pid>...": it comes back
  fs::rename(dir, tmp / ".out.old.999999999.1.abc");
  fs::create_directories(tmp / ".out.saving.999999999.2.def");
  train::replace_dir_atomic(tmp / "other", [](const std::string&) {});
  CHECK(!fs::exists(dir));  // another folder's writer leaves these alone
  train::replace_dir_atomic(dir, [](const std::string& t) { std::ofstream(t + "/c") << "new"; });
  CHECK(fs::exists(dir + "/c"));
  CHECK(!fs::exists(dir + "/a"));
  CHECK(!fs::exists(tmp / ".out.old.999999999.1.abc"));
  CHECK(!fs::exists(tmp / ".out.saving.999999999.2.def"));
}

// ------------------------------------------------------------------------------------------
// causal-LM data, loss and QLoRA training on the tiny GGUF llama (Q8_0 blocks, byte tokenizer)

#include "io/gguf.h"
#include "nn/transformers/pretrained.h"
#include "train/lm_data.h"
#include "nn/transformers/generate.h"

namespace {

const std::string kTinyLlama = "tests/data/gguf/tiny_llama.q8_0.gguf";

const Tokenizer& tiny_tokenizer() {
  static const Tokenizer tok = Tokenizer::from_gguf(*io::GGUFFile::open(kTinyLlama));
  return tok;
}

train::LMDataOptions tiny_data_options(int64_t max_length = 64) {
  train::LMDataOptions o;
  o.max_length = max_length;
  o.eos_id = 2;
  o.chat_template = "chatml";  // a format name: the tiny model's file has no template
  return o;
}

std::vector<int64_t> labelled(const train::LMExample& ex) {
  std::vector<int64_t> v;
  for (int64_t l : ex.labels)
    if (l != train::kIgnoreIndex) v.push_back(l);
  return v;
}

}  // namespace

TEST_CASE("gguf_generation_config: the file's eos_token_id comes first (the EOS training data appends)") {
  auto f = io::GGUFFile::open(kTinyLlama);
  REQUIRE(f->has("tokenizer.ggml.eos_token_id"));
  const nn::GenerateOptions g = nn::gguf_generation_config(kTinyLlama);
  REQUIRE(!g.eos_token_ids.empty());
  CHECK(g.eos_token_ids.front() == f->get_int("tokenizer.ggml.eos_token_id"));
  CHECK(std::count(g.eos_token_ids.begin(), g.eos_token_ids.end(), g.eos_token_ids.front()) == 1);
}

TEST_CASE("lm data: prompt/completion scores the completion and its EOS; messages score the assistant turns") {
  const Tokenizer& tok = tiny_tokenizer();
  const std::string pc = "{\"prompt\": \"Define CAT. \", \"completion\": \"A pet.\"}\n\n";
  train::LMDataset d = train::lm_data_from_text(pc, "pc.jsonl", true, tok, tiny_data_options());
  REQUIRE(d.examples.size() == 1);
  CHECK(d.format == "prompt-completion");
  const train::LMExample& ex = d.examples[0];
  std::vector<int64_t> want = tok.encode("Define CAT. A pet.", true).ids;
  want.push_back(2);
  CHECK(ex.ids == want);
  const std::vector<int64_t> p = tok.encode("Define CAT. ", true).ids;
  for (size_t t = 0; t < ex.ids.size(); ++t) CHECK(ex.labels[t] == (t < p.size() ? train::kIgnoreIndex : ex.ids[t]));
  std::vector<int64_t> completion = labelled(ex);
  CHECK(completion.back() == 2);  // EOS
  completion.pop_back();
  CHECK(tok.decode(completion, false) == "A pet.");
  CHECK(ex.source == "pc.jsonl:1");

  const std::string chat =
      "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"Hi\"},"
      " {\"role\": \"assistant\", \"content\": \"Yo\"}, {\"role\": \"user\", \"content\": \"Again\"},"
      " {\"role\": \"assistant\", \"content\": \"Yes\"}]}\n";
  train::LMDataset c = train::lm_data_from_text(chat, "chat.jsonl", true, tok, tiny_data_options(256));
  REQUIRE(c.examples.size() == 1);
  CHECK(c.format == "messages");
  const train::LMExample& ce = c.examples[0];
  CHECK(tok.decode(ce.ids, false) ==
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n");
  CHECK(tok.decode(labelled(ce), false) == "Yo<|im_end|>\nYes<|im_end|>\n");

  // plain text: packed blocks, every token scored
  train::LMDataset t = train::lm_data_from_text(std::string(100, 'a'), "t.txt", false, tok, tiny_data_options(32));
  CHECK(t.format == "text");
  CHECK(t.examples.size() == 4);  // 100 tokens + EOS = 101: 32 + 32 + 32 + 5
  CHECK(t.examples[3].ids.size() == 5);
  CHECK(t.examples[0].labels == t.examples[0].ids);
}

TEST_CASE("lm data: truncation is counted, examples left without scored tokens are dropped, bad lines name file:line") {
  const Tokenizer& tok = tiny_tokenizer();
  const std::string text = "{\"prompt\": \"Q: \", \"completion\": \"" + std::string(40, 'x') + "\"}\n" +
                           "{\"prompt\": \"" + std::string(40, 'q') + "\", \"completion\": \"a\"}\n" +
                           "{\"prompt\": \"Q: \", \"completion\": \"ok\"}\n";
  train::LMDataset d = train::lm_data_from_text(text, "d.jsonl", true, tok, tiny_data_options(20));
  CHECK(d.examples.size() == 2);
  CHECK(d.truncated == 2);
  CHECK(d.dropped == 1);
  CHECK(d.examples[0].ids.size() == 20);
  CHECK(d.max_example_tokens == 20);

  auto err = [&](const std::string& t) {
    return error_of([&] { train::lm_data_from_text(t, "bad.jsonl", true, tok, tiny_data_options()); });
  };
  const std::string ok = "{\"prompt\": \"a \", \"completion\": \"b\"}\n";
  CHECK(contains(err(ok + "{\"prompt\": \"a\"\n"), "bad.jsonl:2: not valid JSON"));
  CHECK(contains(err(ok + "\n[1, 2]\n"), "bad.jsonl:3: each line must be a JSON object"));
  CHECK(contains(err("{\"text\": \"a\"}\n"), "bad.jsonl:1: expected {\"prompt\", \"completion\"} or {\"messages\""));
  CHECK(contains(err("{\"prompt\": 1, \"completion\": \"b\"}\n"), "bad.jsonl:1: \"prompt\" and \"completion\" must be strings"));
  CHECK(contains(err(ok + "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n"),
                 "bad.jsonl:2: a messages line in a file of prompt-completion lines"));
  CHECK(contains(err("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n"), "bad.jsonl:1: no \"assistant\" message"));
  CHECK(contains(err("{\"messages\": [{\"role\": \"user\"}]}\n"), "bad.jsonl:1: messages[0] must be"));
  CHECK(contains(err("\n\n"), "bad.jsonl: no training example"));
  train::LMDataOptions no_template = tiny_data_options();
  no_template.chat_template.clear();
  CHECK(contains(error_of([&] {
                   train::lm_data_from_text("{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}", "m.jsonl",
                                            true, tok, no_template);
                 }),
                 "m.jsonl:1: \"messages\" need the model's chat template"));
  CHECK(contains(error_of([&] { train::load_lm_data("/nonexistent/x.jsonl", tok, tiny_data_options()); }),
                 "cannot read training data '/nonexistent/x.jsonl'"));
}

TEST_CASE("causal_lm_loss on the scored positions equals transformers' shifted cross-entropy over full logits") {
  const Tokenizer& tok = tiny_tokenizer();
  const std::string text = "{\"prompt\": \"Q: one \", \"completion\": \"answer\"}\n"
                           "{\"prompt\": \"Q: a longer question \", \"completion\": \"yes\"}\n";
  train::LMDataset d = train::lm_data_from_text(text, "d.jsonl", true, tok, tiny_data_options());
  // dequantized: Q8_0 products take another kernel (activations quantized) below 32 rows
  nn::PretrainedOptions f32;
  f32.dtype = DType::float32;
  auto model = nn::load_pretrained(kTinyLlama, f32);
  train::LMBatch b = train::collate(d, {0, 1}, 0);
  CHECK(b.loss_tokens == 6 + 1 + 3 + 1);  // completions + EOS
  NoGradGuard ng;
  const double loss = train::causal_lm_loss(*model, b).item();
  // the reference: all [B, T, V] logits, shift by one, ignore -100 (ForCausalLMLoss)
  auto* lm = dynamic_cast<nn::PreTrainedModel*>(model.get());
  nn::ModelInputs in;
  in.input_ids = b.inputs.input_ids;
  in.attention_mask = b.inputs.attention_mask;
  Tensor logits = lm->forward(in);  // [2, T, V]
  const int64_t T = logits.size(1), V = logits.size(2);
  Tensor shifted = logits.narrow(1, 0, T - 1).contiguous().reshape({2 * (T - 1), V});
  Tensor labels = b.labels.narrow(1, 1, T - 1).contiguous().reshape({2 * (T - 1)});
  const double ref = cross_entropy(shifted, labels, -100).item();
  CHECK(loss == doctest::Approx(ref).epsilon(1e-6));
  CHECK(loss > 1.0);  // an untrained model: the check compares real numbers
}

TEST_CASE("causal_lm_loss in chunks: the loss and the LoRA gradients of one pass over all logits") {
  const Tokenizer& tok = tiny_tokenizer();
  const std::string text = "{\"prompt\": \"Q: one \", \"completion\": \"answer a b c\"}\n"
                           "{\"prompt\": \"Q: a longer question \", \"completion\": \"yes, and more\"}\n"
                           "{\"prompt\": \"Q: \", \"completion\": \"no\"}\n";
  train::LMDataset d = train::lm_data_from_text(text, "d.jsonl", true, tok, tiny_data_options());
  nn::PretrainedOptions f64;  // float64: the comparison is not blurred by float32 rounding
  f64.dtype = DType::float64;
  // chunk_rows 0: one pass; 4: chunks with the gradient taken in forward (frozen head);
  // 4 with LoRA on lm_head too: chunks recomputed in backward (the head trains)
  auto run = [&](int64_t chunk_rows, bool head_lora) {
    auto model = nn::load_pretrained(kTinyLlama, f64);
    manual_seed(5);
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.init_lora_weights = false;  // B != 0: every LoRA matrix gets a gradient
    cfg.target_modules = TargetModules::list(head_lora ? std::vector<std::string>{"q_proj", "v_proj", "lm_head"}
                                                       : std::vector<std::string>{"q_proj", "v_proj"});
    inject_adapter_in_model(cfg, *model);
    train::LMBatch b = train::collate(d, {0, 1, 2}, 0);
    REQUIRE(b.loss_tokens > 8);  // more than two chunks of 4
    Tensor loss = train::causal_lm_loss(*model, b, chunk_rows);
    loss.backward();
    std::map<std::string, std::vector<double>> grads;
    for (const auto& [n, p] : model->named_parameters())
      if (p.requires_grad()) grads[n] = p.grad().to_vector<double>();
    return std::make_pair(loss.item(), grads);
  };
  for (bool head_lora : {false, true}) {
    CAPTURE(head_lora);
    auto [l0, g0] = run(0, head_lora);
    auto [l4, g4] = run(4, head_lora);
    CHECK(l4 == doctest::Approx(l0).epsilon(1e-12));
    REQUIRE(g0.size() == g4.size());
    CHECK(g0.size() == (head_lora ? 10u : 8u));  // 2 layers x q, v x A, B (+ lm_head A, B)
    for (const auto& [n, g] : g0) {
      CAPTURE(n);
      const std::vector<double>& h = g4.at(n);
      double diff = 0, scale = 0;
      for (size_t i = 0; i < g.size(); ++i) diff = std::max(diff, std::fabs(g[i] - h[i])), scale = std::max(scale, std::fabs(g[i]));
      CHECK(scale > 0);
      CHECK(diff <= 1e-10 * scale);
    }
  }
}

TEST_CASE("LengthBucketBatcher: full batches of similar length, each example at most once per epoch, resume-safe") {
  train::LMDataset d;
  d.path = "synthetic";
  Generator g(1);
  for (int i = 0; i < 200; ++i) {
    train::LMExample ex;
    ex.ids.assign(size_t(2 + g.next_u32() % 100), 5);
    ex.labels = ex.ids;
    d.examples.push_back(ex);
  }
  train::LengthBucketBatcher bb(d, 8, 3);
  CHECK(bb.batches_per_epoch() == 25);
  std::set<size_t> seen;
  int64_t padded = 0, random_padded = 0;
  train::EpochSampler plain(200, 3);
  for (int64_t i = 0; i < 25; ++i) {
    std::vector<size_t> r = bb.rows(i);
    CHECK(r.size() == 8);
    size_t longest = 0, total = 0;
    for (size_t k : r) seen.insert(k), longest = std::max(longest, d.examples[k].ids.size()), total += d.examples[k].ids.size();
    padded += int64_t(longest * 8 - total);
    std::vector<size_t> rr = plain.take(i * 8, 8);
    longest = 0, total = 0;
    for (size_t k : rr) longest = std::max(longest, d.examples[k].ids.size()), total += d.examples[k].ids.size();
    random_padded += int64_t(longest * 8 - total);
  }
  CHECK(seen.size() == 200);
  CAPTURE(padded);
  CAPTURE(random_padded);
  CHECK(padded * 5 < random_padded);  // bucketing removes most padding
  train::LengthBucketBatcher again(d, 8, 3);
  CHECK(again.rows(27) == bb.rows(27));  // a pure function of the index
  CHECK(bb.rows(25) != bb.rows(0));
  CHECK(contains(error_of([&] { train::LengthBucketBatcher(d, 300, 1); }), "synthetic: 200 examples, fewer than one batch of 300"));
}

TEST_CASE("QLoRA: LoRA on the Q8_0 tiny llama learns prompt/completion data; the base stays quantized and unchanged; resume is bit-exact") {
  const Tokenizer& tok = tiny_tokenizer();
  std::string text;
  for (int i = 0; i < 16; ++i)
    text += "{\"prompt\": \"Q" + std::to_string(i) + ": \", \"completion\": \"" + std::string(size_t(3 + i % 5), char('a' + i % 7)) + "\"}\n";
  train::LMDataset d = train::lm_data_from_text(text, "q.jsonl", true, tok, tiny_data_options());
  TempDir tmp;
  auto run = [&](const std::string& ckpt, int64_t crash_at, bool resume) {
    auto m = nn::load_pretrained(kTinyLlama);
    manual_seed(11);
    LoraConfig cfg;  // PEFT's default targets: q_proj, v_proj
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.lora_dropout = 0.1;
    inject_adapter_in_model(cfg, *m);
    train::TrainerOptions o;
    o.name = "qlora";
    o.steps = 12, o.lr = 5e-3, o.warmup_steps = 2, o.grad_accum = 2, o.seed = 4, o.log = nullptr;
    if (!ckpt.empty()) o.checkpoint_every = 5, o.checkpoint_dir = ckpt;
    train::Trainer t(*m, o);
    train::LengthBucketBatcher bb(d, 4, o.seed);
    t.set_loss([&](const train::MicroBatch& mb) {
      if (mb.step == crash_at) throw std::runtime_error("crash");
      train::LMBatch b = train::collate(d, bb.rows(mb.step * 2 + mb.micro), 0);
      return train::MicroBatchLoss{train::causal_lm_loss(*m, b), double(b.loss_tokens)};
    });
    if (resume) t.resume(ckpt);
    if (crash_at >= 0) CHECK_THROWS(t.fit());
    else t.fit();
    std::map<std::string, std::vector<float>> lora;
    for (const auto& [n, p] : t.trainable()) lora[n] = p.to_vector<float>();
    return std::make_tuple(lora, t.history().losses, m);
  };
  auto [lora1, losses1, m1] = run("", -1, false);
  CHECK(losses1.size() == 12);
  CHECK(losses1.back() < 0.8 * losses1.front());  // it learns
  // the base: still Q8_0 blocks, bit for bit the file's
  auto fresh = nn::load_pretrained(kTinyLlama);
  std::map<std::string, Tensor> original;
  for (const auto& [n, p] : fresh->named_parameters()) original[n] = p;
  int quantized = 0;
  for (const auto& [n, p] : m1->named_parameters()) {
    if (n.find("lora_") != std::string::npos) continue;
    CHECK(!p.requires_grad());
    std::string plain = n;
    if (size_t at = plain.find(".base_layer"); at != std::string::npos) plain.erase(at, 11);
    REQUIRE(original.count(plain));
    CHECK(p.dtype() == original[plain].dtype());
    if (p.dtype() == DType::q8_0) ++quantized;
    CHECK(p.to(DType::float32).to_vector<float>() == original[plain].to(DType::float32).to_vector<float>());
  }
  CHECK(quantized == 15);
  const std::string ck = tmp / "ck";
  run(ck, 7, false);  // checkpoint at step 5, crash in step 8
  auto [lora2, losses2, m2] = run(ck, -1, true);
  CHECK(lora2 == lora1);
  CHECK(losses2 == losses1);
}

TEST_CASE("gradient checkpointing: the tiny llama's LoRA gradients equal the recorded graph's, dropout included") {
  std::map<std::string, std::vector<float>> grads[2];
  double losses[2];
  const Tokenizer& tok = tiny_tokenizer();
  train::LMDataset d = train::lm_data_from_text(
      "{\"prompt\": \"Q: one \", \"completion\": \"answer\"}\n{\"prompt\": \"Q: two \", \"completion\": \"no\"}\n", "d.jsonl",
      true, tok, tiny_data_options());
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    nn::PretrainedOptions f32;
    f32.dtype = DType::float32;
    auto m = nn::load_pretrained(kTinyLlama, f32);
    manual_seed(3);
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_dropout = 0.3;
    cfg.target_modules = TargetModules::regex("all-linear");
    cfg.init_lora_weights = false;
    inject_adapter_in_model(cfg, *m);
    m->set_gradient_checkpointing(ckpt == 1);
    CHECK(dynamic_cast<nn::LlamaForCausalLM&>(*m).model().gradient_checkpointing() == (ckpt == 1));
    m->train();
    manual_seed(8);  // the dropout masks
    Tensor loss = train::causal_lm_loss(*m, train::collate(d, {0, 1}, 0));
    loss.backward();
    losses[ckpt] = loss.item();
    for (const auto& [n, p] : m->named_parameters())
      if (p.requires_grad()) grads[ckpt][n] = p.grad().to_vector<float>();
  }
  CHECK(losses[0] == losses[1]);
  REQUIRE(grads[0].size() == 2 * 7 * 2);  // 2 layers x 7 linear layers x (A, B)
  for (const auto& [n, g] : grads[0]) {
    CAPTURE(n);
    CHECK(g == grads[1][n]);
  }
}
