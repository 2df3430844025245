// The CUDA backend against the CPU: every kernel on random inputs drawn on the CPU, copied
// to cuda, run there and compared after the copy back; then a LoRA layer forward/backward
// and a few LoRA training steps on both devices. Without a CUDA device (or in a build
// without CUDA) every case is skipped, and the suite says so once.
#include <cmath>
#include <cstdio>

#include "adapters/peft.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "runtime/device.h"
#include "tests/testing.h"

using namespace peft;
using peft::testing::allclose_report;

namespace {

// Printed once at start-up, so a skipped suite is visible in the test log.
struct SkipNotice {
  SkipNotice() {
    if (!cuda_available())
      std::printf("test_cuda: no CUDA device present: every CUDA test is skipped (scripts/gpu_check.sh runs them "
                  "on a GPU machine)\n");
  }
} skip_notice;

#define CUDA_CASE(name) TEST_CASE(name * doctest::skip(!peft::cuda_available()))

const Device kCuda = Device::cuda;

Tensor on_cuda(const Tensor& t) { return t.to(kCuda); }
Tensor host(const Tensor& t) { return t.to(Device::cpu); }

#define CHECK_CLOSE(got, want, rtol, atol)                          \
  do {                                                              \
    std::string r_ = allclose_report(host(got), (want), rtol, atol); \
    CHECK_MESSAGE(r_.empty(), r_);                                  \
  } while (0)

Tensor rnd(const Shape& s, uint64_t seed, DType dt = DType::float32) {
  Generator g(seed);
  return randn(s, g, dt);
}

Tensor ids(const std::vector<int64_t>& v) { return from_vector(v, {int64_t(v.size())}); }

}  // namespace

CUDA_CASE("cuda: copies between devices keep the values, every dtype") {
  for (DType dt : {DType::float32, DType::float64, DType::bfloat16, DType::float16, DType::int64, DType::bool_}) {
    CAPTURE(dtype_name(dt));
    Tensor x = mul(rnd({3, 5}, 1), 3.0).to(dt);
    Tensor y = host(on_cuda(x));
    CHECK(y.dtype() == dt);
    CHECK(allclose_report(y.to(DType::float64), x.to(DType::float64), 0, 0).empty());
  }
}

CUDA_CASE("cuda: strided, dtype-converting copy and fill") {
  Tensor x = rnd({4, 6, 5}, 2);
  Tensor xc = on_cuda(x);
  CHECK_CLOSE(xc.permute({2, 0, 1}).contiguous(), x.permute({2, 0, 1}).contiguous(), 0, 0);
  CHECK_CLOSE(xc.slice(1, 1, 6, 2).to(DType::bfloat16).to(DType::float32),
              x.slice(1, 1, 6, 2).to(DType::bfloat16).to(DType::float32), 0, 0);
  CHECK_CLOSE(xc.to(DType::float16).to(DType::float64), x.to(DType::float16).to(DType::float64), 0, 0);
  CHECK_CLOSE(xc.to(DType::int64), x.to(DType::int64), 0, 0);
  Tensor f = zeros({3, 4}, DType::float32, kCuda);
  f.narrow(1, 1, 2).fill_(2.5);
  Tensor fw = zeros({3, 4});
  fw.narrow(1, 1, 2).fill_(2.5);
  CHECK_CLOSE(f, fw, 0, 0);
  CHECK_CLOSE(full({2, 2}, 7.0, DType::int64, kCuda), full({2, 2}, 7.0, DType::int64), 0, 0);
}

CUDA_CASE("cuda: every unary kind matches the CPU") {
  Tensor x = rnd({7, 33}, 3), pos = add(abs(x), 0.1);
  Tensor xc = on_cuda(x), pc = on_cuda(pos);
  struct U {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    bool positive;
  };
  std::vector<U> ops = {
      {"neg", [](const Tensor& t) { return neg(t); }, false},
      {"exp", [](const Tensor& t) { return exp(t); }, false},
      {"log", [](const Tensor& t) { return log(t); }, true},
      {"sqrt", [](const Tensor& t) { return sqrt(t); }, true},
      {"rsqrt", [](const Tensor& t) { return rsqrt(t); }, true},
      {"abs", [](const Tensor& t) { return abs(t); }, false},
      {"sign", [](const Tensor& t) { return sign(t); }, false},
      {"erf", [](const Tensor& t) { return erf(t); }, false},
      {"relu", [](const Tensor& t) { return relu(t); }, false},
      {"gelu", [](const Tensor& t) { return gelu(t); }, false},
      {"gelu_tanh", [](const Tensor& t) { return gelu_tanh(t); }, false},
      {"silu", [](const Tensor& t) { return silu(t); }, false},
      {"tanh", [](const Tensor& t) { return tanh(t); }, false},
      {"sigmoid", [](const Tensor& t) { return sigmoid(t); }, false},
      {"add_scalar", [](const Tensor& t) { return add(t, 1.5); }, false},
      {"mul_scalar", [](const Tensor& t) { return mul(t, -2.0); }, false},
      {"div_scalar", [](const Tensor& t) { return div(t, 3.0); }, false},
      {"rsub_scalar", [](const Tensor& t) { return rsub(t, 1.0); }, false},
      {"rdiv_scalar", [](const Tensor& t) { return rdiv(t, 2.0); }, true},
      {"pow_scalar", [](const Tensor& t) { return pow(t, 1.7); }, true},
      {"pow_scalar 2", [](const Tensor& t) { return pow(t, 2.0); }, false},
      {"clamp", [](const Tensor& t) { return clamp(t, -0.5, 0.5); }, false},
      {"isfinite", [](const Tensor& t) { return isfinite(t); }, false},
      {"logical_not", [](const Tensor& t) { return logical_not(gt(t, 0.0)); }, false},
      {"eq_scalar", [](const Tensor& t) { return eq(relu(t), 0.0); }, false},
      {"ne_scalar", [](const Tensor& t) { return ne(relu(t), 0.0); }, false},
      {"gt_scalar", [](const Tensor& t) { return gt(t, 0.1); }, false},
      {"lt_scalar", [](const Tensor& t) { return lt(t, 0.1); }, false},
      {"ge_scalar", [](const Tensor& t) { return ge(t, 0.1); }, false},
      {"le_scalar", [](const Tensor& t) { return le(t, 0.1); }, false},
  };
  for (const U& u : ops) {
    CAPTURE(u.name);
    const Tensor& in = u.positive ? pos : x;
    const Tensor& inc = u.positive ? pc : xc;
    CHECK_CLOSE(u.f(inc), u.f(in), 1e-5, 1e-6);
    // strided input (a transposed view) and float64
    CHECK_CLOSE(u.f(inc.t()), u.f(in.t()), 1e-5, 1e-6);
    CHECK_CLOSE(u.f(inc.to(DType::float64)), u.f(in.to(DType::float64)), 1e-12, 1e-12);
  }
  Tensor i = from_vector(std::vector<int64_t>{-3, 0, 5, 7}, {4});
  CHECK_CLOSE(neg(on_cuda(i)), neg(i), 0, 0);
  CHECK_CLOSE(abs(on_cuda(i)), abs(i), 0, 0);
  CHECK_CLOSE(mul(on_cuda(i), 3.0), mul(i, 3.0), 0, 0);
}

CUDA_CASE("cuda: every binary kind matches the CPU, with broadcasting") {
  Tensor a = rnd({5, 1, 7}, 4), b = rnd({1, 6, 7}, 5);
  Tensor pa = add(abs(a), 0.5);
  Tensor ac = on_cuda(a), bc = on_cuda(b), pac = on_cuda(pa);
  CHECK_CLOSE(add(ac, bc), add(a, b), 1e-6, 1e-6);
  CHECK_CLOSE(sub(ac, bc), sub(a, b), 1e-6, 1e-6);
  CHECK_CLOSE(mul(ac, bc), mul(a, b), 1e-6, 1e-6);
  CHECK_CLOSE(div(ac, add(abs(bc), 0.5)), div(a, add(abs(b), 0.5)), 1e-6, 1e-6);
  CHECK_CLOSE(pow(pac, bc), pow(pa, b), 1e-5, 1e-6);
  CHECK_CLOSE(maximum(ac, bc), maximum(a, b), 0, 0);
  CHECK_CLOSE(tanh_backward(ac.expand({5, 6, 7}), bc.expand({5, 6, 7})), tanh_backward(a.expand({5, 6, 7}), b.expand({5, 6, 7})), 1e-6, 1e-6);
  CHECK_CLOSE(gelu_tanh_backward(ac.expand({5, 6, 7}), bc.expand({5, 6, 7})),
              gelu_tanh_backward(a.expand({5, 6, 7}), b.expand({5, 6, 7})), 1e-5, 1e-6);
  CHECK_CLOSE(gelu_backward(ac.expand({5, 6, 7}), bc.expand({5, 6, 7})),
              gelu_backward(a.expand({5, 6, 7}), b.expand({5, 6, 7})), 1e-5, 1e-6);
  CHECK_CLOSE(eq(ac, ac), eq(a, a), 0, 0);
  CHECK_CLOSE(ne(ac, bc), ne(a, b), 0, 0);
  CHECK_CLOSE(gt(ac, bc), gt(a, b), 0, 0);
  CHECK_CLOSE(lt(ac, bc), lt(a, b), 0, 0);
  CHECK_CLOSE(ge(ac, bc), ge(a, b), 0, 0);
  CHECK_CLOSE(le(ac, bc), le(a, b), 0, 0);
  Tensor cond = gt(a, 0.0);
  CHECK_CLOSE(where(on_cuda(cond), ac, bc), where(cond, a, b), 0, 0);
  CHECK_CLOSE(masked_fill(ac, on_cuda(cond), -1.0), masked_fill(a, cond, -1.0), 0, 0);
}

CUDA_CASE("cuda: reductions (sum, mean, amax, argmax, norm) over any dims") {
  Tensor x = rnd({6, 9, 130}, 6);
  Tensor xc = on_cuda(x);
  for (std::vector<int64_t> dims : {std::vector<int64_t>{}, {0}, {1}, {2}, {0, 2}, {1, 2}}) {
    CAPTURE(dims.size());
    CHECK_CLOSE(sum(xc, dims), sum(x, dims), 1e-5, 1e-5);
    CHECK_CLOSE(mean(xc, dims, true), mean(x, dims, true), 1e-5, 1e-6);
    CHECK_CLOSE(amax(xc, dims), amax(x, dims), 0, 0);
    CHECK_CLOSE(norm(xc, dims), norm(x, dims), 1e-5, 1e-5);
  }
  CHECK_CLOSE(sum(xc.transpose(0, 2), {1}), sum(x.transpose(0, 2), {1}), 1e-5, 1e-5);
  for (int64_t d = 0; d < 3; ++d) CHECK_CLOSE(argmax(xc, d), argmax(x, d), 0, 0);
  Tensor big = rnd({20000}, 7);
  CHECK_CLOSE(sum(on_cuda(big)), sum(big), 1e-5, 1e-4);
  CHECK_CLOSE(argmax(on_cuda(big), 0), argmax(big, 0), 0, 0);
  Tensor wide = rnd({4096, 64}, 8);  // many outputs: the thread-per-output kernel
  CHECK_CLOSE(sum(on_cuda(wide), {0}), sum(wide, {0}), 1e-5, 1e-4);
  Tensor iv = from_vector(std::vector<int64_t>{3, -1, 9, 9, 2}, {5});
  CHECK_CLOSE(sum(on_cuda(iv)), sum(iv), 0, 0);
  CHECK_CLOSE(argmax(on_cuda(iv), 0), argmax(iv, 0), 0, 0);  // the first maximum
}

CUDA_CASE("cuda: softmax and log_softmax along every dim") {
  Tensor x = mul(rnd({5, 300, 3}, 9), 4.0);
  Tensor xc = on_cuda(x);
  for (int64_t d = 0; d < 3; ++d) {
    CHECK_CLOSE(softmax(xc, d), softmax(x, d), 1e-5, 1e-7);
    CHECK_CLOSE(log_softmax(xc, d), log_softmax(x, d), 1e-5, 1e-5);
  }
  CHECK_CLOSE(softmax(xc.to(DType::float64), 1), softmax(x.to(DType::float64), 1), 1e-12, 1e-14);
}

CUDA_CASE("cuda: gemm float32, float64 and bfloat16, batched and strided") {
  Tensor a = rnd({3, 37, 65}, 10), b = rnd({3, 65, 29}, 11);
  Tensor ac = on_cuda(a), bc = on_cuda(b);
  CHECK_CLOSE(matmul(ac, bc), matmul(a, b), 1e-4, 1e-4);
  CHECK_CLOSE(matmul(ac.transpose(1, 2).contiguous().transpose(1, 2), bc), matmul(a, b), 1e-4, 1e-4);
  CHECK_CLOSE(matmul(bc.transpose(1, 2), ac.transpose(1, 2)), matmul(b.transpose(1, 2), a.transpose(1, 2)), 1e-4,
              1e-4);
  // neither row- nor column-contiguous: copied first
  Tensor s = rnd({40, 66}, 12);
  CHECK_CLOSE(matmul(on_cuda(s).slice(0, 0, 40, 2).slice(1, 0, 66, 2), on_cuda(b.select(0, 0).slice(0, 0, 33))),
              matmul(s.slice(0, 0, 40, 2).slice(1, 0, 66, 2), b.select(0, 0).slice(0, 0, 33)), 1e-4, 1e-4);
  // broadcast batch (stride 0) and 2-D
  CHECK_CLOSE(matmul(ac, bc.select(0, 0)), matmul(a, b.select(0, 0)), 1e-4, 1e-4);
  CHECK_CLOSE(matmul(ac.to(DType::float64), bc.to(DType::float64)),
              matmul(a.to(DType::float64), b.to(DType::float64)), 1e-12, 1e-12);
  // bfloat16 on tensor cores, float32 accumulation: one bf16 rounding of the result apart
  Tensor ab = a.to(DType::bfloat16), bb = b.to(DType::bfloat16);
  Tensor gb = matmul(on_cuda(ab), on_cuda(bb));
  CHECK(gb.dtype() == DType::bfloat16);
  CHECK_CLOSE(gb.to(DType::float32), matmul(ab, bb).to(DType::float32), 1e-2, 1e-2);
  Tensor w = rnd({29, 65}, 13), bias = rnd({29}, 14);
  CHECK_CLOSE(linear(ac, on_cuda(w), on_cuda(bias)), linear(a, w, bias), 1e-4, 1e-4);
  CHECK_CLOSE(linear(on_cuda(ab), on_cuda(w.to(DType::bfloat16)), on_cuda(bias.to(DType::bfloat16))).to(DType::float32),
              linear(ab, w.to(DType::bfloat16), bias.to(DType::bfloat16)).to(DType::float32), 1e-2, 2e-2);
}

CUDA_CASE("cuda: index_select, index_add, gather, scatter_add, embedding") {
  Tensor x = rnd({6, 5, 4}, 15);
  Tensor xc = on_cuda(x);
  Tensor idx = ids({4, 0, 4, 2});
  for (int64_t d = 0; d < 3; ++d) {
    CAPTURE(d);
    Tensor id = d == 2 ? ids({3, 0, 3}) : idx;
    CHECK_CLOSE(index_select(xc, d, on_cuda(id)), index_select(x, d, id), 0, 0);
    Shape ss = x.shape();
    ss[size_t(d)] = id.numel();
    Tensor src = rnd(ss, 16);
    CHECK_CLOSE(index_add(xc, d, on_cuda(id), on_cuda(src)), index_add(x, d, id, src), 1e-6, 1e-6);
  }
  Tensor gi = from_vector(std::vector<int64_t>{0, 2, 1, 1, 0, 2}, {3, 2});
  Tensor g2 = rnd({3, 3}, 17);
  CHECK_CLOSE(gather(on_cuda(g2), 1, on_cuda(gi)), gather(g2, 1, gi), 0, 0);
  Tensor sv = rnd({3, 2}, 18);
  CHECK_CLOSE(scatter_add(on_cuda(g2), 1, on_cuda(gi), on_cuda(sv)), scatter_add(g2, 1, gi, sv), 1e-6, 1e-6);
  Tensor table = rnd({10, 8}, 19);
  Tensor tok = from_vector(std::vector<int64_t>{1, 9, 9, 0, 3, 1}, {2, 3});
  CHECK_CLOSE(embedding(on_cuda(tok), on_cuda(table)), embedding(tok, table), 0, 0);
  // a bad index is an exception naming the op, not a device fault
  std::string e = peft::testing::error_of([&] { index_select(xc, 0, on_cuda(ids({6}))); });
  CHECK(e.find("[index_select]") != std::string::npos);
}

CUDA_CASE("cuda: random numbers equal the CPU's for the same seed") {
  for (DType dt : {DType::float32, DType::float64}) {
    Generator g1(42), g2(42);
    Tensor u = uniform({1001}, -2.0, 3.0, g1, dt), uc = uniform({1001}, -2.0, 3.0, g2, dt, kCuda);
    CHECK_CLOSE(uc, u, 0, 0);
    Tensor n = randn({999}, g1, dt), nc = randn({999}, g2, dt, kCuda);
    const double tol = dt == DType::float32 ? 1e-6 : 1e-12;  // cos / log may differ in the last double bit
    CHECK_CLOSE(nc, n, tol, tol);
    CHECK(g1.counter() == g2.counter());
  }
  Generator g1(7), g2(7);
  Tensor x = ones({4000});
  CHECK_CLOSE(dropout(on_cuda(x), 0.3, true, g2), dropout(x, 0.3, true, g1), 0, 0);
}

CUDA_CASE("cuda: layer_norm and rms_norm forward and backward") {
  for (DType dt : {DType::float32, DType::float64}) {
    CAPTURE(dtype_name(dt));
    const double tol = dt == DType::float32 ? 1e-4 : 1e-10;
    Tensor x = rnd({7, 300}, 20, dt), w = rnd({300}, 21, dt), b = rnd({300}, 22, dt), up = rnd({7, 300}, 23, dt);
    auto run = [&](Device dev, bool rms) {
      Tensor xd = x.to(dev).detach().requires_grad_(), wd = w.to(dev).detach().requires_grad_(),
             bd = b.to(dev).detach().requires_grad_();
      Tensor y = rms ? rms_norm(xd, wd, 1e-6) : layer_norm(xd, {300}, wd, bd, 1e-5);
      y.backward(up.to(dev));
      return std::vector<Tensor>{host(y), host(xd.grad()), host(wd.grad()), rms ? Tensor() : host(bd.grad())};
    };
    for (bool rms : {false, true}) {
      CAPTURE(rms);
      auto c = run(kCuda, rms), r = run(Device::cpu, rms);
      for (size_t i = 0; i < c.size(); ++i)
        if (r[i].defined()) CHECK_CLOSE(c[i], r[i], tol, tol);
    }
  }
  // rms_norm of a bfloat16 input rounds x̂ to bfloat16 as LlamaRMSNorm does
  Tensor xb = rnd({5, 64}, 24, DType::bfloat16), wb = rnd({64}, 25, DType::bfloat16);
  CHECK_CLOSE(rms_norm(on_cuda(xb), on_cuda(wb), 1e-6).to(DType::float32),
              rms_norm(xb, wb, 1e-6).to(DType::float32), 1e-2, 1e-2);
}

CUDA_CASE("cuda: rotary embedding forward and backward") {
  Tensor pos = from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5, 7, 9, 11, 13}, {2, 5});
  auto [c, s] = rotary_cos_sin(pos, 16, 10000.0);
  Tensor x = rnd({2, 5, 3, 16}, 26).permute({0, 2, 1, 3});  // [B, H, T, D], strided
  Tensor up = rnd({2, 3, 5, 16}, 27);
  auto run = [&](Device dev) {
    Tensor xd = x.to(dev).detach().requires_grad_();
    Tensor y = rotary_embedding(xd, c.to(dev), s.to(dev));
    y.backward(up.to(dev));
    return std::pair{host(y), host(xd.grad())};
  };
  auto [yc, gc] = run(kCuda);
  auto [yr, gr] = run(Device::cpu);
  CHECK_CLOSE(yc, yr, 1e-5, 1e-6);
  CHECK_CLOSE(gc, gr, 1e-5, 1e-6);
}

CUDA_CASE("cuda: scaled_dot_product_attention forward and backward, mask, causal, GQA") {
  for (bool causal : {false, true})
    for (bool masked : {false, true}) {
      CAPTURE(causal);
      CAPTURE(masked);
      Tensor q = rnd({2, 4, 5, 16}, 28), k = rnd({2, 7, 2, 16}, 29).permute({0, 2, 1, 3}),
             v = rnd({2, 2, 7, 16}, 30), up = rnd({2, 4, 5, 16}, 31);
      Tensor mask = from_vector(std::vector<int64_t>{1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0}, {2, 7})
                        .to(DType::bool_);
      auto run = [&](Device dev) {
        Tensor qd = q.to(dev).detach().requires_grad_(), kd = k.to(dev).detach().requires_grad_(),
               vd = v.to(dev).detach().requires_grad_();
        Tensor y = scaled_dot_product_attention(qd, kd, vd, masked ? mask.to(dev) : Tensor(), causal);
        y.backward(up.to(dev));
        return std::vector<Tensor>{host(y), host(qd.grad()), host(kd.grad()), host(vd.grad())};
      };
      auto c = run(kCuda), r = run(Device::cpu);
      for (size_t i = 0; i < c.size(); ++i) {
        CAPTURE(i);
        CHECK_CLOSE(c[i], r[i], 1e-4, 1e-5);
      }
    }
}

namespace {

// A host module with Linear "lin" (d -> d) and LoRA r on it, B drawn non-zero.
std::shared_ptr<nn::Module> lora_host(int64_t d, int64_t r) {
  Generator g(0);
  auto m = std::make_shared<nn::Module>("Host");
  m->register_module("lin", std::make_shared<nn::Linear>(d, d, true, &g));
  LoraConfig cfg;
  cfg.r = r;
  cfg.lora_alpha = double(2 * r);
  cfg.target_modules = TargetModules::list({"lin"});
  inject_adapter_in_model(cfg, *m);
  NoGradGuard ng;
  m->child("lin").child("lora_B").child("default").param("weight").normal_(0.0, 0.02, g);
  return m;
}

}  // namespace

CUDA_CASE("cuda: a LoRA layer's forward (fused rank-r path) and backward match the CPU") {
  auto cpu_m = lora_host(64, 8), cuda_m = lora_host(64, 8);
  cuda_m->to(kCuda);
  Tensor x = rnd({2, 10, 64}, 32), up = rnd({2, 10, 64}, 33);
  {
    NoGradGuard ng;  // the no-grad path: two gemm calls accumulating into y
    CHECK_CLOSE(cuda_m->child("lin").forward(on_cuda(x)), cpu_m->child("lin").forward(x), 1e-4, 1e-5);
  }
  Tensor xc = on_cuda(x).detach().requires_grad_(), xr = x.detach().requires_grad_();
  cuda_m->child("lin").forward(xc).backward(on_cuda(up));
  cpu_m->child("lin").forward(xr).backward(up);
  CHECK_CLOSE(xc.grad(), xr.grad(), 1e-4, 1e-5);
  auto pc = cuda_m->named_parameters(), pr = cpu_m->named_parameters();
  REQUIRE(pc.size() == pr.size());
  for (size_t i = 0; i < pc.size(); ++i) {
    CAPTURE(pc[i].first);
    if (pr[i].second.grad().defined()) CHECK_CLOSE(pc[i].second.grad(), pr[i].second.grad(), 1e-4, 1e-5);
  }
  // bfloat16: the same layer in bf16 on both devices
  cpu_m->to(DType::bfloat16);
  cuda_m->to(DType::bfloat16);
  NoGradGuard ng;
  CHECK_CLOSE(cuda_m->child("lin").forward(on_cuda(x.to(DType::bfloat16))).to(DType::float32),
              cpu_m->child("lin").forward(x.to(DType::bfloat16)).to(DType::float32), 2e-2, 2e-2);
}

CUDA_CASE("cuda: mixed-batch LoRA inference (a different adapter per row) matches the CPU") {
  auto cpu_m = lora_host(32, 4), cuda_m = lora_host(32, 4);
  for (auto* m : {cpu_m.get(), cuda_m.get()}) {
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.target_modules = TargetModules::list({"lin"});
    inject_adapter_in_model(cfg, *m, "other");
    Generator g(5);
    NoGradGuard ng;
    m->child("lin").child("lora_B").child("other").param("weight").normal_(0.0, 0.05, g);
  }
  cuda_m->to(kCuda);
  std::vector<std::string> names = {"default", "other", "__base__", "other"};
  Tensor x = rnd({4, 3, 32}, 34);
  NoGradGuard ng;
  Tensor on_gpu = forward_mixed_batch(*cuda_m, names, [&] { return cuda_m->child("lin").forward(on_cuda(x)); });
  Tensor on_cpu = forward_mixed_batch(*cpu_m, names, [&] { return cpu_m->child("lin").forward(x); });
  CHECK_CLOSE(on_gpu, on_cpu, 1e-4, 1e-5);
}

CUDA_CASE("cuda: a few LoRA training steps follow the CPU's losses") {
  auto run = [](Device dev) {
    auto m = lora_host(48, 8);
    m->to(dev);
    m->train();
    nn::NamedTensors trainable;
    for (const auto& [n, p] : m->named_parameters())
      if (p.requires_grad()) trainable.emplace_back(n, p);
    nn::AdamW opt(trainable, {.lr = 1e-2, .weight_decay = 0.0});
    Tensor x = rnd({16, 48}, 35).to(dev), target = rnd({16, 48}, 36).to(dev);
    std::vector<double> losses;
    for (int step = 0; step < 5; ++step) {
      Tensor loss = mse_loss(m->child("lin").forward(x), target);
      loss.backward();
      opt.step();
      opt.zero_grad();
      losses.push_back(loss.item());
    }
    return losses;
  };
  auto c = run(kCuda), r = run(Device::cpu);
  for (size_t i = 0; i < c.size(); ++i) {
    CAPTURE(i);
    CHECK(c[i] == doctest::Approx(r[i]).epsilon(1e-4));
  }
  CHECK(c.back() < c.front());
}

TEST_CASE("cuda: device names parse, and cuda requests without a device fail clearly") {
  CHECK(parse_device("cpu") == Device::cpu);
  CHECK(parse_device("meta") == Device::meta);
  std::string e = peft::testing::error_of([] { parse_device("gpu"); });
  CHECK(e.find("cuda:N") != std::string::npos);
  if (cuda_available()) {
    CHECK(parse_device("cuda") == Device::cuda);
    CHECK(parse_device("cuda:0") == Device::cuda);
    e = peft::testing::error_of([] { parse_device("cuda:" + std::to_string(cuda_device_count())); });
    CHECK(e.find("cuda:") != std::string::npos);
  } else {
    e = peft::testing::error_of([] { parse_device("cuda:0"); });
    CHECK(e.find("CUDA") != std::string::npos);
    e = peft::testing::error_of([] { parse_device("cuda"); });
    CHECK(e.find("CUDA") != std::string::npos);
    e = peft::testing::error_of([] { zeros({2}, DType::float32, Device::cuda); });
    CHECK(e.find("CUDA") != std::string::npos);
  }
}
