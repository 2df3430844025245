// The parity check families of a golden case (repr, keys, trainable names, init, outputs,
// mixed batches, merges, PEFT folders, low_cpu_mem_usage). See tools/parity_case.h.
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

void CaseRunner::check_repr() {
  if (!meta_.contains("repr")) return skip_absent("repr");
  std::string want = meta_["repr"].get<std::string>(), got = model_->repr();
  if (got == want) return emit("repr", Status::pass, 0);
  std::istringstream a(got), b(want);
  std::string la, lb;
  int line = 0;
  while (true) {
    ++line;
    bool ea = !std::getline(a, la), eb = !std::getline(b, lb);
    if (ea && eb) break;
    if (ea || eb || la != lb) {
      emit("repr", Status::fail, INFINITY, "line " + std::to_string(line) + ": got '" + la + "', want '" + lb + "'");
      return;
    }
  }
  emit("repr", Status::fail, INFINITY, "texts differ");
}

void CaseRunner::check_keys() {
  if (!meta_.contains("state_dict_keys_after_inject")) return skip_absent("state_dict_keys_after_inject");
  auto want = str_list(meta_["state_dict_keys_after_inject"]);
  auto got = model_->state_dict().keys();
  emit_bool("state_dict_keys_after_inject", got == want, list_diff(got, want));
}

void CaseRunner::check_trainable() {
  if (!meta_.contains("trainable")) return skip_absent("trainable");
  const auto& t = meta_["trainable"];
  if (t.is_array()) {
    auto got = trainable_parameter_names(*model_);
    auto want = str_list(t);
    emit_bool("trainable", got == want, list_diff(got, want));
    return;
  }
  for (auto it = t.begin(); it != t.end(); ++it) {
    set_adapter(*model_, it.key());
    auto got = trainable_parameter_names(*model_);
    auto want = str_list(it.value());
    emit_bool("trainable." + it.key(), got == want, list_diff(got, want));
  }
}

void CaseRunner::check_init_zero() {
  if (!meta_.contains("init_zero_keys")) return skip_absent("init_zero_keys");
  const auto& z = meta_["init_zero_keys"];
  for (auto it = z.begin(); it != z.end(); ++it) {
    StateDict sd = get_peft_model_state_dict(*model_, it.key());
    std::vector<std::string> zero;
    for (const auto& [k, v] : sd) {
      auto vals = v.to(DType::float64).to_vector<double>();
      if (std::all_of(vals.begin(), vals.end(), [](double x) { return x == 0.0; })) zero.push_back(k);
    }
    auto want = str_list(it.value());
    std::set<std::string> gs(zero.begin(), zero.end()), ws(want.begin(), want.end());
    emit_bool("init_zero_keys." + it.key(), gs == ws, list_diff(zero, want));
  }
}

void CaseRunner::check_adapter_keys() {
  if (!meta_.contains("adapter_keys")) return skip_absent("adapter_keys");
  const auto& z = meta_["adapter_keys"];
  for (auto it = z.begin(); it != z.end(); ++it) {
    auto got = get_peft_model_state_dict(*model_, it.key()).keys();
    auto want = str_list(it.value());
    emit_bool("adapter_keys." + it.key(), got == want, list_diff(got, want));
  }
}

// Output and gradients of sum(output * grad_seed) with each adapter active.
void CaseRunner::check_outputs() {
  StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
  OnDevice on(*model_, device_);
  Tensor x = input(io).to(device_);
  model_->eval();
  if (io.contains("output_base")) {
    std::optional<ScopedWarningHandler> quiet;
  quiet.emplace();  // bias != none warns here
    enable_adapters(*model_, false);
    quiet.reset();
    Tensor out;
    {
      NoGradGuard ng;
      out = model_->forward(x);
    }
    enable_adapters(*model_, true);
    Accum a;
    a.add(compare(out, io.at("output_base"), tol_, "output_base"));
    emit_accum("output_base", a);
  }
  for (const auto& n : adapter_names()) {
    if (!io.contains(n + ".output")) continue;
    set_adapter(*model_, n);
    model_->zero_grad();
    Tensor xin = x;
    bool float_in = is_floating(x.dtype());
    if (float_in) xin = x.detach().clone().requires_grad_(true);
    Tensor out = model_->forward(xin);
    Accum ao;
    ao.add(compare(out, io.at(n + ".output"), tol_, n + ".output"));
    emit_accum("output." + n, ao);
    if (!io.contains(n + ".grad_seed")) continue;
    Tensor loss = sum(mul(out, io.at(n + ".grad_seed").to(device_)));
    loss.backward();
    std::map<std::string, Tensor> params;
    for (auto& [pn, p] : model_->named_parameters()) params[pn] = p;
    Accum ag;
    std::string pre = n + ".grad.";
    std::set<std::string> recorded;
    for (const auto& [k, v] : io) {
      if (k.rfind(pre, 0) != 0) continue;
      std::string pn = k.substr(pre.size());
      recorded.insert(pn);
      if (pn == "input") {
        ag.add(compare(float_in ? xin.grad() : Tensor(), v, tol_, "grad of input"));
        continue;
      }
      auto it = params.find(pn);
      if (it == params.end()) {
        ag.fail_with("no parameter " + pn);
        continue;
      }
      ag.add(compare(it->second.grad(), v, tol_, "grad of " + pn));
    }
    for (auto& [pn, p] : params)
      if (p.requires_grad() && !recorded.count(pn)) ag.fail_with("trainable " + pn + " has no recorded gradient");
    emit_accum("grad." + n, ag);
    model_->zero_grad();
  }
}

// Row i uses adapter adapter_names[i]; also checked against per-adapter forwards.
void CaseRunner::check_mixed_batch() {
  StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
  OnDevice on(*model_, device_);
  Tensor x = input(io).to(device_);
  auto names = str_list(meta_["adapter_names"]);
  model_->eval();
  NoGradGuard ng;
  Tensor out = forward_mixed_batch(*model_, x, names);
  Accum a;
  a.add(compare(out, io.at("output"), tol_, "output"));
  emit_accum("mixed_batch_output", a);
  // Each row equals the plain forward with that row's adapter alone.
  Accum c;
  for (size_t i = 0; i < names.size(); ++i) {
    Tensor row = x.narrow(0, int64_t(i), 1);
    if (names[i] == "__base__") enable_adapters(*model_, false);
    else set_adapter(*model_, names[i]);
    Tensor ref = model_->forward(row);
    enable_adapters(*model_, true);
    c.add(compare(out.narrow(0, int64_t(i), 1), ref, tol_, "row " + std::to_string(i)));
  }
  emit_accum("mixed_batch_rows", c);
}

// Host key (as in merged.* / merged_<adapter>.safetensors) -> the model's tensor.
std::map<std::string, Tensor> CaseRunner::host_view(const nn::Module& m) {
  std::map<std::string, Tensor> out;
  for (const auto& [k, v] : m.state_dict()) {
    std::string h = k;
    for (size_t p; (p = h.find("base_layer.")) != std::string::npos;) h.erase(p, 11);
    out[h] = v;
  }
  return out;
}

void CaseRunner::check_merge() {
  StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
  if (!io.contains("merged_output")) return;
  std::string first = adapter_names().front();
  Tensor x = input(io);
  model_->eval();
  set_adapter(*model_, first);
  Tensor before;
  {
    NoGradGuard ng;
    before = model_->forward(x);
  }
  std::map<std::string, Tensor> saved;
  for (const auto& [k, v] : model_->state_dict()) saved[k] = v.detach().clone();

  merge_adapters(*model_, /*safe_merge=*/true, {first});
  auto hv = host_view(*model_);
  Accum aw;
  for (const auto& [k, v] : io) {
    if (k.rfind("merged.", 0) != 0) continue;
    std::string h = k.substr(7);
    auto it = hv.find(h);
    if (it == hv.end()) aw.fail_with("no host tensor " + h);
    else aw.add(compare(it->second, v, tol_, k));
  }
  emit_accum("merged_weights", aw);
  fs::path mf = fs::path(dir_) / ("merged_" + first + ".safetensors");
  if (fs::exists(mf)) {
    StateDict ms = io::load_safetensors(mf.string());
    Accum af;
    for (const auto& [k, v] : ms) {
      auto it = hv.find(k);
      if (it == hv.end()) af.fail_with("no host tensor " + k);
      else af.add(compare(it->second, v, tol_, k));
    }
    emit_accum("merged_file", af);
  }
  if (fs::exists(fs::path(dir_) / ("merged_" + first + "_bfloat16.safetensors"))) check_merged_bf16(first);
  Tensor merged_out;
  {
    NoGradGuard ng;
    merged_out = model_->forward(x);
  }
  Accum ao;
  ao.add(compare(merged_out, io.at("merged_output"), tol_, "merged_output"));
  emit_accum("merged_output", ao);

  {
    std::optional<ScopedWarningHandler> quiet;
  quiet.emplace();  // IA3 warns that unmerge can be inaccurate
    unmerge_adapters(*model_);
    quiet.reset();
  }
  Accum ar;
  for (const auto& [k, v] : model_->state_dict()) {
    auto it = saved.find(k);
    if (it != saved.end()) ar.add(compare(v, it->second, ParityTolerance{1e-6, 0.0}, "unmerged " + k));
  }
  Tensor after;
  {
    NoGradGuard ng;
    after = model_->forward(x);
  }
  ar.add(compare(after, before, tol_, "output after unmerge"));
  emit_accum("unmerge_restores", ar);
}

// bfloat16: host converted to bf16, the bf16 adapter (peft_bfloat16/) loaded and merged.
void CaseRunner::check_merged_bf16(const std::string& first) {
  fs::path pdir = fs::path(dir_) / "peft_bfloat16";
  if (!fs::exists(pdir)) {
    emit("merged_file_bfloat16", Status::skip, 0, "no peft_bfloat16/ adapter to merge");
    return;
  }
  auto m = host();
  m->to(DType::bfloat16);
  std::optional<ScopedWarningHandler> quiet;
  quiet.emplace();
  for (const auto& n : adapter_names()) {
    fs::path d = n == "default" ? pdir : pdir / n;
    inject_adapter_in_model(*config_from_json(read_text(d / "adapter_config.json")), *m, n);
    set_peft_model_state_dict(*m, io::load_safetensors((d / "adapter_model.safetensors").string()), n);
  }
  quiet.reset();
  set_adapter(*m, first);
  merge_adapters(*m, false, {first});
  auto hv = host_view(*m);
  StateDict ms = io::load_safetensors((fs::path(dir_) / ("merged_" + first + "_bfloat16.safetensors")).string());
  Accum a;
  for (const auto& [k, v] : ms) {
    auto it = hv.find(k);
    if (it == hv.end()) a.fail_with("no host tensor " + k);
    else if (it->second.dtype() != DType::bfloat16) a.fail_with(k + " is not bfloat16 after merging");
    else a.add(compare(it->second, v, ParityTolerance{1e-2, 1e-2}, k));
  }
  emit_accum("merged_file_bfloat16", a);
}

// The same adapters saved by PeftModel.save_pretrained (keys prefixed base_model.model.).
void CaseRunner::check_peft_dirs() {
  StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
  for (const char* sub : {"peft", "peft_bfloat16"}) {
    fs::path root = fs::path(dir_) / sub;
    if (!fs::exists(root)) continue;
    bool bf16 = std::string(sub) == "peft_bfloat16";
    std::string check = bf16 ? "peft_dir_bfloat16" : "peft_dir";
    auto m = host();
    auto names = adapter_names();
    Accum a;
    std::optional<ScopedWarningHandler> quiet;
  quiet.emplace();
    for (const auto& n : names) {
      fs::path d = n == "default" ? root : root / n;
      PeftConfigPtr cfg = config_from_json(read_text(d / "adapter_config.json"));
      inject_adapter_in_model(*cfg, *m, n);
    }
    quiet.reset();
    for (const auto& n : names) {
      fs::path d = n == "default" ? root : root / n;
      StateDict sd = io::load_safetensors((d / "adapter_model.safetensors").string());
      nn::LoadResult r = set_peft_model_state_dict(*m, sd, n);
      if (!r.unexpected_keys.empty()) a.fail_with(n + ": unexpected keys [" + join(r.unexpected_keys) + "]");
    }
    m->eval();
    ParityTolerance t = bf16 ? ParityTolerance{1e-2, 1e-2} : tol_;
    for (const auto& n : names) {
      if (!io.contains(n + ".output")) continue;
      set_adapter(*m, n);
      NoGradGuard ng;
      a.add(compare(m->forward(input(io)), io.at(n + ".output"), t, n + ".output"));
    }
    emit_accum(check, a);
  }
}

std::vector<std::string> CaseRunner::device_names(const nn::Module& m, const std::string& adapter) {
  std::set<std::string> s;
  for (const auto& [k, v] : get_peft_model_state_dict(m, adapter)) s.insert(device_name(v.device()));
  return {s.begin(), s.end()};
}

void CaseRunner::check_low_cpu() {
  StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
  std::optional<ScopedWarningHandler> quiet;
  quiet.emplace();
  auto m = injected(true);
  quiet.reset();
  std::string first = adapter_names().front();
  auto want_before = str_list(meta_["devices_before_load"]);
  auto got_before = device_names(*m, first);
  emit_bool("devices_before_load", got_before == want_before, list_diff(got_before, want_before));
  auto forward_throws = [&](nn::Module& model) {
    try {
      model.forward(input(io));
    } catch (const Error&) {
      return true;
    }
    return false;
  };
  emit_bool("meta_forward_throws", forward_throws(*m), "forward with meta adapter tensors did not throw");

  StateDict sd = io::load_safetensors((fs::path(dir_) / ("adapter_" + first + ".safetensors")).string());
  nn::LoadResult r = set_peft_model_state_dict(*m, sd, first, /*low_cpu_mem_usage=*/true);
  if (meta_.contains("outcome_unexpected")) {
    auto want = str_list(meta_["outcome_unexpected"]);
    emit_bool("outcome_unexpected", r.unexpected_keys == want, list_diff(r.unexpected_keys, want));
  }
  auto want_after = str_list(meta_["devices_after_load"]);
  auto got_after = device_names(*m, first);
  emit_bool("devices_after_load", got_after == want_after, list_diff(got_after, want_after));
  m->eval();
  if (io.contains("output")) {
    Accum a;
    NoGradGuard ng;
    a.add(compare(m->forward(input(io)), io.at("output"), tol_, "output"));
    emit_accum("output", a);
  }
  if (meta_.contains("bad_load_removed_key")) {
    std::optional<ScopedWarningHandler> quiet2;
    quiet2.emplace();
    auto m2 = injected(true);
    quiet2.reset();
    std::string removed = meta_["bad_load_removed_key"].get<std::string>();
    StateDict bad;
    Tensor any;
    for (const auto& [k, v] : sd) {
      any = v;
      if (k != removed) bad.set(k, v.clone());
    }
    for (const auto& k : str_list(meta_["bad_outcome_unexpected"])) bad.set(k, any.clone());
    nn::LoadResult rb = set_peft_model_state_dict(*m2, bad, first, true);
    auto want_u = str_list(meta_["bad_outcome_unexpected"]);
    emit_bool("bad_outcome_unexpected", rb.unexpected_keys == want_u, list_diff(rb.unexpected_keys, want_u));
    std::vector<std::string> miss;
    for (const auto& k : rb.missing_keys)
      if (is_adapter_tensor_key(k) && k.find(first) != std::string::npos) miss.push_back(k);
    auto want_m = str_list(meta_["bad_outcome_missing"]);
    emit_bool("bad_outcome_missing", miss == want_m, list_diff(miss, want_m));
    // The key left out stays on meta and using it throws.
    emit_bool("bad_load_forward_throws", forward_throws(*m2),
              "forward with a missing (meta) adapter tensor did not throw");
  }
}

}  // namespace peft::tools::parity_detail
