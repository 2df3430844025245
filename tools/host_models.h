// The three host models of the PEFT goldens (tests/data/peft/GOLDENS_README.md),
// rebuilt from nn modules with PyTorch's names, order and class names:
//   dummy: Dummy(embedding, linear, lm_head)
//   mlp:   MLP(lin0, relu, drop, lin1, lin2)  (relu is applied twice)
//   deep:  Deep(emb, layers = ModuleList of Block(attn = Attn(q/k/v/o_proj),
//          mlp = FF(up_proj, down_proj)), lm_head)
// Every forward looks its children up by name at call time, so a module
// swapped in by replace_module (adapter injection) takes effect.
#pragma once
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/layers.h"
#include "nn/module.h"
#include "runtime/generator.h"

namespace peft::tools {

struct HostOptions {
  Generator* gen = nullptr;  // nullptr: default_generator()
  DType dtype = DType::float32;
  Device device = Device::cpu;
};

// embedding Embedding(V, D) -> linear Linear(D, D) -> lm_head Linear(D, V); input int64 ids.
class DummyModel : public nn::Module {
 public:
  DummyModel(int64_t V, int64_t D, const HostOptions& o = {});
  Tensor forward(const Tensor& ids) override;
  std::shared_ptr<nn::Module> clone() const override;

 private:
  DummyModel() : nn::Module("Dummy") {}
};

// lin0 -> relu -> drop(p=0) -> lin1 -> relu -> lin2; input float [rows, in].
class MLPModel : public nn::Module {
 public:
  MLPModel(int64_t in, int64_t hidden, int64_t out, const HostOptions& o = {});
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<nn::Module> clone() const override;

 private:
  MLPModel() : nn::Module("MLP") {}
};

// a = o_proj(relu(q_proj(h)) * k_proj(h) + v_proj(h)); h = h + a;
// h = h + down_proj(relu(up_proj(h))).
class DeepBlock : public nn::Module {
 public:
  DeepBlock(int64_t D, int64_t F, const HostOptions& o = {});
  Tensor forward(const Tensor& h) override;
  std::shared_ptr<nn::Module> clone() const override;

 private:
  DeepBlock() : nn::Module("Block") {}
};

// emb(ids) -> layers.0 .. layers.{L-1} -> lm_head; input int64 ids.
class DeepModel : public nn::Module {
 public:
  DeepModel(int64_t V, int64_t D, int64_t F, int64_t L, const HostOptions& o = {});
  Tensor forward(const Tensor& ids) override;
  std::shared_ptr<nn::Module> clone() const override;

 private:
  DeepModel() : nn::Module("Deep") {}
};

// arch "dummy" (spec V, D), "mlp" (in, hidden, out), "deep" (V, D, F, L), as
// case.json's arch / arch_spec. Throws peft::Error naming a missing key or an
// unknown arch.
std::shared_ptr<nn::Module> build_host_model(const std::string& arch, const nlohmann::json& arch_spec,
                                             const HostOptions& o = {});

}  // namespace peft::tools
