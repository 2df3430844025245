// CUDA kernels of the transformer blocks, with the CPU's formulas (cpu_transformer.cpp):
// layer_norm / rms_norm as one block per row with float64 statistics and a
// thread-per-column pass for dweight / dbias; rotary embeddings through any strides;
// scaled_dot_product_attention as one warp per query row with an online softmax over the
// visible keys (no Tq x Tk scores in memory), its backward recomputing the probabilities
// from the saved log-sum-exp (FlashAttention-2's dS = P∘(dP - Di)) with dk / dv summed by
// atomics. Straightforward rather than tiled: correct first, fast later.
#include <cmath>

#include "runtime/cuda/cuda_common.cuh"
#include "runtime/cuda/cuda_transformer.h"

namespace peft::cuda {

namespace {

// Rounds v to the dtype rms_norm was asked to round to, and back (mode as round_mode, runtime/dtype_switch.h).
template <class T>
__device__ inline T round_as(T v, int mode) {
  switch (mode) {
    case 1: return T(float(v));
    case 2: return T(__bfloat162float(float_to_bf16_bits(float(v))));
    case 3: return T(__half2float(__float2half_rn(float(v))));
    default: return v;
  }
}

template <class T>
const T* opt_ptr(const Tensor& t) {
  return t.defined() ? dptr<T>(t) : nullptr;
}
template <class T>
T* opt_mut(const Tensor& t) {
  return t.defined() ? dptr<T>(t) : nullptr;
}

unsigned row_grid(int64_t rows) { return unsigned(std::min<int64_t>(rows, 65535)); }

// ---------------------------------------------------------------------------
// layer_norm

template <class T>
__global__ void layer_norm_kernel(const T* x, const T* w, const T* b, double eps, T* y, T* mean, T* rstd,
                                  int64_t rows, int64_t N) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * N;
    T* yr = y + r * N;
    double s = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) s += double(xr[j]);
    const double mu = block_sum<double>(s) / double(N);
    double v = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const double d = double(xr[j]) - mu;
      v += d * d;
    }
    const double rs = 1.0 / sqrt(block_sum<double>(v) / double(N) + eps);
    if (threadIdx.x == 0) mean[r] = T(mu), rstd[r] = T(rs);
    const T m = T(mu), rr = T(rs);
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      T o = (xr[j] - m) * rr;
      if (w) o = o * w[j];
      if (b) o = o + b[j];
      yr[j] = o;
    }
  }
}

template <class T>
__global__ void layer_norm_dx_kernel(const T* g, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                                     int64_t rows, int64_t N) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* gr = g + r * N;
    const T* xr = x + r * N;
    const T m = mean[r], rs = rstd[r];
    double a = 0, c = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const double gw = double(gr[j]) * (w ? double(w[j]) : 1.0);
      a += gw;
      c += gw * double((xr[j] - m) * rs);
    }
    a = block_sum<double>(a);
    c = block_sum<double>(c);
    const T ma = T(a / double(N)), mc = T(c / double(N));
    T* d = dx + r * N;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const T gw = w ? gr[j] * w[j] : gr[j];
      d[j] = rs * (gw - ma - (xr[j] - m) * rs * mc);
    }
  }
}

// dweight[j] = Σ_rows g·x̂, dbias[j] = Σ_rows g: a thread per column, float64 sums.
template <class T>
__global__ void layer_norm_dwb_kernel(const T* g, const T* x, const T* mean, const T* rstd, T* dw, T* db,
                                      int64_t rows, int64_t N) {
  PEFT_GRID_LOOP(j, N) {
    double sw = 0, sb = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const T gv = g[r * N + j];
      if (dw) sw += double(gv) * double((x[r * N + j] - mean[r]) * rstd[r]);
      sb += double(gv);
    }
    if (dw) dw[j] = T(sw);
    if (db) db[j] = T(sb);
  }
}

// ---------------------------------------------------------------------------
// rms_norm

template <class T>
__global__ void rms_norm_kernel(const T* x, const T* w, double eps, int mode, bool ggml_rstd, T* y, T* rstd,
                                int64_t rows, int64_t N) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * N;
    T* yr = y + r * N;
    double s = 0;
    const bool ggml = ggml_rstd && sizeof(T) == 4;  // llama.cpp's float32 formula (CPU twin: cpu_norm_rotary.cpp)
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) s += ggml ? double(float(xr[j] * xr[j])) : double(xr[j]) * double(xr[j]);
    const double total = block_sum<double>(s);
    const T rs = ggml ? T(1.0f / sqrtf(float(total / double(N)) + float(eps))) : T(1.0 / sqrt(total / double(N) + eps));
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const T o = round_as<T>(xr[j] * rs, mode);
      yr[j] = w ? o * w[j] : o;
    }
  }
}

template <class T>
__global__ void rms_norm_dx_kernel(const T* g, const T* x, const T* w, const T* rstd, T* dx, int64_t rows, int64_t N) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* gr = g + r * N;
    const T* xr = x + r * N;
    const T rs = rstd[r];
    double c = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x)
      c += double(gr[j]) * (w ? double(w[j]) : 1.0) * double(xr[j] * rs);
    const T mc = T(block_sum<double>(c) / double(N));
    T* d = dx + r * N;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const T gw = w ? gr[j] * w[j] : gr[j];
      d[j] = rs * (gw - xr[j] * rs * mc);
    }
  }
}

template <class T>
__global__ void rms_norm_dw_kernel(const T* g, const T* x, const T* rstd, int mode, T* dw, int64_t rows, int64_t N) {
  PEFT_GRID_LOOP(j, N) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r) s += double(g[r * N + j]) * double(round_as<T>(x[r * N + j] * rstd[r], mode));
    dw[j] = T(s);
  }
}

// ---------------------------------------------------------------------------
// rotary embedding: a thread per (row, i < D/2)

struct RopeArgs {
  int64_t B, H, T, D, half;
  int64_t xs[4], cs[3], ss[3];
};

template <class T>
__global__ void rotary_kernel(RopeArgs a, const T* x, const T* cs, const T* sn, bool transpose, T* out) {
  PEFT_GRID_LOOP(e, a.B * a.H * a.T * a.half) {
    const int64_t i = e % a.half, r = e / a.half;
    const int64_t t = r % a.T, h = (r / a.T) % a.H, b = r / (a.T * a.H);
    const T* xr = x + b * a.xs[0] + h * a.xs[1] + t * a.xs[2];
    const T* c = cs + b * a.cs[0] + t * a.cs[1];
    const T* s = sn + b * a.ss[0] + t * a.ss[1];
    const T x1 = xr[i * a.xs[3]], x2 = xr[(a.half + i) * a.xs[3]];
    const T c1 = c[i * a.cs[2]], c2 = c[(a.half + i) * a.cs[2]];
    const T s1 = s[i * a.ss[2]], s2 = s[(a.half + i) * a.ss[2]];
    T* o = out + r * a.D;
    if (!transpose) {
      o[i] = x1 * c1 - x2 * s1;
      o[a.half + i] = x2 * c2 + x1 * s2;
    } else {
      o[i] = x1 * c1 + x2 * s2;
      o[a.half + i] = x2 * c2 - x1 * s1;
    }
  }
}

// ---------------------------------------------------------------------------
// attention: a warp per query row; lane l holds elements d = l + 32·j of the head dim.

constexpr int kPerLane = 8;  // head dims up to 256
constexpr int kWarpsPerBlock = 4;

template <class T>
struct AttnArgs {
  int64_t B, Hq, Hkv, Tq, Tk, D, g, off;
  const T *q, *k, *v;
  int64_t qs[4], ks[4], vs[4], gs[4];
  const bool* mask;
  bool causal;
  T scale;
  T *out, *lse;
  const T *o, *dout;
  T *dq, *dk, *dv;
};

template <class T>
__device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T>
__device__ inline T exp_t(T x) {
  return exp(x);
}

template <class T>
__global__ void attn_fwd_kernel(AttnArgs<T> a) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = a.B * a.Hq * a.Tq;
  for (int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; row < rows;
       row += int64_t(gridDim.x) * kWarpsPerBlock) {
    const int64_t t = row % a.Tq, h = (row / a.Tq) % a.Hq, b = row / (a.Tq * a.Hq), kvh = h / a.g;
    T q[kPerLane], acc[kPerLane];
    const T* qr = a.q + b * a.qs[0] + h * a.qs[1] + t * a.qs[2];
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t d = lane + 32 * j;
      q[j] = d < a.D ? qr[d * a.qs[3]] : T(0);
      acc[j] = 0;
    }
    const int64_t visible = a.causal ? min(a.Tk, a.off + t + 1) : a.Tk;
    const T* kb = a.k + b * a.ks[0] + kvh * a.ks[1];
    const T* vb = a.v + b * a.vs[0] + kvh * a.vs[1];
    T m = -INFINITY, l = 0;
    for (int64_t key = 0; key < visible; ++key) {
      if (a.mask && !a.mask[b * a.Tk + key]) continue;
      const T* kr = kb + key * a.ks[2];
      T s = 0;
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t d = lane + 32 * j;
        if (d < a.D) s += q[j] * kr[d * a.ks[3]];
      }
      s = warp_sum(s) * a.scale;
      const T mn = s > m ? s : m;
      const T corr = exp_t(m - mn), p = exp_t(s - mn);
      l = l * corr + p;
      const T* vr = vb + key * a.vs[2];
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t d = lane + 32 * j;
        if (d < a.D) acc[j] = acc[j] * corr + p * vr[d * a.vs[3]];
      }
      m = mn;
    }
    T* orow = a.out + row * a.D;
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t d = lane + 32 * j;
      if (d < a.D) orow[d] = l > 0 ? acc[j] / l : T(0);
    }
    if (lane == 0) a.lse[row] = l > 0 ? m + log(l) : T(-INFINITY);
  }
}

template <class T>
__global__ void attn_bwd_kernel(AttnArgs<T> a) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = a.B * a.Hq * a.Tq;
  for (int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; row < rows;
       row += int64_t(gridDim.x) * kWarpsPerBlock) {
    const int64_t t = row % a.Tq, h = (row / a.Tq) % a.Hq, b = row / (a.Tq * a.Hq), kvh = h / a.g;
    T q[kPerLane], dout[kPerLane], dq[kPerLane];
    const T* qr = a.q + b * a.qs[0] + h * a.qs[1] + t * a.qs[2];
    const T* gr = a.dout + b * a.gs[0] + h * a.gs[1] + t * a.gs[2];
    const T* orow = a.o + row * a.D;
    T di = 0;
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t d = lane + 32 * j;
      q[j] = d < a.D ? qr[d * a.qs[3]] : T(0);
      dout[j] = d < a.D ? gr[d * a.gs[3]] : T(0);
      dq[j] = 0;
      if (d < a.D) di += dout[j] * orow[d];
    }
    di = warp_sum(di);
    const T lse = a.lse[row];
    const int64_t visible = (lse == T(-INFINITY)) ? 0 : (a.causal ? min(a.Tk, a.off + t + 1) : a.Tk);
    const T* kb = a.k + b * a.ks[0] + kvh * a.ks[1];
    const T* vb = a.v + b * a.vs[0] + kvh * a.vs[1];
    T* dkb = a.dk + (b * a.Hkv + kvh) * a.Tk * a.D;
    T* dvb = a.dv + (b * a.Hkv + kvh) * a.Tk * a.D;
    for (int64_t key = 0; key < visible; ++key) {
      if (a.mask && !a.mask[b * a.Tk + key]) continue;
      const T* kr = kb + key * a.ks[2];
      const T* vr = vb + key * a.vs[2];
      T s = 0, dp = 0;
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t d = lane + 32 * j;
        if (d < a.D) {
          s += q[j] * kr[d * a.ks[3]];
          dp += dout[j] * vr[d * a.vs[3]];
        }
      }
      s = warp_sum(s) * a.scale;
      dp = warp_sum(dp);
      const T p = exp_t(s - lse), ds = p * (dp - di);
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t d = lane + 32 * j;
        if (d < a.D) {
          dq[j] += ds * kr[d * a.ks[3]];
          atomicAdd(dkb + key * a.D + d, a.scale * ds * q[j]);
          atomicAdd(dvb + key * a.D + d, p * dout[j]);
        }
      }
    }
    T* dqr = a.dq + row * a.D;
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t d = lane + 32 * j;
      if (d < a.D) dqr[d] = a.scale * dq[j];
    }
  }
}

template <class T>
AttnArgs<T> attn_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                      double scale, const char* op) {
  AttnArgs<T> a{};
  a.B = q.size(0), a.Hq = q.size(1), a.Tq = q.size(2), a.D = q.size(3);
  a.Hkv = k.size(1), a.Tk = k.size(2);
  if (a.D > 32 * kPerLane)
    fail("[", op, "] the CUDA kernel takes head dims up to ", 32 * kPerLane, ", got ", q.desc());
  a.g = a.Hkv > 0 ? a.Hq / a.Hkv : 1;
  a.off = a.Tk - a.Tq;
  a.q = dptr<T>(q), a.k = dptr<T>(k), a.v = dptr<T>(v);
  for (int d = 0; d < 4; ++d) a.qs[d] = q.stride(d), a.ks[d] = k.stride(d), a.vs[d] = v.stride(d);
  a.mask = mask.defined() ? dptr<bool>(mask) : nullptr;
  a.causal = causal;
  a.scale = T(scale);
  return a;
}

unsigned attn_grid(int64_t rows) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1 << 20)));
}

}  // namespace

void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& out, Tensor& mean,
                Tensor& rstd) {
  const int64_t rows = x.size(0), N = x.size(1);
  if (rows == 0) return;
  dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    layer_norm_kernel<T><<<row_grid(rows), kThreads>>>(dptr<T>(x), opt_ptr<T>(weight), opt_ptr<T>(bias), eps,
                                                        dptr<T>(out), dptr<T>(mean), dptr<T>(rstd), rows, N);
  });
  check_launch("layer_norm");
}

void layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& mean,
                         const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) {
  const int64_t rows = x.size(0), N = x.size(1);
  dispatch_float(x.dtype(), "layer_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    if (dx.defined() && rows > 0)
      layer_norm_dx_kernel<T><<<row_grid(rows), kThreads>>>(dptr<T>(grad), dptr<T>(x), opt_ptr<T>(weight),
                                                             dptr<T>(mean), dptr<T>(rstd), dptr<T>(dx), rows, N);
    if ((dweight.defined() || dbias.defined()) && N > 0)
      layer_norm_dwb_kernel<T><<<blocks_for(N), kThreads>>>(dptr<T>(grad), dptr<T>(x), dptr<T>(mean), dptr<T>(rstd),
                                                             opt_mut<T>(dweight), opt_mut<T>(dbias), rows, N);
  });
  check_launch("layer_norm_backward");
}

void rms_norm(const Tensor& x, const Tensor& weight, double eps, DType round_to, bool ggml_rstd, Tensor& out, Tensor& rstd) {
  const int64_t rows = x.size(0), N = x.size(1);
  if (rows == 0) return;
  dispatch_float(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    rms_norm_kernel<T><<<row_grid(rows), kThreads>>>(dptr<T>(x), opt_ptr<T>(weight), eps, round_mode<T>(round_to),
                                                      ggml_rstd, dptr<T>(out), dptr<T>(rstd), rows, N);
  });
  check_launch("rms_norm");
}

void rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& rstd, DType round_to,
                       Tensor& dx, Tensor& dweight) {
  const int64_t rows = x.size(0), N = x.size(1);
  dispatch_float(x.dtype(), "rms_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    if (dx.defined() && rows > 0)
      rms_norm_dx_kernel<T><<<row_grid(rows), kThreads>>>(dptr<T>(grad), dptr<T>(x), opt_ptr<T>(weight),
                                                           dptr<T>(rstd), dptr<T>(dx), rows, N);
    if (dweight.defined() && N > 0)
      rms_norm_dw_kernel<T><<<blocks_for(N), kThreads>>>(dptr<T>(grad), dptr<T>(x), dptr<T>(rstd),
                                                          round_mode<T>(round_to), dptr<T>(dweight), rows, N);
  });
  check_launch("rms_norm_backward");
}

void rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin, bool transpose, Tensor& out) {
  RopeArgs a{};
  a.B = x.size(0), a.H = x.size(1), a.T = x.size(2), a.D = x.size(3), a.half = a.D / 2;
  for (int d = 0; d < 4; ++d) a.xs[d] = x.stride(d);
  for (int d = 0; d < 3; ++d) a.cs[d] = cos.stride(d), a.ss[d] = sin.stride(d);
  const int64_t total = a.B * a.H * a.T * a.half;
  if (total == 0) return;
  dispatch_float(x.dtype(), "rotary_embedding", [&](auto tag) {
    using T = decltype(tag);
    rotary_kernel<T><<<blocks_for(total), kThreads>>>(a, dptr<T>(x), dptr<T>(cos), dptr<T>(sin), transpose,
                                                       dptr<T>(out));
  });
  check_launch("rotary_embedding");
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal, double scale,
               Tensor& out, Tensor& lse) {
  dispatch_float(q.dtype(), "scaled_dot_product_attention", [&](auto tag) {
    using T = decltype(tag);
    AttnArgs<T> a = attn_args<T>(q, k, v, mask, causal, scale, "scaled_dot_product_attention");
    a.out = dptr<T>(out);
    a.lse = dptr<T>(lse);
    const int64_t rows = a.B * a.Hq * a.Tq;
    if (rows == 0) return;
    attn_fwd_kernel<T><<<attn_grid(rows), 32 * kWarpsPerBlock>>>(a);
  });
  check_launch("scaled_dot_product_attention");
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& grad, Tensor& dq, Tensor& dk,
                        Tensor& dv) {
  const char* op = "scaled_dot_product_attention_backward";
  dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    AttnArgs<T> a = attn_args<T>(q, k, v, mask, causal, scale, op);
    a.o = dptr<T>(out);
    a.lse = dptr<T>(lse);
    a.dout = dptr<T>(grad);
    for (int d = 0; d < 4; ++d) a.gs[d] = grad.stride(d);
    a.dq = dptr<T>(dq), a.dk = dptr<T>(dk), a.dv = dptr<T>(dv);
    if (dk.numel() > 0) check(cudaMemsetAsync(a.dk, 0, dk.nbytes()), op);
    if (dv.numel() > 0) check(cudaMemsetAsync(a.dv, 0, dv.nbytes()), op);
    const int64_t rows = a.B * a.Hq * a.Tq;
    if (rows == 0) return;
    attn_bwd_kernel<T><<<attn_grid(rows), 32 * kWarpsPerBlock>>>(a);
  });
  check_launch(op);
}

}  // namespace peft::cuda
