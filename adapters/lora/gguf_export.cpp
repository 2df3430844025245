#include "adapters/lora/gguf_export.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "adapters/lora/config.h"
#include "adapters/peft.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/safetensors.h"
#include "nn/transformers/pretrained.h"
#include "runtime/ops.h"

namespace peft {

namespace fs = std::filesystem;

namespace {

const char* kWho = "peft convert --to gguf";
const std::string kPeftPrefix = "base_model.model.";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_config_text(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) fail(kWho, ": cannot read ", p.string(), " (is this a PEFT adapter folder?)");
  if (fs::file_size(p, ec) > (16u << 20)) fail(kWho, ": ", p.string(), " is larger than 16 MiB; not an adapter config");
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) fail(kWho, ": cannot read ", p.string());
  return ss.str();
}

bool json_set(const ordered_json& j) {
  return !(j.is_null() || (j.is_boolean() && !j.get<bool>()) || (j.is_array() && j.empty()) ||
           (j.is_object() && j.empty()));
}

// Options llama.cpp's LoRA file cannot carry: the first one set, as an error.
void refuse_config(const LoraConfig& c, const std::string& dir) {
  auto no = [&](const std::string& option, const std::string& why) {
    fail(kWho, ": ", dir, ": ", option, ": ", why, "; llama.cpp's LoRA files hold only lora_a / lora_b pairs (W + (alpha/r)·B·A)");
  };
  if (c.use_dora)
    no("use_dora=true",
       "DoRA rescales each output row by its magnitude vector, which llama.cpp cannot apply; merge the adapter into the "
       "base instead (peft merge) and convert the merged model");
  if (c.lora_bias) no("lora_bias=true", "lora_B has a bias, which llama.cpp's LoRA files cannot hold");
  if (c.modules_to_save && !c.modules_to_save->empty()) {
    std::string names;
    for (const auto& m : *c.modules_to_save) names += (names.empty() ? "" : ", ") + m;
    no("modules_to_save [" + names + "]", "whole trained copies of modules are not LoRA pairs");
  }
  if (json_set(c.trainable_token_indices))
    no("trainable_token_indices", "trained embedding rows (trainable tokens) are not LoRA pairs");
  if (json_set(c.layer_replication))
    no("layer_replication", "the adapted model repeats layers the base file does not have");
  if (json_set(c.target_parameters))
    no("target_parameters", "LoRA on bare parameters (e.g. MoE experts) has no llama.cpp tensor to attach to");
  if (c.use_qalora) no("use_qalora=true", "QALoRA pools the input per group before lora_A");
  const std::pair<const char*, const ordered_json*> variants[] = {
      {"velora_config", &c.velora_config},       {"monteclora_config", &c.monteclora_config},
      {"use_bdlora", &c.use_bdlora},             {"arrow_config", &c.arrow_config},
      {"kasa_config", &c.kasa_config},
  };
  for (const auto& [name, v] : variants)
    if (json_set(*v)) no(name, "this LoRA variant's forward is not W + s·B·A");
}

// adapter_config.json, parsed for conversion: init_lora_weights only says how training started,
// so schemes peft.cpp cannot run itself (eva, orthogonal, mica, ...) are read as `true`; those
// that change the base weights are refused (the adapter only fits that changed base).
PeftConfigPtr read_config(const fs::path& p, const std::string& dir) {
  ordered_json j = parse_config_text(read_config_text(p));
  if (j.is_object() && j.contains("init_lora_weights") && j["init_lora_weights"].is_string()) {
    const std::string init = j["init_lora_weights"].get<std::string>();
    if (init.rfind("pissa", 0) == 0 || init == "olora" || init == "corda" || init == "loftq" || init == "lora_ga")
      fail(kWho, ": ", dir, ": init_lora_weights='", init, "': this initialisation changes the base weights "
           "(W - s·B0·A0), so the adapter only applies to that changed base, not to the original one llama.cpp loads; "
           "save it in PEFT with save_pretrained(..., path_initial_model_for_weight_conversion=...) to get a plain "
           "LoRA of the original base, and convert that");
    j["init_lora_weights"] = true;
  }
  return config_from_json(j);
}

// Why a tensor of the adapter file is not a LoRA factor.
std::string why_not_lora(const std::string& key, const LoraConfig& c) {
  if (key.find("lora_magnitude_vector") != std::string::npos) return "a DoRA magnitude vector (use_dora)";
  if (key.find("modules_to_save") != std::string::npos) return "a modules_to_save copy";
  if (key.find("trainable_tokens") != std::string::npos) return "trainable tokens (trainable_token_indices)";
  if (ends_with(key, ".lora_B.bias")) return "lora_B's bias (lora_bias)";
  if (ends_with(key, "bias")) return "a trained bias (bias='" + c.bias + "')";
  return "not a lora_A / lora_B weight";
}

// convert_hf_to_gguf.py's LlamaModel.permute on the rows of `t` ([heads·D, cols]): GGUF row
// h·D + 2j + i is transformers' row h·D + i·D/2 + j (the inverse of the loader's unpermute_rotary).
Tensor permute_rotary(const Tensor& t, int64_t heads, const std::string& what) {
  const int64_t rows = t.size(0), cols = t.size(1);
  if (heads <= 0 || rows % heads || (rows / heads) % 2)
    fail(kWho, ": ", what, " has ", rows, " rows, not ", heads, " heads of an even size");
  const int64_t D = rows / heads, half = D / 2;
  Tensor src = t.contiguous();
  Tensor out = empty(t.shape(), DType::float32);
  const float* in = src.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = r / D, w = r % D, j = w / 2, i = w % 2;
    std::memcpy(o + r * cols, in + (h * D + i * half + j) * cols, size_t(cols) * sizeof(float));
  }
  return out;
}

struct Pair {
  std::string a_key, b_key;
  bool embedding = false;
};

}  // namespace

LoraGGUFReport convert_lora_to_gguf(const std::string& adapter_dir, const std::string& base_gguf,
                                    const std::string& out_path, const LoraGGUFOptions& opts) {
  if (opts.dtype != DType::float32 && opts.dtype != DType::float16 && opts.dtype != DType::bfloat16)
    fail(kWho, ": --dtype must be float32, float16 or bfloat16, not ", dtype_name(opts.dtype));
  const fs::path dir(adapter_dir);
  PeftConfigPtr any = read_config(dir / "adapter_config.json", adapter_dir);
  if (any->peft_type != "LORA") {
    std::string hint = any->peft_type == "ADALORA"
                           ? " (AdaLoRA's SVD triplets with their learned ranks are not converted; merge it instead)"
                           : any->peft_type == "IA3" ? " (IA3 scales activations; llama.cpp has no IA3 adapters)" : "";
    fail(kWho, ": ", adapter_dir, " holds a peft_type ", any->peft_type, " adapter; llama.cpp's adapter files hold only LoRA (peft_type LORA)",
         hint);
  }
  const auto cfg = std::dynamic_pointer_cast<LoraConfig>(any);
  if (!cfg) fail(kWho, ": ", adapter_dir, ": peft_type LORA but the config is not a LoraConfig");
  refuse_config(*cfg, adapter_dir);

  const fs::path weights = dir / "adapter_model.safetensors";
  if (!fs::exists(weights)) {
    if (fs::exists(dir / "adapter_model.bin"))
      fail(kWho, ": ", adapter_dir, " holds adapter_model.bin (a pickle); peft.cpp reads only safetensors");
    fail(kWho, ": ", weights.string(), " does not exist (is this a PEFT adapter folder?)");
  }
  auto file = io::SafetensorsFile::open(weights.string());
  std::map<std::string, Pair> pairs;  // module key (no "base_model.model.") -> its factors
  for (const auto& info : file->tensors()) {
    const std::string key = info.name.compare(0, kPeftPrefix.size(), kPeftPrefix) == 0
                                ? info.name.substr(kPeftPrefix.size()) : info.name;
    struct Suffix {
      const char* s;
      bool is_a, emb;
    };
    bool found = false;
    for (const Suffix& sfx : {Suffix{".lora_A.weight", true, false}, Suffix{".lora_B.weight", false, false},
                              Suffix{".lora_embedding_A", true, true}, Suffix{".lora_embedding_B", false, true}}) {
      if (!ends_with(key, sfx.s)) continue;
      Pair& p = pairs[key.substr(0, key.size() - std::strlen(sfx.s))];
      (sfx.is_a ? p.a_key : p.b_key) = info.name;
      p.embedding = sfx.emb;
      found = true;
      break;
    }
    if (!found)
      fail(kWho, ": ", weights.string(), ": tensor '", info.name, "' is ", why_not_lora(key, *cfg),
           "; llama.cpp's LoRA files hold only lora_a / lora_b pairs");
  }
  if (pairs.empty()) fail(kWho, ": ", weights.string(), " holds no LoRA tensors");
  for (const auto& [module, p] : pairs)
    if (p.a_key.empty() || p.b_key.empty())
      fail(kWho, ": ", weights.string(), ": module '", module, "' has only its lora_", p.a_key.empty() ? "B" : "A",
           " (the file is incomplete)");

  auto base = io::GGUFFile::open(base_gguf);
  const nlohmann::ordered_json mc = nn::gguf_model_config(*base);  // refuses architectures we cannot read
  const std::string arch = base->get_string("general.architecture");
  const int64_t heads = mc["num_attention_heads"].get<int64_t>(), kv_heads = mc["num_key_value_heads"].get<int64_t>();
  const bool tied = !base->contains("output.weight");
  std::map<std::string, const io::GGUFTensorInfo*> gguf_of;  // module key -> base tensor
  for (const auto& ti : base->tensors()) {
    const std::string hf = nn::gguf_tensor_hf_name(ti.name);
    if (ends_with(hf, ".weight")) gguf_of[hf.substr(0, hf.size() - 7)] = &ti;
  }
  for (const auto& [module, p] : pairs) {
    if (gguf_of.count(module)) {
      if (module == "model.embed_tokens" && tied)
        fail(kWho, ": module 'model.embed_tokens': ", base_gguf, " ties the output projection to token_embd.weight, and "
             "llama.cpp applies a token_embd LoRA to that projection too (where its transposed lora_a does not fit); "
             "an embedding adapter converts only for a base with its own output.weight");
      continue;
    }
    if (module == "lm_head" && tied)
      fail(kWho, ": module 'lm_head': ", base_gguf, " has no output.weight (the head is tied to token_embd.weight), so "
           "llama.cpp has no separate tensor to apply lm_head's LoRA to; train the adapter without lm_head");
    fail(kWho, ": module '", module, "' has no tensor in ", base_gguf, " (", arch, ": llama.cpp applies LoRA to ",
         "token_embd, blk.N.attn_q/attn_k/attn_v/attn_output, ffn_gate/ffn_up/ffn_down and output); is this the base "
         "the adapter was trained on?");
  }

  const float alpha = float(cfg->lora_alpha);
  io::GGUFWriter w;
  w.add_string("general.architecture", arch);
  w.add_string("general.type", "adapter");
  w.add_string("adapter.type", "lora");
  w.add_f32("adapter.lora.alpha", alpha);
  if (json_set(cfg->alora_invocation_tokens)) {
    std::vector<uint32_t> toks;
    if (!cfg->alora_invocation_tokens.is_array())
      fail(kWho, ": ", adapter_dir, ": alora_invocation_tokens is not a list of token ids");
    for (const auto& t : cfg->alora_invocation_tokens) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > int64_t(UINT32_MAX))
        fail(kWho, ": ", adapter_dir, ": alora_invocation_tokens holds ", t.dump(), ", not a token id");
      toks.push_back(uint32_t(t.get<int64_t>()));
    }
    w.add_u32_array("adapter.alora.invocation_tokens", toks);
  }
  w.add_u32("general.quantization_version", 2);

  LoraGGUFReport rep;
  rep.architecture = arch;
  rep.alpha = alpha;
  for (const auto& ti : base->tensors()) {  // the base file's order: blk.0 ... then output
    const std::string hf = nn::gguf_tensor_hf_name(ti.name);
    if (!ends_with(hf, ".weight")) continue;
    const std::string module = hf.substr(0, hf.size() - 7);
    auto it = pairs.find(module);
    if (it == pairs.end()) continue;
    const Pair& p = it->second;
    Tensor A = file->get(p.a_key, DType::float32), B = file->get(p.b_key, DType::float32);
    const std::string where = std::string(kWho) + ": module '" + module + "' (" + ti.name + ")";
    if (A.dim() != 2 || B.dim() != 2)
      fail(where, ": lora_A is ", shape_str(A.shape()), " and lora_B ", shape_str(B.shape()), "; expected 2-D factors");
    const int64_t r = A.size(0);
    if (B.size(1) != r)
      fail(where, ": lora_A ", shape_str(A.shape()), " and lora_B ", shape_str(B.shape()), " disagree on the rank");
    const int64_t r_cfg = cfg->rank_for(module);
    if (r != r_cfg)
      fail(where, ": its factors have rank ", r, " but the config gives ", r_cfg,
           " (r / rank_pattern); the scaling would be wrong");
    // base [out, in] (row-major); an embedding's [vocab, dim]
    if (ti.shape.size() != 2) fail(where, ": the base tensor is ", shape_str(ti.shape), ", not a matrix");
    const int64_t rows = ti.shape[0], cols = ti.shape[1];
    if (p.embedding ? (A.size(1) != rows || B.size(0) != cols) : (A.size(1) != cols || B.size(0) != rows))
      fail(where, ": lora_A ", shape_str(A.shape()), " / lora_B ", shape_str(B.shape()), " do not fit the base tensor ",
           shape_str(ti.shape), " (is this the base the adapter was trained on?)");
    // PEFT: s = alpha_m / r (alpha_m / sqrt(r) with rsLoRA); llama.cpp: alpha / r (1 when alpha is 0).
    const double alpha_m = cfg->alpha_for(module);
    double factor;
    if (alpha != 0.0f)
      factor = cfg->use_rslora ? alpha_m * std::sqrt(double(r)) / double(alpha) : alpha_m / double(alpha);
    else
      factor = cfg->use_rslora ? alpha_m / std::sqrt(double(r)) : alpha_m / double(r);
    if (factor != 1.0) {
      B = mul(B, factor);
      ++rep.rescaled;
    }
    if (arch == "llama" && (module.find(".self_attn.q_proj") != std::string::npos ||
                            module.find(".self_attn.k_proj") != std::string::npos)) {
      const bool q = module.find(".self_attn.q_proj") != std::string::npos;
      B = permute_rotary(B, q ? heads : kv_heads, ti.name + ".lora_b");
      ++rep.permuted;
    }
    if (p.embedding) A = A.t();  // llama.cpp's get_rows reads token rows of lora_a: [vocab, r]
    A = A.contiguous().to(opts.dtype);
    B = B.contiguous().to(opts.dtype);
    w.add_tensor(ti.name + ".lora_a", A);
    w.add_tensor(ti.name + ".lora_b", B);
    ++rep.modules;
  }
  if (rep.modules != pairs.size()) fail(kWho, ": internal error: ", pairs.size() - rep.modules, " modules were not written");
  w.write(out_path);
  return rep;
}

}  // namespace peft
