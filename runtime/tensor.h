// Tensor: a strided view (shape, strides, offset) onto a shared Storage, with a
// dtype, a device and autograd state. Copying a Tensor copies the handle, not
// the data (like torch.Tensor in Python).
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/error.h"

namespace peft {

using Shape = std::vector<int64_t>;

// Raw memory on one device. `owner` keeps the bytes alive: an allocation, an
// mmapped file region, a device buffer.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::cpu;
  std::shared_ptr<void> owner;
};

namespace autograd {
struct Node;
}

struct TensorImpl {
  Shape shape;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::float32;
  Device device = Device::cpu;
  std::shared_ptr<Storage> storage;  // null on meta
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
};

class Generator;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t offset() const { return impl().offset; }
  int64_t dim() const { return int64_t(impl().shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t numel() const;
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().device; }
  bool is_meta() const { return impl().device == Device::meta; }
  bool is_contiguous() const;
  size_t nbytes() const { return dtype_nbytes(dtype(), numel()); }
  // "float32[2, 3] cpu" — used in error messages.
  std::string desc() const;

  // Data access (throws on meta tensors and on dtype mismatch).
  template <class T>
  T* data_ptr() const;
  void* raw_data() const;  // address of element 0 (offset applied)
  bool same_storage(const Tensor& other) const;

  // Element access for tests and small host-side work; converts to double.
  double item() const;
  double at(std::initializer_list<int64_t> idx) const;
  double at(const Shape& idx) const;
  void set(const Shape& idx, double value);  // writes in place (no autograd)
  template <class T>
  std::vector<T> to_vector() const;  // contiguous copy in row-major order

  // Conversions (differentiable).
  Tensor to(DType dt) const;
  Tensor to(Device dev) const;
  Tensor contiguous() const;
  Tensor clone() const;

  // Views (share storage; differentiable).
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor t() const;  // 2-D transpose
  Tensor permute(const Shape& order) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor squeeze() const;
  Tensor expand(const Shape& shape) const;

  // Autograd.
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  Tensor grad() const;
  void set_grad(const Tensor& g);
  void zero_grad();  // drops the accumulated gradient
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl().grad_fn; }
  Tensor detach() const;  // same storage, no history
  void backward(const Tensor& gradient = Tensor()) const;

  // In-place, no autograd: for optimizers, merging, loading.
  Tensor& copy_(const Tensor& src);  // broadcasting, dtype-converting
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& uniform_(double lo, double hi, Generator& gen);
  Tensor& normal_(double mean, double std, Generator& gen);
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double value);

  // Makes this tensor (and every handle sharing its impl) refer to `src`'s
  // data: storage, shape, strides, offset, dtype and device, without copying
  // (PyTorch's `t.data = src`). requires_grad, grad and grad_fn are kept.
  void set_data(const Tensor& src);

  // Materialises a meta tensor: allocates storage on `dev` (uninitialised).
  void materialize(Device dev = Device::cpu);

  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- creation ----
Tensor empty(const Shape& shape, DType dt = DType::float32, Device dev = Device::cpu);
Tensor zeros(const Shape& shape, DType dt = DType::float32, Device dev = Device::cpu);
Tensor ones(const Shape& shape, DType dt = DType::float32, Device dev = Device::cpu);
Tensor full(const Shape& shape, double value, DType dt = DType::float32, Device dev = Device::cpu);
Tensor arange(double start, double end, double step = 1.0, DType dt = DType::int64,
              Device dev = Device::cpu);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
Tensor scalar_tensor(double value, DType dt = DType::float32, Device dev = Device::cpu);
// Copies host data; values are converted to `dt`.
Tensor from_vector(const std::vector<float>& v, const Shape& shape, DType dt = DType::float32);
Tensor from_vector(const std::vector<double>& v, const Shape& shape, DType dt = DType::float64);
Tensor from_vector(const std::vector<int64_t>& v, const Shape& shape, DType dt = DType::int64);
// Wraps existing memory without copying; `owner` keeps it alive.
Tensor from_blob(void* data, const Shape& shape, DType dt, std::shared_ptr<void> owner,
                 Device dev = Device::cpu);
Tensor rand(const Shape& shape, Generator& gen, DType dt = DType::float32, Device dev = Device::cpu);
Tensor randn(const Shape& shape, Generator& gen, DType dt = DType::float32,
             Device dev = Device::cpu);
Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dt = DType::float32,
               Device dev = Device::cpu);

int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

// ---- memory ----
// Bytes of CPU tensor storage the runtime holds for live tensors (64-byte padded sizes; idle
// blocks of the reuse cache and memory-mapped checkpoint files are not counted). Cheap.
size_t cpu_allocated_bytes();
// The most cpu_allocated_bytes() has been since the last reset (or the start).
size_t cpu_allocated_peak_bytes();
void reset_cpu_allocated_peak();
// Idle blocks the reuse cache holds (mapped, resident once touched).
size_t cpu_cached_bytes();
// Gives idle cached blocks back to the OS: all of them, or (all = false) those not reused
// since the previous call. The Trainer calls it once per step, so blocks sized for an earlier
// batch's sequence length do not stay resident.
void trim_cpu_cache(bool all = false);

// ---- thread count for CPU kernels (PEFT_NUM_THREADS overrides the default) ----
void set_num_threads(int n);
int get_num_threads();

}  // namespace peft
