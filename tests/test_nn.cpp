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

using testing::error_of;  // tests/testing.h

bool max_abs_diff_gt(const Tensor& a, const Tensor& b, double v) { return testing::max_abs_diff(a, b) > v; }

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
  CHECK(GELU().repr() == "GELU(approximate='none')");  // as torch.nn.GELU()
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

  // PEFT 0.21's seed example after injection (tests/data/peft/lora_seed_example)
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

  // PEFT's tuners/lora/: targeted embedding
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

// ---------------------------------------------------------------------------
TEST_CASE("state_dict round trip, strict and non-strict loads") {
  Generator g1(1), g2(2);
  auto a = std::make_shared<Module>("Net");
  a->register_module("linear", std::make_shared<Linear>(3, 2, true, &g1));
  a->register_buffer("count", full({1}, 7.0, DType::int64));
  auto b = std::make_shared<Module>("Net");
  b->register_module("linear", std::make_shared<Linear>(3, 2, true, &g2));
  b->register_buffer("count", zeros({1}, DType::int64));

  StateDict sd = a->state_dict();
  CHECK(sd.keys() == std::vector<std::string>{"count", "linear.weight", "linear.bias"});
  CHECK(!sd.at("linear.weight").requires_grad());
  CHECK(sd.at("linear.weight").same_storage(a->get_submodule("linear")->param("weight")));

  Tensor wb = b->get_submodule("linear")->param("weight");  // handle kept across the load
  LoadResult r = b->load_state_dict(sd);
  CHECK(r.missing_keys.empty());
  CHECK(r.unexpected_keys.empty());
  CHECK_ALLCLOSE(wb, a->get_submodule("linear")->param("weight"), 0, 0);
  CHECK(!wb.same_storage(sd.at("linear.weight")));  // copied, not taken over
  CHECK(wb.requires_grad());
  CHECK(b->buffer("count").at({0}) == 7.0);

  // non-strict: missing and unexpected reported, present keys loaded
  StateDict partial;
  partial.set("linear.bias", full({2}, 0.5));
  partial.set("extra.thing", zeros({1}));
  r = b->load_state_dict(partial, false);
  CHECK(r.missing_keys == std::vector<std::string>{"count", "linear.weight"});
  CHECK(r.unexpected_keys == std::vector<std::string>{"extra.thing"});
  CHECK(b->get_submodule("linear")->param("bias").at({1}) == 0.5);

  // strict: throws listing them, PyTorch's wording, and changes nothing
  partial.set("linear.bias", full({2}, 9.0));
  std::string e = error_of([&] { b->load_state_dict(partial); });
  CHECK(contains(e, "Error(s) in loading state_dict for Net:"));
  CHECK(contains(e, "Unexpected key(s) in state_dict: \"extra.thing\"."));
  CHECK(contains(e, "Missing key(s) in state_dict: \"count\", \"linear.weight\"."));
  CHECK(b->get_submodule("linear")->param("bias").at({1}) == 0.5);

  // dtype converted on copy
  StateDict d64;
  d64.set("linear.bias", full({2}, 0.25, DType::float64));
  b->load_state_dict(d64, false);
  CHECK(b->get_submodule("linear")->param("bias").dtype() == DType::float32);
  CHECK(b->get_submodule("linear")->param("bias").at({0}) == 0.25);
}

TEST_CASE("load_state_dict: size mismatch always throws with both shapes") {
  auto m = std::make_shared<Module>("Model");
  m->register_module("linear", std::make_shared<Linear>(10, 10));
  StateDict sd;
  sd.set("linear.weight", zeros({3, 3}));
  for (bool strict : {true, false}) {
    std::string e = error_of([&] { m->load_state_dict(sd, strict); });
    CHECK(contains(e, "size mismatch for linear.weight: copying a param with shape [3, 3] from checkpoint, "
                      "the shape in current model is [10, 10]."));
  }
}

TEST_CASE("load_state_dict onto meta: assign takes over, copy materialises") {
  Generator g(5);
  Linear src(4, 3, true, &g);
  Linear dst(4, 3, true, nullptr, DType::float32, Device::meta);
  CHECK(dst.weight().is_meta());
  Tensor handle = dst.weight();

  StateDict sd = src.state_dict();
  dst.load_state_dict(sd, true, /*assign=*/true);
  CHECK(!handle.is_meta());
  CHECK(handle.same_storage(src.weight()));  // zero-copy
  CHECK(handle.requires_grad());
  CHECK_ALLCLOSE(dst(ones({2, 4})), src(ones({2, 4})), 1e-6, 1e-6);

  Linear dst2(4, 3, true, nullptr, DType::float32, Device::meta);
  Tensor h2 = dst2.bias();
  dst2.load_state_dict(sd);  // no assign: materialise + copy
  CHECK(!h2.is_meta());
  CHECK(!h2.same_storage(src.bias()));
  CHECK_ALLCLOSE(h2, src.bias(), 0, 0);

  // assign takes the source dtype (PyTorch)
  Linear dst3(4, 3);
  StateDict d64;
  d64.set("weight", src.weight().detach().to(DType::float64));
  d64.set("bias", src.bias().detach().to(DType::float64));
  Tensor h3 = dst3.weight();
  dst3.load_state_dict(d64, true, true);
  CHECK(h3.dtype() == DType::float64);
}

TEST_CASE("to(dtype) converts in place and keeps handles") {
  Generator g(3);
  auto m = std::make_shared<Module>("M");
  m->register_module("l", std::make_shared<Linear>(3, 2, true, &g));
  m->register_buffer("ids", arange(0, 3));
  Tensor w = m->get_submodule("l")->param("weight");
  std::vector<double> before = w.to_vector<double>();
  Tensor x = from_vector(std::vector<double>{1, 2, 3}, {1, 3});
  Tensor y32 = (*m->get_submodule("l"))(x.to(DType::float32));
  m->to(DType::float64);
  CHECK(w.dtype() == DType::float64);
  CHECK(w.requires_grad());
  CHECK(m->buffer("ids").dtype() == DType::int64);  // not floating: untouched
  CHECK(w.to_vector<double>() == before);
  Tensor y64 = (*m->get_submodule("l"))(x);
  CHECK(y64.dtype() == DType::float64);
  CHECK_ALLCLOSE(y64, y32.to(DType::float64), 1e-6, 1e-6);
  m->to(DType::bfloat16);
  CHECK(w.dtype() == DType::bfloat16);
  m->to(Device::cpu);  // no-op
  CHECK(w.device() == Device::cpu);
  CHECK_THROWS_AS(m->to(DType::int64), Error);

  Linear meta(2, 2, true, nullptr, DType::float32, Device::meta);
  CHECK(contains(error_of([&] { meta.to(Device::cpu); }), "meta"));
  meta.to(DType::float64);  // dtype change on meta is fine
  CHECK(meta.weight().dtype() == DType::float64);
}

TEST_CASE("Linear / Embedding init: bounds, determinism, meta draws nothing") {
  Generator g(42);
  Linear l(64, 32, true, &g);
  CHECK(l.weight().shape() == Shape{32, 64});
  CHECK(l.bias().shape() == Shape{32});
  double bound = 1.0 / std::sqrt(64.0);
  auto w = l.weight().to_vector<double>();
  double mx = 0, mean = 0, var = 0;
  for (double v : w) {
    mx = std::max(mx, std::fabs(v));
    mean += v;
  }
  mean /= double(w.size());
  for (double v : w) var += (v - mean) * (v - mean);
  var /= double(w.size());
  CHECK(mx <= bound);
  CHECK(mx > 0.9 * bound);
  CHECK(std::fabs(mean) < 0.01);
  CHECK(var == doctest::Approx(bound * bound / 3).epsilon(0.1));  // U(-b, b) variance b²/3
  for (double v : l.bias().to_vector<double>()) CHECK(std::fabs(v) <= bound);

  Generator ga(7), gb(7);
  Linear la(5, 4, true, &ga), lb(5, 4, true, &gb);
  CHECK(la.weight().to_vector<double>() == lb.weight().to_vector<double>());
  CHECK(la.bias().to_vector<double>() == lb.bias().to_vector<double>());

  Generator gm(9);
  uint64_t c0 = gm.counter();
  Linear lm(100, 100, true, &gm, DType::float32, Device::meta);
  Embedding em(100, 10, 0, &gm, DType::float32, Device::meta);
  CHECK(gm.counter() == c0);
  CHECK(lm.weight().is_meta());
  CHECK(em.weight().is_meta());
  CHECK(lm.repr() == "Linear(in_features=100, out_features=100, bias=True)");

  // default_generator is used when none is passed
  manual_seed(11);
  Linear d1(3, 3);
  manual_seed(11);
  Linear d2(3, 3);
  CHECK(d1.weight().to_vector<double>() == d2.weight().to_vector<double>());

  Generator ge(1);
  Embedding e(50, 40, 3, &ge);
  auto ev = e.weight().to_vector<double>();
  double m2 = 0, s2 = 0;
  for (double v : ev) {
    m2 += v;
    s2 += v * v;
  }
  m2 /= double(ev.size());
  s2 = s2 / double(ev.size()) - m2 * m2;
  CHECK(std::fabs(m2) < 0.1);
  CHECK(s2 == doctest::Approx(1.0).epsilon(0.1));
  for (int64_t j = 0; j < 40; ++j) CHECK(e.weight().at({3, j}) == 0.0);
  // padding row gets no gradient
  Tensor out = e(from_vector(std::vector<int64_t>{3, 4, 3}, {3}));
  sum(out).backward();
  CHECK(e.weight().grad().at({3, 0}) == 0.0);
  CHECK(e.weight().grad().at({4, 0}) == 1.0);

  CHECK_THROWS_AS(Embedding(5, 2, 5), Error);
  CHECK_THROWS_AS(Dropout(1.5), Error);
  CHECK_THROWS_AS(Linear(-1, 2), Error);
}

TEST_CASE("layers forward") {
  Generator g(4);
  Linear l(3, 2, true, &g);
  Tensor x = from_vector(std::vector<float>{1, 2, 3, -1, 0, 1}, {2, 3});
  Tensor y = l(x);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t o = 0; o < 2; ++o) {
      double acc = l.bias().at({o});
      for (int64_t k = 0; k < 3; ++k) acc += x.at({i, k}) * l.weight().at({o, k});
      CHECK(y.at({i, o}) == doctest::Approx(acc).epsilon(1e-6));
    }
  Dropout d(0.5, std::make_shared<Generator>(4));
  Tensor big = ones({1000});
  Tensor yd = d(big);
  auto v = yd.to_vector<double>();
  int zeros_n = 0;
  for (double e : v) {
    CHECK((e == 0.0 || e == 2.0));
    zeros_n += e == 0.0;
  }
  CHECK(zeros_n > 400);
  CHECK(zeros_n < 600);
  d.eval();
  CHECK_ALLCLOSE(d(big), big, 0, 0);

  LayerNorm ln({3});
  Tensor z = ln(from_vector(std::vector<float>{1, 2, 3}, {1, 3}));
  CHECK(z.at({0, 0}) == doctest::Approx(-1.2247357).epsilon(1e-5));
  CHECK(z.at({0, 1}) == doctest::Approx(0.0).epsilon(1e-6));
  CHECK(keys_of(ln.named_parameters()) == std::vector<std::string>{"weight", "bias"});

  Sequential s;
  s.push_back(std::make_shared<Linear>(3, 4, true, &g));
  s.push_back(std::make_shared<ReLU>());
  s.push_back(std::make_shared<Tanh>());
  Tensor sy = s(x);
  CHECK(sy.shape() == Shape{2, 4});
  for (double e : sy.to_vector<double>()) CHECK(e >= 0);
  CHECK(SiLU()(zeros({1})).at({0}) == 0.0);
  CHECK(GELU()(ones({1})).at({0}) == doctest::Approx(0.8413447).epsilon(1e-5));
}

TEST_CASE("clone deep-copies values, keeps type and requires_grad") {
  Generator g(8);
  auto m = std::make_shared<Module>("W");
  m->register_module("l", std::make_shared<Linear>(3, 2, true, &g));
  auto pd = m->register_module("pd", std::make_shared<ParameterDict>());
  pd->insert("default", ones({2}), false);
  m->eval();
  auto c = m->clone();
  CHECK(c->repr() == m->repr());
  CHECK(!c->is_training());
  auto cl = std::dynamic_pointer_cast<Linear>(c->child_ptr("l"));
  REQUIRE(cl);
  auto ol = std::dynamic_pointer_cast<Linear>(m->child_ptr("l"));
  CHECK_ALLCLOSE(cl->weight(), ol->weight(), 0, 0);
  CHECK(!cl->weight().same_storage(ol->weight()));
  CHECK(cl->weight().requires_grad());
  CHECK(!c->get_submodule("pd")->param("default").requires_grad());
  cl->weight().fill_(0.0);
  CHECK(ol->weight().at({0, 0}) != 0.0);
  CHECK(ParameterDict().clone()->type_name() == "ParameterDict");
  Linear meta(3, 2, true, nullptr, DType::bfloat16, Device::meta);
  auto mc = std::dynamic_pointer_cast<Linear>(meta.clone());
  REQUIRE(mc);
  CHECK(mc->weight().is_meta());
  CHECK(mc->weight().dtype() == DType::bfloat16);
  CHECK(mc->in_features == 3);
  CHECK(std::dynamic_pointer_cast<ModuleDict>(ModuleDict().clone()));
}

// ---------------------------------------------------------------------------
// Optimizers. Expected values computed independently in plain Python from the
// published torch.optim update rules, not from this code: tools/python/optimizer_reference.py
// prints them (and, with --torch, torch.optim's own values beside them).

namespace {
// loss = sum((p - t)^2), grad = 2 (p - t)
void set_quadratic_grad(Tensor& p) {
  Tensor t = from_vector(std::vector<double>{0.5, 0.25, -1.0}, {3}, p.dtype());
  p.zero_grad();
  Tensor d = sub(p, t);
  sum(mul(d, d)).backward();
}

Tensor start_param(DType dt) {
  Tensor p = from_vector(std::vector<double>{1.0, -2.0, 0.5}, {3}, dt);
  p.requires_grad_(true);
  return p;
}
}  // namespace

TEST_CASE("SGD matches torch.optim.SGD's update rule") {
  struct Case {
    SGDOptions o;
    int steps;
    std::vector<double> expected;
  };
  std::vector<Case> cases;
  {
    SGDOptions o;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.weight_decay = 0.01;
    o.nesterov = true;
    cases.push_back({o, 3, {0.44140915164100003, 0.4998323114680001, -1.1619460389295}});
  }
  {
    SGDOptions o;
    o.lr = 0.05;
    o.momentum = 0.8;
    o.dampening = 0.1;
    cases.push_back({o, 4, {0.6692549499999999, -0.511647275, -0.4922351500000002}});
  }
  {
    SGDOptions o;
    o.lr = 0.1;
    cases.push_back({o, 2, {0.8200000000000001, -1.19, -0.040000000000000036}});
  }
  for (const auto& c : cases)
    for (DType dt : {DType::float64, DType::float32})
      for (bool use_ops : {false, true}) {
        Tensor p = start_param(dt);
        SGDOptions o = c.o;
        o.use_ops = use_ops;
        SGD opt({{"p", p}}, o);
        Tensor handle = p;
        for (int s = 0; s < c.steps; ++s) {
          set_quadratic_grad(p);
          opt.step();
        }
        double tol = dt == DType::float64 ? 1e-12 : 1e-6;
        CHECK_ALLCLOSE(handle.to(DType::float64), from_vector(c.expected, {3}), tol, tol);
        CHECK(opt.step_count() == c.steps);
      }
  // first momentum step: buf = grad
  Tensor p = start_param(DType::float64);
  SGDOptions o;
  o.momentum = 0.9;
  o.dampening = 0.5;
  SGD opt(std::vector<Tensor>{p}, o);
  set_quadratic_grad(p);
  opt.step();
  CHECK_ALLCLOSE(opt.momentum_buffer(0), from_vector(std::vector<double>{1.0, -4.5, 3.0}, {3}), 0, 1e-15);

  SGDOptions bad;
  bad.nesterov = true;
  CHECK(contains(error_of([&] { SGD s(std::vector<Tensor>{p}, bad); }), "Nesterov momentum requires"));
}

TEST_CASE("AdamW matches torch.optim.AdamW's update rule") {
  // lr 0.05, betas (0.9, 0.999), eps 1e-8, weight_decay 0.1, 5 steps
  std::vector<double> expected{0.7323253671325198, -1.703661134998053, 0.2410458077512425};
  for (DType dt : {DType::float64, DType::float32})
    for (bool use_ops : {false, true}) {
      Tensor p = start_param(dt);
      Tensor frozen = start_param(dt);  // no grad: skipped
      AdamWOptions o;
      o.lr = 0.05;
      o.weight_decay = 0.1;
      o.use_ops = use_ops;
      AdamW opt({{"p", p}, {"frozen", frozen}}, o);
      for (int s = 0; s < 5; ++s) {
        set_quadratic_grad(p);
        opt.step();
      }
      double tol = dt == DType::float64 ? 1e-12 : 2e-6;
      CHECK_ALLCLOSE(p.to(DType::float64), from_vector(expected, {3}), tol, tol);
      CHECK(frozen.to_vector<double>() == std::vector<double>{1.0, -2.0, 0.5});
      opt.zero_grad();
      CHECK(!p.grad().defined());
    }
  // parameters converted in place by Module::to stay the optimizer's parameters
  Generator g(2);
  Linear l(3, 2, true, &g);
  AdamW opt(l.named_parameters());
  sum(l(ones({1, 3}))).backward();
  opt.step();
  l.to(DType::float64);
  opt.zero_grad();
  Tensor w_before = l.weight().clone();
  sum(l(ones({1, 3}, DType::float64))).backward();
  opt.step();
  CHECK(opt.params()[0].second.dtype() == DType::float64);
  CHECK(opt.exp_avg(0).dtype() == DType::float64);
  CHECK(max_abs_diff_gt(l.weight(), w_before, 0.0));
  CHECK(AdamWOptions().weight_decay == 0.01);
  CHECK(AdamWOptions().eps == 1e-8);
}

TEST_CASE("AdamW state_dict: a restored optimizer continues bit-exactly; bad states are refused unchanged") {
  for (DType dt : {DType::float64, DType::float32}) {
    Tensor p = start_param(dt);
    Tensor q = mul(start_param(dt).detach(), 2.0).requires_grad_(true);
    Tensor frozen = start_param(dt);
    AdamWOptions o;
    o.lr = 0.05;
    o.weight_decay = 0.1;
    AdamW a({{"p", p}, {"q", q}, {"frozen", frozen}}, o);
    for (int s = 0; s < 3; ++s) {
      set_quadratic_grad(p);
      if (s > 0) set_quadratic_grad(q);  // q's first update comes one step later: its own step count
      a.step();
    }
    a.set_lr(0.02);
    StateDict sd = a.state_dict();
    CHECK(sd.find("p.exp_avg") != nullptr);
    CHECK(sd.find("frozen.exp_avg") == nullptr);  // never updated: no moments
    CHECK(sd.at("p.step").item() == 3.0);
    CHECK(sd.at("q.step").item() == 2.0);
    CHECK(sd.at("optimizer.step").item() == 3.0);

    // a second optimizer on copies of the parameters, restored from the state
    Tensor p2 = p.detach().clone().requires_grad_(true);
    Tensor q2 = q.detach().clone().requires_grad_(true);
    Tensor f2 = frozen.detach().clone();
    AdamW b({{"p", p2}, {"q", q2}, {"frozen", f2}}, o);
    b.load_state_dict(sd);
    CHECK(b.lr() == 0.02);
    for (int s = 0; s < 2; ++s) {
      set_quadratic_grad(p), set_quadratic_grad(q), a.step();
      set_quadratic_grad(p2), set_quadratic_grad(q2), b.step();
    }
    CHECK(p.to_vector<double>() == p2.to_vector<double>());
    CHECK(q.to_vector<double>() == q2.to_vector<double>());
    // without the state the continuation differs (the test can fail)
    Tensor p3 = start_param(dt);
    AdamW c({{"p", p3}}, o);
    set_quadratic_grad(p3), c.step();
    CHECK(max_abs_diff_gt(p3, p, 0.0));

    // refused before any change: wrong shape, unknown key, missing step
    StateDict wrong = sd;
    wrong.set("p.exp_avg", zeros({4}, dt));
    Tensor m_before = b.exp_avg(0).clone();
    CHECK(contains(error_of([&] { b.load_state_dict(wrong); }), "'p.exp_avg' is"));
    CHECK(b.exp_avg(0).to_vector<double>() == m_before.to_vector<double>());
    StateDict extra = sd;
    extra.set("r.step", from_vector(std::vector<int64_t>{1}, {}));
    CHECK(contains(error_of([&] { b.load_state_dict(extra); }), "'r.step' is no state"));
    StateDict missing;
    CHECK(contains(error_of([&] { b.load_state_dict(missing); }), "has no 'p.step'"));
  }
}

TEST_CASE("clip_grad_norm_ and warmup-cosine schedule") {
  Tensor a = zeros({2}, DType::float64).requires_grad_(true);
  Tensor b = zeros({1}, DType::float64).requires_grad_(true);
  Tensor c = zeros({1}, DType::float64).requires_grad_(true);  // no grad
  a.set_grad(from_vector(std::vector<double>{3, 4}, {2}));
  b.set_grad(from_vector(std::vector<double>{12}, {1}));
  double total = clip_grad_norm_(std::vector<Tensor>{a, b, c}, 5.0);
  CHECK(total == doctest::Approx(13.0).epsilon(1e-12));
  CHECK_ALLCLOSE(a.grad(), from_vector(std::vector<double>{1.1538460650887643, 1.5384614201183524}, {2}), 1e-12, 0);
  CHECK_ALLCLOSE(b.grad(), from_vector(std::vector<double>{4.615384260355057}, {1}), 1e-12, 0);
  // below the limit: unchanged (coefficient clamped to 1)
  double t2 = clip_grad_norm_(std::vector<Tensor>{a, b}, 100.0);
  CHECK(t2 == doctest::Approx(5.0).epsilon(1e-6));
  CHECK(b.grad().at({0}) == doctest::Approx(4.615384260355057).epsilon(1e-12));

  // warmup 5, total 20 (transformers' get_cosine_schedule_with_warmup)
  std::vector<std::pair<int, double>> ref{{0, 0.0}, {1, 0.2}, {2, 0.4}, {5, 1.0}, {6, 0.9890738003669028},
                                          {10, 0.75}, {15, 0.2500000000000001}, {20, 0.0}, {25, 0.0}};
  for (auto [s, m] : ref) CHECK(warmup_cosine_multiplier(s, 5, 20) == doctest::Approx(m).epsilon(1e-12));
  CHECK(warmup_cosine_multiplier(20, 5, 20, 0.1) == doctest::Approx(0.1));
  Tensor p = start_param(DType::float32);
  SGDOptions o;
  o.lr = 0.5;
  SGD opt(std::vector<Tensor>{p}, o);
  WarmupCosineSchedule sched(opt, 5, 20);
  CHECK(opt.lr() == 0.0);
  sched.apply(10);
  CHECK(opt.lr() == doctest::Approx(0.375));
}

// ---------------------------------------------------------------------------
// Golden host models: build from case.json, load base.safetensors, compare the
// base forward with PyTorch's output_base.

TEST_CASE("golden host models reproduce output_base") {
  namespace fs = std::filesystem;
  const fs::path root = "tests/data/peft";
  REQUIRE(fs::exists(root));
  int n = 0, n_fwd = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory()) continue;
    fs::path dir = entry.path();
    if (!fs::exists(dir / "case.json")) continue;
    CAPTURE(dir.string());
    std::ifstream f(dir / "case.json");
    nlohmann::json c = nlohmann::json::parse(f);
    auto model = tools::build_host_model(c.at("arch").get<std::string>(), c.at("arch_spec"));
    StateDict base = io::load_safetensors((dir / "base.safetensors").string());
    LoadResult r = model->load_state_dict(base);  // strict
    CHECK(r.missing_keys.empty());
    model->eval();
    ++n;
    StateDict io_t = io::load_safetensors((dir / "io.safetensors").string());
    if (!io_t.contains("output_base")) continue;  // training cases record x/y/losses only
    ++n_fwd;
    Tensor y = model->forward(io_t.at("input"));
    Tensor ref = io_t.at("output_base");
    double scale = 0;
    for (double v : ref.to_vector<double>()) scale = std::max(scale, std::fabs(v));
    CHECK_ALLCLOSE(y, ref, 0, 1e-5 + 1e-4 * scale);
    // repr of the host (first line and the untouched children) as in the golden
    if (c.contains("repr")) {
      std::string rep = c["repr"].get<std::string>();
      CHECK(rep.substr(0, rep.find('\n')) == model->repr().substr(0, model->repr().find('\n')));
    }
  }
  CHECK(n >= 16);
  CHECK(n_fwd >= 12);
}

TEST_CASE("host models: names, reprs, injection through replace_module") {
  auto deep = tools::build_host_model("deep", {{"V", 32}, {"D", 16}, {"F", 32}, {"L", 2}});
  const char* deep_repr = R"(Deep(
  (emb): Embedding(32, 16)
  (layers): ModuleList(
    (0-1): 2 x Block(
      (attn): Attn(
        (q_proj): Linear(in_features=16, out_features=16, bias=True)
        (k_proj): Linear(in_features=16, out_features=16, bias=True)
        (v_proj): Linear(in_features=16, out_features=16, bias=True)
        (o_proj): Linear(in_features=16, out_features=16, bias=False)
      )
      (mlp): FF(
        (up_proj): Linear(in_features=16, out_features=32, bias=True)
        (down_proj): Linear(in_features=32, out_features=16, bias=True)
      )
    )
  )
  (lm_head): Linear(in_features=16, out_features=32, bias=False)
))";
  CHECK(deep->repr() == deep_repr);
  auto mlp = tools::build_host_model("mlp", {{"in", 10}, {"hidden", 20}, {"out", 2}});
  CHECK(keys_of(mlp->named_children()) == std::vector<std::string>{"lin0", "relu", "drop", "lin1", "lin2"});
  CHECK(keys_of(mlp->named_parameters()) ==
        std::vector<std::string>{"lin0.weight", "lin0.bias", "lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias"});
  CHECK(contains(error_of([] { tools::build_host_model("mlp", nlohmann::json::parse(R"({"in": 10})")); }), "'hidden'"));
  CHECK(contains(error_of([] { tools::build_host_model("cnn", nlohmann::json::object()); }), "unknown arch"));

  // a replaced child is used by the next forward
  auto dummy = tools::build_host_model("dummy", {{"V", 10}, {"D", 10}});
  Tensor ids = from_vector(std::vector<int64_t>{1, 2, 3}, {1, 3});
  Tensor y0 = dummy->forward(ids);
  struct Zero : Module {
    Zero() : Module("Zero") {}
    Tensor forward(const Tensor& x) override { return mul(x, 0.0); }
  };
  dummy->replace_module("linear", std::make_shared<Zero>());
  Tensor y1 = dummy->forward(ids);
  auto bias = dummy->get_submodule("lm_head")->param("bias");
  CHECK_ALLCLOSE(y1, bias.detach().unsqueeze(0).unsqueeze(0).expand({1, 3, 10}).contiguous(), 1e-6, 1e-6);
  CHECK(y0.shape() == y1.shape());

  // clone keeps the class (forward still works)
  auto dc = deep->clone();
  Tensor ids2 = from_vector(std::vector<int64_t>{0, 5, 31}, {1, 3});
  CHECK_ALLCLOSE(dc->forward(ids2), deep->forward(ids2), 0, 0);
}

// AdamW end to end against real torch.optim.AdamW: the lora_training_adamw golden
// (10 full-batch steps on an MLP with LoRA factors; here the LoRA wrapper is a
// minimal stand-in: y = base(x) + B(A(x)) * alpha/r).
TEST_CASE("AdamW reproduces the lora_training_adamw golden") {
  const std::string dir = "tests/data/peft/lora_training_adamw/";
  std::ifstream f(dir + "case.json");
  nlohmann::json c = nlohmann::json::parse(f);
  auto model = tools::build_host_model("mlp", c.at("arch_spec"));
  model->load_state_dict(io::load_safetensors(dir + "base.safetensors"));
  StateDict io_t = io::load_safetensors(dir + "io.safetensors");
  const double scaling = 8.0 / 4.0;

  struct FakeLora : Module {
    double s;
    explicit FakeLora(double s_) : Module("lora.Linear"), s(s_) {}
    Tensor forward(const Tensor& x) override {
      Tensor a = child("lora_A")(x);
      return add(child("base_layer")(x), mul(child("lora_B")(a), s));
    }
  };
  NamedTensors trainable;
  model->requires_grad_(false);
  for (std::string name : {"lin0", "lin1", "lin2"}) {
    auto base = std::dynamic_pointer_cast<Linear>(model->child_ptr(name));
    Tensor A = io_t.at("init." + name + ".lora_A.weight");
    Tensor B = io_t.at("init." + name + ".lora_B.weight");
    auto w = std::make_shared<FakeLora>(scaling);
    w->register_child("base_layer", base);
    w->register_child("lora_A", std::make_shared<Linear>(A.size(1), A.size(0), false, nullptr, DType::float32,
                                                         Device::meta));
    w->register_child("lora_B", std::make_shared<Linear>(B.size(1), B.size(0), false, nullptr, DType::float32,
                                                         Device::meta));
    StateDict sd;
    sd.set("lora_A.weight", A.clone());
    sd.set("lora_B.weight", B.clone());
    sd.set("base_layer.bias", io_t.at("init." + name + ".base_layer.bias").clone());
    CHECK(w->load_state_dict(sd, false).unexpected_keys.empty());
    model->replace_module(name, w);
  }
  for (auto& [n, p] : model->named_parameters())
    if (n.find("lora_") != std::string::npos || n.find("base_layer.bias") != std::string::npos) {
      p.requires_grad_(true);
      trainable.emplace_back(n, p);
    }
  REQUIRE(trainable.size() == 9);
  AdamWOptions o;
  o.lr = 1e-2;
  AdamW opt(trainable, o);
  Tensor x = io_t.at("x"), y = io_t.at("y");
  std::vector<double> losses;
  for (int s = 0; s < 10; ++s) {
    Tensor loss = mse_loss(model->forward(x), y);
    losses.push_back(loss.item());
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  CHECK_ALLCLOSE(from_vector(losses, {10}), io_t.at("losses"), 1e-5, 1e-7);
  for (std::string name : {"lin0", "lin1", "lin2"}) {
    CAPTURE(name);
    auto w = model->get_submodule(name);
    CHECK_ALLCLOSE(w->get_submodule("lora_A")->param("weight"), io_t.at("final." + name + ".lora_A.weight"), 1e-4, 1e-6);
    CHECK_ALLCLOSE(w->get_submodule("lora_B")->param("weight"), io_t.at("final." + name + ".lora_B.weight"), 1e-4, 1e-6);
    CHECK_ALLCLOSE(w->get_submodule("base_layer")->param("bias"), io_t.at("final." + name + ".base_layer.bias"), 1e-4,
                   1e-6);
  }
}

// ---- save_state_dict / load_state_dict(path): the README's user-module example ----
#include <unistd.h>

#include "io/safetensors.h"
#include "nn/serialize.h"

namespace {
struct TwoLayer : peft::nn::Module {
  explicit TwoLayer(peft::Generator& g) : Module("TwoLayer") {
    register_module("fc1", std::make_shared<peft::nn::Linear>(4, 8, true, &g));
    register_module("act", std::make_shared<peft::nn::GELU>());
    register_module("fc2", std::make_shared<peft::nn::Linear>(8, 2, true, &g));
  }
  peft::Tensor forward(const peft::Tensor& x) override {
    return child("fc2")(child("act")(child("fc1")(x)));
  }
};
}  // namespace

TEST_CASE("save_state_dict / load_state_dict round trip a user-defined module through a file") {
  using namespace peft;
  Generator g1(1), g2(2), gx(3);
  TwoLayer a(g1), b(g2);
  Tensor x = randn({3, 4}, gx);
  std::string path = "/tmp/peft_test_nn_" + std::to_string(::getpid()) + ".safetensors";
  nn::save_state_dict(a, path, {{"note", "two layers"}});
  CHECK(io::read_safetensors_metadata(path).at("format") == "pt");
  CHECK(io::read_safetensors_metadata(path).at("note") == "two layers");
  CHECK(testing::max_abs_diff(a(x), b(x)) > 1e-3);  // different seeds differ before loading
  nn::LoadResult r = nn::load_state_dict(b, path);
  CHECK(r.missing_keys.empty());
  CHECK(r.unexpected_keys.empty());
  CHECK_ALLCLOSE(b(x), a(x), 0, 0);
  // a model with an extra layer: strict load names the missing keys
  struct Bigger : TwoLayer {
    explicit Bigger(Generator& g) : TwoLayer(g) {
      register_module("fc3", std::make_shared<nn::Linear>(2, 2, true, &g));
    }
  } c(g1);
  try {
    nn::load_state_dict(c, path);
    FAIL("strict load with missing keys must throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("fc3.weight") != std::string::npos);
  }
  nn::LoadResult r2 = nn::load_state_dict(c, path, /*strict=*/false);
  CHECK(r2.missing_keys == std::vector<std::string>{"fc3.weight", "fc3.bias"});
  ::unlink(path.c_str());
}
