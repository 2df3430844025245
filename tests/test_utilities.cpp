// Model-level utilities against real PEFT 0.21 (tests/data/peft_extra/lora_weighted, made by
// tools/python/make_extra_goldens.py): add_weighted_adapter (linear, cat, svd),
// merge_and_unload / unload, inject_from_state_dict; and the scoped guards and set_scale,
// checked against outputs of the same model computed another way.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "adapters/peft.h"
#include "io/safetensors.h"
#include "tests/testing.h"
#include "tools/host_models.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {

const fs::path kCase = "tests/data/peft_extra/lora_weighted";

nlohmann::json case_json() {
  std::ifstream in(kCase / "case.json");
  std::ostringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// Dummy host with base weights and the source adapters x, y, z loaded (x active).
std::shared_ptr<nn::Module> model_with_sources(const nlohmann::json& meta) {
  auto m = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
  m->load_state_dict(io::load_safetensors((kCase / "base.safetensors").string()), true);
  auto quiet = set_warning_handler([](const std::string&) {});
  for (std::string n : {"x", "y", "z"}) {
    inject_adapter_in_model(*config_from_json(meta["sources"][n].dump()), *m, n);
    auto r = set_peft_model_state_dict(*m, io::load_safetensors((kCase / ("adapter_" + n + ".safetensors")).string()), n);
    REQUIRE(r.unexpected_keys.empty());
  }
  set_warning_handler(quiet);
  set_adapter(*m, "x");
  m->eval();
  return m;
}

Tensor run(nn::Module& m, const Tensor& ids) {
  NoGradGuard ng;
  return m.forward(ids);
}

}  // namespace

TEST_CASE("add_weighted_adapter matches PEFT 0.21 for linear, cat and svd (and one adapter -> linear)") {
  auto meta = case_json();
  StateDict io = io::load_safetensors((kCase / "io.safetensors").string());
  auto m = model_with_sources(meta);
  Tensor ids = io.at("input");
  for (const auto& c : meta["combos"]) {
    std::string name = c["name"];
    CAPTURE(name);
    WeightedAdapterOptions o;
    o.combination_type = c["combination_type"];
    if (c.contains("svd_rank")) o.svd_rank = c["svd_rank"].get<int64_t>();
    if (c.contains("svd_clamp")) o.svd_clamp = c["svd_clamp"].get<double>();
    REQUIRE(add_weighted_adapter(*m, c["adapters"].get<std::vector<std::string>>(),
                                 c["weights"].get<std::vector<double>>(), name, o));
    // the active adapter stays, the new one is frozen
    CHECK(peft_state(*m)->active_adapters == std::vector<std::string>{"x"});
    for (const auto& [k, p] : m->named_parameters())
      if (k.find("." + name + ".") != std::string::npos)
        CHECK_MESSAGE(!p.requires_grad(), k);
    auto cfg = std::dynamic_pointer_cast<LoraConfig>(peft_config(*m, name));
    REQUIRE(cfg);
    CHECK(cfg->r == c["config"]["r"].get<int64_t>());
    CHECK(cfg->lora_alpha == c["config"]["lora_alpha"].get<double>());
    auto targets = cfg->target_modules.names;
    std::sort(targets.begin(), targets.end());
    CHECK(targets == c["config"]["target_modules"].get<std::vector<std::string>>());

    std::string prefix = name + ".";
    const bool exact_factors = c["combination_type"] != "svd" || c["adapters"].size() == 1;
    StateDict sd = get_peft_model_state_dict(*m, name);
    size_t compared = 0;
    for (const auto& [k, v] : io) {
      if (k.rfind(prefix + "adapter.", 0) == 0 && exact_factors) {
        std::string key = k.substr(prefix.size() + 8 + std::string("base_model.model.").size());
        REQUIRE_MESSAGE(sd.contains(key), key);
        CHECK_ALLCLOSE(sd.at(key), v, 1e-5, 1e-6);
        ++compared;
      } else if (k.rfind(prefix + "delta.", 0) == 0) {
        std::string module = k.substr(prefix.size() + 6);
        auto layer = std::dynamic_pointer_cast<TunerLayer>(m->get_submodule(module));
        REQUIRE(layer);
        CHECK_ALLCLOSE(layer->get_delta_weight(name), v, 1e-4, 1e-5);
        ++compared;
      }
    }
    CHECK(compared >= 3);
    set_adapter(*m, name);
    CHECK_ALLCLOSE(run(*m, ids), io.at(prefix + "output"), 1e-4, 1e-5);
    set_adapter(*m, "x");
  }
  // svd_clamp: both factors clamped to ±(q-quantile of all their values). The bound depends on
  // the SVD's sign convention (LAPACK's in PEFT, Eigen's here), so this is checked against the
  // unclamped factors of the same SVD rather than against PEFT.
  {
    WeightedAdapterOptions o;
    o.svd_rank = 3;
    o.svd_clamp = 0.8;
    REQUIRE(add_weighted_adapter(*m, {"x", "y"}, {1.0, -0.5}, "svd_clamped", o));
    for (std::string layer : {"linear", "lm_head"}) {
      CAPTURE(layer);
      auto l = std::dynamic_pointer_cast<lora::LoraLayer>(m->get_submodule(layer));
      Tensor A = l->lora_A()["svd_xy_r3"].param("weight"), B = l->lora_B()["svd_xy_r3"].param("weight");
      std::vector<double> all = cat({B.flatten(), A.flatten()}, 0).to(DType::float64).to_vector<double>();
      std::sort(all.begin(), all.end());
      double pos = 0.8 * double(all.size() - 1);
      size_t lo = size_t(pos);
      double hi = all[lo] + (all[lo + 1] - all[lo]) * (pos - double(lo));
      CHECK_ALLCLOSE(l->lora_A()["svd_clamped"].param("weight"), clamp(A, -hi, hi), 1e-6, 1e-7);
      CHECK_ALLCLOSE(l->lora_B()["svd_clamped"].param("weight"), clamp(B, -hi, hi), 1e-6, 1e-7);
      CHECK(testing::max_abs_diff(l->lora_B()["svd_clamped"].param("weight"), B) > 1e-3);  // the clamp bit
    }
  }
  // an existing name: nothing happens (PEFT returns silently)
  CHECK_FALSE(add_weighted_adapter(*m, {"x", "y"}, {1.0, 1.0}, "lin_xy", {}));
}

TEST_CASE("add_weighted_adapter refuses bad arguments and leaves the model as it was") {
  auto meta = case_json();
  auto m = model_with_sources(meta);
  auto keys_before = m->state_dict().keys();
  WeightedAdapterOptions lin;
  lin.combination_type = "linear";
  CHECK(testing::error_of([&] { add_weighted_adapter(*m, {"x", "z"}, {1, 1}, "bad", lin); })
            .find("All adapters must have the same r value") != std::string::npos);
  CHECK(testing::error_of([&] { add_weighted_adapter(*m, {"x", "y"}, {1}, "bad", lin); })
            .find("2 adapters but 1 weights") != std::string::npos);
  CHECK(testing::error_of([&] { add_weighted_adapter(*m, {"x", "nope"}, {1, 1}, "bad", lin); }) ==
        "Adapter nope does not exist");
  WeightedAdapterOptions ties;
  ties.combination_type = "ties";
  CHECK(testing::error_of([&] { add_weighted_adapter(*m, {"x", "y"}, {1, 1}, "bad", ties); })
            .find("'ties' is not implemented") != std::string::npos);
  WeightedAdapterOptions wrong;
  wrong.combination_type = "average";
  CHECK(testing::error_of([&] { add_weighted_adapter(*m, {"x", "y"}, {1, 1}, "bad", wrong); }) ==
        "Invalid combination_type: average");
  WeightedAdapterOptions clamp;
  clamp.svd_clamp = 1.5;
  CHECK(testing::error_of([&] { add_weighted_adapter(*m, {"x", "y"}, {1, 1}, "bad", clamp); })
            .find("svd_clamp must be a quantile in [0, 1]") != std::string::npos);
  CHECK(m->state_dict().keys() == keys_before);
  CHECK(peft_state(*m)->find("bad") == nullptr);
}

TEST_CASE("merge_and_unload and unload give PEFT's plain model (names, weights, outputs)") {
  auto meta = case_json();
  StateDict io = io::load_safetensors((kCase / "io.safetensors").string());
  Tensor ids = io.at("input");
  {
    auto m = model_with_sources(meta);
    merge_and_unload(*m);
    CHECK(peft_state(*m) == nullptr);
    CHECK(tuner_layers(*m).empty());
    StateDict sd = m->state_dict();
    size_t n = 0;
    for (const auto& [k, v] : io)
      if (k.rfind("merge_and_unload.", 0) == 0 && k != "merge_and_unload.output") {
        std::string key = k.substr(17);
        REQUIRE_MESSAGE(sd.contains(key), key);
        CHECK_ALLCLOSE(sd.at(key), v, 1e-5, 1e-6);
        ++n;
      }
    CHECK(n == sd.size());  // exactly the host's keys, nothing else
    CHECK_ALLCLOSE(run(*m, ids), io.at("merge_and_unload.output"), 1e-4, 1e-5);
    CHECK(m->repr().find("lora") == std::string::npos);
  }
  {
    auto m = model_with_sources(meta);
    unload(*m);
    CHECK(tuner_layers(*m).empty());
    CHECK_ALLCLOSE(run(*m, ids), io.at("unload.output"), 1e-5, 1e-6);
  }
  {
    // a refused safe merge replaces nothing and unmerges what it merged
    auto m = model_with_sources(meta);
    Tensor before = run(*m, ids);
    auto lm_head = std::dynamic_pointer_cast<lora::LoraLayer>(m->get_submodule("lm_head"));
    REQUIRE(lm_head);
    lm_head->lora_B()["x"].param("weight").fill_(std::nan(""));
    MergeAndUnloadOptions o;
    o.safe_merge = true;
    std::string err = testing::error_of([&] { merge_and_unload(*m, o); });
    CHECK(err.find("NaNs detected") != std::string::npos);
    CHECK(tuner_layers(*m).size() == 3);
    CHECK(peft_state(*m) != nullptr);
    for (auto& [n, t] : tuner_layers(*m)) CHECK_FALSE(t->merged());
    // the embedding and linear weights are back to their exact values
    auto base = io::load_safetensors((kCase / "base.safetensors").string());
    CHECK(testing::max_abs_diff(m->get_submodule("linear.base_layer")->param("weight"), base.at("linear.weight")) <
          1e-6);
    CHECK(testing::max_abs_diff(m->get_submodule("embedding.base_layer")->param("weight"),
                                base.at("embedding.weight")) < 1e-6);
    (void)before;
  }
}

TEST_CASE("inject_from_state_dict targets the checkpoint's modules and warns as PEFT") {
  auto meta = case_json();
  const auto& rec = meta["inject_state_dict"];
  auto m = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
  StateDict sd;
  StateDict x = io::load_safetensors((kCase / "adapter_x.safetensors").string());
  for (const auto& [k, v] : x)
    if (k.find("embedding") == std::string::npos) sd.set(k, v);  // keys keep "base_model.model."
  LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.target_modules = TargetModules::list(rec["config_target_modules"].get<std::vector<std::string>>());
  std::vector<std::string> warnings;
  auto old = set_warning_handler([&](const std::string& w) { warnings.push_back(w); });
  inject_from_state_dict(cfg, *m, sd);
  set_warning_handler(old);
  std::vector<std::string> lora_modules;
  for (auto& [n, t] : tuner_layers(*m)) lora_modules.push_back(n);
  std::sort(lora_modules.begin(), lora_modules.end());
  CHECK(lora_modules == rec["lora_modules"].get<std::vector<std::string>>());
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0] == rec["warnings"][0].get<std::string>());
  auto r = set_peft_model_state_dict(*m, sd);
  CHECK(r.unexpected_keys.empty());
  // nothing named by the checkpoint exists in the model: PEFT's "not found" error
  StateDict other;
  other.set("decoder.lora_A.weight", zeros({4, 10}));
  auto m2 = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
  set_warning_handler([](const std::string&) {});
  CHECK(testing::error_of([&] { inject_from_state_dict(cfg, *m2, other); }).find("not found in the base model") !=
        std::string::npos);
  set_warning_handler(old);
}

TEST_CASE("DisableAdapterGuard, RescaleAdapterScale and set_scale") {
  auto meta = case_json();
  StateDict io = io::load_safetensors((kCase / "io.safetensors").string());
  Tensor ids = io.at("input");
  auto m = model_with_sources(meta);
  Tensor base = io.at("unload.output");
  // z adapts only `linear`, and the host is linear end to end: output = base + s·(delta path)
  set_adapter(*m, "z");
  Tensor with_z = run(*m, ids);
  REQUIRE(testing::max_abs_diff(with_z, base) > 1e-3);
  {
    DisableAdapterGuard g(*m);
    CHECK_ALLCLOSE(run(*m, ids), base, 1e-5, 1e-6);
  }
  CHECK_ALLCLOSE(run(*m, ids), with_z, 1e-6, 1e-7);
  {
    // all disabled on entry: still disabled after the guard (PEFT 0.21)
    enable_adapters(*m, false);
    { DisableAdapterGuard g(*m); }
    CHECK_ALLCLOSE(run(*m, ids), base, 1e-5, 1e-6);
    enable_adapters(*m, true);
  }
  Tensor half = add(base, mul(sub(with_z, base), 0.5));
  {
    RescaleAdapterScale g(*m, 0.5);
    CHECK_ALLCLOSE(run(*m, ids), half, 1e-4, 1e-5);
  }
  CHECK_ALLCLOSE(run(*m, ids), with_z, 1e-6, 1e-7);
  set_scale(*m, "z", 2.0);
  CHECK_ALLCLOSE(run(*m, ids), add(base, mul(sub(with_z, base), 2.0)), 1e-4, 1e-5);
  set_scale(*m, "z", 1.0);
  CHECK_ALLCLOSE(run(*m, ids), with_z, 1e-6, 1e-7);
  CHECK(testing::error_of([&] { set_scale(*m, "nope", 1.0); }).find("no LoRA layer of the model holds adapter 'nope'") !=
        std::string::npos);
  auto plain = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
  CHECK(testing::error_of([&] { RescaleAdapterScale g(*plain, 2.0); }) ==
        "scaling is only supported for models with `LoraLayer`s");
}

TEST_CASE("delete_adapter refuses a merged adapter with PEFT 0.21's message; load_adapter names unknown config fields") {
  auto meta = case_json();
  auto m = model_with_sources(meta);
  merge_adapters(*m, false, {"x"});
  CHECK(testing::error_of([&] { delete_adapter(*m, "x"); }) ==
        "Cannot delete adapter(s) ['x'] while they are merged. Please unmerge them first.");
  unmerge_adapters(*m);
  delete_adapter(*m, "z");  // not merged: fine
  CHECK(peft_state(*m)->find("z") == nullptr);

  fs::path dir = fs::temp_directory_path() / ("peft_unknown_fields_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  save_pretrained(*m, dir.string(), {"y"});
  fs::path cfg_path = dir / "y" / "adapter_config.json";
  std::ifstream in(cfg_path);
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(in);
  in.close();
  cfg["field_from_peft_0_99"] = {{"a", 1}};
  std::ofstream(cfg_path) << cfg.dump(2);
  auto fresh = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
  std::vector<std::string> warnings;
  auto old = set_warning_handler([&](const std::string& w) { warnings.push_back(w); });
  LoadAdapterResult r = load_adapter(*fresh, (dir / "y").string(), "y");
  set_warning_handler(old);
  CHECK(r.unknown_config_fields == std::vector<std::string>{"field_from_peft_0_99"});
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("['field_from_peft_0_99']") != std::string::npos);
  CHECK(r.missing_keys.empty());
  CHECK(r.unexpected_keys.empty());
  fs::remove_all(dir);
}

// A method added from outside the library, VeRA-style: one frozen projection shared by every
// layer of an adapter (made by before_inject) and a trainable per-layer scale. It exercises the
// extension points a new method uses: its config, its layer on the shared merge skeleton, and
// one register_method call.
namespace {

struct SharedProjConfig : PeftConfig {
  std::shared_ptr<PeftConfig> clone() const override { return std::make_shared<SharedProjConfig>(*this); }
};

class SharedProjLayer : public TunerLayer {
 public:
  SharedProjLayer(nn::ModulePtr base, const std::string& adapter, const Tensor& shared)
      : TunerLayer("SharedProjLinear", std::move(base)) {
    register_module("sp_scale", std::make_shared<nn::ParameterDict>());
    add_adapter(adapter, shared);
  }
  void add_adapter(const std::string& adapter, const Tensor& shared) {
    scales().insert(adapter, full({1}, 0.5));
    shared_[adapter] = shared;
    active_adapters_ = {adapter};
  }
  std::vector<std::string> adapter_layer_names() const override { return {"sp_scale"}; }
  std::string prefix() const override { return "sp_"; }
  nn::ParameterDict& scales() const { return static_cast<nn::ParameterDict&>(child("sp_scale")); }
  // y = base(x) + s · x·Pᵀ, P [out, in] shared across layers
  Tensor forward(const Tensor& x) override {
    Tensor y = base_layer().forward(x);
    if (disable_adapters_ || merged()) return y;
    for (const auto& a : active_adapters_) y = add(y, mul(matmul(x, shared_.at(a).t()), scales()[a]));
    return y;
  }
  Tensor get_delta_weight(const std::string& a) override { return mul(shared_.at(a), scales()[a]); }
  const Tensor& shared(const std::string& a) const { return shared_.at(a); }

 protected:
  std::vector<MergedTensor> merged_tensors(const std::string& a) override {
    Tensor W = get_base_layer().param("weight");
    return {{W, add(W, get_delta_weight(a))}};
  }
  void unmerge_adapter(const std::string& a) override {
    get_base_layer().param("weight").add_(get_delta_weight(a), -1.0);
  }

 private:
  std::map<std::string, Tensor> shared_;
};

void register_shared_proj_method() {
  TunerMethod m;
  m.peft_type = "SHARED_PROJ_TEST";
  m.prefix = "sp_";
  m.model_class = "SharedProjModel";
  m.parse_config = [](const ordered_json&) -> PeftConfigPtr { return std::make_shared<SharedProjConfig>(); };
  m.before_inject = [](const nn::Module&, const std::string&, const PeftConfig&, StateDict& shared) {
    Generator g(7);
    shared.set("sp_P", randn({8, 8}, g));
  };
  m.create_and_replace = [](PeftConfig&, const std::string& adapter, const nn::ModulePtr& target, const std::string&,
                            bool, const StateDict& shared) -> nn::ModulePtr {
    if (auto layer = std::dynamic_pointer_cast<SharedProjLayer>(target)) {
      layer->add_adapter(adapter, shared.at("sp_P"));
      return nullptr;
    }
    return std::make_shared<SharedProjLayer>(target, adapter, shared.at("sp_P"));
  };
  register_method(std::move(m));
}

}  // namespace

TEST_CASE("a method registered from outside shares one tensor across layers and merges through the skeleton") {
  register_shared_proj_method();
  REQUIRE(find_method("SHARED_PROJ_TEST") != nullptr);
  Generator g(3);
  tools::HostOptions o;
  o.gen = &g;
  auto model = std::make_shared<tools::MLPModel>(8, 8, 8, o);
  SharedProjConfig cfg;
  cfg.peft_type = "SHARED_PROJ_TEST";
  cfg.target_modules = TargetModules::list({"lin0", "lin1"});
  Tensor x = randn({4, 8}, g);
  Tensor base_out = model->forward(x);
  inject_adapter_in_model(cfg, *model, "default");

  auto layers = tuner_layers(*model);
  REQUIRE(layers.size() == 2);
  auto* l0 = dynamic_cast<SharedProjLayer*>(layers[0].second.get());
  auto* l1 = dynamic_cast<SharedProjLayer*>(layers[1].second.get());
  REQUIRE((l0 && l1));
  // one tensor, not a copy per layer, and the model's state keeps it
  CHECK(l0->shared("default").data_ptr<float>() == l1->shared("default").data_ptr<float>());
  PeftState* st = peft_state(*model);
  REQUIRE(st != nullptr);
  REQUIRE(st->shared_tensors.count("default") == 1);
  CHECK(st->shared_tensors.at("default").at("sp_P").data_ptr<float>() == l0->shared("default").data_ptr<float>());

  // the shared merge skeleton: merged output equals the adapted one; unmerge restores the base
  Tensor adapted = model->forward(x);
  CHECK(testing::max_abs_diff(adapted, base_out) > 1e-3);
  Tensor w0 = l0->get_base_layer().param("weight").clone();
  merge_adapters(*model);
  CHECK(l0->merged());
  CHECK(testing::max_abs_diff(model->forward(x), adapted) < 1e-5);
  {
    ScopedWarningHandler quiet;
    unmerge_adapters(*model);
  }
  CHECK(testing::max_abs_diff(l0->get_base_layer().param("weight"), w0) < 1e-6);

  // safe_merge refuses a non-finite delta and leaves the weights untouched
  {
    NoGradGuard ng;
    l1->scales()["default"].fill_(std::numeric_limits<double>::infinity());
  }
  Tensor w1 = l1->get_base_layer().param("weight").clone();
  CHECK(testing::error_of([&] { l1->merge(true); }).find("seems to be broken") != std::string::npos);
  CHECK_FALSE(l1->merged());
  CHECK(testing::max_abs_diff(l1->get_base_layer().param("weight"), w1) == 0.0);

  // a second adapter gets its own shared tensor; deleting it drops that tensor only
  {
    ScopedWarningHandler quiet;  // "Already found a `peft_config` attribute"
    inject_adapter_in_model(cfg, *model, "other");
  }
  REQUIRE(st->shared_tensors.count("other") == 1);
  delete_adapter(*model, "other");
  CHECK(st->shared_tensors.count("other") == 0);
  CHECK(st->shared_tensors.count("default") == 1);
}
