// Layout ops: conversions, views, concatenation, indexing.
#include <cstring>
#include <numeric>

#include "runtime/ops_common.h"

namespace peft {
namespace detail {

int64_t wrap_dim(const char* op, int64_t dim, int64_t rank) {
  int64_t r = std::max<int64_t>(rank, 1);
  if (dim < -r || dim >= r)
    fail_shape("[", op, "] dimension ", dim, " out of range for a tensor of rank ", rank,
         " (expected in [", -r, ", ", r - 1, "])");
  return dim < 0 ? dim + r : dim;
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      fail_shape("[", op, "] shapes ", shape_str(a), " and ", shape_str(b),
           " cannot be broadcast (dimension ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Device common_device(const char* op, const Tensor& a, const Tensor& b) {
  if (a.device() != b.device()) {
    // 0-d cpu tensors act as scalars on any device, as in PyTorch
    if (a.dim() == 0 && a.device() == Device::cpu) return b.device();
    if (b.dim() == 0 && b.device() == Device::cpu) return a.device();
    fail_shape("[", op, "] tensors on different devices: ", a.desc(), " and ", b.desc());
  }
  return a.device();
}

void check_defined(const char* op, const Tensor& t, const char* what) {
  if (!t.defined()) fail_shape("[", op, "] ", what, " tensor is undefined");
  if (is_quantized(t.dtype())) {
    // GGML block storage is read by the ops below; every other op refuses it here, before
    // dispatch, with the same message on every device
    static const char* const takes_blocks[] = {"linear", "matmul", "embedding", "to_dtype", "to_device", "clone",
                                               "contiguous"};
    for (const char* ok : takes_blocks)
      if (std::strcmp(op, ok) == 0) return;
    fail_shape("[", op, "] does not take the ", dtype_name(t.dtype()), " (GGML block-quantized) tensor ", t.desc(),
               ": quantized weights are read by linear, matmul and embedding; dequantize with .to(float32) first");
  }
}

Tensor expand_raw(const Tensor& t, const Shape& shape) {
  if (t.shape() == shape) return t;
  size_t n = shape.size(), r = size_t(t.dim());
  if (r > n) fail_shape("[expand] cannot expand ", t.desc(), " to ", shape_str(shape));
  Shape st(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (i < n - r) continue;
    int64_t s = t.shape()[i - (n - r)];
    if (s == shape[i])
      st[i] = t.strides()[i - (n - r)];
    else if (s != 1)
      fail_shape("[expand] cannot expand ", t.desc(), " to ", shape_str(shape), " (dimension ", i,
           ": ", s, " vs ", shape[i], ")");
  }
  return make_view(t, shape, st, t.offset());
}

// PyTorch's computeStride: strides for viewing `t` as `shape` without a copy.
static bool view_strides(const Tensor& t, const Shape& shape, Shape& out) {
  const Shape& os = t.shape();
  const Shape& ost = t.strides();
  out.assign(shape.size(), 0);
  if (t.numel() == 0 || os.empty()) {
    out = contiguous_strides(shape);
    return true;
  }
  int64_t view_d = int64_t(shape.size()) - 1;
  int64_t chunk_base_stride = ost.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t td = int64_t(os.size()) - 1; td >= 0; --td) {
    tensor_numel *= os[size_t(td)];
    if (td == 0 || (os[size_t(td - 1)] != 1 &&
                    ost[size_t(td - 1)] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[size_t(view_d)] == 1)) {
        out[size_t(view_d)] = view_numel * chunk_base_stride;
        view_numel *= shape[size_t(view_d)];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (td > 0) {
        chunk_base_stride = ost[size_t(td - 1)];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

static Shape infer_shape(const char* op, const Tensor& t, const Shape& shape) {
  Shape out = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      if (infer >= 0) fail_shape("[", op, "] only one dimension can be -1, got ", shape_str(shape));
      infer = int64_t(i);
    } else if (out[i] < 0) {
      fail_shape("[", op, "] invalid dimension ", out[i], " in shape ", shape_str(shape));
    } else {
      known *= out[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || t.numel() % known != 0)
      fail_shape("[", op, "] shape ", shape_str(shape), " is invalid for input of size ", t.numel(),
           " (", t.desc(), ")");
    out[size_t(infer)] = t.numel() / known;
  }
  if (shape_numel(out) != t.numel())
    fail_shape("[", op, "] shape ", shape_str(shape), " is invalid for input of size ", t.numel(), " (",
         t.desc(), ")");
  return out;
}

Tensor reshape_raw(const Tensor& t, const Shape& shape) {
  Shape sh = infer_shape("reshape", t, shape);
  Shape st;
  if (view_strides(t, sh, st)) return make_view(t, sh, st, t.offset());
  Tensor c = contiguous_raw(t);
  return make_view(c, sh, contiguous_strides(sh), c.offset());
}

std::vector<int64_t> reduce_dims(const char* op, const std::vector<int64_t>& dims, int64_t rank) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t d = 0; d < rank; ++d) out.push_back(d);
    return out;
  }
  for (int64_t d : dims) out.push_back(wrap_dim(op, d, rank));
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())
    fail_shape("[", op, "] dimension repeated in ", shape_str(dims));
  if (rank == 0) out.clear();
  return out;
}

Tensor unsqueeze_reduced(const Tensor& g, const std::vector<int64_t>& dims, int64_t rank) {
  Shape sh;
  size_t k = 0;
  const Shape& gs = g.shape();
  for (int64_t d = 0; d < rank; ++d) {
    if (std::binary_search(dims.begin(), dims.end(), d))
      sh.push_back(1);
    else
      sh.push_back(gs[k++]);
  }
  return g.reshape(sh);
}

}  // namespace detail

using namespace detail;

// ---------------------------------------------------------------------------
// conversions

Tensor Tensor::to(DType dt) const {
  check_defined("to_dtype", *this);
  if (dtype() == dt) return *this;
  Tensor out = convert_raw(*this, dt);
  if (autograd::needs_grad({this}) && is_floating(dt)) {
    DType src = dtype();
    autograd::record("to_dtype", {*this}, out, [src](const Tensor& g) {
      return std::vector<Tensor>{g.to(src)};
    });
  }
  return out;
}

Tensor Tensor::to(Device dev) const {
  check_defined("to_device", *this);
  if (device() == dev) return *this;
  Tensor out = make_tensor(shape(), dtype(), dev);
  if (dev != Device::meta) {
    if (is_meta())
      fail_shape("[to_device] cannot move meta tensor ", desc(), " to ", device_name(dev),
           ": it has no data; load a state dict into it or call materialize()");
    copy_across_devices(contiguous_raw(*this), out);
  }
  if (autograd::needs_grad({this})) {
    Device src = device();
    autograd::record("to_device", {*this}, out, [src](const Tensor& g) {
      return std::vector<Tensor>{g.to(src)};
    });
  }
  return out;
}

Tensor Tensor::clone() const {
  check_defined("clone", *this);
  Tensor out = make_tensor(shape(), dtype(), device());
  if (!is_meta()) backend(device()).copy(*this, out);
  if (autograd::needs_grad({this}))
    autograd::record("clone", {*this}, out, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

Tensor Tensor::contiguous() const {
  check_defined("contiguous", *this);
  if (is_contiguous()) return *this;
  return clone();
}

// ---------------------------------------------------------------------------
// views

static Tensor record_view(const char* name, const Tensor& in, Tensor out, autograd::BackwardFn fn) {
  if (autograd::needs_grad({&in})) autograd::record(name, {in}, out, std::move(fn));
  return out;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape sh = infer_shape("view", *this, shape);
  Shape st;
  if (!view_strides(*this, sh, st))
    fail_shape("[view] cannot view ", desc(), " with strides ", shape_str(strides()), " as ",
         shape_str(sh), ": the memory layout is incompatible; use reshape() (which copies)");
  Shape in = this->shape();
  return record_view("view", *this, make_view(*this, sh, st, offset()), [in](const Tensor& g) {
    return std::vector<Tensor>{g.reshape(in)};
  });
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape sh = infer_shape("reshape", *this, shape);
  Shape st;
  if (view_strides(*this, sh, st)) return view(sh);
  return contiguous().view(sh);
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  int64_t r = dim();
  if (r == 0) return reshape({1});
  start = wrap_dim("flatten", start, r);
  end = wrap_dim("flatten", end, r);
  if (start > end) fail_shape("[flatten] start dim ", start, " after end dim ", end);
  Shape sh;
  for (int64_t d = 0; d < start; ++d) sh.push_back(size(d));
  int64_t m = 1;
  for (int64_t d = start; d <= end; ++d) m *= size(d);
  sh.push_back(m);
  for (int64_t d = end + 1; d < r; ++d) sh.push_back(size(d));
  return reshape(sh);
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  int64_t r = dim();
  a = wrap_dim("transpose", a, r);
  b = wrap_dim("transpose", b, r);
  if (r == 0) return *this;
  Shape sh = shape(), st = strides();
  std::swap(sh[size_t(a)], sh[size_t(b)]);
  std::swap(st[size_t(a)], st[size_t(b)]);
  return record_view("transpose", *this, make_view(*this, sh, st, offset()),
                     [a, b](const Tensor& g) { return std::vector<Tensor>{g.transpose(a, b)}; });
}

Tensor Tensor::t() const {
  if (dim() > 2) fail_shape("[transpose] t() expects a tensor with <= 2 dims, got ", desc());
  if (dim() < 2) return *this;
  return transpose(0, 1);
}

Tensor Tensor::permute(const Shape& order) const {
  int64_t r = dim();
  if (int64_t(order.size()) != r)
    fail_shape("[permute] order ", shape_str(order), " does not match rank of ", desc());
  Shape sh(static_cast<size_t>(r)), st(static_cast<size_t>(r)), inv(static_cast<size_t>(r));
  std::vector<bool> seen(size_t(r), false);
  for (int64_t i = 0; i < r; ++i) {
    int64_t d = wrap_dim("permute", order[size_t(i)], r);
    if (seen[size_t(d)]) fail_shape("[permute] repeated dimension in ", shape_str(order));
    seen[size_t(d)] = true;
    sh[size_t(i)] = shape()[size_t(d)];
    st[size_t(i)] = strides()[size_t(d)];
    inv[size_t(d)] = i;
  }
  return record_view("permute", *this, make_view(*this, sh, st, offset()),
                     [inv](const Tensor& g) { return std::vector<Tensor>{g.permute(inv)}; });
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim("slice", d, dim());
  if (dim() == 0) fail_shape("[slice] cannot slice a 0-d tensor");
  if (step <= 0) fail_shape("[slice] step must be positive, got ", step);
  int64_t n = size(d);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  int64_t len = (end - start + step - 1) / step;
  Shape sh = shape(), st = strides();
  sh[size_t(d)] = len;
  st[size_t(d)] *= step;
  Shape in = shape();
  DType dt = dtype();
  Device dev = device();
  return record_view("slice", *this,
                     make_view(*this, sh, st, offset() + start * strides()[size_t(d)]),
                     [in, dt, dev, d, start, end, step](const Tensor& g) {
                       Tensor gi = zeros(in, g.dtype(), dev);
                       (void)dt;
                       gi.slice(d, start, end, step).copy_(g);
                       return std::vector<Tensor>{gi};
                     });
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim("narrow", d, dim());
  if (start < 0) start += size(d);
  if (start < 0 || length < 0 || start + length > size(d))
    fail_shape("[narrow] start ", start, " + length ", length, " exceeds dimension ", d, " of ", desc());
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim("select", d, dim());
  int64_t n = size(d);
  if (index < -n || index >= n)
    fail_shape("[select] index ", index, " out of range for dimension ", d, " of ", desc());
  if (index < 0) index += n;
  return narrow(d, index, 1).squeeze(d);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim("unsqueeze", d, dim() + 1);
  Shape sh = shape(), st = strides();
  int64_t s = d < dim() ? strides()[size_t(d)] * shape()[size_t(d)] : 1;
  sh.insert(sh.begin() + d, 1);
  st.insert(st.begin() + d, s);
  return record_view("unsqueeze", *this, make_view(*this, sh, st, offset()),
                     [d](const Tensor& g) { return std::vector<Tensor>{g.squeeze(d)}; });
}

Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) return *this;
  d = wrap_dim("squeeze", d, dim());
  if (size(d) != 1) return *this;
  Shape sh = shape(), st = strides();
  sh.erase(sh.begin() + d);
  st.erase(st.begin() + d);
  return record_view("squeeze", *this, make_view(*this, sh, st, offset()),
                     [d](const Tensor& g) { return std::vector<Tensor>{g.unsqueeze(d)}; });
}

Tensor Tensor::squeeze() const {
  Shape sh, st;
  for (int64_t d = 0; d < dim(); ++d)
    if (size(d) != 1) {
      sh.push_back(size(d));
      st.push_back(stride(d));
    }
  Shape in = shape();
  return record_view("squeeze", *this, make_view(*this, sh, st, offset()),
                     [in](const Tensor& g) { return std::vector<Tensor>{g.reshape(in)}; });
}

Tensor Tensor::expand(const Shape& shape) const {
  Shape sh = shape;
  size_t off = sh.size() - std::min(sh.size(), size_t(dim()));
  for (size_t i = 0; i < sh.size(); ++i)
    if (sh[i] == -1) {
      if (i < off) fail_shape("[expand] -1 not allowed for new leading dimension in ", shape_str(shape));
      sh[i] = this->shape()[i - off];
    }
  Shape in = this->shape();
  // expand_raw returns the input itself for an unchanged shape; recording on it would make the
  // input its own grad_fn (a reference cycle: LeakSanitizer in matmul's gradients).
  Tensor out = sh == in ? make_view(*this, sh, strides(), offset()) : expand_raw(*this, sh);
  return record_view("expand", *this, out,
                     [in](const Tensor& g) { return std::vector<Tensor>{sum_to(g, in)}; });
}

// ---------------------------------------------------------------------------
// concatenation and indexing

Tensor cat(const std::vector<Tensor>& ts, int64_t dim) {
  if (ts.empty()) fail_shape("[cat] expects a non-empty list of tensors");
  for (const Tensor& t : ts) check_defined("cat", t);
  const Tensor& first = ts[0];
  int64_t r = first.dim();
  if (r == 0) fail_shape("[cat] zero-dimensional tensor cannot be concatenated");
  dim = wrap_dim("cat", dim, r);
  DType dt = first.dtype();
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    if (t.dim() != r)
      fail_shape("[cat] tensor ", i, " has rank ", t.dim(), " but tensor 0 has rank ", r, " (",
           t.desc(), " vs ", first.desc(), ")");
    if (t.device() != first.device())
      fail_shape("[cat] tensor ", i, " is on ", device_name(t.device()), ", tensor 0 on ",
           device_name(first.device()));
    for (int64_t d = 0; d < r; ++d)
      if (d != dim && t.size(d) != first.size(d))
        fail_shape("[cat] sizes must match except in dimension ", dim, ": tensor ", i, " is ", t.desc(),
             ", tensor 0 is ", first.desc());
    dt = promote_types(dt, t.dtype());
    total += t.size(dim);
  }
  Shape sh = first.shape();
  sh[size_t(dim)] = total;
  Tensor out = make_tensor(sh, dt, first.device());
  std::vector<int64_t> sizes;
  int64_t off = 0;
  for (const Tensor& t : ts) {
    if (!out.is_meta()) {
      Tensor dst = out.narrow(dim, off, t.size(dim));  // out has no history yet: a raw view
      backend(out.device()).copy(t, dst);
    }
    sizes.push_back(t.size(dim));
    off += t.size(dim);
  }
  if (autograd::needs_grad(ts)) {
    autograd::record("cat", ts, out, [sizes, dim](const Tensor& g) {
      std::vector<Tensor> gs;
      int64_t o = 0;
      for (int64_t s : sizes) {
        gs.push_back(g.narrow(dim, o, s));
        o += s;
      }
      return gs;
    });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& ts, int64_t dim) {
  if (ts.empty()) fail_shape("[stack] expects a non-empty list of tensors");
  dim = wrap_dim("stack", dim, ts[0].dim() + 1);
  std::vector<Tensor> us;
  for (size_t i = 0; i < ts.size(); ++i) {
    check_defined("stack", ts[i]);
    if (ts[i].shape() != ts[0].shape())
      fail_shape("[stack] expects tensors of equal shape, got ", ts[0].desc(), " and ", ts[i].desc(),
           " (tensor ", i, ")");
    us.push_back(ts[i].unsqueeze(dim));
  }
  return cat(us, dim);
}

static Tensor check_index(const char* op, const Tensor& index) {
  check_defined(op, index, "index");
  if (index.dtype() != DType::int64) fail_shape("[", op, "] index must be int64, got ", index.desc());
  return index;
}

Tensor index_select(const Tensor& a, int64_t dim, const Tensor& index) {
  check_defined("index_select", a);
  check_index("index_select", index);
  if (index.dim() > 1) fail_shape("[index_select] index must be 1-D, got ", index.desc());
  dim = wrap_dim("index_select", dim, a.dim());
  if (a.dim() == 0) fail_shape("[index_select] input must have at least one dimension");
  if (index.device() != a.device())
    fail_shape("[index_select] index on ", device_name(index.device()), ", input ", a.desc());
  Shape sh = a.shape();
  sh[size_t(dim)] = index.numel();
  Tensor out = make_tensor(sh, a.dtype(), a.device());
  if (!out.is_meta())
    backend(a.device()).index_select(contiguous_raw(a), dim, contiguous_raw(index.reshape({-1})), out);
  if (autograd::needs_grad({&a})) {
    Shape in = a.shape();
    autograd::record("index_select", {a}, out, [in, dim, index](const Tensor& g) {
      return std::vector<Tensor>{index_add(zeros(in, g.dtype(), g.device()), dim, index, g)};
    });
  }
  return out;
}

Tensor index_add(const Tensor& a, int64_t dim, const Tensor& index, const Tensor& src) {
  check_defined("index_add", a);
  check_defined("index_add", src, "source");
  check_index("index_add", index);
  dim = wrap_dim("index_add", dim, a.dim());
  Shape expect = a.shape();
  expect[size_t(dim)] = index.numel();
  if (src.shape() != expect)
    fail_shape("[index_add] source ", src.desc(), " does not match ", shape_str(expect), " for input ",
         a.desc(), " and ", index.numel(), " indices along dim ", dim);
  DType cd = compute_dtype(a.dtype());
  Tensor out = make_tensor(a.shape(), cd, a.device());
  if (!out.is_meta()) {
    backend(a.device()).copy(a, out);
    backend(a.device()).index_add(out, dim, contiguous_raw(index.reshape({-1})),
                                  contiguous_raw(convert_raw(src, cd)));
  }
  out = convert_raw(out, a.dtype());
  if (autograd::needs_grad({&a, &src})) {
    autograd::record("index_add", {a, src}, out, [dim, index](const Tensor& g) {
      return std::vector<Tensor>{g, index_select(g, dim, index.reshape({-1}))};
    });
  }
  return out;
}

static void check_gather_shapes(const char* op, const Tensor& a, int64_t dim, const Tensor& index) {
  if (index.dim() != a.dim())
    fail_shape("[", op, "] index ", index.desc(), " must have the rank of input ", a.desc());
  for (int64_t d = 0; d < a.dim(); ++d)
    if (d != dim && index.size(d) > a.size(d))
      fail_shape("[", op, "] index ", index.desc(), " is larger than input ", a.desc(), " in dimension ",
           d, " (index.size(d) <= input.size(d) is required for every d != ", dim, ")");
}

// `t` narrowed to `index`'s sizes in every dimension but `dim` (a view, no autograd), so
// the kernels see operands whose shapes differ only along `dim`.
static Tensor narrow_to_index(const Tensor& t, int64_t dim, const Tensor& index) {
  Shape sh = t.shape();
  for (int64_t d = 0; d < t.dim(); ++d)
    if (d != dim) sh[size_t(d)] = index.size(d);
  if (sh == t.shape()) return t;
  return make_view(t, sh, t.strides(), t.offset());
}

Tensor gather(const Tensor& a, int64_t dim, const Tensor& index) {
  check_defined("gather", a);
  check_index("gather", index);
  dim = wrap_dim("gather", dim, a.dim());
  check_gather_shapes("gather", a, dim, index);
  Tensor out = make_tensor(index.shape(), a.dtype(), a.device());
  if (!out.is_meta())
    backend(a.device()).gather(contiguous_raw(narrow_to_index(a, dim, index)), dim,
                               contiguous_raw(index), out);
  if (autograd::needs_grad({&a})) {
    Shape in = a.shape();
    autograd::record("gather", {a}, out, [in, dim, index](const Tensor& g) {
      return std::vector<Tensor>{scatter_add(zeros(in, g.dtype(), g.device()), dim, index, g)};
    });
  }
  return out;
}

Tensor scatter_add(const Tensor& a, int64_t dim, const Tensor& index, const Tensor& src) {
  check_defined("scatter_add", a);
  check_index("scatter_add", index);
  dim = wrap_dim("scatter_add", dim, a.dim());
  check_gather_shapes("scatter_add", a, dim, index);
  if (src.shape() != index.shape())
    fail_shape("[scatter_add] source ", src.desc(), " must have the shape of index ", index.desc());
  DType cd = compute_dtype(a.dtype());
  Tensor out = make_tensor(a.shape(), cd, a.device());
  if (!out.is_meta()) {
    Backend& be = backend(a.device());
    be.copy(a, out);
    Tensor part = narrow_to_index(out, dim, index);
    Tensor dst = contiguous_raw(part);  // `out` itself unless narrowed
    be.scatter_add(dst, dim, contiguous_raw(index), contiguous_raw(convert_raw(src, cd)));
    if (!dst.same_storage(part)) be.copy(dst, part);
  }
  out = convert_raw(out, a.dtype());
  if (autograd::needs_grad({&a, &src})) {
    autograd::record("scatter_add", {a, src}, out, [dim, index](const Tensor& g) {
      return std::vector<Tensor>{g, gather(g, dim, index)};
    });
  }
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined("where", cond, "condition");
  check_defined("where", a);
  check_defined("where", b);
  if (cond.dtype() != DType::bool_) fail_shape("[where] condition must be bool, got ", cond.desc());
  Shape sh = broadcast_shapes("where", broadcast_shapes("where", cond.shape(), a.shape()), b.shape());
  Device dev = common_device("where", a, b);
  common_device("where", cond, a);
  DType dt = promote_types(a.dtype(), b.dtype());
  Tensor out = make_tensor(sh, dt, dev);
  if (!out.is_meta())
    backend(dev).where(expand_raw(cond, sh), expand_raw(convert_raw(a, dt), sh),
                       expand_raw(convert_raw(b, dt), sh), out);
  if (autograd::needs_grad({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    autograd::record("where", {a, b}, out, [cond, sa, sb](const Tensor& g) {
      Tensor z = zeros({}, g.dtype(), g.device());
      return std::vector<Tensor>{sum_to(where(cond, g, z), sa), sum_to(where(cond, z, g), sb)};
    });
  }
  return out;
}

Tensor masked_fill(const Tensor& a, const Tensor& mask, double value) {
  check_defined("masked_fill", a);
  check_defined("masked_fill", mask, "mask");
  if (mask.dtype() != DType::bool_) fail_shape("[masked_fill] mask must be bool, got ", mask.desc());
  Shape sh = broadcast_shapes("masked_fill", a.shape(), mask.shape());
  if (sh != a.shape())
    fail_shape("[masked_fill] mask ", mask.desc(), " must broadcast to input ", a.desc());
  return where(mask, scalar_tensor(value, a.dtype(), a.device()), a);
}

}  // namespace peft
