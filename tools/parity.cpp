// Parity checks against the PEFT 0.21 goldens. See tools/parity.h.
#include "tools/parity.h"

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

namespace peft::tools {

void ParityReport::add(ParityCheck c) {
  switch (c.status) {
    case ParityCheck::Status::pass: ++passed; break;
    case ParityCheck::Status::fail: ++failed; break;
    case ParityCheck::Status::skip: ++skipped; break;
  }
  checks.push_back(std::move(c));
}

std::string format_check(const ParityCheck& c) {
  char err[64];
  std::snprintf(err, sizeof err, "%.3g", c.max_abs_err);
  switch (c.status) {
    case ParityCheck::Status::pass: return "PASS " + c.case_name + " " + c.check + " " + err;
    case ParityCheck::Status::fail:
      return "FAIL " + c.case_name + " " + c.check + " " + err + (c.detail.empty() ? "" : " (" + c.detail + ")");
    case ParityCheck::Status::skip: return "SKIP " + c.case_name + " " + c.check + " (" + c.detail + ")";
  }
  return "";
}

namespace {

using Status = ParityCheck::Status;
using namespace parity_detail;

class CaseRunner : CheckEmitter {
 public:
  CaseRunner(const std::string& dir, const std::function<void(const ParityCheck&)>& cb, const ParityTolerance& tol,
             Device device)
      : CheckEmitter(cb), dir_(dir), tol_(tol), device_(device) {}

  ParityReport run() {
    name_ = fs::path(dir_).filename().string();
    if (name_.empty()) name_ = fs::path(dir_).parent_path().filename().string();
    if (fs::exists(dir_) && !fs::is_directory(dir_)) {
      emit("case", Status::skip, 0, "not a case folder");
      return report_;
    }
    try {
      meta_ = ordered_json::parse(read_text(fs::path(dir_) / "case.json"));
    } catch (const std::exception& e) {
      emit("case.json", Status::fail, INFINITY, e.what());
      return report_;
    }
    if (meta_.contains("name") && meta_["name"].is_string()) name_ = meta_["name"].get<std::string>();
    std::string why;
    if (!supported(why)) {
      emit("case", Status::skip, 0, why);
      return report_;
    }
    guarded("setup", [&] { setup(); });
    if (!ready_) return report_;
    guarded("repr", [&] { check_repr(); });
    guarded("state_dict_keys_after_inject", [&] { check_keys(); });
    guarded("trainable", [&] { check_trainable(); });
    guarded("init_zero_keys", [&] { check_init_zero(); });
    guarded("adapter_keys", [&] { check_adapter_keys(); });
    if (meta_.contains("devices_before_load")) {
      guarded("low_cpu_mem_usage", [&] { check_low_cpu(); });
      return report_;
    }
    if (name_.rfind("adalora_", 0) == 0 && meta_.contains("steps")) {
      guarded("training", [&] { check_adalora_training(); });
      return report_;
    }
    if (meta_.contains("losses") || name_ == "lora_training_adamw" || meta_.contains("steps")) {
      guarded("training", [&] { check_training(); });
      return report_;
    }
    guarded("load", [&] { load_adapters(*model_, false, true); });
    if (!loaded_) return report_;
    if (meta_.contains("adapter_names")) {
      guarded("mixed_batch", [&] { check_mixed_batch(); });
      return report_;
    }
    guarded("outputs", [&] { check_outputs(); });
    guarded("merge", [&] { check_merge(); });
    guarded("peft_dir", [&] { check_peft_dirs(); });
    return report_;
  }

 private:
  // ------------------------------------------------------------ plumbing --

  bool supported(std::string& why) {
    if (!meta_.contains("adapters")) return why = "case.json has no adapters", false;
    for (const auto& a : meta_["adapters"]) {
      std::string t = a["config"].value("peft_type", "");
      if (!find_method(t)) return why = "peft_type " + t + " is not implemented", false;
    }
    return true;
  }

  std::shared_ptr<nn::Module> host() {
    nlohmann::json spec = nlohmann::json::parse(meta_["arch_spec"].dump());
    auto m = build_host_model(meta_["arch"].get<std::string>(), spec);
    StateDict base = io::load_safetensors((fs::path(dir_) / "base.safetensors").string());
    m->load_state_dict(base, /*strict=*/true);
    return m;
  }

  std::vector<std::string> adapter_names() const {
    std::vector<std::string> v;
    for (const auto& a : meta_["adapters"]) v.push_back(a["name"].get<std::string>());
    return v;
  }

  std::shared_ptr<nn::Module> injected(bool low_cpu) {
    auto m = host();
    for (const auto& a : meta_["adapters"]) {
      PeftConfigPtr cfg = config_from_json(a["config"]);
      inject_adapter_in_model(*cfg, *m, a["name"].get<std::string>(), low_cpu);
    }
    return m;
  }

  void setup() {
    std::optional<ScopedWarningHandler> old;
    old.emplace();
    model_ = injected(false);
    old.reset();
    ready_ = true;
  }

  // Loads adapter_<name>.safetensors for every adapter.
  void load_adapters(nn::Module& m, bool low_cpu, bool report) {
    Accum a;
    for (const auto& n : adapter_names()) {
      StateDict sd = io::load_safetensors((fs::path(dir_) / ("adapter_" + n + ".safetensors")).string());
      nn::LoadResult r = set_peft_model_state_dict(m, sd, n, low_cpu);
      if (!r.unexpected_keys.empty()) a.fail_with(n + ": unexpected keys [" + join(r.unexpected_keys) + "]");
      for (const auto& k : r.missing_keys)
        if ((k.find("lora_") != std::string::npos || k.find("ia3_") != std::string::npos) &&
            (k.find("." + n + ".") != std::string::npos ||
             (k.size() > n.size() + 1 && k.compare(k.size() - n.size() - 1, n.size() + 1, "." + n) == 0)))
          a.fail_with(n + ": missing adapter key " + k);
    }
    if (report) emit_accum("load_adapter", a);
    loaded_ = a.ok;
  }

  Tensor input(const StateDict& io) const {
    if (io.contains("input")) return io.at("input");
    return io.at("x");
  }

  // Runs the outputs, gradients, mixed-batch and training checks with model_ on device_
  // (`peft parity --device cuda`); model_ returns to the CPU afterwards.
  struct OnDevice {
    OnDevice(nn::Module& m, Device d) : m_(m), moved_(d != Device::cpu) {
      if (moved_) m_.to(d);
    }
    ~OnDevice() {
      if (moved_) m_.to(Device::cpu);
    }
    nn::Module& m_;
    bool moved_;
  };

  // ---------------------------------------------------------------- checks --
  // A check whose case.json field is absent is reported as skipped, by name.
  void skip_absent(const char* field) { emit(field, Status::skip, 0, "not recorded in case.json"); }

  void check_repr() {
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

  void check_keys() {
    if (!meta_.contains("state_dict_keys_after_inject")) return skip_absent("state_dict_keys_after_inject");
    auto want = str_list(meta_["state_dict_keys_after_inject"]);
    auto got = model_->state_dict().keys();
    emit_bool("state_dict_keys_after_inject", got == want, list_diff(got, want));
  }

  void check_trainable() {
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

  void check_init_zero() {
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

  void check_adapter_keys() {
    if (!meta_.contains("adapter_keys")) return skip_absent("adapter_keys");
    const auto& z = meta_["adapter_keys"];
    for (auto it = z.begin(); it != z.end(); ++it) {
      auto got = get_peft_model_state_dict(*model_, it.key()).keys();
      auto want = str_list(it.value());
      emit_bool("adapter_keys." + it.key(), got == want, list_diff(got, want));
    }
  }

  // Output and gradients of sum(output * grad_seed) with each adapter active.
  void check_outputs() {
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
  void check_mixed_batch() {
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
  std::map<std::string, Tensor> host_view(const nn::Module& m) {
    std::map<std::string, Tensor> out;
    for (const auto& [k, v] : m.state_dict()) {
      std::string h = k;
      for (size_t p; (p = h.find("base_layer.")) != std::string::npos;) h.erase(p, 11);
      out[h] = v;
    }
    return out;
  }

  void check_merge() {
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
  void check_merged_bf16(const std::string& first) {
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
  void check_peft_dirs() {
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

  std::vector<std::string> device_names(const nn::Module& m, const std::string& adapter) {
    std::set<std::string> s;
    for (const auto& [k, v] : get_peft_model_state_dict(m, adapter)) s.insert(device_name(v.device()));
    return {s.begin(), s.end()};
  }

  void check_low_cpu() {
    StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
    std::optional<ScopedWarningHandler> quiet;
    quiet.emplace();
    auto m = injected(true);
    quiet.reset();
    std::string first = adapter_names().front();
    auto want_before = str_list(meta_["devices_before_load"]);
    auto got_before = device_names(*m, first);
    emit_bool("devices_before_load", got_before == want_before, list_diff(got_before, want_before));
    bool threw = false;
    try {
      m->forward(input(io));
    } catch (const Error&) {
      threw = true;
    }
    emit_bool("meta_forward_throws", threw, "forward with meta adapter tensors did not throw");

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
        if (k.find("lora_") != std::string::npos && k.find(first) != std::string::npos) miss.push_back(k);
      auto want_m = str_list(meta_["bad_outcome_missing"]);
      emit_bool("bad_outcome_missing", miss == want_m, list_diff(miss, want_m));
      // The key left out stays on meta and using it throws.
      bool threw2 = false;
      try {
        m2->forward(input(io));
      } catch (const Error&) {
        threw2 = true;
      }
      emit_bool("bad_load_forward_throws", threw2, "forward with a missing (meta) adapter tensor did not throw");
    }
  }

  // AdaLoRA with its rank allocator: from init_full.*, `steps` steps of
  // mse -> backward -> SGD(lr=0.02) -> update_and_allocate(step) -> zero_grad.
  void check_adalora_training() {
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

  void check_training() {
    StateDict io = io::load_safetensors((fs::path(dir_) / "io.safetensors").string());
    load_adapters(*model_, false, true);
    std::string first = adapter_names().front();
    // init.* = the loaded adapter
    Accum ai;
    StateDict cur = get_peft_model_state_dict(*model_, first);
    for (const auto& [k, v] : io) {
      if (k.rfind("init.", 0) != 0) continue;
      const Tensor* t = cur.find(k.substr(5));
      if (!t) ai.fail_with("no adapter tensor " + k.substr(5));
      else ai.add(compare(*t, v, tol_, k));
    }
    emit_accum("training_init", ai);

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
    Accum af;
    StateDict fin = get_peft_model_state_dict(*model_, first);
    for (const auto& [k, v] : io) {
      if (k.rfind("final.", 0) != 0) continue;
      const Tensor* t = fin.find(k.substr(6));
      if (!t) af.fail_with("no adapter tensor " + k.substr(6));
      else af.add(compare(*t, v, tol_, k));
    }
    emit_accum("training_final_weights", af);
  }

  std::string dir_;
  ParityTolerance tol_;
  Device device_ = Device::cpu;
  ordered_json meta_;
  std::shared_ptr<nn::Module> model_;
  bool ready_ = false, loaded_ = false;
};

}  // namespace

ParityReport run_parity_case(const std::string& case_dir, const std::function<void(const ParityCheck&)>& on_check,
                             const ParityTolerance& tol, const std::string& model_dir, Device device) {
  const fs::path meta_path = fs::path(case_dir) / "case.json";
  if (fs::is_regular_file(meta_path)) {
    ordered_json meta;
    try {
      meta = ordered_json::parse(read_text(meta_path));
    } catch (const std::exception&) {
      meta = ordered_json();  // CaseRunner reports the parse error
    }
    if (meta.is_object() && meta.value("host", std::string()) == "hf")
      return run_hf_case(case_dir, meta, model_dir, on_check, tol);
    if (meta.is_object() && meta.value("host", std::string()) == "tokenizer")
      return run_tokenizer_parity(case_dir, meta, on_check);
  }
  CaseRunner r(case_dir, on_check, tol, device);
  return r.run();
}

}  // namespace peft::tools
