// `peft merge` (tools/merge.h): merging PEFT-saved folders into base files without the
// model reproduces PEFT's merge_and_unload files (merged_default*.safetensors) for LoRA,
// DoRA, rsLoRA with lora_only bias, embeddings, regex/pattern ranks and IA3; weights scale
// deltas; failures leave the previous output intact.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "adapters/peft.h"
#include "io/safetensors.h"
#include "tests/testing.h"
#include "tools/host_models.h"
#include "tools/merge.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / ("peft_merge_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// max|a-b| <= atol + rtol*max|b| (the goldens' tolerance)
void check_same_file(const fs::path& got, const fs::path& want, double atol, double rtol, DType dt) {
  StateDict g = io::load_safetensors(got.string()), w = io::load_safetensors(want.string());
  CHECK(g.keys() == w.keys());
  for (const auto& [k, v] : w) {
    CAPTURE(k);
    REQUIRE(g.contains(k));
    CHECK(g.at(k).dtype() == dt);
    CHECK(g.at(k).shape() == v.shape());
    double scale = max(abs(v.to(DType::float64))).item();
    CHECK(testing::max_abs_diff(g.at(k).to(DType::float64), v.to(DType::float64)) <= atol + rtol * scale);
  }
}

}  // namespace

TEST_CASE("peft merge reproduces every merged_default*.safetensors of the goldens") {
  fs::path tmp = scratch("goldens");
  int cases = 0;
  for (const auto& e : fs::directory_iterator("tests/data/peft")) {
    fs::path dir = e.path();
    if (!fs::exists(dir / "merged_default.safetensors")) continue;
    CAPTURE(dir.string());
    REQUIRE(fs::exists(dir / "peft"));
    fs::path out = tmp / (dir.filename().string() + ".safetensors");
    tools::MergeReport r = tools::merge_into_file((dir / "base.safetensors").string(), {{(dir / "peft").string()}},
                                                  out.string());
    CHECK(r.merged_modules > 0);
    check_same_file(out, dir / "merged_default.safetensors", 1e-5, 1e-4, DType::float32);
    ++cases;
    if (fs::exists(dir / "merged_default_bfloat16.safetensors")) {
      tools::MergeOptions o;
      o.dtype = DType::bfloat16;
      fs::path out16 = tmp / (dir.filename().string() + "_bf16.safetensors");
      tools::merge_into_file((dir / "base.safetensors").string(), {{(dir / "peft_bfloat16").string()}},
                             out16.string(), o);
      check_same_file(out16, dir / "merged_default_bfloat16.safetensors", 1e-2, 1e-2, DType::bfloat16);
      ++cases;
    }
  }
  CHECK(cases == 8);  // 7 float32 files + the seed example's bfloat16 one
  fs::remove_all(tmp);
}

TEST_CASE("peft merge: --weight scales each adapter's delta; adapters are merged in order") {
  // two LoRA adapters on `linear` (and `other` on lm_head too); the expected weights come from
  // the in-model path (get_delta_weight, checked against PEFT by the parity suite)
  fs::path dir = "tests/data/peft/lora_two_adapters";
  fs::path tmp = scratch("weights");
  fs::path out = tmp / "merged.safetensors";
  tools::merge_into_file((dir / "base.safetensors").string(),
                         {{(dir / "peft").string(), 0.5}, {(dir / "peft" / "other").string(), -2.0}}, out.string());
  auto model = tools::build_host_model("dummy", {{"V", 10}, {"D", 10}});
  StateDict base = io::load_safetensors((dir / "base.safetensors").string());
  model->load_state_dict(base, true);
  auto quiet = set_warning_handler([](const std::string&) {});
  for (std::string n : {"default", "other"}) {
    fs::path d = n == "default" ? dir / "peft" : dir / "peft" / n;
    load_adapter(*model, d.string(), n);
  }
  set_warning_handler(quiet);
  auto delta = [&](const std::string& module, const std::string& adapter) {
    auto t = std::dynamic_pointer_cast<TunerLayer>(model->get_submodule(module));
    return t && t->has_adapter(adapter) ? t->get_delta_weight(adapter) : zeros({10, 10});
  };
  StateDict got = io::load_safetensors(out.string());
  for (std::string m : {"linear", "lm_head"}) {
    CAPTURE(m);
    Tensor want = add(add(base.at(m + ".weight"), mul(delta(m, "default"), 0.5)), mul(delta(m, "other"), -2.0));
    CHECK_ALLCLOSE(got.at(m + ".weight"), want, 1e-5, 1e-6);
    CHECK_ALLCLOSE(got.at(m + ".bias"), base.at(m + ".bias"), 0.0, 0.0);
  }
  CHECK_ALLCLOSE(got.at("embedding.weight"), base.at("embedding.weight"), 0.0, 0.0);
  fs::remove_all(tmp);
}

TEST_CASE("peft merge: clear errors, and a failure leaves the previous output intact") {
  fs::path tmp = scratch("errors");
  fs::path out = tmp / "merged.safetensors";
  {
    std::ofstream f(out);
    f << "previous contents";
  }
  fs::path seed = "tests/data/peft/lora_seed_example";
  auto err = [&](const std::vector<tools::MergeInput>& in, const fs::path& base) {
    return testing::error_of([&] { tools::merge_into_file(base.string(), in, out.string()); });
  };
  CHECK(err({{(tmp / "nope").string()}}, seed / "base.safetensors").find("is this a PEFT adapter folder?") !=
        std::string::npos);
  CHECK(err({{"tests/data/peft/ia3_mlp/peft", 2.0}}, "tests/data/peft/ia3_mlp/base.safetensors")
            .find("IA3 scales the weights multiplicatively") != std::string::npos);
  // the seed adapter targets `linear`, which the MLP base does not have
  CHECK(err({{(seed / "peft").string()}}, "tests/data/peft/ia3_mlp/base.safetensors")
            .find("adapts module 'linear' but") != std::string::npos);
  // a non-finite delta is refused mid-stream (safe merge): the old file survives, no temp files
  fs::path bad = tmp / "bad_adapter";
  fs::create_directories(bad);
  fs::copy_file(seed / "peft" / "adapter_config.json", bad / "adapter_config.json");
  StateDict sd;
  for (const auto& [k, v] : io::load_safetensors((seed / "peft" / "adapter_model.safetensors").string()))
    sd.set(k, k.find("lora_B") != std::string::npos ? full(v.shape(), std::nan("")) : v);
  io::save_safetensors((bad / "adapter_model.safetensors").string(), sd);
  CHECK(err({{bad.string()}}, seed / "base.safetensors").find("NaNs detected") != std::string::npos);
  CHECK(slurp(out) == "previous contents");
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(tmp)) files += e.is_regular_file();
  CHECK(files == 1);
  fs::remove_all(tmp);
}

TEST_CASE("peft merge: bias=\"all\" and modules_to_save tensors replace the base's, as merge_and_unload") {
  // folders written by save_pretrained (byte-identical to PEFT's, tests/test_folder.cpp); the
  // expected file is the in-model merge_and_unload, whose merges the parity suite checks
  fs::path tmp = scratch("replace");
  fs::path dir = "tests/data/peft/lora_mlp_bias_all";
  std::ifstream in(dir / "case.json");
  nlohmann::json meta = nlohmann::json::parse(in);
  auto build = [&] {
    auto m = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
    m->load_state_dict(io::load_safetensors((dir / "base.safetensors").string()), true);
    return m;
  };
  {
    auto m = build();
    inject_adapter_in_model(*config_from_json(meta["adapters"][0]["config"].dump()), *m);
    set_peft_model_state_dict(*m, io::load_safetensors((dir / "adapter_default.safetensors").string()));
    // bias="all" trains every bias: give the untargeted ones new values
    for (auto& [k, p] : m->named_parameters())
      if (k.size() > 5 && k.compare(k.size() - 5, 5, ".bias") == 0) p.add_(full(p.shape(), 0.25));
    save_pretrained(*m, (tmp / "bias_all").string());
    tools::merge_into_file((dir / "base.safetensors").string(), {{(tmp / "bias_all").string()}},
                           (tmp / "bias_all.safetensors").string());
    merge_and_unload(*m);
    StateDict got = io::load_safetensors((tmp / "bias_all.safetensors").string());
    CHECK(got.size() == m->state_dict().size());
    for (const auto& [k, v] : m->state_dict()) CHECK_ALLCLOSE(got.at(k), v, 1e-5, 1e-6);
  }
  {
    auto m = build();
    LoraConfig c;
    c.target_modules = {"lin0"};
    c.modules_to_save = std::vector<std::string>{"lin2"};
    inject_adapter_in_model(c, *m);
    auto w = std::dynamic_pointer_cast<ModulesToSaveWrapper>(m->get_submodule("lin2"));
    REQUIRE(w);
    Generator g(5);
    w->modules_to_save()["default"].param("weight").copy_(randn(w->modules_to_save()["default"].param("weight").shape(), g));
    m->get_submodule("lin0")->child("lora_B").child("default").param("weight").fill_(0.1);
    save_pretrained(*m, (tmp / "mts").string());
    tools::MergeReport r = tools::merge_into_file((dir / "base.safetensors").string(), {{(tmp / "mts").string()}},
                                                  (tmp / "mts.safetensors").string());
    CHECK(r.replaced == 2);  // lin2.weight and lin2.bias
    merge_and_unload(*m);
    StateDict got = io::load_safetensors((tmp / "mts.safetensors").string());
    CHECK(got.size() == m->state_dict().size());
    for (const auto& [k, v] : m->state_dict()) CHECK_ALLCLOSE(got.at(k), v, 1e-5, 1e-6);
  }
  fs::remove_all(tmp);
}
