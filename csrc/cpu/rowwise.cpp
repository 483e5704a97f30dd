// CPU kernels of the row-wise ops: dist, oxy_angle, exp_map0, log_map0, half_aperture, and
// the fused entailment loss rows.
//
// at::parallel_for over rows; per row one pass gathers the scalars (|x|^2, |y|^2, x.y, ...)
// in the compute dtype (fp32 for fp16/bf16/fp32, fp64 for fp64), hk_math.h turns them into
// the value or the backward coefficients, and (for the maps and the backward) a second sweep
// over the same row, still in cache, writes the output. The curvature gradient is summed
// from per-row contributions in float64.
#include <algorithm>
#include <vector>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include "../hk_host.h"
#include "../hk_math.h"

namespace hk {
namespace cpu {
namespace {

// Calls f with a value of the storage type (float, double, Half, BFloat16). A plain function
// instead of AT_DISPATCH_*: the loop bodies stay outside macro arguments so that their
// `#pragma omp simd` lines are legal.
template <typename F>
void dispatch_all(at::ScalarType st, const F& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "hypkern_native: unsupported dtype ", st);
  }
}

template <typename F>
void for_rows(int64_t N, int64_t D, const F& f) {
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(i);
  });
}

double sum_f64(const std::vector<double>& v) {
  double s = 0;
  for (double t : v) s += t;
  return s;
}

// |x|^2 of one row of D values, accumulated in the compute type T.
template <typename T, typename scalar_t>
inline T row_sq_norm(const scalar_t* xr, int64_t D) {
  T a = 0;
#pragma omp simd reduction(+ : a)
  for (int64_t k = 0; k < D; ++k) {
    const T t = static_cast<T>(xr[k]);
    a += t * t;
  }
  return a;
}

// ---------------------------------------------------------------------------- dist, oxy_angle
// dist and oxy_angle share the row scalars a = |x|^2, b = |y|^2, e = |x-y|^2, f = (x-y).(x+y)
// and the gradient form dx = cdiff (x-y) + cx x, dy = -cdiff (x-y) + cy y.
template <bool OXY>
at::Tensor dist_fwd(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& curv) {
  check_pair(x_in, y_in, true);
  check_curv(curv, x_in);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = at::empty({N}, x.options());
  const double cval = curv.item<double>();
  dispatch_all(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const T c = static_cast<T>(cval);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_rows(N, D, [&](int64_t i) {
      const scalar_t* xr = xp + i * D;
      const scalar_t* yr = yp + i * D;
      T a = 0, b = 0, e = 0, f = 0;
#pragma omp simd reduction(+ : a, b, e, f)
      for (int64_t k = 0; k < D; ++k) {
        const T xv = static_cast<T>(xr[k]), yv = static_cast<T>(yr[k]);
        const T dv = xv - yv;
        a += xv * xv;
        b += yv * yv;
        e += dv * dv;
        f += dv * (xv + yv);
      }
      op[i] = static_cast<scalar_t>(OXY ? hk::oxy_angle_fwd(a, b, e, f, c) : hk::dist_fwd(a, b, e, f, c));
    });
  });
  return out;
}

template <bool OXY>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dist_bwd(const at::Tensor& grad, const at::Tensor& x_in,
                                                        const at::Tensor& y_in, const at::Tensor& curv) {
  check_pair(x_in, y_in, true);
  check_curv(curv, x_in);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  check_grad(grad, {N}, x);
  const at::Tensor g = grad.contiguous().to(at::kDouble);  // N scalars: read exactly
  at::Tensor dx = at::empty_like(x), dy = at::empty_like(y);
  std::vector<double> dcs(N);
  const double cval = curv.item<double>();
  dispatch_all(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const T c = static_cast<T>(cval);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const double* gp = g.const_data_ptr<double>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    scalar_t* dyp = dy.mutable_data_ptr<scalar_t>();
    for_rows(N, D, [&](int64_t i) {
      const scalar_t* xr = xp + i * D;
      const scalar_t* yr = yp + i * D;
      T a = 0, b = 0, e = 0, f = 0;
#pragma omp simd reduction(+ : a, b, e, f)
      for (int64_t k = 0; k < D; ++k) {
        const T xv = static_cast<T>(xr[k]), yv = static_cast<T>(yr[k]);
        const T dv = xv - yv;
        a += xv * xv;
        b += yv * yv;
        e += dv * dv;
        f += dv * (xv + yv);
      }
      T cdiff, cx, cy, dc;
      if (OXY) {
        hk::oxy_angle_bwd(static_cast<T>(gp[i]), a, b, e, f, c, cdiff, cx, cy, dc);
      } else {
        hk::dist_bwd(static_cast<T>(gp[i]), a, b, e, f, c, cdiff, cx, cy, dc);
      }
      dcs[i] = dc;
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) {
        const T xv = static_cast<T>(xr[k]), yv = static_cast<T>(yr[k]);
        const T dv = xv - yv;
        dxp[i * D + k] = static_cast<scalar_t>(cdiff * dv + cx * xv);
        dyp[i * D + k] = static_cast<scalar_t>(cy * yv - cdiff * dv);
      }
    });
  });
  return {dx, dy, at::scalar_tensor(sum_f64(dcs), curv.options())};
}

// ---------------------------------------------------------------------------- maps at 0
template <bool LOG>
at::Tensor map_fwd(const at::Tensor& v_in, const at::Tensor& curv) {
  check_matrix(v_in, LOG ? "x" : "v");
  check_curv(curv, v_in);
  const at::Tensor v = v_in.contiguous();
  const int64_t N = v.size(0), D = v.size(1);
  at::Tensor out = at::empty_like(v);
  const double cval = curv.item<double>();
  dispatch_all(v.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const T c = static_cast<T>(cval);
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_rows(N, D, [&](int64_t i) {
      const scalar_t* vr = vp + i * D;
      const T a = row_sq_norm<T>(vr, D);
      const T s = hk::map_scale(LOG, a, c);
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) op[i * D + k] = static_cast<scalar_t>(s * static_cast<T>(vr[k]));
    });
  });
  return out;
}

template <bool LOG>
std::tuple<at::Tensor, at::Tensor> map_bwd(const at::Tensor& grad, const at::Tensor& v_in,
                                           const at::Tensor& curv) {
  check_matrix(v_in, LOG ? "x" : "v");
  check_curv(curv, v_in);
  const at::Tensor v = v_in.contiguous();
  const int64_t N = v.size(0), D = v.size(1);
  check_grad(grad, v.sizes(), v);
  at::Tensor g = grad.contiguous();
  if (g.scalar_type() != v.scalar_type()) g = g.to(v.scalar_type());
  at::Tensor dv = at::empty_like(v);
  std::vector<double> dcs(N);
  const double cval = curv.item<double>();
  dispatch_all(v.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const T c = static_cast<T>(cval);
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dv.mutable_data_ptr<scalar_t>();
    for_rows(N, D, [&](int64_t i) {
      const scalar_t* vr = vp + i * D;
      const scalar_t* gr = gp + i * D;
      T a = 0, gv = 0;
#pragma omp simd reduction(+ : a, gv)
      for (int64_t k = 0; k < D; ++k) {
        const T t = static_cast<T>(vr[k]);
        a += t * t;
        gv += static_cast<T>(gr[k]) * t;
      }
      T cg, cv, dc;
      hk::map_bwd(LOG, a, gv, c, cg, cv, dc);
      dcs[i] = dc;
#pragma omp simd
      for (int64_t k = 0; k < D; ++k)
        dp[i * D + k] = static_cast<scalar_t>(cg * static_cast<T>(gr[k]) + cv * static_cast<T>(vr[k]));
    });
  });
  return {dv, at::scalar_tensor(sum_f64(dcs), curv.options())};
}

// ---------------------------------------------------------------------------- half_aperture
at::Tensor half_aperture_fwd(const at::Tensor& x_in, const at::Tensor& curv, double min_radius) {
  check_matrix(x_in, "x");
  check_curv(curv, x_in);
  TORCH_CHECK(min_radius > 0, "hypkern_native: min_radius must be > 0");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = at::empty({N}, x.options());
  const double cval = curv.item<double>();
  dispatch_all(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const T c = static_cast<T>(cval), K = static_cast<T>(min_radius);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_rows(N, D, [&](int64_t i) {
      const scalar_t* xr = xp + i * D;
      const T a = row_sq_norm<T>(xr, D);
      op[i] = static_cast<scalar_t>(hk::half_aperture_fwd(a, c, K));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> half_aperture_bwd(const at::Tensor& grad, const at::Tensor& x_in,
                                                     const at::Tensor& curv, double min_radius) {
  check_matrix(x_in, "x");
  check_curv(curv, x_in);
  TORCH_CHECK(min_radius > 0, "hypkern_native: min_radius must be > 0");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  check_grad(grad, {N}, x);
  const at::Tensor g = grad.contiguous().to(at::kDouble);
  at::Tensor dx = at::empty_like(x);
  std::vector<double> dcs(N);
  const double cval = curv.item<double>();
  dispatch_all(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const T c = static_cast<T>(cval), K = static_cast<T>(min_radius);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const double* gp = g.const_data_ptr<double>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    for_rows(N, D, [&](int64_t i) {
      const scalar_t* xr = xp + i * D;
      const T a = row_sq_norm<T>(xr, D);
      T cx, dc;
      hk::half_aperture_bwd(static_cast<T>(gp[i]), a, c, K, cx, dc);
      dcs[i] = dc;
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) dp[i * D + k] = static_cast<scalar_t>(cx * static_cast<T>(xr[k]));
    });
  });
  return {dx, at::scalar_tensor(sum_f64(dcs), curv.options())};
}

// ---------------------------------------------------------------------------- entailment
// Fused entailment (sign = +1, margin = 0) or calibration (sign = -1, margin >= 0) rows:
// loss_i = relu(sign (oxy_angle(x_i, y_i) - half_aperture(x_i)) + margin) and, when need_grad,
// its gradient for a unit upstream gradient per row, from one gather of the row scalars
// (a, b, e, f) and one write sweep. The gradient is oxy_angle_bwd with g = sign act plus
// half_aperture_bwd with g = -sign act (act = [value > 0], relu's gradient), so the clipping
// follows the reference's autograd exactly. Outputs in the compute dtype: loss (N,),
// gx (N, D), gy (N, D), gc (N,) (per-row curvature gradients; empty tensors without need_grad).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> entailment_fwd_bwd(
    const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& curv, double min_radius, double sign,
    double margin, bool need_grad) {
  check_pair(x_in, y_in, true);
  check_curv(curv, x_in);
  TORCH_CHECK(min_radius > 0, "hypkern_native: min_radius must be > 0");
  TORCH_CHECK(sign == 1.0 || sign == -1.0, "hypkern_native: sign must be +1 or -1, got ", sign);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  const auto opts = x.options().dtype(compute_dtype(x.scalar_type()));
  at::Tensor loss = at::empty({N}, opts);
  at::Tensor gx = at::empty({need_grad ? N : 0, D}, opts), gy = at::empty({need_grad ? N : 0, D}, opts);
  at::Tensor gc = at::empty({need_grad ? N : 0}, opts);
  const double cval = curv.item<double>();
  dispatch_all(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = at::opmath_type<scalar_t>;
    const T c = static_cast<T>(cval), K = static_cast<T>(min_radius);
    const T sg = static_cast<T>(sign), mg = static_cast<T>(margin);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    T* lp = loss.mutable_data_ptr<T>();
    T* gxp = need_grad ? gx.mutable_data_ptr<T>() : nullptr;
    T* gyp = need_grad ? gy.mutable_data_ptr<T>() : nullptr;
    T* gcp = need_grad ? gc.mutable_data_ptr<T>() : nullptr;
    for_rows(N, D, [&](int64_t i) {
      const scalar_t* xr = xp + i * D;
      const scalar_t* yr = yp + i * D;
      T a = 0, b = 0, e = 0, f = 0;
#pragma omp simd reduction(+ : a, b, e, f)
      for (int64_t k = 0; k < D; ++k) {
        const T xv = static_cast<T>(xr[k]), yv = static_cast<T>(yr[k]);
        const T dv = xv - yv;
        a += xv * xv;
        b += yv * yv;
        e += dv * dv;
        f += dv * (xv + yv);
      }
      const T val = sg * (hk::oxy_angle_fwd(a, b, e, f, c) - hk::half_aperture_fwd(a, c, K)) + mg;
      lp[i] = hk::hk_max(val, T(0));  // relu; NaN in, NaN out
      if (!need_grad) return;
      const T act = val > T(0) ? sg : T(0);
      T cdiff, cx, cy, dc, hx, hc;
      hk::oxy_angle_bwd(act, a, b, e, f, c, cdiff, cx, cy, dc);
      hk::half_aperture_bwd(-act, a, c, K, hx, hc);
      cx += hx;
      gcp[i] = dc + hc;
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) {
        const T xv = static_cast<T>(xr[k]), yv = static_cast<T>(yr[k]);
        const T dv = xv - yv;
        gxp[i * D + k] = cdiff * dv + cx * xv;
        gyp[i * D + k] = cy * yv - cdiff * dv;
      }
    });
  });
  return {loss, gx, gy, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(hypkern_native, CPU, m) {
  m.impl("dist_fwd", &dist_fwd<false>);
  m.impl("dist_bwd", &dist_bwd<false>);
  m.impl("oxy_angle_fwd", &dist_fwd<true>);
  m.impl("oxy_angle_bwd", &dist_bwd<true>);
  m.impl("exp_map0_fwd", &map_fwd<false>);
  m.impl("exp_map0_bwd", &map_bwd<false>);
  m.impl("log_map0_fwd", &map_fwd<true>);
  m.impl("log_map0_bwd", &map_bwd<true>);
  m.impl("half_aperture_fwd", &half_aperture_fwd);
  m.impl("half_aperture_bwd", &half_aperture_bwd);
  m.impl("entailment_fwd_bwd", &entailment_fwd_bwd);
}

}  // namespace cpu
}  // namespace hk
