#include "tools/merge.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "adapters/core/detail.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "nn/layers.h"
#include "nn/transformers/pretrained.h"
#include "runtime/ops.h"

namespace peft::tools {

namespace fs = std::filesystem;

namespace {

const std::string kPeftPrefix = "base_model.model.";

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

std::string read_config_text(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) fail("peft merge: cannot read ", p.string(), " (is this a PEFT adapter folder?)");
  if (fs::file_size(p, ec) > (16u << 20)) fail("peft merge: ", p.string(), " is larger than 16 MiB; not an adapter config");
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) fail("peft merge: cannot read ", p.string());
  return ss.str();
}

// "a.base_layer.b" -> "a.b": the host model's name of a tensor inside a tuner layer.
std::string host_key(std::string k) {
  for (size_t p; (p = k.find("base_layer.")) != std::string::npos;) k.erase(p, 11);
  return k;
}

std::string module_of(const std::string& host) {
  size_t dot = host.rfind('.');
  return dot == std::string::npos ? "" : host.substr(0, dot);
}

struct Source {
  std::string dir;
  double weight = 1.0;
  PeftConfigPtr cfg;
  std::string prefix;  // "lora_", "ia3_"
  std::shared_ptr<io::SafetensorsFile> file;
  std::map<std::string, std::vector<std::string>> module_keys;  // adapted module -> file keys
  std::map<std::string, std::string> direct;                   // host key -> file key
};

Source open_source(const MergeInput& in) {
  Source s;
  s.dir = in.dir;
  s.weight = in.weight;
  fs::path dir(in.dir);
  s.cfg = config_from_json(read_config_text(dir / "adapter_config.json"));
  s.prefix = method_for(s.cfg->peft_type).prefix;
  fs::path weights = dir / "adapter_model.safetensors";
  if (!fs::exists(weights)) {
    if (fs::exists(dir / "adapter_model.bin"))
      fail("peft merge: ", in.dir, " holds adapter_model.bin (a pickle); peft.cpp reads only safetensors. Convert it "
           "in Python with PeftModel.from_pretrained(...).save_pretrained(..., safe_serialization=True)");
    fail("peft merge: ", weights.string(), " does not exist (is this a PEFT adapter folder?)");
  }
  s.file = io::SafetensorsFile::open(weights.string());
  std::vector<std::string> rest;
  const std::string marker = "." + s.prefix;
  for (const auto& info : s.file->tensors()) {
    std::string k = starts_with(info.name, kPeftPrefix) ? info.name.substr(kPeftPrefix.size()) : info.name;
    size_t p = k.rfind(marker);
    if (p != std::string::npos) s.module_keys[k.substr(0, p)].push_back(info.name);
    else rest.push_back(info.name);
  }
  for (const auto& name : rest) {
    std::string k = starts_with(name, kPeftPrefix) ? name.substr(kPeftPrefix.size()) : name;
    std::string h = host_key(k);
    auto it = s.module_keys.find(module_of(h));
    if (it != s.module_keys.end()) it->second.push_back(name);  // e.g. a trained bias of the adapted layer
    else s.direct[h] = name;                                    // bias="all" elsewhere, modules_to_save
  }
  const TunerMethod& method = method_for(s.cfg->peft_type);
  if (in.weight != 1.0 && method.weighted_delta_error)
    if (std::string why = method.weighted_delta_error(*s.cfg); !why.empty())
      fail("peft merge: --weight ", in.weight, " for ", in.dir, ": ", why, "; use --weight 1");
  if (s.module_keys.empty() && s.direct.empty()) fail("peft merge: ", weights.string(), " holds no tensors");
  return s;
}

// A tree holding only `leaf` at dotted `path` (containers are ModuleDicts).
std::shared_ptr<nn::Module> single_module_tree(const std::string& path, const nn::ModulePtr& leaf) {
  auto root = std::make_shared<nn::ModuleDict>();
  nn::ModuleDict* cur = root.get();
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) fail("peft merge: module name '", path, "' has an empty component");
    if (dot == std::string::npos) {
      cur->insert(part, leaf);
      return root;
    }
    if (!cur->contains(part)) cur->insert(part, std::make_shared<nn::ModuleDict>());
    auto next = std::dynamic_pointer_cast<nn::ModuleDict>(cur->child_ptr(part));
    if (!next) fail("peft merge: module name '", path, "' nests below a layer");
    cur = next.get();
    start = dot + 1;
  }
}

struct ModuleWeights {
  Tensor weight, bias;  // float32; bias undefined when the base has none
};

// Merges one adapter into one module's weights.
ModuleWeights merge_module(const Source& s, const std::string& module, ModuleWeights w, size_t index, bool conv1d) {
  const auto& keys = s.module_keys.at(module);
  bool embedding = false;
  for (const auto& k : keys) embedding |= k.find(".lora_embedding_") != std::string::npos;
  if (w.weight.dim() != 2)
    fail("peft merge: ", module, ".weight is ", w.weight.desc(), "; only Linear and Embedding weights (2-D) are merged");
  nn::ModulePtr leaf;
  if (embedding) {
    if (w.bias.defined()) fail("peft merge: ", module, " has a bias but its adapter is an embedding adapter");
    auto e = std::make_shared<nn::Embedding>(w.weight.size(0), w.weight.size(1), std::nullopt, nullptr,
                                             DType::float32, Device::meta);
    e->weight().set_data(w.weight);
    leaf = e;
  } else if (conv1d) {
    // weight [nx, nf] = [in, out]; the adapter is injected with fan_in_fan_out as PEFT does
    auto c = std::make_shared<nn::Conv1D>(w.weight.size(1), w.weight.size(0), DType::float32, Device::meta);
    c->weight().set_data(w.weight);
    if (w.bias.defined()) c->param("bias").set_data(w.bias);
    else c->remove_parameter("bias");
    leaf = c;
  } else {
    auto l = std::make_shared<nn::Linear>(w.weight.size(1), w.weight.size(0), w.bias.defined(), nullptr, DType::float32,
                                          Device::meta);
    l->weight().set_data(w.weight);
    if (w.bias.defined()) l->param("bias").set_data(w.bias);
    leaf = l;
  }
  auto tree = single_module_tree(module, leaf);
  const std::string name = "merge" + std::to_string(index);
  const TunerMethod& method = method_for(s.cfg->peft_type);
  if (s.weight != 1.0 && !method.delta_scales_with)
    fail("peft merge: --weight ", s.weight, " for ", s.dir, ": ", s.cfg->peft_type, " has no weighted delta; use --weight 1");
  StateDict sd;
  for (const auto& k : keys) {
    Tensor t = s.file->get(k, DType::float32);
    if (s.weight != 1.0 && method.delta_scales_with(k)) t = mul(t, s.weight);
    sd.set(k, t);
  }
  {
    ScopedWarningHandler quiet;
    inject_from_state_dict(*s.cfg, *tree, sd, name);
    nn::LoadResult r = set_peft_model_state_dict(*tree, sd, name);
    if (!r.unexpected_keys.empty())
      fail("peft merge: ", s.dir, ": tensors of module '", module, "' that its ", s.cfg->peft_type,
           " layer does not have: ", py_list(r.unexpected_keys));
    std::vector<std::string> missing;
    for (const auto& k : r.missing_keys)
      if (k.find("." + s.prefix) != std::string::npos && k.find("." + name) != std::string::npos) missing.push_back(k);
    if (!missing.empty())
      fail("peft merge: ", s.dir, ": module '", module, "' lacks adapter tensors ", py_list(missing));
    MergeAndUnloadOptions mo;
    mo.safe_merge = true;
    merge_and_unload(*tree, mo);
  }
  nn::ModulePtr merged = tree->get_submodule(module);
  ModuleWeights out;
  out.weight = merged->param("weight");
  if (merged->has_param("bias")) out.bias = merged->param("bias");
  return out;
}

}  // namespace

MergeReport merge_into_file(const std::string& base_path, const std::vector<MergeInput>& adapters,
                            const std::string& out_path, const MergeOptions& opts) {
  if (adapters.empty()) fail("peft merge: no adapter given");
  if (opts.dtype && !is_floating(*opts.dtype)) fail("peft merge: the output dtype must be floating");
  auto base = io::SafetensorsFile::open(base_path);
  std::vector<Source> sources;
  for (const auto& in : adapters) sources.push_back(open_source(in));

  // Which output tensors come from where; everything is checked before the output is created.
  std::set<std::string> adapted;                   // modules with at least one adapter
  std::map<std::string, std::pair<size_t, std::string>> replaced;  // host key -> (source, file key); last wins
  for (size_t i = 0; i < sources.size(); ++i) {
    const Source& s = sources[i];
    bool fifo = false;
    if (auto lc = std::dynamic_pointer_cast<LoraConfig>(s.cfg)) fifo = lc->fan_in_fan_out;
    if (auto ac = std::dynamic_pointer_cast<AdaLoraConfig>(s.cfg)) fifo = ac->fan_in_fan_out;
    if (auto ic = std::dynamic_pointer_cast<IA3Config>(s.cfg)) fifo = ic->fan_in_fan_out;
    if (fifo && !opts.conv1d_modules)
      fail("peft merge: ", s.dir, " was saved with fan_in_fan_out=true: it adapts Conv1D layers (GPT-2 style, weights "
           "stored [in, out]), which a bare safetensors file cannot tell from Linear layers. Pass the model folder "
           "(with config.json) as --base so they are merged transposed");
    for (const auto& [m, keys] : s.module_keys) {
      if (!base->contains(m + ".weight"))
        fail("peft merge: ", s.dir, " adapts module '", m, "' but ", base_path, " has no tensor '", m,
             ".weight' (is the base file stored under the host model's own names?)");
      adapted.insert(m);
    }
    for (const auto& [h, k] : s.direct) {
      if (!base->contains(h))
        fail("peft merge: ", s.dir, " holds '", k, "' but ", base_path, " has no tensor '", h, "' to replace");
      if (base->info(h).shape != s.file->info(k).shape)
        fail("peft merge: ", s.dir, ": '", k, "' has shape ", shape_str(s.file->info(k).shape), " but '", h, "' in ",
             base_path, " has ", shape_str(base->info(h).shape));
      if (adapted.count(module_of(h)))
        fail("peft merge: '", h, "' is both adapted and replaced by the adapters; merge them one at a time");
      replaced[h] = {i, k};
    }
  }

  std::vector<io::TensorSpec> specs;
  for (const auto& info : base->tensors()) {
    DType dt = io::runtime_dtype(info.dtype);
    if (opts.dtype && is_floating(dt)) dt = *opts.dtype;
    if (adapted.count(module_of(info.name)) && !is_floating(dt))
      fail("peft merge: ", info.name, " is ", io::st_dtype_name(info.dtype), "; adapted weights must be floating");
    specs.push_back({info.name, dt, info.shape});
  }
  std::map<std::string, DType> out_dtype;
  for (const auto& sp : specs) out_dtype[sp.name] = sp.dtype;
  auto metadata = base->metadata();
  io::SafetensorsWriter writer(out_path, specs, metadata);

  MergeReport report;
  std::map<std::string, ModuleWeights> done;  // merged modules whose tensors are not all written yet
  std::map<std::string, int> pending;
  for (const auto& m : adapted) pending[m] = base->contains(m + ".bias") ? 2 : 1;
  const size_t total = writer.order().size();
  for (const std::string& name : writer.order()) {
    Tensor t;
    const std::string module = module_of(name);
    const bool is_param = name == module + ".weight" || name == module + ".bias";
    if (adapted.count(module) && is_param) {
      auto it = done.find(module);
      if (it == done.end()) {
        // Copies: merging in place into views of the private file mapping would leave every
        // merged page copied-on-write in the mapping until the end (the whole model's size).
        ModuleWeights w;
        w.weight = base->get(module + ".weight", DType::float32).clone();
        if (base->contains(module + ".bias")) w.bias = base->get(module + ".bias", DType::float32).clone();
        const bool conv1d = opts.conv1d_modules && opts.conv1d_modules->count(module);
        for (size_t i = 0; i < sources.size(); ++i)
          if (sources[i].module_keys.count(module)) w = merge_module(sources[i], module, w, i, conv1d);
        it = done.emplace(module, w).first;
        ++report.merged_modules;
      }
      t = name == module + ".weight" ? it->second.weight : it->second.bias;
      if (--pending[module] == 0) done.erase(module);
    } else if (auto r = replaced.find(name); r != replaced.end()) {
      t = sources[r->second.first].file->get(r->second.second);
      ++report.replaced;
    } else {
      t = base->get(name);
    }
    if (t.dtype() != out_dtype.at(name)) t = t.to(out_dtype.at(name));
    writer.write(name, t);
    ++report.tensors;
    if (opts.progress) opts.progress(report.tensors, total, name);
  }
  writer.commit();
  return report;
}

MergeReport merge_into_folder(const std::string& base_dir, const std::vector<MergeInput>& adapters,
                              const std::string& out_dir, MergeOptions opts) {
  const fs::path base(base_dir), out(out_dir);
  const nlohmann::ordered_json config = nn::read_model_config(base_dir);
  if (!fs::exists(base / "model.safetensors")) {
    if (fs::exists(base / "model.safetensors.index.json"))
      fail("peft merge: ", base_dir, " is a sharded checkpoint (model.safetensors.index.json); merging sharded "
           "checkpoints is not supported yet");
    fail("peft merge: ", base_dir, " has no model.safetensors");
  }
  std::error_code ec;
  if (fs::exists(out) && fs::equivalent(out, base, ec))
    fail("peft merge: --out ", out_dir, " is the base folder; write the merged model to a new folder");
  // which modules are Conv1D: the architecture built on meta (no weights read)
  auto model = nn::build_pretrained(config, "", DType::float32, Device::meta);
  std::set<std::string> conv1d;
  for (const auto& [name, m] : model->named_modules())
    if (dynamic_cast<const nn::Conv1D*>(m.get())) conv1d.insert(name);
  opts.conv1d_modules = conv1d;
  fs::create_directories(out);
  MergeReport r = merge_into_file((base / "model.safetensors").string(), adapters, (out / "model.safetensors").string(),
                                  opts);
  // the rest of the folder (config, generation config, tokenizer) as it is
  for (const auto& e : fs::directory_iterator(base)) {
    if (!e.is_regular_file()) continue;
    const std::string n = e.path().filename().string();
    if (n == "model.safetensors" || n.rfind(".", 0) == 0) continue;
    fs::copy_file(e.path(), out / n, fs::copy_options::overwrite_existing);
  }
  return r;
}

}  // namespace peft::tools
