// GGML block-quantized weights in the runtime: the fused linear (activations quantized per block,
// integer block dots) against the float product with the dequantized weight, within the bound
// the activation rounding allows; the input gradient and matmul with the weight against the float
// product; embedding rows; every ISA's kernels against the scalar ones; meta shapes.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "runtime/cpu/quant_blocks.h"
#include "runtime/half.h"
#include "testing.h"

using namespace peft;
using peft::testing::error_of;
using peft::testing::max_abs_diff;

namespace {

// Random but valid blocks of `dt` for a [rows, cols] weight: random quant bytes, small positive
// f16 scales (and mins), as real weights have.
Tensor random_blocks(DType dt, int64_t rows, int64_t cols, uint32_t seed) {
  Tensor t = empty({rows, cols}, dt);
  auto* p = static_cast<uint8_t*>(t.raw_data());
  std::mt19937 rng(seed);
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng());
  std::uniform_real_distribution<float> scale(0.002f, 0.03f);
  const size_t bb = dtype_block_bytes(dt), nb = t.nbytes() / bb;
  auto put = [&](uint8_t* at) {
    const uint16_t h = float_to_f16(scale(rng));
    std::memcpy(at, &h, 2);
  };
  for (size_t b = 0; b < nb; ++b) {
    uint8_t* blk = p + b * bb;
    switch (dt) {
      case DType::q4_1: case DType::q5_1: case DType::q4_k: case DType::q5_k:
        put(blk), put(blk + 2);  // d and m / dmin
        break;
      case DType::q6_k:
        put(blk + bb - 2);  // d is last
        break;
      default:
        put(blk);
    }
  }
  return t;
}

const std::vector<DType> kQuantTypes = {DType::q4_0, DType::q4_1, DType::q5_0, DType::q5_1,
                                        DType::q8_0, DType::q4_k, DType::q5_k, DType::q6_k};

}  // namespace

TEST_CASE("quantized linear: within the activation-rounding bound of the dequantized product, every type") {
  Generator g(3);
  for (DType dt : kQuantTypes) {
    CAPTURE(dtype_name(dt));
    const int64_t K = dtype_block_elems(dt) == 256 ? 512 : 96, N = 37;
    Tensor w = random_blocks(dt, N, K, 11);
    Tensor wf = w.to(DType::float32);
    for (int64_t M : {1, 3, 9}) {
      Tensor x = randn({M, K}, g);
      Tensor y = linear(x, w), ref = linear(x, wf);
      REQUIRE(y.shape() == Shape{M, N});
      // each activation block is rounded to 127 levels of its largest magnitude (q8_K: 127 of
      // its largest value), so |error| <= sum_k |w_k| * amax(block of k) / 254 (+ f16 scales)
      const int64_t blk = dt == DType::q4_k || dt == DType::q5_k || dt == DType::q6_k ? 256 : 32;
      std::vector<float> xv = x.to_vector<float>(), wv = wf.to_vector<float>(), yv = y.to_vector<float>(),
                         rv = ref.to_vector<float>();
      size_t bad = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double bound = 1e-4;
          for (int64_t b0 = 0; b0 < K; b0 += blk) {
            double amax = 0, wsum = 0;
            for (int64_t k = b0; k < b0 + blk; ++k) {
              amax = std::max(amax, std::fabs(double(xv[size_t(m * K + k)])));
              wsum += std::fabs(double(wv[size_t(n * K + k)]));
            }
            bound += wsum * amax / 254.0 * 1.01 + wsum * amax * 2e-3;  // + the f16 rounding of d
          }
          bad += std::fabs(double(yv[size_t(m * N + n)]) - rv[size_t(m * N + n)]) > bound;
        }
      CHECK(bad == 0);
      // and it is not the float product: the activations really are quantized
      CHECK(max_abs_diff(y, ref) > 0);
    }
  }
}

TEST_CASE("quantized linear: input gradient and matmul with the weight are the float products with the dequantized weight") {
  Generator g(5);
  for (DType dt : {DType::q4_1, DType::q8_0, DType::q6_k}) {
    CAPTURE(dtype_name(dt));
    const int64_t K = 256, N = 70, M = 6;
    Tensor w = random_blocks(dt, N, K, 21);
    Tensor wf = w.to(DType::float32);
    Tensor x = randn({2, M / 2, K}, g).requires_grad_(true);
    Tensor b = randn({N}, g).requires_grad_(true);
    Tensor seed = randn({2, M / 2, N}, g);
    sum(mul(linear(x, w, b), seed)).backward();
    CHECK_ALLCLOSE(x.grad(), matmul(seed, wf), 1e-5, 1e-5);
    CHECK_ALLCLOSE(b.grad(), sum(seed.reshape({M, N}), {0}), 1e-5, 1e-5);
    // matmul(g, w) [.., N] x [N, K] and its own gradient (linear again): twice differentiable
    Tensor gin = randn({M, N}, g).requires_grad_(true);
    Tensor gm = matmul(gin, w);
    CHECK_ALLCLOSE(gm, matmul(gin.detach(), wf), 1e-5, 1e-5);
    Tensor seed2 = randn({M, K}, g);
    sum(mul(gm, seed2)).backward();
    // the gradient through matmul(., w) is linear(seed2, w): activations quantized again
    CHECK(max_abs_diff(gin.grad(), linear(seed2, wf)) < 0.05 * max_abs_diff(linear(seed2, wf), zeros({M, N})));
  }
}

TEST_CASE("quantized embedding rows, meta shapes, devices and refusals") {
  Tensor w = random_blocks(DType::q8_0, 10, 64, 7);
  Tensor ids = from_vector(std::vector<int64_t>{3, 0, 9, 3}, {2, 2});
  Tensor e = embedding(ids, w);
  CHECK(e.shape() == Shape{2, 2, 64});
  CHECK(max_abs_diff(e, embedding(ids, w.to(DType::float32))) == 0);
  CHECK(error_of([&] { embedding(from_vector(std::vector<int64_t>{10}, {1}), w); }).find("out of range") != std::string::npos);
  // meta: shapes only
  Tensor wm = empty({8, 64}, DType::q4_0, Device::meta);
  CHECK(linear(empty({3, 64}, DType::float32, Device::meta), wm).shape() == Shape{3, 8});
  CHECK(linear(empty({3, 64}, DType::float32, Device::meta), wm).is_meta());
  CHECK(error_of([&] { linear(zeros({3, 63}), w); }).find("has 63 features") != std::string::npos);
  CHECK(error_of([&] { matmul(w, zeros({64, 2})); }).find("quantized left operand") != std::string::npos);
  CHECK(error_of([&] { empty({3, 40}, DType::q4_0); }).find("not a whole number of q4_0 blocks") != std::string::npos);
  CHECK(dtype_nbytes(DType::q6_k, 512) == 420);
  CHECK(error_of([&] { dtype_size(DType::q4_1); }).find("block-quantized") != std::string::npos);
}

TEST_CASE("quantized kernels: every ISA's dot products equal the scalar kernels' (float order aside)") {
  using namespace peft::quant;
  const KernelTable& best = best_kernels();
  const KernelTable& ref = generic::kernels();
  MESSAGE("quantized kernels in use: " << std::string(best.isa));
  Generator g(9);
  for (DType dt : kQuantTypes) {
    CAPTURE(dtype_name(dt));
    const int64_t K = 512;
    Tensor w = random_blocks(dt, 1, K, 31);
    const ActFormat af = act_format(dt);
    const size_t xrow = act_row_bytes(af, K);
    std::vector<uint8_t> xq_best(4 * xrow), xq_ref(4 * xrow);
    Tensor x = randn({4, K}, g);
    for (int j = 0; j < 4; ++j) {
      best.quantize[int(af)](x.data_ptr<float>() + j * K, xq_best.data() + j * xrow, K);
      ref.quantize[int(af)](x.data_ptr<float>() + j * K, xq_ref.data() + j * xrow, K);
    }
    CHECK(xq_best == xq_ref);  // activation quantization is exact on every ISA
    if (DequantizeFn deq = best.dequantize[int(dt) - int(DType::q4_0)]) {  // bulk dequantization: bit-equal
      Tensor wide = random_blocks(dt, 3, K, 41);
      std::vector<float> fast(size_t(3 * K)), slow(size_t(3 * K));
      deq(wide.raw_data(), fast.data(), 3 * K);
      dequantize_row(dt, wide.raw_data(), slow.data(), 3 * K);
      CHECK(std::memcmp(fast.data(), slow.data(), fast.size() * sizeof(float)) == 0);
    }
    for (int nx = 1; nx <= 4; ++nx) {
      float a[4], b[4];
      best.dot[int(dt) - int(DType::q4_0)](K, w.raw_data(), xq_best.data(), xrow, nx, a);
      ref.dot[int(dt) - int(DType::q4_0)](K, w.raw_data(), xq_ref.data(), xrow, nx, b);
      for (int j = 0; j < nx; ++j) CHECK(std::fabs(a[j] - b[j]) <= 1e-5f * (1 + std::fabs(b[j])));
    }
  }
}

TEST_CASE("float32 linear of a few rows (the streaming matrix-vector path) equals the float64 product") {
  Generator g(13);
  for (int64_t M : {1, 2, 3, 4, 5}) {
    for (int64_t K : {16, 19, 77, 576}) {
      CAPTURE(M);
      CAPTURE(K);
      const int64_t N = 133;
      Tensor x = randn({M, K}, g), w = randn({N, K}, g), b = randn({N}, g);
      Tensor ref = linear(x.to(DType::float64), w.to(DType::float64), b.to(DType::float64));
      CHECK_ALLCLOSE(linear(x, w, b), ref.to(DType::float32), 1e-5, 1e-4);
      // a strided (transposed-view) input takes the general path and agrees too
      Tensor xt = x.t().contiguous().t();
      CHECK_ALLCLOSE(linear(xt, w), linear(x.to(DType::float64), w.to(DType::float64)).to(DType::float32), 1e-5, 1e-4);
    }
  }
}
