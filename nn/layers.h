// Layers with PyTorch's parameter names, shapes, default init and repr.
#pragma once
#include <optional>

#include "nn/module.h"
#include "runtime/generator.h"

namespace peft::nn {

// Python's repr() of a float ("0.1", "0.0", "1e-05"), for extra_repr texts.
std::string py_float_repr(double v);
// torch.typename of a tensor: "torch.FloatTensor", "torch.cuda.FloatTensor", ...
std::string torch_typename(const Tensor& t);

// y = x·Wᵀ + b; weight [out, in] kaiming-uniform(a=√5) = U(±1/√in), bias U(±1/√in).
class Linear : public Module {
 public:
  // gen == nullptr uses default_generator(); device meta allocates nothing.
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator* gen = nullptr,
         DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  std::shared_ptr<Module> clone() const override;
  Tensor& weight() { return param("weight"); }
  const Tensor& weight() const { return param("weight"); }
  bool has_bias() const { return has_param("bias"); }
  Tensor bias() const { return has_bias() ? param("bias") : Tensor(); }
  int64_t in_features, out_features;
};

// weight [num, dim] ~ N(0, 1); the padding row is zeroed and gets no gradient.
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim,
            std::optional<int64_t> padding_idx = std::nullopt, Generator* gen = nullptr,
            DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const Tensor& ids) override;
  std::string extra_repr() const override;
  std::shared_ptr<Module> clone() const override;
  Tensor& weight() { return param("weight"); }
  const Tensor& weight() const { return param("weight"); }
  int64_t num_embeddings, embedding_dim;
  std::optional<int64_t> padding_idx;
};

class Dropout : public Module {
 public:
  // gen: the masks' random stream, shared with the caller (nullptr: default_generator()).
  explicit Dropout(double p = 0.5, std::shared_ptr<Generator> gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  std::shared_ptr<Module> clone() const override;
  double p;
  std::shared_ptr<Generator> gen;
};

class Identity : public Module {
 public:
  Identity() : Module("Identity") {}
  Tensor forward(const Tensor& x) override { return x; }
  std::shared_ptr<Module> clone() const override { return std::make_shared<Identity>(); }
};

#define PEFT_ACTIVATION(Name)                                                               \
  class Name : public Module {                                                              \
   public:                                                                                  \
    Name() : Module(#Name) {}                                                               \
    Tensor forward(const Tensor& x) override;                                               \
    std::shared_ptr<Module> clone() const override { return std::make_shared<Name>(); }     \
  };
PEFT_ACTIVATION(ReLU)
PEFT_ACTIVATION(SiLU)
PEFT_ACTIVATION(Tanh)
#undef PEFT_ACTIVATION

// Exact (erf) GELU; PyTorch prints it as GELU(approximate='none').
class GELU : public Module {
 public:
  GELU() : Module("GELU") {}
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override { return "approximate='none'"; }
  std::shared_ptr<Module> clone() const override { return std::make_shared<GELU>(); }
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5, bool elementwise_affine = true,
                     DType dt = DType::float32, Device dev = Device::cpu);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  std::shared_ptr<Module> clone() const override;
  Shape normalized_shape;
  double eps;
  bool elementwise_affine;
};

// Children named "0", "1", ...; forward chains them.
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  void push_back(std::shared_ptr<Module> m);
  Tensor forward(const Tensor& x) override;
  size_t size() const { return children().size(); }
  std::shared_ptr<Module> clone() const override;
};

class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  void push_back(std::shared_ptr<Module> m);
  Module& operator[](size_t i) const;
  size_t size() const { return children().size(); }
  std::shared_ptr<Module> clone() const override;
  // Folds runs of identical entries: "(0-1): 2 x Block(" (torch.nn.ModuleList).
  std::string repr() const override;
};

class ModuleDict : public Module {
 public:
  ModuleDict() : Module("ModuleDict") {}
  void insert(const std::string& key, std::shared_ptr<Module> m) { register_child(key, m); }
  bool contains(const std::string& key) const { return has_child(key); }
  Module& operator[](const std::string& key) const { return child(key); }
  bool erase(const std::string& key) { return remove_child(key); }
  std::vector<std::string> keys() const;
  size_t size() const { return children().size(); }
  std::shared_ptr<Module> clone() const override;
};

// Prints its entries on one line each: "(default): Parameter containing:
// [torch.FloatTensor of size 4x10]", exactly as PyTorch.
class ParameterDict : public Module {
 public:
  ParameterDict() : Module("ParameterDict") {}
  Tensor insert(const std::string& key, const Tensor& t, bool requires_grad = true) {
    return register_parameter(key, t, requires_grad);
  }
  bool contains(const std::string& key) const { return has_param(key); }
  Tensor& operator[](const std::string& key) { return param(key); }
  const Tensor& operator[](const std::string& key) const { return param(key); }
  bool erase(const std::string& key) { return remove_parameter(key); }
  std::vector<std::string> keys() const;
  size_t size() const { return own_parameters().size(); }
  std::string extra_repr() const override;
  std::shared_ptr<Module> clone() const override;
};

}  // namespace peft::nn
