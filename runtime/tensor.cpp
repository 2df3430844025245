#include "runtime/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "runtime/autograd.h"
#include "runtime/backend.h"
#include "runtime/generator.h"
#include "runtime/half.h"
#include "runtime/ops.h"

namespace peft {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {
// GGML block formats: values per block, bytes per block (ggml-common.h).
struct BlockFormat {
  const char* name;
  int64_t elems;
  size_t bytes;
};
BlockFormat block_format(DType dt) {
  switch (dt) {
    case DType::q4_0: return {"q4_0", 32, 18};
    case DType::q4_1: return {"q4_1", 32, 20};
    case DType::q5_0: return {"q5_0", 32, 22};
    case DType::q5_1: return {"q5_1", 32, 24};
    case DType::q8_0: return {"q8_0", 32, 34};
    case DType::q4_k: return {"q4_k", 256, 144};
    case DType::q5_k: return {"q5_k", 256, 176};
    case DType::q6_k: return {"q6_k", 256, 210};
    default: return {nullptr, 1, 0};
  }
}
}  // namespace

bool is_quantized(DType dt) { return block_format(dt).name != nullptr; }

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::bfloat16: return 2;
    case DType::float16: return 2;
    case DType::int64: return 8;
    case DType::bool_: return 1;
    default: break;
  }
  const BlockFormat f = block_format(dt);
  fail("dtype_size: ", f.name ? f.name : "?", " is a block-quantized dtype (", f.elems, " values in ", f.bytes,
       " bytes), it has no per-element size");
}

int64_t dtype_block_elems(DType dt) { return block_format(dt).elems; }
size_t dtype_block_bytes(DType dt) { return is_quantized(dt) ? block_format(dt).bytes : dtype_size(dt); }

size_t dtype_nbytes(DType dt, int64_t numel) {
  if (!is_quantized(dt)) return size_t(numel) * dtype_size(dt);
  const BlockFormat f = block_format(dt);
  if (numel % f.elems)
    fail("dtype_nbytes: ", numel, " values are not a whole number of ", f.name, " blocks (", f.elems, " each)");
  return size_t(numel / f.elems) * f.bytes;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
    case DType::int64: return "int64";
    case DType::bool_: return "bool";
    default: break;
  }
  const char* n = block_format(dt).name;
  return n ? n : "?";
}

const char* device_name(Device d) {
  switch (d) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
    case Device::meta: return "meta";
  }
  return "?";
}

bool is_floating(DType dt) {
  return dt == DType::float32 || dt == DType::float64 || dt == DType::bfloat16 ||
         dt == DType::float16;
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::bool_) return b;
  if (b == DType::bool_) return a;
  bool fa = is_floating(a), fb = is_floating(b);
  if (fa && !fb) return a;
  if (fb && !fa) return b;
  if (!fa && !fb) return DType::int64;
  if (a == DType::float64 || b == DType::float64) return DType::float64;
  if (a == DType::float32 || b == DType::float32) return DType::float32;
  return DType::float32;  // bfloat16 with float16
}

DType compute_dtype(DType dt) {
  return (dt == DType::bfloat16 || dt == DType::float16) ? DType::float32 : dt;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

// ---------------------------------------------------------------------------
TensorImpl& Tensor::impl() const {
  if (!impl_) throw Error("use of an undefined Tensor (default-constructed or moved-from)");
  return *impl_;
}

static int64_t wrap_dim(int64_t d, int64_t rank, const char* what) {
  int64_t r = rank == 0 ? 1 : rank;
  if (d < -r || d >= r) fail("[", what, "] dimension ", d, " out of range for a tensor of rank ", rank);
  return d < 0 ? d + r : d;
}

int64_t Tensor::size(int64_t d) const { return shape()[size_t(wrap_dim(d, dim(), "size"))]; }
int64_t Tensor::stride(int64_t d) const { return strides()[size_t(wrap_dim(d, dim(), "stride"))]; }
int64_t Tensor::numel() const { return shape_numel(shape()); }

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  const auto& sh = shape();
  const auto& st = strides();
  for (size_t i = sh.size(); i-- > 0;) {
    if (sh[i] != 1 && st[i] != acc) return false;
    acc *= sh[i];
  }
  return true;
}

std::string Tensor::desc() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype())) + shape_str(shape()) +
         (device() == Device::cpu ? "" : std::string(" ") + device_name(device()));
}

void* Tensor::raw_data() const {
  auto& im = impl();
  if (im.device == Device::meta)
    fail("cannot read data of a meta tensor ", desc(),
         ": it has a shape but no storage; load a state dict into it or call materialize()");
  if (!im.storage) fail("tensor ", desc(), " has no storage");
  return static_cast<char*>(im.storage->data) + dtype_nbytes(im.dtype, im.offset);
}

template <class T>
static constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::float32; }
template <> constexpr DType dtype_of<double>() { return DType::float64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::int64; }
template <> constexpr DType dtype_of<bool>() { return DType::bool_; }

template <class T>
T* Tensor::data_ptr() const {
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (dtype() != DType::bfloat16 && dtype() != DType::float16)
      fail("data_ptr<uint16_t>() on a ", dtype_name(dtype()), " tensor");
  } else {
    if (dtype() != dtype_of<T>())
      fail("data_ptr<", dtype_name(dtype_of<T>()), ">() on a ", dtype_name(dtype()), " tensor ",
           desc());
  }
  return static_cast<T*>(raw_data());
}
template float* Tensor::data_ptr<float>() const;
template double* Tensor::data_ptr<double>() const;
template int64_t* Tensor::data_ptr<int64_t>() const;
template bool* Tensor::data_ptr<bool>() const;
template uint16_t* Tensor::data_ptr<uint16_t>() const;

bool Tensor::same_storage(const Tensor& other) const {
  return defined() && other.defined() && impl().storage && impl().storage == other.impl().storage;
}

static double load_as_double(const void* p, DType dt) {
  switch (dt) {
    case DType::float32: return *static_cast<const float*>(p);
    case DType::float64: return *static_cast<const double*>(p);
    case DType::bfloat16: return bf16_to_float(*static_cast<const uint16_t*>(p));
    case DType::float16: return f16_to_float(*static_cast<const uint16_t*>(p));
    case DType::int64: return double(*static_cast<const int64_t*>(p));
    case DType::bool_: return *static_cast<const bool*>(p) ? 1.0 : 0.0;
    default: break;
  }
  fail("element access on a ", dtype_name(dt), " tensor: quantized values are read by dequantizing (.to(float32))");
}

static void store_from_double(void* p, DType dt, double v) {
  switch (dt) {
    case DType::float32: *static_cast<float*>(p) = float(v); break;
    case DType::float64: *static_cast<double*>(p) = v; break;
    case DType::bfloat16: *static_cast<uint16_t*>(p) = float_to_bf16(float(v)); break;
    case DType::float16: *static_cast<uint16_t*>(p) = float_to_f16(float(v)); break;
    case DType::int64: *static_cast<int64_t*>(p) = int64_t(v); break;
    case DType::bool_: *static_cast<bool*>(p) = v != 0; break;
    default: fail("element write to a ", dtype_name(dt), " tensor: quantized tensors are read-only");
  }
}

// Element access goes through a CPU copy when the tensor lives elsewhere.
static Tensor host_view(const Tensor& t) {
  if (t.device() == Device::cpu) return t;
  return t.detach().to(Device::cpu);
}

double Tensor::item() const {
  if (numel() != 1) fail("item() needs a tensor with one element, got ", desc());
  Tensor h = host_view(*this);
  return load_as_double(h.raw_data(), dtype());
}

double Tensor::at(std::initializer_list<int64_t> idx) const { return at(Shape(idx)); }

static int64_t element_offset(const Tensor& t, const Shape& idx, const char* what) {
  if (is_quantized(t.dtype()))
    fail("[", what, "] element access on the ", dtype_name(t.dtype()), " tensor ", t.desc(),
         ": quantized values are read by dequantizing (.to(float32))");
  if (int64_t(idx.size()) != t.dim())
    fail("[", what, "] index of rank ", idx.size(), " for tensor ", t.desc());
  int64_t off = 0;
  for (size_t i = 0; i < idx.size(); ++i) {
    int64_t v = idx[i] < 0 ? idx[i] + t.shape()[i] : idx[i];
    if (v < 0 || v >= t.shape()[i])
      fail("[", what, "] index ", idx[i], " out of range for dim ", i, " of ", t.desc());
    off += v * t.strides()[i];
  }
  return off;
}

double Tensor::at(const Shape& idx) const {
  Tensor h = host_view(*this);
  int64_t off = element_offset(h, idx, "at");
  return load_as_double(static_cast<char*>(h.raw_data()) + off * int64_t(dtype_size(dtype())),
                        dtype());
}

void Tensor::set(const Shape& idx, double value) {
  if (device() != Device::cpu) fail("[set] element writes need a cpu tensor, got ", desc());
  int64_t off = element_offset(*this, idx, "set");
  store_from_double(static_cast<char*>(raw_data()) + off * int64_t(dtype_size(dtype())), dtype(),
                    value);
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = host_view(*this).contiguous();
  std::vector<T> out(size_t(c.numel()));
  const char* p = static_cast<const char*>(c.raw_data());
  size_t es = dtype_size(c.dtype());
  if constexpr (std::is_same_v<T, int64_t>) {
    if (c.dtype() == DType::int64) {  // exact for every int64
      if (!out.empty()) std::memcpy(out.data(), p, out.size() * sizeof(int64_t));
      return out;
    }
  }
  for (size_t i = 0; i < out.size(); ++i) out[i] = T(load_as_double(p + i * es, c.dtype()));
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;

// ---------------------------------------------------------------------------
// autograd-facing members

Tensor& Tensor::requires_grad_(bool on) {
  if (on && !is_floating(dtype()))
    fail("requires_grad_: only floating-point tensors can require gradients, got ", desc());
  if (!on && !is_leaf())
    fail("requires_grad_(false) on a non-leaf tensor ", desc(), "; use detach() instead");
  impl().requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }

void Tensor::set_grad(const Tensor& g) {
  if (g.defined() && g.shape() != shape())
    fail("set_grad: gradient ", g.desc(), " does not match tensor ", desc());
  impl().grad = g.defined() ? g.impl_ptr() : nullptr;
}

void Tensor::zero_grad() { impl().grad.reset(); }

Tensor Tensor::detach() const {
  auto im = std::make_shared<TensorImpl>();
  const auto& s = impl();
  im->shape = s.shape;
  im->strides = s.strides;
  im->offset = s.offset;
  im->dtype = s.dtype;
  im->device = s.device;
  im->storage = s.storage;
  return Tensor(im);
}

void Tensor::backward(const Tensor& gradient) const { autograd::run_backward(*this, gradient); }

// ---------------------------------------------------------------------------
// in-place helpers (no autograd)

// Element range [lo, hi] a strided tensor touches in its storage (numel > 0).
static void element_span(const Tensor& t, int64_t& lo, int64_t& hi) {
  lo = hi = t.offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t ext = (t.shape()[size_t(d)] - 1) * t.strides()[size_t(d)];
    (ext < 0 ? lo : hi) += ext;
  }
}

// Whether writing `dst` elementwise could clobber elements of `src` not yet read.
static bool may_overlap(const Tensor& dst, const Tensor& src) {
  if (!dst.same_storage(src) || dst.numel() == 0 || src.numel() == 0) return false;
  if (dst.offset() == src.offset() && dst.strides() == src.strides() && dst.dtype() == src.dtype())
    return false;  // the very same elements: an elementwise copy is safe
  int64_t dl, dh, sl, sh;
  element_span(dst, dl, dh);
  element_span(src, sl, sh);
  const int64_t de = int64_t(dtype_size(dst.dtype())), se = int64_t(dtype_size(src.dtype()));
  return dl * de < (sh + 1) * se && sl * se < (dh + 1) * de;
}

Tensor& Tensor::copy_(const Tensor& src) {
  if (is_quantized(dtype()))
    fail("[copy] cannot write into the ", dtype_name(dtype()), " tensor ", desc(),
         ": quantized tensors are read-only (quantizing is not supported)");
  if (src.defined() && is_quantized(src.dtype())) return copy_(src.to(DType::float32));
  if (!src.defined()) fail("copy_: source tensor is undefined");
  // broadcast src to our shape
  Tensor s = src;
  if (src.shape() != shape()) {
    NoGradGuard ng;
    s = src.expand(shape());
  }
  if (is_meta() || src.is_meta()) {
    if (!is_meta()) fail("copy_: cannot copy from meta tensor ", src.desc(), " into ", desc());
    return *this;
  }
  if (may_overlap(*this, s)) {  // e.g. a.copy_(a.t()): read everything first
    Tensor tmp = make_tensor(s.shape(), s.dtype(), s.device());
    backend(s.device()).copy(s, tmp);
    s = tmp;
  }
  if (s.device() != device()) {
    Tensor tmp = make_tensor(shape(), dtype(), s.device());
    backend(s.device()).copy(s, tmp);
    if (is_contiguous()) {
      copy_across_devices(tmp, *this);
    } else {
      Tensor tmp2 = make_tensor(shape(), dtype(), device());
      copy_across_devices(tmp, tmp2);
      backend(device()).copy(tmp2, *this);
    }
    return *this;
  }
  backend(device()).copy(s, *this);
  return *this;
}

Tensor& Tensor::fill_(double value) {
  if (is_meta()) return *this;
  backend(device()).fill(*this, value);
  return *this;
}

static void fill_random(Tensor& t, RandomKind k, double a, double b, Generator& gen) {
  if (t.is_meta()) return;
  if (!is_floating(t.dtype())) fail("random fill of non-floating tensor ", t.desc());
  uint64_t counter = gen.reserve_blocks(uint64_t((t.numel() + 3) / 4));
  if (t.is_contiguous() && compute_dtype(t.dtype()) == t.dtype()) {
    backend(t.device()).random(k, t, a, b, gen.seed(), counter);
  } else {
    Tensor tmp = make_tensor(t.shape(), compute_dtype(t.dtype()), t.device());
    backend(t.device()).random(k, tmp, a, b, gen.seed(), counter);
    backend(t.device()).copy(tmp, t);
  }
}

Tensor& Tensor::uniform_(double lo, double hi, Generator& gen) {
  fill_random(*this, RandomKind::uniform, lo, hi, gen);
  return *this;
}

Tensor& Tensor::normal_(double mean, double std, Generator& gen) {
  fill_random(*this, RandomKind::normal, mean, std, gen);
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  NoGradGuard ng;
  Tensor delta = alpha == 1.0 ? other : mul(other, alpha);
  Tensor r = add(detach(), delta);
  return copy_(r);
}

Tensor& Tensor::mul_(double value) {
  NoGradGuard ng;
  Tensor r = mul(detach(), value);
  return copy_(r);
}

void Tensor::set_data(const Tensor& src) {
  TensorImpl& d = impl();
  const TensorImpl& s = src.impl();
  d.storage = s.storage;
  d.shape = s.shape;
  d.strides = s.strides;
  d.offset = s.offset;
  d.dtype = s.dtype;
  d.device = s.device;
}

void Tensor::materialize(Device dev) {
  auto& im = impl();
  if (im.device != Device::meta) return;
  if (dev == Device::meta) fail("materialize: target device must not be meta");
  im.storage = backend(dev).allocate(dtype_nbytes(im.dtype, numel()));
  im.device = dev;
  im.offset = 0;
  im.strides = contiguous_strides(im.shape);
}

// ---------------------------------------------------------------------------
// creation

static void check_shape(const Shape& shape, const char* what) {
  for (int64_t s : shape)
    if (s < 0) fail("[", what, "] negative dimension in shape ", shape_str(shape));
}

Tensor make_tensor(const Shape& shape, DType dt, Device dev) {
  auto im = std::make_shared<TensorImpl>();
  im->shape = shape;
  im->strides = contiguous_strides(shape);
  im->dtype = dt;
  im->device = dev;
  if (dev != Device::meta) {
    int64_t n = shape_numel(shape);
    im->storage = backend(dev).allocate(dtype_nbytes(dt, n));
  }
  return Tensor(im);
}

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  if (is_quantized(base.dtype())) {
    // A view of block storage must keep whole rows of blocks contiguous: reshapes and row
    // slices, not transposes or column slices.
    const int64_t blk = dtype_block_elems(base.dtype());
    const bool whole_blocks = shape.empty() ? false : shape.back() % blk == 0 && offset % blk == 0;
    if (!whole_blocks || strides != contiguous_strides(shape))
      fail_shape("[view] a view of the ", dtype_name(base.dtype()), " tensor ", base.desc(), " as ", shape_str(shape),
                 " with strides ", shape_str(strides),
                 " would split its blocks: quantized tensors allow contiguous views of whole rows only; "
                 "dequantize first (.to(float32))");
  }
  auto im = std::make_shared<TensorImpl>();
  im->shape = shape;
  im->strides = strides;
  im->offset = offset;
  im->dtype = base.dtype();
  im->device = base.device();
  im->storage = base.impl().storage;
  return Tensor(im);
}

Tensor empty(const Shape& shape, DType dt, Device dev) {
  check_shape(shape, "empty");
  return make_tensor(shape, dt, dev);
}

Tensor full(const Shape& shape, double value, DType dt, Device dev) {
  check_shape(shape, "full");
  Tensor t = make_tensor(shape, dt, dev);
  t.fill_(value);
  return t;
}
Tensor zeros(const Shape& shape, DType dt, Device dev) { return full(shape, 0.0, dt, dev); }
Tensor ones(const Shape& shape, DType dt, Device dev) { return full(shape, 1.0, dt, dev); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype(), t.device()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }
Tensor scalar_tensor(double value, DType dt, Device dev) { return full({}, value, dt, dev); }

Tensor arange(double start, double end, double step, DType dt, Device dev) {
  if (step == 0) fail("[arange] step must be non-zero");
  double n = std::ceil((end - start) / step);
  int64_t count = n > 0 ? int64_t(n) : 0;
  Tensor h = make_tensor({count}, dt, Device::cpu);
  char* p = static_cast<char*>(h.raw_data());
  for (int64_t i = 0; i < count; ++i)
    store_from_double(p + i * int64_t(dtype_size(dt)), dt, start + double(i) * step);
  return dev == Device::cpu ? h : h.to(dev);
}

template <class V>
static Tensor from_host(const std::vector<V>& v, const Shape& shape, DType dt) {
  check_shape(shape, "from_vector");
  if (int64_t(v.size()) != shape_numel(shape))
    fail("[from_vector] ", v.size(), " values for shape ", shape_str(shape), " (needs ",
         shape_numel(shape), ")");
  Tensor t = make_tensor(shape, dt, Device::cpu);
  char* p = static_cast<char*>(t.raw_data());
  size_t es = dtype_size(dt);
  if constexpr (std::is_same_v<V, int64_t>) {
    if (dt == DType::int64) {  // exact: no detour through double (|v| > 2^53)
      if (!v.empty()) std::memcpy(p, v.data(), v.size() * sizeof(int64_t));
      return t;
    }
  }
  for (size_t i = 0; i < v.size(); ++i) store_from_double(p + i * es, dt, double(v[i]));
  return t;
}
Tensor from_vector(const std::vector<float>& v, const Shape& s, DType dt) { return from_host(v, s, dt); }
Tensor from_vector(const std::vector<double>& v, const Shape& s, DType dt) { return from_host(v, s, dt); }
Tensor from_vector(const std::vector<int64_t>& v, const Shape& s, DType dt) { return from_host(v, s, dt); }

Tensor from_blob(void* data, const Shape& shape, DType dt, std::shared_ptr<void> owner, Device dev) {
  check_shape(shape, "from_blob");
  auto st = std::make_shared<Storage>();
  st->data = data;
  st->nbytes = dtype_nbytes(dt, shape_numel(shape));
  st->device = dev;
  st->owner = std::move(owner);
  auto im = std::make_shared<TensorImpl>();
  im->shape = shape;
  im->strides = contiguous_strides(shape);
  im->dtype = dt;
  im->device = dev;
  im->storage = st;
  return Tensor(im);
}

Tensor rand(const Shape& shape, Generator& gen, DType dt, Device dev) {
  return uniform(shape, 0.0, 1.0, gen, dt, dev);
}
Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dt, Device dev) {
  Tensor t = empty(shape, dt, dev);
  t.uniform_(lo, hi, gen);
  return t;
}
Tensor randn(const Shape& shape, Generator& gen, DType dt, Device dev) {
  Tensor t = empty(shape, dt, dev);
  t.normal_(0.0, 1.0, gen);
  return t;
}

}  // namespace peft
