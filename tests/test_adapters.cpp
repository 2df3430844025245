// Adapters: the PEFT 0.21 goldens (through the parity library), target
// matching tables (PEFT's tuners/tuners_utils.py), every error message (PEFT's tuners/tuners_utils.py), merge/unmerge,
// delete_adapter, several active adapters, the README's seed example.
#include <optional>
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "adapters/peft.h"
#include "nn/layers.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/testing.h"
#include "tools/host_models.h"
#include "tools/parity.h"

using namespace peft;

namespace {

// Silences PEFT warnings in a scope, collecting them.
struct WarningCapture {
  std::vector<std::string> messages;
  WarningHandler old;
  WarningCapture() {
    old = set_warning_handler([this](const std::string& m) { messages.push_back(m); });
  }
  ~WarningCapture() { set_warning_handler(old); }
};

using testing::error_of;  // tests/testing.h

std::shared_ptr<nn::Module> dummy(uint64_t seed = 0) {
  Generator g(seed);
  tools::HostOptions o;
  o.gen = &g;
  return tools::build_host_model("dummy", {{"V", 10}, {"D", 10}}, o);
}
std::shared_ptr<nn::Module> mlp(uint64_t seed = 0) {
  Generator g(seed);
  tools::HostOptions o;
  o.gen = &g;
  return tools::build_host_model("mlp", {{"in", 10}, {"hidden", 20}, {"out", 2}}, o);
}
std::shared_ptr<nn::Module> deep(uint64_t seed = 0) {
  Generator g(seed);
  tools::HostOptions o;
  o.gen = &g;
  return tools::build_host_model("deep", {{"V", 32}, {"D", 16}, {"F", 32}, {"L", 2}}, o);
}

Tensor ids() { return from_vector(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6}, {2, 8}); }
Tensor xs() {
  Generator g(7);
  return randn({5, 10}, g);
}

// Gives every tensor of `adapter` random values so the adapter path is not a no-op.
void randomize_adapter(nn::Module& m, const std::string& adapter, uint64_t seed = 3) {
  Generator g(seed);
  NoGradGuard ng;
  for (auto& [k, v] : m.named_parameters()) {
    bool is_adapter = k.find(".lora_") != std::string::npos && k.find("." + adapter) != std::string::npos &&
                      k.find("lora_magnitude_vector") == std::string::npos;
    if (is_adapter) {
      Tensor t = v;
      t.copy_(mul(randn(v.shape(), g), 0.3));
    }
  }
}

Tensor run(nn::Module& m, const Tensor& x) {
  NoGradGuard ng;
  m.eval();
  return m.forward(x);
}

LoraConfig lcfg(std::vector<std::string> targets, int64_t r = 4, double alpha = 8) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = std::move(targets);
  return c;
}

std::vector<std::string> lora_cases() {
  return {"lora_seed_example",        "lora_embedding_and_linear",    "lora_mlp_bias_all",
          "lora_mlp_rslora_lora_only", "lora_deep_regex_patterns",    "lora_deep_layers_to_transform",
          "lora_deep_exclude",        "lora_two_adapters",            "lora_dora_mlp",
          "lora_low_cpu_mem_usage",   "lora_training_adamw",          "lora_mixed_batch"};
}

}  // namespace

// ------------------------------------------------------------------ goldens --

TEST_CASE("parity: every LoRA golden case passes") {
  for (const auto& name : lora_cases()) {
    CAPTURE(name);
    std::string dir = "tests/data/peft/" + name;
    REQUIRE(std::filesystem::exists(dir + "/case.json"));
    tools::ParityReport r = tools::run_parity_case(dir);
    for (const auto& c : r.checks) {
      CAPTURE(tools::format_check(c));
      CHECK(c.status != tools::ParityCheck::Status::fail);
    }
    CHECK(r.failed == 0);
    CHECK(r.passed >= 3);
  }
}

TEST_CASE("parity: every AdaLoRA golden case passes") {
  for (const char* name : {"adalora_mlp", "adalora_training"}) {
    CAPTURE(name);
    tools::ParityReport r = tools::run_parity_case(std::string("tests/data/peft/") + name);
    for (const auto& c : r.checks) {
      CAPTURE(tools::format_check(c));
      // the training case records no repr / key lists: those checks say so by name
      if (c.status == tools::ParityCheck::Status::skip) CHECK(c.detail == "not recorded in case.json");
      else CHECK(c.status == tools::ParityCheck::Status::pass);
    }
    CHECK(r.failed == 0);
    CHECK(r.skipped == (std::string(name) == "adalora_training" ? 5 : 0));
    CHECK(r.passed >= 6);
  }
}

// ----------------------------------------------------------------- matching --

TEST_CASE("target matching table (PEFT's tuners/tuners_utils.py)") {
  struct Row {
    const char* what;
    std::function<void(LoraConfig&)> setup;
    const char* key;
    TargetMatch expect;
  };
  auto list = [](std::vector<std::string> v) { return [v](LoraConfig& c) { c.target_modules = v; }; };
  const TargetMatch M = TargetMatch::matched, U = TargetMatch::unmatched, X = TargetMatch::excluded;
  std::vector<Row> rows = {
      {"exact", list({"linear"}), "linear", M},
      {"suffix on dot boundary", list({"linear"}), "model.linear", M},
      {"no partial component", list({"proj"}), "q_proj", U},
      {"no partial component nested", list({"proj"}), "attn.q_proj", U},
      {"suffix needs the end", list({"linear"}), "linear.sub", U},
      {"dotted suffix", list({"attn.q_proj"}), "layers.0.attn.q_proj", M},
      {"regex full match only", [](LoraConfig& c) { c.target_modules = TargetModules::regex("linear"); },
       "model.linear", U},
      {"regex full match", [](LoraConfig& c) { c.target_modules = TargetModules::regex(".*linear"); },
       "model.linear", M},
      {"regex alternation",
       [](LoraConfig& c) { c.target_modules = TargetModules::regex(R"(.*\.(q_proj|v_proj)$)"); },
       "layers.1.attn.v_proj", M},
      {"regex alternation miss",
       [](LoraConfig& c) { c.target_modules = TargetModules::regex(R"(.*\.(q_proj|v_proj)$)"); },
       "layers.1.attn.k_proj", U},
      {"exclude exact",
       [](LoraConfig& c) {
         c.target_modules = {"k_proj"};
         c.exclude_modules = TargetModules::list({"layers.0.attn.k_proj"});
       },
       "layers.0.attn.k_proj", X},
      {"exclude exact leaves others",
       [](LoraConfig& c) {
         c.target_modules = {"k_proj"};
         c.exclude_modules = TargetModules::list({"layers.0.attn.k_proj"});
       },
       "layers.1.attn.k_proj", M},
      {"exclude suffix",
       [](LoraConfig& c) {
         c.target_modules = {"k_proj"};
         c.exclude_modules = TargetModules::list({"k_proj"});
       },
       "layers.1.attn.k_proj", X},
      {"exclude regex",
       [](LoraConfig& c) {
         c.target_modules = {"k_proj"};
         c.exclude_modules = TargetModules::regex(R"(layers\.0\..*)");
       },
       "layers.0.attn.k_proj", X},
      {"exclude wins even if not targeted",
       [](LoraConfig& c) {
         c.target_modules = {"q_proj"};
         c.exclude_modules = TargetModules::list({"k_proj"});
       },
       "layers.0.attn.k_proj", X},
      {"layers_to_transform default index",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(std::vector<int64_t>{1});
       },
       "model.layers.1.mlp.up", M},
      {"layers_to_transform other index",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(std::vector<int64_t>{1});
       },
       "model.layers.0.mlp.up", U},
      {"default index needs two components before",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(std::vector<int64_t>{1});
       },
       "layers.1.mlp.up", U},
      {"layers_pattern at the root",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(std::vector<int64_t>{1});
         c.set_layers_pattern("layers");
       },
       "layers.1.mlp.up", M},
      {"layers_pattern other index",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(int64_t(0));
         c.set_layers_pattern("layers");
       },
       "layers.1.mlp.up", U},
      {"layers_to_transform int",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(int64_t(1));
         c.set_layers_pattern("layers");
       },
       "layers.1.mlp.up", M},
      {"layers_pattern list tried in order",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(std::vector<int64_t>{2});
         c.set_layers_pattern(std::vector<std::string>{"blocks", "h"});
       },
       "model.h.2.mlp.up", M},
      {"exact match skips the layer filter",
       [](LoraConfig& c) {
         c.target_modules = {"linear"};
         c.set_layers_to_transform(std::vector<int64_t>{0});
       },
       "linear", M},
      {"empty layers_to_transform = no filter",
       [](LoraConfig& c) {
         c.target_modules = {"up"};
         c.set_layers_to_transform(std::vector<int64_t>{});
       },
       "layers.1.mlp.up", M},
      {"modules_to_save guard",
       [](LoraConfig& c) {
         c.target_modules = {"lm_head"};
         c.modules_to_save = std::vector<std::string>{"lm_head"};
       },
       "lm_head", X},
      {"modules_to_save guard below",
       [](LoraConfig& c) {
         c.target_modules = {"lin"};
         c.modules_to_save = std::vector<std::string>{"head"};
       },
       "head.lin", X},
      {"modules_to_save guard is component-wise",
       [](LoraConfig& c) {
         c.target_modules = {"my_lm_head"};
         c.modules_to_save = std::vector<std::string>{"lm_head"};
       },
       "my_lm_head", M},
  };
  for (const auto& r : rows) {
    CAPTURE(r.what);
    CAPTURE(r.key);
    LoraConfig c;
    r.setup(c);
    CHECK(check_target_module_exists(c, r.key) == r.expect);
  }
  CHECK(layer_index_of("model.layers.3.mlp.up", std::nullopt) == 3);
  CHECK(!layer_index_of("layers.3.mlp.up", std::nullopt).has_value());
  CHECK(layer_index_of("a.b.12.c.7.d", std::nullopt) == 12);
}

TEST_CASE("rank_pattern / alpha_pattern lookup") {
  LoraConfig c = lcfg({"q_proj", "v_proj"}, 4, 32);
  c.rank_pattern = {{"layers.1.attn.q_proj", 2}};
  c.alpha_pattern = {{"v_proj", 4}};
  CHECK(c.rank_for("layers.1.attn.q_proj") == 2);
  CHECK(c.rank_for("layers.0.attn.q_proj") == 4);
  CHECK(c.rank_for("xlayers.1.attn.q_proj") == 4);
  CHECK(c.alpha_for("layers.0.attn.v_proj") == 4);
  CHECK(c.alpha_for("layers.0.attn.q_proj") == 32);
  CHECK(get_pattern_key({"q", "attn.q"}, "a.attn.q") == std::optional<std::string>("q"));
}

TEST_CASE("injection follows the matching rules on a deep model") {
  WarningCapture w;
  auto m = deep();
  LoraConfig c = lcfg({"q_proj", "up_proj"}, 2, 4);
  c.set_layers_to_transform(std::vector<int64_t>{1});
  c.set_layers_pattern("layers");
  inject_adapter_in_model(c, *m);
  std::vector<std::string> names;
  for (auto& [n, t] : tuner_layers(*m)) names.push_back(n);
  CHECK(names == std::vector<std::string>{"layers.1.attn.q_proj", "layers.1.mlp.up_proj"});

  auto m2 = deep();
  LoraConfig all = lcfg({}, 2, 4);
  all.target_modules = TargetModules::regex("all-linear");
  inject_adapter_in_model(all, *m2);
  CHECK(tuner_layers(*m2).size() == 13);  // 6 per block + lm_head (custom model keeps lm_head)
}

// ---------------------------------------------------------------- errors --

TEST_CASE("error messages (PEFT's tuners/tuners_utils.py)") {
  WarningCapture w;
  CHECK(error_of([] {
          auto m = dummy();
          inject_adapter_in_model(lcfg({"foo"}), *m);
        }) == "Target modules {'foo'} not found in the base model. Please check the target modules and try again.");
  CHECK(error_of([] {
          auto m = dummy();
          LoraConfig c;
          c.target_modules = TargetModules::regex("foo");
          inject_adapter_in_model(c, *m);
        }) == "Target modules foo not found in the base model. Please check the target modules and try again.");
  CHECK(error_of([] {
          auto m = dummy();
          LoraConfig c = lcfg({"foo"});
          c.set_layers_to_transform(std::vector<int64_t>{0});
          c.set_layers_pattern("layers");
          inject_adapter_in_model(c, *m);
        }) == "Target modules {'foo'} not found in the base model. Please check the target modules and try again. "
              "Note: You specified 'layers_to_transform': [0]. You also specified 'layers_pattern': layers.");
  CHECK(error_of([] {
          auto m = dummy();
          LoraConfig c = lcfg({"linear"});
          c.exclude_modules = TargetModules::list({"linear"});
          inject_adapter_in_model(c, *m);
        }) == "No modules were targeted for adaptation. This might be caused by a combination of mismatched target "
              "modules and excluded modules. Please check your `target_modules` and `exclude_modules` "
              "configuration. You may also have only targeted modules that are marked to be saved "
              "(`modules_to_save`).");
  CHECK(error_of([] {
          auto m = dummy();
          LoraConfig c = lcfg({"linear"});
          c.exclude_modules = TargetModules::regex(".*");
          inject_adapter_in_model(c, *m);
        }) == "All modules were excluded. This is likely unintended. Check your `target_modules`, "
              "`exclude_modules` and `modules_to_save` configuration.");
  CHECK(error_of([] {
          auto m = dummy();
          inject_adapter_in_model(lcfg({}), *m);
        }) == "No `target_modules` passed but also no `target_parameters` found. Please check the values for these "
              "arguments.");
  CHECK(error_of([] {
          auto m = dummy();
          LoraConfig c;
          inject_adapter_in_model(c, *m);
        }) == "Please specify `target_modules` or `target_parameters`in `peft_config`");
  CHECK(error_of([] {
          auto m = mlp();
          inject_adapter_in_model(lcfg({"relu"}), *m);
        }) == "Target module ReLU() is not supported. Currently, only the following modules are supported: "
              "`torch.nn.Linear`, `torch.nn.Embedding`, `torch.nn.Conv1d`, `torch.nn.Conv2d`, `torch.nn.Conv3d`, "
              "`transformers.pytorch_utils.Conv1D`, `torch.nn.MultiheadAttention.`.");
  CHECK(error_of([] {
          auto m = mlp();
          inject_adapter_in_model(lcfg({"lin0"}, 0), *m);
        }) == "`r` should be a positive integer value but the value passed is 0");
  CHECK(error_of([] {
          LoraConfig c;
          c.target_modules = TargetModules::regex(".*");
          c.set_layers_to_transform(int64_t(0));
          c.validate();
        }) == "`layers_to_transform` cannot be used when `target_modules` is a str.");
  CHECK(error_of([] {
          LoraConfig c;
          c.target_modules = TargetModules::regex(".*");
          c.set_layers_pattern("layers");
          c.validate();
        }) == "`layers_pattern` cannot be used when `target_modules` is a str.");
  CHECK(error_of([] {
          LoraConfig c = lcfg({"x"});
          c.set_layers_pattern("layers");
          c.validate();
        }) == "When `layers_pattern` is specified, `layers_to_transform` must also be specified. ");
  CHECK(error_of([] {
          auto m = mlp();
          LoraConfig a = lcfg({"lin0"});
          a.bias = "all";
          LoraConfig b = lcfg({"lin1"});
          b.bias = "lora_only";
          inject_adapter_in_model(a, *m, "a");
          inject_adapter_in_model(b, *m, "b");
        }) == "LoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for all "
              "adapters.");
  CHECK(error_of([] {
          auto m = mlp();
          inject_adapter_in_model(lcfg({"lin0"}), *m);
          NoGradGuard ng;
          m->get_submodule("lin0.lora_B.default")->param("weight").fill_(NAN);
          merge_adapters(*m, /*safe_merge=*/true);
        }) == "NaNs detected in the merged weights. The adapter default seems to be broken");
  CHECK(error_of([] {
          auto m = dummy();
          LoraConfig c = lcfg({"linear"});
          c.init_lora_weights = "pissa";
          inject_adapter_in_model(c, *m);
        }).find("pissa") != std::string::npos);
  std::string mismatch = error_of([] {
    auto m = dummy();
    inject_adapter_in_model(lcfg({"linear"}, 64), *m);
    StateDict sd;
    sd.set("linear.lora_A.weight", zeros({3, 3}));
    set_peft_model_state_dict(*m, sd);
  });
  CHECK(mismatch.find("size mismatch for linear.lora_A.default.weight: copying a param with shape [3, 3] from "
                      "checkpoint, the shape in current model is [64, 10].") != std::string::npos);
  CHECK(error_of([] { config_from_json(std::string(R"({"peft_type": "NOPE"})")); }).find("NOPE") != std::string::npos);
}

TEST_CASE("warnings: unused exclude_modules, second injection, fan_in_fan_out") {
  WarningCapture w;
  auto m = dummy();
  LoraConfig c = lcfg({"linear"});
  c.exclude_modules = TargetModules::list({"nothing"});
  c.fan_in_fan_out = true;
  inject_adapter_in_model(c, *m, "a");
  inject_adapter_in_model(lcfg({"lm_head"}), *m, "b");
  std::string all;
  for (auto& s : w.messages) all += s + "\n";
  CHECK(all.find("You have passed exclude_modules={'nothing'} but no modules were excluded.") != std::string::npos);
  CHECK(all.find("Already found a `peft_config` attribute in the model.") != std::string::npos);
  CHECK(all.find("fan_in_fan_out is set to True") != std::string::npos);
}

// ------------------------------------------------------------ structure --

TEST_CASE("injection keeps the base module object and freezes it") {
  auto m = dummy();
  auto before = m->get_submodule("linear");
  inject_adapter_in_model(lcfg({"linear"}), *m);
  auto layer = std::dynamic_pointer_cast<lora::Linear>(m->get_submodule("linear"));
  REQUIRE(layer);
  CHECK(layer->base_layer_ptr() == before);  // the same object, never copied
  CHECK(!before->param("weight").requires_grad());
  CHECK(trainable_parameter_names(*m) ==
        std::vector<std::string>{"linear.lora_A.default.weight", "linear.lora_B.default.weight"});
  CHECK(peft_config(*m)->peft_type == "LORA");
  // Fresh adapter: B = 0, so the output equals the base output.
  auto ref = dummy();
  CHECK_ALLCLOSE(run(*m, ids()), run(*ref, ids()), 0, 0);
}

TEST_CASE("second injection: newest adapter active everywhere (PEFT's tuners/tuners_utils.py)") {
  WarningCapture w;
  auto m = dummy();
  inject_adapter_in_model(lcfg({"linear"}), *m, "a");
  inject_adapter_in_model(lcfg({"lm_head"}), *m, "b");
  for (auto& [n, t] : tuner_layers(*m)) CHECK(t->active_adapters() == std::vector<std::string>{"b"});
  CHECK(peft_state(*m)->adapter_names() == std::vector<std::string>{"a", "b"});
  CHECK(trainable_parameter_names(*m) ==
        std::vector<std::string>{"linear.lora_A.a.weight", "linear.lora_B.a.weight", "lm_head.lora_A.b.weight",
                                 "lm_head.lora_B.b.weight"});
}

TEST_CASE("config JSON round trip keeps unknown fields") {
  std::string text = R"({"peft_type": "LORA", "r": 6, "lora_alpha": 12, "target_modules": ["b", "a"],
    "rank_pattern": {"z": 2, "a": 3}, "layers_to_transform": 1, "layers_pattern": "layers",
    "some_future_field": {"x": [1, 2]}, "init_lora_weights": "gaussian", "lora_dropout": 0.0})";
  auto c = std::dynamic_pointer_cast<LoraConfig>(config_from_json(std::string(text)));
  REQUIRE(c);
  CHECK(c->r == 6);
  CHECK(c->lora_alpha == 12);
  CHECK(c->target_modules.names == std::vector<std::string>{"b", "a"});
  CHECK(c->rank_pattern.front().first == "z");  // insertion order kept
  CHECK(c->layers_to_transform_is_int);
  CHECK(c->extra.contains("some_future_field"));
  std::string out = c->to_json_string();
  CHECK(out.find("\"some_future_field\"") != std::string::npos);
  CHECK(out.find("\"layers_to_transform\": 1") != std::string::npos);
  CHECK(out.find("\"lora_dropout\": 0.0") != std::string::npos);
  CHECK(out.find("\"lora_alpha\": 12,") != std::string::npos);
  auto back = std::dynamic_pointer_cast<LoraConfig>(config_from_json(out));
  CHECK(back->to_json_string() == out);
  // keys sorted, as json.dumps(sort_keys=True)
  CHECK(out.find("\"alora_invocation_tokens\"") < out.find("\"alpha_pattern\""));
  // Every LoRA case's recorded config parses.
  for (const auto& name : lora_cases()) {
    std::ifstream f("tests/data/peft/" + name + "/case.json");
    auto j = ordered_json::parse(f);
    for (const auto& a : j["adapters"]) {
      auto cfg = config_from_json(a["config"]);
      CHECK(cfg->extra.empty());
      CHECK(ordered_json::parse(cfg->to_json_string()) == ordered_json::parse(nlohmann::json(a["config"]).dump()));
    }
  }
}

// ------------------------------------------------------- merge / unmerge --

TEST_CASE("merge then unmerge restores the weights; merged == unmerged output") {
  struct Setup {
    const char* name;
    std::function<std::shared_ptr<nn::Module>()> make;
    LoraConfig cfg;
    Tensor x;
  };
  LoraConfig dora = lcfg({"lin0", "lin1"});
  dora.use_dora = true;
  LoraConfig rs = lcfg({"lin0", "lin1", "lin2"}, 16, 8);
  rs.use_rslora = true;
  std::vector<Setup> setups = {
      {"mlp", [] { return mlp(); }, lcfg({"lin0", "lin1"}), xs()},
      {"rslora", [] { return mlp(); }, rs, xs()},
      {"dora", [] { return mlp(); }, dora, xs()},
      {"embedding+linear", [] { return dummy(); }, lcfg({"embedding", "linear", "lm_head"}), ids()},
      {"deep regex", [] { return deep(); }, [] {
         LoraConfig c;
         c.target_modules = TargetModules::regex(R"(.*\.(q_proj|v_proj|down_proj)$)");
         return c;
       }(),
       from_vector(std::vector<int64_t>{1, 5, 9, 30, 2, 0, 3, 3, 4, 8, 31, 7}, {2, 6})},
  };
  for (auto& s : setups) {
    CAPTURE(s.name);
    auto m = s.make();
    auto base_sd = m->state_dict();
    std::map<std::string, Tensor> orig;
    for (auto& [k, v] : base_sd) orig[k] = v.clone();
    inject_adapter_in_model(s.cfg, *m);
    randomize_adapter(*m, "default");
    if (s.cfg.use_dora) {  // move the magnitude away from its init too
      NoGradGuard ng;
      for (auto& [k, v] : m->named_parameters())
        if (k.find("lora_magnitude_vector") != std::string::npos) {
          Tensor t = v;
          t.mul_(1.3);
        }
    }
    Tensor unmerged = run(*m, s.x);
    merge_adapters(*m);
    for (auto& [n, t] : tuner_layers(*m)) CHECK(t->merged());
    Tensor merged = run(*m, s.x);
    CHECK_ALLCLOSE(merged, unmerged, 1e-4, 1e-5);
    unmerge_adapters(*m);
    for (auto& [n, t] : tuner_layers(*m)) CHECK(!t->merged());
    for (auto& [k, v] : m->state_dict()) {
      std::string host = k;
      for (size_t p; (p = host.find("base_layer.")) != std::string::npos;) host.erase(p, 11);
      if (orig.count(host)) CHECK_ALLCLOSE(v, orig[host], 0, 1e-6);
    }
    CHECK_ALLCLOSE(run(*m, s.x), unmerged, 1e-4, 1e-6);
    // get_delta_weight has the base weight's shape
    for (auto& [n, t] : tuner_layers(*m))
      CHECK(t->get_delta_weight("default").shape() == t->get_base_layer().param("weight").shape());
  }
}

TEST_CASE("disable / enable adapters") {
  WarningCapture w;
  auto m = mlp();
  auto ref = mlp();
  inject_adapter_in_model(lcfg({"lin0", "lin2"}), *m);
  randomize_adapter(*m, "default");
  Tensor on = run(*m, xs());
  enable_adapters(*m, false);
  CHECK_ALLCLOSE(run(*m, xs()), run(*ref, xs()), 0, 0);
  CHECK(trainable_parameter_names(*m).empty());
  merge_adapters(*m);  // disabled + merged: forward unmerges first
  CHECK_ALLCLOSE(run(*m, xs()), run(*ref, xs()), 1e-5, 1e-6);
  enable_adapters(*m, true);
  CHECK_ALLCLOSE(run(*m, xs()), on, 1e-5, 1e-6);
  CHECK(trainable_parameter_names(*m).size() == 4);
}

// -------------------------------------------------------- multi adapters --

TEST_CASE("two adapters active at once, delete_adapter") {
  WarningCapture w;
  auto m = dummy();
  auto ref = dummy();
  inject_adapter_in_model(lcfg({"linear"}, 4, 8), *m, "default");
  inject_adapter_in_model(lcfg({"linear", "lm_head"}, 2, 2), *m, "other");
  randomize_adapter(*m, "default", 11);
  randomize_adapter(*m, "other", 12);
  Tensor x = ids();
  set_adapter(*m, "default");
  Tensor only_default = run(*m, x);
  set_adapter(*m, "other");
  Tensor only_other = run(*m, x);
  set_adapter(*m, std::vector<std::string>{"default", "other"});
  Tensor both = run(*m, x);
  CHECK(trainable_parameter_names(*m).size() == 6);
  // both active == both merged
  merge_adapters(*m, true);
  CHECK_ALLCLOSE(run(*m, x), both, 1e-4, 1e-5);
  unmerge_adapters(*m);
  CHECK(testing::max_abs_diff(both, only_default) > 1e-3);
  CHECK(testing::max_abs_diff(both, only_other) > 1e-3);
  delete_adapter(*m, "default");
  CHECK(peft_state(*m)->adapter_names() == std::vector<std::string>{"other"});
  for (auto& [k, v] : m->state_dict()) CHECK(k.find(".default") == std::string::npos);
  for (auto& [n, t] : tuner_layers(*m)) CHECK(t->active_adapters() == std::vector<std::string>{"other"});
  CHECK_ALLCLOSE(run(*m, x), only_other, 1e-5, 1e-6);
  CHECK(error_of([&] { get_peft_model_state_dict(*m, "default"); }).find("default") != std::string::npos);
  CHECK(get_peft_model_state_dict(*m, "other").keys() ==
        std::vector<std::string>{"linear.lora_A.weight", "linear.lora_B.weight", "lm_head.lora_A.weight",
                                 "lm_head.lora_B.weight"});
  delete_adapter(*m, "other");
  for (auto& [n, t] : tuner_layers(*m)) CHECK(t->active_adapters().empty());
  CHECK_ALLCLOSE(run(*m, x), run(*ref, x), 0, 1e-6);  // merge+unmerge above rounds the base weights
}

TEST_CASE("state dict round trip: save -> fresh model -> identical output") {
  WarningCapture w;
  for (bool low_cpu : {false, true}) {
    CAPTURE(low_cpu);
    auto m = deep(1);
    LoraConfig c = lcfg({"q_proj", "v_proj", "lm_head", "emb"}, 4, 16);
    c.bias = "lora_only";
    inject_adapter_in_model(c, *m);
    randomize_adapter(*m, "default");
    Tensor x = from_vector(std::vector<int64_t>{1, 5, 9, 30, 2, 0, 3, 3, 4, 8, 31, 7}, {2, 6});
    Tensor out = run(*m, x);
    StateDict sd = get_peft_model_state_dict(*m);
    auto fresh = deep(1);
    inject_adapter_in_model(c, *fresh, "default", low_cpu);
    nn::LoadResult r = set_peft_model_state_dict(*fresh, sd, "default", low_cpu);
    CHECK(r.unexpected_keys.empty());
    for (auto& k : r.missing_keys) CHECK(k.find("lora_") == std::string::npos);
    CHECK_ALLCLOSE(run(*fresh, x), out, 1e-5, 1e-6);
    // base_model.model. prefixed keys (PeftModel checkpoints) load too
    StateDict prefixed;
    for (auto& [k, v] : sd) prefixed.set("base_model.model." + k, v);
    auto fresh2 = deep(1);
    inject_adapter_in_model(c, *fresh2, "default", low_cpu);
    CHECK(set_peft_model_state_dict(*fresh2, prefixed, "default", low_cpu).unexpected_keys.empty());
    CHECK_ALLCLOSE(run(*fresh2, x), out, 1e-5, 1e-6);
  }
}

TEST_CASE("low_cpu_mem_usage: meta until loaded, missing tensors stay meta and throw") {
  auto m = dummy();
  inject_adapter_in_model(lcfg({"linear", "embedding"}), *m, "default", true);
  for (auto& [k, v] : get_peft_model_state_dict(*m)) CHECK(v.is_meta());
  std::string e = error_of([&] { run(*m, ids()); });
  CHECK(e.find("meta") != std::string::npos);
  CHECK(e.find("low_cpu_mem_usage") != std::string::npos);
  StateDict sd;
  sd.set("linear.lora_A.weight", zeros({4, 10}));
  sd.set("linear.lora_B.weight", zeros({10, 4}));
  auto r = set_peft_model_state_dict(*m, sd, "default", true);
  CHECK(r.unexpected_keys.empty());
  CHECK(!m->get_submodule("linear.lora_A.default")->param("weight").is_meta());
  CHECK(m->get_submodule("linear.lora_A.default")->param("weight").requires_grad());
  CHECK(error_of([&] { run(*m, ids()); }).find("lora_embedding_A") != std::string::npos);
}

TEST_CASE("modules_to_save wraps a trainable copy, saved under the module's own keys") {
  WarningCapture w;
  auto m = dummy();
  LoraConfig c = lcfg({"linear"});
  c.modules_to_save = std::vector<std::string>{"lm_head"};
  inject_adapter_in_model(c, *m);
  auto wrapper = std::dynamic_pointer_cast<ModulesToSaveWrapper>(m->get_submodule("lm_head"));
  REQUIRE(wrapper);
  CHECK(m->get_submodule("lm_head")->repr().rfind("ModulesToSaveWrapper(\n  (original_module): Linear(", 0) == 0);
  CHECK(trainable_parameter_names(*m) ==
        std::vector<std::string>{"linear.lora_A.default.weight", "linear.lora_B.default.weight",
                                 "lm_head.modules_to_save.default.weight", "lm_head.modules_to_save.default.bias"});
  CHECK(get_peft_model_state_dict(*m).keys() == std::vector<std::string>{"linear.lora_A.weight",
                                                                          "linear.lora_B.weight", "lm_head.weight",
                                                                          "lm_head.bias"});
  {
    NoGradGuard ng;
    m->get_submodule("lm_head.modules_to_save.default")->param("bias").fill_(0.5);
  }
  Tensor out = run(*m, ids());
  StateDict sd = get_peft_model_state_dict(*m);
  auto fresh = dummy();
  inject_adapter_in_model(c, *fresh);
  auto r = set_peft_model_state_dict(*fresh, sd);
  CHECK(r.unexpected_keys.empty());
  CHECK_ALLCLOSE(run(*fresh, ids()), out, 1e-6, 1e-6);
}

// ------------------------------------------------------------ README --

namespace {
// The README example (adapters/README_SNIPPET.md), verbatim apart from main().
struct DummyModel : nn::Module {
  DummyModel() : Module("DummyModel") {
    register_module("embedding", std::make_shared<nn::Embedding>(10, 10));
    register_module("linear", std::make_shared<nn::Linear>(10, 10));
    register_module("lm_head", std::make_shared<nn::Linear>(10, 10));
  }
  Tensor forward(const Tensor& ids) override {
    Tensor h = child("embedding")(ids);
    h = child("linear")(h);
    return child("lm_head")(h);
  }
};

std::string readme_example() {
  std::ostringstream out;
  LoraConfig config;
  config.lora_alpha = 16;
  config.lora_dropout = 0.1;
  config.r = 64;
  config.bias = "none";
  config.target_modules = {"linear"};

  auto model = std::make_shared<DummyModel>();
  inject_adapter_in_model(config, *model);
  out << model->repr() << "\n";

  StateDict peft_state_dict = get_peft_model_state_dict(*model);
  for (const auto& [key, tensor] : peft_state_dict) out << key << " " << shape_str(tensor.shape()) << "\n";

  auto fresh = std::make_shared<DummyModel>();
  inject_adapter_in_model(config, *fresh, "default", /*low_cpu_mem_usage=*/true);
  nn::LoadResult outcome = set_peft_model_state_dict(*fresh, peft_state_dict, "default", /*low_cpu_mem_usage=*/true);
  out << "unexpected_keys: " << outcome.unexpected_keys.size() << "\n";
  return out.str();
}
}  // namespace

TEST_CASE("README seed example prints PEFT 0.21's text") {
  const std::string expected =
      "DummyModel(\n"
      "  (embedding): Embedding(10, 10)\n"
      "  (linear): lora.Linear(\n"
      "    (base_layer): Linear(in_features=10, out_features=10, bias=True)\n"
      "    (lora_dropout): ModuleDict(\n"
      "      (default): Dropout(p=0.1, inplace=False)\n"
      "    )\n"
      "    (lora_A): ModuleDict(\n"
      "      (default): Linear(in_features=10, out_features=64, bias=False)\n"
      "    )\n"
      "    (lora_B): ModuleDict(\n"
      "      (default): Linear(in_features=64, out_features=10, bias=False)\n"
      "    )\n"
      "    (lora_embedding_A): ParameterDict()\n"
      "    (lora_embedding_B): ParameterDict()\n"
      "    (lora_magnitude_vector): ModuleDict()\n"
      "  )\n"
      "  (lm_head): Linear(in_features=10, out_features=10, bias=True)\n"
      ")\n"
      "linear.lora_A.weight [64, 10]\n"
      "linear.lora_B.weight [10, 64]\n"
      "unexpected_keys: 0\n";
  CHECK(readme_example() == expected);
}

TEST_CASE("mixed batch: errors as PEFT") {
  WarningCapture w;
  auto m = mlp();
  inject_adapter_in_model(lcfg({"lin0"}), *m, "a");
  CHECK(error_of([&] { forward_mixed_batch(*m, xs(), {"a", "a"}); })
            .find("Length of `adapter_names` should be the same as the number of inputs, but got 2 and 5") == 0);
  CHECK(error_of([&] { forward_mixed_batch(*m, xs(), {"a", "x", "a", "a", "a"}); })
            .find("Trying to infer with non-existing adapter(s): x") == 0);
  merge_adapters(*m);
  CHECK(error_of([&] { forward_mixed_batch(*m, xs(), {"a", "a", "a", "a", "a"}); })
            .find("Cannot pass `adapter_names` when there are merged adapters") == 0);
  unmerge_adapters(*m);
  // after an error the layers are back to normal forwards
  CHECK_ALLCLOSE(run(*m, xs()), run(*m, xs()), 0, 0);
}

TEST_CASE("mixed batch: rows of one adapter in a run and scattered rows both match the float64 formula") {
  // Without autograd a run of rows of one adapter takes the in-place product on that slice
  // (serve sorts its batches so); scattered rows take index_select / index_add. Both against
  // y = Wx + b + s·B(Ax) per row in float64.
  Generator g(31);
  auto host = std::make_shared<nn::Module>("Host");
  host->register_module("lin", std::make_shared<nn::Linear>(64, 48, true, &g));
  LoraConfig c;
  c.r = 8;
  c.lora_alpha = 16;
  c.target_modules = TargetModules::list({"lin"});
  c.init_lora_weights = "gaussian";
  WarningCapture w;
  for (const char* a : {"a", "b"}) {
    inject_adapter_in_model(c, *host, a);
    NoGradGuard ng;
    host->child("lin").child("lora_B").child(a).param("weight").copy_(randn({48, 8}, g));
  }
  auto& layer = host->child("lin");
  auto d64 = [](const Tensor& t) { return t.to(DType::float64); };
  auto& base = static_cast<TunerLayer&>(layer).get_base_layer();
  const Tensor W = d64(base.param("weight")), b = d64(base.param("bias"));
  Tensor x = randn({6, 64}, g);
  auto want_row = [&](int64_t i, const std::string& a) {
    Tensor xi = d64(x.narrow(0, i, 1));
    Tensor y = add(matmul(xi, W.t()), b);
    if (a == "__base__") return y;
    const Tensor A = d64(layer.child("lora_A").child(a).param("weight"));
    const Tensor B = d64(layer.child("lora_B").child(a).param("weight"));
    return add(y, mul(matmul(matmul(xi, A.t()), B.t()), 2.0));
  };
  for (const std::vector<std::string>& names :
       {std::vector<std::string>{"a", "a", "a", "b", "b", "__base__"}, std::vector<std::string>{"a", "b", "a", "__base__", "a", "b"}}) {
    for (bool grad : {false, true}) {
      CAPTURE(names[1]);
      CAPTURE(grad);
      std::optional<NoGradGuard> ng;
      if (!grad) ng.emplace();
      Tensor got = forward_mixed_batch(*host, names, [&] { return layer.forward(x); });
      for (int64_t i = 0; i < 6; ++i) CHECK_ALLCLOSE(d64(got.narrow(0, i, 1)), want_row(i, names[size_t(i)]), 1e-5, 1e-5);
    }
  }
}

TEST_CASE("lora.Linear inference fast paths match the float64 formula y = Wx + b + s·B(Ax)") {
  // Without autograd, float32 LoRA forwards skip the module calls: own loops for tiny
  // products (any rank up to 64), two direct products above. The reference is the
  // formula in float64, not another path of the code under test.
  struct Shape {
    int64_t tokens, d, r;
  };
  for (Shape sh : {Shape{8, 64, 4}, Shape{3, 16, 40}, Shape{64, 256, 8}, Shape{5, 300, 17}}) {
    CAPTURE(sh.tokens);
    CAPTURE(sh.r);
    Generator g(uint64_t(sh.d * 7 + sh.r));
    auto host = std::make_shared<nn::Module>("Host");
    host->register_module("lin", std::make_shared<nn::Linear>(sh.d, sh.d, true, &g));
    LoraConfig c;
    c.r = sh.r;
    c.lora_alpha = 3.0 * double(sh.r);
    c.target_modules = TargetModules::list({"lin"});
    c.init_lora_weights = "gaussian";
    inject_adapter_in_model(c, *host);
    auto& layer = host->child("lin");
    {
      NoGradGuard ng;  // lora_B starts at zero: give it values
      layer.child("lora_B").child("default").param("weight").copy_(randn({sh.d, sh.r}, g));
    }
    Tensor x = randn({sh.tokens, sh.d}, g);
    auto& base = static_cast<TunerLayer&>(layer).get_base_layer();
    auto d64 = [](const Tensor& t) { return t.to(DType::float64); };
    const Tensor W = d64(base.param("weight")), b = d64(base.param("bias"));
    const Tensor A = d64(layer.child("lora_A").child("default").param("weight"));
    const Tensor B = d64(layer.child("lora_B").child("default").param("weight"));
    Tensor want = add(add(matmul(d64(x), W.t()), b), mul(matmul(matmul(d64(x), A.t()), B.t()), 3.0));
    NoGradGuard ng;
    for (const Tensor& in : {x, x.t().contiguous().t()}) {  // contiguous and column-major input
      Tensor got = layer.forward(in);
      CHECK(max(abs(sub(d64(got), want))).item() <= 2e-5 * std::max(1.0, max(abs(want)).item()));
    }
  }
}
