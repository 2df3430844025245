#include "nn/module.h"

#include <algorithm>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace peft::nn {

namespace {

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += sep;
    s += v[i];
  }
  return s;
}

template <class T>
std::vector<std::string> names_of(const std::vector<std::pair<std::string, T>>& v) {
  std::vector<std::string> out;
  out.reserve(v.size());
  for (const auto& kv : v) out.push_back(kv.first);
  return out;
}

template <class T>
auto find_name(std::vector<std::pair<std::string, T>>& v, const std::string& name) {
  return std::find_if(v.begin(), v.end(), [&](const auto& kv) { return kv.first == name; });
}
template <class T>
auto find_name(const std::vector<std::pair<std::string, T>>& v, const std::string& name) {
  return std::find_if(v.begin(), v.end(), [&](const auto& kv) { return kv.first == name; });
}

std::string list_or_none(const std::vector<std::string>& v) {
  return v.empty() ? std::string("none") : join(v, ", ");
}

// PyTorch's _addindent: indents every line but the first.
std::string addindent(const std::string& s, int n) {
  if (s.find('\n') == std::string::npos) return s;
  std::string pad(size_t(n), ' ');
  std::string out;
  out.reserve(s.size() + 16);
  for (char c : s) {
    out += c;
    if (c == '\n') out += pad;
  }
  return out;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == '\n') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}


}  // namespace

// ---------------------------------------------------------------------------
// forward / clone

Tensor Module::forward(const Tensor&) {
  fail("Module '", type_name_, "' has no single-tensor forward (forward is not implemented)");
}

void Module::copy_state_to(Module& dst) const {
  NoGradGuard ng;
  dst.training_ = training_;
  dst.params_.clear();
  dst.buffers_.clear();
  dst.children_.clear();
  for (const auto& [name, t] : params_) {
    Tensor c = t.detach().clone();
    if (t.requires_grad()) c.requires_grad_(true);
    dst.params_.emplace_back(name, c);
  }
  for (const auto& [name, t] : buffers_) dst.buffers_.emplace_back(name, t.detach().clone());
  for (const auto& [name, m] : children_) dst.children_.emplace_back(name, m->clone());
}

std::shared_ptr<Module> Module::clone() const {
  auto m = std::make_shared<Module>(type_name_);
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
// registration

void Module::check_new_name(const std::string& name, const char* what) const {
  if (name.empty())
    fail("[", type_name_, "] cannot register a ", what, " with an empty name");
  if (name.find('.') != std::string::npos)
    fail("[", type_name_, "] ", what, " name '", name, "' must not contain '.'");
  if (find_name(params_, name) != params_.end())
    fail("[", type_name_, "] cannot register ", what, " '", name,
         "': a parameter of that name already exists");
  if (find_name(buffers_, name) != buffers_.end())
    fail("[", type_name_, "] cannot register ", what, " '", name,
         "': a buffer of that name already exists");
  if (find_name(children_, name) != children_.end())
    fail("[", type_name_, "] cannot register ", what, " '", name,
         "': a child module of that name already exists");
}

Tensor Module::register_parameter(const std::string& name, const Tensor& t, bool requires_grad) {
  check_new_name(name, "parameter");
  if (!t.defined()) fail("[", type_name_, "] register_parameter('", name, "'): tensor is undefined");
  Tensor p = t.is_leaf() ? t : t.detach();
  if (is_floating(p.dtype())) {
    p.impl().requires_grad = requires_grad;
  } else if (requires_grad) {
    fail("[", type_name_, "] register_parameter('", name, "'): only floating-point parameters can ",
         "require gradients, got ", p.desc(), " (pass requires_grad=false)");
  }
  params_.emplace_back(name, p);
  return p;
}

Tensor Module::register_buffer(const std::string& name, const Tensor& t) {
  check_new_name(name, "buffer");
  if (!t.defined()) fail("[", type_name_, "] register_buffer('", name, "'): tensor is undefined");
  buffers_.emplace_back(name, t);
  return t;
}

void Module::register_child(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name, "child module");
  if (!m) fail("[", type_name_, "] register_module('", name, "'): module is null");
  if (m.get() == this) fail("[", type_name_, "] register_module('", name, "'): a module cannot be its own child");
  children_.emplace_back(name, std::move(m));
}

bool Module::remove_parameter(const std::string& name) {
  auto it = find_name(params_, name);
  if (it == params_.end()) return false;
  params_.erase(it);
  return true;
}

bool Module::remove_buffer(const std::string& name) {
  auto it = find_name(buffers_, name);
  if (it == buffers_.end()) return false;
  buffers_.erase(it);
  return true;
}

bool Module::remove_child(const std::string& name) {
  auto it = find_name(children_, name);
  if (it == children_.end()) return false;
  children_.erase(it);
  return true;
}

// ---------------------------------------------------------------------------
// direct lookups

Tensor& Module::param(const std::string& name) {
  auto it = find_name(params_, name);
  if (it == params_.end())
    fail_key("[", type_name_, "] has no parameter '", name, "' (parameters: ", list_or_none(names_of(params_)), ")");
  return it->second;
}

const Tensor& Module::param(const std::string& name) const {
  auto it = find_name(params_, name);
  if (it == params_.end())
    fail_key("[", type_name_, "] has no parameter '", name, "' (parameters: ", list_or_none(names_of(params_)), ")");
  return it->second;
}

bool Module::has_param(const std::string& name) const { return find_name(params_, name) != params_.end(); }

Tensor& Module::buffer(const std::string& name) {
  auto it = find_name(buffers_, name);
  if (it == buffers_.end())
    fail_key("[", type_name_, "] has no buffer '", name, "' (buffers: ", list_or_none(names_of(buffers_)), ")");
  return it->second;
}

bool Module::has_buffer(const std::string& name) const { return find_name(buffers_, name) != buffers_.end(); }

std::shared_ptr<Module> Module::child_ptr(const std::string& name) const {
  auto it = find_name(children_, name);
  if (it == children_.end())
    fail_key("[", type_name_, "] has no child module '", name, "' (children: ", list_or_none(names_of(children_)), ")");
  return it->second;
}

Module& Module::child(const std::string& name) const { return *child_ptr(name); }

bool Module::has_child(const std::string& name) const { return find_name(children_, name) != children_.end(); }

// ---------------------------------------------------------------------------
// traversal

namespace {
void collect_modules(const std::string& prefix, const Module& m, const std::shared_ptr<Module>& self_ptr,
                     std::unordered_set<const Module*>& seen,
                     std::vector<std::pair<std::string, std::shared_ptr<Module>>>& out) {
  if (!seen.insert(&m).second) return;
  out.emplace_back(prefix, self_ptr);
  for (const auto& [name, c] : m.children())
    collect_modules(prefix.empty() ? name : prefix + "." + name, *c, c, seen, out);
}
}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  std::unordered_set<const Module*> seen;
  // The root may live outside a shared_ptr (stack object): then its entry holds a null pointer.
  auto self = std::const_pointer_cast<Module>(weak_from_this().lock());
  collect_modules("", *this, self, seen, out);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  std::unordered_set<const Module*> seen;
  for (const auto& kv : children_)
    if (seen.insert(kv.second.get()).second) out.push_back(kv);
  return out;
}

namespace {
// PyTorch's _named_members: each module once, each tensor once (by identity).
template <class Get>
std::vector<std::pair<std::string, Tensor>> named_members(const Module& root, bool recurse, Get get) {
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen;
  auto visit = [&](const std::string& prefix, const Module& m) {
    for (const auto& [name, t] : get(m)) {
      if (!seen.insert(t.impl_ptr().get()).second) continue;
      out.emplace_back(prefix.empty() ? name : prefix + "." + name, t);
    }
  };
  if (!recurse) {
    visit("", root);
    return out;
  }
  std::unordered_set<const Module*> seen_mod;
  std::function<void(const std::string&, const Module&)> rec = [&](const std::string& prefix,
                                                                    const Module& m) {
    if (!seen_mod.insert(&m).second) return;
    visit(prefix, m);
    for (const auto& [name, c] : m.children()) rec(prefix.empty() ? name : prefix + "." + name, *c);
  };
  rec("", root);
  return out;
}
}  // namespace

std::vector<std::pair<std::string, Tensor>> Module::named_parameters(bool recurse) const {
  return named_members(*this, recurse, [](const Module& m) -> const auto& { return m.own_parameters(); });
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers(bool recurse) const {
  return named_members(*this, recurse, [](const Module& m) -> const auto& { return m.own_buffers(); });
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& kv : named_parameters(recurse)) out.push_back(kv.second);
  return out;
}

std::shared_ptr<Module> Module::get_submodule(const std::string& dotted) const {
  auto self = std::const_pointer_cast<Module>(weak_from_this().lock());
  if (dotted.empty()) {
    if (!self)
      fail("[", type_name_, "] get_submodule(\"\"): the root module is not owned by a shared_ptr ",
           "(create it with std::make_shared)");
    return self;
  }
  const Module* cur = this;
  std::shared_ptr<Module> cur_ptr = self;
  std::string path;
  size_t start = 0;
  while (true) {
    size_t dot = dotted.find('.', start);
    std::string part = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) fail("get_submodule('", dotted, "'): empty name component in the path");
    auto it = find_name(cur->children_, part);
    if (it == cur->children_.end())
      fail_key("get_submodule('", dotted, "'): module ", path.empty() ? std::string("<root>") : "'" + path + "'",
           " (", cur->type_name_, ") has no child '", part, "' (children: ",
           list_or_none(names_of(cur->children_)), ")");
    cur_ptr = it->second;
    cur = cur_ptr.get();
    path = path.empty() ? part : path + "." + part;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur_ptr;
}

std::shared_ptr<Module> Module::replace_module(const std::string& dotted, std::shared_ptr<Module> m) {
  if (dotted.empty()) fail("[", type_name_, "] replace_module: cannot replace the root module (empty path)");
  if (!m) fail("[", type_name_, "] replace_module('", dotted, "'): new module is null");
  size_t dot = dotted.rfind('.');
  std::string leaf = dot == std::string::npos ? dotted : dotted.substr(dot + 1);
  Module* parent = this;
  std::shared_ptr<Module> parent_ptr;
  if (dot != std::string::npos) {
    parent_ptr = get_submodule(dotted.substr(0, dot));
    parent = parent_ptr.get();
  }
  auto it = find_name(parent->children_, leaf);
  if (it == parent->children_.end())
    fail_key("replace_module('", dotted, "'): ", parent->type_name_, " has no child '", leaf,
         "' to replace (children: ", list_or_none(names_of(parent->children_)), ")");
  std::shared_ptr<Module> old = it->second;
  it->second = std::move(m);
  return old;
}

void Module::apply(const std::function<void(Module&)>& fn) {
  for (auto& kv : children_) kv.second->apply(fn);
  fn(*this);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& kv : children_) kv.second->train(on);
}

// ---------------------------------------------------------------------------
// conversions

namespace {
std::vector<std::pair<std::string, Tensor>> all_tensors(const Module& m) {
  auto v = m.named_parameters();
  auto b = m.named_buffers();
  v.insert(v.end(), b.begin(), b.end());
  return v;
}
}  // namespace

void Module::to(Device dev) {
  NoGradGuard ng;
  // Convert everything first, then swap, so a failure leaves the module untouched.
  auto ts = all_tensors(*this);
  std::vector<Tensor> converted(ts.size()), grads(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = ts[i].second;
    if (t.device() == dev) continue;
    try {
      if (t.is_meta())
        fail("cannot copy out of a meta tensor (it has no data); load values with ",
             "load_state_dict(..., assign=true) or materialize it first");
      converted[i] = t.detach().to(dev);
      Tensor g = t.grad();
      if (g.defined()) grads[i] = g.detach().to(dev);
    } catch (const Error& e) {
      fail("[", type_name_, "] to(", device_name(dev), "): '", ts[i].first, "' ", t.desc(), ": ", e.what());
    }
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!converted[i].defined()) continue;
    ts[i].second.set_data(converted[i]);
    ts[i].second.impl().grad = grads[i].defined() ? grads[i].impl_ptr() : nullptr;
  }
}

void Module::to(DType dt) {
  if (!is_floating(dt)) fail("[", type_name_, "] to(", dtype_name(dt), "): only floating dtypes are allowed");
  NoGradGuard ng;
  auto ts = all_tensors(*this);
  std::vector<Tensor> converted(ts.size()), grads(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = ts[i].second;
    if (!is_floating(t.dtype()) || t.dtype() == dt) continue;
    converted[i] = t.detach().to(dt);  // on meta this only changes the dtype
    Tensor g = t.grad();
    if (g.defined()) grads[i] = g.detach().to(dt);
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!converted[i].defined()) continue;
    ts[i].second.set_data(converted[i]);
    ts[i].second.impl().grad = grads[i].defined() ? grads[i].impl_ptr() : nullptr;
  }
}

void Module::requires_grad_(bool on) {
  // Checked first, so a refused call changes nothing; names are built only for the message
  // (this runs for every adapter of every layer on each set_adapter).
  std::function<bool(const Module&)> all_floating = [&](const Module& m) {
    for (const auto& [name, p] : m.params_)
      if (p.defined() && !is_floating(p.dtype())) return false;
    for (const auto& [name, c] : m.children_)
      if (!all_floating(*c)) return false;
    return true;
  };
  if (on && !all_floating(*this))
    for (auto& [name, p] : named_parameters())
      if (!is_floating(p.dtype()))
        fail("[", type_name_, "] requires_grad_(true): parameter '", name, "' is ", p.desc(), ", not floating");
  std::function<void(Module&)> set = [&](Module& m) {
    for (auto& [name, p] : m.params_)
      if (p.defined() && is_floating(p.dtype())) p.impl().requires_grad = on;
    for (auto& [name, c] : m.children_) set(*c);
  };
  set(*this);
}

void Module::zero_grad() {
  for (auto& kv : named_parameters()) kv.second.zero_grad();
}

// ---------------------------------------------------------------------------
// state dict

namespace {
// PyTorch's state_dict recursion: no de-duplication of modules (a shared module
// appears under every path), own params then own buffers, then children.
void collect_state(const Module& m, const std::string& prefix,
                   std::vector<std::pair<std::string, Tensor>>& out) {
  for (const auto& [name, t] : m.own_parameters()) out.emplace_back(prefix + name, t);
  for (const auto& [name, t] : m.own_buffers()) out.emplace_back(prefix + name, t);
  for (const auto& [name, c] : m.children()) collect_state(*c, prefix + name + ".", out);
}
}  // namespace

StateDict Module::state_dict() const {
  std::vector<std::pair<std::string, Tensor>> items;
  collect_state(*this, "", items);
  StateDict sd;
  for (auto& [k, t] : items) sd.set(k, t.detach());
  return sd;
}

LoadResult Module::load_state_dict(const StateDict& sd, bool strict, bool assign) {
  std::vector<std::pair<std::string, Tensor>> targets;
  collect_state(*this, "", targets);

  LoadResult res;
  std::unordered_set<std::string> expected;
  std::vector<std::string> size_errors;
  for (const auto& [key, t] : targets) {
    expected.insert(key);
    const Tensor* src = sd.find(key);
    if (!src) {
      res.missing_keys.push_back(key);
      continue;
    }
    if (!src->defined()) fail("load_state_dict: entry '", key, "' is an undefined tensor");
    if (src->shape() != t.shape())
      size_errors.push_back("size mismatch for " + key + ": copying a param with shape " +
                            shape_str(src->shape()) + " from checkpoint, the shape in current model is " +
                            shape_str(t.shape()) + ".");
  }
  for (const auto& [key, t] : sd)
    if (!expected.count(key)) res.unexpected_keys.push_back(key);

  std::vector<std::string> errors;
  if (strict) {
    if (!res.unexpected_keys.empty()) {
      std::vector<std::string> q;
      for (auto& k : res.unexpected_keys) q.push_back("\"" + k + "\"");
      errors.push_back("Unexpected key(s) in state_dict: " + join(q, ", ") + ". ");
    }
    if (!res.missing_keys.empty()) {
      std::vector<std::string> q;
      for (auto& k : res.missing_keys) q.push_back("\"" + k + "\"");
      errors.push_back("Missing key(s) in state_dict: " + join(q, ", ") + ". ");
    }
  }
  errors.insert(errors.end(), size_errors.begin(), size_errors.end());
  if (!errors.empty()) {
    // a wrong or missing name is a KeyError; only size mismatches: a ShapeError
    if (strict && (!res.unexpected_keys.empty() || !res.missing_keys.empty()))
      fail_key("Error(s) in loading state_dict for ", type_name_, ":\n\t", join(errors, "\n\t"));
    fail_shape("Error(s) in loading state_dict for ", type_name_, ":\n\t", join(errors, "\n\t"));
  }

  // Validated: nothing above mutated the module.
  NoGradGuard ng;
  for (const auto& [key, t] : targets) {
    const Tensor* src = sd.find(key);
    if (!src) continue;
    TensorImpl& im = t.impl();
    if (src->impl_ptr() == t.impl_ptr()) continue;  // loading a module's own state dict
    if (assign) {
      // Take the tensor over (zero-copy; dtype/device follow the source), keep requires_grad.
      Tensor(t).set_data(*src);
      im.grad.reset();
      im.grad_fn.reset();
      continue;
    }
    try {
      if (im.device == Device::meta && !src->is_meta()) {
        // PyTorch warns and leaves a meta parameter untouched; we materialise it
        // on the source's device and copy, so the load does what it says.
        Tensor(t.impl_ptr()).materialize(src->device());
      }
      Tensor dst(t.impl_ptr());
      if (!dst.is_meta() && src->is_meta())
        fail("the checkpoint tensor is on meta (no data); load with assign=true or pass real tensors");
      dst.copy_(*src);
    } catch (const Error& e) {
      fail("load_state_dict: while copying '", key, "' (", src->desc(), " into ", t.desc(), "): ", e.what());
    }
  }
  return res;
}

// ---------------------------------------------------------------------------
// repr (nn.Module.__repr__)

std::string Module::repr() const {
  std::vector<std::string> extra_lines;
  std::string er = extra_repr();
  if (!er.empty()) extra_lines = split_lines(er);
  std::vector<std::string> child_lines;
  for (const auto& [name, c] : children_) child_lines.push_back("(" + name + "): " + addindent(c->repr(), 2));
  std::string s = type_name_ + "(";
  std::vector<std::string> lines = extra_lines;
  lines.insert(lines.end(), child_lines.begin(), child_lines.end());
  if (!lines.empty()) {
    if (extra_lines.size() == 1 && child_lines.empty())
      s += extra_lines[0];
    else
      s += "\n  " + join(lines, "\n  ") + "\n";
  }
  return s + ")";
}

std::shared_ptr<void> Module::attachment(const std::string& key) const {
  std::lock_guard<std::mutex> lock(attachments_mu_);
  for (const auto& [k, v] : attachments_)
    if (k == key) return v;
  return nullptr;
}

void Module::set_attachment(const std::string& key, std::shared_ptr<void> value) {
  std::lock_guard<std::mutex> lock(attachments_mu_);
  for (auto it = attachments_.begin(); it != attachments_.end(); ++it)
    if (it->first == key) {
      if (value) it->second = std::move(value);
      else attachments_.erase(it);
      return;
    }
  if (value) attachments_.emplace_back(key, std::move(value));
}

std::shared_ptr<void> Module::attachment_or_insert(const std::string& key,
                                                   const std::function<std::shared_ptr<void>()>& make) {
  std::lock_guard<std::mutex> lock(attachments_mu_);
  for (const auto& [k, v] : attachments_)
    if (k == key) return v;
  attachments_.emplace_back(key, make());
  return attachments_.back().second;
}

}  // namespace peft::nn
