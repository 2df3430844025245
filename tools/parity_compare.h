// Internal: the comparison helpers shared by the parity runners (parity.cpp for the
// hand-built hosts, parity_hf.cpp for Hugging Face transformer hosts).
#pragma once
#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tensor.h"
#include "tools/parity.h"

namespace peft::tools::parity_detail {

using ordered_json = nlohmann::ordered_json;

std::string read_text(const std::filesystem::path& p);
std::string join(const std::vector<std::string>& v, const char* sep = ", ");
// Describes the first difference between two string lists.
std::string list_diff(const std::vector<std::string>& got, const std::vector<std::string>& want);
std::vector<std::string> str_list(const ordered_json& j);

struct Compare {
  double err = 0;
  bool ok = true;
  std::string detail;
};

// max|got - want| against atol + rtol·max|want|; shape, meta and undefined are failures.
Compare compare(const Tensor& got, const Tensor& want, const ParityTolerance& tol, const std::string& what);

// Accumulates several tensor comparisons into one check.
struct Accum {
  double err = 0;
  bool ok = true;
  std::vector<std::string> bad;
  void add(const Compare& c);
  void fail_with(const std::string& d);
};

// Records checks of one case: each goes to the report and, as it finishes, to the callback.
class CheckEmitter {
 protected:
  using Status = ParityCheck::Status;
  explicit CheckEmitter(std::function<void(const ParityCheck&)> cb) : cb_(std::move(cb)) {}
  void emit(const std::string& check, Status st, double err, const std::string& detail = "") {
    ParityCheck c;
    c.case_name = name_;
    c.check = check;
    c.status = st;
    c.max_abs_err = err;
    c.detail = detail;
    if (cb_) cb_(c);
    report_.add(std::move(c));
  }
  void emit_accum(const std::string& check, const Accum& a) {
    emit(check, a.ok ? Status::pass : Status::fail, a.err, join(a.bad, "; "));
  }
  void emit_bool(const std::string& check, bool ok, const std::string& detail) {
    emit(check, ok ? Status::pass : Status::fail, ok ? 0.0 : INFINITY, ok ? "" : detail);
  }
  template <class F>
  void guarded(const std::string& what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      emit(what, Status::fail, INFINITY, std::string("error: ") + e.what());
    }
  }

  std::string name_;  // the case's name in every check
  std::function<void(const ParityCheck&)> cb_;
  ParityReport report_;
};

}  // namespace peft::tools::parity_detail

namespace peft::tools {
// The hf_* cases (parity_hf.cpp); model_dir overrides the case's model/ folder.
// The tok_* cases: ids, ids_no_special and decoded text of each of `cases` exactly equal.
ParityReport run_tokenizer_parity(const std::string& case_dir, const nlohmann::ordered_json& meta,
                                  const std::function<void(const ParityCheck&)>& on_check);
ParityReport run_hf_case(const std::string& case_dir, const nlohmann::ordered_json& meta, const std::string& model_dir,
                         const std::function<void(const ParityCheck&)>& on_check, const ParityTolerance& tol);
}  // namespace peft::tools
