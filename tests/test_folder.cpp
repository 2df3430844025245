// PEFT adapter folders both ways: folders written by PeftModel.save_pretrained
// (tests/data/peft/*/peft) load and reproduce the recorded outputs; folders we
// write are byte-identical in their weights and equal in their config.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "tests/testing.h"
#include "tools/host_models.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Case {
  fs::path dir;
  nlohmann::json meta;
  std::shared_ptr<nn::Module> model;
  StateDict io;
  explicit Case(const std::string& name) : dir(fs::path("tests/data/peft") / name) {
    meta = nlohmann::json::parse(slurp(dir / "case.json"));
    model = fresh_model();
    io = io::load_safetensors((dir / "io.safetensors").string());
  }
  std::shared_ptr<nn::Module> fresh_model() const {
    auto m = tools::build_host_model(meta["arch"].get<std::string>(), meta["arch_spec"]);
    m->load_state_dict(io::load_safetensors((dir / "base.safetensors").string()), true);
    m->eval();
    return m;
  }
};

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / ("peft_folder_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

}  // namespace

TEST_CASE("PEFT-saved folders load and reproduce PEFT's outputs (float32 and bfloat16)") {
  int loaded = 0, bf16 = 0;
  // every LoRA golden case that has PEFT's folder (lora_mlp_bias_all has none; it was skipped silently before)
  for (std::string name : {"lora_seed_example", "lora_embedding_and_linear", "lora_dora_mlp",
                           "lora_deep_regex_patterns", "lora_two_adapters", "lora_mlp_rslora_lora_only"}) {
    for (std::string sub : {"peft", "peft_bfloat16"}) {
      CAPTURE(name);
      CAPTURE(sub);
      Case c(name);
      if (sub == "peft") REQUIRE(fs::exists(c.dir / sub));  // every case has PEFT's float32 folder
      if (!fs::exists(c.dir / sub)) continue;               // bfloat16 folders: counted below
      ++loaded;
      bf16 += sub == "peft_bfloat16";
      LoadAdapterResult r = load_adapter(*c.model, (c.dir / sub).string());
      CHECK(r.missing_keys.empty());
      CHECK(r.unexpected_keys.empty());
      c.model->eval();
      Tensor out = (*c.model)(c.io.at("input"));
      const Tensor& want = c.io.at("default.output");
      double tol = sub == "peft" ? 1e-5 + 1e-4 * testing::max_abs_diff(want, zeros_like(want)) : 2e-2;
      CHECK(testing::max_abs_diff(out, want) <= tol);
    }
  }
  CHECK(loaded == 6 + bf16);
  CHECK(bf16 == 1);  // lora_seed_example's peft_bfloat16
}

TEST_CASE("save_pretrained writes PEFT's layout: same weight bytes, same config, sub-folders") {
  Case c("lora_two_adapters");
  fs::path out = temp_dir("two");
  // load both adapters from PEFT's folder, then save them again
  load_adapter(*c.model, (c.dir / "peft").string(), "default");
  load_adapter(*c.model, (c.dir / "peft" / "other").string(), "other");
  save_pretrained(*c.model, out.string());
  for (std::string sub : {"", "other"}) {
    CAPTURE(sub);
    fs::path mine = sub.empty() ? out : out / sub, theirs = sub.empty() ? c.dir / "peft" : c.dir / "peft" / sub;
    CHECK(slurp(mine / "adapter_model.safetensors") == slurp(theirs / "adapter_model.safetensors"));
    auto a = nlohmann::json::parse(slurp(mine / "adapter_config.json"));
    auto b = nlohmann::json::parse(slurp(theirs / "adapter_config.json"));
    CHECK(a == b);  // the loaded config is written back as it was, auto_mapping included
    CHECK(slurp(mine / "adapter_config.json").find("\n  \"alpha_pattern\": {},\n") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(out / "default"));  // "default" goes to the top folder
  // bfloat16 on disk matches PEFT's bfloat16 folder bit for bit
  Case seed("lora_seed_example");
  load_adapter(*seed.model, (seed.dir / "peft").string());
  fs::path out16 = temp_dir("seed16");
  save_pretrained(*seed.model, out16.string(), {"default"}, {DType::bfloat16});
  REQUIRE(fs::exists(seed.dir / "peft_bfloat16" / "adapter_model.safetensors"));
  CHECK(slurp(out16 / "adapter_model.safetensors") ==
        slurp(seed.dir / "peft_bfloat16" / "adapter_model.safetensors"));
  fs::remove_all(out);
  fs::remove_all(out16);
}

TEST_CASE("a freshly injected adapter is saved with inference_mode true and an auto_mapping") {
  Case c("lora_seed_example");
  LoraConfig cfg;
  cfg.r = 4;
  cfg.target_modules = {"linear"};
  inject_adapter_in_model(cfg, *c.model);
  fs::path out = temp_dir("fresh");
  save_pretrained(*c.model, out.string());
  auto j = nlohmann::json::parse(slurp(out / "adapter_config.json"));
  CHECK(j["inference_mode"] == true);
  CHECK(j["peft_type"] == "LORA");
  CHECK(j["r"] == 4);
  CHECK(j["auto_mapping"]["base_model_class"] == c.model->type_name());
  CHECK(j["auto_mapping"]["parent_library"] == "peft.cpp");
  CHECK(io::read_safetensors_metadata((out / "adapter_model.safetensors").string()).at("format") == "pt");
  StateDict sd = io::load_safetensors((out / "adapter_model.safetensors").string());
  CHECK(sd.keys() == std::vector<std::string>{"base_model.model.linear.lora_A.weight",
                                              "base_model.model.linear.lora_B.weight"});
  CHECK_THROWS_WITH_AS(save_pretrained(*c.model, out.string(), {"nope"}), doctest::Contains("nope"), Error);
  fs::remove_all(out);
}

TEST_CASE("save -> load round trip reproduces the outputs of the saving model") {
  Case c("lora_dora_mlp");
  load_adapter(*c.model, (c.dir / "peft").string());
  c.model->eval();
  Tensor before = (*c.model)(c.io.at("input"));
  fs::path out = temp_dir("dora");
  save_pretrained(*c.model, out.string());
  auto fresh = c.fresh_model();
  load_adapter(*fresh, out.string(), "default", /*low_cpu_mem_usage=*/true);
  fresh->eval();
  CHECK_ALLCLOSE((*fresh)(c.io.at("input")), before, 0, 0);
  fs::remove_all(out);
}

TEST_CASE("a bad adapter folder leaves the model as it was") {
  Case c("lora_seed_example");
  fs::path bad = temp_dir("bad");
  fs::create_directories(bad);
  fs::copy_file(c.dir / "peft" / "adapter_config.json", bad / "adapter_config.json");
  auto names_before = c.model->named_parameters();
  std::string repr_before = c.model->repr();
  // missing weights file
  CHECK_THROWS_WITH_AS(load_adapter(*c.model, bad.string()), doctest::Contains("adapter_model.safetensors"),
                       Error);
  CHECK(c.model->repr() == repr_before);
  // weights of the wrong shape: rejected after injection, adapter removed again
  StateDict wrong;
  wrong.set("base_model.model.linear.lora_A.weight", zeros({3, 3}));
  io::save_safetensors((bad / "adapter_model.safetensors").string(), wrong);
  CHECK_THROWS_AS(load_adapter(*c.model, bad.string()), Error);
  CHECK(c.model->named_parameters().size() == names_before.size());
  // no config at all
  fs::remove(bad / "adapter_config.json");
  CHECK_THROWS_WITH_AS(load_adapter(*c.model, bad.string()), doctest::Contains("adapter_config.json"), Error);
  fs::remove_all(bad);
}
