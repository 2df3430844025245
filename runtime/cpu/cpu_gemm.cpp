// CpuBackend::gemm: float32 products through oneDNN's sgemm (or, for few output columns,
// the packed kernel of vec_f32.h), float64 through Eigen. The only translation unit
// that includes oneDNN or Eigen's dense headers (svd.cpp holds Eigen's SVD).
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <string>
#include <vector>

#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/vec_f32.h"

namespace peft::cpu {
namespace {

struct MatLayout {
  bool ok;
  char trans;
  int64_t ld;
};

// Describes a [rows, cols] strided matrix as a row-major BLAS operand.
MatLayout mat_layout(int64_t rows, int64_t cols, int64_t srow, int64_t scol) {
  if (scol == 1 || cols == 1) {
    int64_t ld = rows > 1 ? srow : cols;
    if (ld >= std::max<int64_t>(cols, 1)) return {true, 'N', ld};
  }
  if (srow == 1 || rows == 1) {
    int64_t ld = cols > 1 ? scol : rows;
    if (ld >= std::max<int64_t>(rows, 1)) return {true, 'T', ld};
  }
  return {false, 'N', 0};
}

constexpr double kSmallGemmFlops = 1e6;
// Up to this many output columns sgemm_2d uses its own packed kernel (vec_f32.h); K is
// bounded so the packed copy of B stays small (<= 256 KiB).
constexpr int64_t kFewColumns = 16, kFewColumnsMaxK = 4096;

void sgemm_2d(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t sam,
              int64_t sak, const float* B, int64_t sbk, int64_t sbn, float beta, float* C) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == 0 ? 0.f : C[i] * beta;
    return;
  }
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int max_nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (N <= kFewColumns && K <= kFewColumnsMaxK && M >= N) {
    // LoRA's rank-r products: own kernel, ~2.3x oneDNN's speed at N = 8 (perf-notes)
    thread_local std::vector<float> packed;
    packed.resize(size_t(cpu::packed8_size(K, N)));
    cpu::pack8_f32(K, N, B, sbk, sbn, packed.data());
    const int64_t row_blocks = (M + 7) / 8;
    const int parts = flops < kSmallGemmFlops ? 1 : int(std::min<int64_t>(max_nt, row_blocks));
    const float* pk = packed.data();
    auto rows = [&](int part) {
      const int64_t per = (row_blocks + parts - 1) / parts * 8;
      const int64_t r0 = part * per, r1 = std::min(M, r0 + per);
      if (r0 < r1) cpu::gemm_packed8_f32(r0, r1, N, K, alpha, A, sam, sak, pk, beta, C, N);
    };
    if (parts <= 1) {
      rows(0);
    } else {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
      for (int part = 0; part < parts; ++part) rows(part);
    }
    return;
  }
  if (M <= 4 && sak == 1 && sbk == 1 && N >= 64 && K >= 16) {
    // a few rows against a weight stored [N, K] (linear of one token): a streaming
    // matrix-vector product, four weight rows at a time with prefetch, threads over blocks of
    // output columns (SmolLM2 float32, one token on 2 threads: 32.7 -> 34.5 tok/s against
    // oneDNN's sgemm; on 1 thread 20.4 -> 19.0)
    const int64_t nt = flops < 1e5 ? 1 : max_nt;
    const int64_t block = std::max<int64_t>(8, N / (nt * 8)), nblocks = (N + block - 1) / block;
    auto run = [&](int64_t b) {
      const int64_t n0 = b * block, n1 = std::min(N, n0 + block);
      cpu::gemv_rows_f32(n0, n1, K, B, sbn, M, A, sam, alpha, beta, C, N, /*prefetch: 4 rows ahead*/ 16 * K);
    };
    if (nt <= 1) {
      for (int64_t b = 0; b < nblocks; ++b) run(b);
    } else {
#pragma omp parallel for num_threads(int(nt)) schedule(dynamic, 1)
      for (int64_t b = 0; b < nblocks; ++b) run(b);
    }
    return;
  }
  MatLayout la = mat_layout(M, K, sam, sak), lb = mat_layout(K, N, sbk, sbn);
  std::vector<float> ca, cb;
  if (!la.ok) {
    ca.resize(size_t(M * K));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) ca[size_t(i * K + k)] = A[i * sam + k * sak];
    A = ca.data();
    la = {true, 'N', K};
  }
  if (!lb.ok) {
    cb.resize(size_t(K * N));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) cb[size_t(k * N + j)] = B[k * sbk + j * sbn];
    B = cb.data();
    lb = {true, 'N', N};
  }
  // Threads split C into row (or column) blocks, one sequential sgemm each: on the
  // 2-core machines we measure, that ran 1.2x faster than oneDNN's own threading
  // from 256x512x512 to 512x4096x4096 (205 vs 170 GFLOP/s; docs/perf-notes.md). Below
  // ~1 MFLOP one thread is faster than any fork/join.
  const bool by_rows = M >= N;
  const int64_t extent = by_rows ? M : N, align = 16;
  const int parts = flops < kSmallGemmFlops ? 1 : int(std::min<int64_t>(max_nt, extent / align));
  dnnl_status_t st = dnnl_success;
  if (parts <= 1) {
    // oneDNN forks every OpenMP thread whatever the size unless told otherwise
    if (max_nt > 1) omp_set_num_threads(1);
    st = dnnl_sgemm(la.trans, lb.trans, M, N, K, alpha, A, la.ld, B, lb.ld, beta, C, N);
    if (max_nt > 1) omp_set_num_threads(max_nt);
  } else {
    const int64_t chunk = ((extent + parts - 1) / parts + align - 1) / align * align;
    const int64_t a_row = la.trans == 'N' ? la.ld : 1, b_col = lb.trans == 'N' ? 1 : lb.ld;
    std::atomic<int> failed{dnnl_success};
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int part = 0; part < parts; ++part) {
      const int64_t lo = part * chunk, n = std::min(extent, lo + chunk) - lo;
      if (n <= 0) continue;
      // inside the parallel region oneDNN runs sequentially
      const dnnl_status_t s =
          by_rows ? dnnl_sgemm(la.trans, lb.trans, n, N, K, alpha, A + lo * a_row, la.ld, B, lb.ld, beta,
                               C + lo * N, N)
                  : dnnl_sgemm(la.trans, lb.trans, M, n, K, alpha, A, la.ld, B + lo * b_col, lb.ld, beta,
                               C + lo, N);
      if (s != dnnl_success) failed = int(s);
    }
    st = dnnl_status_t(failed.load());
  }
  if (st != dnnl_success) fail("[matmul] oneDNN sgemm failed with status ", int(st));
}

void dgemm_2d(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t sam,
              int64_t sak, const double* B, int64_t sbk, int64_t sbn, double beta, double* C) {
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Str = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Map<const Mat, 0, Str> a(A, M, K, Str(sam, sak));
  Eigen::Map<const Mat, 0, Str> b(B, K, N, Str(sbk, sbn));
  Eigen::Map<Mat> c(C, M, N);
  if (beta == 0)
    c.setZero();
  else if (beta != 1)
    c *= beta;
  c.noalias() += alpha * (a * b);
}

}  // namespace

void CpuBackend::gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) {
  const bool batched = a.dim() == 3;
  const int64_t B = batched ? a.size(0) : 1;
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  const int64_t sab = batched ? a.stride(0) : 0, sbb = batched ? b.stride(0) : 0;
  const int64_t sam = a.stride(-2), sak = a.stride(-1), sbk = b.stride(-2), sbn = b.stride(-1);
  // Many small products (attention-like batches): one product per thread, each
  // single-threaded (oneDNN and Eigen run serially inside a parallel region);
  // large ones: one after another, each using every thread.
  const int nt = omp_get_max_threads();
  const bool per_thread = B > 1 && nt > 1 && 2.0 * double(M) * double(N) * double(K) < 8e6;
  auto run_batch = [&](auto&& one) {
    if (!per_thread) {
      for (int64_t i = 0; i < B; ++i) one(i);
      return;
    }
    std::string err;
#pragma omp parallel for num_threads(int(std::min<int64_t>(nt, B))) schedule(static)
    for (int64_t i = 0; i < B; ++i) {
      try {
        one(i);
      } catch (const std::exception& e) {
#pragma omp critical(peft_gemm_err)
        err = e.what();
      }
    }
    if (!err.empty()) throw Error(err);
  };
  if (a.dtype() == DType::float32) {
    const float* A = a.data_ptr<float>();
    const float* Bp = b.data_ptr<float>();
    float* C = out.data_ptr<float>();
    run_batch([&](int64_t i) {
      sgemm_2d(M, N, K, float(alpha), A + i * sab, sam, sak, Bp + i * sbb, sbk, sbn, float(beta),
               C + i * M * N);
    });
  } else if (a.dtype() == DType::float64) {
    const double* A = a.data_ptr<double>();
    const double* Bp = b.data_ptr<double>();
    double* C = out.data_ptr<double>();
    run_batch([&](int64_t i) {
      dgemm_2d(M, N, K, alpha, A + i * sab, sam, sak, Bp + i * sbb, sbk, sbn, beta, C + i * M * N);
    });
  } else {
    fail("[matmul] internal: CPU gemm needs float32/float64, got ", dtype_name(a.dtype()));
  }
}

}  // namespace peft::cpu
