// Hugging Face transformer hosts (nn/transformers/): the hf_* goldens end to end, checkpoint
// loading and its errors, PEFT's per-model_type defaults, Conv1D, and generation.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "adapters/defaults.h"
#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/pretrained.h"
#include "tests/testing.h"
#include "tools/merge.h"
#include "tools/parity.h"
#include "nn/transformers/text_model.h"

using namespace peft;
using namespace peft::testing;
namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

const char* kCases = "tests/data/hf/";


// A scratch copy of a case's model/ folder that a test may edit.
struct ScratchModel {
  fs::path dir;
  explicit ScratchModel(const std::string& case_name) {
    dir = fs::temp_directory_path() / ("peft_hf_" + case_name + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(std::string(kCases) + case_name + "/model"))
      fs::copy_file(e.path(), dir / e.path().filename());
  }
  ~ScratchModel() { fs::remove_all(dir); }
  ordered_json config() const {
    std::ifstream in(dir / "config.json");
    return ordered_json::parse(in);
  }
  void write_config(const ordered_json& j) const { std::ofstream(dir / "config.json") << j.dump(2); }
  StateDict weights() const { return io::load_safetensors((dir / "model.safetensors").string()); }
  void write_weights(const StateDict& sd) const { io::save_safetensors((dir / "model.safetensors").string(), sd); }
};

nn::ModelInputs inputs_of(const StateDict& io) {
  nn::ModelInputs in;
  in.input_ids = io.at("input_ids");
  if (io.contains("attention_mask")) in.attention_mask = io.at("attention_mask");
  if (io.contains("token_type_ids")) in.token_type_ids = io.at("token_type_ids");
  return in;
}

StateDict case_io(const std::string& name) {
  return io::load_safetensors(std::string(kCases) + name + "/io.safetensors");
}

void check_all_pass(const tools::ParityReport& r, int min_passed) {
  for (const auto& c : r.checks) {
    CAPTURE(tools::format_check(c));
    CHECK(c.status == tools::ParityCheck::Status::pass);
  }
  CHECK(r.failed == 0);
  CHECK(r.skipped == 0);
  CHECK(r.passed >= min_passed);
}

}  // namespace

// ------------------------------------------------------------------ goldens --

TEST_CASE("parity: every hf_* golden case on a bundled checkpoint passes") {
  for (const char* name : {"hf_bert_lora_default_targets", "hf_bert_adalora", "hf_gpt2_lora_conv1d",
                           "hf_llama_ia3_default_targets", "hf_llama_lora_all_linear"}) {
    CAPTURE(name);
    tools::ParityReport r = tools::run_parity_case(std::string(kCases) + name);
    check_all_pass(r, 12);
  }
}

TEST_CASE("parity: hf_minilm_lora_real on the real all-MiniLM-L6-v2") {
  const std::string dir = testing::minilm_dir();
  INFO("the checkpoint comes from scripts/fetch_minilm.sh (PEFT_MINILM_DIR overrides the folder)");
  REQUIRE(fs::exists(dir + "/model.safetensors"));
  tools::ParityReport r = tools::run_parity_case(std::string(kCases) + "hf_minilm_lora_real", {}, {}, dir);
  check_all_pass(r, 15);
  // without --model-dir the case is skipped by name, never passed silently
  tools::ParityReport s = tools::run_parity_case(std::string(kCases) + "hf_minilm_lora_real");
  CHECK(s.skipped == 1);
  CHECK(s.passed == 0);
}

// ------------------------------------------------------------------ loading --

TEST_CASE("load_pretrained: zero-copy float32, converted bfloat16, tied lm_head, info") {
  nn::PretrainedInfo info;
  auto m = nn::load_pretrained(std::string(kCases) + "hf_gpt2_lora_conv1d/model", {}, &info);
  CHECK(info.architecture == "GPT2LMHeadModel");
  CHECK(info.converted_tensors == 0);
  CHECK(info.zero_copy_tensors > 10);
  // lm_head shares wte's tensor (stored once in the file)
  CHECK(m->get_submodule("lm_head")->param("weight").same_storage(
      m->get_submodule("transformer.wte")->param("weight")));
  nn::PretrainedOptions bf;
  bf.dtype = DType::bfloat16;
  auto mb = nn::load_pretrained(std::string(kCases) + "hf_gpt2_lora_conv1d/model", bf, &info);
  CHECK(info.zero_copy_tensors == 0);
  CHECK(mb->get_submodule("transformer.h.0.attn.c_attn")->param("weight").dtype() == DType::bfloat16);
  // the bfloat16 model's logits stay near the float32 golden
  StateDict io = case_io("hf_gpt2_lora_conv1d");
  NoGradGuard ng;
  Tensor out = mb->forward(inputs_of(io));
  CHECK(out.dtype() == DType::bfloat16);
  CHECK(max_abs_diff(out.to(DType::float32), io.at("output_base")) < 0.05);
}

TEST_CASE("load_pretrained: sharded checkpoints and head/base prefixes") {
  ScratchModel s("hf_llama_lora_all_linear");
  StateDict all = s.weights();
  StateDict a, b;
  ordered_json index = {{"metadata", ordered_json::object()}, {"weight_map", ordered_json::object()}};
  size_t i = 0;
  for (const auto& [k, v] : all) {
    const bool first = i++ % 2 == 0;
    (first ? a : b).set(k, v);
    index["weight_map"][k] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  io::save_safetensors((s.dir / "model-00001-of-00002.safetensors").string(), a);
  io::save_safetensors((s.dir / "model-00002-of-00002.safetensors").string(), b);
  std::ofstream(s.dir / "model.safetensors.index.json") << index.dump();
  fs::remove(s.dir / "model.safetensors");
  nn::PretrainedInfo info;
  auto m = nn::load_pretrained(s.dir.string(), {}, &info);
  CHECK(info.files.size() == 2);
  StateDict io = case_io("hf_llama_lora_all_linear");
  NoGradGuard ng;
  CHECK_ALLCLOSE(m->forward(inputs_of(io)), io.at("output_base"), 1e-4, 1e-5);
  // the base model from the causal-LM checkpoint: "model." stripped, lm_head listed as ignored
  nn::PretrainedOptions base;
  base.architecture = "LlamaModel";
  auto bm = nn::load_pretrained(s.dir.string(), base, &info);
  CHECK(bm->type_name() == "LlamaModel");
  CHECK(std::find(info.ignored_keys.begin(), info.ignored_keys.end(), "lm_head.weight") != info.ignored_keys.end());
  // a shard name that leaves the folder is refused
  index["weight_map"][all.keys().front()] = "../evil.safetensors";
  std::ofstream(s.dir / "model.safetensors.index.json") << index.dump();
  CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("must be a plain file name") !=
        std::string::npos);
}

TEST_CASE("load_pretrained: strict keys, shapes and config values, nothing half-loaded") {
  ScratchModel s("hf_bert_lora_default_targets");
  const ordered_json cfg = s.config();
  const StateDict sd = s.weights();
  SUBCASE("missing weight") {
    StateDict w = sd;
    w.erase("encoder.layer.1.output.dense.weight");
    s.write_weights(w);
    CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); })
              .find("no weights for encoder.layer.1.output.dense.weight") != std::string::npos);
  }
  SUBCASE("unexpected weight") {
    StateDict w = sd;
    w.set("encoder.layer.0.extra.weight", zeros({2}));
    s.write_weights(w);
    CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); })
              .find("checkpoint keys that BertModel does not have: encoder.layer.0.extra.weight") != std::string::npos);
  }
  SUBCASE("wrong shape") {
    ordered_json c = cfg;
    c["intermediate_size"] = cfg["intermediate_size"].get<int64_t>() + 1;
    s.write_config(c);
    CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("expects [") != std::string::npos);
  }
  SUBCASE("unknown model_type") {
    ordered_json c = cfg;
    c["model_type"] = "t5";
    s.write_config(c);
    CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("model_type 't5' is not supported") !=
          std::string::npos);
  }
  SUBCASE("a config value it cannot honour") {
    ordered_json c = cfg;
    c["position_embedding_type"] = "relative_key";
    s.write_config(c);
    CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); })
              .find("position_embedding_type 'relative_key' is not supported") != std::string::npos);
    c = cfg;
    c["hidden_size"] = "big";
    s.write_config(c);
    CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("field 'hidden_size' must be an integer") !=
          std::string::npos);
  }
  SUBCASE("old BERT names and a head checkpoint load into BertModel") {
    StateDict w;
    for (const auto& [k, v] : sd) {
      std::string n = "bert." + k;
      if (n.size() > 16 && n.compare(n.size() - 16, 16, "LayerNorm.weight") == 0) n = n.substr(0, n.size() - 6) + "gamma";
      w.set(n, v);
    }
    w.set("cls.predictions.bias", zeros({4}));
    s.write_weights(w);
    ordered_json c = cfg;
    c["architectures"] = {"BertForMaskedLM"};
    s.write_config(c);
    nn::PretrainedInfo info;
    auto m = nn::load_pretrained(s.dir.string(), {}, &info);
    CHECK(std::find(info.ignored_keys.begin(), info.ignored_keys.end(), "cls.predictions.bias") !=
          info.ignored_keys.end());
    StateDict io = case_io("hf_bert_lora_default_targets");
    NoGradGuard ng;
    CHECK_ALLCLOSE(m->forward(inputs_of(io)), io.at("output_base"), 1e-4, 1e-5);
  }
}

TEST_CASE("Llama config: unsupported rope scaling and sliding windows are named") {
  ScratchModel s("hf_llama_lora_all_linear");
  ordered_json c = s.config();
  c["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", "yarn"}, {"factor", 4.0}};
  s.write_config(c);
  CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("rope type 'yarn' is not supported") !=
        std::string::npos);
  c.erase("rope_parameters");
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  s.write_config(c);
  CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("rope type 'linear' is not supported") !=
        std::string::npos);
  c.erase("rope_scaling");
  c["num_key_value_heads"] = 3;
  s.write_config(c);
  CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); })
            .find("num_attention_heads (4) is not a multiple of num_key_value_heads (3)") != std::string::npos);
  c["num_key_value_heads"] = 2;
  c["pretraining_tp"] = 2;
  s.write_config(c);
  CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("pretraining_tp 2 is not supported") !=
        std::string::npos);
  c["pretraining_tp"] = 1;
  c["model_type"] = "qwen2";
  c["use_sliding_window"] = true;
  s.write_config(c);
  CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); }).find("use_sliding_window true is not supported") !=
        std::string::npos);
  fs::rename(s.dir / "model.safetensors", s.dir / "pytorch_model.bin");
  CHECK(error_of([&] { nn::load_pretrained(s.dir.string()); })
            .find("pytorch_model.bin is a pickle; convert it to safetensors first") != std::string::npos);
}

TEST_CASE("model inputs are checked before any work") {
  auto m = nn::load_pretrained(std::string(kCases) + "hf_bert_lora_default_targets/model");
  nn::ModelInputs in;
  in.input_ids = from_vector(std::vector<int64_t>{1, 2, 100000}, {1, 3});
  CHECK(error_of([&] { m->forward(in); }).find("input id 100000 at [0, 2] is outside the vocabulary") !=
        std::string::npos);
  in.input_ids = from_vector(std::vector<int64_t>{1, 2, 3}, {1, 3});
  in.attention_mask = from_vector(std::vector<int64_t>{1, 1}, {1, 2});
  CHECK(error_of([&] { m->forward(in); }).find("attention_mask must be int64 or bool [1, 3]") != std::string::npos);
  in.attention_mask = Tensor();
  in.token_type_ids = from_vector(std::vector<int64_t>{0, 5, 0}, {1, 3});
  CHECK(error_of([&] { m->forward(in); }).find("token type id 5 is outside type_vocab_size") != std::string::npos);
}

// ------------------------------------------------------------------ PEFT --

TEST_CASE("PEFT defaults per model_type, all-linear without lm_head, Conv1D fan_in_fan_out") {
  CHECK(default_target_modules("LORA", "gpt2") == std::vector<std::string>{"c_attn"});
  CHECK(default_target_modules("IA3", "qwen2") == std::vector<std::string>{"q_proj", "v_proj", "down_proj"});
  CHECK(!default_target_modules("ADALORA", "mistral").has_value());
  CHECK(default_feedforward_modules("bert") == std::vector<std::string>{"output.dense"});

  auto gpt2 = nn::load_pretrained(std::string(kCases) + "hf_gpt2_lora_conv1d/model");
  CHECK(host_model_type(*gpt2) == "gpt2");
  // LoRA without target_modules: gpt2's c_attn; fan_in_fan_out False is corrected with PEFT's warning
  std::vector<std::string> warnings;
  auto old = set_warning_handler([&](const std::string& w) { warnings.push_back(w); });
  LoraConfig cfg;
  cfg.r = 2;
  inject_adapter_in_model(cfg, *gpt2, "default");
  set_warning_handler(old);
  REQUIRE(!warnings.empty());
  CHECK(warnings[0] ==
        "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
  auto stored = std::dynamic_pointer_cast<LoraConfig>(peft_config(*gpt2, "default"));
  CHECK(stored->fan_in_fan_out);
  CHECK(stored->target_modules.names == std::vector<std::string>{"c_attn"});
  CHECK(gpt2->get_submodule("transformer.h.1.attn.c_attn")->type_name() == "lora.Linear");
  CHECK(gpt2->get_submodule("transformer.h.1.attn.c_proj")->type_name() == "Conv1D");

  // all-linear: every Conv1D, never lm_head (an nn::Linear)
  auto g2 = nn::load_pretrained(std::string(kCases) + "hf_gpt2_lora_conv1d/model");
  LoraConfig al;
  al.target_modules = "all-linear";
  auto quiet = set_warning_handler([](const std::string&) {});
  inject_adapter_in_model(al, *g2, "default");
  set_warning_handler(quiet);
  CHECK(g2->get_submodule("lm_head")->type_name() == "Linear");
  CHECK(g2->get_submodule("transformer.h.0.mlp.c_fc")->type_name() == "lora.Linear");

  // a hand-built host has no model_type: PEFT's error
  auto custom = std::make_shared<nn::Linear>(4, 4);
  IA3Config ia3;
  CHECK(error_of([&] { inject_adapter_in_model(ia3, *custom, "default"); }) ==
        "Please specify `target_modules` in `peft_config`");
}

TEST_CASE("Conv1D merge is the transposed delta and unmerge restores the weight") {
  auto m = nn::load_pretrained(std::string(kCases) + "hf_gpt2_lora_conv1d/model");
  auto quiet = set_warning_handler([](const std::string&) {});
  load_adapter(*m, std::string(kCases) + "hf_gpt2_lora_conv1d/peft");
  set_warning_handler(quiet);
  auto layer = m->get_submodule("transformer.h.0.attn.c_attn");
  Tensor w0 = layer->get_submodule("base_layer")->param("weight").clone();  // [nx=32, nf=96]
  Tensor A = layer->get_submodule("lora_A.default")->param("weight");      // [4, 32]
  Tensor B = layer->get_submodule("lora_B.default")->param("weight");      // [96, 4]
  const double scaling = 16.0 / 4.0;
  merge_adapters(*m);
  Tensor merged = layer->get_submodule("base_layer")->param("weight");
  NoGradGuard ng;
  CHECK_ALLCLOSE(merged, add(w0, mul(matmul(B, A).t(), scaling)), 1e-5, 1e-6);
  unmerge_adapters(*m);
  CHECK_ALLCLOSE(layer->get_submodule("base_layer")->param("weight"), w0, 1e-5, 1e-6);
}

// ------------------------------------------------------------------ generation --

TEST_CASE("generation: the KV cache gives the logits of a full recompute") {
  auto m = nn::load_pretrained(std::string(kCases) + "hf_llama_lora_all_linear/model");
  NoGradGuard ng;
  Tensor ids = from_vector(std::vector<int64_t>{1, 9, 44, 3, 70, 12, 5, 6, 7, 8, 100, 101}, {2, 6});
  Tensor full = m->forward(ids);  // [2, 6, V]
  nn::KVCache cache;
  nn::ModelInputs in;
  in.cache = &cache;
  in.input_ids = ids.narrow(1, 0, 4);
  Tensor first = m->forward(in);
  CHECK_ALLCLOSE(first, full.narrow(1, 0, 4), 1e-5, 1e-6);
  for (int64_t t = 4; t < 6; ++t) {
    in.input_ids = ids.narrow(1, t, 1);
    Tensor step = m->forward(in);
    CHECK(cache.length == t + 1);
    CHECK_ALLCLOSE(step, full.narrow(1, t, 1), 1e-5, 1e-6);
  }
}

TEST_CASE("generation: greedy = sampling with top_k 1; seeded sampling repeats; left padding") {
  auto m = nn::load_pretrained(std::string(kCases) + "hf_gpt2_lora_conv1d/model");
  Tensor prompt = from_vector(std::vector<int64_t>{5, 17, 33, 8}, {1, 4});
  nn::GenerateOptions greedy;
  greedy.max_new_tokens = 6;
  Tensor g = nn::generate(*m, prompt, Tensor(), greedy);
  CHECK(g.shape() == Shape{1, 10});
  nn::GenerateOptions k1 = greedy;
  k1.do_sample = true;
  k1.top_k = 1;
  k1.seed = 7;
  CHECK(nn::generate(*m, prompt, Tensor(), k1).to_vector<int64_t>() == g.to_vector<int64_t>());
  nn::GenerateOptions s = greedy;
  s.do_sample = true;
  s.temperature = 1.5;
  s.top_p = 0.9;
  s.seed = 3;
  std::vector<std::vector<int64_t>> steps;
  Tensor a = nn::generate(*m, prompt, Tensor(), s, [&](const std::vector<int64_t>& col) { steps.push_back(col); });
  CHECK(a.to_vector<int64_t>() == nn::generate(*m, prompt, Tensor(), s).to_vector<int64_t>());
  CHECK(steps.size() == 6);
  // a left-padded row continues exactly like the same prompt alone
  Tensor batch = from_vector(std::vector<int64_t>{0, 0, 5, 17, 33, 8, 2, 9, 40, 41, 42, 43}, {2, 6});
  Tensor mask = from_vector(std::vector<int64_t>{0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {2, 6});
  Tensor b = nn::generate(*m, batch, mask, greedy);
  std::vector<int64_t> row0 = b.narrow(0, 0, 1).narrow(1, 2, 10).contiguous().to_vector<int64_t>();
  CHECK(row0 == g.to_vector<int64_t>());
  // choose_token: top_p keeps the smallest set with the mass, top_k ties kept
  Generator gen(1);
  nn::GenerateOptions p;
  p.do_sample = true;
  p.top_p = 0.5;
  for (int i = 0; i < 20; ++i) CHECK(nn::choose_token({0.f, 5.f, 1.f}, p, gen) == 1);
  CHECK(error_of([&] {
          nn::GenerateOptions bad = s;
          bad.top_p = 0;
          nn::generate(*m, prompt, Tensor(), bad);
        }).find("top_p must be in (0, 1]") != std::string::npos);
  auto bert = nn::load_pretrained(std::string(kCases) + "hf_bert_lora_default_targets/model");
  CHECK(error_of([&] { nn::generate(*bert, prompt, Tensor(), greedy); }).find("is not a decoder") !=
        std::string::npos);
}

TEST_CASE("peft merge on a GPT-2 folder merges Conv1D transposed; a bare file is refused") {
  const std::string c = std::string(kCases) + "hf_gpt2_lora_conv1d";
  const fs::path out = fs::temp_directory_path() / ("peft_hf_merged_" + std::to_string(::getpid()));
  fs::remove_all(out);
  tools::MergeReport r = tools::merge_into_folder(c + "/model", {{c + "/peft", 1.0}}, out.string());
  CHECK(r.merged_modules == 8);
  CHECK(fs::exists(out / "config.json"));
  auto m = nn::load_pretrained(out.string());
  StateDict io = case_io("hf_gpt2_lora_conv1d");
  {
    NoGradGuard ng;
    Tensor got = m->forward(inputs_of(io));
    CHECK_ALLCLOSE(got, io.at("merged_output"), 1e-4, 1e-5);
  }
  CHECK(error_of([&] {
          tools::merge_into_file(c + "/model/model.safetensors", {{c + "/peft", 1.0}}, (out / "x.safetensors").string());
        }).find("fan_in_fan_out=true") != std::string::npos);
  CHECK(!fs::exists(out / "x.safetensors"));
  fs::remove_all(out);
}

TEST_CASE("generation with per-row adapters in one batch (mixed batch)") {
  const std::string c = std::string(kCases) + "hf_llama_lora_all_linear";
  auto m = nn::load_pretrained(c + "/model");
  auto quiet = set_warning_handler([](const std::string&) {});
  load_adapter(*m, c + "/peft", "tuned");
  set_warning_handler(quiet);
  StateDict io = case_io("hf_llama_lora_all_linear");
  const Tensor prompt = io.at("generate.prompt");  // [1, 5]
  Tensor batch = cat({prompt, prompt}, 0);
  nn::GenerateOptions o = nn::read_generation_config(c + "/model");
  o.max_new_tokens = 8;
  Tensor mixed = forward_mixed_batch(*m, {"tuned", "__base__"}, [&] { return nn::generate(*m, batch, Tensor(), o); });
  // row 0: the adapter's greedy continuation recorded by transformers + PEFT
  CHECK(mixed.narrow(0, 0, 1).contiguous().to_vector<int64_t>() == io.at("default.generate").to_vector<int64_t>());
  // row 1: the base model alone
  enable_adapters(*m, false);
  Tensor base = nn::generate(*m, prompt, Tensor(), o);
  enable_adapters(*m, true);
  CHECK(mixed.narrow(0, 1, 1).contiguous().to_vector<int64_t>() == base.to_vector<int64_t>());
  CHECK(base.to_vector<int64_t>() != io.at("default.generate").to_vector<int64_t>());
  CHECK(error_of([&] { forward_mixed_batch(*m, {"nope", "tuned"}, [&] { return nn::generate(*m, batch, Tensor(), o); }); })
            .find("Trying to infer with non-existing adapter(s): nope") != std::string::npos);
}

TEST_CASE("text to sentence embedding on the real all-MiniLM-L6-v2 (what peft embed runs)") {
  const std::string dir = testing::minilm_dir();
  REQUIRE(fs::exists(dir + "/tokenizer.json"));
  nn::TextModel tm = nn::TextModel::load(dir);
  CHECK(tm.sentence.from_sentence_transformers);
  CHECK(tm.sentence.pool == "mean");
  CHECK(tm.sentence.normalize);
  CHECK(tm.sentence.max_seq_length == size_t(256));
  std::ifstream in(std::string(kCases) + "hf_minilm_lora_real/case.json");
  const auto texts = ordered_json::parse(in).at("texts").get<std::vector<std::string>>();
  StateDict io = case_io("hf_minilm_lora_real");
  NoGradGuard ng;
  CHECK_ALLCLOSE(tm.embed(texts), io.at("embedding_base"), 0.0, 2e-5);
  auto quiet = set_warning_handler([](const std::string&) {});
  load_adapter(*tm.model, std::string(kCases) + "hf_minilm_lora_real/peft");
  set_warning_handler(quiet);
  tm.model->eval();
  CHECK_ALLCLOSE(tm.embed(texts), io.at("default.embedding"), 0.0, 2e-5);
}

TEST_CASE("skip_padding: the same pooled embeddings and gradients without computing padded positions") {
  auto m = nn::load_pretrained(std::string(kCases) + "hf_bert_lora_default_targets/model");
  auto quiet = set_warning_handler([](const std::string&) {});
  load_adapter(*m, std::string(kCases) + "hf_bert_lora_default_targets/peft");
  set_warning_handler(quiet);
  m->eval();
  StateDict io = case_io("hf_bert_lora_default_targets");
  nn::ModelInputs in = inputs_of(io);  // rows padded on the right
  auto pooled_and_grad = [&](bool skip) {
    in.skip_padding = skip;
    m->zero_grad();
    Tensor e = nn::l2_normalize(nn::mean_pooling(m->forward(in), in.attention_mask));
    sum(mul(e, e.detach().narrow(0, 0, 1))).backward();
    auto A = m->get_submodule("encoder.layer.0.attention.self.query.lora_A.default");
    return std::make_pair(e.detach(), A->param("weight").grad().clone());
  };
  auto [full, g_full] = pooled_and_grad(false);
  auto [fast, g_fast] = pooled_and_grad(true);
  CHECK_ALLCLOSE(fast, full, 1e-5, 1e-6);
  CHECK_ALLCLOSE(g_fast, g_full, 1e-4, 1e-6);
  // padded rows are zeros, real rows as before
  in.skip_padding = true;
  NoGradGuard ng;
  Tensor h = m->forward(in);
  CHECK(max_abs_diff(h.narrow(0, 1, 1).narrow(1, 5, 2), zeros({1, 2, h.size(2)})) == 0.0);
  CHECK_ALLCLOSE(h.narrow(0, 0, 1), io.at("default.output").narrow(0, 0, 1), 1e-4, 1e-5);
}
