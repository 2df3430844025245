// `peft inspect DIR|FILE [--json]`: what an adapter folder (and its named
// sub-folders) or a safetensors file holds, read from the headers only.
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "adapters/defaults.h"
#include "adapters/peft.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "nn/transformers/pretrained.h"
#include "tools/args.h"
#include "tools/cli.h"

namespace peft::cli {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

std::string slurp(const fs::path& p) {
  std::error_code ec;
  if (fs::file_size(p, ec) > (16u << 20)) fail(p.string(), " is larger than 16 MiB; not an adapter config");
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot read ", p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ojson file_json(const io::SafetensorsFile& f) {
  ojson j;
  j["metadata"] = f.metadata();
  uint64_t params = 0;
  ojson ts = ojson::array();
  for (const auto& t : f.tensors()) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= uint64_t(d);
    params += n;
    ts.push_back({{"name", t.name}, {"dtype", io::st_dtype_name(t.dtype)}, {"shape", t.shape}, {"numel", n}});
  }
  j["tensors"] = ts;
  j["parameters"] = params;
  j["bytes"] = f.file_size();
  return j;
}

// Adapted module names: the part before ".<prefix>" of each key, without "base_model.model.".
std::vector<std::string> targets_of(const io::SafetensorsFile& f, const std::string& prefix) {
  std::set<std::string> out;
  for (const auto& t : f.tensors()) {
    std::string k = t.name.rfind("base_model.model.", 0) == 0 ? t.name.substr(17) : t.name;
    size_t p = k.rfind("." + prefix);
    if (p != std::string::npos) out.insert(k.substr(0, p));
  }
  return {out.begin(), out.end()};
}

ojson adapter_json(const fs::path& dir, const std::string& name) {
  ojson j;
  j["name"] = name;
  j["dir"] = dir.string();
  PeftConfigPtr cfg = config_from_json(slurp(dir / "adapter_config.json"));
  register_builtin_methods();
  j["peft_type"] = cfg->peft_type;
  j["config"] = cfg->to_json();
  fs::path w = dir / "adapter_model.safetensors";
  if (fs::exists(w)) {
    auto f = io::SafetensorsFile::open(w.string());
    ojson fj = file_json(*f);
    for (auto& [k, v] : fj.items()) j[k] = v;
    j["targets"] = targets_of(*f, method_for(cfg->peft_type).prefix);
  } else {
    j["weights_missing"] = true;
  }
  return j;
}

// A Hugging Face model folder: the architecture load_pretrained builds, its size and dtypes,
// and the modules PEFT 0.21 targets when a config names none.
ojson model_json(const fs::path& dir) {
  ojson j;
  nn::PretrainedInfo info;
  auto model = nn::load_pretrained(dir.string(), {}, &info);
  j["architecture"] = info.architecture;
  j["model_type"] = model->model_type();
  j["files"] = info.files;
  uint64_t params = 0;
  std::map<std::string, uint64_t> by_dtype;
  for (const auto& f : info.files) {
    auto sf = io::SafetensorsFile::open(f);
    for (const auto& t : sf->tensors()) {
      uint64_t n = 1;
      for (int64_t d : t.shape) n *= uint64_t(d);
      const std::string dt = io::st_dtype_name(t.dtype);
      if (dt == "F32" || dt == "F16" || dt == "BF16" || dt == "F64") params += n;  // not integer buffers
      by_dtype[dt] += n;
    }
  }
  j["parameters"] = params;
  j["parameters_by_dtype"] = by_dtype;
  j["layers"] = model->num_layers();
  j["max_positions"] = model->max_positions();
  j["ignored_checkpoint_keys"] = info.ignored_keys;
  j["tokenizer"] = fs::exists(dir / "tokenizer.json");
  std::vector<std::string> module_names;
  for (const auto& [n, m] : model->named_modules())
    if (!n.empty()) module_names.push_back(n);
  auto matching = [&](const std::vector<std::string>& targets) {
    std::vector<std::string> out;
    for (const auto& n : module_names)
      for (const auto& t : targets)
        if (n == t || (n.size() > t.size() && n.compare(n.size() - t.size() - 1, t.size() + 1, "." + t) == 0)) {
          out.push_back(n);
          break;
        }
    return out;
  };
  ojson defaults = ojson::object();
  for (const TunerMethod* method : registered_methods()) {
    auto fields = method->default_target_fields ? method->default_target_fields(model->model_type()) : std::nullopt;
    if (!fields) {
      defaults[method->peft_type] = nullptr;
      continue;
    }
    ojson d = {{"target_modules", (*fields)["target_modules"]},
               {"modules", matching((*fields)["target_modules"].get<std::vector<std::string>>())}};
    for (auto& [k, v] : fields->items())
      if (k != "target_modules") d[k] = v;
    defaults[method->peft_type] = d;
  }
  j["default_targets"] = defaults;
  return j;
}

void print_model(const ojson& m) {
  std::printf("%s (model_type %s): %llu parameters, %lld layers, %lld positions\n",
              m["architecture"].get<std::string>().c_str(), m["model_type"].get<std::string>().c_str(),
              (unsigned long long)m["parameters"].get<uint64_t>(), (long long)m["layers"].get<int64_t>(),
              (long long)m["max_positions"].get<int64_t>());
  std::printf("  dtypes on disk:");
  for (const auto& [k, v] : m["parameters_by_dtype"].items())
    std::printf(" %s (%llu)", k.c_str(), (unsigned long long)v.get<uint64_t>());
  std::printf("\n  files: %zu, tokenizer.json: %s\n", m["files"].size(), m["tokenizer"].get<bool>() ? "yes" : "no");
  if (!m["ignored_checkpoint_keys"].empty())
    std::printf("  checkpoint keys not used: %zu\n", m["ignored_checkpoint_keys"].size());
  std::printf("  PEFT 0.21 default targets (target_modules unset):\n");
  for (const auto& [method, d] : m["default_targets"].items()) {
    if (d.is_null()) {
      std::printf("    %-8s none for this model_type (target_modules must be given)\n", method.c_str());
      continue;
    }
    std::printf("    %-8s %s -> %zu modules", method.c_str(), d["target_modules"].dump().c_str(), d["modules"].size());
    if (d.contains("feedforward_modules")) std::printf(", feed-forward %s", d["feedforward_modules"].dump().c_str());
    if (!d["modules"].empty()) std::printf(" (e.g. %s)", d["modules"][0].get<std::string>().c_str());
    std::printf("\n");
  }
}

std::string shape_text(const ojson& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i].get<int64_t>());
  return out + "]";
}

void print_tensors(const ojson& j) {
  size_t w = 4;
  for (const auto& t : j["tensors"]) w = std::max(w, t["name"].get<std::string>().size());
  for (const auto& t : j["tensors"])
    std::printf("    %-*s %-5s %s\n", int(w), t["name"].get<std::string>().c_str(),
                t["dtype"].get<std::string>().c_str(), shape_text(t["shape"]).c_str());
}

std::string value_text(const ojson& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

void print_adapter(const ojson& a) {
  std::printf("adapter '%s' (%s) in %s\n", a["name"].get<std::string>().c_str(),
              a["peft_type"].get<std::string>().c_str(), a["dir"].get<std::string>().c_str());
  const ojson& c = a["config"];
  for (const char* k : {"r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "bias", "init_lora_weights",
                        "target_modules", "exclude_modules", "feedforward_modules", "modules_to_save",
                        "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "target_r",
                        "init_r", "total_step", "peft_version", "base_model_name_or_path"})
    if (c.contains(k) && !c[k].is_null() && !(c[k].is_object() && c[k].empty()))
      std::printf("  %-24s %s\n", k, value_text(c[k]).c_str());
  if (a.contains("weights_missing")) {
    std::printf("  adapter_model.safetensors is missing\n");
    return;
  }
  std::printf("  targets (%zu): ", a["targets"].size());
  for (size_t i = 0; i < a["targets"].size(); ++i)
    std::printf("%s%s", i ? ", " : "", a["targets"][i].get<std::string>().c_str());
  std::printf("\n  parameters: %llu in %zu tensors (%llu bytes on disk)\n",
              (unsigned long long)a["parameters"].get<uint64_t>(), a["tensors"].size(),
              (unsigned long long)a["bytes"].get<uint64_t>());
  print_tensors(a);
}


// A metadata value for display: arrays longer than 8 entries are summarised (length, first
// entries), so a 49,152-token vocabulary prints as one line.
ojson gguf_value_json(const io::GGUFValue& v) {
  if (v.type != io::GGUFValueType::array || v.value.size() <= 8) return v.value;
  ojson head = ojson::array();
  for (size_t i = 0; i < 4; ++i) head.push_back(v.value[i]);
  return {{"array_of", io::gguf_value_type_name(v.elem_type)}, {"length", v.value.size()}, {"first", head}};
}

// A GGUF file: the model it describes (architecture, sizes, context, heads), its tensors by
// GGML type (count, parameters, bytes), the tokenizer and the chat template; headers only.
ojson gguf_json(const fs::path& p) {
  auto f = io::GGUFFile::open(p.string());
  ojson j;
  j["gguf_version"] = f->version();
  j["alignment"] = f->alignment();
  j["bytes"] = f->file_size();
  const std::string arch = f->get_string("general.architecture", "");
  j["architecture"] = arch;
  j["name"] = f->get_string("general.name", "");
  auto num = [&](const std::string& k) -> ojson {
    const io::GGUFValue* v = f->find(arch + "." + k);
    return v ? v->value : ojson();
  };
  j["context_length"] = num("context_length");
  j["embedding_length"] = num("embedding_length");
  j["feed_forward_length"] = num("feed_forward_length");
  j["block_count"] = num("block_count");
  j["head_count"] = num("attention.head_count");
  j["head_count_kv"] = num("attention.head_count_kv");
  j["rope_freq_base"] = num("rope.freq_base");
  j["rms_norm_eps"] = num("attention.layer_norm_rms_epsilon");
  uint64_t params = 0;
  std::map<std::string, std::array<uint64_t, 3>> by_type;  // tensors, parameters, bytes
  ojson ts = ojson::array();
  for (const auto& t : f->tensors()) {
    uint64_t n = 1;
    for (uint64_t d : t.ne) n *= d;
    params += n;
    const std::string type = io::ggml_type_info(t.ggml_type)->name;
    auto& bt = by_type[type];
    bt[0] += 1, bt[1] += n, bt[2] += t.nbytes;
    ts.push_back({{"name", t.name}, {"type", type}, {"shape", t.shape}, {"bytes", t.nbytes},
                  {"readable", io::ggml_runtime_dtype(t.ggml_type).has_value()}});
  }
  j["parameters"] = params;
  ojson types = ojson::object();
  for (const auto& [k, v] : by_type) types[k] = {{"tensors", v[0]}, {"parameters", v[1]}, {"bytes", v[2]}};
  j["types"] = types;
  ojson tok;
  tok["model"] = f->get_string("tokenizer.ggml.model", "");
  tok["pre"] = f->get_string("tokenizer.ggml.pre", "");
  if (const io::GGUFValue* v = f->find("tokenizer.ggml.tokens")) tok["tokens"] = v->value.size();
  if (const io::GGUFValue* v = f->find("tokenizer.ggml.merges")) tok["merges"] = v->value.size();
  for (const char* k : {"bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "add_bos_token",
                        "add_eos_token", "add_space_prefix"})
    if (const io::GGUFValue* v = f->find(std::string("tokenizer.ggml.") + k)) tok[k] = v->value;
  j["tokenizer"] = tok;
  j["chat_template"] = f->get_string("tokenizer.chat_template", "");
  ojson meta = ojson::object();
  for (const auto& [k, v] : f->metadata()) meta[k] = gguf_value_json(v);
  j["metadata"] = meta;
  j["tensors"] = ts;
  return j;
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / double(1 << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  return buf;
}

void print_gguf(const ojson& g) {
  auto text = [](const ojson& v) { return v.is_null() ? std::string("-") : v.is_string() ? v.get<std::string>() : v.dump(); };
  std::printf("GGUF v%u, %s: %s \"%s\", %llu parameters in %zu tensors\n", g["gguf_version"].get<unsigned>(),
              human_bytes(g["bytes"].get<uint64_t>()).c_str(), g["architecture"].get<std::string>().c_str(),
              g["name"].get<std::string>().c_str(), (unsigned long long)g["parameters"].get<uint64_t>(), g["tensors"].size());
  std::printf("  layers %s, hidden %s, feed-forward %s, heads %s (kv %s), context %s, rope theta %s, rms eps %s\n",
              text(g["block_count"]).c_str(), text(g["embedding_length"]).c_str(), text(g["feed_forward_length"]).c_str(),
              text(g["head_count"]).c_str(), text(g["head_count_kv"]).c_str(), text(g["context_length"]).c_str(),
              text(g["rope_freq_base"]).c_str(), text(g["rms_norm_eps"]).c_str());
  std::printf("  tensor types:\n");
  for (const auto& [k, v] : g["types"].items())
    std::printf("    %-6s %4llu tensors %12llu parameters %12s\n", k.c_str(), (unsigned long long)v["tensors"].get<uint64_t>(),
                (unsigned long long)v["parameters"].get<uint64_t>(), human_bytes(v["bytes"].get<uint64_t>()).c_str());
  const ojson& t = g["tokenizer"];
  std::printf("  tokenizer: %s (pre %s), %s tokens", text(t["model"]).c_str(), text(t["pre"]).c_str(),
              text(t.value("tokens", ojson())).c_str());
  if (t.contains("merges")) std::printf(", %s merges", text(t["merges"]).c_str());
  for (const char* k : {"bos_token_id", "eos_token_id", "padding_token_id", "add_bos_token"})
    if (t.contains(k)) std::printf(", %s %s", k, text(t[k]).c_str());
  std::printf("\n");
  const std::string ct = g["chat_template"].get<std::string>();
  if (ct.empty()) {
    std::printf("  chat template: none\n");
  } else {
    std::string one = ct.substr(0, 100);
    for (char& c : one)
      if (c == '\n') c = ' ';
    std::printf("  chat template (%zu chars): %s%s\n", ct.size(), one.c_str(), ct.size() > 100 ? " ..." : "");
  }
}

int run_inspect(const std::vector<std::string>& argv) {
  Args a(argv, {}, {"json"});
  if (a.help) {
    std::printf(
        "usage: peft inspect DIR|FILE [--json]\n"
        "  DIR with config.json: a Hugging Face model folder: architecture, parameter count,\n"
        "  dtypes on disk, and the modules PEFT would target by default for LoRA, IA3, AdaLoRA.\n"
        "  DIR: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) and its\n"
        "  named sub-folders: config summary, targeted modules, tensors (name, dtype, shape),\n"
        "  parameter counts. FILE: a .safetensors file (metadata, tensors, parameters) or an\n"
        "  adapter_config.json. FILE.gguf: a llama.cpp model file: architecture, context, heads,\n"
        "  tensor types with their parameter and byte counts, tokenizer, chat template.\n"
        "  Only headers are read. --json prints one JSON object instead.\n");
    return 0;
  }
  if (a.positional.size() != 1) throw UsageError{"expects one DIR or FILE"};
  fs::path p = a.positional[0];
  std::error_code ec;
  if (!fs::exists(p, ec)) fail("peft inspect: ", p.string(), " does not exist");
  ojson out;
  out["path"] = p.string();
  if (fs::is_directory(p) && fs::exists(p / "config.json") && !fs::exists(p / "adapter_config.json")) {
    out["kind"] = "model_folder";
    ojson mj = model_json(p);
    for (auto& [k, v] : mj.items()) out[k] = v;
  } else if (fs::is_directory(p)) {
    out["kind"] = "adapter_folder";
    ojson adapters = ojson::array();
    if (fs::exists(p / "adapter_config.json")) adapters.push_back(adapter_json(p, "default"));
    std::vector<fs::path> subs;
    for (const auto& e : fs::directory_iterator(p))
      if (e.is_directory() && fs::exists(e.path() / "adapter_config.json")) subs.push_back(e.path());
    std::sort(subs.begin(), subs.end());
    for (const auto& s : subs) adapters.push_back(adapter_json(s, s.filename().string()));
    if (adapters.empty())
      fail("peft inspect: ", p.string(), " holds no adapter_config.json (nor sub-folders with one)");
    out["adapters"] = adapters;
  } else if (fs::is_regular_file(p) && io::is_gguf_file(p.string())) {
    out["kind"] = "gguf";
    ojson gj = gguf_json(p);
    for (auto& [k, v] : gj.items()) out[k] = v;
  } else if (p.extension() == ".json") {
    out["kind"] = "adapter_config";
    PeftConfigPtr cfg = config_from_json(slurp(p));
    out["peft_type"] = cfg->peft_type;
    out["config"] = cfg->to_json();
  } else {
    out["kind"] = "safetensors";
    auto f = io::SafetensorsFile::open(p.string());
    ojson fj = file_json(*f);  // named: items() of a temporary would dangle
    for (auto& [k, v] : fj.items()) out[k] = v;
  }
  if (a.has("json")) {
    std::printf("%s\n", out.dump(2, ' ', false, ojson::error_handler_t::replace).c_str());
    return 0;
  }
  if (out["kind"] == "model_folder") {
    print_model(out);
  } else if (out["kind"] == "gguf") {
    print_gguf(out);
  } else if (out["kind"] == "adapter_folder") {
    for (const auto& ad : out["adapters"]) print_adapter(ad);
  } else if (out["kind"] == "adapter_config") {
    std::printf("%s\n", out["config"].dump(2).c_str());
  } else {
    std::printf("%s: %zu tensors, %llu parameters, %llu bytes\n", p.string().c_str(), out["tensors"].size(),
                (unsigned long long)out["parameters"].get<uint64_t>(), (unsigned long long)out["bytes"].get<uint64_t>());
    for (const auto& [k, v] : out["metadata"].items())
      std::printf("  metadata %s = %s\n", k.c_str(), v.get<std::string>().c_str());
    print_tensors(out);
  }
  return 0;
}

Registrar reg({"inspect", "show what a model folder, adapter folder or safetensors file holds (--json)", run_inspect});

}  // namespace
}  // namespace peft::cli
