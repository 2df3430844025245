// adapters/lora/gguf_export: PEFT LoRA folders as llama.cpp's LoRA GGUF. Adapters are made on the tiny
// GGUF llama (tests/data/gguf/tiny_llama.q8_0.gguf: 2 layers, 4 heads, 2 kv heads, 256 wide),
// converted, read back with our reader and checked against values computed independently:
// the per-module scale from the config by hand, and llama.cpp's way of applying the file
// (llama-adapter.cpp: W_gguf + (alpha / lora_b.ne[0]) * lora_b @ lora_a, token_embd through
// get_rows of lora_a) merged into a copy of the base file, whose logits must equal PEFT's
// forward with the adapter.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "adapters/peft.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/safetensors.h"
#include "nn/transformers/pretrained.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "testing.h"
#include "adapters/lora/gguf_export.h"

namespace fs = std::filesystem;
using namespace peft;
using peft::testing::error_of;

namespace {

const std::string kBase = "tests/data/gguf/tiny_llama.q8_0.gguf";
const std::string kP = "base_model.model.";

struct TempDir {
  fs::path path;
  TempDir() {
    static int n = 0;
    path = fs::temp_directory_path() / ("peft_lora_gguf_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

double max_abs(const Tensor& a) {
  double m = 0;
  for (double v : a.to_vector<double>()) m = std::max(m, std::fabs(v));
  return m;
}
double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  return max_abs(sub(a.to(DType::float64), b.to(DType::float64)));
}

const std::vector<int64_t> kIds = {1, 17, 42, 99, 128, 200, 7, 63, 250, 3, 31, 77};

Tensor logits_of(nn::PreTrainedModel& m) {
  NoGradGuard ng;
  nn::ModelInputs in;
  in.input_ids = from_vector(kIds, {1, int64_t(kIds.size())});
  return m.forward(in).select(0, 0).contiguous();
}

nn::PretrainedOptions f32() {
  nn::PretrainedOptions o;
  o.dtype = DType::float32;
  o.kv_cache_dtype = DType::float32;
  return o;
}

// Injects `cfg` (non-zero B: init_lora_weights=false) on the float32 model of `base`, saves the
// folder to `dir`, returns the model (PEFT's forward with the adapter).
std::shared_ptr<nn::PreTrainedModel> make_adapter(LoraConfig cfg, const std::string& dir,
                                                  const std::string& base = kBase) {
  auto m = nn::load_pretrained(base, f32());
  cfg.init_lora_weights = false;
  manual_seed(7);
  inject_adapter_in_model(cfg, *m);
  save_pretrained(*m, dir);
  return m;
}

// llama.cpp's application of a LoRA file, merged: every base tensor dequantized to float32,
// plus scale * delta for each lora_a / lora_b pair (scale = alpha / rank, rank = lora_b.ne[0];
// 1 when alpha is 0); written with the base's metadata so load_pretrained reads it.
void llama_cpp_merge(const std::string& base_path, const std::string& lora_path, const std::string& out) {
  auto base = io::GGUFFile::open(base_path);
  auto lora = io::GGUFFile::open(lora_path);
  REQUIRE(lora->get_string("general.type") == "adapter");
  REQUIRE(lora->get_string("adapter.type") == "lora");
  REQUIRE(lora->get_string("general.architecture") == base->get_string("general.architecture"));
  const float alpha = float(lora->get_float("adapter.lora.alpha"));
  io::GGUFWriter w;
  for (const auto& [k, v] : base->metadata()) w.add(k, v);
  size_t used = 0;
  for (const auto& ti : base->tensors()) {
    Tensor t = base->tensor(ti.name, DType::float32).contiguous();
    if (lora->contains(ti.name + ".lora_a")) {
      const Tensor a = lora->tensor(ti.name + ".lora_a", DType::float32);
      const Tensor b = lora->tensor(ti.name + ".lora_b", DType::float32);
      const auto& bi = lora->info(ti.name + ".lora_b");
      const float rank = float(bi.ne[0]);
      const float scale = alpha != 0.0f ? alpha / rank : 1.0f;
      // token_embd: the row of token id is b @ a[id] (get_rows on lora_a [vocab, r]); else b @ a
      Tensor delta = ti.name == "token_embd.weight" ? matmul(a, b.t()) : matmul(b, a);
      REQUIRE(delta.shape() == t.shape());
      t = add(t, mul(delta, double(scale))).contiguous();
      used += 2;
    }
    w.add_tensor(ti.name, t);
  }
  REQUIRE(used == lora->tensors().size());  // every pair found its base tensor
  w.write(out);
}

Tensor file_tensor(const std::string& dir, const std::string& key) {
  return io::load_safetensors(dir + "/adapter_model.safetensors").at(kP + key);
}

LoraConfig all_linear(bool rslora) {
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.use_rslora = rslora;
  c.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  c.alpha_pattern = {{"v_proj", 3.0}};
  c.rank_pattern = {{"model.layers.1.mlp.down_proj", 6}};
  return c;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& f) {
  nlohmann::json j = nlohmann::json::parse(slurp(dir + "/adapter_config.json"));
  f(j);
  std::ofstream(dir + "/adapter_config.json") << j.dump(2);
}

}  // namespace

TEST_CASE("lora gguf: names, shapes, metadata and tensor order of llama.cpp's layout") {
  TempDir d;
  make_adapter(all_linear(false), d / "ad");
  LoraGGUFReport rep = convert_lora_to_gguf(d / "ad", kBase, d / "ad.gguf");
  CHECK(rep.modules == 14);
  CHECK(rep.permuted == 4);  // q and k of 2 layers
  CHECK(rep.rescaled == 2);  // v_proj of 2 layers (alpha_pattern); down_proj 1 keeps alpha/r
  auto f = io::GGUFFile::open(d / "ad.gguf");
  CHECK(f->version() == 3);
  CHECK(f->alignment() == 32);
  std::vector<std::string> keys;
  for (const auto& [k, v] : f->metadata()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"general.architecture", "general.type", "adapter.type", "adapter.lora.alpha",
                                         "general.quantization_version"});
  CHECK(f->get_string("general.architecture") == "llama");
  CHECK(f->get_string("general.type") == "adapter");
  CHECK(f->get_string("adapter.type") == "lora");
  CHECK(f->find("adapter.lora.alpha")->type == io::GGUFValueType::f32);
  CHECK(f->get_float("adapter.lora.alpha") == 8.0);
  std::vector<std::string> names;
  for (const auto& ti : f->tensors()) names.push_back(ti.name);
  std::vector<std::string> want;
  for (int l = 0; l < 2; ++l)
    for (const char* t : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"})
      for (const char* ab : {"lora_a", "lora_b"}) want.push_back("blk." + std::to_string(l) + "." + t + ".weight." + ab);
  CHECK(names == want);
  // lora_a [r, in], lora_b [out, r] (row-major; GGUF ne reversed), float32
  CHECK(f->info("blk.0.attn_q.weight.lora_a").shape == Shape{4, 256});
  CHECK(f->info("blk.0.attn_q.weight.lora_b").shape == Shape{256, 4});
  CHECK(f->info("blk.0.attn_k.weight.lora_b").shape == Shape{128, 4});
  CHECK(f->info("blk.0.attn_k.weight.lora_b").ne == std::vector<uint64_t>{4, 128});
  CHECK(f->info("blk.1.ffn_down.weight.lora_a").shape == Shape{6, 256});  // rank_pattern
  CHECK(f->info("blk.1.ffn_down.weight.lora_b").shape == Shape{256, 6});
  CHECK(f->info("blk.0.ffn_down.weight.lora_a").shape == Shape{4, 256});
  for (const auto& ti : f->tensors()) CHECK(ti.ggml_type == 0);
  // llama-adapter.cpp's shape checks against the base tensor (ne[0] = in, ne[1] = out)
  auto base = io::GGUFFile::open(kBase);
  for (const auto& ti : base->tensors()) {
    if (!f->contains(ti.name + ".lora_a")) continue;
    const auto& a = f->info(ti.name + ".lora_a");
    const auto& b = f->info(ti.name + ".lora_b");
    CHECK(ti.ne[0] == a.ne[0]);
    CHECK(ti.ne[1] == b.ne[1]);
    CHECK(a.ne[1] == b.ne[0]);
  }
  // without rsLoRA and patterns lora_a / lora_b are PEFT's tensors bit for bit (as
  // convert_lora_to_gguf.py writes them); q/k's lora_b only re-ordered
  const std::string m = "model.layers.0.mlp.gate_proj.";
  CHECK(f->tensor("blk.0.ffn_gate.weight.lora_a").to_vector<float>() == file_tensor(d / "ad", m + "lora_A.weight").to_vector<float>());
  CHECK(f->tensor("blk.0.ffn_gate.weight.lora_b").to_vector<float>() == file_tensor(d / "ad", m + "lora_B.weight").to_vector<float>());
  CHECK(f->tensor("blk.1.ffn_down.weight.lora_b").to_vector<float>() ==
        file_tensor(d / "ad", "model.layers.1.mlp.down_proj.lora_B.weight").to_vector<float>());
  Tensor qb = file_tensor(d / "ad", "model.layers.0.self_attn.q_proj.lora_B.weight");
  Tensor qb_file = f->tensor("blk.0.attn_q.weight.lora_b");
  CHECK(max_abs_diff(qb_file, qb) > 0.01);  // re-ordered ...
  // ... as convert_hf_to_gguf.py's permute: head h (64 rows), GGUF row h*64 + 2j + i = HF row h*64 + 32i + j
  for (int64_t h : {0, 3})
    for (int64_t j : {0, 5, 31})
      for (int64_t i : {0, 1})
        for (int64_t c : {0, 3}) CHECK(qb_file.at({h * 64 + 2 * j + i, c}) == qb.at({h * 64 + 32 * i + j, c}));
  Tensor kb = file_tensor(d / "ad", "model.layers.1.self_attn.k_proj.lora_B.weight");  // 2 kv heads
  CHECK(f->tensor("blk.1.attn_k.weight.lora_b").at({64 + 2 * 7 + 1, 2}) == kb.at({64 + 32 + 7, 2}));
}

TEST_CASE("lora gguf: (alpha/r)·B'·A equals PEFT's scale·B·A per module (alpha_pattern, rank_pattern, rsLoRA)") {
  for (bool rslora : {false, true}) {
    CAPTURE(rslora);
    TempDir d;
    make_adapter(all_linear(rslora), d / "ad");
    convert_lora_to_gguf(d / "ad", kBase, d / "ad.gguf");
    auto f = io::GGUFFile::open(d / "ad.gguf");
    const double alpha = f->get_float("adapter.lora.alpha");
    CHECK(alpha == 8.0);
    // PEFT's scale, by hand: alpha_m / r_m, or alpha_m / sqrt(r_m) with rsLoRA
    struct Case {
      std::string hf, gguf;
      double peft_scale;
      int64_t r;
    };
    const std::vector<Case> cases = {
        {"model.layers.0.self_attn.v_proj", "blk.0.attn_v.weight", rslora ? 3.0 / 2.0 : 3.0 / 4.0, 4},
        {"model.layers.1.self_attn.v_proj", "blk.1.attn_v.weight", rslora ? 3.0 / 2.0 : 3.0 / 4.0, 4},
        {"model.layers.1.mlp.down_proj", "blk.1.ffn_down.weight", rslora ? 8.0 / std::sqrt(6.0) : 8.0 / 6.0, 6},
        {"model.layers.0.mlp.down_proj", "blk.0.ffn_down.weight", rslora ? 8.0 / 2.0 : 8.0 / 4.0, 4},
        {"model.layers.0.self_attn.o_proj", "blk.0.attn_output.weight", rslora ? 8.0 / 2.0 : 8.0 / 4.0, 4},
    };
    for (const auto& c : cases) {
      CAPTURE(c.hf);
      const Tensor A = file_tensor(d / "ad", c.hf + ".lora_A.weight"), B = file_tensor(d / "ad", c.hf + ".lora_B.weight");
      const Tensor a = f->tensor(c.gguf + ".lora_a", DType::float32), b = f->tensor(c.gguf + ".lora_b", DType::float32);
      REQUIRE(b.size(1) == c.r);
      const Tensor want = mul(matmul(B.to(DType::float64), A.to(DType::float64)), c.peft_scale);
      const Tensor got = mul(matmul(b.to(DType::float64), a.to(DType::float64)), alpha / double(b.size(1)));
      const double size = max_abs(want);
      CHECK(size > 0.01);
      CHECK(max_abs_diff(got, want) < 1e-6 * size);
      // lora_b carries exactly the factor s_m * r_m / alpha
      const double factor = c.peft_scale * double(c.r) / alpha;
      CHECK(max_abs_diff(b, mul(B.to(DType::float64), factor)) < 1e-6 * max_abs(B));
    }
  }
}

TEST_CASE("lora gguf: the file applied as llama.cpp applies it gives PEFT's logits (q/k order, scales)") {
  for (bool rslora : {false, true}) {
    CAPTURE(rslora);
    TempDir d;
    auto peft_model = make_adapter(all_linear(rslora), d / "ad");
    const Tensor want = logits_of(*peft_model);
    const Tensor plain = logits_of(*nn::load_pretrained(kBase, f32()));
    CHECK(max_abs_diff(want, plain) > 0.05);  // the adapter acts
    convert_lora_to_gguf(d / "ad", kBase, d / "ad.gguf");
    llama_cpp_merge(kBase, d / "ad.gguf", d / "merged.gguf");
    const Tensor got = logits_of(*nn::load_pretrained(d / "merged.gguf", f32()));
    CHECK(max_abs_diff(got, want) < 2e-4);
    // a file whose q lora_b kept transformers' row order would not match: the check can fail
    auto f = io::GGUFFile::open(d / "ad.gguf");
    io::GGUFWriter w;
    for (const auto& [k, v] : f->metadata()) w.add(k, v);
      for (const auto& ti : f->tensors()) {
      Tensor t = f->tensor(ti.name, DType::float32);
      if (ti.name == "blk.0.attn_q.weight.lora_b")
        t = mul(file_tensor(d / "ad", "model.layers.0.self_attn.q_proj.lora_B.weight"),
                rslora ? 2.0 : 1.0);  // the right scale (sqrt(4) * 8 / 8 with rsLoRA), transformers' rows
        w.add_tensor(ti.name, t);
    }
    w.write(d / "wrong.gguf");
    llama_cpp_merge(kBase, d / "wrong.gguf", d / "merged_wrong.gguf");
    CHECK(max_abs_diff(logits_of(*nn::load_pretrained(d / "merged_wrong.gguf", f32())), want) > 1e-3);
  }
}

TEST_CASE("lora gguf: qwen2 (no q/k permutation) applied as llama.cpp applies it gives PEFT's logits") {
  const std::string base = "tests/data/gguf/tiny_qwen2.q8_0.gguf";
  TempDir d;
  auto peft_model = make_adapter(all_linear(true), d / "ad", base);
  const Tensor want = logits_of(*peft_model);
  CHECK(max_abs_diff(want, logits_of(*nn::load_pretrained(base, f32()))) > 0.05);
  LoraGGUFReport rep = convert_lora_to_gguf(d / "ad", base, d / "ad.gguf");
  CHECK(rep.architecture == "qwen2");
  CHECK(rep.permuted == 0);
  CHECK(io::GGUFFile::open(d / "ad.gguf")->get_string("general.architecture") == "qwen2");
  // qwen2's q_proj lora_b keeps transformers' rows (times rsLoRA's factor sqrt(4) * 8 / 8 = 2)
  CHECK(io::GGUFFile::open(d / "ad.gguf")->tensor("blk.0.attn_q.weight.lora_b").to_vector<float>() ==
        mul(file_tensor(d / "ad", "model.layers.0.self_attn.q_proj.lora_B.weight"), 2.0).to_vector<float>());
  llama_cpp_merge(base, d / "ad.gguf", d / "merged.gguf");
  CHECK(max_abs_diff(logits_of(*nn::load_pretrained(d / "merged.gguf", f32())), want) < 2e-4);
}

TEST_CASE("lora gguf: embed_tokens and lm_head of an untied base (token_embd lora_a transposed)") {
  TempDir d;
  // the tiny llama with its own output.weight (untied head), written with our GGUF writer
  {
    auto src = io::GGUFFile::open(kBase);
    io::GGUFWriter w;
    for (const auto& [k, v] : src->metadata()) w.add(k, v);
      for (const auto& ti : src->tensors()) w.add_tensor(ti.name, src->tensor(ti.name));
    Generator g(3);
    Tensor out = mul(randn({256, 256}, g), 0.05);
    w.add_tensor("output.weight", out);
    w.write(d / "untied.gguf");
  }
  LoraConfig c;
  c.r = 3;
  c.lora_alpha = 5;
  c.use_rslora = true;
  c.target_modules = {"embed_tokens", "lm_head", "q_proj"};
  auto peft_model = make_adapter(c, d / "ad", d / "untied.gguf");
  REQUIRE(peft_model->config()["tie_word_embeddings"] == false);
  CHECK(peft_model->get_submodule("model.embed_tokens")->type_name() == "lora.Embedding");
  const Tensor want = logits_of(*peft_model);
  LoraGGUFReport rep = convert_lora_to_gguf(d / "ad", d / "untied.gguf", d / "ad.gguf");
  CHECK(rep.modules == 4);   // embed_tokens, q_proj x 2, lm_head
  CHECK(rep.rescaled == 4);  // rsLoRA: every lora_b times sqrt(3)
  auto f = io::GGUFFile::open(d / "ad.gguf");
  CHECK(f->tensors().front().name == "token_embd.weight.lora_a");
  CHECK(f->tensors().back().name == "output.weight.lora_b");
  // token_embd: lora_a is PEFT's lora_embedding_A [r, vocab] transposed, lora_b its B [dim, r]
  const Tensor EA = file_tensor(d / "ad", "model.embed_tokens.lora_embedding_A");
  const Tensor EB = file_tensor(d / "ad", "model.embed_tokens.lora_embedding_B");
  REQUIRE(EA.shape() == Shape{3, 256});
  CHECK(f->info("token_embd.weight.lora_a").shape == Shape{256, 3});
  CHECK(f->info("token_embd.weight.lora_b").shape == Shape{256, 3});
  CHECK(f->tensor("token_embd.weight.lora_a").to_vector<float>() == EA.t().contiguous().to_vector<float>());
  CHECK(max_abs_diff(f->tensor("token_embd.weight.lora_b"), mul(EB, std::sqrt(3.0))) < 1e-6 * max_abs(EB));
  // llama-adapter.cpp's token_embd check: model ne[0] == b.ne[1], model ne[1] == a.ne[1]
  auto base = io::GGUFFile::open(d / "untied.gguf");
  CHECK(base->info("token_embd.weight").ne[0] == f->info("token_embd.weight.lora_b").ne[1]);
  CHECK(base->info("token_embd.weight").ne[1] == f->info("token_embd.weight.lora_a").ne[1]);
  CHECK(f->info("output.weight.lora_a").shape == Shape{3, 256});
  llama_cpp_merge(d / "untied.gguf", d / "ad.gguf", d / "merged.gguf");
  const Tensor got = logits_of(*nn::load_pretrained(d / "merged.gguf", f32()));
  CHECK(max_abs_diff(want, logits_of(*nn::load_pretrained(d / "untied.gguf", f32()))) > 0.05);
  CHECK(max_abs_diff(got, want) < 2e-4);
}

TEST_CASE("lora gguf: float16 / bfloat16 output and alpha 0 (llama.cpp's scale 1)") {
  TempDir d;
  LoraConfig c;
  c.r = 2;
  c.lora_alpha = 0;
  c.alpha_pattern = {{"q_proj", 4.0}};
  c.target_modules = {"q_proj", "v_proj"};
  make_adapter(c, d / "ad");
  LoraGGUFOptions o;
  o.dtype = DType::float16;
  convert_lora_to_gguf(d / "ad", kBase, d / "ad.gguf", o);
  auto f = io::GGUFFile::open(d / "ad.gguf");
  CHECK(f->get_float("adapter.lora.alpha") == 0.0);
  CHECK(f->info("blk.0.attn_v.weight.lora_b").ggml_type == 1);
  // v_proj: PEFT's scale 0 / 2 = 0, llama.cpp's 1 (alpha 0): lora_b is zero
  CHECK(max_abs(f->tensor("blk.0.attn_v.weight.lora_b", DType::float32)) == 0);
  // q_proj: 4 / 2 = 2, llama.cpp's 1: lora_b doubled (in float16)
  const Tensor B = file_tensor(d / "ad", "model.layers.0.self_attn.q_proj.lora_B.weight");
  const Tensor b = f->tensor("blk.0.attn_q.weight.lora_b", DType::float32);
  CHECK(std::fabs(max_abs(b) - 2 * max_abs(B)) < 2e-3 * max_abs(B));
  o.dtype = DType::bfloat16;
  convert_lora_to_gguf(d / "ad", kBase, d / "ad.gguf", o);
  CHECK(io::GGUFFile::open(d / "ad.gguf")->info("blk.0.attn_v.weight.lora_a").ggml_type == 30);
  o.dtype = DType::float64;
  CHECK(error_of([&] { convert_lora_to_gguf(d / "ad", kBase, d / "x.gguf", o); }).find("--dtype must be") !=
        std::string::npos);
}

TEST_CASE("lora gguf: what llama.cpp cannot apply is refused by name, and the output is left as it was") {
  TempDir d;
  const std::string out = d / "out.gguf";
  auto refuse = [&](const std::string& dir, const std::string& base = kBase) {
    std::ofstream(out) << "old";
    std::string e = error_of([&] { convert_lora_to_gguf(dir, base, out); });
    CHECK(slurp(out) == "old");
    return e;
  };
  auto has = [](const std::string& e, const std::string& s) {
    CAPTURE(e);
    CHECK(e.find(s) != std::string::npos);
  };
  {
    LoraConfig c;
    c.target_modules = {"q_proj"};
    c.use_dora = true;
    make_adapter(c, d / "dora");
    const std::string e = refuse(d / "dora");
    has(e, "use_dora=true");
    has(e, "DoRA");
    has(e, "peft merge");
  }
  {
    LoraConfig c;
    c.target_modules = {"q_proj"};
    c.lora_bias = true;
    make_adapter(c, d / "lbias");
    has(refuse(d / "lbias"), "lora_bias=true");
  }
  {
    LoraConfig c;
    c.target_modules = {"q_proj"};
    c.modules_to_save = std::vector<std::string>{"lm_head"};
    make_adapter(c, d / "mts");
    has(refuse(d / "mts"), "modules_to_save [lm_head]");
  }
  {
    IA3Config c;
    c.target_modules = {"q_proj", "down_proj"};
    c.feedforward_modules = {"down_proj"};
    auto m = nn::load_pretrained(kBase, f32());
    inject_adapter_in_model(c, *m);
    save_pretrained(*m, d / "ia3");
    const std::string e = refuse(d / "ia3");
    has(e, "peft_type IA3");
    has(e, "only LoRA");
  }
  {
    LoraConfig c;
    c.target_modules = {"q_proj", "lm_head"};
    make_adapter(c, d / "head");
    const std::string e = refuse(d / "head");
    has(e, "module 'lm_head'");
    has(e, "tied");
  }
  {
    LoraConfig c;
    c.target_modules = {"embed_tokens"};
    make_adapter(c, d / "emb");
    const std::string e = refuse(d / "emb");
    has(e, "module 'model.embed_tokens'");
    has(e, "output.weight");
  }
  {
    LoraConfig c;
    c.target_modules = {"q_proj"};
    make_adapter(c, d / "plain");
    fs::copy(d / "plain", d / "pissa", fs::copy_options::recursive);
    edit_config(d / "pissa", [](nlohmann::json& j) { j["init_lora_weights"] = "pissa_niter_4"; });
    has(refuse(d / "pissa"), "init_lora_weights='pissa_niter_4'");
    has(refuse(d / "pissa"), "path_initial_model_for_weight_conversion");
    // an initialisation that leaves the base alone converts, even one peft.cpp cannot run itself
    fs::copy(d / "plain", d / "eva", fs::copy_options::recursive);
    edit_config(d / "eva", [](nlohmann::json& j) { j["init_lora_weights"] = "eva"; });
    CHECK(convert_lora_to_gguf(d / "eva", kBase, d / "eva.gguf").modules == 2);
    fs::copy(d / "plain", d / "rank", fs::copy_options::recursive);
    edit_config(d / "rank", [](nlohmann::json& j) { j["r"] = 5; });
    const std::string e = refuse(d / "rank");
    has(e, "module 'model.layers.0.self_attn.q_proj'");
    has(e, "rank 8 but the config gives 5");
    // a trained bias of lora_B in the file
    fs::copy(d / "plain", d / "extra", fs::copy_options::recursive);
    StateDict sd = io::load_safetensors(d / "extra/adapter_model.safetensors");
    sd.set(kP + "model.layers.0.self_attn.q_proj.lora_B.bias", zeros({256}));
    io::save_safetensors(d / "extra/adapter_model.safetensors", sd);
    has(refuse(d / "extra"), "lora_B's bias (lora_bias)");
    // the wrong base: qwen2's tensors or shapes do not fit
    fs::copy(d / "plain", d / "wide", fs::copy_options::recursive);
    StateDict w = io::load_safetensors(d / "wide/adapter_model.safetensors");
    w.set(kP + "model.layers.0.self_attn.q_proj.lora_A.weight", zeros({8, 128}));
    io::save_safetensors(d / "wide/adapter_model.safetensors", w);
    has(refuse(d / "wide"), "do not fit the base tensor [256, 256]");
  }
  // a base peft.cpp cannot read
  has(refuse(d / "plain", "tests/data/gguf/types.gguf"), "types.gguf");
  // the command line
  CHECK(error_of([&] { convert_lora_to_gguf(d / "nope", kBase, out); }).find("adapter_config.json") !=
        std::string::npos);
}
