// CUDA kernels of the row-wise ops: dist, oxy_angle, exp_map0, log_map0, half_aperture, and
// the fused entailment loss rows.
//
// One warp per row, 8 rows per 256-thread block: the lanes stride over D gathering the row's
// scalars (|x|^2, |y|^2, x.y, |x-y|^2, (x-y).(x+y), grad.v) in fp32 (fp64 for fp64 inputs),
// a butterfly warp reduction gives every lane the sums, hk_math.h (the same functions the CPU
// kernels run) turns them into the value or the backward coefficients, and the maps and the
// backward sweep the row again to write it. The curvature gradient is written per row and
// summed by at::sum (deterministic, no atomics).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include "common.cuh"
#include "kernels.h"

namespace hk {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 8;
constexpr int kThreads = 32 * kRowsPerBlock;

inline dim3 row_grid(int64_t N) { return dim3(static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock)); }

__device__ __forceinline__ int64_t warp_row() {
  return static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
}

// ---------------------------------------------------------------------------- dist
// dist and oxy_angle: same row scalars (a, b, e, f) and gradient form.
template <typename S, bool OXY>
__global__ void dist_kernel(const S* __restrict__ x, const S* __restrict__ y, const S* __restrict__ grad,
                            const acc_t<S>* __restrict__ curv, S* __restrict__ out, S* __restrict__ dx,
                            S* __restrict__ dy, acc_t<S>* __restrict__ dcs, int64_t N, int64_t D) {
  using T = acc_t<S>;
  const int64_t row = warp_row();
  if (row >= N) return;  // uniform per warp
  const int lane = threadIdx.x & 31;
  const S* xr = x + row * D;
  const S* yr = y + row * D;
  T a = 0, b = 0, e = 0, f = 0;
  for (int64_t k = lane; k < D; k += 32) {
    const T xv = ld(xr + k), yv = ld(yr + k), dv = xv - yv;
    a += xv * xv;
    b += yv * yv;
    e += dv * dv;
    f += dv * (xv + yv);
  }
  a = warp_sum(a);
  b = warp_sum(b);
  e = warp_sum(e);
  f = warp_sum(f);
  const T c = *curv;
  if (grad == nullptr) {
    if (lane == 0) out[row] = static_cast<S>(OXY ? hk::oxy_angle_fwd(a, b, e, f, c) : hk::dist_fwd(a, b, e, f, c));
    return;
  }
  T cdiff, cx, cy, dc;
  if (OXY) {
    hk::oxy_angle_bwd(ld(grad + row), a, b, e, f, c, cdiff, cx, cy, dc);
  } else {
    hk::dist_bwd(ld(grad + row), a, b, e, f, c, cdiff, cx, cy, dc);
  }
  if (lane == 0) dcs[row] = dc;
  for (int64_t k = lane; k < D; k += 32) {
    const T xv = ld(xr + k), yv = ld(yr + k), dv = xv - yv;
    dx[row * D + k] = static_cast<S>(cdiff * dv + cx * xv);
    dy[row * D + k] = static_cast<S>(cy * yv - cdiff * dv);
  }
}

// ---------------------------------------------------------------------------- maps at 0
template <typename S, bool LOG>
__global__ void map_kernel(const S* __restrict__ v, const S* __restrict__ grad, const acc_t<S>* __restrict__ curv,
                           S* __restrict__ out, acc_t<S>* __restrict__ dcs, int64_t N, int64_t D) {
  using T = acc_t<S>;
  const int64_t row = warp_row();
  if (row >= N) return;
  const int lane = threadIdx.x & 31;
  const S* vr = v + row * D;
  const S* gr = grad == nullptr ? nullptr : grad + row * D;
  T a = 0, gv = 0;
  for (int64_t k = lane; k < D; k += 32) {
    const T t = ld(vr + k);
    a += t * t;
    if (gr != nullptr) gv += ld(gr + k) * t;
  }
  a = warp_sum(a);
  const T c = *curv;
  if (gr == nullptr) {
    const T s = hk::map_scale(LOG, a, c);
    for (int64_t k = lane; k < D; k += 32) out[row * D + k] = static_cast<S>(s * ld(vr + k));
    return;
  }
  gv = warp_sum(gv);
  T cg, cv, dc;
  hk::map_bwd(LOG, a, gv, c, cg, cv, dc);
  if (lane == 0) dcs[row] = dc;
  for (int64_t k = lane; k < D; k += 32) out[row * D + k] = static_cast<S>(cg * ld(gr + k) + cv * ld(vr + k));
}

// ---------------------------------------------------------------------------- half_aperture
template <typename S>
__global__ void half_aperture_kernel(const S* __restrict__ x, const S* __restrict__ grad,
                                     const acc_t<S>* __restrict__ curv, acc_t<S> K, S* __restrict__ out,
                                     acc_t<S>* __restrict__ dcs, int64_t N, int64_t D) {
  using T = acc_t<S>;
  const int64_t row = warp_row();
  if (row >= N) return;
  const int lane = threadIdx.x & 31;
  const S* xr = x + row * D;
  T a = 0;
  for (int64_t k = lane; k < D; k += 32) {
    const T t = ld(xr + k);
    a += t * t;
  }
  a = warp_sum(a);
  const T c = *curv;
  if (grad == nullptr) {
    if (lane == 0) out[row] = static_cast<S>(hk::half_aperture_fwd(a, c, K));
    return;
  }
  T cx, dc;
  hk::half_aperture_bwd(ld(grad + row), a, c, K, cx, dc);
  if (lane == 0) dcs[row] = dc;
  for (int64_t k = lane; k < D; k += 32) out[row * D + k] = static_cast<S>(cx * ld(xr + k));
}

// ---------------------------------------------------------------------------- entailment
// Fused entailment / calibration rows (see csrc/cpu/rowwise.cpp): one gather of (a, b, e, f),
// the loss, and with need_grad (gx != nullptr) the unit-upstream gradient rows, all in the
// compute dtype T.
template <typename S>
__global__ void entailment_kernel(const S* __restrict__ x, const S* __restrict__ y, const acc_t<S>* __restrict__ curv,
                                  acc_t<S> K, acc_t<S> sg, acc_t<S> mg, acc_t<S>* __restrict__ loss,
                                  acc_t<S>* __restrict__ gx, acc_t<S>* __restrict__ gy, acc_t<S>* __restrict__ gc,
                                  int64_t N, int64_t D) {
  using T = acc_t<S>;
  const int64_t row = warp_row();
  if (row >= N) return;
  const int lane = threadIdx.x & 31;
  const S* xr = x + row * D;
  const S* yr = y + row * D;
  T a = 0, b = 0, e = 0, f = 0;
  for (int64_t k = lane; k < D; k += 32) {
    const T xv = ld(xr + k), yv = ld(yr + k), dv = xv - yv;
    a += xv * xv;
    b += yv * yv;
    e += dv * dv;
    f += dv * (xv + yv);
  }
  a = warp_sum(a);
  b = warp_sum(b);
  e = warp_sum(e);
  f = warp_sum(f);
  const T c = *curv;
  const T val = sg * (hk::oxy_angle_fwd(a, b, e, f, c) - hk::half_aperture_fwd(a, c, K)) + mg;
  if (lane == 0) loss[row] = hk::hk_max(val, T(0));  // relu; NaN in, NaN out
  if (gx == nullptr) return;
  const T act = val > T(0) ? sg : T(0);
  T cdiff, cx, cy, dc, hx, hc;
  hk::oxy_angle_bwd(act, a, b, e, f, c, cdiff, cx, cy, dc);
  hk::half_aperture_bwd(-act, a, c, K, hx, hc);
  cx += hx;
  if (lane == 0) gc[row] = dc + hc;
  for (int64_t k = lane; k < D; k += 32) {
    const T xv = ld(xr + k), yv = ld(yr + k), dv = xv - yv;
    gx[row * D + k] = cdiff * dv + cx * xv;
    gy[row * D + k] = cy * yv - cdiff * dv;
  }
}

// ---------------------------------------------------------------------------- host side
struct Prep {
  Tensor x, y, curv;  // contiguous; curv in the compute dtype
};

Prep prep(const Tensor& x, const Tensor* y, const Tensor& curv) {
  if (y != nullptr) {
    check_pair(x, *y, /*rowwise=*/true);
  } else {
    check_matrix(x, "x");
  }
  check_curv(curv, x);
  TORCH_CHECK(x.is_cuda(), "hypkern_native: CUDA kernel called with a ", x.device(), " tensor");
  return {x.contiguous(), y != nullptr ? y->contiguous() : Tensor(),
          curv.reshape({}).to(compute_dtype(x.scalar_type())).contiguous()};
}

// Gradient w.r.t. curv: sum of the per-row contributions, in curv's dtype.
Tensor curv_grad(const Tensor& dcs, const Tensor& curv) { return at::sum(dcs).to(curv.scalar_type()); }

Tensor grad_like(const Tensor& grad, const Tensor& x) {
  return grad.scalar_type() == x.scalar_type() ? grad.contiguous() : grad.to(x.scalar_type()).contiguous();
}

template <typename Launch>
Tensor pair_fwd(const Tensor& x_in, const Tensor& y_in, const Tensor& curv_in, Launch launch) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Prep p = prep(x_in, &y_in, curv_in);
  const int64_t N = p.x.size(0), D = p.x.size(1);
  Tensor out = at::empty({N}, p.x.options());
  if (N == 0) return out;
  dispatch_all(p.x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    launch(S{}, p.x.template const_data_ptr<S>(), p.y.template const_data_ptr<S>(), (const S*)nullptr,
           p.curv.template const_data_ptr<acc_t<S>>(), out.template mutable_data_ptr<S>(), (S*)nullptr,
           (S*)nullptr, (acc_t<S>*)nullptr, N, D);
  });
  return out;
}

template <typename Launch>
Grads3 pair_bwd(const Tensor& grad_in, const Tensor& x_in, const Tensor& y_in, const Tensor& curv_in, Launch launch) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Prep p = prep(x_in, &y_in, curv_in);
  const int64_t N = p.x.size(0), D = p.x.size(1);
  check_grad(grad_in, {N}, p.x);
  const Tensor g = grad_like(grad_in, p.x);
  Tensor dx = at::empty_like(p.x), dy = at::empty_like(p.y);
  Tensor dcs = at::zeros({N}, p.curv.options());
  if (N > 0) {
    dispatch_all(p.x.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      launch(S{}, p.x.template const_data_ptr<S>(), p.y.template const_data_ptr<S>(), g.template const_data_ptr<S>(),
             p.curv.template const_data_ptr<acc_t<S>>(), (S*)nullptr, dx.template mutable_data_ptr<S>(),
             dy.template mutable_data_ptr<S>(), dcs.template mutable_data_ptr<acc_t<S>>(), N, D);
    });
  }
  return {dx, dy, curv_grad(dcs, curv_in)};
}

struct LaunchDist {
  template <typename S>
  void operator()(S, const S* x, const S* y, const S* g, const acc_t<S>* c, S* out, S* dx, S* dy, acc_t<S>* dcs,
                  int64_t N, int64_t D) const {
    dist_kernel<S, false><<<row_grid(N), kThreads, 0, stream()>>>(x, y, g, c, out, dx, dy, dcs, N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

struct LaunchOxy {
  template <typename S>
  void operator()(S, const S* x, const S* y, const S* g, const acc_t<S>* c, S* out, S* dx, S* dy, acc_t<S>* dcs,
                  int64_t N, int64_t D) const {
    dist_kernel<S, true><<<row_grid(N), kThreads, 0, stream()>>>(x, y, g, c, out, dx, dy, dcs, N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <bool LOG>
Tensor map_fwd(const Tensor& v_in, const Tensor& curv_in) {
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Prep p = prep(v_in, nullptr, curv_in);
  const int64_t N = p.x.size(0), D = p.x.size(1);
  Tensor out = at::empty_like(p.x);
  if (N == 0) return out;
  dispatch_all(p.x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    map_kernel<S, LOG><<<row_grid(N), kThreads, 0, stream()>>>(
        p.x.template const_data_ptr<S>(), nullptr, p.curv.template const_data_ptr<acc_t<S>>(),
        out.template mutable_data_ptr<S>(), nullptr, N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <bool LOG>
Grads2 map_bwd(const Tensor& grad_in, const Tensor& v_in, const Tensor& curv_in) {
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Prep p = prep(v_in, nullptr, curv_in);
  const int64_t N = p.x.size(0), D = p.x.size(1);
  check_grad(grad_in, p.x.sizes(), p.x);
  const Tensor g = grad_like(grad_in, p.x);
  Tensor dv = at::empty_like(p.x);
  Tensor dcs = at::zeros({N}, p.curv.options());
  if (N > 0) {
    dispatch_all(p.x.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      map_kernel<S, LOG><<<row_grid(N), kThreads, 0, stream()>>>(
          p.x.template const_data_ptr<S>(), g.template const_data_ptr<S>(),
          p.curv.template const_data_ptr<acc_t<S>>(), dv.template mutable_data_ptr<S>(),
          dcs.template mutable_data_ptr<acc_t<S>>(), N, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {dv, curv_grad(dcs, curv_in)};
}

}  // namespace

Tensor dist_fwd(const Tensor& x, const Tensor& y, const Tensor& curv) { return pair_fwd(x, y, curv, LaunchDist{}); }
Grads3 dist_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv) {
  return pair_bwd(grad, x, y, curv, LaunchDist{});
}
Tensor oxy_angle_fwd(const Tensor& x, const Tensor& y, const Tensor& curv) { return pair_fwd(x, y, curv, LaunchOxy{}); }
Grads3 oxy_angle_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv) {
  return pair_bwd(grad, x, y, curv, LaunchOxy{});
}
Tensor exp_map0_fwd(const Tensor& v, const Tensor& curv) { return map_fwd<false>(v, curv); }
Grads2 exp_map0_bwd(const Tensor& grad, const Tensor& v, const Tensor& curv) { return map_bwd<false>(grad, v, curv); }
Tensor log_map0_fwd(const Tensor& x, const Tensor& curv) { return map_fwd<true>(x, curv); }
Grads2 log_map0_bwd(const Tensor& grad, const Tensor& x, const Tensor& curv) { return map_bwd<true>(grad, x, curv); }

Tensor half_aperture_fwd(const Tensor& x_in, const Tensor& curv_in, double min_radius) {
  TORCH_CHECK(min_radius > 0, "hypkern_native: min_radius must be > 0");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Prep p = prep(x_in, nullptr, curv_in);
  const int64_t N = p.x.size(0), D = p.x.size(1);
  Tensor out = at::empty({N}, p.x.options());
  if (N == 0) return out;
  dispatch_all(p.x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    half_aperture_kernel<S><<<row_grid(N), kThreads, 0, stream()>>>(
        p.x.template const_data_ptr<S>(), nullptr, p.curv.template const_data_ptr<acc_t<S>>(),
        static_cast<acc_t<S>>(min_radius), out.template mutable_data_ptr<S>(), nullptr, N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Grads2 half_aperture_bwd(const Tensor& grad_in, const Tensor& x_in, const Tensor& curv_in, double min_radius) {
  TORCH_CHECK(min_radius > 0, "hypkern_native: min_radius must be > 0");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Prep p = prep(x_in, nullptr, curv_in);
  const int64_t N = p.x.size(0), D = p.x.size(1);
  check_grad(grad_in, {N}, p.x);
  const Tensor g = grad_like(grad_in, p.x);
  Tensor dx = at::empty_like(p.x);
  Tensor dcs = at::zeros({N}, p.curv.options());
  if (N > 0) {
    dispatch_all(p.x.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      half_aperture_kernel<S><<<row_grid(N), kThreads, 0, stream()>>>(
          p.x.template const_data_ptr<S>(), g.template const_data_ptr<S>(),
          p.curv.template const_data_ptr<acc_t<S>>(), static_cast<acc_t<S>>(min_radius),
          dx.template mutable_data_ptr<S>(), dcs.template mutable_data_ptr<acc_t<S>>(), N, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {dx, curv_grad(dcs, curv_in)};
}

Ent4 entailment_fwd_bwd(const Tensor& x_in, const Tensor& y_in, const Tensor& curv_in, double min_radius, double sign,
                        double margin, bool need_grad) {
  TORCH_CHECK(min_radius > 0, "hypkern_native: min_radius must be > 0");
  TORCH_CHECK(sign == 1.0 || sign == -1.0, "hypkern_native: sign must be +1 or -1, got ", sign);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Prep p = prep(x_in, &y_in, curv_in);
  const int64_t N = p.x.size(0), D = p.x.size(1);
  const auto opts = p.curv.options();  // the compute dtype on the inputs' device
  Tensor loss = at::empty({N}, opts);
  Tensor gx = at::empty({need_grad ? N : 0, D}, opts), gy = at::empty({need_grad ? N : 0, D}, opts);
  Tensor gc = at::empty({need_grad ? N : 0}, opts);
  if (N == 0) return {loss, gx, gy, gc};
  dispatch_all(p.x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    using T = acc_t<S>;
    entailment_kernel<S><<<row_grid(N), kThreads, 0, stream()>>>(
        p.x.template const_data_ptr<S>(), p.y.template const_data_ptr<S>(), p.curv.template const_data_ptr<T>(),
        static_cast<T>(min_radius), static_cast<T>(sign), static_cast<T>(margin), loss.template mutable_data_ptr<T>(),
        need_grad ? gx.template mutable_data_ptr<T>() : nullptr, need_grad ? gy.template mutable_data_ptr<T>() : nullptr,
        need_grad ? gc.template mutable_data_ptr<T>() : nullptr, N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, gx, gy, gc};
}

}  // namespace cuda
}  // namespace hk
