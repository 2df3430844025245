// load_pretrained: a Hugging Face checkpoint folder -> a transformer host with its weights,
// built on meta and filled in place from the mapped safetensors files.
#include "nn/transformers/pretrained.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "io/gguf.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace peft::nn {

using nlohmann::ordered_json;

namespace {

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
bool starts_with(const std::string& s, const std::string& t) { return s.rfind(t, 0) == 0; }

std::string join(const std::vector<std::string>& v, size_t max_items = 12) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < max_items; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > max_items) out += ", ... (" + std::to_string(v.size() - max_items) + " more)";
  return out;
}

struct Family {
  std::string model_type, base, head, prefix;  // prefix: transformers' base_model_prefix
};

Family family_of(const ordered_json& config) {
  auto it = config.find("model_type");
  if (it == config.end() || !it->is_string())
    fail_format("config.json: field 'model_type' is missing or not a string (cannot tell which architecture to build)");
  const std::string mt = it->get<std::string>();
  if (mt == "bert") return {mt, "BertModel", "", "bert"};
  if (mt == "gpt2") return {mt, "GPT2Model", "GPT2LMHeadModel", "transformer"};
  if (mt == "llama" || mt == "qwen2" || mt == "mistral") {
    const std::string p = LlamaModel::family_prefix(mt);
    return {mt, p + "Model", p + "ForCausalLM", "model"};
  }
  fail("config.json: model_type '", mt, "' is not supported (supported: bert, gpt2, llama, qwen2, mistral)");
}

// The class to build and whether it was chosen as a fallback for an unsupported head.
std::pair<std::string, bool> resolve_architecture(const ordered_json& config, const Family& f,
                                                  const std::string& requested) {
  auto ok = [&](const std::string& a) { return a == f.base || (!f.head.empty() && a == f.head); };
  if (!requested.empty()) {
    if (!ok(requested))
      fail("architecture '", requested, "' is not supported for model_type '", f.model_type, "' (supported: ", f.base,
           f.head.empty() ? "" : ", " + f.head, ")");
    return {requested, false};
  }
  auto it = config.find("architectures");
  if (it != config.end() && it->is_array())
    for (const auto& a : *it)
      if (a.is_string() && ok(a.get<std::string>())) return {a.get<std::string>(), false};
  const bool had = it != config.end() && it->is_array() && !it->empty();
  return {f.base, had};
}

DType config_dtype(const ordered_json& config) {
  for (const char* key : {"dtype", "torch_dtype"}) {
    auto it = config.find(key);
    if (it == config.end() || !it->is_string()) continue;
    const std::string s = it->get<std::string>();
    if (s == "float32") return DType::float32;
    if (s == "bfloat16") return DType::bfloat16;
    if (s == "float16") return DType::float16;
  }
  return DType::float32;
}

// Checkpoint keys transformers drops on load (buffers older checkpoints stored).
bool ignorable_buffer(const std::string& k) {
  return ends_with(k, ".attn.bias") || ends_with(k, ".attn.masked_bias") || ends_with(k, "rotary_emb.inv_freq") ||
         ends_with(k, "embeddings.position_ids");
}

// transformers' legacy renames (LayerNorm.gamma/beta of old BERT checkpoints).
std::string renamed(const std::string& k) {
  if (ends_with(k, "LayerNorm.gamma")) return k.substr(0, k.size() - 5) + "weight";
  if (ends_with(k, "LayerNorm.beta")) return k.substr(0, k.size() - 4) + "bias";
  return k;
}

struct Source {
  std::shared_ptr<io::SafetensorsFile> file;
  std::string name;  // key inside the file
};

// Every tensor of the checkpoint, by key, with the files that hold them.
std::map<std::string, Source> open_checkpoint(const fs::path& dir, std::vector<std::string>& files) {
  std::map<std::string, Source> out;
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  auto add_file = [&](const fs::path& p, const std::set<std::string>* only) {
    auto f = io::SafetensorsFile::open(p.string());
    files.push_back(p.string());
    for (const auto& t : f->tensors()) {
      if (only && !only->count(t.name)) continue;
      if (out.count(t.name)) fail_key("load_pretrained: tensor '", t.name, "' appears in more than one file of ", dir.string());
      out[t.name] = {f, t.name};
    }
  };
  if (fs::exists(single)) {
    add_file(single, nullptr);
    return out;
  }
  if (!fs::exists(index))
    fail("load_pretrained: ", dir.string(), " has neither model.safetensors nor model.safetensors.index.json",
         fs::exists(dir / "pytorch_model.bin") ? " (pytorch_model.bin is a pickle; convert it to safetensors first)" : "");
  ordered_json j;
  {
    std::ifstream in(index);
    if (!in) fail_io("load_pretrained: cannot read ", index.string());
    try {
      j = ordered_json::parse(in);
    } catch (const std::exception& e) {
      fail_format("load_pretrained: ", index.string(), " is not valid JSON: ", e.what());
    }
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail_format("load_pretrained: ", index.string(), " has no \"weight_map\" object");
  std::map<std::string, std::set<std::string>> by_file;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) fail_format("load_pretrained: ", index.string(), ": weight_map[\"", it.key(), "\"] is not a file name");
    const std::string f = it.value().get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
      fail_format("load_pretrained: ", index.string(), ": shard name '", f, "' must be a plain file name in the folder");
    by_file[f].insert(it.key());
  }
  for (const auto& [f, keys] : by_file) {
    add_file(dir / f, &keys);
    for (const auto& k : keys)
      if (!out.count(k)) fail_key("load_pretrained: ", index.string(), " maps '", k, "' to ", f, ", which does not hold it");
  }
  return out;
}

}  // namespace

std::vector<std::string> supported_architectures() {
  return {"BertModel",      "GPT2Model",        "GPT2LMHeadModel", "LlamaModel",        "LlamaForCausalLM",
          "Qwen2Model",     "Qwen2ForCausalLM", "MistralModel",    "MistralForCausalLM"};
}

ordered_json read_model_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  if (!fs::is_directory(dir)) fail_io("load_pretrained: ", dir, " is not a folder");
  std::ifstream in(p);
  if (!in) fail_io("load_pretrained: cannot read ", p.string(), " (a Hugging Face model folder needs config.json)");
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().size() > (16u << 20)) fail_format("load_pretrained: ", p.string(), " is larger than 16 MiB");
  try {
    ordered_json j = ordered_json::parse(ss.str());
    if (!j.is_object()) fail_format("load_pretrained: ", p.string(), " must hold a JSON object");
    return j;
  } catch (const nlohmann::json::exception& e) {
    fail_format("load_pretrained: ", p.string(), " is not valid JSON: ", e.what());
  }
}

std::shared_ptr<PreTrainedModel> build_pretrained(const ordered_json& config, const std::string& architecture,
                                                  DType dt, Device dev, bool with_pooler) {
  const Family f = family_of(config);
  const std::string arch = resolve_architecture(config, f, architecture).first;
  if (arch == "BertModel") return std::make_shared<BertModel>(config, with_pooler, dt, dev);
  if (arch == "GPT2Model") return std::make_shared<GPT2Model>(config, dt, dev);
  if (arch == "GPT2LMHeadModel") return std::make_shared<GPT2LMHeadModel>(config, dt, dev);
  if (arch == f.base) return std::make_shared<LlamaModel>(config, dt, dev);
  return std::make_shared<LlamaForCausalLM>(config, dt, dev);
}

std::shared_ptr<PreTrainedModel> load_pretrained(const std::string& dir, const PretrainedOptions& opts,
                                                 PretrainedInfo* info) {
  if (fs::is_regular_file(dir) && io::is_gguf_file(dir)) return load_gguf(dir, opts, info);
  const ordered_json config = read_model_config(dir);
  const Family f = family_of(config);
  const auto [arch, fallback] = resolve_architecture(config, f, opts.architecture);
  const DType dt = opts.dtype ? *opts.dtype : config_dtype(config);
  if (!is_floating(dt)) fail("load_pretrained: dtype ", dtype_name(dt), " is not a floating dtype");

  PretrainedInfo inf;
  inf.architecture = arch;
  std::map<std::string, Source> ckpt = open_checkpoint(fs::path(dir), inf.files);

  // Checkpoint key -> model key: legacy renames, then the base-model prefix stripped (a
  // head checkpoint loaded into the base model) or added (a base checkpoint into a head).
  const bool is_base = arch == f.base;
  const std::string pre = f.prefix + ".";
  bool any_prefixed = false;
  for (const auto& [k, s] : ckpt) any_prefixed |= starts_with(k, pre);
  std::map<std::string, std::string> model_key;  // model key -> checkpoint key
  std::vector<std::string> unused;
  for (const auto& [k, s] : ckpt) {
    if (ignorable_buffer(k)) {
      inf.ignored_keys.push_back(k);
      continue;
    }
    std::string m = renamed(k);
    if (is_base && any_prefixed) {
      if (!starts_with(m, pre)) {  // another head's weights (cls.*, lm_head.*, ...)
        unused.push_back(k);
        continue;
      }
      m = m.substr(pre.size());
    } else if (!is_base && !any_prefixed && m != "lm_head.weight") {
      m = pre + m;
    }
    if (model_key.count(m)) fail_key("load_pretrained: ", dir, ": checkpoint keys '", model_key[m], "' and '", k, "' both load '", m, "'");
    model_key[m] = k;
  }
  if (is_base && !unused.empty()) {
    if (!fallback && !any_prefixed)
      fail_key("load_pretrained: ", dir, ": unexpected checkpoint keys for ", arch, ": ", join(unused));
    inf.ignored_keys.insert(inf.ignored_keys.end(), unused.begin(), unused.end());
  }
  const bool pooler = arch == "BertModel" ? model_key.count("pooler.dense.weight") > 0 : true;

  auto model = build_pretrained(config, arch, dt, Device::meta, pooler);

  // Tied parameters (lm_head.weight = the input embedding) are stored once: fill every name of
  // a shared tensor from whichever of its names the checkpoint has.
  std::vector<std::pair<std::string, Tensor>> targets;  // every name, tied ones included
  std::function<void(const Module&, const std::string&)> walk = [&](const Module& m, const std::string& prefix) {
    for (const auto& [n, t] : m.own_parameters()) targets.emplace_back(prefix + n, t);
    for (const auto& [n, t] : m.own_buffers()) targets.emplace_back(prefix + n, t);
    for (const auto& [n, c] : m.children()) walk(*c, prefix + n + ".");
  };
  walk(*model, "");
  std::map<const void*, std::vector<std::string>> names_of;
  for (const auto& [k, t] : targets) names_of[t.impl_ptr().get()].push_back(k);

  StateDict sd;
  std::vector<std::string> unexpected;
  std::set<std::string> expected;
  for (const auto& [k, t] : targets) expected.insert(k);
  for (const auto& [m, k] : model_key)
    if (!expected.count(m)) unexpected.push_back(k);
  if (!unexpected.empty())
    fail_key("load_pretrained: ", dir, ": checkpoint keys that ", arch, " does not have: ", join(unexpected),
         " (is config.json's model_type or architectures right for this checkpoint?)");
  std::vector<std::string> missing;
  for (const auto& [k, t] : targets) {
    std::string src_key;
    if (model_key.count(k)) {
      src_key = model_key[k];
    } else {
      for (const auto& alias : names_of[t.impl_ptr().get()])
        if (model_key.count(alias)) src_key = model_key[alias];
    }
    if (src_key.empty()) {
      missing.push_back(k);
      continue;
    }
    const Source& s = ckpt.at(src_key);
    const io::TensorInfo& ti = s.file->info(s.name);
    if (ti.shape != t.shape())
      fail_shape("load_pretrained: ", dir, ": '", src_key, "' has shape ", shape_str(ti.shape), " in ", s.file->path(), " but ",
           arch, " expects ", shape_str(t.shape()), " for '", k, "' (does config.json match the checkpoint?)");
    const DType disk = io::runtime_dtype(ti.dtype);
    if (!is_floating(disk))
      fail_shape("load_pretrained: ", dir, ": '", src_key, "' is stored as ", io::st_dtype_name(ti.dtype),
           ", not a floating dtype");
    if (disk == dt) {
      sd.set(k, s.file->get(s.name));
      ++inf.zero_copy_tensors;
    } else {
      sd.set(k, s.file->get(s.name, dt));
      ++inf.converted_tensors;
    }
  }
  if (!missing.empty())
    fail_key("load_pretrained: ", dir, ": the checkpoint has no weights for ", join(missing), " (", arch, ", ",
         missing.size(), " missing)");
  model->load_state_dict(sd, /*strict=*/true, /*assign=*/true);
  if (info) *info = std::move(inf);
  return model;
}

}  // namespace peft::nn
