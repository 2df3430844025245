// The training replays of the parity tool: LoRA training runs and AdaLoRA with its rank
// allocator, step by step against the goldens. See tools/parity_case.h.
#include "tools/parity_case.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "nn/optim.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tools/host_models.h"
#include "tools/parity_compare.h"

namespace fs = std::filesystem;

namespace peft::tools::parity_detail {

// AdaLoRA with its rank allocator: from init_full.*, `steps` steps of
// mse -> backward -> SGD(lr=0.02) -> update_and_allocate(step) -> zero_grad.
void CaseRunner::check_adalora_training() {
  StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
  std::string first = adapter_names().front();
  auto m = host();
  std::optional<ScopedWarningHandler> quiet;
  quiet.emplace();
  auto cfg = std::dynamic_pointer_cast<AdaLoraConfig>(config_from_json(meta_["adapters"][0]["config"]));
  if (!cfg) fail("adalora case without an AdaLoRA config");
  cfg->rank_pattern.reset();  // a fresh run: the recorded pattern is the result
  inject_adapter_in_model(*cfg, *m, first);
  quiet.reset();
  const std::string pre_init = "init_full.base_model.model.", pre_final = "final_full.base_model.model.",
                    pre_trim = "final_trimmed.base_model.model.";
  StateDict init;
  for (const auto& [k, v] : io)
    if (k.rfind(pre_init, 0) == 0) init.set(k.substr(pre_init.size()), v);
  nn::LoadResult lr = m->load_state_dict(init, /*strict=*/false);
  Accum ai;
  if (!lr.unexpected_keys.empty()) ai.fail_with("unexpected init keys [" + join(lr.unexpected_keys) + "]");
  emit_accum("training_init", ai);

  Tensor x = io.at("x"), y = io.at("y");
  nn::NamedTensors params;
  for (auto& [n, p] : m->named_parameters())
    if (p.requires_grad()) params.emplace_back(n, p);
  nn::SGDOptions so;
  so.lr = 0.02;
  nn::SGD opt(params, so);
  adalora::AdaLoraAllocator alloc(*m, first);
  int steps = meta_.value("steps", 24);
  std::vector<double> losses;
  m->train();
  for (int s = 0; s < steps; ++s) {
    Tensor loss = mse_loss(m->forward(x), y);
    losses.push_back(loss.item());
    loss.backward();
    opt.step();
    alloc.update_and_allocate(s);
    opt.zero_grad();
  }
  Accum al;
  al.add(compare(from_vector(losses, {int64_t(losses.size())}, DType::float64), io.at("losses"), tol_, "losses"));
  emit_accum("training_losses", al);

  Accum af;
  StateDict full = m->state_dict();
  for (const auto& [k, v] : io) {
    if (k.rfind(pre_final, 0) != 0) continue;
    const Tensor* t = full.find(k.substr(pre_final.size()));
    if (!t) af.fail_with("no tensor " + k.substr(pre_final.size()));
    else af.add(compare(*t, v, tol_, k));
  }
  emit_accum("training_final_full", af);

  StateDict trimmed = get_peft_model_state_dict(*m, first);  // also rewrites the rank_pattern keys
  Accum at;
  std::vector<std::string> want_keys;
  for (const auto& [k, v] : io) {
    if (k.rfind(pre_trim, 0) != 0) continue;
    std::string key = k.substr(pre_trim.size());
    want_keys.push_back(key);
    const Tensor* t = trimmed.find(key);
    if (!t) at.fail_with("no adapter tensor " + key);
    else at.add(compare(*t, v, tol_, k));
  }
  if (trimmed.size() != want_keys.size()) at.fail_with("keys: " + list_diff(trimmed.keys(), want_keys));
  emit_accum("training_final_trimmed", at);

  if (meta_.contains("final_rank_pattern")) {
    auto stored = std::dynamic_pointer_cast<AdaLoraConfig>(peft_config(*m, first));
    ordered_json got = ordered_json::object();
    if (stored && stored->rank_pattern)
      for (const auto& [k, keep] : *stored->rank_pattern) got[k] = keep;
    const auto& want = meta_["final_rank_pattern"];
    emit_bool("training_rank_pattern", got == want, "got " + got.dump() + ", want " + want.dump());
  }

  // The saved peft/ folder: config with rank_pattern -> layers resized, trimmed weights loaded.
  fs::path pdir = fs::path(dir_) / "peft";
  if (!fs::exists(pdir)) return;
  Tensor ref;
  m->eval();
  {
    NoGradGuard ng;
    ref = m->forward(x);
  }
  auto m2 = host();
  std::optional<ScopedWarningHandler> quiet2;
  quiet2.emplace();
  inject_adapter_in_model(*config_from_json(read_text(pdir / "adapter_config.json")), *m2, first);
  quiet2.reset();
  nn::LoadResult r = set_peft_model_state_dict(*m2, io::load_safetensors((pdir / "adapter_model.safetensors").string()), first);
  Accum ap;
  if (!r.unexpected_keys.empty()) ap.fail_with("unexpected keys [" + join(r.unexpected_keys) + "]");
  StateDict back = get_peft_model_state_dict(*m2, first);
  for (const auto& [k, v] : io) {
    if (k.rfind(pre_trim, 0) != 0) continue;
    const Tensor* t = back.find(k.substr(pre_trim.size()));
    if (!t) ap.fail_with("no adapter tensor " + k.substr(pre_trim.size()) + " after loading");
    else ap.add(compare(*t, v, tol_, "loaded " + k));
  }
  m2->eval();
  {
    NoGradGuard ng;
    ap.add(compare(m2->forward(x), ref, tol_, "output of the loaded peft/ adapter"));
  }
  emit_accum("peft_dir", ap);

  // The same folder through the generic folder loader, and a save_pretrained round trip.
  Accum al2;
  auto m3 = host();
  std::optional<ScopedWarningHandler> quiet3;
  quiet3.emplace();
  LoadAdapterResult lr3 = load_adapter(*m3, pdir.string(), first);
  quiet3.reset();
  if (!lr3.missing_keys.empty()) al2.fail_with("missing keys [" + join(lr3.missing_keys) + "]");
  if (!lr3.unexpected_keys.empty()) al2.fail_with("unexpected keys [" + join(lr3.unexpected_keys) + "]");
  m3->eval();
  {
    NoGradGuard ng;
    al2.add(compare(m3->forward(x), ref, tol_, "output after load_adapter"));
  }
  emit_accum("peft_dir_load_adapter", al2);

  Accum as;
  fs::path tmp = fs::temp_directory_path() / ("peft_parity_adalora_" + std::to_string(reinterpret_cast<uintptr_t>(this)));
  fs::remove_all(tmp);
  save_pretrained(*m, tmp.string());
  ordered_json saved = ordered_json::parse(read_text(tmp / "adapter_config.json"));
  if (meta_.contains("final_rank_pattern") && saved["rank_pattern"] != meta_["final_rank_pattern"])
    as.fail_with("saved rank_pattern " + saved["rank_pattern"].dump());
  auto m4 = host();
  std::optional<ScopedWarningHandler> quiet4;
  quiet4.emplace();
  load_adapter(*m4, tmp.string(), first);
  quiet4.reset();
  fs::remove_all(tmp);
  m4->eval();
  {
    NoGradGuard ng;
    as.add(compare(m4->forward(x), ref, tol_, "output after save_pretrained + load_adapter"));
  }
  emit_accum("save_pretrained_roundtrip", as);
}

void CaseRunner::check_training() {
  StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
  load_adapters(*model_, false, true);
  std::string first = adapter_names().front();
  // io's PREFIX.* tensors against the adapter's state dict now, as check NAME
  auto compare_adapter = [&](const std::string& prefix, const std::string& name) {
    Accum a;
    StateDict cur = get_peft_model_state_dict(*model_, first);
    for (const auto& [k, v] : io) {
      if (k.rfind(prefix, 0) != 0) continue;
      const Tensor* t = cur.find(k.substr(prefix.size()));
      if (!t) a.fail_with("no adapter tensor " + k.substr(prefix.size()));
      else a.add(compare(*t, v, tol_, k));
    }
    emit_accum(name, a);
  };
  compare_adapter("init.", "training_init");  // the loaded adapter

  OnDevice on(*model_, device_);
  Tensor x = io.at("x").to(device_), y = io.at("y").to(device_);
  nn::NamedTensors params;
  for (auto& [n, p] : model_->named_parameters())
    if (p.requires_grad()) params.emplace_back(n, p);
  nn::AdamWOptions o;
  o.lr = 1e-2;
  o.beta1 = 0.9;
  o.beta2 = 0.999;
  o.eps = 1e-8;
  o.weight_decay = 0.01;
  nn::AdamW opt(params, o);
  int steps = meta_.value("steps", 10);
  std::vector<double> losses;
  model_->train();
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    Tensor loss = mse_loss(model_->forward(x), y);
    losses.push_back(loss.item());
    loss.backward();
    opt.step();
  }
  Accum al;
  if (io.contains("losses"))
    al.add(compare(from_vector(losses, {int64_t(losses.size())}, DType::float64), io.at("losses"), tol_, "losses"));
  emit_accum("training_losses", al);
  compare_adapter("final.", "training_final_weights");
}

}  // namespace peft::tools::parity_detail
