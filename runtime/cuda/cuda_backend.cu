// CUDA kernels of the Backend interface (runtime/backend.h): cuBLAS for matrix products
// (float32, float64, and bfloat16 / float16 on tensor cores with float32 accumulation),
// own kernels for everything else. All work goes on the legacy default stream, so
// copies to the host and the caching allocator's reuse are ordered without events.
// The kernels live in cuda_elementwise.cu, cuda_reduce_index.cu and cuda_transformer.cu.
#include <cublas_v2.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "runtime/cuda/cuda_common.cuh"
#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda_plugin.h"
#include "runtime/cuda/cuda_transformer.h"

namespace peft {
namespace cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a sticky launch error so the next call starts clean
    fail("[", what, "] CUDA error: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  }
}

namespace {

std::atomic<int> g_device{0};

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
  }
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("[", what, "] cuBLAS failed: ", cublas_status_name(s), " (", int(s), ")");
}

int device_count_or_zero(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    return 0;
  }
  if (n <= 0 && why) *why = "cudaGetDeviceCount found 0 devices";
  return n;
}

// ---------------------------------------------------------------------------
// Caching allocator: freed blocks go to a free list keyed by (device, rounded size) and are
// handed out again for the same rounded size; cudaMalloc failing releases the cache and
// retries once. Everything cached is released at exit (before the CUDA runtime tears
// down); blocks freed after that go straight to cudaFree.
class DeviceCache {
 public:
  static size_t round(size_t n) {
    const size_t g = n < (size_t(1) << 20) ? 512 : (size_t(1) << 20);  // 512 B below 1 MiB, else 1 MiB
    return n == 0 ? g : (n + g - 1) / g * g;
  }
  void* get(int dev, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find({dev, n});
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= n;
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      release_all();
      e = cudaMalloc(&p, n);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of memory allocating ", n, " bytes on cuda:", dev, " (", free_b >> 20, " MiB free of ",
           total_b >> 20, " MiB): ", cudaGetErrorString(e));
    }
    return p;
  }
  void put(int dev, void* p, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!exiting_) {
        free_.emplace(std::make_pair(dev, n), p);
        cached_ += n;
        return;
      }
    }
    cudaFree(p);  // after exit began: errors (runtime already gone) are ignored
  }
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) cudaFree(kv.second);
    free_.clear();
    cached_ = 0;
  }
  void release_at_exit() {
    release_all();
    std::lock_guard<std::mutex> lock(mu_);
    exiting_ = true;
  }

 private:
  std::mutex mu_;
  std::multimap<std::pair<int, size_t>, void*> free_;
  size_t cached_ = 0;
  bool exiting_ = false;
};

// Never destroyed: tensors held by static objects may be freed after main.
DeviceCache& device_cache() {
  static DeviceCache* c = [] {
    auto* cache = new DeviceCache();
    std::atexit([] { device_cache().release_at_exit(); });
    return cache;
  }();
  return *c;
}

// One cuBLAS handle per device, created on first use.
cublasHandle_t cublas_handle() {
  static std::mutex mu;
  static std::map<int, cublasHandle_t> handles;
  const int dev = g_device.load();
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles.find(dev);
  if (it != handles.end()) return it->second;
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "cublasCreate");
  handles[dev] = h;
  return h;
}

// ---------------------------------------------------------------------------
// gemm helpers

struct MatLayout {
  bool ok;
  bool trans;  // stored transposed relative to row-major (column stride 1 is "not transposed")
  int64_t ld;
};

// Describes a [rows, cols] strided matrix as a row-major BLAS operand (as cpu_backend.cpp).
MatLayout mat_layout(int64_t rows, int64_t cols, int64_t srow, int64_t scol) {
  if (scol == 1 || cols == 1) {
    const int64_t ld = rows > 1 ? srow : cols;
    if (ld >= std::max<int64_t>(cols, 1)) return {true, false, ld};
  }
  if (srow == 1 || rows == 1) {
    const int64_t ld = cols > 1 ? scol : rows;
    if (ld >= std::max<int64_t>(rows, 1)) return {true, true, ld};
  }
  return {false, false, 0};
}

cudaDataType_t cuda_type(DType dt) {
  switch (dt) {
    case DType::float32: return CUDA_R_32F;
    case DType::float64: return CUDA_R_64F;
    case DType::bfloat16: return CUDA_R_16BF;
    case DType::float16: return CUDA_R_16F;
    default: fail("[matmul] internal: CUDA gemm called with ", dtype_name(dt));
  }
}

void check_int(int64_t v, const char* what, const Tensor& a, const Tensor& b) {
  if (v > int64_t(INT32_MAX))
    fail("[matmul] ", what, " = ", v, " exceeds cuBLAS's 32-bit limit for ", a.desc(), " @ ", b.desc());
}

// ---------------------------------------------------------------------------

class CudaBackend final : public Backend {
 public:
  std::shared_ptr<Storage> allocate(size_t nbytes) override {
    make_current();
    const int dev = g_device.load();
    const size_t rounded = DeviceCache::round(nbytes);
    void* p = device_cache().get(dev, rounded);
    auto st = std::make_shared<Storage>();
    st->data = p;
    st->nbytes = nbytes;
    st->device = Device::cuda;
    st->owner = std::shared_ptr<void>(p, [dev, rounded](void* q) { device_cache().put(dev, q, rounded); });
    return st;
  }

  // elementwise kernels: cuda_elementwise.cu
  void copy(const Tensor& src, Tensor& dst) override {
    make_current();
    cuda::copy(src, dst);
  }
  void fill(Tensor& dst, double value) override {
    make_current();
    cuda::fill(dst, value);
  }
  void unary(UnaryKind k, const Tensor& x, Tensor& out, double s0, double s1) override {
    make_current();
    cuda::unary(k, x, out, s0, s1);
  }
  void binary(BinaryKind k, const Tensor& a, const Tensor& b, Tensor& out) override {
    make_current();
    cuda::binary(k, a, b, out);
  }
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) override {
    make_current();
    cuda::where(cond, a, b, out);
  }

  // reductions, softmax, index ops, random: cuda_reduce_index.cu
  void reduce(ReduceKind k, const Tensor& x, const std::vector<bool>& reduced, Tensor& out) override {
    make_current();
    cuda::reduce(k, x, reduced, out);
  }
  void softmax(const Tensor& x, int64_t dim, bool log, Tensor& out) override {
    make_current();
    cuda::softmax(x, dim, log, out);
  }
  void index_select(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override {
    make_current();
    cuda::index_select(x, dim, index, out);
  }
  void index_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override {
    make_current();
    cuda::index_add(out, dim, index, src);
  }
  void gather(const Tensor& x, int64_t dim, const Tensor& index, Tensor& out) override {
    make_current();
    cuda::gather(x, dim, index, out);
  }
  void scatter_add(Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override {
    make_current();
    cuda::scatter_add(out, dim, index, src);
  }
  void random(RandomKind k, Tensor& out, double a, double b, uint64_t seed, uint64_t counter) override {
    make_current();
    cuda::random(k, out, a, b, seed, counter);
  }

  DType gemm_dtype(DType dt) const override {
    return dt == DType::bfloat16 || dt == DType::float16 ? dt : compute_dtype(dt);
  }

  void gemm(const Tensor& a, const Tensor& b, Tensor& out, double alpha, double beta) override {
    make_current();
    const bool batched = a.dim() == 3;
    const int64_t B = batched ? a.size(0) : 1;
    const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
    if (M == 0 || N == 0 || B == 0) return;
    check_int(M, "M", a, b), check_int(N, "N", a, b), check_int(K, "K", a, b), check_int(B, "batch", a, b);
    const DType dt = a.dtype();
    if (b.dtype() != dt || out.dtype() != dt)
      fail("[matmul] internal: CUDA gemm needs one dtype, got ", a.desc(), ", ", b.desc(), ", ", out.desc());
    if (K == 0) {  // out = beta·out; cuBLAS rejects the leading dimensions of empty operands
      if (beta == 0) fill(out, 0.0);
      else if (beta != 1) unary(UnaryKind::mul_scalar, out, out, beta, 0.0);
      return;
    }
    // Row-major out [M,N] is column-major outᵀ [N,M] = Bᵀ·Aᵀ: cuBLAS's first operand is B.
    Tensor av = a, bv = b;
    MatLayout la = mat_layout(M, K, a.stride(-2), a.stride(-1));
    MatLayout lb = mat_layout(K, N, b.stride(-2), b.stride(-1));
    if (!la.ok) {
      av = contiguous_raw(a);
      la = {true, false, K};
    }
    if (!lb.ok) {
      bv = contiguous_raw(b);
      lb = {true, false, N};
    }
    const int64_t sa = batched ? av.stride(0) : 0, sb = batched ? bv.stride(0) : 0;
    const cudaDataType_t ct = cuda_type(dt);
    const bool f64 = dt == DType::float64;
    const float af = float(alpha), bf = float(beta);
    const void* alpha_p = f64 ? static_cast<const void*>(&alpha) : static_cast<const void*>(&af);
    const void* beta_p = f64 ? static_cast<const void*>(&beta) : static_cast<const void*>(&bf);
    const cublasComputeType_t comp = f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
    cublasHandle_t h = cublas_handle();
    const cublasOperation_t opb = lb.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opa = la.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    check_cublas(cublasGemmStridedBatchedEx(h, opb, opa, int(N), int(M), int(K), alpha_p, bv.raw_data(), ct,
                                            int(lb.ld), sb, av.raw_data(), ct, int(la.ld), sa, beta_p,
                                            out.raw_data(), ct, int(N), M * N, int(B), comp, CUBLAS_GEMM_DEFAULT),
                 "matmul");
  }


  // transformer blocks: cuda_transformer.cu
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& out, Tensor& mean,
                  Tensor& rstd) override {
    make_current();
    cuda::layer_norm(x, w, b, eps, out, mean, rstd);
  }
  void layer_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                           Tensor& dx, Tensor& dw, Tensor& db) override {
    make_current();
    cuda::layer_norm_backward(g, x, w, mean, rstd, dx, dw, db);
  }
  void rms_norm(const Tensor& x, const Tensor& w, double eps, DType rt, bool ggml_rstd, Tensor& out, Tensor& rstd) override {
    make_current();
    cuda::rms_norm(x, w, eps, rt, ggml_rstd, out, rstd);
  }
  void rms_norm_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Tensor& rstd, DType rt, Tensor& dx,
                         Tensor& dw) override {
    make_current();
    cuda::rms_norm_backward(g, x, w, rstd, rt, dx, dw);
  }
  void rotary_embedding(const Tensor& x, const Tensor& c, const Tensor& s, bool tr, Tensor& out) override {
    make_current();
    cuda::rotary_embedding(x, c, s, tr, out);
  }
  void scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                    bool causal, double scale, Tensor& out, Tensor& lse) override {
    make_current();
    cuda::attention(q, k, v, mask, causal, scale, out, lse);
  }
  void scaled_dot_product_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                             bool causal, double scale, const Tensor& out, const Tensor& lse,
                                             const Tensor& g, Tensor& dq, Tensor& dk, Tensor& dv) override {
    make_current();
    cuda::attention_backward(q, k, v, mask, causal, scale, out, lse, g, dq, dk, dv);
  }
};

}  // namespace

void make_current() {
  thread_local int current = -1;
  const int dev = g_device.load();
  if (current != dev) {
    check(cudaSetDevice(dev), "cudaSetDevice");
    current = dev;
  }
}

}  // namespace cuda

// ---------------------------------------------------------------------------
// entry points of runtime/backend.h and device.h, handed to libpeft.so through the plugin table
// (runtime/cuda_plugin.h, runtime/cuda_loader.cpp)

namespace {

bool plugin_available() {
  static const bool present = cuda::device_count_or_zero(nullptr) > 0;
  return present;
}

int plugin_device_count() { return cuda::device_count_or_zero(nullptr); }

void plugin_select_device(int index) {
  std::string why;
  const int n = cuda::device_count_or_zero(&why);
  if (n == 0) fail("cannot select cuda:", index, ": no CUDA device is present (", why, ")");
  if (index < 0 || index >= n)
    fail("cannot select cuda:", index, ": this machine has ", n, " CUDA device", n == 1 ? "" : "s", " (cuda:0",
         n > 1 ? std::string(" to cuda:") + std::to_string(n - 1) : std::string(), ")");
  cuda::g_device.store(index);
  cuda::make_current();
}

void plugin_synchronize() {
  if (!plugin_available()) return;
  cuda::make_current();
  cuda::check(cudaDeviceSynchronize(), "cuda_synchronize");
}

Backend& plugin_backend() {
  static std::string why;
  static const bool present = [] { return cuda::device_count_or_zero(&why) > 0; }();
  if (!present)
    fail("no CUDA device is present (", why,
         "): this build has the CUDA backend, but tensors can only go to cuda on a machine with an NVIDIA GPU "
         "and its driver");
  static cuda::CudaBackend b;
  return b;
}

void plugin_copy_across_devices(const Tensor& src, Tensor& dst) {
  if (src.nbytes() != dst.nbytes())
    fail("[to_device] internal: copying ", src.desc(), " into ", dst.desc(), " of a different size");
  if (src.nbytes() == 0) return;
  const Device s = src.device(), d = dst.device();
  if (s == Device::meta || d == Device::meta)
    fail("[to_device] cannot copy ", src.desc(), " to ", dst.desc(), ": meta tensors have no data");
  if (s == Device::cpu && d == Device::cpu) {
    std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  plugin_backend();  // fails clearly without a device
  cuda::make_current();
  const cudaMemcpyKind kind = s == Device::cpu ? cudaMemcpyHostToDevice
                              : d == Device::cpu ? cudaMemcpyDeviceToHost
                                                 : cudaMemcpyDeviceToDevice;
  cuda::check(cudaMemcpy(dst.raw_data(), src.raw_data(), src.nbytes(), kind), "to_device");
}

}  // namespace

}  // namespace peft

extern "C" __attribute__((visibility("default"))) const peft::CudaPluginApi* peft_cuda_plugin_api() {
  static const peft::CudaPluginApi api{peft::kCudaPluginVersion, peft::plugin_available,
                                       peft::plugin_device_count, peft::plugin_select_device,
                                       peft::plugin_synchronize,  peft::plugin_backend,
                                       peft::plugin_copy_across_devices};
  return &api;
}
