#include "runtime/autograd.h"

#include "runtime/generator.h"

#include <unordered_map>

#include "runtime/backend.h"
#include "runtime/ops.h"

namespace peft {

static thread_local bool g_grad_enabled = true;

bool is_grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

EnableGradGuard::EnableGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { g_grad_enabled = prev_; }

namespace autograd {

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

static Edge edge_of(const Tensor& t) {
  Edge e;
  if (!t.defined() || !t.requires_grad()) return e;
  if (t.grad_fn())
    e.node = t.grad_fn();
  else
    e.leaf = t.impl_ptr();
  return e;
}

void record(const char* name, const std::vector<Tensor>& inputs, Tensor& out, BackwardFn fn) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->next.reserve(inputs.size());
  for (const Tensor& t : inputs) node->next.push_back(edge_of(t));
  node->out_shape = out.shape();
  node->out_dtype = out.dtype();
  node->backward = std::move(fn);
  out.impl().grad_fn = std::move(node);
  out.impl().requires_grad = true;
}

static void accumulate(Tensor& slot, const Tensor& g) {
  if (!slot.defined())
    slot = g;
  else
    slot = add(slot, g);
}

static void accumulate_leaf(TensorImpl& leaf, Tensor g) {
  if (g.dtype() != leaf.dtype) g = g.to(leaf.dtype);
  if (g.shape() != leaf.shape)
    fail("[backward] gradient ", g.desc(), " does not match leaf tensor shape ",
         shape_str(leaf.shape));
  if (!leaf.grad) {
    // The gradient must not alias anything else (a saved tensor, another leaf's
    // gradient, the incoming gradient): optimizers and clipping modify .grad in place.
    // A gradient this engine alone holds, owning all of its storage, is taken as is.
    const bool exclusive = g.impl_ptr().use_count() == 1 && g.impl().storage &&
                           g.impl().storage.use_count() == 1 && g.is_contiguous() &&
                           g.offset() == 0 && g.impl().storage->nbytes == g.nbytes();
    leaf.grad = exclusive ? g.impl_ptr() : g.clone().impl_ptr();
  } else {
    Tensor cur(leaf.grad);
    leaf.grad = add(cur, g).impl_ptr();
  }
}

void run_backward(const Tensor& root, const Tensor& grad_in) {
  if (!root.requires_grad())
    fail("backward: tensor ", root.desc(),
         " does not require grad and has no grad_fn (did you call it under no_grad, or on a "
         "frozen model?)");
  Tensor grad = grad_in;
  if (!grad.defined()) {
    if (root.numel() != 1)
      fail("backward: grad can be implicitly created only for scalar outputs, got ", root.desc());
    grad = ones(root.shape(), root.dtype(), root.device());
  } else if (grad.shape() != root.shape()) {
    fail("backward: gradient ", grad.desc(), " does not match output ", root.desc());
  }
  NoGradGuard ng;
  if (!root.grad_fn()) {
    accumulate_leaf(root.impl(), grad);
    return;
  }
  // Count, for every node reachable from the root, how many edges point at it.
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack{root.grad_fn().get()};
  deps[root.grad_fn().get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next) {
      if (!e.node) continue;
      auto it = deps.find(e.node.get());
      if (it == deps.end()) {
        deps[e.node.get()] = 1;
        stack.push_back(e.node.get());
      } else {
        ++it->second;
      }
    }
  }
  std::unordered_map<Node*, Tensor> pending;
  pending[root.grad_fn().get()] = grad;
  std::vector<std::shared_ptr<Node>> ready{root.grad_fn()};
  while (!ready.empty()) {
    std::shared_ptr<Node> n = ready.back();
    ready.pop_back();
    Tensor g;
    if (auto it = pending.find(n.get()); it != pending.end()) {
      g = std::move(it->second);
      pending.erase(it);
    }
    std::vector<Tensor> grads;
    if (g.defined()) {
      grads = n->backward(g);
      if (grads.size() != n->next.size())
        fail("[backward] internal: node ", n->name, " returned ", grads.size(),
             " gradients for ", n->next.size(), " inputs");
    } else {
      grads.resize(n->next.size());  // nothing flows through this node
    }
    for (size_t i = 0; i < grads.size(); ++i) {
      const Edge& e = n->next[i];
      if (e.leaf) {
        if (grads[i].defined()) accumulate_leaf(*e.leaf, std::move(grads[i]));
      } else if (e.node) {
        Node* child = e.node.get();
        if (grads[i].defined()) accumulate(pending[child], grads[i]);
        if (--deps[child] == 0) ready.push_back(e.node);
      }
    }
  }
}


Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x, const std::vector<Tensor>& params) {
  std::vector<Tensor> inputs{x};
  inputs.insert(inputs.end(), params.begin(), params.end());
  if (!needs_grad(inputs)) return fn(x);
  for (const Tensor& p : params)
    if (p.grad_fn())
      fail("[checkpoint] params must be leaf tensors (trainable parameters); got one computed by ", p.grad_fn()->name);
  const Generator::State rng = default_generator().get_state();
  Tensor out;
  {
    NoGradGuard ng;
    out = fn(x);
  }
  const bool x_needs_grad = x.requires_grad();
  const Tensor saved_x = x.detach();
  record("checkpoint", inputs, out, [fn, saved_x, x_needs_grad, rng, n = params.size()](const Tensor& g) {
    // recompute with the forward's random stream, then give the caller's stream back
    const Generator::State now = default_generator().get_state();
    default_generator().set_state(rng);
    Tensor xd = saved_x.detach();
    if (x_needs_grad) xd.requires_grad_(true);
    Tensor y;
    {
      EnableGradGuard eg;
      y = fn(xd);
    }
    default_generator().set_state(now);
    std::vector<Tensor> grads(1 + n);
    if (y.requires_grad()) {
      run_backward(y, g);  // the parameters' gradients go straight into their .grad
      if (x_needs_grad) grads[0] = xd.grad();
    }
    return grads;  // undefined for the parameters: they have theirs already
  });
  return out;
}

}  // namespace autograd
}  // namespace peft
