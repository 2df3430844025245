// Tests of the tensor runtime: every op in runtime/ops.h and the Tensor methods.
// Forward against hand-computed values (broadcasting, non-contiguous inputs),
// backward against central finite differences, meta-device shape inference, and
// the peft::Error each op raises for a bad shape.
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "runtime/backend.h"  // internal: cuda_available()
#include "runtime/generator.h"
#include "runtime/half.h"
#include "runtime/op_list.h"
#include "tests/testing.h"

using namespace peft;
using peft::testing::error_of;
using Vec = std::vector<double>;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

namespace {

Tensor F(const Vec& v, const Shape& s) { return from_vector(v, s, DType::float32); }
Tensor D(const Vec& v, const Shape& s) { return from_vector(v, s, DType::float64); }
Tensor I(const std::vector<int64_t>& v, const Shape& s) { return from_vector(v, s); }
Tensor rnd(const Shape& s, uint64_t seed, DType dt = DType::float64) {
  Generator g(seed);
  return randn(s, g, dt);
}
Tensor meta(const Shape& s, DType dt = DType::float32) { return empty(s, dt, Device::meta); }
// Every element in [lo, hi).
bool min_max_ok(const Tensor& t, double lo, double hi) {
  for (double v : t.to_vector<double>())
    if (!(v >= lo && v < hi)) return false;
  return true;
}
bool has_no_storage(const Tensor& t) { return t.is_meta() && t.impl().storage == nullptr; }

// Naive float64 reference matmul for 2-D tensors.
Tensor ref_mm(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  std::vector<double> va = a.contiguous().to_vector<double>(), vb = b.contiguous().to_vector<double>();
  std::vector<double> c(size_t(M * N), 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) c[size_t(i * N + j)] += va[size_t(i * K + k)] * vb[size_t(k * N + j)];
  return D(c, {M, N});
}

}  // namespace

// ===========================================================================
// creation, element access, metadata
// ===========================================================================

TEST_CASE("creation: zeros, ones, full, arange, from_vector, scalar_tensor") {
  Tensor z = zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == DType::float32);
  CHECK(z.numel() == 6);
  CHECK(z.strides() == Shape{3, 1});
  CHECK(z.is_contiguous());
  CHECK_ALLCLOSE(z, F({0, 0, 0, 0, 0, 0}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(ones({3}, DType::float64), D({1, 1, 1}, {3}), 0, 0);
  CHECK_ALLCLOSE(full({2}, 2.5, DType::bfloat16), F({2.5, 2.5}, {2}), 0, 0);
  CHECK(full({2}, 2.5, DType::bfloat16).dtype() == DType::bfloat16);
  Tensor ar = arange(0, 5);
  CHECK(ar.dtype() == DType::int64);
  CHECK(ar.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK_ALLCLOSE(arange(1, 2, 0.25, DType::float32), F({1, 1.25, 1.5, 1.75}, {4}), 0, 0);
  CHECK(arange(5, 0, -2).to_vector<int64_t>() == std::vector<int64_t>{5, 3, 1});
  CHECK(arange(3, 3).numel() == 0);
  Tensor s = scalar_tensor(3.5);
  CHECK(s.dim() == 0);
  CHECK(s.item() == 3.5);
  CHECK(zeros({0, 4}).numel() == 0);
  CHECK(zeros_like(F({1, 2}, {2})).shape() == Shape{2});
  CHECK(ones_like(D({1, 2}, {1, 2})).dtype() == DType::float64);
  CHECK(empty_like(F({1, 2}, {2})).shape() == Shape{2});
  CHECK(F({1, 2, 3}, {3}).desc() == "float32[3]");
  CHECK(meta({2}).desc() == "float32[2] meta");
  CHECK(std::string(op_name(Op::matmul)) == "matmul");
  CHECK(int(Op::count_) > 60);
}

TEST_CASE("creation errors") {
  CHECK(error_of([] { zeros({2, -1}); }).find("negative dimension") != std::string::npos);
  CHECK(error_of([] { from_vector(std::vector<float>{1, 2, 3}, {2, 2}); }).find("[from_vector]") !=
        std::string::npos);
  CHECK(error_of([] { arange(0, 1, 0); }).find("[arange]") != std::string::npos);
  CHECK(error_of([] { Tensor().shape(); }).find("undefined Tensor") != std::string::npos);
}

TEST_CASE("element access: item, at, set, to_vector, data_ptr") {
  Tensor t = F({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t.at({1, 2}) == 6);
  CHECK(t.at({-1, 0}) == 4);
  CHECK(t.t().at({2, 1}) == 6);
  t.set({0, 1}, 20);
  CHECK(t.at({0, 1}) == 20);
  CHECK(t.data_ptr<float>()[1] == 20);
  CHECK(F({7}, {1}).item() == 7);
  CHECK(t.t().to_vector<double>() == Vec{1, 4, 20, 5, 3, 6});
  CHECK(error_of([&] { t.item(); }).find("item()") != std::string::npos);
  CHECK(error_of([&] { t.at({2, 0}); }).find("[at]") != std::string::npos);
  CHECK(error_of([&] { t.at({0}); }).find("[at]") != std::string::npos);
  CHECK(error_of([&] { t.data_ptr<double>(); }).find("data_ptr") != std::string::npos);
  CHECK(I({3}, {1}).item() == 3);
  CHECK(full({1}, 1.0, DType::bool_).item() == 1);
  CHECK(t.size(-1) == 3);
  CHECK(t.stride(0) == 3);
  CHECK(error_of([&] { t.size(2); }).find("out of range") != std::string::npos);
}

TEST_CASE("from_blob wraps memory without copying") {
  auto buf = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4});
  Tensor t = from_blob(buf->data(), {2, 2}, DType::float32, buf);
  (*buf)[3] = 40;
  CHECK(t.at({1, 1}) == 40);
  t.set({0, 0}, 10);
  CHECK((*buf)[0] == 10);
}

// ===========================================================================
// views
// ===========================================================================

TEST_CASE("cpu block cache: best-fit reuse within a quarter, trim gives idle blocks back") {
  trim_cpu_cache(true);
  const void* first = nullptr;
  {
    Tensor a = empty({1 << 20});  // 4 MiB: a mapped block
    first = a.data_ptr<float>();
    a.fill_(1.f);
  }
  const size_t idle = cpu_cached_bytes();
  CHECK(idle >= (size_t(4) << 20));
  {
    Tensor b = empty({(1 << 20) - (1 << 17)});  // 3.5 MiB: fits the idle 4 MiB block
    CHECK(static_cast<const void*>(b.data_ptr<float>()) == first);
    CHECK(cpu_cached_bytes() == idle - (size_t(4) << 20));
    Tensor c = empty({1 << 19});  // 2 MiB: the idle 4 MiB block would waste half, so a new one
    CHECK(static_cast<const void*>(c.data_ptr<float>()) != first);
  }
  CHECK(cpu_cached_bytes() > 0);
  trim_cpu_cache();  // the blocks were put back since the last trim: kept
  CHECK(cpu_cached_bytes() > 0);
  trim_cpu_cache();  // not reused since: unmapped
  CHECK(cpu_cached_bytes() == 0);
}

TEST_CASE("view, reshape, flatten share storage when possible") {
  Tensor a = F({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor v = a.view({3, 2});
  CHECK(v.same_storage(a));
  CHECK(v.shape() == Shape{3, 2});
  CHECK(v.at({2, 1}) == 5);
  CHECK(a.view({-1}).shape() == Shape{6});
  CHECK(a.view({1, -1, 1}).shape() == Shape{1, 6, 1});
  // view of a transposed tensor is impossible; reshape copies instead
  Tensor tt = a.t();
  std::string e = error_of([&] { tt.view({6}); });
  CHECK(e.find("[view]") != std::string::npos);
  CHECK(e.find("reshape") != std::string::npos);
  Tensor r = tt.reshape({6});
  CHECK(!r.same_storage(a));
  CHECK(r.to_vector<double>() == Vec{0, 3, 1, 4, 2, 5});
  CHECK(a.reshape({3, 2}).same_storage(a));
  // a view of a sliced tensor where strides allow
  Tensor big = arange(0, 24, 1, DType::float32).view({2, 3, 4});
  Tensor s = big.narrow(0, 1, 1);  // [1,3,4], contiguous block
  CHECK(s.view({12}).same_storage(big));
  CHECK(s.view({12}).at({0}) == 12);
  Tensor cols = big.narrow(2, 0, 2);  // [2,3,2] strides (12,4,1)
  CHECK(cols.view({6, 2}).same_storage(big));
  CHECK(cols.view({6, 2}).at({5, 1}) == 21);
  CHECK(error_of([&] { cols.view({12}); }).find("[view]") != std::string::npos);
  CHECK(big.flatten().shape() == Shape{24});
  CHECK(big.flatten(1).shape() == Shape{2, 12});
  CHECK(big.flatten(0, 1).shape() == Shape{6, 4});
  CHECK(scalar_tensor(1).flatten().shape() == Shape{1});
  CHECK(error_of([&] { a.view({4, 2}); }).find("[view] shape [4, 2] is invalid for input of size 6") !=
        std::string::npos);
  CHECK(error_of([&] { a.reshape({-1, -1}); }).find("[reshape]") != std::string::npos);
  CHECK(error_of([&] { big.flatten(2, 1); }).find("[flatten]") != std::string::npos);
}

TEST_CASE("transpose, t, permute give strided views") {
  Tensor a = arange(0, 24, 1, DType::float32).view({2, 3, 4});
  Tensor t = a.transpose(0, 2);
  CHECK(t.shape() == Shape{4, 3, 2});
  CHECK(t.strides() == Shape{1, 4, 12});
  CHECK(!t.is_contiguous());
  CHECK(t.at({3, 2, 1}) == a.at({1, 2, 3}));
  CHECK(a.transpose(-1, -2).shape() == Shape{2, 4, 3});
  Tensor p = a.permute({1, 2, 0});
  CHECK(p.shape() == Shape{3, 4, 2});
  CHECK(p.at({2, 3, 1}) == a.at({1, 2, 3}));
  CHECK(F({1, 2}, {2}).t().shape() == Shape{2});
  CHECK(error_of([&] { a.t(); }).find("[transpose]") != std::string::npos);
  CHECK(error_of([&] { a.transpose(0, 3); }).find("[transpose] dimension 3 out of range") !=
        std::string::npos);
  CHECK(error_of([&] { a.permute({0, 1}); }).find("[permute]") != std::string::npos);
  CHECK(error_of([&] { a.permute({0, 1, 1}); }).find("[permute] repeated") != std::string::npos);
}

TEST_CASE("narrow, slice, select, unsqueeze, squeeze, expand") {
  Tensor a = arange(0, 12, 1, DType::float32).view({3, 4});
  Tensor n = a.narrow(1, 1, 2);
  CHECK(n.shape() == Shape{3, 2});
  CHECK(n.to_vector<double>() == Vec{1, 2, 5, 6, 9, 10});
  CHECK(a.narrow(0, -1, 1).to_vector<double>() == Vec{8, 9, 10, 11});
  CHECK(a.slice(1, 0, 4, 2).to_vector<double>() == Vec{0, 2, 4, 6, 8, 10});
  CHECK(a.slice(1, 1, 100, 2).to_vector<double>() == Vec{1, 3, 5, 7, 9, 11});
  CHECK(a.slice(0, -2, 3).to_vector<double>() == Vec{4, 5, 6, 7, 8, 9, 10, 11});
  CHECK(a.slice(0, 2, 1).numel() == 0);
  CHECK(a.select(0, 1).to_vector<double>() == Vec{4, 5, 6, 7});
  CHECK(a.select(1, -1).to_vector<double>() == Vec{3, 7, 11});
  CHECK(a.select(1, -1).shape() == Shape{3});
  CHECK(a.unsqueeze(0).shape() == Shape{1, 3, 4});
  CHECK(a.unsqueeze(-1).shape() == Shape{3, 4, 1});
  CHECK(a.unsqueeze(1).shape() == Shape{3, 1, 4});
  CHECK(a.unsqueeze(1).view({12}).at({5}) == 5);
  Tensor b = zeros({1, 3, 1});
  CHECK(b.squeeze().shape() == Shape{3});
  CHECK(b.squeeze(0).shape() == Shape{3, 1});
  CHECK(b.squeeze(1).shape() == Shape{1, 3, 1});
  CHECK(b.squeeze(-1).shape() == Shape{1, 3});
  Tensor c = F({1, 2, 3}, {3, 1});
  Tensor e = c.expand({2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(e.at({1, 2, 3}) == 3);
  CHECK(c.expand({-1, 2}).shape() == Shape{3, 2});
  CHECK(error_of([&] { c.expand({3, 3}).expand({4, 3}); }).find("[expand]") != std::string::npos);
  CHECK(error_of([&] { a.narrow(1, 2, 3); }).find("[narrow]") != std::string::npos);
  CHECK(error_of([&] { a.select(0, 3); }).find("[select]") != std::string::npos);
  CHECK(error_of([&] { a.slice(0, 0, 2, 0); }).find("[slice]") != std::string::npos);
  CHECK(error_of([&] { a.unsqueeze(3); }).find("[unsqueeze]") != std::string::npos);
}

TEST_CASE("contiguous and clone copy; views write through") {
  Tensor a = arange(0, 6, 1, DType::float32).view({2, 3});
  Tensor t = a.t();
  Tensor c = t.contiguous();
  CHECK(c.is_contiguous());
  CHECK(!c.same_storage(a));
  CHECK(c.to_vector<double>() == Vec{0, 3, 1, 4, 2, 5});
  CHECK(a.contiguous().same_storage(a));
  Tensor k = a.clone();
  k.set({0, 0}, 100);
  CHECK(a.at({0, 0}) == 0);
  Tensor v = a.select(0, 1);
  v.set({0}, 30);
  CHECK(a.at({1, 0}) == 30);
}

TEST_CASE("gradients flow through views") {
  Tensor x = rnd({3, 4}, 1);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0].t(), in[0].t()); },
                  (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].view({2, 6}).slice(1, 1, 6, 2); },
                  (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].t().reshape({12}); },
                  (std::vector<Tensor>{x}));
  CHECK_GRADCHECK(
      [](const std::vector<Tensor>& in) { return in[0].unsqueeze(0).permute({2, 0, 1}).squeeze(1); },
      (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].select(1, 2); },
                  (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].narrow(0, 1, 2).flatten(); },
                  (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].unsqueeze(1).expand({3, 2, 4}); },
                  (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].slice(0, 0, 3, 2).squeeze(); },
                  (std::vector<Tensor>{rnd({3, 1}, 2)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].t().contiguous().clone(); },
                  (std::vector<Tensor>{x}));
}

// ===========================================================================
// dtype conversion, half precision, promotion
// ===========================================================================

TEST_CASE("to(dtype) converts values and is differentiable") {
  Tensor a = F({1.5, -2.25, 3.75, 0}, {4});
  CHECK(a.to(DType::float32).same_storage(a));
  CHECK(a.to(DType::int64).to_vector<int64_t>() == std::vector<int64_t>{1, -2, 3, 0});
  CHECK(a.to(DType::bool_).to_vector<double>() == Vec{1, 1, 1, 0});
  CHECK_ALLCLOSE(a.to(DType::float64), D({1.5, -2.25, 3.75, 0}, {4}), 0, 0);
  CHECK_ALLCLOSE(a.to(DType::bfloat16).to(DType::float32), a, 0, 0);
  CHECK_ALLCLOSE(a.to(DType::float16).to(DType::float64), a, 0, 0);
  CHECK_ALLCLOSE(I({1, 2}, {2}).to(DType::float32), F({1, 2}, {2}), 0, 0);
  // 1/3 in bf16 keeps 8 bits of mantissa
  CHECK(F({1.0 / 3}, {1}).to(DType::bfloat16).item() == 0.333984375);
  CHECK(F({1.0 / 3}, {1}).to(DType::float16).item() == 0.333251953125);
  // non-contiguous source
  Tensor m = arange(0, 6, 1, DType::float32).view({2, 3}).t();
  CHECK(m.to(DType::float64).to_vector<double>() == Vec{0, 3, 1, 4, 2, 5});
  // float32 rounding inside: finite differences need a larger step
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return in[0].to(DType::float32).to(DType::float64); },
                  (std::vector<Tensor>{rnd({3}, 3)}), 1e-2, 1e-4);
  Tensor x = F({1, 2}, {2}).requires_grad_();
  sum(mul(x.to(DType::bfloat16), 3.0)).backward();
  CHECK(x.grad().dtype() == DType::float32);
  CHECK_ALLCLOSE(x.grad(), F({3, 3}, {2}), 0, 0);
}

TEST_CASE("bfloat16 conversion: bit patterns and round-to-nearest-even") {
  auto bits = [](float f) { return float_to_bf16(f); };
  auto f32 = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  CHECK(bits(1.0f) == 0x3F80);
  CHECK(bits(-2.0f) == 0xC000);
  CHECK(bits(0.0f) == 0x0000);
  CHECK(bits(-0.0f) == 0x8000);
  CHECK(bits(f32(0x3F808000u)) == 0x3F80);  // halfway, even stays
  CHECK(bits(f32(0x3F818000u)) == 0x3F82);  // halfway, odd rounds up
  CHECK(bits(f32(0x3F808001u)) == 0x3F81);  // just above halfway
  CHECK(bits(f32(0x3F807FFFu)) == 0x3F80);  // just below halfway
  CHECK(bits(std::numeric_limits<float>::infinity()) == 0x7F80);
  CHECK(bits(-std::numeric_limits<float>::infinity()) == 0xFF80);
  CHECK(bits(std::numeric_limits<float>::max()) == 0x7F80);  // rounds to inf
  CHECK(std::isnan(bf16_to_float(bits(std::nanf("")))));
  CHECK(std::isnan(bf16_to_float(bits(f32(0x7F800001u)))));  // signalling NaN stays NaN
  CHECK(bf16_to_float(0x3F80) == 1.0f);
  CHECK(bf16_to_float(0x4049) == 3.140625f);
  CHECK(bf16_to_float(0x0001) == f32(0x00010000u));  // subnormal
  // every non-NaN bf16 value round-trips exactly
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    if (float_to_bf16(f) != h) ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("float16 conversion: bit patterns, subnormals, overflow, round-to-nearest-even") {
  CHECK(float_to_f16(1.0f) == 0x3C00);
  CHECK(float_to_f16(-2.0f) == 0xC000);
  CHECK(float_to_f16(65504.0f) == 0x7BFF);
  CHECK(float_to_f16(65519.0f) == 0x7BFF);
  CHECK(float_to_f16(65520.0f) == 0x7C00);  // halfway to 65536 -> even -> inf
  CHECK(float_to_f16(1e10f) == 0x7C00);
  CHECK(float_to_f16(-1e10f) == 0xFC00);
  CHECK(float_to_f16(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);          // halfway -> even (0)
  CHECK(float_to_f16(std::ldexp(3.0f, -26)) == 0x0001);          // 1.5 units -> 2? no: 0.75 units
  CHECK(float_to_f16(std::ldexp(3.0f, -25)) == 0x0002);          // 1.5 units -> even 2
  CHECK(float_to_f16(std::ldexp(5.0f, -25)) == 0x0002);          // 2.5 units -> even 2
  CHECK(float_to_f16(std::ldexp(1.0f, -14)) == 0x0400);          // smallest normal
  CHECK(float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);   // halfway, even
  CHECK(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);  // halfway, odd -> up
  CHECK(float_to_f16(std::ldexp(1.0f, -30)) == 0x0000);
  CHECK(float_to_f16(-std::ldexp(1.0f, -30)) == 0x8000);
  CHECK(std::isnan(f16_to_float(float_to_f16(std::nanf("")))));
  CHECK(f16_to_float(0x3C00) == 1.0f);
  CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_to_float(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(std::isinf(f16_to_float(0x7C00)));
  CHECK(f16_to_float(0xFC00) < 0);
  CHECK(std::signbit(f16_to_float(0x8000)));
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    if (float_to_f16(f) != h) ++bad;
  }
  CHECK(bad == 0);
  // random floats round to the nearest f16 (ties to even)
  Generator g(7);
  int wrong = 0;
  for (int i = 0; i < 20000; ++i) {
    float f = float((g.next_double() * 2 - 1) * std::ldexp(1.0, int(g.next_u32() % 40) - 26));
    uint16_t h = float_to_f16(f);
    double d = std::fabs(double(f16_to_float(h)) - f);
    for (int delta : {-1, 1}) {
      uint16_t o = uint16_t(h + delta);
      if ((o & 0x7C00) == 0x7C00 || ((o ^ h) & 0x8000)) continue;
      double od = std::fabs(double(f16_to_float(o)) - f);
      if (od < d || (od == d && (h & 1))) ++wrong;
    }
  }
  CHECK(wrong == 0);
}

TEST_CASE("dtype promotion") {
  CHECK(promote_types(DType::float32, DType::float64) == DType::float64);
  CHECK(promote_types(DType::bfloat16, DType::float16) == DType::float32);
  CHECK(promote_types(DType::bfloat16, DType::float32) == DType::float32);
  CHECK(promote_types(DType::int64, DType::bfloat16) == DType::bfloat16);
  CHECK(promote_types(DType::bool_, DType::int64) == DType::int64);
  CHECK(promote_types(DType::bool_, DType::bool_) == DType::bool_);
  CHECK(add(F({1}, {1}), I({2}, {1})).dtype() == DType::float32);
  CHECK(add(F({1}, {1}), D({2}, {1})).dtype() == DType::float64);
  CHECK(add(F({1}, {1}).to(DType::bfloat16), F({1}, {1}).to(DType::float16)).dtype() == DType::float32);
  CHECK(mul(F({1}, {1}).to(DType::bfloat16), F({3}, {1}).to(DType::bfloat16)).dtype() == DType::bfloat16);
  // 0-d tensors of the same category do not promote
  CHECK(add(F({1, 2}, {2}), scalar_tensor(1.0, DType::float64)).dtype() == DType::float32);
  CHECK(add(F({1, 2}, {2}).to(DType::bfloat16), scalar_tensor(1.0)).dtype() == DType::bfloat16);
  CHECK(add(I({1, 2}, {2}), scalar_tensor(0.5)).dtype() == DType::float32);
  CHECK(div(I({1, 2}, {2}), I({2, 2}, {2})).dtype() == DType::float32);
  CHECK_ALLCLOSE(div(I({1, 3}, {2}), I({2, 2}, {2})), F({0.5, 1.5}, {2}), 0, 0);
  CHECK(add(I({1}, {1}), I({1}, {1})).dtype() == DType::int64);
  CHECK(mul(I({3}, {1}), 2.0).dtype() == DType::int64);
  CHECK(mul(I({3}, {1}), 0.5).dtype() == DType::float32);
  CHECK(add(I({3}, {1}), 0.5).dtype() == DType::float32);
  CHECK(add(I({3}, {1}), 0.5).item() == 3.5);
  CHECK(exp(I({0}, {1})).dtype() == DType::float32);
  CHECK(sum(full({3}, 1, DType::bool_)).dtype() == DType::int64);
  CHECK(sum(full({3}, 1, DType::bool_)).item() == 3);
}

// ===========================================================================
// elementwise
// ===========================================================================

TEST_CASE("binary ops: values with broadcasting") {
  Tensor a = F({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor row = F({10, 20, 30}, {3});
  Tensor col = F({2, 4}, {2, 1});
  CHECK_ALLCLOSE(add(a, row), F({11, 22, 33, 14, 25, 36}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(sub(a, col), F({-1, 0, 1, 0, 1, 2}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(mul(a, col), F({2, 4, 6, 16, 20, 24}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(div(a, col), F({0.5, 1, 1.5, 1, 1.25, 1.5}, {2, 3}), 1e-7, 0);
  CHECK_ALLCLOSE(pow(a, col), F({1, 4, 9, 256, 625, 1296}, {2, 3}), 1e-6, 0);
  CHECK_ALLCLOSE(maximum(a, F({3}, {1})), F({3, 3, 3, 4, 5, 6}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(add(col, row), F({12, 22, 32, 14, 24, 34}, {2, 3}), 0, 0);  // both broadcast
  CHECK_ALLCLOSE(add(a, scalar_tensor(1)), F({2, 3, 4, 5, 6, 7}, {2, 3}), 0, 0);
  // operators
  CHECK_ALLCLOSE(a + row - row * 2.0 / 2.0, a, 1e-7, 0);
  CHECK_ALLCLOSE(-a, mul(a, -1.0), 0, 0);
  CHECK_ALLCLOSE(1.0 - a, rsub(a, 1.0), 0, 0);
  CHECK_ALLCLOSE(2.0 / a, rdiv(a, 2.0), 0, 0);
  CHECK_ALLCLOSE(2.0 * a + 1.0, add(mul(a, 2.0), 1.0), 0, 0);
  // non-contiguous operands
  Tensor at = F({1, 4, 2, 5, 3, 6}, {3, 2}).t();  // == a, transposed storage
  CHECK_ALLCLOSE(add(at, row), add(a, row), 0, 0);
  CHECK_ALLCLOSE(mul(at, a), mul(a, a), 0, 0);
  Tensor sl = arange(0, 12, 1, DType::float32).view({3, 4}).slice(1, 0, 4, 2);  // [[0,2],[4,6],[8,10]]
  CHECK_ALLCLOSE(sub(sl, F({1, 1}, {2})), F({-1, 1, 3, 5, 7, 9}, {3, 2}), 0, 0);
  // bf16 computes in float32 and rounds the result
  Tensor hb = add(F({1, 2}, {2}).to(DType::bfloat16), F({0.001, 0.5}, {2}).to(DType::bfloat16));
  CHECK(hb.dtype() == DType::bfloat16);
  CHECK_ALLCLOSE(hb, F({1.0, 2.5}, {2}), 0, 0);
  // float64 and int64
  CHECK_ALLCLOSE(mul(D({1.5, 2}, {2}), D({2, 3}, {2})), D({3, 6}, {2}), 0, 0);
  CHECK(sub(I({5, 7}, {2}), I({2}, {1})).to_vector<int64_t>() == std::vector<int64_t>{3, 5});
  CHECK(maximum(I({5, 1}, {2}), I({2}, {1})).to_vector<int64_t>() == std::vector<int64_t>{5, 2});
  // empty tensors
  CHECK(add(zeros({0, 3}), F({1, 2, 3}, {3})).shape() == Shape{0, 3});
}

TEST_CASE("binary ops: errors name the op and the shapes") {
  Tensor a = zeros({2, 3}), b = zeros({4});
  std::string e = error_of([&] { add(a, b); });
  CHECK(e.find("[add]") != std::string::npos);
  CHECK(e.find("[2, 3]") != std::string::npos);
  CHECK(e.find("[4]") != std::string::npos);
  CHECK(e.find("broadcast") != std::string::npos);
  CHECK(error_of([&] { sub(a, b); }).find("[sub]") != std::string::npos);
  CHECK(error_of([&] { mul(a, b); }).find("[mul]") != std::string::npos);
  CHECK(error_of([&] { div(a, b); }).find("[div]") != std::string::npos);
  CHECK(error_of([&] { pow(a, b); }).find("[pow]") != std::string::npos);
  CHECK(error_of([&] { maximum(a, b); }).find("[maximum]") != std::string::npos);
  CHECK(error_of([&] { eq(a, b); }).find("[eq]") != std::string::npos);
  CHECK(error_of([&] { lt(a, b); }).find("[lt]") != std::string::npos);
  CHECK(error_of([&] { add(a, Tensor()); }).find("[add]") != std::string::npos);
  CHECK(error_of([&] { clamp(a, 1, 0); }).find("[clamp]") != std::string::npos);
  CHECK(error_of([&] { where(a, a, a); }).find("[where] condition must be bool") != std::string::npos);
  CHECK(error_of([&] { where(gt(a, 0.0), a, b); }).find("[where]") != std::string::npos);
  CHECK(error_of([&] { masked_fill(a, gt(b, 0.0), 1); }).find("[masked_fill]") != std::string::npos);
  CHECK(error_of([&] { masked_fill(a, a, 1); }).find("[masked_fill] mask must be bool") !=
        std::string::npos);
  CHECK(error_of([&] { masked_fill(zeros({3}), gt(zeros({2, 3}), 0.0), 1); }).find("[masked_fill]") !=
        std::string::npos);
}

TEST_CASE("binary ops: gradients (broadcasting, non-contiguous)") {
  Tensor a = rnd({2, 3}, 10), b = rnd({3}, 11), c = rnd({2, 1}, 12);
  Tensor pos = add(abs(rnd({2, 3}, 13)), 0.5), pos_b = add(abs(rnd({3}, 14)), 0.5);
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return add(x[0], x[1]); }, (std::vector<Tensor>{a, b}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return sub(x[0], x[1]); }, (std::vector<Tensor>{a, c}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }, (std::vector<Tensor>{c, b}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return div(x[0], x[1]); },
                  (std::vector<Tensor>{a, pos_b}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return pow(x[0], x[1]); },
                  (std::vector<Tensor>{pos, b}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return maximum(x[0], x[1]); },
                  (std::vector<Tensor>{a, b}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return mul(x[0].t(), x[1].t()); },
                  (std::vector<Tensor>{rnd({3, 2}, 15), rnd({3, 1}, 16)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return div(x[0], x[0]); }, (std::vector<Tensor>{pos}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return mul(x[0], scalar_tensor(3.0, DType::float64)); },
                  (std::vector<Tensor>{a}));
}

TEST_CASE("maximum splits the gradient on ties; pow handles zero base") {
  Tensor a = F({1, 2, 3}, {3}).requires_grad_(), b = F({2, 2, 2}, {3}).requires_grad_();
  sum(maximum(a, b)).backward();
  CHECK_ALLCLOSE(a.grad(), F({0, 0.5, 1}, {3}), 0, 0);
  CHECK_ALLCLOSE(b.grad(), F({1, 0.5, 0}, {3}), 0, 0);
  Tensor x = F({0, 2}, {2}).requires_grad_(), y = F({2, 3}, {2}).requires_grad_();
  sum(pow(x, y)).backward();
  CHECK_ALLCLOSE(x.grad(), F({0, 12}, {2}), 1e-6, 0);
  CHECK_ALLCLOSE(y.grad(), F({0, 8 * std::log(2.0)}, {2}), 1e-6, 0);
}

TEST_CASE("scalar variants: values and gradients") {
  Tensor a = F({1, -2, 4}, {3});
  CHECK_ALLCLOSE(add(a, 1.5), F({2.5, -0.5, 5.5}, {3}), 0, 0);
  CHECK_ALLCLOSE(sub(a, 1), F({0, -3, 3}, {3}), 0, 0);
  CHECK_ALLCLOSE(rsub(a, 1), F({0, 3, -3}, {3}), 0, 0);
  CHECK_ALLCLOSE(mul(a, -2), F({-2, 4, -8}, {3}), 0, 0);
  CHECK_ALLCLOSE(div(a, 4), F({0.25, -0.5, 1}, {3}), 0, 0);
  CHECK_ALLCLOSE(div(F({1, 2, 10}, {3}), 3.0), F({1.0f / 3.0f, 2.0f / 3.0f, 10.0f / 3.0f}, {3}), 0, 0);
  CHECK_ALLCLOSE(rdiv(a, 2), F({2, -1, 0.5}, {3}), 0, 0);
  CHECK_ALLCLOSE(pow(a, 2.0), F({1, 4, 16}, {3}), 0, 0);
  CHECK_ALLCLOSE(pow(F({1, 4, 9}, {3}), 0.5), F({1, 2, 3}, {3}), 0, 0);
  CHECK_ALLCLOSE(pow(F({2, 3}, {2}), 3.0), F({8, 27}, {2}), 1e-6, 0);
  CHECK_ALLCLOSE(pow(F({2, 3}, {2}), -1.0), F({0.5, 1.0 / 3}, {2}), 1e-6, 0);
  CHECK_ALLCLOSE(pow(F({2, 3}, {2}), 0.0), F({1, 1}, {2}), 0, 0);
  Tensor x = add(abs(rnd({2, 3}, 20)), 0.3);
  for (double s : {2.0, 0.5, 3.0, -1.5, 1.0, 0.0}) {
    CAPTURE(s);
    CHECK_GRADCHECK([s](const std::vector<Tensor>& in) { return pow(in[0], s); }, (std::vector<Tensor>{x}));
  }
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return add(in[0], 2.0); }, (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return sub(in[0], 2.0); }, (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return rsub(in[0], 2.0); }, (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0], -3.0); }, (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return div(in[0], 3.0); }, (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return rdiv(in[0], 3.0); }, (std::vector<Tensor>{x}));
}

namespace {
struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> ref;
  bool positive_domain;
};
double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
double sigmoid_ref(double x) { return 1 / (1 + std::exp(-x)); }
}  // namespace

TEST_CASE("unary ops: values (float32, float64, bf16, non-contiguous) and gradients") {
  std::vector<UnaryCase> cases = {
      {"neg", [](const Tensor& t) { return neg(t); }, [](double x) { return -x; }, false},
      {"exp", [](const Tensor& t) { return exp(t); }, [](double x) { return std::exp(x); }, false},
      {"log", [](const Tensor& t) { return log(t); }, [](double x) { return std::log(x); }, true},
      {"sqrt", [](const Tensor& t) { return sqrt(t); }, [](double x) { return std::sqrt(x); }, true},
      {"rsqrt", [](const Tensor& t) { return rsqrt(t); }, [](double x) { return 1 / std::sqrt(x); }, true},
      {"abs", [](const Tensor& t) { return abs(t); }, [](double x) { return std::fabs(x); }, false},
      {"erf", [](const Tensor& t) { return erf(t); }, [](double x) { return std::erf(x); }, false},
      {"relu", [](const Tensor& t) { return relu(t); }, [](double x) { return x > 0 ? x : 0; }, false},
      {"gelu", [](const Tensor& t) { return gelu(t); }, gelu_ref, false},
      {"silu", [](const Tensor& t) { return silu(t); }, [](double x) { return x * sigmoid_ref(x); }, false},
      {"tanh", [](const Tensor& t) { return tanh(t); }, [](double x) { return std::tanh(x); }, false},
      {"sigmoid", [](const Tensor& t) { return sigmoid(t); }, sigmoid_ref, false},
      {"clamp", [](const Tensor& t) { return clamp(t, -0.5, 0.7); },
       [](double x) { return std::min(0.7, std::max(-0.5, x)); }, false},
  };
  Tensor base = rnd({3, 4}, 30);
  Tensor posv = add(abs(base), 0.2);
  for (const auto& c : cases) {
    CAPTURE(c.name);
    Tensor x = c.positive_domain ? posv : base;
    std::vector<double> xv = x.to_vector<double>(), ev;
    for (double v : xv) ev.push_back(c.ref(v));
    Tensor expect = D(ev, x.shape());
    CHECK_ALLCLOSE(c.op(x), expect, 1e-12, 1e-14);
    CHECK(c.op(x).dtype() == DType::float64);
    Tensor x32 = x.to(DType::float32);
    CHECK(c.op(x32).dtype() == DType::float32);
    CHECK_ALLCLOSE(c.op(x32), expect, 1e-5, 1e-6);
    Tensor xb = x.to(DType::bfloat16);
    CHECK(c.op(xb).dtype() == DType::bfloat16);
    CHECK_ALLCLOSE(c.op(xb), expect, 2e-2, 2e-2);
    // transposed input gives the transposed result
    Tensor xt = x32.t().contiguous().t();
    CHECK(!xt.is_contiguous());
    CHECK_ALLCLOSE(c.op(xt), c.op(x32), 0, 0);
    // gradient (keep away from kinks)
    Tensor g = c.positive_domain ? posv : add(base, mul(sign(base), 0.05));
    if (std::string(c.name) == "clamp") g = D({-1, -0.2, 0.1, 0.5, 1.0, 2.0}, {2, 3});
    auto op = c.op;
    CHECK_GRADCHECK([op](const std::vector<Tensor>& in) { return op(in[0]); }, (std::vector<Tensor>{g}));
  }
  CHECK_ALLCLOSE(sign(F({-2, 0, 3}, {3})), F({-1, 0, 1}, {3}), 0, 0);
  Tensor s = F({-2, 3}, {2}).requires_grad_();
  sum(sign(s)).backward();
  CHECK_ALLCLOSE(s.grad(), F({0, 0}, {2}), 0, 0);
  CHECK(abs(I({-3, 2}, {2})).to_vector<int64_t>() == std::vector<int64_t>{3, 2});
  CHECK(neg(I({-3, 2}, {2})).to_vector<int64_t>() == std::vector<int64_t>{3, -2});
  CHECK_ALLCLOSE(relu(F({-1, 0, 2}, {3})), F({0, 0, 2}, {3}), 0, 0);
  // clamp passes gradient inside [lo, hi] (inclusive), zero outside
  Tensor c = F({-1, 0, 0.5, 1, 2}, {5}).requires_grad_();
  sum(clamp(c, 0, 1)).backward();
  CHECK_ALLCLOSE(c.grad(), F({0, 1, 1, 1, 0}, {5}), 0, 0);
  // numerically stable sigmoid / silu at extremes
  CHECK_ALLCLOSE(sigmoid(F({-100, 100}, {2})), F({0, 1}, {2}), 0, 1e-30);
  CHECK(std::isfinite(silu(F({-1000}, {1})).item()));
}

TEST_CASE("comparisons, isfinite, logical_not, where, masked_fill") {
  Tensor a = F({1, 2, 3}, {3}), b = F({3, 2, 1}, {3});
  CHECK(eq(a, b).dtype() == DType::bool_);
  CHECK(eq(a, b).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 0});
  CHECK(ne(a, b).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});
  CHECK(gt(a, b).to_vector<int64_t>() == std::vector<int64_t>{0, 0, 1});
  CHECK(lt(a, b).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  CHECK(ge(a, b).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 1});
  CHECK(le(a, b).to_vector<int64_t>() == std::vector<int64_t>{1, 1, 0});
  CHECK(eq(a, 2.0).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 0});
  CHECK(ne(a, 2.0).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});
  CHECK(gt(a, 1.5).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 1});
  CHECK(lt(a, 1.5).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  CHECK(ge(a, 2.0).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 1});
  CHECK(le(a, 2.0).to_vector<int64_t>() == std::vector<int64_t>{1, 1, 0});
  // broadcasting, mixed dtypes, non-contiguous
  Tensor m = F({1, 2, 3, 4}, {2, 2});
  CHECK(gt(m.t(), F({1.5, 2.5}, {2})).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 1, 1});
  CHECK(eq(I({1, 2}, {2}), F({1, 2.5}, {2})).to_vector<int64_t>() == std::vector<int64_t>{1, 0});
  Tensor w = F({1, std::numeric_limits<double>::infinity(), std::nan(""), -2}, {4});
  CHECK(isfinite(w).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0, 1});
  CHECK(logical_not(isfinite(w)).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 1, 0});
  CHECK(logical_not(F({0, 2}, {2})).to_vector<int64_t>() == std::vector<int64_t>{1, 0});
  // where with broadcasting
  Tensor cond = gt(F({1, -1}, {2, 1}), 0.0);  // [[true],[false]]
  Tensor x = F({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK_ALLCLOSE(where(cond, x, F({0}, {1})), F({1, 2, 3, 0, 0, 0}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(where(cond, scalar_tensor(9), x), F({9, 9, 9, 4, 5, 6}, {2, 3}), 0, 0);
  CHECK(where(cond, I({1}, {1}), F({0.5}, {1})).dtype() == DType::float32);
  CHECK_GRADCHECK(
      [](const std::vector<Tensor>& in) {
        return where(gt(D({1, -1, 1}, {3}), 0.0), in[0], in[1]);
      },
      (std::vector<Tensor>{rnd({2, 3}, 40), rnd({3}, 41)}));
  // masked_fill
  Tensor mask = gt(x, 3.5);
  CHECK_ALLCLOSE(masked_fill(x, mask, -1), F({1, 2, 3, -1, -1, -1}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(masked_fill(x, F({1, 0, 0}, {3}).to(DType::bool_), 0), F({0, 2, 3, 0, 5, 6}, {2, 3}), 0, 0);
  CHECK(masked_fill(x.to(DType::bfloat16), mask, -1).dtype() == DType::bfloat16);
  CHECK(std::isinf(masked_fill(x, mask, -std::numeric_limits<double>::infinity()).at({1, 0})));
  CHECK_GRADCHECK([mask](const std::vector<Tensor>& in) { return masked_fill(in[0], mask, 2.0); },
                  (std::vector<Tensor>{rnd({2, 3}, 42)}));
}

// ===========================================================================
// matmul, linear
// ===========================================================================

TEST_CASE("matmul: 1-D, 2-D, batched and broadcast shapes against a float64 reference") {
  Tensor v = D({1, 2, 3}, {3}), w = D({4, 5, 6}, {3});
  CHECK(matmul(v, w).dim() == 0);
  CHECK(matmul(v, w).item() == 32);
  Tensor m = D({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK_ALLCLOSE(matmul(m, v), D({14, 32}, {2}), 0, 0);
  CHECK_ALLCLOSE(matmul(D({1, 2}, {2}), m), D({9, 12, 15}, {3}), 0, 0);
  CHECK_ALLCLOSE(matmul(m, m.t()), D({14, 32, 32, 77}, {2, 2}), 0, 0);
  CHECK_ALLCLOSE(matmul(m.to(DType::float32), m.t().to(DType::float32)), D({14, 32, 32, 77}, {2, 2}), 0, 0);
  Tensor a = rnd({2, 3, 4}, 50), b = rnd({2, 4, 5}, 51);
  Tensor c = matmul(a, b);
  CHECK(c.shape() == Shape{2, 3, 5});
  for (int64_t i = 0; i < 2; ++i) CHECK_ALLCLOSE(c.select(0, i), ref_mm(a.select(0, i), b.select(0, i)), 1e-12, 1e-12);
  // broadcast batch dims: [2,1,3,4] x [5,4,2] -> [2,5,3,2]
  Tensor p = rnd({2, 1, 3, 4}, 52), q = rnd({5, 4, 2}, 53);
  Tensor r = matmul(p, q);
  CHECK(r.shape() == Shape{2, 5, 3, 2});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 5; ++j)
      CHECK_ALLCLOSE(r.select(0, i).select(0, j), ref_mm(p.select(0, i).select(0, 0), q.select(0, j)), 1e-12, 1e-12);
  // 3-D x 2-D, 2-D x 3-D, 3-D x 1-D, 1-D x 3-D
  Tensor k = rnd({4, 2}, 54);
  CHECK_ALLCLOSE(matmul(a, k).select(0, 1), ref_mm(a.select(0, 1), k), 1e-12, 1e-12);
  Tensor l = rnd({3, 4}, 55);
  CHECK_ALLCLOSE(matmul(l, b).select(0, 1), ref_mm(l, b.select(0, 1)), 1e-12, 1e-12);
  CHECK(matmul(a, rnd({4}, 56)).shape() == Shape{2, 3});
  CHECK(matmul(rnd({3}, 57), a).shape() == Shape{2, 4});
  // float32 with transposed and sliced (non-unit stride) operands
  Tensor A = rnd({6, 5}, 58, DType::float32), B = rnd({7, 5}, 59, DType::float32);
  CHECK_ALLCLOSE(matmul(A, B.t()), ref_mm(A, B.t()), 1e-5, 1e-5);
  CHECK_ALLCLOSE(matmul(A.t(), A), ref_mm(A.t(), A), 1e-5, 1e-5);
  Tensor Ar = A.slice(0, 0, 6, 2), Br = B.slice(0, 0, 7, 2);  // row stride 10
  CHECK_ALLCLOSE(matmul(Ar, Br.t()), ref_mm(Ar, Br.t()), 1e-5, 1e-5);
  Tensor Ac = A.slice(1, 0, 5, 2), Bc = B.slice(1, 0, 5, 2);  // column stride 2: copied for sgemm
  CHECK_ALLCLOSE(matmul(Ac, Bc.t()), ref_mm(Ac, Bc.t()), 1e-5, 1e-5);
  CHECK_ALLCLOSE(matmul(Ac.to(DType::float64), Bc.t().to(DType::float64)), ref_mm(Ac, Bc.t()), 1e-12, 1e-12);
  Tensor Ae = F({1, 2}, {2, 1}).expand({2, 3});  // zero strides
  CHECK_ALLCLOSE(matmul(Ae, F({1, 1, 1}, {3, 1})), F({3, 6}, {2, 1}), 0, 0);
  // bf16 inputs compute in float32
  Tensor hb = matmul(m.to(DType::bfloat16), m.t().to(DType::bfloat16));
  CHECK(hb.dtype() == DType::bfloat16);
  CHECK_ALLCLOSE(hb, D({14, 32, 32, 77}, {2, 2}), 0, 0);
  // empty K
  CHECK_ALLCLOSE(matmul(zeros({2, 0}), zeros({0, 3})), zeros({2, 3}), 0, 0);
}

TEST_CASE("matmul: errors") {
  std::string e = error_of([] { matmul(zeros({4, 10}), zeros({12, 3})); });
  CHECK(e == "[matmul] shapes [4, 10] and [12, 3] cannot be multiplied (10 != 12)");
  CHECK(error_of([] { matmul(zeros({3}), zeros({4})); }).find("[matmul]") != std::string::npos);
  CHECK(error_of([] { matmul(zeros({2, 2, 3}), zeros({3, 3, 2})); }).find("[matmul]") != std::string::npos);
  CHECK(error_of([] { matmul(scalar_tensor(1), zeros({1})); }).find("[matmul]") != std::string::npos);
  CHECK(error_of([] { matmul(zeros({2, 2}), zeros({2, 2}, DType::float64)); }).find("[matmul]") !=
        std::string::npos);
  CHECK(error_of([] { matmul(I({1}, {1, 1}), I({1}, {1, 1})); }).find("[matmul]") != std::string::npos);
}

TEST_CASE("matmul: gradients") {
  auto mm = [](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); };
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({3}, 60), rnd({3}, 61)}));
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({2, 3}, 62), rnd({3}, 63)}));
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({3}, 64), rnd({3, 2}, 65)}));
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({2, 3}, 66), rnd({3, 4}, 67)}));
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({2, 2, 3}, 68), rnd({2, 3, 4}, 69)}));
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({2, 1, 2, 3}, 70), rnd({3, 3, 2}, 71)}));
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({2, 2, 3}, 72), rnd({3, 2}, 73)}));
  CHECK_GRADCHECK(mm, (std::vector<Tensor>{rnd({2, 3}, 74), rnd({2, 3, 2}, 75)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& x) { return matmul(x[0].t(), x[1].t()); },
                  (std::vector<Tensor>{rnd({3, 2}, 76), rnd({4, 3}, 77)}));
}

TEST_CASE("matmul float32 [512x1024]·[1024x1024] matches float64 within 1e-5 relative") {
  Generator g(2024);
  Tensor a = randn({512, 1024}, g), b = randn({1024, 1024}, g);
  Tensor c32 = matmul(a, b);
  Tensor c64 = matmul(a.to(DType::float64), b.to(DType::float64));
  Tensor diff = sub(c32.to(DType::float64), c64);
  double rel_fro = norm(diff).item() / norm(c64).item();
  double max_rel = max(abs(diff)).item() / max(abs(c64)).item();
  CAPTURE(rel_fro);
  CAPTURE(max_rel);
  CHECK(rel_fro < 1e-5);
  CHECK(max_rel < 1e-5);
  // the same through linear (W stored [N, K])
  Tensor y = linear(a, b.t().contiguous());
  CHECK(norm(sub(y.to(DType::float64), c64)).item() / norm(c64).item() < 1e-5);
}

TEST_CASE("linear: 1-D/2-D/3-D inputs, with and without bias") {
  Tensor x = D({1, 2, 3, 4, 5, 6}, {2, 3}), w = D({1, 0, -1, 2, 1, 0}, {2, 3}), b = D({10, 20}, {2});
  CHECK_ALLCLOSE(linear(x, w), D({-2, 4, -2, 13}, {2, 2}), 0, 0);
  CHECK_ALLCLOSE(linear(x, w, b), D({8, 24, 8, 33}, {2, 2}), 0, 0);
  CHECK_ALLCLOSE(linear(D({1, 2, 3}, {3}), w, b), D({8, 24}, {2}), 0, 0);
  Tensor x3 = rnd({2, 3, 4}, 80), w3 = rnd({5, 4}, 81), b3 = rnd({5}, 82);
  Tensor y = linear(x3, w3, b3);
  CHECK(y.shape() == Shape{2, 3, 5});
  CHECK_ALLCLOSE(y, add(matmul(x3, w3.t()), b3), 1e-12, 1e-12);
  CHECK_ALLCLOSE(linear(x3.to(DType::float32), w3.to(DType::float32), b3.to(DType::float32)), y, 1e-5, 1e-5);
  CHECK_ALLCLOSE(linear(x3.to(DType::bfloat16), w3.to(DType::bfloat16)), matmul(x3, w3.t()), 5e-2, 5e-2);
  // non-contiguous input and weight
  Tensor xt = rnd({4, 3}, 83).t(), wt = rnd({4, 5}, 84).t();
  CHECK_ALLCLOSE(linear(xt, wt, b3), add(ref_mm(xt, wt.t()), b3), 1e-12, 1e-12);
  Tensor xs = rnd({2, 6, 4}, 85).slice(1, 0, 6, 2);
  CHECK_ALLCLOSE(linear(xs, w3), matmul(xs, w3.t()), 1e-12, 1e-12);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); },
                  (std::vector<Tensor>{x3, w3, b3}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return linear(in[0], in[1]); },
                  (std::vector<Tensor>{x3, w3}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return linear(in[0].transpose(0, 1), in[1], in[2]); },
                  (std::vector<Tensor>{rnd({3, 2, 4}, 86), w3, b3}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); },
                  (std::vector<Tensor>{rnd({4}, 87), w3, b3}));
  // frozen weight: only x and bias get gradients
  Tensor xf = rnd({2, 4}, 88).requires_grad_(), wf = rnd({5, 4}, 89), bf = rnd({5}, 90).requires_grad_();
  sum(linear(xf, wf, bf)).backward();
  CHECK(!wf.grad().defined());
  CHECK_ALLCLOSE(bf.grad(), full({5}, 2, DType::float64), 0, 0);
  CHECK_ALLCLOSE(xf.grad(), sum(wf, {0}, true).expand({2, 4}), 1e-12, 1e-12);
}

TEST_CASE("linear: errors") {
  CHECK(error_of([] { linear(zeros({2, 3}), zeros({4, 5})); }).find("[linear]") != std::string::npos);
  CHECK(error_of([] { linear(zeros({2, 3}), zeros({4, 3}), zeros({5})); }).find("[linear] bias") !=
        std::string::npos);
  CHECK(error_of([] { linear(zeros({2, 3}), zeros({3})); }).find("[linear] weight must be 2-D") !=
        std::string::npos);
  CHECK(error_of([] { linear(zeros({2, 3}), zeros({4, 3}, DType::float64)); }).find("[linear]") !=
        std::string::npos);
  CHECK(error_of([] { linear(scalar_tensor(1), zeros({4, 1})); }).find("[linear]") != std::string::npos);
}

// ===========================================================================
// reductions, softmax
// ===========================================================================

TEST_CASE("sum and mean over dims, keepdim, negative dims, non-contiguous") {
  Tensor a = F({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(sum(a).dim() == 0);
  CHECK(sum(a).item() == 21);
  CHECK_ALLCLOSE(sum(a, {0}), F({5, 7, 9}, {3}), 0, 0);
  CHECK_ALLCLOSE(sum(a, {1}), F({6, 15}, {2}), 0, 0);
  CHECK_ALLCLOSE(sum(a, {-1}, true), F({6, 15}, {2, 1}), 0, 0);
  CHECK_ALLCLOSE(sum(a, {0, 1}, true), F({21}, {1, 1}), 0, 0);
  CHECK_ALLCLOSE(sum(a.t(), {0}), F({6, 15}, {2}), 0, 0);
  CHECK_ALLCLOSE(mean(a), scalar_tensor(3.5), 0, 0);
  CHECK_ALLCLOSE(mean(a, {0}), F({2.5, 3.5, 4.5}, {3}), 0, 0);
  CHECK_ALLCLOSE(mean(a, {1}, true), F({2, 5}, {2, 1}), 0, 0);
  Tensor b = arange(0, 24, 1, DType::float64).view({2, 3, 4});
  CHECK_ALLCLOSE(sum(b, {0, 2}), D({60, 92, 124}, {3}), 0, 0);
  CHECK_ALLCLOSE(sum(b, {2, 0}, true), D({60, 92, 124}, {1, 3, 1}), 0, 0);
  CHECK_ALLCLOSE(sum(b.permute({2, 0, 1}), {1}), sum(b, {0}).t(), 0, 0);
  CHECK_ALLCLOSE(sum(b.slice(2, 0, 4, 2), {-1}), D({2, 10, 18, 26, 34, 42}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(sum(F({1, 2}, {2}).expand({3, 2}), {0}), F({3, 6}, {2}), 0, 0);
  CHECK(sum(I({1, 2, 3}, {3})).dtype() == DType::int64);
  CHECK(sum(I({1, 2, 3}, {3})).item() == 6);
  CHECK(sum(scalar_tensor(4)).item() == 4);
  CHECK(sum(zeros({0, 3}), {0}).shape() == Shape{3});
  CHECK(sum(a.to(DType::bfloat16)).dtype() == DType::bfloat16);
  CHECK(sum(a.to(DType::bfloat16)).item() == 21);
  CHECK(error_of([&] { sum(a, {2}); }).find("[sum] dimension 2 out of range") != std::string::npos);
  CHECK(error_of([&] { sum(a, {1, -1}); }).find("[sum] dimension repeated") != std::string::npos);
  CHECK(error_of([&] { mean(I({1}, {1})); }).find("[mean]") != std::string::npos);
  CHECK(error_of([&] { mean(a, {3}); }).find("[mean]") != std::string::npos);
  Tensor x = rnd({2, 3, 4}, 100);
  for (auto dims : std::vector<std::vector<int64_t>>{{}, {0}, {1}, {2}, {0, 2}, {-1, -2}})
    for (bool keep : {false, true}) {
      CHECK_GRADCHECK([dims, keep](const std::vector<Tensor>& in) { return sum(in[0], dims, keep); },
                      (std::vector<Tensor>{x}));
      CHECK_GRADCHECK([dims, keep](const std::vector<Tensor>& in) { return mean(in[0], dims, keep); },
                      (std::vector<Tensor>{x}));
    }
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return sum(in[0].transpose(0, 2), {1}); },
                  (std::vector<Tensor>{x}));
}

TEST_CASE("sum: large reductions over outer, inner and all dims match a float64 reference") {
  // exercises the row-accumulating fast path (bias gradients) and the parallel paths
  Tensor a = rnd({300, 517}, 101, DType::float32);
  std::vector<double> v = a.to_vector<double>();
  std::vector<double> col(517, 0.0), row(300, 0.0);
  double all = 0;
  for (int64_t i = 0; i < 300; ++i)
    for (int64_t j = 0; j < 517; ++j) {
      double x = v[size_t(i * 517 + j)];
      col[size_t(j)] += x;
      row[size_t(i)] += x;
      all += x;
    }
  CHECK_ALLCLOSE(sum(a, {0}), D(col, {517}), 1e-5, 1e-5);
  CHECK_ALLCLOSE(sum(a, {1}), D(row, {300}), 1e-5, 1e-5);
  CHECK(std::fabs(sum(a).item() - all) < 1e-3);
  CHECK_ALLCLOSE(sum(a.t(), {1}), D(col, {517}), 1e-5, 1e-5);
  CHECK_ALLCLOSE(sum(a.view({3, 100, 517}), {0, 1}), D(col, {517}), 1e-5, 1e-5);
  CHECK_ALLCLOSE(mean(a.view({3, 100, 517}), {0, 1}), div(D(col, {517}), 300.0), 1e-5, 1e-6);
  // reducing a middle dim
  Tensor b = rnd({4, 50, 300}, 102);
  Tensor mid = sum(b, {1});
  std::vector<double> bv = b.to_vector<double>();
  double s = 0;
  for (int64_t j = 0; j < 50; ++j) s += bv[size_t(2 * 50 * 300 + j * 300 + 7)];
  CHECK(std::fabs(mid.at({2, 7}) - s) < 1e-9);
  CHECK_ALLCLOSE(sum(b, {0, 2}), sum(sum(b, {2}), {0}), 1e-10, 1e-10);
  // amax over large outer dim
  Tensor m = amax(a, {0});
  std::vector<double> mx(517, -1e300);
  for (int64_t i = 0; i < 300; ++i)
    for (int64_t j = 0; j < 517; ++j) mx[size_t(j)] = std::max(mx[size_t(j)], v[size_t(i * 517 + j)]);
  CHECK_ALLCLOSE(m, D(mx, {517}), 0, 0);
  Tensor big = rnd({70000}, 103, DType::float32);
  std::vector<double> bgv = big.to_vector<double>();
  double bs = 0, bm = -1e300;
  int64_t bi = 0;
  for (size_t i = 0; i < bgv.size(); ++i) {
    bs += bgv[i];
    if (bgv[i] > bm) {
      bm = bgv[i];
      bi = int64_t(i);
    }
  }
  CHECK(std::fabs(sum(big).item() - bs) < 1e-2);
  CHECK(max(big).item() == bm);
  CHECK(argmax(big, 0).item() == double(bi));
}

TEST_CASE("amax, max, argmax, norm") {
  Tensor a = F({1, 5, 3, 4, 2, 6}, {2, 3});
  CHECK(max(a).item() == 6);
  CHECK_ALLCLOSE(amax(a, {0}), F({4, 5, 6}, {3}), 0, 0);
  CHECK_ALLCLOSE(amax(a, {1}, true), F({5, 6}, {2, 1}), 0, 0);
  CHECK_ALLCLOSE(max(a, 1), F({5, 6}, {2}), 0, 0);
  CHECK_ALLCLOSE(max(a, 0, true), F({4, 5, 6}, {1, 3}), 0, 0);
  CHECK_ALLCLOSE(amax(a.t(), {1}), F({4, 5, 6}, {3}), 0, 0);
  CHECK(argmax(a, 1).dtype() == DType::int64);
  CHECK(argmax(a, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 2});
  CHECK(argmax(a, 0).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});
  CHECK(argmax(a, -1, true).shape() == Shape{2, 1});
  CHECK(argmax(a.t(), 0).to_vector<int64_t>() == std::vector<int64_t>{1, 2});
  CHECK(argmax(F({2, 7, 7, 1}, {4}), 0).item() == 1);  // first maximum
  CHECK(argmax(F({2, std::nan(""), 7}, {3}), 0).item() == 1);  // NaN wins
  CHECK(std::isnan(max(F({2, std::nan(""), 7}, {3})).item()));
  CHECK(argmax(I({3, 9, 2}, {3}), 0).item() == 1);
  CHECK(max(I({3, 9, 2}, {3})).item() == 9);
  CHECK(error_of([&] { amax(zeros({0, 3}), {0}); }).find("[amax]") != std::string::npos);
  CHECK(error_of([&] { argmax(a, 2); }).find("[argmax]") != std::string::npos);
  CHECK_ALLCLOSE(norm(F({3, 4}, {2})), scalar_tensor(5), 0, 0);
  CHECK_ALLCLOSE(norm(F({3, 4, 0, 0, 1, 0}, {3, 2}), {1}), F({5, 0, 1}, {3}), 0, 0);
  CHECK_ALLCLOSE(norm(F({3, 4, 0, 0}, {2, 2}), {0}, true), F({3, 4}, {1, 2}), 0, 0);
  CHECK(error_of([&] { norm(I({1}, {1})); }).find("[norm]") != std::string::npos);
  Tensor x = rnd({3, 4}, 110);  // distinct values: no ties
  for (bool keep : {false, true}) {
    CHECK_GRADCHECK([keep](const std::vector<Tensor>& in) { return amax(in[0], {1}, keep); },
                    (std::vector<Tensor>{x}));
    CHECK_GRADCHECK([keep](const std::vector<Tensor>& in) { return norm(in[0], {0}, keep); },
                    (std::vector<Tensor>{x}));
  }
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return max(in[0]); }, (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return max(in[0].t(), 0); }, (std::vector<Tensor>{x}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return norm(in[0]); }, (std::vector<Tensor>{x}));
  // ties share the gradient; zero norm gives zero gradient
  Tensor t = F({1, 3, 3}, {3}).requires_grad_();
  max(t).backward();
  CHECK_ALLCLOSE(t.grad(), F({0, 0.5, 0.5}, {3}), 0, 0);
  Tensor z = zeros({3}).requires_grad_();
  norm(z).backward();
  CHECK_ALLCLOSE(z.grad(), zeros({3}), 0, 0);
}

TEST_CASE("softmax and log_softmax") {
  Tensor a = D({1, 2, 3, 1, 1, 1}, {2, 3});
  double e1 = std::exp(1.0), e2 = std::exp(2.0), e3 = std::exp(3.0), s = e1 + e2 + e3;
  CHECK_ALLCLOSE(softmax(a, 1), D({e1 / s, e2 / s, e3 / s, 1. / 3, 1. / 3, 1. / 3}, {2, 3}), 1e-12, 0);
  CHECK_ALLCLOSE(log_softmax(a, -1), log(softmax(a, 1)), 1e-12, 1e-12);
  CHECK_ALLCLOSE(softmax(a, 0), D({0.5, 1 / (1 + std::exp(-1.0)), 1 / (1 + std::exp(-2.0)), 0.5,
                                   1 / (1 + std::exp(1.0)), 1 / (1 + std::exp(2.0))},
                                  {2, 3}),
                 1e-12, 0);
  CHECK_ALLCLOSE(softmax(a.t(), 0), softmax(a, 1).t(), 1e-12, 0);
  // large logits stay finite
  Tensor big = F({1000, 1001, 1002}, {3});
  CHECK_ALLCLOSE(softmax(big, 0), F({e1 / s, e2 / s, e3 / s}, {3}), 1e-5, 0);
  CHECK_ALLCLOSE(log_softmax(big, 0), F({1 - std::log(s), 2 - std::log(s), 3 - std::log(s)}, {3}), 1e-5, 1e-5);
  CHECK(softmax(big.to(DType::bfloat16), 0).dtype() == DType::bfloat16);
  // -inf entries get probability 0
  Tensor mi = F({0, -std::numeric_limits<double>::infinity()}, {2});
  CHECK_ALLCLOSE(softmax(mi, 0), F({1, 0}, {2}), 0, 0);
  CHECK(error_of([&] { softmax(a, 2); }).find("[softmax]") != std::string::npos);
  CHECK(error_of([&] { log_softmax(I({1}, {1}), 0); }).find("[log_softmax]") != std::string::npos);
  Tensor x = rnd({2, 3, 4}, 120);
  for (int64_t d : {0, 1, 2, -1}) {
    CHECK_GRADCHECK([d](const std::vector<Tensor>& in) { return softmax(in[0], d); }, (std::vector<Tensor>{x}));
    CHECK_GRADCHECK([d](const std::vector<Tensor>& in) { return log_softmax(in[0], d); },
                    (std::vector<Tensor>{x}));
  }
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return softmax(in[0].transpose(0, 2), 1); },
                  (std::vector<Tensor>{x}));
}

// ===========================================================================
// indexing, cat, stack
// ===========================================================================

TEST_CASE("index_select and index_add") {
  Tensor a = F({1, 2, 3, 4, 5, 6}, {3, 2});
  CHECK_ALLCLOSE(index_select(a, 0, I({2, 0, 2}, {3})), F({5, 6, 1, 2, 5, 6}, {3, 2}), 0, 0);
  CHECK_ALLCLOSE(index_select(a, 1, I({1}, {1})), F({2, 4, 6}, {3, 1}), 0, 0);
  CHECK_ALLCLOSE(index_select(a.t(), 1, I({1, 0}, {2})), F({3, 1, 4, 2}, {2, 2}), 0, 0);
  CHECK_ALLCLOSE(index_select(a, -1, I({0}, {1})), F({1, 3, 5}, {3, 1}), 0, 0);
  CHECK(index_select(a, 0, I({}, {0})).shape() == Shape{0, 2});
  CHECK(error_of([&] { index_select(a, 0, I({3}, {1})); }).find("out of bounds") != std::string::npos);
  CHECK(error_of([&] { index_select(a, 0, F({0}, {1})); }).find("[index_select] index must be int64") !=
        std::string::npos);
  CHECK(error_of([&] { index_select(a, 2, I({0}, {1})); }).find("[index_select]") != std::string::npos);
  // index_add accumulates repeated indices, out of place
  Tensor z = zeros({3, 2});
  Tensor r = index_add(z, 0, I({0, 2, 0}, {3}), F({1, 1, 2, 2, 3, 3}, {3, 2}));
  CHECK_ALLCLOSE(r, F({4, 4, 0, 0, 2, 2}, {3, 2}), 0, 0);
  CHECK_ALLCLOSE(z, zeros({3, 2}), 0, 0);
  CHECK_ALLCLOSE(index_add(a, 1, I({1, 1}, {2}), F({1, 2, 3, 4, 5, 6}, {3, 2})), F({1, 5, 3, 11, 5, 17}, {3, 2}), 0, 0);
  CHECK(index_add(a.to(DType::bfloat16), 0, I({0}, {1}), F({1, 1}, {1, 2}).to(DType::bfloat16)).dtype() ==
        DType::bfloat16);
  CHECK(error_of([&] { index_add(a, 0, I({0}, {1}), zeros({2, 2})); }).find("[index_add]") != std::string::npos);
  CHECK(error_of([&] { index_add(a, 0, I({5}, {1}), zeros({1, 2})); }).find("out of bounds") != std::string::npos);
  Tensor idx = I({2, 0, 2, 1}, {4});
  CHECK_GRADCHECK([idx](const std::vector<Tensor>& in) { return index_select(in[0], 0, idx); },
                  (std::vector<Tensor>{rnd({3, 2}, 130)}));
  CHECK_GRADCHECK([idx](const std::vector<Tensor>& in) { return index_select(in[0], 1, idx); },
                  (std::vector<Tensor>{rnd({2, 3}, 131)}));
  CHECK_GRADCHECK([idx](const std::vector<Tensor>& in) { return index_add(in[0], 0, idx, in[1]); },
                  (std::vector<Tensor>{rnd({3, 2}, 132), rnd({4, 2}, 133)}));
}

TEST_CASE("gather and scatter_add") {
  Tensor a = F({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor idx = I({2, 0, 1, 1}, {2, 2});
  CHECK_ALLCLOSE(gather(a, 1, idx), F({3, 1, 5, 5}, {2, 2}), 0, 0);
  CHECK_ALLCLOSE(gather(a, 0, I({1, 0, 1}, {1, 3})), F({4, 2, 6}, {1, 3}), 0, 0);
  CHECK_ALLCLOSE(gather(a.t(), 0, I({1, 0}, {2, 1})), F({2, 1}, {2, 1}), 0, 0);
  // index smaller than the input in a non-gathered dimension (torch allows <=)
  CHECK_ALLCLOSE(gather(a, 1, I({2, 0}, {1, 2})), F({3, 1}, {1, 2}), 0, 0);
  CHECK_ALLCLOSE(scatter_add(zeros({2, 3}), 1, I({2, 2}, {1, 2}), F({1, 2}, {1, 2})), F({0, 0, 3, 0, 0, 0}, {2, 3}), 0, 0);
  Tensor small = I({1, 0}, {1, 2});
  CHECK_GRADCHECK([small](const std::vector<Tensor>& in) { return gather(in[0], 0, small); },
                  (std::vector<Tensor>{rnd({2, 3}, 143)}));
  Tensor s = scatter_add(zeros({2, 3}), 1, idx, F({1, 2, 3, 4}, {2, 2}));
  CHECK_ALLCLOSE(s, F({2, 0, 1, 0, 7, 0}, {2, 3}), 0, 0);
  CHECK(error_of([&] { gather(a, 1, I({3}, {1, 1})); }).find("[gather]") != std::string::npos);
  CHECK(error_of([&] { gather(a, 1, I({3}, {1})); }).find("[gather]") != std::string::npos);
  CHECK(error_of([&] { gather(a, 1, I({0, 0, 0}, {3, 1})); }).find("[gather] index int64[3, 1] is larger") !=
        std::string::npos);
  CHECK(error_of([&] { scatter_add(a, 1, idx, zeros({2, 3})); }).find("[scatter_add]") != std::string::npos);
  CHECK_GRADCHECK([idx](const std::vector<Tensor>& in) { return gather(in[0], 1, idx); },
                  (std::vector<Tensor>{rnd({2, 3}, 140)}));
  CHECK_GRADCHECK([idx](const std::vector<Tensor>& in) { return scatter_add(in[0], 1, idx, in[1]); },
                  (std::vector<Tensor>{rnd({2, 3}, 141), rnd({2, 2}, 142)}));
}

TEST_CASE("cat and stack") {
  Tensor a = F({1, 2, 3, 4}, {2, 2}), b = F({5, 6}, {1, 2}), c = F({7, 8}, {2, 1});
  CHECK_ALLCLOSE(cat({a, b}), F({1, 2, 3, 4, 5, 6}, {3, 2}), 0, 0);
  CHECK_ALLCLOSE(cat({a, c}, 1), F({1, 2, 7, 3, 4, 8}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(cat({a, c}, -1), F({1, 2, 7, 3, 4, 8}, {2, 3}), 0, 0);
  CHECK_ALLCLOSE(cat({a.t(), b}), F({1, 3, 2, 4, 5, 6}, {3, 2}), 0, 0);
  CHECK(cat({a, b.to(DType::float64)}).dtype() == DType::float64);
  CHECK_ALLCLOSE(cat({a}), a, 0, 0);
  CHECK_ALLCLOSE(cat({a, zeros({0, 2})}), a, 0, 0);
  CHECK_ALLCLOSE(stack({F({1, 2}, {2}), F({3, 4}, {2})}), F({1, 2, 3, 4}, {2, 2}), 0, 0);
  CHECK_ALLCLOSE(stack({F({1, 2}, {2}), F({3, 4}, {2})}, 1), F({1, 3, 2, 4}, {2, 2}), 0, 0);
  CHECK(stack({a, a, a}, -1).shape() == Shape{2, 2, 3});
  CHECK(error_of([&] { cat({a, c}); }).find("[cat] sizes must match") != std::string::npos);
  CHECK(error_of([&] { cat({a, F({1}, {1})}); }).find("[cat]") != std::string::npos);
  CHECK(error_of([&] { cat({}); }).find("[cat]") != std::string::npos);
  CHECK(error_of([&] { cat({a}, 2); }).find("[cat]") != std::string::npos);
  CHECK(error_of([&] { stack({a, b}); }).find("[stack]") != std::string::npos);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return cat({in[0], in[1], in[0]}, 1); },
                  (std::vector<Tensor>{rnd({2, 3}, 150), rnd({2, 1}, 151)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return stack({in[0], in[1].t()}, 1); },
                  (std::vector<Tensor>{rnd({2, 3}, 152), rnd({3, 2}, 153)}));
  // a tensor without grad mixed in
  Tensor g = F({1, 2}, {2}).requires_grad_(), ng = F({3}, {1});
  sum(mul(cat({g, ng}), F({1, 2, 3}, {3}))).backward();
  CHECK_ALLCLOSE(g.grad(), F({1, 2}, {2}), 0, 0);
}

// ===========================================================================
// nn functional
// ===========================================================================

TEST_CASE("embedding with padding_idx") {
  Tensor w = F({0, 1, 10, 11, 20, 21, 30, 31}, {4, 2});
  Tensor ids = I({3, 0, 1, 3, 2, 1}, {2, 3});
  Tensor e = embedding(ids, w);
  CHECK(e.shape() == Shape{2, 3, 2});
  CHECK_ALLCLOSE(e, F({30, 31, 0, 1, 10, 11, 30, 31, 20, 21, 10, 11}, {2, 3, 2}), 0, 0);
  CHECK_ALLCLOSE(embedding(I({2}, {}), w), F({20, 21}, {2}), 0, 0);
  Tensor wg = w.clone().requires_grad_();
  sum(mul(embedding(ids, wg, 1), F({1, 2}, {2}))).backward();
  // row 3 used twice, row 0 and 2 once, row 1 is padding (no gradient)
  CHECK_ALLCLOSE(wg.grad(), F({1, 2, 0, 0, 1, 2, 2, 4}, {4, 2}), 0, 0);
  Tensor wn = w.clone().requires_grad_();
  sum(embedding(ids, wn, -1)).backward();  // -1 -> row 3
  CHECK_ALLCLOSE(wn.grad(), F({1, 1, 2, 2, 1, 1, 0, 0}, {4, 2}), 0, 0);
  CHECK_GRADCHECK([ids](const std::vector<Tensor>& in) { return embedding(ids, in[0]); },
                  (std::vector<Tensor>{rnd({4, 2}, 160)}));
  CHECK(error_of([&] { embedding(ids, zeros({4})); }).find("[embedding]") != std::string::npos);
  CHECK(error_of([&] { embedding(F({1}, {1}), w); }).find("[embedding]") != std::string::npos);
  CHECK(error_of([&] { embedding(I({4}, {1}), w); }).find("[embedding]") != std::string::npos);
  CHECK(error_of([&] { embedding(ids, w, 4); }).find("[embedding]") != std::string::npos);
}

TEST_CASE("Generator get_state / set_state resumes the same stream, mid-buffer too") {
  Generator g(11);
  g.next_u32();  // leaves three buffered words of the current Philox block
  Generator::State st = g.get_state();
  std::vector<uint32_t> a;
  for (int i = 0; i < 9; ++i) a.push_back(g.next_u32());
  Generator h(999);
  h.set_state(st);
  std::vector<uint32_t> b;
  for (int i = 0; i < 9; ++i) b.push_back(h.next_u32());
  CHECK(a == b);
  CHECK(h.seed() == 11);
  Generator fresh(11);  // a restart from the seed alone is a different position
  CHECK(fresh.next_u32() != a[0]);
}

TEST_CASE("dropout: mask statistics, scaling, eval identity, determinism") {
  Tensor x = ones({200, 500});
  Generator g1(5);
  Tensor y = dropout(x, 0.3, true, g1);
  std::vector<float> v = y.to_vector<float>();
  int64_t zeros_n = 0;
  bool scaled = true;
  for (float f : v) {
    if (f == 0) ++zeros_n;
    else if (std::fabs(f - 1 / 0.7f) > 1e-6f) scaled = false;
  }
  double frac = double(zeros_n) / double(v.size());
  CAPTURE(frac);
  CHECK(std::fabs(frac - 0.3) < 0.01);
  CHECK(scaled);
  CHECK(std::fabs(mean(y).item() - 1.0) < 0.02);
  // same seed, same mask; the generator advances between calls
  Generator g2(5);
  CHECK_ALLCLOSE(dropout(x, 0.3, true, g2), y, 0, 0);
  Tensor y2 = dropout(x, 0.3, true, g2);
  CHECK(peft::testing::max_abs_diff(y, y2) > 0);
  Generator g3(6);
  CHECK(peft::testing::max_abs_diff(dropout(x, 0.3, true, g3), y) > 0);
  // eval mode and p = 0 are the identity; p = 1 zeroes
  Generator g(1);
  CHECK(dropout(x, 0.5, false, g).same_storage(x));
  CHECK_ALLCLOSE(dropout(x, 0.0, true, g), x, 0, 0);
  CHECK_ALLCLOSE(dropout(x, 1.0, true, g), zeros_like(x), 0, 0);
  CHECK(dropout(x.to(DType::bfloat16), 0.5, true, g).dtype() == DType::bfloat16);
  CHECK(error_of([&] { dropout(x, 1.5, true, g); }).find("[dropout]") != std::string::npos);
  // gradient is the same mask, scaled
  Tensor xg = rnd({4, 5}, 170).requires_grad_();
  Generator g4(9);
  Tensor out = dropout(xg, 0.5, true, g4);
  sum(out).backward();
  Tensor expect = div(out.detach(), xg.detach());
  CHECK_ALLCLOSE(xg.grad(), expect, 1e-12, 1e-12);
}

TEST_CASE("mse_loss") {
  Tensor a = F({1, 2, 3, 4}, {2, 2}), b = F({1, 0, 0, 0}, {2, 2});
  CHECK(mse_loss(a, b).item() == doctest::Approx((0 + 4 + 9 + 16) / 4.0));
  CHECK(mse_loss(a.t(), b).item() == doctest::Approx((0 + 9 + 4 + 16) / 4.0));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return mse_loss(in[0], in[1]); },
                  (std::vector<Tensor>{rnd({2, 3}, 180), rnd({2, 3}, 181)}));
  CHECK(error_of([&] { mse_loss(a, zeros({3})); }).find("[mse_loss]") != std::string::npos);
}

TEST_CASE("cross_entropy with ignore_index") {
  Tensor logits = D({1, 2, 3, 1, 1, 1, 0, 5, 0}, {3, 3});
  Tensor target = I({2, 0, 1}, {3});
  double l0 = -std::log(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  double l1 = std::log(3.0);
  double l2 = -std::log(std::exp(5.0) / (2 + std::exp(5.0)));
  CHECK(cross_entropy(logits, target).item() == doctest::Approx((l0 + l1 + l2) / 3));
  CHECK(cross_entropy(logits, I({2, -100, 1}, {3})).item() == doctest::Approx((l0 + l2) / 2));
  CHECK(cross_entropy(logits, I({2, 7, 7}, {3}), 7).item() == doctest::Approx(l0));
  CHECK(cross_entropy(logits.select(0, 0), I({2}, {})).item() == doctest::Approx(l0));
  CHECK(cross_entropy(logits.to(DType::float32), target).dtype() == DType::float32);
  Tensor tg = I({2, -100, 1, 0}, {4});
  CHECK_GRADCHECK([tg](const std::vector<Tensor>& in) { return cross_entropy(in[0], tg); },
                  (std::vector<Tensor>{rnd({4, 3}, 190)}));
  CHECK_GRADCHECK([tg](const std::vector<Tensor>& in) { return cross_entropy(in[0].t(), tg); },
                  (std::vector<Tensor>{rnd({3, 4}, 191)}));
  // ignored rows get exactly zero gradient
  Tensor lg = rnd({4, 3}, 192).requires_grad_();
  cross_entropy(lg, tg).backward();
  CHECK_ALLCLOSE(lg.grad().select(0, 1), zeros({3}, DType::float64), 0, 0);
  CHECK(error_of([&] { cross_entropy(logits, I({3, 0, 0}, {3})); }).find("[cross_entropy]") != std::string::npos);
  CHECK(error_of([&] { cross_entropy(logits, I({0, 0}, {2})); }).find("[cross_entropy]") != std::string::npos);
  CHECK(error_of([&] { cross_entropy(logits, F({0, 0, 0}, {3})); }).find("[cross_entropy]") != std::string::npos);
}

TEST_CASE("layer_norm") {
  Tensor x = D({1, 2, 3, 4, 2, 2, 2, 2}, {2, 4});
  double m = 2.5, var = 1.25, inv = 1 / std::sqrt(var + 1e-5);
  Tensor y = layer_norm(x, {4}, Tensor(), Tensor());
  CHECK_ALLCLOSE(y, D({-1.5 * inv, -0.5 * inv, 0.5 * inv, 1.5 * inv, 0, 0, 0, 0}, {2, 4}), 1e-12, 1e-12);
  (void)m;
  Tensor w = D({1, 2, 1, 2}, {4}), b = D({0, 0, 1, 1}, {4});
  Tensor yw = layer_norm(x, {4}, w, b);
  CHECK(yw.at({0, 1}) == doctest::Approx(-1.0 * inv));
  CHECK(yw.at({0, 3}) == doctest::Approx(3.0 * inv + 1));
  CHECK(yw.at({1, 2}) == doctest::Approx(1.0));
  Tensor x3 = rnd({2, 3, 4}, 200);
  Tensor y2 = layer_norm(x3, {3, 4}, Tensor(), Tensor());
  CHECK(std::fabs(mean(y2.select(0, 1)).item()) < 1e-12);
  CHECK(layer_norm(x3.to(DType::bfloat16), {4}, w.to(DType::bfloat16), b.to(DType::bfloat16)).dtype() ==
        DType::bfloat16);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return layer_norm(in[0], {4}, in[1], in[2]); },
                  (std::vector<Tensor>{x3, rnd({4}, 201), rnd({4}, 202)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return layer_norm(in[0].transpose(1, 2), {3}, Tensor(), Tensor()); },
                  (std::vector<Tensor>{x3}));
  CHECK(error_of([&] { layer_norm(x3, {5}, Tensor(), Tensor()); }).find("[layer_norm]") != std::string::npos);
  CHECK(error_of([&] { layer_norm(x3, {4}, zeros({3}, DType::float64), Tensor()); }).find("[layer_norm]") !=
        std::string::npos);
  CHECK(error_of([&] { layer_norm(x3, {4}, Tensor(), zeros({2, 4}, DType::float64)); }).find("[layer_norm]") !=
        std::string::npos);
}

// ===========================================================================
// meta device: shape inference only
// ===========================================================================

TEST_CASE("meta tensors: every op infers shape and dtype without allocating") {
  Tensor a = meta({2, 3}), b = meta({3}), m = meta({3, 4}), bf = meta({2, 3}, DType::bfloat16);
  CHECK(has_no_storage(a));
  auto check = [](const Tensor& t, const Shape& s, DType dt = DType::float32) {
    CHECK(t.shape() == s);
    CHECK(t.dtype() == dt);
    CHECK(has_no_storage(t));
  };
  check(add(a, b), {2, 3});
  check(sub(a, 1.0), {2, 3});
  check(mul(bf, b), {2, 3});
  check(mul(bf, bf), {2, 3}, DType::bfloat16);
  check(div(a, scalar_tensor(2)), {2, 3});
  check(pow(a, 2.0), {2, 3});
  check(maximum(a, b), {2, 3});
  check(rdiv(a, 1.0), {2, 3});
  check(exp(a), {2, 3});
  check(gelu(bf), {2, 3}, DType::bfloat16);
  check(clamp(a, 0, 1), {2, 3});
  check(gt(a, b), {2, 3}, DType::bool_);
  check(eq(a, 0.0), {2, 3}, DType::bool_);
  check(isfinite(a), {2, 3}, DType::bool_);
  check(where(gt(a, 0.0), a, b), {2, 3});
  check(masked_fill(a, gt(b, 0.0), 1.0), {2, 3});
  check(matmul(a, m), {2, 4});
  check(matmul(meta({5, 2, 3}), m), {5, 2, 4});
  check(matmul(meta({7, 1, 2, 3}), meta({5, 3, 4})), {7, 5, 2, 4});
  check(linear(meta({4, 2, 3}), meta({6, 3}), meta({6})), {4, 2, 6});
  check(sum(a, {0}), {3});
  check(sum(a), {});
  check(mean(a, {1}, true), {2, 1});
  check(amax(a, {0}), {3});
  check(argmax(a, 1), {2}, DType::int64);
  check(norm(a, {1}), {2});
  check(softmax(a, 1), {2, 3});
  check(log_softmax(bf, 0), {2, 3}, DType::bfloat16);
  check(a.to(DType::float64), {2, 3}, DType::float64);
  check(a.t().contiguous(), {3, 2});
  check(a.clone(), {2, 3});
  check(a.view({6}), {6});
  check(a.t().reshape({6}), {6});
  check(a.unsqueeze(0).expand({4, 2, 3}), {4, 2, 3});
  check(a.slice(1, 0, 3, 2), {2, 2});
  check(a.select(0, 1), {3});
  check(a.permute({1, 0}), {3, 2});
  check(cat({a, a}, 0), {4, 3});
  check(stack({a, a}, 1), {2, 2, 3});
  Tensor idx = empty({5}, DType::int64, Device::meta);
  check(index_select(a, 1, idx), {2, 5});
  check(index_add(meta({4, 3}), 0, meta({2}, DType::int64), meta({2, 3})), {4, 3});
  check(gather(a, 1, meta({2, 2}, DType::int64)), {2, 2});
  check(scatter_add(a, 1, meta({2, 2}, DType::int64), meta({2, 2})), {2, 3});
  check(embedding(meta({2, 7}, DType::int64), meta({10, 4})), {2, 7, 4});
  Generator g(0);
  check(dropout(a, 0.5, true, g), {2, 3});
  CHECK(g.counter() == 0);
  check(mse_loss(a, a), {});
  check(cross_entropy(a, meta({2}, DType::int64)), {});
  check(layer_norm(meta({2, 5, 4}), {4}, meta({4}), meta({4})), {2, 5, 4});
  check(zeros({2}, DType::float32, Device::meta), {2});
  check(full({2}, 3.0, DType::float32, Device::meta), {2});
  check(randn({3}, g, DType::float32, Device::meta), {3});
  check(F({1, 2}, {2}).to(Device::meta), {2});
  // autograd records on meta too (shape-only backward)
  Tensor w = meta({4, 3}).requires_grad_();
  Tensor y = linear(meta({2, 3}), w);
  sum(y).backward();
  check(w.grad(), {4, 3});
  // the same shape errors as on cpu
  CHECK(error_of([&] { matmul(meta({4, 10}), meta({12, 3})); }) ==
        "[matmul] shapes [4, 10] and [12, 3] cannot be multiplied (10 != 12)");
  CHECK(error_of([&] { add(a, meta({4})); }).find("[add]") != std::string::npos);
}

TEST_CASE("meta tensors: reading data throws a clear error; materialize allocates") {
  Tensor a = meta({2, 3});
  std::string e = error_of([&] { a.raw_data(); });
  CHECK(e.find("meta") != std::string::npos);
  CHECK(e.find("float32[2, 3]") != std::string::npos);
  CHECK(error_of([&] { a.item(); }).find("meta") != std::string::npos);
  CHECK(error_of([&] { a.at({0, 0}); }).find("meta") != std::string::npos);
  CHECK(error_of([&] { a.to_vector<float>(); }).find("meta") != std::string::npos);
  CHECK(error_of([&] { a.data_ptr<float>(); }).find("meta") != std::string::npos);
  CHECK(error_of([&] { a.to(Device::cpu); }).find("meta") != std::string::npos);
  CHECK(error_of([&] { F({1, 2, 3, 4, 5, 6}, {2, 3}).copy_(a); }).find("meta") != std::string::npos);
  Tensor t = meta({2, 3}, DType::float64);
  t.materialize();
  CHECK(t.device() == Device::cpu);
  CHECK(t.impl().storage != nullptr);
  CHECK(t.impl().storage->nbytes == 48);
  t.copy_(D({1, 2, 3, 4, 5, 6}, {2, 3}));
  CHECK(t.at({1, 2}) == 6);
  t.materialize();  // no-op on a cpu tensor
  CHECK(t.at({1, 2}) == 6);
  Tensor p = meta({4});
  p.fill_(1.0);  // fine on meta: nothing to fill
  p.materialize(Device::cpu);
  p.fill_(2.0);
  CHECK_ALLCLOSE(p, F({2, 2, 2, 2}, {4}), 0, 0);
  CHECK(error_of([&] { meta({1}).materialize(Device::meta); }).find("materialize") != std::string::npos);
}

// ===========================================================================
// in-place helpers
// ===========================================================================

TEST_CASE("copy_, fill_, add_, mul_, uniform_/normal_ on views") {
  Tensor a = zeros({2, 3});
  a.copy_(F({1, 2, 3}, {3}));  // broadcast
  CHECK_ALLCLOSE(a, F({1, 2, 3, 1, 2, 3}, {2, 3}), 0, 0);
  a.t().copy_(D({1, 2, 3, 4, 5, 6}, {3, 2}));  // strided destination, dtype conversion
  CHECK_ALLCLOSE(a, F({1, 3, 5, 2, 4, 6}, {2, 3}), 0, 0);
  a.select(1, 0).fill_(-1);
  CHECK_ALLCLOSE(a, F({-1, 3, 5, -1, 4, 6}, {2, 3}), 0, 0);
  a.add_(F({1, 1, 1}, {3}), 2.0);
  CHECK_ALLCLOSE(a, F({1, 5, 7, 1, 6, 8}, {2, 3}), 0, 0);
  a.mul_(0.5);
  CHECK_ALLCLOSE(a, F({0.5, 2.5, 3.5, 0.5, 3, 4}, {2, 3}), 0, 0);
  a.zero_();
  CHECK_ALLCLOSE(a, zeros({2, 3}), 0, 0);
  Tensor h = zeros({4}, DType::bfloat16);
  h.copy_(F({1, 2, 3, 4}, {4}));
  CHECK_ALLCLOSE(h, F({1, 2, 3, 4}, {4}), 0, 0);
  Generator g(3);
  Tensor u = zeros({4, 6});
  u.t().uniform_(2, 3, g);
  CHECK(min_max_ok(u, 2, 3));
  Tensor n = zeros({4, 6}, DType::bfloat16);
  n.slice(1, 0, 6, 2).normal_(0, 1, g);
  CHECK(n.at({0, 1}) == 0);
  CHECK(error_of([&] { a.copy_(zeros({4})); }).find("[expand]") != std::string::npos);
  CHECK(error_of([&] { I({1}, {1}).uniform_(0, 1, g); }).find("random") != std::string::npos);
  // in-place helpers never record history
  Tensor p = F({1, 2}, {2}).requires_grad_();
  p.add_(F({1, 1}, {2}));
  CHECK(p.is_leaf());
  CHECK_ALLCLOSE(p, F({2, 3}, {2}), 0, 0);
}

// ===========================================================================
// autograd engine
// ===========================================================================

TEST_CASE("autograd: gradients accumulate over backward calls; zero_grad resets") {
  Tensor x = F({1, 2, 3}, {3}).requires_grad_();
  Tensor y = sum(mul(x, x));
  y.backward();
  CHECK_ALLCLOSE(x.grad(), F({2, 4, 6}, {3}), 0, 0);
  y.backward();  // graph is kept: a second call adds again
  CHECK_ALLCLOSE(x.grad(), F({4, 8, 12}, {3}), 0, 0);
  sum(x).backward();
  CHECK_ALLCLOSE(x.grad(), F({5, 9, 13}, {3}), 0, 0);
  x.zero_grad();
  CHECK(!x.grad().defined());
  sum(x).backward();
  CHECK_ALLCLOSE(x.grad(), F({1, 1, 1}, {3}), 0, 0);
  // the stored gradient is an independent tensor
  Tensor g = x.grad();
  sum(x).backward();
  CHECK_ALLCLOSE(g, F({1, 1, 1}, {3}), 0, 0);
  x.set_grad(F({7, 7, 7}, {3}));
  CHECK_ALLCLOSE(x.grad(), F({7, 7, 7}, {3}), 0, 0);
  CHECK(error_of([&] { x.set_grad(zeros({2})); }).find("set_grad") != std::string::npos);
}

TEST_CASE("autograd: no_grad, detach, requires_grad rules") {
  Tensor x = F({1, 2}, {2}).requires_grad_();
  {
    NoGradGuard ng;
    CHECK(!is_grad_enabled());
    Tensor y = mul(x, 2.0);
    CHECK(!y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    {
      NoGradGuard nested;
    }
    CHECK(!is_grad_enabled());
  }
  CHECK(is_grad_enabled());
  Tensor y = mul(x, 2.0);
  CHECK(y.requires_grad());
  CHECK(!y.is_leaf());
  CHECK(std::string(y.grad_fn()->name) == "mul_scalar");
  Tensor d = y.detach();
  CHECK(!d.requires_grad());
  CHECK(d.is_leaf());
  CHECK(d.same_storage(y));
  // detach stops the gradient
  Tensor z = add(mul(x, d), x);
  sum(z).backward();
  CHECK_ALLCLOSE(x.grad(), F({3, 5}, {2}), 0, 0);
  CHECK(error_of([&] { sum(d).backward(); }).find("does not require grad") != std::string::npos);
  CHECK(error_of([&] { I({1}, {1}).requires_grad_(); }).find("requires_grad_") != std::string::npos);
  CHECK(error_of([&] { y.requires_grad_(false); }).find("detach") != std::string::npos);
  CHECK(error_of([&] { mul(x, 2.0).backward(); }).find("scalar outputs") != std::string::npos);
  // an op on tensors that need no gradient records nothing
  Tensor c = add(F({1}, {1}), F({2}, {1}));
  CHECK(!c.requires_grad());
  CHECK(c.grad_fn() == nullptr);
  // comparisons and argmax are not differentiable
  CHECK(!gt(x, 0.0).requires_grad());
  CHECK(!argmax(x, 0).requires_grad());
}

TEST_CASE("autograd::checkpoint: the gradients of a recorded graph, from a recomputation; dropout replayed") {
  Generator g(4);
  Tensor w = randn({5, 5}, g).requires_grad_(true);
  Tensor b = randn({5}, g).requires_grad_(true);
  Tensor frozen = randn({5, 5}, g);
  auto fn = [&](const Tensor& x) {
    Generator& dg = default_generator();
    Tensor h = dropout(tanh(add(matmul(x, w), b)), 0.3, true, dg);
    return matmul(h, frozen);
  };
  Tensor x0 = randn({3, 5}, g);
  std::vector<float> gw[2], gb[2], gx[2];
  for (int ck = 0; ck < 2; ++ck) {
    Tensor x = x0.clone().requires_grad_(true);
    Tensor xin = mul(x, 2.0);  // a non-leaf input: its gradient flows on to x
    manual_seed(21);
    Tensor y = ck ? autograd::checkpoint(fn, xin, {w, b}) : fn(xin);
    manual_seed(99);  // backward must not depend on the stream's position after the forward
    sum(mul(y, y)).backward();
    gw[ck] = w.grad().to_vector<float>(), gb[ck] = b.grad().to_vector<float>(), gx[ck] = x.grad().to_vector<float>();
    w.set_grad(Tensor()), b.set_grad(Tensor());
  }
  CHECK(gw[0] == gw[1]);
  CHECK(gb[0] == gb[1]);
  CHECK(gx[0] == gx[1]);
  // an input without grad: the parameters still get theirs
  manual_seed(21);
  sum(autograd::checkpoint(fn, mul(x0, 2.0), {w, b})).backward();
  CHECK(w.grad().defined());
  w.set_grad(Tensor()), b.set_grad(Tensor());
  // nothing needs a gradient: fn itself, no node
  Tensor c = autograd::checkpoint([&](const Tensor& x) { return matmul(x, frozen); }, x0, {});
  CHECK(!c.requires_grad());
  CHECK(peft::testing::error_of([&] { autograd::checkpoint(fn, x0, {mul(w, 1.0)}); }).find("must be leaf tensors") !=
        std::string::npos);
}

TEST_CASE("autograd: diamond graphs and tensors used twice") {
  Tensor x = D({0.5, -1.5, 2.0}, {3}).requires_grad_();
  Tensor a = exp(x);
  Tensor b = mul(a, 3.0);
  Tensor c = sum(add(mul(a, a), b));
  c.backward();
  // c = sum(a*a + b) with a = exp(x), b = 3a: dc/dx = (2a + 3) * a
  Tensor ea = exp(x.detach());
  CHECK_ALLCLOSE(x.grad(), mul(add(mul(ea, 2.0), 3.0), ea), 1e-12, 0);
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) {
    Tensor h = tanh(in[0]);
    return add(mul(h, in[0]), div(h, add(mul(in[0], in[0]), 1.0)));
  }, (std::vector<Tensor>{rnd({2, 3}, 210)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return matmul(in[0], in[0]); },
                  (std::vector<Tensor>{rnd({3, 3}, 211)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return mul(in[0], in[0].t()); },
                  (std::vector<Tensor>{rnd({3, 3}, 212)}));
  // the same leaf reached through a long and a short path
  Tensor w = D({2}, {1}).requires_grad_();
  Tensor p = w;
  for (int i = 0; i < 10; ++i) p = mul(p, 1.5);
  sum(add(p, w)).backward();
  CHECK(w.grad().item() == doctest::Approx(std::pow(1.5, 10) + 1));
}

TEST_CASE("autograd: backward with an explicit gradient; non-leaf roots; views of leaves") {
  Tensor x = F({1, 2, 3, 4}, {2, 2}).requires_grad_();
  Tensor y = mul(x, x);
  y.backward(F({1, 0, 0, 2}, {2, 2}));
  CHECK_ALLCLOSE(x.grad(), F({2, 0, 0, 16}, {2, 2}), 0, 0);
  CHECK(error_of([&] { y.backward(zeros({4})); }).find("does not match") != std::string::npos);
  // backward on a leaf puts the gradient straight into .grad
  Tensor l = F({1, 2}, {2}).requires_grad_();
  l.backward(F({3, 4}, {2}));
  CHECK_ALLCLOSE(l.grad(), F({3, 4}, {2}), 0, 0);
  // gradient reaching a leaf through a transposed view is laid out like the leaf
  Tensor w = F({1, 2, 3, 4, 5, 6}, {2, 3}).requires_grad_();
  Tensor wt = w.t();
  sum(mul(wt, F({1, 10}, {2}))).backward();
  CHECK(w.grad().shape() == Shape{2, 3});
  CHECK_ALLCLOSE(w.grad(), F({1, 1, 1, 10, 10, 10}, {2, 3}), 0, 0);
  // leaves in bf16 get bf16 gradients
  Tensor hb = F({1, 2}, {2}).to(DType::bfloat16).requires_grad_();
  sum(mul(hb, 3.0)).backward();
  CHECK(hb.grad().dtype() == DType::bfloat16);
  CHECK_ALLCLOSE(hb.grad(), F({3, 3}, {2}), 0, 0);
}

// ===========================================================================
// generator
// ===========================================================================

TEST_CASE("generator: determinism, ranges, moments") {
  Generator a(42), b(42), c(43);
  Tensor ra = randn({1000}, a), rb = randn({1000}, b), rc = randn({1000}, c);
  CHECK_ALLCLOSE(ra, rb, 0, 0);
  CHECK(peft::testing::max_abs_diff(ra, rc) > 0);
  CHECK(a.counter() == 250);
  // consecutive draws differ; manual_seed restarts the stream
  Tensor ra2 = randn({1000}, a);
  CHECK(peft::testing::max_abs_diff(ra, ra2) > 0);
  a.manual_seed(42);
  CHECK_ALLCLOSE(randn({1000}, a), ra, 0, 0);
  // uniform range and moments
  Generator g(7);
  Tensor u = uniform({100000}, -2, 3, g);
  CHECK(min_max_ok(u, -2, 3));
  CHECK(std::fabs(mean(u).item() - 0.5) < 0.03);
  Tensor r = rand({100000}, g, DType::float64);
  CHECK(min_max_ok(r, 0, 1));
  CHECK(std::fabs(mean(r).item() - 0.5) < 0.01);
  Tensor n = randn({100000}, g);
  double mu = mean(n).item();
  double sd = std::sqrt(mean(mul(sub(n, mu), sub(n, mu))).item());
  CHECK(std::fabs(mu) < 0.02);
  CHECK(std::fabs(sd - 1) < 0.02);
  Tensor n2 = zeros({50000});
  n2.normal_(3, 0.5, g);
  CHECK(std::fabs(mean(n2).item() - 3) < 0.02);
  CHECK(randn({10}, g, DType::bfloat16).dtype() == DType::bfloat16);
  // scalar API
  Generator s(1), s2(1);
  for (int i = 0; i < 1000; ++i) {
    double d = s.next_double();
    float f = s.next_float();
    CHECK((d >= 0 && d < 1 && f >= 0 && f < 1));
    CHECK(s2.next_double() == d);
    CHECK(s2.next_float() == f);
  }
  double acc = 0, acc2 = 0;
  for (int i = 0; i < 20000; ++i) {
    double v = s.next_normal();
    acc += v;
    acc2 += v * v;
  }
  CHECK(std::fabs(acc / 20000) < 0.03);
  CHECK(std::fabs(acc2 / 20000 - 1) < 0.05);
  // Philox4x32-10 known answer (Random123 test vector, counter = 0, key = 0)
  uint32_t w[4];
  philox4x32(0, 0, w);
  CHECK(w[0] == 0x6627e8d5u);
  CHECK(w[1] == 0xe169c58du);
  CHECK(w[2] == 0xbc57ac4cu);
  CHECK(w[3] == 0x9b00dbd8u);
  // default generator
  manual_seed(11);
  double first = default_generator().next_double();
  manual_seed(11);
  CHECK(default_generator().next_double() == first);
}

TEST_CASE("thread count can be set and read") {
  int before = get_num_threads();
  set_num_threads(1);
  CHECK(get_num_threads() == 1);
  Tensor a = rnd({300, 300}, 300, DType::float32);
  Tensor s1 = sum(a, {0});
  Tensor m1 = matmul(a, a);
  set_num_threads(before);
  CHECK_ALLCLOSE(sum(a, {0}), s1, 1e-6, 1e-6);
  CHECK_ALLCLOSE(matmul(a, a), m1, 1e-5, 1e-4);
  CHECK(error_of([] { set_num_threads(0); }).find("set_num_threads") != std::string::npos);
}

TEST_CASE("copy kernel: large transposes and permutes (tiled path), with dtype conversion") {
  Tensor a = arange(0, 37 * 53, 1, DType::float32).view({37, 53});
  Tensor t = a.t().contiguous();
  std::vector<float> v = t.to_vector<float>();
  bool ok = true;
  for (int64_t i = 0; i < 53; ++i)
    for (int64_t j = 0; j < 37; ++j) ok = ok && v[size_t(i * 37 + j)] == float(j * 53 + i);
  CHECK(ok);
  Tensor d = empty({53, 37}, DType::float64);
  d.copy_(a.t());
  CHECK_ALLCLOSE(d, t, 0, 0);
  Tensor h = empty({53, 37}, DType::bfloat16);
  h.copy_(a.t());
  CHECK_ALLCLOSE(h, t.to(DType::bfloat16), 0, 0);
  Tensor b = arange(0, 3 * 20 * 30, 1, DType::float64).view({3, 20, 30});
  Tensor p = b.permute({2, 0, 1}).contiguous();  // [30, 3, 20]
  CHECK(p.at({29, 2, 19}) == b.at({2, 19, 29}));
  CHECK(p.at({7, 1, 3}) == b.at({1, 3, 7}));
  Tensor q = b.transpose(1, 2).contiguous();  // batched transpose
  CHECK(q.at({2, 29, 19}) == b.at({2, 19, 29}));
  CHECK_ALLCLOSE(q.transpose(1, 2), b, 0, 0);
  // a strided slice of a transpose
  Tensor s = a.t().slice(0, 1, 53, 3).contiguous();
  CHECK(s.at({4, 10}) == a.at({10, 13}));
}

TEST_CASE("large buffers are reused safely (cpu block cache)") {
  for (int i = 0; i < 4; ++i) {
    Tensor a = full({512, 1024}, double(i));
    Tensor b = add(a, 1.0);
    CHECK(b.at({511, 1023}) == i + 1);
    CHECK(sum(b).item() == doctest::Approx(double(i + 1) * 512 * 1024));
  }
  Tensor keep = full({300, 1000}, 3.0);
  { Tensor tmp = full({300, 1000}, 4.0); }
  Tensor again = zeros({300, 1000});
  CHECK(keep.at({299, 999}) == 3);
  CHECK(again.at({299, 999}) == 0);
}

TEST_CASE("low-precision mean and layer_norm compute in float32 and round once") {
  Generator g(77);
  Tensor x = randn({4, 64}, g).to(DType::bfloat16);
  Tensor m = mean(x, {1});
  CHECK(m.dtype() == DType::bfloat16);
  CHECK_ALLCLOSE(m, mean(x.to(DType::float32), {1}).to(DType::bfloat16), 0, 0);
  Tensor w = randn({64}, g).to(DType::bfloat16), b = randn({64}, g).to(DType::bfloat16);
  Tensor y = layer_norm(x, {64}, w, b);
  CHECK(y.dtype() == DType::bfloat16);
  Tensor ref = layer_norm(x.to(DType::float32), {64}, w.to(DType::float32), b.to(DType::float32));
  CHECK_ALLCLOSE(y, ref.to(DType::bfloat16), 0, 0);
  // and gradients still reach bf16 leaves
  Tensor xl = x.clone().requires_grad_();
  sum(layer_norm(xl, {64}, w, b)).backward();
  CHECK(xl.grad().dtype() == DType::bfloat16);
  CHECK(xl.grad().shape() == x.shape());
}

TEST_CASE("leaf gradients never alias other tensors") {
  Tensor x = F({1, 2}, {2}).requires_grad_(), y = F({3, 4}, {2}).requires_grad_();
  Tensor s = add(x, y);  // both gradients are the same incoming tensor
  Tensor gout = F({1, 1}, {2});
  s.backward(gout);
  CHECK(!x.grad().same_storage(y.grad()));
  CHECK(!x.grad().same_storage(gout));
  x.grad().fill_(5);
  CHECK_ALLCLOSE(y.grad(), F({1, 1}, {2}), 0, 0);
  CHECK_ALLCLOSE(gout, F({1, 1}, {2}), 0, 0);
  // a gradient that is a view of a saved tensor is copied
  Tensor w = F({1, 2, 3}, {3}).requires_grad_();
  Tensor v = F({5, 6, 7}, {3});
  sum(mul(w, v)).backward();
  w.grad().fill_(0);
  CHECK_ALLCLOSE(v, F({5, 6, 7}, {3}), 0, 0);
  // backward on a leaf with an explicit gradient copies it
  Tensor l = F({1}, {1}).requires_grad_();
  Tensor gl = F({2}, {1});
  l.backward(gl);
  l.grad().fill_(9);
  CHECK(gl.item() == 2);
}

TEST_CASE("copy_ between overlapping views of one storage") {
  Tensor a = arange(0, 9, 1, DType::float32).view({3, 3});
  a.copy_(a.t());
  CHECK(a.to_vector<double>() == Vec{0, 3, 6, 1, 4, 7, 2, 5, 8});
  Tensor b = arange(0, 6, 1, DType::float32);
  b.slice(0, 1, 6).copy_(b.slice(0, 0, 5));
  CHECK(b.to_vector<double>() == Vec{0, 0, 1, 2, 3, 4});
  Tensor c = arange(0, 6, 1, DType::float32);
  c.slice(0, 0, 5).copy_(c.slice(0, 1, 6));
  CHECK(c.to_vector<double>() == Vec{1, 2, 3, 4, 5, 5});
  Tensor d = arange(0, 4, 1, DType::float32);
  d.copy_(d);  // identical view: fine
  CHECK(d.to_vector<double>() == Vec{0, 1, 2, 3});
  Tensor e = arange(0, 8, 1, DType::float32).view({2, 4});
  e.select(0, 1).copy_(e.select(0, 0));  // disjoint rows
  CHECK(e.to_vector<double>() == Vec{0, 1, 2, 3, 0, 1, 2, 3});
}

TEST_CASE("every op names itself when given an undefined tensor or a bad dim") {
  Tensor u;
  Tensor a = zeros({2, 3});
  std::vector<std::pair<const char*, std::function<void()>>> cases = {
      {"[neg]", [&] { neg(u); }},           {"[exp]", [&] { exp(u); }},
      {"[log]", [&] { log(u); }},           {"[sqrt]", [&] { sqrt(u); }},
      {"[rsqrt]", [&] { rsqrt(u); }},       {"[abs]", [&] { abs(u); }},
      {"[sign]", [&] { sign(u); }},         {"[erf]", [&] { erf(u); }},
      {"[relu]", [&] { relu(u); }},         {"[gelu]", [&] { gelu(u); }},
      {"[silu]", [&] { silu(u); }},         {"[tanh]", [&] { tanh(u); }},
      {"[sigmoid]", [&] { sigmoid(u); }},   {"[clamp]", [&] { clamp(u, 0, 1); }},
      {"[isfinite]", [&] { isfinite(u); }}, {"[logical_not]", [&] { logical_not(u); }},
      {"[add_scalar]", [&] { add(u, 1.0); }}, {"[mul_scalar]", [&] { mul(u, 2.0); }},
      {"[div_scalar]", [&] { div(u, 2.0); }}, {"[rsub_scalar]", [&] { rsub(u, 2.0); }},
      {"[rdiv_scalar]", [&] { rdiv(u, 2.0); }}, {"[pow_scalar]", [&] { pow(u, 2.0); }},
      {"[eq]", [&] { eq(u, 1.0); }},        {"[sum]", [&] { sum(u); }},
      {"[mean]", [&] { mean(u); }},         {"[amax]", [&] { amax(u); }},
      {"[norm]", [&] { norm(u); }},         {"[softmax]", [&] { softmax(u, 0); }},
      {"[matmul]", [&] { matmul(u, a); }},  {"[linear]", [&] { linear(a, u); }},
      {"[to_dtype]", [&] { u.to(DType::float64); }}, {"[clone]", [&] { u.clone(); }},
      {"[gather]", [&] { gather(u, 0, I({0}, {1})); }}, {"[index_select]", [&] { index_select(u, 0, I({0}, {1})); }},
      {"[embedding]", [&] { embedding(I({0}, {1}), u); }}, {"[dropout]", [&] { Generator g(0); dropout(u, 0.5, true, g); }},
      {"[mse_loss]", [&] { mse_loss(u, a); }}, {"[cross_entropy]", [&] { cross_entropy(u, I({0}, {1})); }},
      {"[layer_norm]", [&] { layer_norm(u, {3}, Tensor(), Tensor()); }}, {"[cat]", [&] { cat({a, u}); }},
      {"[sum] dimension 5", [&] { sum(a, {5}); }}, {"[mean] dimension -3", [&] { mean(a, {-3}); }},
      {"[amax] dimension 2", [&] { amax(a, {2}); }}, {"[argmax] dimension 2", [&] { argmax(a, 2); }},
      {"[norm] dimension 2", [&] { norm(a, {2}); }}, {"[log_softmax] dimension 2", [&] { log_softmax(a, 2); }},
      {"[index_add] dimension 2", [&] { index_add(a, 2, I({0}, {1}), a); }},
      {"[scatter_add] dimension 2", [&] { scatter_add(a, 2, I({0}, {1, 1}), a); }},
  };
  for (auto& c : cases) {
    std::string op = c.first;
    CAPTURE(op);
    std::string e = error_of(c.second);
    CAPTURE(e);
    CHECK(e.find(c.first) != std::string::npos);
  }
}

TEST_CASE("cuda requests fail clearly in a build without CUDA") {
  if (cuda_available()) return;
  std::string e = error_of([] { zeros({2}, DType::float32, Device::cuda); });
  CHECK(e.find("CUDA") != std::string::npos);
  e = error_of([] { F({1, 2}, {2}).to(Device::cuda); });
  CHECK(e.find("CUDA") != std::string::npos);
}

// ===========================================================================
// randomised layouts: every strided path agrees with the contiguous one
// ===========================================================================

namespace {
// A random float64 view of rank 1-4: permuted, sometimes sliced with a step,
// sometimes expanded along a size-1 dim. Values are distinct integers.
Tensor random_layout(Generator& g, int max_dim = 5) {
  int rank = 1 + int(g.next_u32() % 4);
  Shape shape;
  for (int i = 0; i < rank; ++i) shape.push_back(1 + int64_t(g.next_u32() % uint32_t(max_dim)));
  Tensor t = arange(0, double(shape_numel(shape)), 1, DType::float64).view(shape);
  Shape order(static_cast<size_t>(rank), 0);
  for (int i = 0; i < rank; ++i) order[size_t(i)] = i;
  for (int i = rank - 1; i > 0; --i) std::swap(order[size_t(i)], order[g.next_u32() % uint32_t(i + 1)]);
  t = t.permute(order);
  if (g.next_u32() % 2) {
    int64_t d = int64_t(g.next_u32() % uint32_t(rank));
    if (t.size(d) > 2) t = t.slice(d, 1, t.size(d), 1 + int64_t(g.next_u32() % 2));
  }
  if (g.next_u32() % 3 == 0) {
    int64_t d = int64_t(g.next_u32() % uint32_t(rank + 1));
    Shape sh = t.unsqueeze(d).shape();
    sh[size_t(d)] = 3;
    t = t.unsqueeze(d).expand(sh);
  }
  return t;
}

Shape random_factorisation(Generator& g, int64_t n) {
  Shape out;
  while (n > 1) {
    std::vector<int64_t> divs;
    for (int64_t d = 2; d <= n; ++d)
      if (n % d == 0) divs.push_back(d);
    int64_t d = divs[g.next_u32() % divs.size()];
    out.push_back(d);
    n /= d;
    if (g.next_u32() % 4 == 0) out.push_back(1);
  }
  if (out.empty()) out.push_back(n);
  return out;
}
}  // namespace

TEST_CASE("random layouts: reshape/view agree with a contiguous copy") {
  Generator g(2718);
  int views = 0;
  for (int it = 0; it < 300; ++it) {
    Tensor t = random_layout(g);
    if (t.numel() == 0) continue;
    Tensor c = t.contiguous();
    Shape target = random_factorisation(g, t.numel());
    CAPTURE(shape_str(t.shape()));
    CAPTURE(shape_str(t.strides()));
    CAPTURE(shape_str(target));
    Tensor r = t.reshape(target);
    CHECK(r.to_vector<double>() == c.to_vector<double>());
    if (error_of([&] { t.view(target); }) == "<no exception>") {
      ++views;
      Tensor v = t.view(target);
      CHECK(v.same_storage(t));
      CHECK(v.to_vector<double>() == c.to_vector<double>());
    }
  }
  CHECK(views > 20);
}

TEST_CASE("random layouts: elementwise, reductions and copies agree with contiguous inputs") {
  Generator g(31415);
  for (int it = 0; it < 150; ++it) {
    Tensor t = random_layout(g, 40);
    Tensor c = t.contiguous();
    CAPTURE(shape_str(t.shape()));
    CAPTURE(shape_str(t.strides()));
    // unary and binary with itself and with a broadcast row
    CHECK_ALLCLOSE(mul(t, 0.5), mul(c, 0.5), 0, 0);
    CHECK_ALLCLOSE(add(t, t), add(c, c), 0, 0);
    Tensor row = arange(0, double(t.size(-1)), 1, DType::float64);
    CHECK_ALLCLOSE(sub(t, row), sub(c, row), 0, 0);
    CHECK_ALLCLOSE(t.to(DType::float32), c.to(DType::float32), 0, 0);
    // reductions over a random subset of dims
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < t.dim(); ++d)
      if (g.next_u32() % 2) dims.push_back(d);
    bool keep = g.next_u32() % 2;
    CHECK_ALLCLOSE(sum(t, dims, keep), sum(c, dims, keep), 1e-12, 0);
    CHECK_ALLCLOSE(sum(t.to(DType::float32), dims, keep), sum(c, dims, keep), 1e-6, 0);
    if (t.numel() > 0) {
      CHECK_ALLCLOSE(amax(t, dims, keep), amax(c, dims, keep), 0, 0);
      int64_t d = int64_t(g.next_u32() % uint32_t(t.dim()));
      CHECK(argmax(t, d).to_vector<int64_t>() == argmax(c, d).to_vector<int64_t>());
      CHECK_ALLCLOSE(softmax(t, d), softmax(c, d), 1e-12, 0);
    }
    // copy into a strided destination
    Tensor dt = zeros(t.shape(), DType::float32);
    dt.copy_(t);
    CHECK_ALLCLOSE(dt, c, 0, 0);
  }
}

TEST_CASE("reduction kernels: long reductions to few outputs, multi-thread vs single-thread") {
  Generator g(99);
  Tensor a = randn({3, 70000}, g);
  Tensor big = randn({4, 300, 257}, g);
  int before = get_num_threads();
  // scripts/tsan.sh sets PEFT_TSAN_SINGLE_THREAD: libgomp is not built with TSan, so its
  // barriers are invisible there and a multi-thread pass would only produce false reports
  const int many = std::getenv("PEFT_TSAN_SINGLE_THREAD") ? 1 : std::max(2, before);
  std::vector<Tensor> res[2];
  for (int pass = 0; pass < 2; ++pass) {
    set_num_threads(pass == 0 ? 1 : many);
    res[pass] = {sum(a, {1}), amax(a, {1}), argmax(a, 1), sum(a), sum(big, {0, 1}), sum(big, {0, 2}),
                 sum(big.transpose(0, 2), {2}), amax(big, {1}), mean(big, {0}, true)};
  }
  set_num_threads(before);
  for (size_t i = 0; i < res[0].size(); ++i) {
    CAPTURE(i);
    CHECK_ALLCLOSE(res[1][i], res[0][i], 1e-5, 1e-4);
  }
}

TEST_CASE("from_vector / to_vector keep every int64 exactly (beyond 2^53)") {
  std::vector<int64_t> v{INT64_MAX, INT64_MIN, (int64_t(1) << 53) + 1, -((int64_t(1) << 60) + 7)};
  Tensor t = from_vector(v, {4});
  CHECK(t.to_vector<int64_t>() == v);
  CHECK(t.slice(0, 1, 4, 2).to_vector<int64_t>() == std::vector<int64_t>{v[1], v[3]});
}

TEST_CASE("set_data retargets every handle in place and keeps autograd flags") {
  Tensor p = zeros({2, 2}).requires_grad_(true);
  Tensor alias = p;  // another handle onto the same impl (a layer's cached parameter)
  Tensor src = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}, DType::float64);
  p.set_data(src);
  CHECK(alias.shape() == Shape{2, 3});
  CHECK(alias.dtype() == DType::float64);
  CHECK(alias.same_storage(src));
  CHECK(alias.requires_grad());
  CHECK(alias.at({1, 2}) == 6.0);
}

namespace {
Tensor eye_like(int64_t n) {
  std::vector<double> v(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) v[size_t(i * n + i)] = 1.0;
  return from_vector(v, {n, n});
}
}  // namespace

TEST_CASE("svd: factors reconstruct the input, are orthonormal, and give known singular values") {
  Generator g(11);
  for (auto [M, N] : {std::pair<int64_t, int64_t>{7, 5}, {5, 7}, {6, 6}, {1, 4}}) {
    Tensor a = randn({M, N}, g, DType::float64);
    for (bool full : {true, false}) {
      CAPTURE(M);
      CAPTURE(N);
      CAPTURE(full);
      SvdResult r = svd(a, full);
      const int64_t K = std::min(M, N);
      CHECK(r.S.shape() == Shape{K});
      CHECK(r.U.shape() == (full ? Shape{M, M} : Shape{M, K}));
      CHECK(r.Vh.shape() == (full ? Shape{N, N} : Shape{K, N}));
      std::vector<double> s = r.S.to_vector<double>();
      for (size_t i = 0; i < s.size(); ++i) {
        CHECK(s[i] >= 0.0);
        if (i) CHECK(s[i] <= s[i - 1]);
      }
      Tensor u = r.U.narrow(1, 0, K), vh = r.Vh.narrow(0, 0, K);
      CHECK(testing::max_abs_diff(matmul(mul(u, r.S), vh), a) < 1e-12);
      CHECK(testing::max_abs_diff(matmul(r.U.t(), r.U), eye_like(r.U.size(1))) < 1e-12);
      CHECK(testing::max_abs_diff(matmul(r.Vh, r.Vh.t()), eye_like(r.Vh.size(0))) < 1e-12);
    }
  }
  // rows of diag(3, 1, 2) permuted and a sign flipped: singular values 3, 2, 1
  Tensor d = from_vector(std::vector<double>{0, -1, 0, 0, 0, 2, 3, 0, 0}, {3, 3});
  CHECK(testing::max_abs_diff(svd(d).S, from_vector(std::vector<double>{3, 2, 1}, {3})) < 1e-14);
  // float32 in, float32 out (computed in float64)
  Tensor f = randn({4, 3}, g);
  SvdResult rf = svd(f, false);
  CHECK(rf.U.dtype() == DType::float32);
  CHECK(testing::max_abs_diff(matmul(mul(rf.U, rf.S), rf.Vh), f) < 1e-5);
  // meta: shapes only
  SvdResult rm = svd(empty({9, 4}, DType::float32, Device::meta), false);
  CHECK(rm.U.is_meta());
  CHECK(rm.U.shape() == Shape{9, 4});
  CHECK(rm.Vh.shape() == Shape{4, 4});
  CHECK(testing::error_of([&] { svd(randn({3}, g)); }).find("[svd] expects a 2-D tensor") != std::string::npos);
  Tensor leaf = randn({3, 3}, g).requires_grad_();
  CHECK(testing::error_of([&] { svd(leaf); }).find("not differentiable") != std::string::npos);
  CHECK(testing::error_of([&] { svd(from_vector(std::vector<int64_t>{1, 2, 3, 4}, {2, 2})); })
            .find("floating-point") != std::string::npos);
}

TEST_CASE("tanh float32 (vectorised kernel): within 2e-7 relative of tanh in float64, exact at the edges") {
  std::vector<float> xs;
  for (int i = -200000; i <= 200000; ++i) xs.push_back(float(i) * 1e-4f);  // [-20, 20]
  for (float v : {1e-30f, -1e-30f, 1e-42f, 0.6249999f, 0.625f, 44.0f, 88.0f, 1e30f, -1e30f}) xs.push_back(v);
  Tensor x = from_vector(xs, {int64_t(xs.size())});
  std::vector<float> y = tanh(x).to_vector<float>();
  double worst = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    double want = std::tanh(double(xs[i]));
    worst = std::max(worst, std::abs(double(y[i]) - want) / std::max(std::abs(want), 1e-38));
  }
  CHECK(worst < 2e-7);
  std::vector<float> edge = tanh(from_vector(std::vector<float>{0.0f, -0.0f, INFINITY, -INFINITY, NAN}, {5}))
                                .to_vector<float>();
  CHECK(edge[0] == 0.0f);
  CHECK(std::signbit(edge[1]));
  CHECK(edge[2] == 1.0f);
  CHECK(edge[3] == -1.0f);
  CHECK(std::isnan(edge[4]));
  // strided input: the same bits as contiguous
  Tensor m = x.narrow(0, 0, 400000).reshape({800, 500});
  CHECK(testing::max_abs_diff(tanh(m.t()), tanh(m.t().contiguous())) == 0.0);
}

TEST_CASE("float32 elementwise: the contiguous (per-ISA) loops give the strided loop's bits") {
  // The contiguous float32 loops are built for AVX-512/AVX2/baseline without FMA
  // contraction; a strided view takes the generic loop. Both must agree exactly.
  Generator g(77);
  Tensor pos = add(abs(randn({300, 2 * 257}, g)), 0.25);  // > 0: sqrt, rsqrt, division
  Tensor any = mul(randn({300, 2 * 257}, g), 3.0);
  Tensor other = add(abs(randn({300, 2 * 257}, g)), 0.5);
  auto every_other = [](const Tensor& t) { return t.slice(1, 0, t.size(1), 2); };
  struct Case {
    const char* name;
    std::function<Tensor(const Tensor&, const Tensor&)> f;
    bool positive;
  };
  const std::vector<Case> cases{
      {"neg", [](const Tensor& a, const Tensor&) { return neg(a); }, false},
      {"abs", [](const Tensor& a, const Tensor&) { return abs(a); }, false},
      {"relu", [](const Tensor& a, const Tensor&) { return relu(a); }, false},
      {"tanh", [](const Tensor& a, const Tensor&) { return tanh(a); }, false},
      {"exp", [](const Tensor& a, const Tensor&) { return exp(a); }, false},
      {"add_scalar", [](const Tensor& a, const Tensor&) { return add(a, 0.3); }, false},
      {"mul_scalar", [](const Tensor& a, const Tensor&) { return mul(a, -1.7); }, false},
      {"div_scalar", [](const Tensor& a, const Tensor&) { return div(a, 3.0); }, false},
      {"rsub_scalar", [](const Tensor& a, const Tensor&) { return rsub(a, 1.0); }, false},
      {"rdiv_scalar", [](const Tensor& a, const Tensor&) { return rdiv(a, 2.0); }, true},
      {"clamp", [](const Tensor& a, const Tensor&) { return clamp(a, -0.5, 0.7); }, false},
      {"sqrt", [](const Tensor& a, const Tensor&) { return sqrt(a); }, true},
      {"rsqrt", [](const Tensor& a, const Tensor&) { return rsqrt(a); }, true},
      {"pow 2", [](const Tensor& a, const Tensor&) { return pow(a, 2.0); }, false},
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, false},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, false},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, false},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, false},
      {"tanh_backward", [](const Tensor& a, const Tensor& b) { return tanh_backward(a, b); }, false},
      {"mul by a 1-element tensor", [](const Tensor& a, const Tensor&) { return mul(a, full({1}, 0.37)); }, false},
  };
  for (const Case& c : cases) {
    const std::string name = c.name;
    CAPTURE(name);
    const Tensor a = every_other(c.positive ? pos : any), b = every_other(other);
    REQUIRE(!a.is_contiguous());
    Tensor strided = c.f(a, b), contiguous = c.f(a.contiguous(), b.contiguous());
    REQUIRE(contiguous.is_contiguous());
    CHECK(testing::max_abs_diff(strided, contiguous) == 0.0);
    // and both are the right values (not just equally wrong): float64 within float32 rounding
    Tensor want = c.f(a.to(DType::float64), b.to(DType::float64));
    CHECK(max(abs(sub(contiguous.to(DType::float64), want))).item() <=
          2e-7 * std::max(1.0, max(abs(want)).item()));
  }
}

TEST_CASE("matmul float32 split across threads by rows and by columns matches float64") {
  // sgemm_2d gives each thread a block of rows (M >= N) or of columns (M < N);
  // transposed operands exercise each operand layout in both splits.
  Generator g(99);
  for (auto [M, K, N] : {std::array<int64_t, 3>{300, 130, 70}, std::array<int64_t, 3>{24, 200, 530}}) {
    CAPTURE(M);
    Tensor a = randn({M, K}, g), b = randn({K, N}, g), at = randn({K, M}, g), bt = randn({N, K}, g);
    for (auto [x, y] : {std::pair{a, b}, std::pair{at.t(), b}, std::pair{a, bt.t()}, std::pair{at.t(), bt.t()}}) {
      Tensor got = matmul(x, y), want = ref_mm(x, y);
      CHECK(max(abs(sub(got.to(DType::float64), want))).item() < 1e-4);
    }
  }
}

TEST_CASE("exp float32 (vectorised kernel): within 1.5e-7 relative of float64 exp, edges exact") {
  std::vector<float> xs;
  for (int i = -873365; i <= 887228; ++i) xs.push_back(float(i) * 1e-4f);  // the normal range
  Tensor x = from_vector(xs, {int64_t(xs.size())});
  std::vector<float> y = exp(x).to_vector<float>();
  double worst = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double want = std::exp(double(xs[i]));
    worst = std::max(worst, std::abs(double(y[i]) - want) / want);
  }
  CHECK(worst < 1.5e-7);
  std::vector<float> edge =
      exp(from_vector(std::vector<float>{-INFINITY, -100.0f, 0.0f, -0.0f, 88.8f, INFINITY, NAN}, {7})).to_vector<float>();
  CHECK(edge[0] == 0.0f);
  CHECK(edge[1] == 0.0f);  // below FLT_MIN: flushed (absolute error < 1.2e-38)
  CHECK(edge[2] == 1.0f);
  CHECK(edge[3] == 1.0f);
  CHECK(std::isinf(edge[4]));
  CHECK(std::isinf(edge[5]));
  CHECK(std::isnan(edge[6]));
  // softmax rows take the same kernel: a masked (-inf) logit gets exactly 0
  Tensor p = softmax(from_vector(std::vector<float>{1.0f, -INFINITY, 2.0f, 0.5f}, {1, 4}), 1);
  std::vector<float> pv = p.to_vector<float>();
  CHECK(pv[1] == 0.0f);
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(0.5);
  CHECK(std::abs(pv[2] - std::exp(2.0) / z) < 1e-7);
}

TEST_CASE("matmul/linear float32 with few output columns (own packed kernel) match float64") {
  // N <= 16 takes sgemm_2d's packed 8x8 kernel: odd M and N, every operand layout, and the
  // bias (beta = 1) of linear, on one thread and split across threads.
  Generator g(123);
  for (auto [M, K, N] : {std::array<int64_t, 3>{37, 29, 5}, std::array<int64_t, 3>{300, 512, 8},
                         std::array<int64_t, 3>{1029, 120, 13}, std::array<int64_t, 3>{64, 4096, 16}}) {
    CAPTURE(M);
    CAPTURE(N);
    Tensor a = randn({M, K}, g), b = randn({K, N}, g), at = randn({K, M}, g), bt = randn({N, K}, g);
    auto max_rel = [](const Tensor& got, const Tensor& want) {
      return max(abs(sub(got.to(DType::float64), want))).item() / max(abs(want)).item();
    };
    for (auto [x, y] : {std::pair{a, b}, std::pair{at.t(), b}, std::pair{a, bt.t()}, std::pair{at.t(), bt.t()}})
      CHECK(max_rel(matmul(x, y), ref_mm(x, y)) < 1e-5);
    Tensor bias = randn({N}, g);
    CHECK(max_rel(linear(a, bt, bias), add(ref_mm(a, bt.t()), bias.to(DType::float64))) < 1e-5);
  }
}

TEST_CASE("tanh_backward: grad·(1 - y²) in one op, broadcasting, double backward by finite differences") {
  Tensor g = rnd({3, 4}, 31), y = tanh(rnd({3, 4}, 32));
  std::vector<double> gv = g.to_vector<double>(), yv = y.to_vector<double>();
  std::vector<double> got = tanh_backward(g, y).to_vector<double>();
  for (size_t i = 0; i < gv.size(); ++i) CHECK(got[i] == gv[i] * (1.0 - yv[i] * yv[i]));
  // tanh's gradient goes through it: d tanh(x)/dx at x = 0.5
  Tensor x = full({1}, 0.5, DType::float64).requires_grad_();
  sum(tanh(x)).backward();
  CHECK(std::abs(x.grad().item() - (1.0 - std::tanh(0.5) * std::tanh(0.5))) < 1e-15);
  CHECK(tanh_backward(rnd({3, 1}, 33), rnd({1, 4}, 34)).shape() == Shape{3, 4});
  CHECK(tanh_backward(empty({2, 5}, DType::float32, Device::meta), empty({5}, DType::float32, Device::meta)).shape() ==
        Shape{2, 5});
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return tanh_backward(in[0], in[1]); },
                  (std::vector<Tensor>{rnd({3, 4}, 35), rnd({3, 4}, 36)}));
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) { return tanh_backward(in[0], in[1]); },
                  (std::vector<Tensor>{rnd({3, 1}, 37), rnd({4}, 38)}));
  // second derivative of tanh through autograd: d²/dx² tanh = -2·tanh·(1 - tanh²)
  Tensor x2 = full({1}, 0.3, DType::float64).requires_grad_();
  CHECK_GRADCHECK([](const std::vector<Tensor>& in) {
    Tensor y0 = tanh(in[0]);
    return tanh_backward(full({1}, 1.0, DType::float64), y0);
  }, (std::vector<Tensor>{x2}));
  CHECK(testing::error_of([] { tanh_backward(zeros({2, 3}), zeros({4})); }).find("[tanh_backward]") !=
        std::string::npos);
}

TEST_CASE("lora_linear_update_: y += scale·(x·aᵀ)·bᵀ in place, tiny loops and gemm path, checked arguments") {
  // (M, in, r, out): the first takes the tiny-product loops for float32, the second two gemms
  for (auto [M, in, r, out] : std::vector<std::array<int64_t, 4>>{{6, 5, 3, 7}, {64, 256, 8, 192}})
    for (DType dt : {DType::float32, DType::float64}) {
      Tensor x = rnd({2, M / 2, in}, 1, dt), a = rnd({r, in}, 2, dt), b = rnd({out, r}, 3, dt);
      Tensor y = rnd({2, M / 2, out}, 4, dt);
      Tensor want = add(y, mul(matmul(matmul(x.to(DType::float64), a.to(DType::float64).t()),
                                      b.to(DType::float64).t()),
                               0.5));
      Tensor same = y;
      Tensor& r_ = lora_linear_update_(y, x, a, b, 0.5);
      CHECK(&r_ == &y);
      CHECK(same.same_storage(y));
      const double tol = dt == DType::float64 ? 1e-12 : 1e-4;
      CHECK_ALLCLOSE(y.to(DType::float64), want, tol, 10 * tol);
    }
  Tensor y = zeros({4, 3}), x = ones({4, 5}), a = ones({2, 5}), b = ones({3, 2});
  CHECK(error_of([&] { lora_linear_update_(y, x, a, ones({3, 4}), 1.0); }) ==
        "[lora_linear_update_] shapes do not chain as y [..., out] += x [..., in]·aᵀ·bᵀ: x float32[4, 5], a "
        "float32[2, 5], b float32[3, 4], y float32[4, 3]");
  CHECK(error_of([&] { lora_linear_update_(y, x.to(DType::float64), a, b, 1.0); })
            .find("[lora_linear_update_] needs one dtype") == 0);
  CHECK(error_of([&] { lora_linear_update_(y, x.to(DType::int64), a, b, 1.0); })
            .find("[lora_linear_update_] needs float32 or float64 tensors, got x int64[4, 5]") == 0);
  Tensor yt = zeros({3, 4}).t();
  CHECK(error_of([&] { lora_linear_update_(yt, x, a, b, 1.0); }).find("needs it contiguous") != std::string::npos);
  Tensor w = ones({2, 5}).requires_grad_();
  CHECK(error_of([&] { lora_linear_update_(y, x, w, b, 1.0); }).find("is not differentiable") != std::string::npos);
  {
    NoGradGuard ng;
    lora_linear_update_(y, x, w, b, 2.0);  // y += 2·(5·2) per element
  }
  CHECK(y.to_vector<double>() == std::vector<double>(12, 20.0));
  Tensor ym = meta({4, 3});
  CHECK(lora_linear_update_(ym, meta({4, 5}), meta({2, 5}), meta({3, 2}), 1.0).is_meta());
}

TEST_CASE("adamw_step_ matches the op-by-op AdamW formulas; bad arguments name the op") {
  const double lr = 0.05, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  for (DType dt : {DType::float64, DType::float32})
    for (bool maximize : {false, true}) {
      Tensor p = rnd({37}, 5, dt), m = zeros({37}, dt), v = zeros({37}, dt);
      Tensor rp = p.clone().to(DType::float64), rm = zeros({37}, DType::float64), rv = zeros({37}, DType::float64);
      for (int64_t t = 1; t <= 3; ++t) {
        Tensor g = rnd({37}, 10 + uint64_t(t), dt);
        adamw_step_(p, g, m, v, lr, b1, b2, eps, wd, t, maximize);
        const AdamWConstants c = adamw_constants(lr, b1, b2, eps, wd, t, maximize);
        Tensor gd = mul(g.to(DType::float64), c.sign);
        rm = add(rm, mul(sub(gd, rm), c.w1));
        rv = add(mul(rv, c.beta2), mul(mul(gd, gd), c.w2));
        rp = sub(mul(rp, c.decay), mul(div(rm, add(div(sqrt(rv), c.bc2_sqrt), c.eps)), c.step_size));
      }
      const double tol = dt == DType::float64 ? 1e-12 : 2e-6;
      CHECK_ALLCLOSE(p.to(DType::float64), rp, tol, tol);
      CHECK_ALLCLOSE(m.to(DType::float64), rm, tol, tol);
      CHECK_ALLCLOSE(v.to(DType::float64), rv, tol, tol);
    }
  Tensor p = zeros({3}), g = ones({3}), m = zeros({3}), v = zeros({3});
  CHECK(error_of([&] { adamw_step_(p, ones({4}), m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1); }) ==
        "[adamw_step_] needs one shape, got param float32[3], grad float32[4], exp_avg float32[3], exp_avg_sq "
        "float32[3]");
  CHECK(error_of([&] { adamw_step_(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 0); }) ==
        "[adamw_step_] step counts from 1, got 0 (param float32[3])");
  Tensor p16 = zeros({3}, DType::bfloat16);
  CHECK(error_of([&] { adamw_step_(p16, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1); })
            .find("[adamw_step_] needs float32 or float64 tensors, got param bfloat16[3]") == 0);
  Tensor leaf = zeros({3}).requires_grad_();
  CHECK(error_of([&] { adamw_step_(leaf, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1); })
            .find("call it under NoGradGuard") != std::string::npos);
}
