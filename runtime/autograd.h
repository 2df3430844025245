// Reverse-mode autograd. Each op that needs a gradient attaches a Node to its
// output; Node::backward maps the output gradient to one gradient per input
// using ordinary ops, so it runs on every device.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace peft {

bool is_grad_enabled();

// Disables graph recording in its scope (torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Enables graph recording in its scope, also inside a NoGradGuard or a backward pass
// (torch.enable_grad()): gradient checkpointing recomputes a forward with it.
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

namespace autograd {

// Where one input's gradient goes: into another node, or into a leaf's .grad.
struct Edge {
  std::shared_ptr<Node> node;
  std::shared_ptr<TensorImpl> leaf;
  bool needed() const { return node || leaf; }
};

using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

struct Node {
  const char* name = "";  // the op's name, for errors and debugging
  std::vector<Edge> next;  // one per differentiable input
  Shape out_shape;         // shape of the gradient this node expects
  DType out_dtype = DType::float32;
  BackwardFn backward;
};

// Whether any of `inputs` needs a gradient (and grad mode is on).
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// Attaches a node to `out`. `fn` must return one tensor per input (an undefined
// Tensor for "no gradient").
void record(const char* name, const std::vector<Tensor>& inputs, Tensor& out, BackwardFn fn);

// Runs backward from `root` with `grad` (defaults to ones for a scalar).
void run_backward(const Tensor& root, const Tensor& grad);

// Gradient checkpointing (torch.utils.checkpoint, use_reentrant=True): y = fn(x) is computed
// without recording, so none of fn's intermediate tensors stay alive until backward; backward
// runs fn(x) again with recording (the default generator's state restored, so dropout draws
// the same masks) and backpropagates through that. `params`: the leaf tensors fn uses that
// need a gradient (trainable parameters); they receive it from the recomputation. fn may read
// other tensors only as constants (no gradient). Without any gradient to compute it is fn(x).
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x, const std::vector<Tensor>& params);

}  // namespace autograd
}  // namespace peft
