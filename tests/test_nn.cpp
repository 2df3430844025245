// nn: module tree, layers, repr, state dicts, optimizers, golden host models.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "io/safetensors.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "runtime/autograd.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "tests/testing.h"
#include "tools/host_models.h"

using namespace peft;
using namespace peft::nn;

namespace {

std::vector<std::string> keys_of(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> k;
  for (auto& kv : v) k.push_back(kv.first);
  return k;
}
std::vector<std::string> keys_of(const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& v) {
  std::vector<std::string> k;
  for (auto& kv : v) k.push_back(kv.first);
  return k;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

// A module shaped like PEFT 0.21.0's lora.Linear (adapter "default").
std::shared_ptr<Module> fake_lora_linear(std::shared_ptr<Module> base, int64_t in, int64_t out, int64_t r,
                                         double dropout_p) {
  auto m = std::make_shared<Module>("lora.Linear");
  m->register_child("base_layer", base);
  auto drop = std::make_shared<ModuleDict>();
  if (dropout_p > 0)
    drop->insert("default", std::make_shared<Dropout>(dropout_p));
  else
    drop->insert("default", std::make_shared<Identity>());
  m->register_child("lora_dropout", drop);
  auto A = std::make_shared<ModuleDict>();
  A->insert("default", std::make_shared<Linear>(in, r, false));
  m->register_child("lora_A", A);
  auto B = std::make_shared<ModuleDict>();
  B->insert("default", std::make_shared<Linear>(r, out, false));
  m->register_child("lora_B", B);
  m->register_child("lora_embedding_A", std::make_shared<ParameterDict>());
  m->register_child("lora_embedding_B", std::make_shared<ParameterDict>());
  m->register_child("lora_magnitude_vector", std::make_shared<ModuleDict>());
  return m;
}

struct Dummy : Module {
  Dummy() : Module("DummyModel") {
    register_module("embedding", std::make_shared<Embedding>(10, 10));
    register_module("linear", std::make_shared<Linear>(10, 10));
    register_module("lm_head", std::make_shared<Linear>(10, 10));
  }
};

}  // namespace

// ---------------------------------------------------------------------------
TEST_CASE("module tree: names, order, traversal") {
  auto root = std::make_shared<Module>("Root");
  auto a = root->register_module("a", std::make_shared<Linear>(3, 4));
  auto seq = root->register_module("seq", std::make_shared<Sequential>());
  seq->push_back(std::make_shared<ReLU>());
  seq->push_back(std::make_shared<Linear>(4, 2, false));
  root->register_parameter("scale", ones({2}));
  root->register_buffer("steps", zeros({1}, DType::int64));

  CHECK(keys_of(root->named_parameters()) ==
        std::vector<std::string>{"scale", "a.weight", "a.bias", "seq.1.weight"});
  CHECK(keys_of(root->named_parameters(false)) == std::vector<std::string>{"scale"});
  CHECK(keys_of(root->named_buffers()) == std::vector<std::string>{"steps"});
  CHECK(keys_of(root->named_modules()) == std::vector<std::string>{"", "a", "seq", "seq.0", "seq.1"});
  CHECK(root->named_modules()[0].second.get() == root.get());
  CHECK(keys_of(root->named_children()) == std::vector<std::string>{"a", "seq"});
  CHECK(root->parameters().size() == 4);
  CHECK(root->get_submodule("seq.1")->type_name() == "Linear");
  CHECK(root->get_submodule("").get() == root.get());
  CHECK(root->state_dict().keys() == std::vector<std::string>{"scale", "steps", "a.weight", "a.bias", "seq.1.weight"});

  // shared module: listed once in named_modules/named_parameters, under each path in state_dict
  auto shared = std::make_shared<Module>("Shared");
  auto lin = std::make_shared<Linear>(2, 2);
  shared->register_child("x", lin);
  shared->register_child("y", lin);
  CHECK(keys_of(shared->named_modules()) == std::vector<std::string>{"", "x"});
  CHECK(keys_of(shared->named_parameters()) == std::vector<std::string>{"x.weight", "x.bias"});
  CHECK(shared->state_dict().keys() == std::vector<std::string>{"x.weight", "x.bias", "y.weight", "y.bias"});

  // apply is post-order (children first), train/eval recurse
  std::vector<std::string> order;
  root->apply([&](Module& m) { order.push_back(m.type_name()); });
  CHECK(order == std::vector<std::string>{"Linear", "ReLU", "Linear", "Sequential", "Root"});
  root->eval();
  CHECK(!seq->child("0").is_training());
  root->train();
  CHECK(seq->child("1").is_training());

  root->requires_grad_(false);
  for (auto& [n, p] : root->named_parameters()) CHECK_MESSAGE(!p.requires_grad(), n);
  root->requires_grad_(true);
  CHECK(a->weight().requires_grad());
}

TEST_CASE("module registration errors") {
  Module m("Thing");
  m.register_parameter("w", ones({2}));
  CHECK(contains(error_of([&] { m.register_parameter("w", ones({2})); }), "'w'"));
  CHECK(contains(error_of([&] { m.register_parameter("w", ones({2})); }), "Thing"));
  CHECK(contains(error_of([&] { m.register_buffer("w", ones({2})); }), "parameter of that name already exists"));
  CHECK(contains(error_of([&] { m.register_child("w", std::make_shared<ReLU>()); }), "already exists"));
  CHECK(contains(error_of([&] { m.register_parameter("a.b", ones({2})); }), "must not contain '.'"));
  CHECK(contains(error_of([&] { m.register_child("", std::make_shared<ReLU>()); }), "empty name"));
  CHECK(contains(error_of([&] { m.register_parameter("i", zeros({2}, DType::int64)); }), "floating"));
  CHECK_NOTHROW(m.register_parameter("i", zeros({2}, DType::int64), false));
  CHECK(contains(error_of([&] { m.param("nope"); }), "has no parameter 'nope' (parameters: w, i)"));
  CHECK(contains(error_of([&] { m.child("c"); }), "has no child module 'c'"));
  CHECK(m.remove_parameter("w"));
  CHECK(!m.remove_parameter("w"));
  CHECK_THROWS_AS(m.forward(ones({1})), Error);
}

TEST_CASE("get_submodule / replace_module") {
  auto model = std::make_shared<Dummy>();
  CHECK(contains(error_of([&] { model->get_submodule("linear.foo"); }),
                 "module 'linear' (Linear) has no child 'foo'"));
  CHECK(contains(error_of([&] { model->get_submodule("nothing"); }), "(children: embedding, linear, lm_head)"));
  CHECK(contains(error_of([&] { model->get_submodule("linear..x"); }), "empty name component"));

  auto old_linear = model->child_ptr("linear");
  auto wrapper = fake_lora_linear(old_linear, 10, 10, 4, 0.0);
  auto returned = model->replace_module("linear", wrapper);
  CHECK(returned.get() == old_linear.get());
  CHECK(model->child_ptr("linear").get() == wrapper.get());
  CHECK(keys_of(model->named_children()) == std::vector<std::string>{"embedding", "linear", "lm_head"});
  CHECK(model->get_submodule("linear.base_layer").get() == old_linear.get());
  auto pk = keys_of(model->named_parameters());
  CHECK(pk == std::vector<std::string>{"embedding.weight", "linear.base_layer.weight", "linear.base_layer.bias",
                                       "linear.lora_A.default.weight", "linear.lora_B.default.weight",
                                       "lm_head.weight", "lm_head.bias"});
  // nested replace returns the old module
  auto id = std::make_shared<Identity>();
  auto old = model->replace_module("linear.lora_dropout.default", id);
  CHECK(old->type_name() == "Identity");
  CHECK(contains(error_of([&] { model->replace_module("linear.zzz", id); }), "has no child 'zzz' to replace"));
  CHECK(contains(error_of([&] { model->replace_module("", id); }), "root"));
}

// ---------------------------------------------------------------------------
TEST_CASE("repr matches PyTorch / PEFT 0.21.0 printouts") {
  CHECK(Linear(10, 10).repr() == "Linear(in_features=10, out_features=10, bias=True)");
  CHECK(Linear(10, 64, false).repr() == "Linear(in_features=10, out_features=64, bias=False)");
  CHECK(Embedding(10, 10).repr() == "Embedding(10, 10)");
  CHECK(Embedding(10, 4, 0).repr() == "Embedding(10, 4, padding_idx=0)");
  CHECK(Embedding(10, 4, -1).repr() == "Embedding(10, 4, padding_idx=9)");
  CHECK(Dropout(0.1).repr() == "Dropout(p=0.1, inplace=False)");
  CHECK(Dropout(0.0).repr() == "Dropout(p=0.0, inplace=False)");
  CHECK(Dropout(0.5).repr() == "Dropout(p=0.5, inplace=False)");
  CHECK(ModuleDict().repr() == "ModuleDict()");
  CHECK(ParameterDict().repr() == "ParameterDict()");
  CHECK(Identity().repr() == "Identity()");
  CHECK(ReLU().repr() == "ReLU()");
  CHECK(GELU().repr() == "GELU()");
  CHECK(LayerNorm({4}).repr() == "LayerNorm((4,), eps=1e-05, elementwise_affine=True)");
  CHECK(LayerNorm({4, 5}, 1e-6, false).repr() == "LayerNorm((4, 5), eps=1e-06, elementwise_affine=False)");
  CHECK(ModuleList().repr() == "ModuleList()");

  CHECK(py_float_repr(0.1) == "0.1");
  CHECK(py_float_repr(1e-5) == "1e-05");
  CHECK(py_float_repr(1e6) == "1000000.0");
  CHECK(py_float_repr(1e16) == "1e+16");
  CHECK(py_float_repr(0.0001) == "0.0001");
  CHECK(py_float_repr(0.00012) == "0.00012");
  CHECK(py_float_repr(1.5e-7) == "1.5e-07");
  CHECK(py_float_repr(123.25) == "123.25");
  CHECK(py_float_repr(2.0) == "2.0");

  // PEFT_SEMANTICS §8: the seed example after injection
  auto model = std::make_shared<Dummy>();
  model->replace_module("linear", fake_lora_linear(model->child_ptr("linear"), 10, 10, 64, 0.1));
  const char* seed = R"(DummyModel(
  (embedding): Embedding(10, 10)
  (linear): lora.Linear(
    (base_layer): Linear(in_features=10, out_features=10, bias=True)
    (lora_dropout): ModuleDict(
      (default): Dropout(p=0.1, inplace=False)
    )
    (lora_A): ModuleDict(
      (default): Linear(in_features=10, out_features=64, bias=False)
    )
    (lora_B): ModuleDict(
      (default): Linear(in_features=64, out_features=10, bias=False)
    )
    (lora_embedding_A): ParameterDict()
    (lora_embedding_B): ParameterDict()
    (lora_magnitude_vector): ModuleDict()
  )
  (lm_head): Linear(in_features=10, out_features=10, bias=True)
))";
  CHECK(model->repr() == seed);

  // §8: targeted embedding
  auto emb = std::make_shared<Module>("lora.Embedding");
  emb->register_child("base_layer", std::make_shared<Embedding>(10, 10));
  auto drop = std::make_shared<ModuleDict>();
  drop->insert("default", std::make_shared<Identity>());
  emb->register_child("lora_dropout", drop);
  emb->register_child("lora_A", std::make_shared<ModuleDict>());
  emb->register_child("lora_B", std::make_shared<ModuleDict>());
  auto eA = std::make_shared<ParameterDict>();
  eA->insert("default", zeros({4, 10}));
  auto eB = std::make_shared<ParameterDict>();
  eB->insert("default", zeros({10, 4}));
  emb->register_child("lora_embedding_A", eA);
  emb->register_child("lora_embedding_B", eB);
  emb->register_child("lora_magnitude_vector", std::make_shared<ModuleDict>());
  const char* emb_repr = R"(lora.Embedding(
  (base_layer): Embedding(10, 10)
  (lora_dropout): ModuleDict(
    (default): Identity()
  )
  (lora_A): ModuleDict()
  (lora_B): ModuleDict()
  (lora_embedding_A): ParameterDict(  (default): Parameter containing: [torch.FloatTensor of size 4x10])
  (lora_embedding_B): ParameterDict(  (default): Parameter containing: [torch.FloatTensor of size 10x4])
  (lora_magnitude_vector): ModuleDict()
))";
  CHECK(emb->repr() == emb_repr);

  // several entries, other dtypes, scalars
  ParameterDict pd;
  pd.insert("a", zeros({1}, DType::float64));
  pd.insert("b", zeros({2, 3}, DType::bfloat16));
  pd.insert("c", zeros({3}, DType::float16));
  CHECK(pd.repr() ==
        "ParameterDict(\n"
        "    (a): Parameter containing: [torch.DoubleTensor of size 1]\n"
        "    (b): Parameter containing: [torch.BFloat16Tensor of size 2x3]\n"
        "    (c): Parameter containing: [torch.HalfTensor of size 3]\n"
        ")");
  CHECK(torch_typename(zeros({1}, DType::int64)) == "torch.LongTensor");
}

TEST_CASE("ModuleList repr folds identical entries") {
  auto list = std::make_shared<ModuleList>();
  list->push_back(std::make_shared<Linear>(2, 2));
  list->push_back(std::make_shared<Linear>(2, 2));
  list->push_back(std::make_shared<Linear>(2, 3));
  list->push_back(std::make_shared<ReLU>());
  list->push_back(std::make_shared<ReLU>());
  CHECK(list->repr() ==
        "ModuleList(\n"
        "  (0-1): 2 x Linear(in_features=2, out_features=2, bias=True)\n"
        "  (2): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (3-4): 2 x ReLU()\n"
        ")");
  CHECK(&(*list)[2] == list->child_ptr("2").get());
  CHECK_THROWS_AS((*list)[5], Error);
}
