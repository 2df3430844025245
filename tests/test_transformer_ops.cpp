// Transformer ops (runtime/ops_transformer.cpp): the fused kernels against plain
// compositions of other ops written here, backward against central finite differences,
// meta-device shape inference, and the argument errors.
#include <cmath>

#include "tests/testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, DType dt = DType::float64) {
  Generator g(seed);
  return randn(s, g, dt);
}

// softmax(q kᵀ·scale) v with the masks, by the definition (GQA by repeating kv heads).
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal) {
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3), Hkv = k.size(1), Tk = k.size(2);
  Tensor kk = k, vv = v;
  if (Hq != Hkv) {
    std::vector<Tensor> ks, vs;
    for (int64_t h = 0; h < Hq; ++h) {
      ks.push_back(k.narrow(1, h / (Hq / Hkv), 1));
      vs.push_back(v.narrow(1, h / (Hq / Hkv), 1));
    }
    kk = cat(ks, 1), vv = cat(vs, 1);
  }
  Tensor s = mul(matmul(q, kk.transpose(2, 3)), 1.0 / std::sqrt(double(D)));
  std::vector<double> hidden(size_t(B * Tq * Tk), 0.0);
  std::vector<int64_t> mv = mask.defined() ? mask.to(DType::int64).to_vector<int64_t>() : std::vector<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t j = 0; j < Tk; ++j) {
        bool h = (mask.defined() && mv[size_t(b * Tk + j)] == 0) || (causal && j > Tk - Tq + i);
        hidden[size_t((b * Tq + i) * Tk + j)] = h ? 1.0 : 0.0;
      }
  Tensor hm = ne(from_vector(hidden, {B, 1, Tq, Tk}, DType::float64), 0.0);
  Tensor p = softmax(masked_fill(s, hm, -INFINITY), -1);
  p = masked_fill(p, ne(p, p), 0.0);  // rows with no visible key: NaN -> 0
  return matmul(p, vv);
}

Tensor rotate_half(const Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return cat({neg(x.narrow(-1, h, h)), x.narrow(-1, 0, h)}, -1);
}

}  // namespace

TEST_CASE("gelu_tanh matches its formula and finite differences") {
  Tensor x = mul(rnd({3, 5}, 1), 3.0);
  Tensor ref = mul(mul(x, 0.5), add(tanh(mul(add(x, mul(pow(x, 3.0), 0.044715)), std::sqrt(2.0 / M_PI))), 1.0));
  CHECK_ALLCLOSE(gelu_tanh(x), ref, 1e-12, 1e-12);
  CHECK_ALLCLOSE(gelu_tanh(x.to(DType::float32)), ref, 1e-5, 1e-6);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return gelu_tanh(in[0]); }, {x});
  // float32 backward against the float64 one
  Tensor x32 = x.to(DType::float32).requires_grad_(true);
  sum(gelu_tanh(x32)).backward();
  Tensor x64 = x.detach().requires_grad_(true);
  sum(gelu_tanh(x64)).backward();
  CHECK_ALLCLOSE(x32.grad(), x64.grad(), 1e-5, 1e-6);
  CHECK(gelu_tanh(empty({2, 7}, DType::bfloat16, Device::meta)).desc() == "bfloat16[2, 7] meta");
  // NaN stays NaN (a fuzzed checkpoint with NaN weights reached the float32 kernel's integer
  // conversion of NaN, undefined behaviour, before the fix); huge inputs saturate
  Tensor odd = from_vector(std::vector<float>{NAN, 1e30f, -1e30f, 50.f}, {4});
  std::vector<float> g = gelu_tanh(odd).to_vector<float>(), t = tanh(odd).to_vector<float>();
  CHECK(std::isnan(g[0]));
  CHECK(std::isnan(t[0]));
  CHECK(g[1] == 1e30f);
  CHECK(t[1] == 1.0f);
  CHECK(t[2] == -1.0f);
  CHECK(g[3] == 50.f);
  CHECK(error_of([] { gelu_tanh(zeros({2}, DType::int64)); }).find("[gelu_tanh] needs a floating-point") !=
        std::string::npos);
}

TEST_CASE("erf and gelu in float32: within 2 ulp of float64 over the whole range, fused gelu backward") {
  // a sweep of float32 values: [-6, 6] densely, tiny magnitudes, and values where erf is 1
  std::vector<float> xs;
  for (int i = -60000; i <= 60000; ++i) xs.push_back(float(i) * 1e-4f);
  for (float t = 1e-30f; t < 1e-2f; t *= 1.37f) xs.insert(xs.end(), {t, -t});
  for (float v : {0.927734375f, 0.92773443f, 3.99f, 4.0f, 4.5f, 9.f, 1e4f, 3e38f}) xs.insert(xs.end(), {v, -v});
  const Tensor x = from_vector(xs, {int64_t(xs.size())});
  const std::vector<float> e = erf(x).to_vector<float>(), g = gelu(x).to_vector<float>();
  int bad_erf = 0, bad_gelu = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double ref = std::erf(double(xs[i]));
    const double ulp = std::nextafter(std::fabs(float(ref)), INFINITY) - std::fabs(float(ref));
    if (!(std::fabs(double(e[i]) - ref) <= 2 * ulp)) ++bad_erf;
    const double gref = 0.5 * double(xs[i]) * (1 + std::erf(double(xs[i]) / std::sqrt(2.0)));
    // 1 + erf(x) cancels for negative x: erf's 2 ulp (at most 1.2e-7) times 0.5·|x| is the floor
    if (!(std::fabs(double(g[i]) - gref) <= 3e-7 * std::fabs(gref) + 6e-8 * std::fabs(double(xs[i])))) ++bad_gelu;
  }
  CHECK(bad_erf == 0);
  CHECK(bad_gelu == 0);
  // special values; a strided input takes the scalar kernel, which must give the same bits
  Tensor odd = from_vector(std::vector<float>{NAN, INFINITY, -INFINITY, 0.f, -0.f}, {5});
  std::vector<float> eo = erf(odd).to_vector<float>(), go = gelu(odd).to_vector<float>();
  CHECK(std::isnan(eo[0]));
  CHECK(std::isnan(go[0]));
  CHECK(eo[1] == 1.f);
  CHECK(eo[2] == -1.f);
  CHECK(go[1] == INFINITY);
  CHECK(std::isnan(go[2]));  // -inf · 0, as the formula and PyTorch (float32 and float64)
  CHECK((eo[3] == 0.f && !std::signbit(eo[3]) && eo[4] == 0.f && std::signbit(eo[4])));
  Tensor x2 = x.narrow(0, 0, 120000).reshape({300, 400});
  Tensor strided = x2.t().contiguous().t();
  CHECK(!strided.is_contiguous());
  CHECK_ALLCLOSE(erf(strided), erf(x2), 0, 0);
  CHECK_ALLCLOSE(gelu(strided), gelu(x2), 0, 0);
  Tensor gs = rnd({300, 400}, 9, DType::float32);
  CHECK_ALLCLOSE(gelu_backward(gs, strided), gelu_backward(gs, x2), 0, 0);

  // the fused backward against the float64 one (float64 is checked by finite differences below)
  Tensor xd = mul(rnd({4, 50}, 5), 2.5);
  Tensor x32 = xd.to(DType::float32).requires_grad_(true), x64 = xd.detach().requires_grad_(true);
  Tensor w = rnd({4, 50}, 6);
  sum(mul(gelu(x32), w.to(DType::float32))).backward();
  sum(mul(gelu(x64), w)).backward();
  CHECK_ALLCLOSE(x32.grad(), x64.grad(), 1e-5, 1e-6);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return gelu(in[0]); }, {xd});
  // gelu_backward is itself differentiable in both arguments (second derivatives of gelu)
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return gelu_backward(in[0], in[1]); },
                  (std::vector<Tensor>{rnd({3, 4}, 7), mul(rnd({3, 4}, 8), 2.0)}));
  CHECK(gelu_backward(empty({2, 7}, DType::bfloat16, Device::meta), empty({2, 7}, DType::bfloat16, Device::meta))
            .desc() == "bfloat16[2, 7] meta");
}

TEST_CASE("layer_norm: fused kernel against its definition, gradients by finite differences") {
  Tensor x = rnd({2, 3, 6}, 2), w = rnd({6}, 3), b = rnd({6}, 4);
  Tensor mu = mean(x, {-1}, true), xc = sub(x, mu);
  Tensor ref = add(mul(mul(xc, rsqrt(add(mean(mul(xc, xc), {-1}, true), 1e-5))), w), b);
  CHECK_ALLCLOSE(layer_norm(x, {6}, w, b), ref, 1e-12, 1e-12);
  CHECK_ALLCLOSE(layer_norm(x.to(DType::float32), {6}, w.to(DType::float32), b.to(DType::float32)), ref, 1e-5,
                 1e-5);
  // over two trailing dims, and a permuted (non-contiguous) input
  Tensor xt = rnd({3, 4, 2}, 5).permute({1, 0, 2});  // [4, 3, 2]
  Tensor m2 = mean(xt, {1, 2}, true), c2 = sub(xt, m2);
  CHECK_ALLCLOSE(layer_norm(xt, {3, 2}, Tensor(), Tensor(), 1e-3),
                 mul(c2, rsqrt(add(mean(mul(c2, c2), {1, 2}, true), 1e-3))), 1e-12, 1e-12);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return layer_norm(in[0], {6}, in[1], in[2]); }, {x, w, b});
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return layer_norm(in[0], {3, 2}, Tensor(), Tensor()); },
                  {xt});
  // only the weight needs a gradient
  Tensor wl = w.detach().requires_grad_(true);
  sum(mul(layer_norm(x, {6}, wl, b), x)).backward();
  Tensor xh = mul(xc, rsqrt(add(mean(mul(xc, xc), {-1}, true), 1e-5)));
  CHECK_ALLCLOSE(wl.grad(), sum(mul(xh, x), {0, 1}), 1e-10, 1e-10);
  CHECK(layer_norm(empty({5, 8}, DType::float32, Device::meta), {8}, Tensor(), Tensor()).desc() ==
        "float32[5, 8] meta");
}

TEST_CASE("rms_norm: LlamaRMSNorm's arithmetic, gradients by finite differences") {
  Tensor x = rnd({2, 3, 8}, 6), w = rnd({8}, 7);
  Tensor ref = mul(w, mul(x, rsqrt(add(mean(mul(x, x), {-1}, true), 1e-6))));
  CHECK_ALLCLOSE(rms_norm(x, w, 1e-6), ref, 1e-12, 1e-12);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1], 1e-6); }, {x, w});
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return rms_norm(in[0], Tensor(), 1e-6); },
                  {x.transpose(0, 1)});
  // float32 backward (its own kernel instantiation) against float64
  {
    Tensor x32 = x.to(DType::float32).requires_grad_(true), w32 = w.to(DType::float32).requires_grad_(true);
    Tensor x64 = x.detach().requires_grad_(true), w64 = w.detach().requires_grad_(true);
    Tensor seed = rnd(x.shape(), 9);
    sum(mul(rms_norm(x32, w32, 1e-6), seed.to(DType::float32))).backward();
    sum(mul(rms_norm(x64, w64, 1e-6), seed)).backward();
    CHECK_ALLCLOSE(x32.grad(), x64.grad(), 1e-4, 1e-5);
    CHECK_ALLCLOSE(w32.grad(), w64.grad(), 1e-4, 1e-5);
  }
  // bfloat16: statistics in float32, x̂ rounded to bfloat16, then the bfloat16 weight multiplies
  Tensor xb = x.to(DType::bfloat16), wb = w.to(DType::bfloat16);
  Tensor xf = xb.to(DType::float32);
  Tensor hat = mul(xf, rsqrt(add(mean(mul(xf, xf), {-1}, true), 1e-6))).to(DType::bfloat16);
  Tensor refb = mul(wb, hat);
  Tensor got = rms_norm(xb, wb, 1e-6);
  CHECK(got.dtype() == DType::bfloat16);
  CHECK(max_abs_diff(got, refb) == 0.0);
  CHECK(error_of([&] { rms_norm(x, rnd({7}, 1), 1e-6); }).find("[rms_norm] weight float64[7] must be [8]") !=
        std::string::npos);
  CHECK(rms_norm(empty({4, 8}, DType::float16, Device::meta), empty({8}, DType::float16, Device::meta), 1e-6)
            .desc() == "float16[4, 8] meta");
}

TEST_CASE("rotary_embedding: transformers' apply_rotary_pos_emb, gradient by finite differences") {
  const int64_t B = 2, H = 3, T = 5, D = 8;
  Tensor pos = from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 7, 8, 9, 10, 11}, {B, T});
  auto [c, s] = rotary_cos_sin(pos, D, 10000.0, DType::float64);
  REQUIRE(c.shape() == Shape{B, T, D});
  // position 9 (row 1, t 2), frequency i = 1: 9 / 10000^(2/8), float32 as transformers
  const float inv1 = 1.0f / std::pow(10000.0f, 2.0f / 8.0f);
  CHECK(c.at({1, 2, 1}) == double(std::cos(9.0f * inv1)));
  CHECK(s.at({1, 2, 5}) == double(std::sin(9.0f * inv1)));
  Tensor x = rnd({B, T, H, D}, 8).transpose(1, 2);  // [B, H, T, D] view, as after split_heads
  Tensor ref = add(mul(x, c.unsqueeze(1)), mul(rotate_half(x), s.unsqueeze(1)));
  CHECK_ALLCLOSE(rotary_embedding(x, c, s), ref, 1e-12, 1e-12);
  Tensor c2 = c.narrow(0, 0, 1).squeeze(0), s2 = s.narrow(0, 0, 1).squeeze(0);  // [T, D]
  CHECK_ALLCLOSE(rotary_embedding(x, c2, s2), add(mul(x, c2), mul(rotate_half(x), s2)), 1e-12, 1e-12);
  CHECK_GRADCHECK([&](const std::vector<Tensor>& in) { return rotary_embedding(in[0], c, s); }, {x});
  CHECK(error_of([&] { rotary_embedding(rnd({1, 1, 5, 7}, 1), c, s); }).find("head dim 7 must be even") !=
        std::string::npos);
  CHECK(error_of([&] { rotary_embedding(rnd({2, 3, 4, 8}, 1), c, s); }).find("do not fit x") !=
        std::string::npos);
  CHECK(error_of([&] { rotary_cos_sin(pos, D, 0.0); }).find("rope_theta must be positive") != std::string::npos);
}

TEST_CASE("scaled_dot_product_attention: padding, causal, grouped-query, tiles, strides") {
  struct Case {
    int64_t B, Hq, Hkv, Tq, Tk, D;
    bool mask, causal;
  };
  // Tk > 64 crosses key tiles; Tq > 64 crosses query blocks; Tq < Tk with causal is a KV-cache step
  const Case cases[] = {{2, 2, 2, 5, 5, 4, false, false}, {2, 4, 2, 7, 7, 8, true, false}, {2, 4, 2, 10, 10, 8, false, true},
                        {2, 4, 1, 6, 6, 8, true, true},   {1, 2, 2, 1, 9, 4, false, true},
                        {2, 2, 1, 3, 70, 16, true, true}, {1, 2, 2, 70, 150, 40, true, true},
                        {1, 1, 1, 66, 66, 68, false, true},
                        // non-causal rows go four at a time in float32 (MiniLM's shape, a head dim
                        // with a 16-wide remainder, grouped-query rows across a key tile)
                        {2, 3, 3, 64, 64, 32, true, false}, {1, 2, 1, 9, 67, 48, false, false}};
  for (const Case& cs : cases) {
    CAPTURE(cs.Tq);
    CAPTURE(cs.Tk);
    // q, k, v as transposed views of [B, T, H, D] (how attention reads a projection)
    Tensor q = rnd({cs.B, cs.Tq, cs.Hq, cs.D}, 10).transpose(1, 2);
    Tensor k = rnd({cs.B, cs.Tk, cs.Hkv, cs.D}, 11).transpose(1, 2);
    Tensor v = rnd({cs.B, cs.Tk, cs.Hkv, cs.D}, 12).transpose(1, 2);
    Tensor mask;
    if (cs.mask) {
      std::vector<int64_t> m(size_t(cs.B * cs.Tk), 1);
      for (int64_t j = cs.Tk - 2; j < cs.Tk; ++j) m[size_t(j)] = 0;  // row 0 right-padded by 2
      if (cs.B > 1) m[size_t(cs.Tk)] = 0;                          // row 1 left-padded by 1
      mask = from_vector(m, {cs.B, cs.Tk});
    }
    Tensor ref = reference_attention(q, k, v, mask, cs.causal);
    CHECK_ALLCLOSE(scaled_dot_product_attention(q, k, v, mask, cs.causal), ref, 1e-10, 1e-10);
    Tensor mb = mask.defined() ? ne(mask, 0.0) : mask;
    CHECK_ALLCLOSE(scaled_dot_product_attention(q.to(DType::float32), k.to(DType::float32), v.to(DType::float32),
                                                mb, cs.causal),
                   ref, 1e-4, 1e-5);
    // backward (float64) against the composition's autograd
    if (cs.Tq * cs.Tk <= 70 * 150) {
      Tensor q1 = q.detach().requires_grad_(true), k1 = k.detach().requires_grad_(true),
             v1 = v.detach().requires_grad_(true);
      Tensor q2 = q.detach().requires_grad_(true), k2 = k.detach().requires_grad_(true),
             v2 = v.detach().requires_grad_(true);
      Tensor seed = rnd(ref.shape(), 13);
      sum(mul(scaled_dot_product_attention(q1, k1, v1, mask, cs.causal), seed)).backward();
      sum(mul(reference_attention(q2, k2, v2, mask, cs.causal), seed)).backward();
      CHECK_ALLCLOSE(q1.grad(), q2.grad(), 1e-9, 1e-9);
      CHECK_ALLCLOSE(k1.grad(), k2.grad(), 1e-9, 1e-9);
      CHECK_ALLCLOSE(v1.grad(), v2.grad(), 1e-9, 1e-9);
      // the float32 kernels (vectorised, a separate code path) against the float64 gradients
      Tensor q3 = q.to(DType::float32).requires_grad_(true), k3 = k.to(DType::float32).requires_grad_(true),
             v3 = v.to(DType::float32).requires_grad_(true);
      sum(mul(scaled_dot_product_attention(q3, k3, v3, mask, cs.causal), seed.to(DType::float32))).backward();
      CHECK_ALLCLOSE(q3.grad(), q2.grad(), 1e-3, 1e-4);
      CHECK_ALLCLOSE(k3.grad(), k2.grad(), 1e-3, 1e-4);
      CHECK_ALLCLOSE(v3.grad(), v2.grad(), 1e-3, 1e-4);
    }
  }
}

TEST_CASE("scaled_dot_product_attention: finite differences, empty rows, meta, errors") {
  Tensor q = rnd({2, 4, 3, 4}, 20), k = rnd({2, 2, 5, 4}, 21), v = rnd({2, 2, 5, 4}, 22);
  Tensor mask = from_vector(std::vector<int64_t>{1, 1, 1, 0, 0, 0, 1, 1, 1, 1}, {2, 5});
  CHECK_GRADCHECK(
      [&](const std::vector<Tensor>& in) { return scaled_dot_product_attention(in[0], in[1], in[2], mask, true); },
      {q, k, v});
  // a row whose keys are all padding attends to nothing: output 0, gradient 0
  Tensor none = from_vector(std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, {2, 5});
  Tensor qg = q.detach().requires_grad_(true);
  Tensor out = scaled_dot_product_attention(qg, k, v, none, false);
  CHECK(max_abs_diff(out.narrow(0, 0, 1), zeros({1, 4, 3, 4}, DType::float64)) == 0.0);
  sum(out).backward();
  CHECK(max_abs_diff(qg.grad().narrow(0, 0, 1), zeros({1, 4, 3, 4}, DType::float64)) == 0.0);
  CHECK(max_abs_diff(qg.grad().narrow(0, 1, 1), zeros({1, 4, 3, 4}, DType::float64)) > 0.0);
  Tensor mq = empty({2, 4, 3, 8}, DType::bfloat16, Device::meta), mk = empty({2, 2, 9, 8}, DType::bfloat16, Device::meta);
  CHECK(scaled_dot_product_attention(mq, mk, mk, Tensor(), true).desc() == "bfloat16[2, 4, 3, 8] meta");
  CHECK(error_of([&] { scaled_dot_product_attention(q, rnd({2, 3, 5, 4}, 1), rnd({2, 3, 5, 4}, 1)); })
            .find("query heads 4 must be a multiple of key/value heads 3") != std::string::npos);
  CHECK(error_of([&] { scaled_dot_product_attention(q, k, v, from_vector(std::vector<int64_t>{1, 1}, {2, 1})); })
            .find("key_padding_mask must be bool or int64 [2, 5]") != std::string::npos);
  CHECK(error_of([&] { scaled_dot_product_attention(rnd({2, 4, 6, 4}, 1), k, v, Tensor(), true); })
            .find("more queries (6) than keys (5)") != std::string::npos);
  CHECK(error_of([&] { scaled_dot_product_attention(q, k.to(DType::float32), v); })
            .find("share one floating dtype") != std::string::npos);
}

TEST_CASE("chunk splits into views like torch.chunk") {
  Tensor a = arange(0, 10, 1, DType::float32).reshape({2, 5});
  auto parts = chunk(a, 2, 1);
  REQUIRE(parts.size() == 2);
  CHECK(parts[0].shape() == Shape{2, 3});
  CHECK(parts[1].shape() == Shape{2, 2});
  CHECK(parts[1].at({1, 0}) == 8.0);
  CHECK(chunk(a, 3, -1).size() == 3);
  CHECK(error_of([&] { chunk(a, 0, 0); }).find("chunks must be positive") != std::string::npos);
}

TEST_CASE("transformer ops free their graphs (no node holds its own output)") {
  // float32: the fused kernels' result may be the very tensor a backward needs
  Tensor x = rnd({2, 2, 5, 4}, 30, DType::float32).requires_grad_(true);
  Tensor w = rnd({4}, 31, DType::float32).requires_grad_(true);
  auto [c, s] = rotary_cos_sin(from_vector(std::vector<int64_t>{0, 1, 2, 3, 4}, {1, 5}), 4, 10000.0);
  const std::vector<std::pair<const char*, std::function<Tensor()>>> ops = {
      {"gelu_tanh", [&] { return gelu_tanh(x); }},
      {"layer_norm", [&] { return layer_norm(x, {4}, w, w); }},
      {"rms_norm", [&] { return rms_norm(x, w, 1e-6); }},
      {"rotary_embedding", [&] { return rotary_embedding(x, c, s); }},
      {"scaled_dot_product_attention", [&] { return scaled_dot_product_attention(x, x, x, Tensor(), true); }}};
  for (const auto& [name, f] : ops) {
    const std::string op = name;
    CAPTURE(op);
    std::weak_ptr<TensorImpl> alive;
    {
      Tensor out = f();
      alive = out.impl_ptr();
      sum(out).backward();
    }
    CHECK(alive.expired());
  }
}
