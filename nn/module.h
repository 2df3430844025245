// nn::Module: a named module tree like PyTorch's. Parameters, buffers and
// children are registered by name (no dots) in order; dotted paths address
// anything in the tree. Children are looked up by name in forward so that
// replace_module (used by adapter injection) takes effect immediately.
#pragma once
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "io/state_dict.h"
#include "runtime/tensor.h"

namespace peft::nn {

struct LoadResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  explicit Module(std::string type_name) : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The class name printed by repr ("Linear", "lora.Linear", "DummyModel").
  const std::string& type_name() const { return type_name_; }
  // Text inside the parentheses, as PyTorch's extra_repr().
  virtual std::string extra_repr() const { return ""; }
  // Single-tensor forward; modules without one throw naming themselves.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }
  // Deep copy (fresh tensors with copied values, same requires_grad), used by
  // modules_to_save. Modules that hold extra state override it.
  virtual std::shared_ptr<Module> clone() const;

  // Registration. Names must be non-empty and contain no '.'.
  Tensor register_parameter(const std::string& name, const Tensor& t, bool requires_grad = true);
  Tensor register_buffer(const std::string& name, const Tensor& t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    register_child(name, m);
    return m;
  }
  void register_child(const std::string& name, std::shared_ptr<Module> m);
  // Removes a direct parameter / child (returns false when absent).
  bool remove_parameter(const std::string& name);
  bool remove_buffer(const std::string& name);
  bool remove_child(const std::string& name);

  // Direct lookups (throw peft::Error naming the module and the key). The references point
  // into this module's ordered storage: they stay valid until a parameter / buffer of this
  // module is registered or removed; keep a Tensor (a handle to the same data) beyond that.
  Tensor& param(const std::string& name);
  const Tensor& param(const std::string& name) const;
  bool has_param(const std::string& name) const;
  Tensor& buffer(const std::string& name);
  bool has_buffer(const std::string& name) const;
  Module& child(const std::string& name) const;
  std::shared_ptr<Module> child_ptr(const std::string& name) const;
  bool has_child(const std::string& name) const;

  // Traversal with dotted names, registration order, depth first (PyTorch).
  std::vector<std::pair<std::string, Tensor>> named_parameters(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor>> named_buffers(bool recurse = true) const;
  // Includes the root as "" first (its pointer is null when the root is not
  // owned by a shared_ptr). A module reachable twice is listed once (PyTorch).
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  std::shared_ptr<Module> get_submodule(const std::string& dotted) const;
  // Replaces the module at a dotted path; returns the old one.
  std::shared_ptr<Module> replace_module(const std::string& dotted, std::shared_ptr<Module> m);
  void apply(const std::function<void(Module&)>& fn);

  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves / converts every parameter and buffer in place (handles stay valid).
  void to(Device dev);
  void to(DType dt);  // floating tensors only
  void requires_grad_(bool on);
  void zero_grad();

  // PyTorch order: per module (depth first, no de-duplication) its own
  // parameters then its own buffers. Values are detached handles sharing the
  // parameters' storage (PyTorch's keep_vars=False).
  StateDict state_dict() const;
  // strict: throws listing missing/unexpected keys. A shape mismatch always
  // throws naming the key and both shapes. Everything is validated before
  // anything is written (a failed load leaves the module unchanged).
  // assign=false: values are copied into the existing storage (dtype converted);
  //   a meta parameter is first materialised on the source's device (PyTorch
  //   would warn and skip it).
  // assign=true: the parameter's TensorImpl takes over the source's storage,
  //   dtype and device in place (zero-copy; requires_grad kept, grad dropped),
  //   so handles held elsewhere stay valid.
  LoadResult load_state_dict(const StateDict& sd, bool strict = true, bool assign = false);

  // nn.Module.__repr__ (ModuleList overrides it to fold repeated entries).
  virtual std::string repr() const;

  // State a higher layer keeps on this module and that dies with it (adapters keep PEFT's
  // per-model bookkeeping, model.peft_config, here). One slot per key; safe from several
  // threads. attachment() is nullptr when unset; set_attachment(key, nullptr) clears it.
  std::shared_ptr<void> attachment(const std::string& key) const;
  void set_attachment(const std::string& key, std::shared_ptr<void> value);
  // The slot's value, made by `make` first when unset (atomically).
  std::shared_ptr<void> attachment_or_insert(const std::string& key,
                                             const std::function<std::shared_ptr<void>()>& make);

  // Ordered storage, exposed read-only for traversal helpers.
  const std::vector<std::pair<std::string, Tensor>>& own_parameters() const { return params_; }
  const std::vector<std::pair<std::string, Tensor>>& own_buffers() const { return buffers_; }
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const {
    return children_;
  }

 protected:
  void set_type_name(std::string n) { type_name_ = std::move(n); }
  // Replaces dst's parameters, buffers and children by deep copies of this
  // module's (values cloned, requires_grad kept, children via clone()) and
  // copies the training flag: the helper for clone() overrides.
  void copy_state_to(Module& dst) const;
  bool training_ = true;

 private:
  void check_new_name(const std::string& name, const char* what) const;
  std::string type_name_;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  mutable std::mutex attachments_mu_;
  std::vector<std::pair<std::string, std::shared_ptr<void>>> attachments_;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace peft::nn
