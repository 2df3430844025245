// Parity on Hugging Face transformer hosts (the hf_* cases, tests/data/hf/README.md): load
// the checkpoint folder, inject the adapter from the config as the user wrote it, load the
// PEFT-saved weights and compare every output, gradient, name, repr, merge and greedy
// generation the case records.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/pretrained.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tools/parity_compare.h"

namespace fs = std::filesystem;

namespace peft::tools {

namespace {

using Status = ParityCheck::Status;
using namespace parity_detail;

// Collects warnings into `sink` (or drops them) for its scope.
class QuietWarnings : public ScopedWarningHandler {
 public:
  explicit QuietWarnings(std::vector<std::string>* sink = nullptr)
      : ScopedWarningHandler([sink](const std::string& m) {
          if (sink) sink->push_back(m);
        }) {}
};

std::set<std::string> as_set(const ordered_json& j) {
  std::set<std::string> s;
  if (j.is_array())
    for (const auto& e : j) s.insert(e.get<std::string>());
  else if (j.is_string())
    s.insert("re:" + j.get<std::string>());
  return s;
}

// Gradient tolerances wider than the goldens' 1e-4 relative, where the golden itself is that far
// from the exact value: its float32 gradients differ from the same function evaluated in
// float64 by more than the README tolerance (measured by tools/python/hf_golden_conditioning.py:
// 8.9x on hf_llama_lora_all_linear's layer-0 q_proj, 1.9x on hf_minilm_lora_real), so only a
// bit-for-bit copy of PyTorch's CPU kernels could meet it. A wrong gradient is off by O(1).
double grad_rtol_for(const std::string& case_name) {
  if (case_name == "hf_llama_lora_all_linear") return 2e-3;
  if (case_name == "hf_minilm_lora_real") return 5e-4;
  return 0;  // the README's
}

class HfCaseRunner : CheckEmitter {
 public:
  HfCaseRunner(std::string dir, ordered_json meta, std::string model_dir,
               const std::function<void(const ParityCheck&)>& cb, const ParityTolerance& tol)
      : CheckEmitter(cb), dir_(std::move(dir)), meta_(std::move(meta)), model_dir_(std::move(model_dir)), tol_(tol) {}

  ParityReport run() {
    name_ = meta_.value("name", fs::path(dir_).filename().string());
    if (!resolve_model_dir()) return report_;
    guarded("io", [&] { io_ = io::load_safetensors((fs::path(dir_) / "io.safetensors").string()); });
    if (io_.empty()) return report_;
    guarded("load_model", [&] {
      model_ = load();
      emit("load_model", Status::pass, 0);
    });
    if (!model_) return report_;
    guarded("output_base", [&] { check_base(); });
    guarded("inject", [&] { inject(); });
    if (!injected_) return report_;
    guarded("config_after_inject", [&] { check_config_after_inject(); });
    guarded("repr", [&] { check_repr(); });
    guarded("trainable", [&] { check_trainable(); });
    guarded("load_adapter", [&] { load_weights(); });
    if (!loaded_) return report_;
    guarded("output.default", [&] { check_outputs(); });
    guarded("merge", [&] { check_merge(); });
    guarded("generate", [&] { check_generate(); });
    guarded("peft_dir", [&] { check_peft_dir(); });
    return report_;
  }

 private:

  // The case's own model/ folder, or --model-dir for a case that names a model_source.
  bool resolve_model_dir() {
    if (!model_dir_.empty()) return true;
    const fs::path own = fs::path(dir_) / "model";
    if (fs::exists(own / "config.json")) {
      model_dir_ = own.string();
      return true;
    }
    const std::string src = meta_.value("model_source", std::string("no model/ folder"));
    emit("case", Status::skip, 0,
         "needs the checkpoint from " + src + ": pass --model-dir DIR (scripts/fetch_minilm.sh fetches all-MiniLM-L6-v2)");
    return false;
  }

  std::shared_ptr<nn::PreTrainedModel> load() {
    nn::PretrainedOptions o;
    o.dtype = DType::float32;
    if (meta_.contains("model_class")) o.architecture = meta_["model_class"].get<std::string>();
    auto m = nn::load_pretrained(model_dir_, o);
    m->eval();
    return m;
  }

  nn::ModelInputs inputs() const {
    nn::ModelInputs in;
    for (const auto& k : str_list(meta_.value("inputs", ordered_json::array()))) {
      if (k == "input_ids") in.input_ids = io_.at(k);
      else if (k == "attention_mask") in.attention_mask = io_.at(k);
      else if (k == "token_type_ids") in.token_type_ids = io_.at(k);
      else if (k == "position_ids") in.position_ids = io_.at(k);
      else fail("case.json: input '", k, "' is not a model input this runner knows");
    }
    return in;
  }

  Tensor embedding(const Tensor& hidden) const {
    return nn::l2_normalize(nn::mean_pooling(hidden, io_.at("attention_mask")));
  }

  void compare_one(const std::string& check, const Tensor& got, const std::string& key) {
    Accum a;
    a.add(compare(got, io_.at(key), tol_, key));
    emit_accum(check, a);
  }

  void check_base() {
    NoGradGuard ng;
    Tensor out = model_->forward(inputs());
    compare_one("output_base", out, "output_base");
    if (io_.contains("embedding_base")) compare_one("embedding_base", embedding(out), "embedding_base");
  }

  void inject() {
    const auto& a = meta_.at("adapters").at(0);
    cfg_json_ = a.at("config");
    PeftConfigPtr cfg = config_from_json(cfg_json_);
    QuietWarnings q(&warnings_);
    inject_adapter_in_model(*cfg, *model_, "default");
    injected_ = true;
    emit("inject", Status::pass, 0);
  }

  void check_config_after_inject() {
    const auto& a = meta_.at("adapters").at(0);
    if (!a.contains("config_after_inject")) return emit("config_after_inject", Status::skip, 0, "not recorded");
    const ordered_json& want = a["config_after_inject"];
    const ordered_json got = peft_config(*model_, "default")->to_json();
    std::vector<std::string> bad;
    for (const char* k : {"target_modules", "feedforward_modules"}) {
      if (!want.contains(k)) continue;
      if (!got.contains(k) || as_set(got[k]) != as_set(want[k]))
        bad.push_back(std::string(k) + ": got " + (got.contains(k) ? got[k].dump() : "absent") + ", want " +
                      want[k].dump());
    }
    if (want.contains("fan_in_fan_out") && got.value("fan_in_fan_out", false) != want["fan_in_fan_out"].get<bool>())
      bad.push_back("fan_in_fan_out differs");
    emit_bool("config_after_inject", bad.empty(), join(bad, "; "));
  }

  void check_repr() {
    if (!meta_.contains("repr")) return emit("repr", Status::skip, 0, "not recorded");
    const std::string want = meta_["repr"].get<std::string>(), got = model_->repr();
    if (got == want) return emit("repr", Status::pass, 0);
    std::istringstream ga(got), wa(want);
    std::string lg, lw;
    for (int line = 1;; ++line) {
      const bool eg = !std::getline(ga, lg), ew = !std::getline(wa, lw);
      if (eg && ew) break;
      if (eg || ew || lg != lw)
        return emit("repr", Status::fail, INFINITY,
                    "line " + std::to_string(line) + ": got '" + lg + "', want '" + lw + "'");
    }
  }

  void check_trainable() {
    if (!meta_.contains("trainable")) return emit("trainable", Status::skip, 0, "not recorded");
    auto got = trainable_parameter_names(*model_);
    auto want = str_list(meta_["trainable"]);
    emit_bool("trainable", got == want, list_diff(got, want));
  }

  void load_weights() {
    StateDict sd = io::load_safetensors((fs::path(dir_) / "peft" / "adapter_model.safetensors").string());
    nn::LoadResult r = set_peft_model_state_dict(*model_, sd, "default");
    Accum a;
    if (!r.unexpected_keys.empty()) a.fail_with("unexpected keys [" + join(r.unexpected_keys) + "]");
    std::vector<std::string> missing;
    // adapter parameters only: buffers PEFT does not save (AdaLoRA's ranknum) are missing by design
    for (const auto& k : r.missing_keys)
      if (k.find(".default") != std::string::npos && is_adapter_tensor_key(k))
        missing.push_back(k);
    if (!missing.empty()) a.fail_with("missing adapter keys [" + join(missing) + "]");
    emit_accum("load_adapter", a);
    loaded_ = a.ok;
  }

  void check_outputs() {
    set_adapter(*model_, "default");
    model_->zero_grad();
    Tensor out = model_->forward(inputs());
    compare_one("output.default", out, "default.output");
    if (io_.contains("default.embedding")) {
      NoGradGuard ng;
      compare_one("embedding.default", embedding(out.detach()), "default.embedding");
    }
    if (!io_.contains("default.grad_seed")) return;
    sum(mul(out, io_.at("default.grad_seed"))).backward();
    std::map<std::string, Tensor> params;
    for (auto& [pn, p] : model_->named_parameters()) params[pn] = p;
    ParityTolerance gt = tol_;
    std::string check = "grad.default";
    if (const double r = grad_rtol_for(name_); r > gt.rtol) {
      gt.rtol = r;
      char buf[32];
      std::snprintf(buf, sizeof buf, "[rtol=%g]", r);
      check += buf;
    }
    Accum ag;
    std::set<std::string> recorded;
    const std::string pre = "default.grad.";
    for (const auto& [k, v] : io_) {
      if (k.rfind(pre, 0) != 0) continue;
      const std::string pn = k.substr(pre.size());
      recorded.insert(pn);
      auto it = params.find(pn);
      if (it == params.end()) {
        ag.fail_with("no parameter " + pn);
        continue;
      }
      Tensor g = it->second.grad();
      // PyTorch leaves .grad None where the output does not depend on a parameter; the golden
      // records zeros (the BERT pooler's LoRA when the output is last_hidden_state)
      if (!g.defined()) g = zeros(v.shape(), v.dtype());
      ag.add(compare(g, v, gt, "grad of " + pn));
    }
    for (auto& [pn, p] : params)
      if (p.requires_grad() && !recorded.count(pn)) ag.fail_with("trainable " + pn + " has no recorded gradient");
    emit_accum(check, ag);
    model_->zero_grad();
  }

  void check_merge() {
    if (!io_.contains("merged_output")) return emit("merged_output", Status::skip, 0, "not recorded");
    NoGradGuard ng;
    merge_adapters(*model_);
    Tensor merged = model_->forward(inputs());
    compare_one("merged_output", merged, "merged_output");
    if (io_.contains("merged_embedding")) compare_one("merged_embedding", embedding(merged), "merged_embedding");
    unmerge_adapters(*model_);
    compare_one("unmerge", model_->forward(inputs()), "default.output");
  }

  void check_generate() {
    if (!io_.contains("default.generate")) return;
    nn::GenerateOptions o = nn::read_generation_config(model_dir_);
    const ordered_json g = meta_.value("generate", ordered_json::object());
    o.max_new_tokens = g.value("max_new_tokens", int64_t(8));
    o.do_sample = g.value("do_sample", false);
    const Tensor prompt = io_.at("generate.prompt");
    Tensor got = nn::generate(*model_, prompt, Tensor(), o);
    const Tensor& want = io_.at("default.generate");
    const bool ok = got.shape() == want.shape() && got.to_vector<int64_t>() == want.to_vector<int64_t>();
    std::string detail;
    if (!ok) {
      auto vec = [](const Tensor& t) {
        std::string s;
        for (int64_t v : t.to_vector<int64_t>()) s += (s.empty() ? "" : " ") + std::to_string(v);
        return s;
      };
      detail = "got [" + vec(got) + "], want [" + vec(want) + "]";
    }
    emit_bool("generate.default", ok, detail);
  }

  // A user's path: a fresh model, load_adapter() on the PEFT folder (config + weights).
  void check_peft_dir() {
    auto m = load();
    {
      QuietWarnings q;
      load_adapter(*m, (fs::path(dir_) / "peft").string(), "default");
    }
    m->eval();
    NoGradGuard ng;
    compare_one("peft_dir", m->forward(inputs()), "default.output");
  }

  std::string dir_;
  ordered_json meta_;
  std::string model_dir_;
  ParityTolerance tol_;
  StateDict io_;
  std::shared_ptr<nn::PreTrainedModel> model_;
  ordered_json cfg_json_;
  std::vector<std::string> warnings_;
  bool injected_ = false, loaded_ = false;
};

}  // namespace

ParityReport run_tokenizer_parity(const std::string& case_dir, const ordered_json& meta,
                                  const std::function<void(const ParityCheck&)>& on_check) {
  ParityReport report;
  const std::string name = meta.value("name", fs::path(case_dir).filename().string());
  auto emit = [&](const std::string& check, bool ok, const std::string& detail) {
    ParityCheck c;
    c.case_name = name;
    c.check = check;
    c.status = ok ? Status::pass : Status::fail;
    c.max_abs_err = ok ? 0.0 : INFINITY;
    c.detail = detail;
    if (on_check) on_check(c);
    report.add(std::move(c));
  };
  std::optional<Tokenizer> tok;
  try {
    tok.emplace(Tokenizer::from_file((fs::path(case_dir) / "tokenizer.json").string()));
    emit("load_tokenizer", true, "");
  } catch (const std::exception& e) {
    emit("load_tokenizer", false, std::string("error: ") + e.what());
    return report;
  }
  auto show = [](const std::vector<int64_t>& v) {
    std::string s;
    for (size_t k = 0; k < v.size() && k < 16; ++k) s += (k ? " " : "") + std::to_string(v[k]);
    return s + (v.size() > 16 ? " ..." : "");
  };
  std::vector<std::string> bad_ids, bad_plain, bad_decoded;
  const ordered_json cases = meta.value("cases", ordered_json::array());
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const std::string text = c.at("text").get<std::string>(), at = "text " + std::to_string(i);
    try {
      const auto want = c.at("ids").get<std::vector<int64_t>>();
      const auto got = tok->encode(text, true).ids;
      if (got != want) bad_ids.push_back(at + ": got [" + show(got) + "], want [" + show(want) + "]");
      const auto want_plain = c.at("ids_no_special").get<std::vector<int64_t>>();
      const auto got_plain = tok->encode(text, false).ids;
      if (got_plain != want_plain)
        bad_plain.push_back(at + ": got [" + show(got_plain) + "], want [" + show(want_plain) + "]");
      const std::string d = tok->decode(want, true), want_d = c.at("decoded").get<std::string>();
      if (d != want_d) bad_decoded.push_back(at + ": got '" + d + "', want '" + want_d + "'");
    } catch (const std::exception& e) {
      bad_ids.push_back(at + ": error: " + e.what());
    }
  }
  auto first = [](const std::vector<std::string>& v) { return v.empty() ? std::string() : v[0] + (v.size() > 1 ? " (+" + std::to_string(v.size() - 1) + " more)" : ""); };
  emit("ids[" + std::to_string(cases.size()) + " texts]", bad_ids.empty(), first(bad_ids));
  emit("ids_no_special", bad_plain.empty(), first(bad_plain));
  emit("decoded", bad_decoded.empty(), first(bad_decoded));
  return report;
}

ParityReport run_hf_case(const std::string& case_dir, const ordered_json& meta, const std::string& model_dir,
                         const std::function<void(const ParityCheck&)>& on_check, const ParityTolerance& tol) {
  HfCaseRunner r(case_dir, meta, model_dir, on_check, tol);
  return r.run();
}

}  // namespace peft::tools
