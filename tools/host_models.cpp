#include "tools/host_models.h"

#include "runtime/ops.h"

namespace peft::tools {

using nn::Embedding;
using nn::Linear;
using nn::Module;

namespace {
std::shared_ptr<Linear> lin(int64_t in, int64_t out, bool bias, const HostOptions& o) {
  return std::make_shared<Linear>(in, out, bias, o.gen, o.dtype, o.device);
}
}  // namespace

// ---------------------------------------------------------------------------
DummyModel::DummyModel(int64_t V, int64_t D, const HostOptions& o) : Module("Dummy") {
  register_module("embedding", std::make_shared<Embedding>(V, D, std::nullopt, o.gen, o.dtype, o.device));
  register_module("linear", lin(D, D, true, o));
  register_module("lm_head", lin(D, V, true, o));
}

Tensor DummyModel::forward(const Tensor& ids) {
  Tensor h = child("embedding")(ids);
  h = child("linear")(h);
  return child("lm_head")(h);
}

std::shared_ptr<Module> DummyModel::clone() const {
  std::shared_ptr<DummyModel> m(new DummyModel());
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
MLPModel::MLPModel(int64_t in, int64_t hidden, int64_t out, const HostOptions& o) : Module("MLP") {
  register_module("lin0", lin(in, hidden, true, o));
  register_module("relu", std::make_shared<nn::ReLU>());
  register_module("drop", std::make_shared<nn::Dropout>(0.0));  // p = 0: no random stream needed
  register_module("lin1", lin(hidden, hidden, true, o));
  register_module("lin2", lin(hidden, out, true, o));
}

Tensor MLPModel::forward(const Tensor& x) {
  Tensor h = child("lin0")(x);
  h = child("relu")(h);
  h = child("drop")(h);
  h = child("lin1")(h);
  h = child("relu")(h);
  return child("lin2")(h);
}

std::shared_ptr<Module> MLPModel::clone() const {
  std::shared_ptr<MLPModel> m(new MLPModel());
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
DeepBlock::DeepBlock(int64_t D, int64_t F, const HostOptions& o) : Module("Block") {
  auto attn = std::make_shared<Module>("Attn");
  attn->register_module("q_proj", lin(D, D, true, o));
  attn->register_module("k_proj", lin(D, D, true, o));
  attn->register_module("v_proj", lin(D, D, true, o));
  attn->register_module("o_proj", lin(D, D, false, o));
  register_module("attn", attn);
  auto ff = std::make_shared<Module>("FF");
  ff->register_module("up_proj", lin(D, F, true, o));
  ff->register_module("down_proj", lin(F, D, true, o));
  register_module("mlp", ff);
}

Tensor DeepBlock::forward(const Tensor& h0) {
  Module& attn = child("attn");
  Tensor q = relu(attn.child("q_proj")(h0));
  Tensor k = attn.child("k_proj")(h0);
  Tensor v = attn.child("v_proj")(h0);
  Tensor a = attn.child("o_proj")(add(mul(q, k), v));
  Tensor h = add(h0, a);
  Module& ff = child("mlp");
  return add(h, ff.child("down_proj")(relu(ff.child("up_proj")(h))));
}

std::shared_ptr<Module> DeepBlock::clone() const {
  std::shared_ptr<DeepBlock> m(new DeepBlock());
  copy_state_to(*m);
  return m;
}

DeepModel::DeepModel(int64_t V, int64_t D, int64_t F, int64_t L, const HostOptions& o) : Module("Deep") {
  register_module("emb", std::make_shared<Embedding>(V, D, std::nullopt, o.gen, o.dtype, o.device));
  auto layers = std::make_shared<nn::ModuleList>();
  for (int64_t i = 0; i < L; ++i) layers->push_back(std::make_shared<DeepBlock>(D, F, o));
  register_module("layers", layers);
  register_module("lm_head", lin(D, V, false, o));
}

Tensor DeepModel::forward(const Tensor& ids) {
  Tensor h = child("emb")(ids);
  for (const auto& kv : child("layers").children()) h = kv.second->forward(h);
  return child("lm_head")(h);
}

std::shared_ptr<Module> DeepModel::clone() const {
  std::shared_ptr<DeepModel> m(new DeepModel());
  copy_state_to(*m);
  return m;
}

// ---------------------------------------------------------------------------
namespace {
int64_t spec_int(const nlohmann::json& spec, const char* key, const std::string& arch) {
  if (!spec.is_object() || !spec.contains(key))
    fail("build_host_model('", arch, "'): arch_spec has no key '", key, "' (got ", spec.dump(), ")");
  const auto& v = spec.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 0)
    fail("build_host_model('", arch, "'): arch_spec['", key, "'] must be a non-negative integer, got ", v.dump());
  return v.get<int64_t>();
}
}  // namespace

std::shared_ptr<Module> build_host_model(const std::string& arch, const nlohmann::json& spec,
                                         const HostOptions& o) {
  // Keys are read in order so the first missing one is reported.
  if (arch == "dummy") {
    int64_t V = spec_int(spec, "V", arch), D = spec_int(spec, "D", arch);
    return std::make_shared<DummyModel>(V, D, o);
  }
  if (arch == "mlp") {
    int64_t in = spec_int(spec, "in", arch), hidden = spec_int(spec, "hidden", arch);
    int64_t out = spec_int(spec, "out", arch);
    return std::make_shared<MLPModel>(in, hidden, out, o);
  }
  if (arch == "deep") {
    int64_t V = spec_int(spec, "V", arch), D = spec_int(spec, "D", arch);
    int64_t F = spec_int(spec, "F", arch), L = spec_int(spec, "L", arch);
    return std::make_shared<DeepModel>(V, D, F, L, o);
  }
  fail("build_host_model: unknown arch '", arch, "' (known: dummy, mlp, deep)");
}

}  // namespace peft::tools
