// AdaLoRA (PEFT's tuners/adalora/): config validation and JSON, SVDLinear forward / merge /
// unmerge round trips, the rank allocator (budget schedule at its boundaries,
// mask selection with ties, forced final mask, re-applied mask), state-dict
// trimming / resizing by rank_pattern, orthogonal regularisation.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "adapters/peft.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tests/testing.h"
#include "tools/host_models.h"

using namespace peft;
using peft::testing::max_abs_diff;

namespace {

struct Quiet {
  std::vector<std::string> messages;
  WarningHandler old;
  Quiet() {
    old = set_warning_handler([this](const std::string& m) { messages.push_back(m); });
  }
  ~Quiet() { set_warning_handler(old); }
};

std::shared_ptr<nn::Module> mlp_host(uint64_t seed = 0) {
  Generator g(seed);
  tools::HostOptions o;
  o.gen = &g;
  return tools::build_host_model("mlp", {{"in", 10}, {"hidden", 20}, {"out", 2}}, o);
}

AdaLoraConfig schedule_config() {
  AdaLoraConfig c;
  c.target_modules = {"lin0", "lin1"};
  c.init_r = 6;
  c.target_r = 2;
  c.tinit = 3;
  c.tfinal = 3;
  c.deltaT = 2;
  c.total_step = 24;
  return c;
}

using testing::error_of;  // tests/testing.h

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Non-zero singular values so the adapter changes the output.
void randomise_E(nn::Module& m, uint64_t seed = 7) {
  Generator g(seed);
  NoGradGuard ng;
  for (auto& [n, p] : m.named_parameters())
    if (n.find("lora_E.") != std::string::npos) p.normal_(0.0, 1.0, g);
}

}  // namespace

TEST_CASE("adalora: config validation errors (PEFT's messages)") {
  Quiet q;
  AdaLoraConfig c = schedule_config();
  CHECK_NOTHROW(c.validate());
  {
    AdaLoraConfig d = c;
    d.total_step.reset();
    CHECK(error_of([&] { d.validate(); }) == "AdaLoRA does not work when `total_step` is None, supply a value > 0.");
    d.total_step = 0;
    CHECK(contains(error_of([&] { d.validate(); }), "`total_step` is None"));
  }
  {
    AdaLoraConfig d = c;
    d.tinit = 21;  // == total_step - tfinal
    CHECK(error_of([&] { d.validate(); }) ==
          "The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or increase "
          "`total_step`.");
    d.tinit = 20;
    CHECK_NOTHROW(d.validate());
  }
  {
    AdaLoraConfig d = c;
    d.use_dora = true;
    CHECK(error_of([&] { d.validate(); }) == "PeftType.ADALORA does not support DoRA.");
  }
  {
    AdaLoraConfig d = c;
    d.loftq_config = ordered_json{{"loftq_bits", 4}};
    CHECK(error_of([&] { d.validate(); }) == "PeftType.ADALORA does not support LOFTQ.");
  }
  {
    AdaLoraConfig d = c;
    d.orth_reg_weight = -0.1;
    CHECK(contains(error_of([&] { d.validate(); }), "orth_reg_weight should be greater than 0"));
  }
  {
    AdaLoraConfig d = c;
    d.r = 4;
    q.messages.clear();
    d.validate();
    REQUIRE(q.messages.size() == 1);
    CHECK(contains(q.messages[0], "`r` is not used in AdaLora and will be ignored."));
  }
  // JSON: required total_step, round trip with a rank_pattern.
  CHECK(contains(error_of([] { config_from_json(R"({"peft_type": "ADALORA", "target_modules": ["lin0"]})"); }),
                 "total_step"));
  AdaLoraConfig d = c;
  d.rank_pattern = AdaLoraConfig::RankPattern{{"lin0.lora_E", {true, false, true, false, false, false}}};
  auto back = std::dynamic_pointer_cast<AdaLoraConfig>(config_from_json(d.to_json_string()));
  REQUIRE(back);
  CHECK(back->init_r == 6);
  CHECK(back->target_r == 2);
  CHECK(back->total_step == 24);
  CHECK(back->deltaT == 2);
  REQUIRE(back->rank_pattern);
  CHECK(back->rank_pattern->at(0).first == "lin0.lora_E");
  CHECK(back->rank_pattern->at(0).second == std::vector<bool>{true, false, true, false, false, false});
  CHECK(c.to_json()["rank_pattern"].is_null());
}

TEST_CASE("adalora: only one trainable adapter, unsupported targets") {
  Quiet q;
  auto m = mlp_host();
  AdaLoraConfig c = schedule_config();
  inject_adapter_in_model(c, *m, "a");
  CHECK(contains(error_of([&] { inject_adapter_in_model(c, *m, "b"); }), "supports only 1 trainable adapter"));
  AdaLoraConfig inf = c;
  inf.inference_mode = true;
  auto m2 = mlp_host();
  inject_adapter_in_model(c, *m2, "a");
  CHECK_NOTHROW(inject_adapter_in_model(inf, *m2, "b"));
  AdaLoraConfig bad = c;
  bad.target_modules = {"relu"};
  auto m3 = mlp_host();
  CHECK(contains(error_of([&] { inject_adapter_in_model(bad, *m3); }), "is not supported"));
}

TEST_CASE("adalora: SVDLinear shapes, init and forward formula") {
  Quiet q;
  auto m = mlp_host();
  AdaLoraConfig c = schedule_config();
  c.lora_alpha = 4;
  inject_adapter_in_model(c, *m);
  auto layer = std::dynamic_pointer_cast<adalora::SVDLinear>(m->get_submodule("lin0"));
  REQUIRE(layer);
  CHECK(layer->lora_A()["default"].shape() == Shape{6, 10});
  CHECK(layer->lora_E()["default"].shape() == Shape{6, 1});
  CHECK(layer->lora_B()["default"].shape() == Shape{20, 6});
  CHECK(layer->ranknum()["default"].item() == 6.0);
  CHECK_FALSE(layer->ranknum()["default"].requires_grad());
  CHECK(sum(abs(layer->lora_E()["default"])).item() == 0.0);
  CHECK(layer->scaling.at("default") == 4.0);
  randomise_E(*m);
  Tensor x = randn({3, 10}, default_generator());
  Tensor A = layer->lora_A()["default"], E = layer->lora_E()["default"], B = layer->lora_B()["default"];
  Tensor want = add(layer->base_layer().forward(x),
                    mul(matmul(matmul(x, mul(A, E).t()), B.t()), 4.0 / (6.0 + 1e-5)));
  CHECK_ALLCLOSE(layer->forward(x), want, 1e-5, 1e-6);
}

TEST_CASE("adalora: merge / unmerge round trip, safe_merge") {
  Quiet q;
  auto m = mlp_host();
  inject_adapter_in_model(schedule_config(), *m);
  randomise_E(*m);
  m->eval();
  Tensor x = randn({5, 10}, default_generator());
  NoGradGuard ng;
  Tensor before = m->forward(x);
  auto layer = std::dynamic_pointer_cast<adalora::SVDLinear>(m->get_submodule("lin1"));
  Tensor W0 = layer->get_base_layer().param("weight").clone();
  merge_adapters(*m, /*safe_merge=*/true);
  CHECK(layer->merged());
  CHECK(max_abs_diff(layer->get_base_layer().param("weight"), W0) > 1e-4);
  CHECK_ALLCLOSE(m->forward(x), before, 1e-4, 1e-5);
  unmerge_adapters(*m);
  CHECK_FALSE(layer->merged());
  CHECK_ALLCLOSE(layer->get_base_layer().param("weight"), W0, 0.0, 1e-6);
  CHECK_ALLCLOSE(m->forward(x), before, 1e-5, 1e-6);
  // disabled adapters: base output
  enable_adapters(*m, false);
  Tensor base = m->forward(x);
  enable_adapters(*m, true);
  CHECK(max_abs_diff(base, before) > 1e-5);
  // safe_merge refuses non-finite deltas and leaves the weights untouched
  Tensor W1 = layer->get_base_layer().param("weight").clone();
  layer->lora_E()["default"].fill_(std::numeric_limits<double>::quiet_NaN());
  CHECK(contains(error_of([&] { layer->merge(true); }), "NaNs detected in the merged weights"));
  CHECK_FALSE(layer->merged());
  CHECK_ALLCLOSE(layer->get_base_layer().param("weight"), W1, 0.0, 0.0);
}

TEST_CASE("adalora: budget schedule at its boundaries") {
  Quiet q;
  auto m = mlp_host();
  AdaLoraConfig c = schedule_config();  // init_bgt 12, target_bgt 4, tinit 3, total-tfinal 21, deltaT 2
  inject_adapter_in_model(c, *m);
  adalora::AdaLoraAllocator alloc(*m, c);
  CHECK(alloc.init_bgt() == 12);
  CHECK(alloc.target_bgt() == 4);
  using P = std::pair<int64_t, bool>;
  CHECK(alloc.budget_schedule(0) == P{12, false});
  CHECK(alloc.budget_schedule(3) == P{12, false});  // step == tinit: still warm-up
  // step 4: mul = 1 - 1/18, budget = int(8·mul³ + 4) = 10; 4 % deltaT == 0
  CHECK(alloc.budget_schedule(4) == P{10, true});
  CHECK(alloc.budget_schedule(5).second == false);
  // step == total_step - tfinal: mul = 0 -> target budget; no scheduled mask (21 % 2 != 0)
  CHECK(alloc.budget_schedule(21) == P{4, false});
  CHECK(alloc.budget_schedule(20).first == 4);  // int(8/729 + 4)
  CHECK(alloc.budget_schedule(22) == P{4, true});
  CHECK(alloc.budget_schedule(24) == P{4, true});
}

TEST_CASE("adalora: mask selection with ties (kthvalue, <= threshold is masked)") {
  using adalora::select_by_budget;
  auto s = select_by_budget({{1.f, 2.f, 2.f}, {2.f, 3.f}}, 2);
  CHECK(s.threshold == 2.0);
  // every score equal to the threshold goes: 4 masked although k = 2
  CHECK(s.keep[0] == std::vector<bool>{false, false, false});
  CHECK(s.keep[1] == std::vector<bool>{false, true});
  auto t = select_by_budget({{1.f, 2.f, 2.f}, {2.f, 3.f}}, 1);
  CHECK(t.threshold == 1.0);
  CHECK(t.keep[0] == std::vector<bool>{false, true, true});
  CHECK(t.keep[1] == std::vector<bool>{true, true});
  auto z = select_by_budget({{0.f, 0.f}, {0.f}}, 1);  // all tied at zero: everything masked
  CHECK(z.keep[0] == std::vector<bool>{false, false});
  CHECK(z.keep[1] == std::vector<bool>{false});
  CHECK(contains(error_of([] { select_by_budget({{1.f}}, 0); }), "kthvalue"));
  CHECK(contains(error_of([] { select_by_budget({{1.f}}, 2); }), "kthvalue"));
}

TEST_CASE("adalora: allocator over a training run (forced final mask, re-applied mask, trimmed save, resized load)") {
  Quiet q;
  auto m = mlp_host(3);
  AdaLoraConfig c = schedule_config();
  inject_adapter_in_model(c, *m);
  Generator g(11);
  Tensor x = randn({16, 10}, g), y = randn({16, 2}, g);
  nn::NamedTensors params;
  for (auto& [n, p] : m->named_parameters())
    if (p.requires_grad()) params.emplace_back(n, p);
  nn::SGDOptions so;
  so.lr = 0.05;
  nn::SGD opt(params, so);
  adalora::AdaLoraAllocator alloc(*m);
  auto stored = std::dynamic_pointer_cast<AdaLoraConfig>(peft_config(*m));
  auto E0 = [&] { return m->get_submodule("lin0")->child("lora_E").param("default"); };
  auto E1 = [&] { return m->get_submodule("lin1")->child("lora_E").param("default"); };
  for (int64_t step = 0; step < 24; ++step) {
    Tensor loss = add(mse_loss(m->forward(x), y), adalora::orthogonal_regularization(*m));
    loss.backward();
    opt.step();
    alloc.update_and_allocate(step);
    opt.zero_grad();
    if (step <= 3) CHECK_FALSE(stored->rank_pattern.has_value());
    if (step == 21) {  // forced mask to the target budget
      REQUIRE(stored->rank_pattern.has_value());
      int64_t kept = 0;
      for (const auto& [k, keep] : *stored->rank_pattern)
        for (bool b : keep) kept += b;
      CHECK(kept <= 4);
      CHECK(kept >= 1);
      CHECK(stored->rank_pattern->at(0).first == "lin0.lora_E.default");
    }
    if (step >= 21) {  // masked rows stay zero after every later step
      for (auto [i, E] : {std::pair{0, E0()}, std::pair{1, E1()}}) {
        auto vals = E.to_vector<float>();
        const auto& keep = stored->rank_pattern->at(size_t(i)).second;
        for (size_t r = 0; r < keep.size(); ++r)
          if (!keep[r]) CHECK(vals[r] == 0.0f);
      }
    }
  }
  auto pattern = *stored->rank_pattern;
  m->eval();
  Tensor out;
  {
    NoGradGuard ng;
    out = m->forward(x);
  }
  StateDict sd = get_peft_model_state_dict(*m);
  CHECK(sd.keys() == std::vector<std::string>{"lin0.lora_A", "lin0.lora_B", "lin0.lora_E", "lin1.lora_A",
                                              "lin1.lora_B", "lin1.lora_E"});
  // keys lose the adapter name in the stored config; tensors trimmed to the kept rows
  CHECK(stored->rank_pattern->at(0).first == "lin0.lora_E");
  int64_t k0 = 0;
  for (bool b : pattern[0].second) k0 += b;
  CHECK(sd.at("lin0.lora_A").shape() == Shape{k0, 10});
  CHECK(sd.at("lin0.lora_E").shape() == Shape{k0, 1});
  CHECK(sd.at("lin0.lora_B").shape() == Shape{20, k0});
  // a fresh model with the saved config: resized on load, ranknum keeps init_r, same output
  auto m2 = mlp_host(3);
  auto saved_cfg = config_from_json(stored->to_json_string());
  inject_adapter_in_model(*saved_cfg, *m2);
  nn::LoadResult r = set_peft_model_state_dict(*m2, sd);
  CHECK(r.unexpected_keys.empty());
  auto l0 = std::dynamic_pointer_cast<adalora::SVDLinear>(m2->get_submodule("lin0"));
  CHECK(l0->lora_E()["default"].size(0) == k0);
  CHECK(l0->r.at("default") == k0);
  CHECK(l0->ranknum()["default"].item() == 6.0);
  m2->eval();
  NoGradGuard ng;
  CHECK_ALLCLOSE(m2->forward(x), out, 1e-4, 1e-6);
}

TEST_CASE("adalora: orthogonal regularisation value and gradient") {
  Quiet q;
  auto m = mlp_host();
  AdaLoraConfig c = schedule_config();
  c.orth_reg_weight = 0.5;
  inject_adapter_in_model(c, *m);
  Tensor reg = adalora::orthogonal_regularization(*m);
  double want = 0;
  int n = 0;
  for (auto& [name, p] : m->named_parameters()) {
    bool a = name.find("lora_A") != std::string::npos, b = name.find("lora_B") != std::string::npos;
    if (!a && !b) continue;
    Tensor cov = a ? matmul(p, p.t()) : matmul(p.t(), p);
    auto v = cov.to(DType::float64).to_vector<double>();
    double s = 0;
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t j = 0; j < 6; ++j) {
        double d = v[size_t(i * 6 + j)] - (i == j ? 1.0 : 0.0);
        s += d * d;
      }
    want += std::sqrt(s);
    ++n;
  }
  CHECK(n == 4);
  CHECK(reg.item() == doctest::Approx(0.5 * want / n).epsilon(1e-5));
  reg.backward();
  for (auto& [name, p] : m->named_parameters())
    if (name.find("lora_A") != std::string::npos || name.find("lora_B") != std::string::npos) {
      REQUIRE(p.grad().defined());
      CHECK(sum(abs(p.grad())).item() > 0);
    }
  CHECK(contains(error_of([&] { adalora::orthogonal_regularization(*m, "default", 0.0); }),
                 "orth_reg_weight should be greater than 0"));
}

TEST_CASE("adalora: a layer pruned to rank 0 still loads and runs") {
  Quiet q;
  AdaLoraConfig c = schedule_config();
  auto m = mlp_host(5);
  inject_adapter_in_model(c, *m);
  randomise_E(*m);
  auto stored = std::dynamic_pointer_cast<AdaLoraConfig>(peft_config(*m));
  stored->rank_pattern = AdaLoraConfig::RankPattern{{"lin0.lora_E.default", std::vector<bool>(6, false)},
                                                    {"lin1.lora_E.default", {true, false, true, false, false, false}}};
  StateDict sd = get_peft_model_state_dict(*m);
  CHECK(sd.at("lin0.lora_A").shape() == Shape{0, 10});
  CHECK(sd.at("lin1.lora_B").shape() == Shape{20, 2});
  auto m2 = mlp_host(5);
  inject_adapter_in_model(*config_from_json(stored->to_json_string()), *m2);
  nn::LoadResult r = set_peft_model_state_dict(*m2, sd);
  CHECK(r.unexpected_keys.empty());
  auto l0 = std::dynamic_pointer_cast<adalora::SVDLinear>(m2->get_submodule("lin0"));
  auto l1 = std::dynamic_pointer_cast<adalora::SVDLinear>(m2->get_submodule("lin1"));
  CHECK(l0->r.at("default") == 0);
  CHECK(l0->ranknum()["default"].item() == 0.0);  // PEFT copies ranknum only when rank > 0
  CHECK(l1->ranknum()["default"].item() == 6.0);
  Tensor x = randn({4, 10}, default_generator());
  NoGradGuard ng;
  CHECK_ALLCLOSE(l0->forward(x), l0->base_layer().forward(x), 0.0, 0.0);
  Tensor y = m2->forward(x);
  CHECK(y.shape() == Shape{4, 2});
}
