#include "adapters/adalora/model.h"

#include "adapters/defaults.h"
#include "nn/transformers/common.h"

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::adalora {

namespace {

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
  return s;
}

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  size_t b = 0;
  for (size_t p; (p = s.find('.', b)) != std::string::npos; b = p + 1) parts.push_back(s.substr(b, p - b));
  parts.push_back(s.substr(b));
  return parts;
}

std::string join_first(const std::vector<std::string>& parts, size_t n) {
  std::string s;
  for (size_t i = 0; i < n && i < parts.size(); ++i) s += (i ? "." : "") + parts[i];
  return s;
}

Tensor kept_indices(const std::vector<bool>& keep) {
  std::vector<int64_t> idx;
  for (size_t i = 0; i < keep.size(); ++i)
    if (keep[i]) idx.push_back(int64_t(i));
  return from_vector(idx, {int64_t(idx.size())});
}

int64_t count_true(const std::vector<bool>& keep) {
  int64_t n = 0;
  for (bool b : keep) n += b;
  return n;
}

}  // namespace

nn::ModulePtr create_and_replace(AdaLoraConfig& cfg, const std::string& adapter, const nn::ModulePtr& target,
                                 const std::string& key, bool low_cpu_mem_usage) {
  (void)key;
  AdapterArgs args;
  args.r = cfg.init_r;
  args.lora_alpha = cfg.lora_alpha;
  args.lora_dropout = cfg.lora_dropout;
  args.init_lora_weights = cfg.init_lora_weights.truthy();
  args.low_cpu_mem_usage = low_cpu_mem_usage;
  args.inference_mode = cfg.inference_mode;
  if (auto existing = std::dynamic_pointer_cast<SVDLinear>(target)) {
    existing->update_layer(adapter, args);
    return nullptr;
  }
  nn::Module* base = target.get();
  while (auto* t = dynamic_cast<TunerLayer*>(base)) base = &t->base_layer();
  if (dynamic_cast<nn::Conv1D*>(base)) {  // before Linear: a Conv1D is a Linear stored [in, out]
    if (!cfg.fan_in_fan_out) {
      warn("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
      cfg.fan_in_fan_out = true;  // PEFT writes it back into the config
    }
    return std::make_shared<SVDLinear>(target, adapter, args, /*fan_in_fan_out=*/true);
  }
  if (dynamic_cast<nn::Linear*>(base)) {
    if (cfg.fan_in_fan_out) {
      warn("fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to "
           "False.");
      cfg.fan_in_fan_out = false;
    }
    return std::make_shared<SVDLinear>(target, adapter, args, /*fan_in_fan_out=*/false);
  }
  fail("Target module ", target->repr(),
       " is not supported. Currently, only `torch.nn.Linear` and `Conv1D` are supported.");
}

namespace {

// What SVDLinear::update_layer replaces, for one layer: every per-adapter dict in order (an
// erase + insert moves an entry to the end, so order is part of the state) and the maps.
class LayerSnapshot {
 public:
  explicit LayerSnapshot(SVDLinear& layer) : layer_(layer), r_(layer.r), alpha_(layer.lora_alpha), scaling_(layer.scaling) {
    for (auto* d : dicts()) {
      std::vector<std::pair<std::string, Tensor>> entries;
      for (const auto& [k, t] : d->own_parameters()) entries.emplace_back(k, t);
      params_.push_back(std::move(entries));
    }
    for (const auto& [k, m] : layer.lora_dropout().children()) dropout_.emplace_back(k, m);
  }
  void restore() {
    auto ds = dicts();
    for (size_t i = 0; i < ds.size(); ++i) {
      for (const auto& k : ds[i]->keys()) ds[i]->erase(k);
      for (const auto& [k, t] : params_[i]) ds[i]->insert(k, t, t.requires_grad());
    }
    nn::ModuleDict& drop = layer_.lora_dropout();
    std::vector<std::string> names;
    for (const auto& [k, m] : drop.children()) names.push_back(k);
    for (const auto& k : names) drop.erase(k);
    for (const auto& [k, m] : dropout_) drop.insert(k, m);
    layer_.r = r_;
    layer_.lora_alpha = alpha_;
    layer_.scaling = scaling_;
  }

 private:
  std::vector<nn::ParameterDict*> dicts() const {
    return {&layer_.lora_A(), &layer_.lora_E(), &layer_.lora_B(), &layer_.ranknum()};
  }
  SVDLinear& layer_;
  std::map<std::string, int64_t> r_;
  std::map<std::string, double> alpha_, scaling_;
  std::vector<std::vector<std::pair<std::string, Tensor>>> params_;
  std::vector<std::pair<std::string, nn::ModulePtr>> dropout_;
};

}  // namespace

std::function<void()> resize_modules_by_rank_pattern(nn::Module& model, const AdaLoraConfig::RankPattern& rank_pattern,
                                                     const std::string& adapter) {
  // Every entry is checked before any layer changes, so a bad rank_pattern changes nothing.
  struct Resize {
    std::shared_ptr<SVDLinear> target;
    std::vector<bool> keep;
    int64_t rank;
  };
  std::vector<Resize> plan;
  for (const auto& [name, keep] : rank_pattern) {
    int64_t rank = count_true(keep);
    auto parts = split_dots(name);
    bool has_adapter = name.find(adapter) != std::string::npos;
    size_t drop = has_adapter ? 2 : 1;
    std::string key = join_first(parts, parts.size() >= drop ? parts.size() - drop : 0);
    auto target = std::dynamic_pointer_cast<SVDLinear>(model.get_submodule(key));
    if (!target) fail("rank_pattern entry '", name, "': module '", key, "' is not an adalora.SVDLinear");
    if (!target->lora_A().contains(adapter)) fail("rank_pattern entry '", name, "': no adapter '", adapter, "'");
    int64_t rows = target->lora_E()[adapter].size(0);
    if (rows == rank && int64_t(keep.size()) != rows) continue;  // already resized
    if (int64_t(keep.size()) != rows)
      fail("rank_pattern entry '", name, "' has ", keep.size(), " entries but the layer has rank ", rows);
    plan.push_back({target, keep, rank});
  }
  PeftState* st = peft_state(model);
  auto cfg = st ? std::dynamic_pointer_cast<AdaLoraConfig>(st->find(adapter)) : nullptr;
  auto snapshots = std::make_shared<std::vector<LayerSnapshot>>();
  auto undo = [snapshots] {
    for (auto it = snapshots->rbegin(); it != snapshots->rend(); ++it) it->restore();
  };
  try {
    for (const auto& [target, keep, rank] : plan) {
      Tensor idx = kept_indices(keep);
      Tensor E, A, B, rn;
      {
        NoGradGuard ng;
        E = index_select(target->lora_E()[adapter], 0, idx).clone();
        A = index_select(target->lora_A()[adapter], 0, idx).clone();
        B = index_select(target->lora_B()[adapter], 1, idx).clone();
        rn = target->ranknum()[adapter].detach().clone();
      }
      AdapterArgs args;
      args.r = rank;
      args.lora_alpha = cfg ? cfg->lora_alpha : target->lora_alpha.at(adapter);
      args.lora_dropout = cfg ? cfg->lora_dropout : 0.0;
      args.init_lora_weights = cfg ? cfg->init_lora_weights.truthy() : true;
      args.inference_mode = cfg ? cfg->inference_mode : false;
      snapshots->emplace_back(*target);
      target->update_layer(adapter, args);
      if (rank > 0) {
        NoGradGuard ng;
        target->lora_E()[adapter].copy_(E);
        target->lora_A()[adapter].copy_(A);
        target->lora_B()[adapter].copy_(B);
        target->ranknum()[adapter].copy_(rn);
      }
    }
  } catch (...) {
    undo();
    throw;
  }
  return undo;
}

void resize_state_dict_by_rank_pattern(StateDict& sd, const AdaLoraConfig::RankPattern& rank_pattern) {
  for (const auto& [name, keep] : rank_pattern) {
    int64_t rank = count_true(keep);
    auto parts = split_dots(name);
    std::string prefix = replace_all(join_first(parts, parts.size() - 1), "base_model.model.", "");
    Tensor idx = kept_indices(keep);
    for (const char* layer : {"lora_E", "lora_A", "lora_B"}) {
      std::string key = prefix + "." + layer;
      const Tensor* t = sd.find(key);
      if (!t) fail("rank_pattern entry '", name, "': the state dict has no key '", key, "'");
      bool is_b = std::string(layer) == "lora_B";
      int64_t dim = is_b ? 1 : 0;
      if (t->size(dim) == rank) continue;
      if (t->size(dim) != int64_t(keep.size()))
        fail("rank_pattern entry '", name, "' has ", keep.size(), " entries but '", key, "' has ", t->size(dim),
             is_b ? " columns" : " rows");
      NoGradGuard ng;
      sd.set(key, index_select(*t, dim, idx));
    }
  }
}

void register_adalora_method() {
  TunerMethod m;
  m.peft_type = "ADALORA";
  m.prefix = "lora_";
  m.model_class = "AdaLoraModel";
  m.parse_config = [](const ordered_json& j) -> PeftConfigPtr { return AdaLoraConfig::from_json(j); };
  m.prepare_config = [](PeftConfig& c, const std::string& model_type) {
    if (!c.target_modules.is_none()) return;
    auto defaults = default_target_modules("ADALORA", model_type);
    if (!defaults) fail("Please specify `target_modules` in `peft_config`");
    c.target_modules = TargetModules::list(*defaults);
  };
  m.check_new_adapter_config = [](const PeftState& state, const PeftConfig& c) {
    if (state.configs.size() > 1 && c.bias_mode() != "none")
      fail("AdaLoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for "
           "all adapters.");
    int trainable = 0;
    for (const auto& [n, cfg] : state.configs)
      if (!cfg->inference_mode) ++trainable;
    if (trainable > 1)
      fail("AdaLoraModel supports only 1 trainable adapter. When using multiple adapters, set inference_mode to "
           "True for all adapters except the one you want to train.");
  };
  m.create_and_replace = [](PeftConfig& c, const std::string& adapter, const nn::ModulePtr& target,
                            const std::string& key, bool low_cpu, const StateDict&) -> nn::ModulePtr {
    auto* ac = dynamic_cast<AdaLoraConfig*>(&c);
    if (!ac) fail("AdaLoRA injection needs an AdaLoraConfig (peft_type ADALORA)");
    return create_and_replace(*ac, adapter, target, key, low_cpu);
  };
  // Saving: ranknum is not saved; with a rank_pattern its keys lose ".<adapter>"
  // (in the stored config, as PEFT) and A/E rows, B columns are trimmed.
  m.finish_state_dict = [](const nn::Module& model, const std::string& adapter, PeftConfig& c, StateDict& sd) {
    (void)model;
    StateDict out;
    for (const auto& [k, v] : sd)
      if (!(k.rfind("ranknum", 0) == 0 || k.find(".ranknum") != std::string::npos)) out.set(k, v);
    auto* ac = dynamic_cast<AdaLoraConfig*>(&c);
    if (ac && ac->rank_pattern) {
      AdaLoraConfig::RankPattern rp;
      for (const auto& [k, keep] : *ac->rank_pattern) rp.emplace_back(replace_all(k, "." + adapter, ""), keep);
      ac->rank_pattern = rp;
      resize_state_dict_by_rank_pattern(out, rp);
    }
    sd = std::move(out);
  };
  // Loading: the layers are resized to the saved rank_pattern first.
  m.before_load = [](nn::Module& model, const std::string& adapter, PeftConfig& c) -> std::function<void()> {
    auto* ac = dynamic_cast<AdaLoraConfig*>(&c);
    if (ac && ac->rank_pattern) return resize_modules_by_rank_pattern(model, *ac->rank_pattern, adapter);
    return nullptr;
  };
  m.default_target_fields = [](const std::string& model_type) -> std::optional<ordered_json> {
    auto t = default_target_modules("ADALORA", model_type);
    if (!t) return std::nullopt;
    return ordered_json{{"target_modules", *t}};
  };
  m.weighted_delta_error = [](const PeftConfig&) -> std::string { return ""; };
  m.add_weighted_adapter_error = "AdaLoRA does not support add_weighted_adapter method.";
  // ΔW = B·(A⊙E)·scaling/ranknum is linear in B
  m.delta_scales_with = [](const std::string& key) { return key.find(".lora_B.") != std::string::npos; };
  register_method(std::move(m));
}

}  // namespace peft::adalora
