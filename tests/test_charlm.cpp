// The fine-tuning demo's pieces: vocabulary, word loading, examples, the
// sampler, and a short LoRA fine-tune whose loss must drop.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "adapters/peft.h"
#include "nn/optim.h"
#include "tests/testing.h"
#include "tools/charlm.h"

using namespace peft;

TEST_CASE("vocab encodes lower-cased letters and accents, rejects other characters") {
  const lm::Vocab& v = lm::Vocab::standard();
  CHECK(v.size() == 46);
  CHECK(v.token(0) == ".");
  CHECK(v.encode_word("Cat") == std::vector<int64_t>{3, 1, 20});
  CHECK(v.decode(v.encode_word("Éléphant")) == "éléphant");
  CHECK(v.decode(v.encode_word("STRAßE")) == "straße");
  CHECK(v.encode_word("don't").empty());
  CHECK(v.encode_word("a.b").empty());
  CHECK(v.encode_word("\xff\xfe").empty());  // invalid UTF-8
}

TEST_CASE("load_words de-duplicates, skips unusable lines, splits deterministically") {
  std::string path = "/tmp/peft_words_" + std::to_string(::getpid());
  {
    std::ofstream f(path);
    for (int i = 0; i < 50; ++i) f << "w" << std::string(size_t(i % 7 + 1), char('a' + i % 26)) << "\n";
    f << "Cat\ncat\nit's\n\n";
  }
  lm::WordData a = lm::load_words(path, 7, 0.2), b = lm::load_words(path, 7, 0.2);
  CHECK(a.read == 53);
  CHECK(a.skipped == 1);  // "it's"
  CHECK(a.train.size() + a.heldout.size() == 51);  // 50 distinct "w..." words + "cat" ("Cat" folds into it)
  CHECK(a.train == b.train);
  CHECK(a.heldout.size() == size_t(double(a.train.size() + a.heldout.size()) * 0.2));
  CHECK_THROWS_WITH_AS(lm::load_words("/nonexistent/words"), doctest::Contains("/nonexistent/words"), Error);
  ::unlink(path.c_str());
}

TEST_CASE("make_examples frames each word with boundary tokens") {
  lm::Examples ex = lm::make_examples({{3, 1, 20}}, 2);  // "cat"
  REQUIRE(ex.size() == 4);
  CHECK(ex.ctx == std::vector<int64_t>{0, 0, 0, 3, 3, 1, 1, 20});
  CHECK(ex.target == std::vector<int64_t>{3, 1, 20, 0});
  lm::Batch b = lm::slice_batch(ex, 1, 3);
  CHECK(b.ctx.shape() == Shape{2, 2});
  CHECK(b.target.to_vector<int64_t>() == std::vector<int64_t>{1, 20});
}

TEST_CASE("sampler follows the model's distribution and stops at the boundary") {
  // a "model" that always puts all mass on 'b' until the context holds 3 of them, then '.'
  auto forward = [](const Tensor& ctx) {
    int64_t n = ctx.size(0);
    Tensor logits = full({n, 46}, -1e9);
    for (int64_t r = 0; r < n; ++r) {
      int64_t bs = 0;
      for (int64_t j = 0; j < ctx.size(1); ++j) bs += ctx.at({r, j}) == 2;
      logits.set({r, bs >= 3 ? 0 : 2}, 0.0);
    }
    return logits;
  };
  Generator g(1);
  std::vector<std::string> w = lm::sample_words(forward, 3, 4, g);
  CHECK(w == std::vector<std::string>{"bbb", "bbb", "bbb"});
}

TEST_CASE("a short LoRA fine-tune lowers the loss and trains only the adapter") {
  lm::CharLMConfig cfg;
  cfg.context = 3;
  cfg.embed = 8;
  cfg.hidden = 32;
  cfg.vocab = lm::Vocab::standard().size();
  Generator g(0);
  lm::CharLM model(cfg, g);
  std::vector<std::vector<int64_t>> words;
  for (const char* w : {"chat", "chien", "château", "chose", "cheval", "chemin"})
    words.push_back(lm::Vocab::standard().encode_word(w));
  lm::Examples ex = lm::make_examples(words, cfg.context);
  Tensor fc1_before = model.get_submodule("fc1")->param("weight").clone();
  LoraConfig lc;
  lc.r = 4;
  lc.lora_alpha = 8;
  lc.target_modules = {"fc1", "fc2", "lm_head"};
  inject_adapter_in_model(lc, model);
  nn::NamedTensors trainable;
  for (const auto& [n, p] : model.named_parameters())
    if (p.requires_grad()) trainable.emplace_back(n, p);
  CHECK(trainable.size() == 6);
  double before = lm::evaluate(model, ex);
  nn::AdamW opt(trainable, {.lr = 3e-2, .weight_decay = 0.0});
  model.train();
  for (int s = 0; s < 60; ++s) {
    lm::Batch b = lm::sample_batch(ex, 32, g);
    Tensor loss = cross_entropy(model(b.ctx), b.target);
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  double after = lm::evaluate(model, ex);
  CHECK(after < before - 0.5);
  CHECK_ALLCLOSE(model.get_submodule("fc1.base_layer")->param("weight"), fc1_before, 0, 0);
}
