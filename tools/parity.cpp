// Parity checks against the PEFT 0.21 goldens. See tools/parity.h.
#include "tools/parity.h"
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

namespace parity_detail {

ParityReport CaseRunner::run() {
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
  // AdaLoRA's replay drives its rank allocator; other training cases are plain optimizer runs
  if (meta_.contains("steps") && std::dynamic_pointer_cast<AdaLoraConfig>(config_from_json(meta_["adapters"][0]["config"]))) {
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

bool CaseRunner::supported(std::string& why) {
  if (!meta_.contains("adapters")) return why = "case.json has no adapters", false;
  for (const auto& a : meta_["adapters"]) {
    std::string t = a["config"].value("peft_type", "");
    if (!find_method(t)) return why = "peft_type " + t + " is not implemented", false;
  }
  return true;
}

std::shared_ptr<nn::Module> CaseRunner::host() {
  nlohmann::json spec = nlohmann::json::parse(meta_["arch_spec"].dump());
  auto m = build_host_model(meta_["arch"].get<std::string>(), spec);
  StateDict base = io::load_safetensors((fs::path(dir_) / "base.safetensors").string());
  m->load_state_dict(base, /*strict=*/true);
  return m;
}

std::vector<std::string> CaseRunner::adapter_names() const {
  std::vector<std::string> v;
  for (const auto& a : meta_["adapters"]) v.push_back(a["name"].get<std::string>());
  return v;
}

std::shared_ptr<nn::Module> CaseRunner::injected(bool low_cpu) {
  auto m = host();
  for (const auto& a : meta_["adapters"]) {
    PeftConfigPtr cfg = config_from_json(a["config"]);
    inject_adapter_in_model(*cfg, *m, a["name"].get<std::string>(), low_cpu);
  }
  return m;
}

void CaseRunner::setup() {
  std::optional<ScopedWarningHandler> old;
  old.emplace();
  model_ = injected(false);
  old.reset();
  ready_ = true;
}

// Loads adapter_<name>.safetensors for every adapter.
void CaseRunner::load_adapters(nn::Module& m, bool low_cpu, bool report) {
  Accum a;
  for (const auto& n : adapter_names()) {
    StateDict sd = io::load_safetensors((fs::path(dir_) / ("adapter_" + n + ".safetensors")).string());
    nn::LoadResult r = set_peft_model_state_dict(m, sd, n, low_cpu);
    if (!r.unexpected_keys.empty()) a.fail_with(n + ": unexpected keys [" + join(r.unexpected_keys) + "]");
    for (const auto& k : r.missing_keys)
      if (is_adapter_tensor_key(k) &&
          (k.find("." + n + ".") != std::string::npos ||
           (k.size() > n.size() + 1 && k.compare(k.size() - n.size() - 1, n.size() + 1, "." + n) == 0)))
        a.fail_with(n + ": missing adapter key " + k);
  }
  if (report) emit_accum("load_adapter", a);
  loaded_ = a.ok;
}

Tensor CaseRunner::input(const StateDict& io) const {
  if (io.contains("input")) return io.at("input");
  return io.at("x");
}

}  // namespace parity_detail



ParityReport run_parity_case(const std::string& case_dir, const std::function<void(const ParityCheck&)>& on_check,
                             const ParityTolerance& tol, const std::string& model_dir, Device device) {
  const fs::path meta_path = fs::path(case_dir) / "case.json";
  if (fs::is_regular_file(meta_path)) {
    ordered_json meta;
    try {
      meta = ordered_json::parse(parity_detail::read_text(meta_path));
    } catch (const std::exception&) {
      meta = ordered_json();  // CaseRunner reports the parse error
    }
    if (meta.is_object() && meta.value("host", std::string()) == "hf")
      return run_hf_case(case_dir, meta, model_dir, on_check, tol);
    if (meta.is_object() && meta.value("host", std::string()) == "tokenizer")
      return run_tokenizer_parity(case_dir, meta, on_check);
  }
  parity_detail::CaseRunner r(case_dir, on_check, tol, device);
  return r.run();
}

}  // namespace peft::tools
