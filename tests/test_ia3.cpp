// IA3 (PEFT's tuners/ia3/): config validation and JSON, injection on the host models,
// feed-forward input scaling vs output scaling, several active adapters,
// merge / unmerge / safe_merge round trips, Embedding rejection, state-dict
// keys and the IA3 goldens through the parity library.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "adapters/peft.h"
#include "nn/layers.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/testing.h"
#include "tools/host_models.h"
#include "tools/parity.h"

using namespace peft;

namespace {

struct QuietWarnings {
  std::vector<std::string> messages;
  WarningHandler old;
  QuietWarnings() {
    old = set_warning_handler([this](const std::string& m) { messages.push_back(m); });
  }
  ~QuietWarnings() { set_warning_handler(old); }
};

std::shared_ptr<nn::Module> ia3_mlp_host(uint64_t seed = 0) {
  Generator g(seed);
  tools::HostOptions o;
  o.gen = &g;
  return tools::build_host_model("mlp", {{"in", 10}, {"hidden", 20}, {"out", 2}}, o);
}
std::shared_ptr<nn::Module> ia3_dummy_host(uint64_t seed = 0) {
  Generator g(seed);
  tools::HostOptions o;
  o.gen = &g;
  return tools::build_host_model("dummy", {{"V", 10}, {"D", 10}}, o);
}
std::shared_ptr<nn::Module> ia3_deep_host(uint64_t seed = 0) {
  Generator g(seed);
  tools::HostOptions o;
  o.gen = &g;
  return tools::build_host_model("deep", {{"V", 32}, {"D", 16}, {"F", 32}, {"L", 2}}, o);
}
Tensor ia3_xs() {
  Generator g(7);
  return randn({5, 10}, g);
}

IA3Config mlp_config() {
  IA3Config c;
  c.target_modules = {"lin0", "lin1", "lin2"};
  c.feedforward_modules = {"lin1"};
  return c;
}

// Random values in every ia3_l of `adapter` (around 1, so unmerge is stable).
void randomize_ia3(nn::Module& m, const std::string& adapter, uint64_t seed = 5) {
  Generator g(seed);
  NoGradGuard ng;
  for (auto& [k, v] : m.named_parameters())
    if (k.find(".ia3_l." + adapter) != std::string::npos) {
      Tensor t = v;
      t.copy_(add(mul(randn(v.shape(), g), 0.3), 1.0));
    }
}

ia3::Linear& ia3_layer(nn::Module& m, const std::string& name) {
  auto* l = dynamic_cast<ia3::Linear*>(m.get_submodule(name).get());
  REQUIRE(l != nullptr);
  return *l;
}

std::string err_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("ia3: goldens pass in full") {
  for (const char* name : {"ia3_mlp", "ia3_deep_regex"}) {
    CAPTURE(name);
    tools::ParityReport r = tools::run_parity_case(std::string("tests/data/peft/") + name);
    for (const auto& c : r.checks) {
      CAPTURE(tools::format_check(c));
      CHECK(c.status == tools::ParityCheck::Status::pass);
    }
    CHECK(r.failed == 0);
    CHECK(r.skipped == 0);
    CHECK(r.passed >= 8);
  }
}

TEST_CASE("ia3: shapes, init, keys, trainability and repr") {
  auto m = ia3_mlp_host();
  inject_adapter_in_model(mlp_config(), *m);
  CHECK(ia3_layer(*m, "lin0").ia3_l()["default"].shape() == Shape{20, 1});
  CHECK(ia3_layer(*m, "lin1").ia3_l()["default"].shape() == Shape{1, 20});
  CHECK(ia3_layer(*m, "lin2").ia3_l()["default"].shape() == Shape{2, 1});
  CHECK(ia3_layer(*m, "lin1").is_feedforward);
  CHECK_FALSE(ia3_layer(*m, "lin0").is_feedforward);
  for (double v : ia3_layer(*m, "lin0").ia3_l()["default"].to_vector<double>()) CHECK(v == 1.0);
  CHECK(trainable_parameter_names(*m) ==
        std::vector<std::string>{"lin0.ia3_l.default", "lin1.ia3_l.default", "lin2.ia3_l.default"});
  CHECK(get_peft_model_state_dict(*m).keys() == std::vector<std::string>{"lin0.ia3_l", "lin1.ia3_l", "lin2.ia3_l"});
  std::string r = m->get_submodule("lin1")->repr();
  CHECK(r.rfind("Linear(\n", 0) == 0);
  CHECK(r.find("(ia3_l): ParameterDict(  (default): Parameter containing: [torch.FloatTensor of size 1x20])") !=
        std::string::npos);

  // init_ia3_weights=false keeps the randn draw.
  auto m2 = ia3_mlp_host();
  IA3Config c = mlp_config();
  c.init_ia3_weights = false;
  inject_adapter_in_model(c, *m2);
  bool all_one = true;
  for (double v : ia3_layer(*m2, "lin0").ia3_l()["default"].to_vector<double>()) all_one = all_one && v == 1.0;
  CHECK_FALSE(all_one);

  // Fresh adapter: output equals the base output.
  auto base = ia3_mlp_host();
  NoGradGuard ng;
  CHECK_ALLCLOSE(m->forward(ia3_xs()), base->forward(ia3_xs()), 0.0, 0.0);
}

TEST_CASE("ia3: feed-forward layers scale inputs, the others outputs") {
  auto base = ia3_mlp_host();
  auto m = ia3_mlp_host();
  inject_adapter_in_model(mlp_config(), *m);
  randomize_ia3(*m, "default");
  Tensor x = ia3_xs();
  NoGradGuard ng;
  // lin0: y = base(x) * l
  auto& l0 = ia3_layer(*m, "lin0");
  Tensor want0 = mul(base->get_submodule("lin0")->forward(x), l0.ia3_l()["default"].flatten());
  CHECK_ALLCLOSE(l0.forward(x), want0, 1e-6, 1e-6);
  // lin1 (feed-forward): y = base(x * l)
  Generator g(11);
  Tensor h = randn({5, 20}, g);
  auto& l1 = ia3_layer(*m, "lin1");
  Tensor want1 = base->get_submodule("lin1")->forward(mul(h, l1.ia3_l()["default"].flatten()));
  CHECK_ALLCLOSE(l1.forward(h), want1, 1e-6, 1e-6);
  // the two differ: scaling the input is not scaling the output
  Tensor out_scaled = mul(base->get_submodule("lin1")->forward(h), l1.ia3_l()["default"].flatten());
  CHECK(testing::max_abs_diff(l1.forward(h), out_scaled) > 1e-3);
}

TEST_CASE("ia3: gradients flow to ia3_l only") {
  auto m = ia3_mlp_host();
  inject_adapter_in_model(mlp_config(), *m);
  randomize_ia3(*m, "default");
  Tensor loss = sum(m->forward(ia3_xs()));
  loss.backward();
  for (auto& [k, p] : m->named_parameters()) {
    CAPTURE(k);
    if (k.find("ia3_l") != std::string::npos) CHECK(p.grad().defined());
    else CHECK_FALSE(p.grad().defined());
  }
}

TEST_CASE("ia3: two active adapters multiply") {
  auto m = ia3_mlp_host();
  QuietWarnings q;
  inject_adapter_in_model(mlp_config(), *m, "a");
  inject_adapter_in_model(mlp_config(), *m, "b");
  randomize_ia3(*m, "a", 1);
  randomize_ia3(*m, "b", 2);
  auto& l0 = ia3_layer(*m, "lin0");
  auto& l1 = ia3_layer(*m, "lin1");
  set_adapter(*m, std::vector<std::string>{"a", "b"});
  auto base = ia3_mlp_host();
  Tensor x = ia3_xs();
  NoGradGuard ng;
  Tensor v0 = mul(l0.ia3_l()["a"].flatten(), l0.ia3_l()["b"].flatten());
  CHECK_ALLCLOSE(l0.forward(x), mul(base->get_submodule("lin0")->forward(x), v0), 1e-6, 1e-6);
  Generator g(3);
  Tensor h = randn({4, 20}, g);
  Tensor v1 = mul(l1.ia3_l()["a"].flatten(), l1.ia3_l()["b"].flatten());
  CHECK_ALLCLOSE(l1.forward(h), base->get_submodule("lin1")->forward(mul(h, v1)), 1e-6, 1e-6);
  // merging both gives the same output
  Tensor before = m->forward(x);
  merge_adapters(*m, false, {"a", "b"});
  CHECK_ALLCLOSE(m->forward(x), before, 1e-5, 1e-5);
  unmerge_adapters(*m);
  CHECK_ALLCLOSE(m->forward(x), before, 1e-5, 1e-5);
}

TEST_CASE("ia3: merge / unmerge round trip, bias only for non-feed-forward") {
  auto m = ia3_mlp_host();
  inject_adapter_in_model(mlp_config(), *m);
  randomize_ia3(*m, "default");
  Tensor x = ia3_xs();
  std::map<std::string, Tensor> saved;
  for (const auto& [k, v] : m->state_dict()) saved[k] = v.detach().clone();
  Tensor before;
  {
    NoGradGuard ng;
    before = m->forward(x);
  }
  merge_adapters(*m, /*safe_merge=*/true);
  auto& l0 = ia3_layer(*m, "lin0");
  auto& l1 = ia3_layer(*m, "lin1");
  CHECK(l0.merged());
  {
    NoGradGuard ng;
    // W rows scaled (non-ff), W columns scaled (ff); ff bias untouched.
    CHECK_ALLCLOSE(l0.base_layer().param("weight"),
                   mul(saved["lin0.base_layer.weight"], l0.ia3_l()["default"]), 1e-6, 1e-7);
    CHECK_ALLCLOSE(l0.base_layer().param("bias"),
                   mul(saved["lin0.base_layer.bias"], l0.ia3_l()["default"].flatten()), 1e-6, 1e-7);
    CHECK_ALLCLOSE(l1.base_layer().param("weight"),
                   mul(saved["lin1.base_layer.weight"], l1.ia3_l()["default"]), 1e-6, 1e-7);
    CHECK_ALLCLOSE(l1.base_layer().param("bias"), saved["lin1.base_layer.bias"], 0.0, 0.0);
    CHECK_ALLCLOSE(m->forward(x), before, 1e-5, 1e-5);
  }
  QuietWarnings q;
  unmerge_adapters(*m);
  CHECK(std::find(q.messages.begin(), q.messages.end(), "Unmerge result can be inaccurate for (IA)^3.") !=
        q.messages.end());
  CHECK_FALSE(l0.merged());
  for (const auto& [k, v] : m->state_dict()) {
    CAPTURE(k);
    CHECK_ALLCLOSE(v, saved[k], 1e-6, 1e-6);
  }
  NoGradGuard ng;
  CHECK_ALLCLOSE(m->forward(x), before, 1e-5, 1e-5);
  // unmerging again only warns
  q.messages.clear();
  l0.unmerge();
  CHECK(std::find(q.messages.begin(), q.messages.end(), "Already unmerged. Nothing to do.") != q.messages.end());
}

TEST_CASE("ia3: unmerge divides by ia3_l + 1e-8 (zero scale stays finite)") {
  auto m = ia3_mlp_host();
  inject_adapter_in_model(mlp_config(), *m);
  auto& l0 = ia3_layer(*m, "lin0");
  {
    NoGradGuard ng;
    l0.ia3_l()["default"].zero_();
  }
  QuietWarnings q;
  l0.merge();
  l0.unmerge();
  for (double v : l0.base_layer().param("weight").to_vector<double>()) CHECK(std::isfinite(v));
}

TEST_CASE("ia3: safe_merge rejects non-finite results and leaves the weights") {
  auto m = ia3_mlp_host();
  inject_adapter_in_model(mlp_config(), *m);
  auto& l0 = ia3_layer(*m, "lin0");
  Tensor w0 = l0.base_layer().param("weight").detach().clone();
  {
    NoGradGuard ng;
    Tensor l = l0.ia3_l()["default"];
    l.fill_(std::numeric_limits<double>::infinity());
  }
  CHECK(err_of([&] { l0.merge(true); }) ==
        "NaNs detected in the merged weights. The adapter default seems to be broken");
  CHECK_FALSE(l0.merged());
  CHECK_ALLCLOSE(l0.base_layer().param("weight"), w0, 0.0, 0.0);
}

TEST_CASE("ia3: validation errors as PEFT") {
  SUBCASE("feedforward_modules must be a subset of target_modules") {
    IA3Config c;
    c.target_modules = {"lin0", "lin2"};
    c.feedforward_modules = {"lin1"};
    CHECK(err_of([&] { c.validate(); }) == "`feedforward_modules` should be a subset of `target_modules`");
    auto m = ia3_mlp_host();
    CHECK(err_of([&] { inject_adapter_in_model(c, *m); }) ==
          "`feedforward_modules` should be a subset of `target_modules`");
    // a regex on either side skips the check
    c.feedforward_modules = TargetModules::regex("lin1");
    CHECK(err_of([&] { c.validate(); }) == "<no error>");
  }
  SUBCASE("custom models need target_modules and feedforward_modules") {
    auto m = ia3_mlp_host();
    IA3Config c;
    c.feedforward_modules = TargetModules::list({});
    CHECK(err_of([&] { inject_adapter_in_model(c, *m); }) == "Please specify `target_modules` in `peft_config`");
    c.target_modules = {"lin0"};
    c.feedforward_modules = TargetModules();
    CHECK(err_of([&] { inject_adapter_in_model(c, *m); }) == "Please specify `feedforward_modules` in `peft_config`");
    // an empty list is enough
    c.feedforward_modules = TargetModules::list({});
    CHECK(err_of([&] { inject_adapter_in_model(c, *m); }) == "<no error>");
    CHECK_FALSE(ia3_layer(*m, "lin0").is_feedforward);
  }
  SUBCASE("from JSON: the same checks") {
    CHECK(err_of([] {
            config_from_json(R"({"peft_type": "IA3", "target_modules": ["a"], "feedforward_modules": ["b"]})");
          }) == "`feedforward_modules` should be a subset of `target_modules`");
  }
}

TEST_CASE("ia3: Embedding targets are rejected with PEFT's text") {
  auto m = ia3_dummy_host();
  IA3Config c;
  c.target_modules = {"embedding"};
  c.feedforward_modules = TargetModules::list({});
  CHECK(err_of([&] { inject_adapter_in_model(c, *m); }) ==
        "Target module Embedding(10, 10) is not supported. Currently, only `torch.nn.Linear`, `torch.nn.Conv2d`, "
        "and `Conv1D` are supported.");
}

TEST_CASE("ia3: feed-forward matching: plain suffix (no dot boundary) or full-match regex") {
  IA3Config c;
  c.target_modules = {"proj"};
  c.feedforward_modules = {"proj"};
  CHECK(c.is_feedforward("layers.0.mlp.down_proj"));  // plain endswith
  c.feedforward_modules = TargetModules::regex(".*down_proj");
  CHECK(c.is_feedforward("layers.0.mlp.down_proj"));
  CHECK_FALSE(c.is_feedforward("layers.0.mlp.down_proj.x"));
  CHECK_FALSE(c.is_feedforward("down"));

  auto m = ia3_deep_host();
  IA3Config d;
  d.target_modules = TargetModules::regex(".*(k_proj|down_proj)$");
  d.feedforward_modules = {"down_proj"};
  inject_adapter_in_model(d, *m);
  CHECK(ia3_layer(*m, "layers.1.mlp.down_proj").is_feedforward);
  CHECK_FALSE(ia3_layer(*m, "layers.1.attn.k_proj").is_feedforward);
  CHECK(ia3_layer(*m, "layers.1.mlp.down_proj").ia3_l()["default"].shape() == Shape{1, 32});
}

TEST_CASE("ia3: config JSON round trip") {
  IA3Config c = mlp_config();
  c.exclude_modules = {"lin2"};
  auto j = c.to_json();
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  CHECK(keys == std::vector<std::string>{"task_type", "peft_type", "auto_mapping", "peft_version",
                                         "base_model_name_or_path", "revision", "inference_mode", "target_modules",
                                         "exclude_modules", "feedforward_modules", "fan_in_fan_out",
                                         "modules_to_save", "init_ia3_weights"});
  auto back = std::dynamic_pointer_cast<IA3Config>(config_from_json(j));
  REQUIRE(back != nullptr);
  CHECK(back->feedforward_modules.names == std::vector<std::string>{"lin1"});
  CHECK(back->init_ia3_weights);
  CHECK(back->to_json() == j);
}

TEST_CASE("ia3: state dict save -> fresh model -> identical output") {
  auto m = ia3_mlp_host();
  inject_adapter_in_model(mlp_config(), *m);
  randomize_ia3(*m, "default");
  StateDict sd = get_peft_model_state_dict(*m);
  auto m2 = ia3_mlp_host();
  inject_adapter_in_model(*config_from_json(peft_config(*m)->to_json()), *m2);
  nn::LoadResult r = set_peft_model_state_dict(*m2, sd);
  CHECK(r.unexpected_keys.empty());
  NoGradGuard ng;
  CHECK_ALLCLOSE(m2->forward(ia3_xs()), m->forward(ia3_xs()), 0.0, 0.0);
  // disabled adapters: the base output
  enable_adapters(*m2, false);
  CHECK_ALLCLOSE(m2->forward(ia3_xs()), ia3_mlp_host()->forward(ia3_xs()), 0.0, 0.0);
}
