// hk_math.h -- the per-element math of every native Lorentz op, shared by the C++ CPU
// kernels (csrc/cpu) and the CUDA kernels (csrc/cuda).
//
// Everything here is a plain `HK_HOST_DEVICE inline` function of per-row (or per-entry)
// scalars, so the CPU tests (tests/test_native_ops.py) run exactly the code the CUDA kernels
// run; only the launch structure (indexing, reductions, tiling) of the .cu files waits for a
// GPU. The math is DESIGN.md section 2 / hypkern/lorentz/reference.py:
//
//   x_t = sqrt(1/c + |x|^2),  <x,y>_L = x.y - x_t y_t,  sc = sqrt(c).
//
// Per-row scalars used below: a = |x|^2, b = |y|^2, p = x.y (pairwise), and for dist and
// oxy_angle e = |x-y|^2, f = (x-y).(x+y). Backward functions are reverse-mode derivations
// through the same scalar graph as the forward, so clipping decisions (which branch gets a zero
// gradient) follow the reference's (oxy_angle forms z - 1 without
// cancellation, see there): torch.clamp passes the gradient where the input
// lies inside the closed interval, _safe_sqrt(q) = sqrt(max(q, tiny)) passes it where
// q >= tiny.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define HK_HOST_DEVICE __host__ __device__
#define HK_INLINE __host__ __device__ __forceinline__
#else
#define HK_HOST_DEVICE
#define HK_INLINE inline __attribute__((always_inline))
#endif

namespace hk {

// ---------------------------------------------------------------------------- constants
// Mirror hypkern/lorentz/constants.py. tests/test_native_ops.py::test_constants_agree checks
// that these values (exposed by the op hypkern_native::constants) agree with it.
constexpr double ASIN_EPS = 1e-6;                     // asin/acos args in [-1+eps, 1-eps]
constexpr double EXP_MAP_MAX = 11.090354889191955;    // asinh(2^15): cap of sqrt(c)|v| in exp_map0
constexpr double SMALL_R = 1e-3;                      // Taylor series below this r = sqrt(c)|v|
constexpr double ANGLE_DENOM_EPS = 1e-8;              // smallest denominator of oxy_angle

// Smallest normal number of the compute type (torch.finfo(dtype).tiny), used by safe_sqrt.
template <typename T> struct Lim;
template <> struct Lim<float> { HK_INLINE static float tiny() { return FLT_MIN; } };
template <> struct Lim<double> { HK_INLINE static double tiny() { return DBL_MIN; } };

// ---------------------------------------------------------------------------- libm wrappers
// The C names exist on the host (libm) and in CUDA device code alike.
HK_INLINE float hk_sqrt(float v) { return sqrtf(v); }
HK_INLINE double hk_sqrt(double v) { return sqrt(v); }
HK_INLINE float hk_asinh(float v) { return asinhf(v); }
HK_INLINE double hk_asinh(double v) { return asinh(v); }
HK_INLINE float hk_sinh(float v) { return sinhf(v); }
HK_INLINE double hk_sinh(double v) { return sinh(v); }
HK_INLINE float hk_cosh(float v) { return coshf(v); }
HK_INLINE double hk_cosh(double v) { return cosh(v); }
HK_INLINE float hk_asin(float v) { return asinf(v); }
HK_INLINE double hk_asin(double v) { return asin(v); }
HK_INLINE float hk_acos(float v) { return acosf(v); }
HK_INLINE double hk_acos(double v) { return acos(v); }

// max/min that propagate a NaN in their first argument (the value being clipped): NaN in, NaN out.
template <typename T> HK_INLINE T hk_max(T u, T v) { return u < v ? v : u; }
template <typename T> HK_INLINE T hk_min(T u, T v) { return u > v ? v : u; }

// ---------------------------------------------------------------------------- log1p, w >= 0
// log(1 + w) for w >= 0 from plain arithmetic and bit operations, so that the compiler can
// vectorise the pairwise epilogue (libm's log1p is an opaque scalar call) and the GPU runs
// the same code. Method: y = fl(1 + w) = 2^k m with m in [sqrt(1/2), sqrt(2)), so
// log(y) = k ln2 + log(m), log(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m-1)/(m+1),
// |s| <= 0.1716; the rounding of 1 + w is undone by + (w - (y - 1)) / y. Accurate to a few
// ulp; +inf and NaN pass through.
HK_INLINE float log1p_pos(float w) {
  const float y = 1.0f + w;
  uint32_t iy;
  memcpy(&iy, &y, sizeof iy);
  // Adding (bits(1) - bits(sqrt(1/2))) carries into the exponent exactly when m >= sqrt(2).
  iy += 0x3f800000u - 0x3f3504f3u;
  const int32_t k = static_cast<int32_t>(iy >> 23) - 127;
  const uint32_t im = (iy & 0x007fffffu) + 0x3f3504f3u;
  float m;
  memcpy(&m, &im, sizeof m);
  const float f = m - 1.0f;
  const float corr = (w - (y - 1.0f)) / y;
  const float s = f / (2.0f + f);
  const float t = s * s;  // t <= 0.0295: terms up to t^5/11 reach float precision
  const float poly =
      1.0f + t * (1.0f / 3 + t * (1.0f / 5 + t * (1.0f / 7 + t * (1.0f / 9 + t * (1.0f / 11)))));
  const float kf = static_cast<float>(k);
  const float r = kf * 0.693115234375f + (kf * 3.194618329871446e-05f + (corr + 2.0f * s * poly));
  return (w < INFINITY) ? r : w;
}

HK_INLINE double log1p_pos(double w) {
  const double y = 1.0 + w;
  uint64_t iy;
  memcpy(&iy, &y, sizeof iy);
  iy += 0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull;
  // k = biased exponent - 1023, converted through the 2^52 trick (no int64->double needed).
  const uint64_t kb = (iy >> 52) | 0x4330000000000000ull;
  double kf;
  memcpy(&kf, &kb, sizeof kf);
  kf -= 4503599627370496.0 + 1023.0;
  const uint64_t im = (iy & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull;
  double m;
  memcpy(&m, &im, sizeof m);
  const double f = m - 1.0;
  const double corr = (w - (y - 1.0)) / y;
  const double s = f / (2.0 + f);
  const double t = s * s;  // terms up to t^11/23 reach double precision
  double poly = 1.0 / 23;
  poly = 1.0 / 21 + t * poly;
  poly = 1.0 / 19 + t * poly;
  poly = 1.0 / 17 + t * poly;
  poly = 1.0 / 15 + t * poly;
  poly = 1.0 / 13 + t * poly;
  poly = 1.0 / 11 + t * poly;
  poly = 1.0 / 9 + t * poly;
  poly = 1.0 / 7 + t * poly;
  poly = 1.0 / 5 + t * poly;
  poly = 1.0 / 3 + t * poly;
  poly = 1.0 + t * poly;
  const double r = kf * 0.6931467056274414 + (kf * 4.7493250387997676e-07 + (corr + 2.0 * s * poly));
  return (w < INFINITY) ? r : w;
}

// acosh(1 + u) for u >= 0 as log1p(u + sqrt(u (u + 2))): exact near u = 0, where acosh(z)
// loses all precision (same function as the reference's 2 asinh(sqrt(u/2))). The root is
// taken as sqrt(u) sqrt(u + 2) so it cannot overflow.
template <typename T> HK_INLINE T acosh_1p(T u) {
  return log1p_pos(u + hk_sqrt(u) * hk_sqrt(u + T(2)));
}

// Time component x_t = sqrt(1/c + |x|^2) from a = |x|^2.
template <typename T> HK_INLINE T time_comp(T a, T c) { return hk_sqrt(T(1) / c + a); }

// The time component's excess over the origin's, x_t - 1/sqrt(c) = a / (x_t + 1/sqrt(c)),
// without the cancellation of the difference (isc = 1/sqrt(c)).
template <typename T> HK_INLINE T time_excess(T a, T xt, T isc) { return a / (xt + isc); }

// |x| from a = |x|^2 as the reference's _norm: 0 at a = 0, sqrt(max(a, tiny)) otherwise;
// its gradient passes only where a >= tiny.
template <typename T> HK_INLINE T safe_norm(T a) {
  return a == T(0) ? T(0) : hk_sqrt(hk_max(a, Lim<T>::tiny()));  // NaN: computed
}

// ---------------------------------------------------------------------------- pairwise
// Per entry (i, j) of the N x M output, from p = x_i.y_j, xt = x_t,i, yt = y_t,j.
// Backward: gp = grad * d out / d p (the matrix G' of the two matmuls: the gradient w.r.t. x_i
// is sum_j gp_ij (y_j - x_i yt_j / xt), since out depends on (p, xt, yt) only through
// p - xt yt) and dc = grad * d out / d c through xt, yt and c itself.

template <typename T> HK_INLINE T pinner_fwd(T p, T xt, T yt) { return p - xt * yt; }

// ixt = 1/xt, iyt = 1/yt, ic2h = 1/(2c^2): d(x_t)/dc = -1/(2 c^2 x_t).
template <typename T>
HK_INLINE void pinner_bwd(T g, T xt, T yt, T ixt, T iyt, T ic2h, T& gp, T& dc) {
  gp = g;
  dc = g * ic2h * (yt * ixt + xt * iyt);
}

// u = -c<x,y>_L - 1 = c (x_t y_t - 1/c - p) without subtracting numbers near 1/c: with the
// excesses ex = x_t - 1/sqrt(c), ey (time_excess), x_t y_t - 1/c = (ex + ey)/sqrt(c) + ex ey,
// so u's rounding is relative to the norms (not to 1/c) and points near the origin keep
// their distances and gradients. Clipped at 0 (rounding can still push it below).
template <typename T> HK_INLINE T pair_u(T p, T ex, T ey, T c, T isc) {
  return hk_max(c * ((ex + ey) * isc + ex * ey - p), T(0));
}

// d = acosh(1 + u)/sc.
template <typename T> HK_INLINE T pdist_fwd(T p, T ex, T ey, T c, T isc) {
  return acosh_1p(pair_u(p, ex, ey, c, isc)) * isc;
}

// d u/dc at fixed x, y: u/c - (x_t - y_t)^2 / (2 c x_t y_t), with x_t - y_t = ex - ey (the
// form of (z/c - (yt/xt + xt/yt)/(2c)) without its cancellation near the origin).
template <typename T> HK_INLINE T pair_du_dc(T u, T ex, T ey, T ixt, T iyt, T ic, T ihc) {
  const T gap = ex - ey;
  return u * ic - gap * gap * ihc * ixt * iyt;
}

// d d/du = 1/(sc sqrt(u (u+2))), zero where u/2 < tiny (the reference's safe_sqrt clip,
// which also covers u clipped at 0). d d/dc = d d/du du/dc - d/(2c).  ihc = 1/(2c).
template <typename T>
HK_INLINE void pdist_bwd(T g, T p, T ex, T ey, T ixt, T iyt, T c, T isc, T ic, T ihc, T& gp, T& dc) {
  const T u = pair_u(p, ex, ey, c, isc);
  const T root = hk_sqrt(u) * hk_sqrt(u + T(2));
  const bool pass = T(0.5) * u >= Lim<T>::tiny();
  const T h = pass ? g * isc / (pass ? root : T(1)) : T(0);
  const T d = log1p_pos(u + root) * isc;
  gp = -c * h;
  dc = h * pair_du_dc(u, ex, ey, ixt, iyt, ic, ihc) - g * d * ihc;
}

// ---------------------------------------------------------------------------- row-wise dist
// d = 2 asinh(sc w / 2)/sc, w = safe_sqrt(q), q = max(e - k^2, 0), k = f/(xt+yt) = xt - yt:
// the Lorentz norm of x - y from differences, exact for nearby points.
template <typename T> HK_INLINE T dist_fwd(T a, T b, T e, T f, T c) {
  const T sc = hk_sqrt(c);
  const T xt = time_comp(a, c), yt = time_comp(b, c);
  const T k = f / (xt + yt);
  const T q = hk_max(e - k * k, T(0));
  const T w = q == T(0) ? T(0) : hk_sqrt(hk_max(q, Lim<T>::tiny()));  // exactly 0 at x = y; NaN: computed
  return T(2) * hk_asinh(T(0.5) * sc * w) / sc;
}

// Gradient as dx = cdiff (x - y) + cx x, dy = -cdiff (x - y) + cy y (the difference is kept
// explicit: for nearby points cdiff ~ 1/|x-y| is huge and a combination of x and y alone
// would cancel).
template <typename T>
HK_INLINE void dist_bwd(T g, T a, T b, T e, T f, T c, T& cdiff, T& cx, T& cy, T& dc) {
  const T sc = hk_sqrt(c);
  const T xt = time_comp(a, c), yt = time_comp(b, c);
  const T S = xt + yt;
  const T k = f / S;
  const T qraw = e - k * k;
  const T q = hk_max(qraw, T(0));
  const T w = hk_sqrt(hk_max(q, Lim<T>::tiny()));
  const T d = T(2) * hk_asinh(T(0.5) * sc * w) / sc;
  const T R = hk_sqrt(T(1) + T(0.25) * c * w * w);
  const T dw = g / R;                          // d d / d w
  T dcv = g * (w / (T(2) * c * R) - d / (T(2) * c));  // c inside asinh(sc w / 2)/sc
  const T dq = qraw >= Lim<T>::tiny() ? dw / (T(2) * w) : T(0);
  const T de = dq;
  const T dk = -T(2) * k * dq;
  const T df = dk / S;
  const T dS = -dk * k / S;
  const T da = dS / (T(2) * xt), db = dS / (T(2) * yt);
  dcv += -dS / (T(2) * c * c) * (T(1) / xt + T(1) / yt);
  // e = |x-y|^2, f = |x|^2 - |y|^2 (as (x-y).(x+y)), a = |x|^2, b = |y|^2.
  cdiff = T(2) * de;
  cx = T(2) * (df + da);
  cy = T(2) * (db - df);
  dc = dcv;
}

// ---------------------------------------------------------------------------- maps at 0
// exp_map0: out = S(r) v, r = sc |v|, S(r) = sinh(min(r, EXP_MAP_MAX))/r, series
// 1 + r^2/6 + r^4/120 below SMALL_R (limit 1 at v = 0).
template <typename T> HK_INLINE T sinhc(T r) {
  if (r < T(SMALL_R)) {
    const T r2 = r * r;
    return T(1) + r2 / T(6) + r2 * r2 / T(120);
  }
  return hk_sinh(hk_min(r, T(EXP_MAP_MAX))) / r;
}
// dS/dr: series r/3 + r^3/30; (cosh r - S)/r up to the cap; -S/r above it (constant sinh).
template <typename T> HK_INLINE T sinhc_grad(T r) {
  if (r < T(SMALL_R)) return r / T(3) + r * r * r / T(30);
  const T S = hk_sinh(hk_min(r, T(EXP_MAP_MAX))) / r;
  if (r <= T(EXP_MAP_MAX)) return (hk_cosh(r) - S) / r;
  return -S / r;
}
// log_map0: out = A(r) x, A(r) = asinh(r)/r, series 1 - r^2/6 + 3 r^4/40 below SMALL_R.
template <typename T> HK_INLINE T asinhc(T r) {
  if (r < T(SMALL_R)) {
    const T r2 = r * r;
    return T(1) - r2 / T(6) + T(3) * r2 * r2 / T(40);
  }
  return hk_asinh(r) / r;
}
// dA/dr: series -r/3 + 3 r^3/10; (1/sqrt(1+r^2) - A)/r.
template <typename T> HK_INLINE T asinhc_grad(T r) {
  if (r < T(SMALL_R)) return -r / T(3) + T(3) * r * r * r / T(10);
  return (T(1) / hk_sqrt(T(1) + r * r) - hk_asinh(r) / r) / r;
}

// Forward scale of a map row: out = scale * v. `log` selects log_map0.
template <typename T> HK_INLINE T map_scale(bool log, T a, T c) {
  const T r = hk_sqrt(c) * safe_norm(a);
  return log ? asinhc(r) : sinhc(r);
}
// Backward of a map row, given a = |v|^2 and gv = grad.v: dv = cg grad + cv v, dc.
// r = sc n: dr/dv = sc v/n (where a >= tiny), dr/dc = n/(2 sc).
template <typename T>
HK_INLINE void map_bwd(bool log, T a, T gv, T c, T& cg, T& cv, T& dc) {
  const T sc = hk_sqrt(c);
  const T n = safe_norm(a);
  const T r = sc * n;
  const T s = log ? asinhc(r) : sinhc(r);
  const T ds = (log ? asinhc_grad(r) : sinhc_grad(r)) * gv;  // d loss / d r
  cg = s;
  cv = a >= Lim<T>::tiny() ? ds * sc / n : T(0);
  dc = ds * n / (T(2) * sc);
}

// ---------------------------------------------------------------------------- cones
// half_aperture: asin(min(2K/(sc n), 1 - ASIN_EPS)), n = max(|x|, n_min),
// n_min = 2K/(sc (1 - ASIN_EPS)): points that close to the origin (x = 0 too) get the widest
// cone asin(1 - ASIN_EPS) and a zero gradient.
template <typename T> HK_INLINE T half_aperture_fwd(T a, T c, T K) {
  const T limit = T(1) - T(ASIN_EPS);
  const T sc = hk_sqrt(c);
  const T n_min = T(2) * K / (sc * limit);
  const T n = hk_max(safe_norm(a), n_min);
  return hk_asin(hk_min(T(2) * K / (sc * n), limit));
}
// dx = cx x, dc. asin'(t) = 1/sqrt((1-t)(1+t)); d arg/d n = -arg/n; d arg/d c = -arg/(2c).
template <typename T> HK_INLINE void half_aperture_bwd(T g, T a, T c, T K, T& cx, T& dc) {
  const T limit = T(1) - T(ASIN_EPS);
  const T sc = hk_sqrt(c);
  const T n_min = T(2) * K / (sc * limit);
  const T nrm = safe_norm(a);
  const T arg = T(2) * K / (sc * hk_max(nrm, n_min));
  if (nrm <= n_min || arg > limit) {  // clipped: the value does not move (NaN: computed)
    cx = T(0);
    dc = T(0);
    return;
  }
  const T gd = g / hk_sqrt((T(1) - arg) * (T(1) + arg));
  cx = a < Lim<T>::tiny() ? T(0) : -gd * arg / (nrm * nrm);  // NaN: computed
  dc = -gd * arg / (T(2) * c);
}

// oxy_angle: acos(clip(numer/denom)), z = -c<x,y>_L, u = z - 1, numer = yt - z xt,
// denom = max(|x| safe_sqrt(u (u + 2)), ANGLE_DENOM_EPS), quotient clipped into
// [-1 + ASIN_EPS, 1 - ASIN_EPS]. u is formed without cancellation from the row-wise distance
// scalars: z - 1 = (c/2) |x - y|_L^2 = (c/2) max(e - k^2, 0), k = x_t - y_t = f/(x_t + y_t),
// and numer = -k - u xt; mathematically the reference's max(z - 1, 0), but exact even when
// O, x, y are (nearly) collinear, where the angle sits at the clip.
template <typename T> HK_INLINE T oxy_angle_fwd(T a, T b, T e, T f, T c) {
  const T xt = time_comp(a, c), yt = time_comp(b, c);
  const T k = f / (xt + yt);
  const T u = T(0.5) * c * hk_max(e - k * k, T(0));
  const T numer = -k - u * xt;
  const T rho = hk_sqrt(hk_max(u * (u + T(2)), Lim<T>::tiny()));
  const T den_raw = safe_norm(a) * rho;
  const T denom = hk_max(den_raw, T(ANGLE_DENOM_EPS));
  // undefined (x = 0 or x = y): pi/2 with zero gradient (the rule at coincident points)
  const T ratio = den_raw < T(ANGLE_DENOM_EPS) ? T(0) : numer / denom;  // NaN: computed
  const T arg = hk_min(hk_max(ratio, T(-1) + T(ASIN_EPS)), T(1) - T(ASIN_EPS));
  return hk_acos(arg);
}
// Gradient as for dist: dx = cdiff (x - y) + cx x, dy = -cdiff (x - y) + cy y, and dc;
// reverse mode through the forward's graph.
template <typename T>
HK_INLINE void oxy_angle_bwd(T g, T a, T b, T e, T f, T c, T& cdiff, T& cx, T& cy, T& dc) {
  const T xt = time_comp(a, c), yt = time_comp(b, c);
  const T S = xt + yt;
  const T k = f / S;
  const T qraw = e - k * k;
  const T qc = hk_max(qraw, T(0));
  const T u = T(0.5) * c * qc;
  const T numer = -k - u * xt;
  const T q2 = u * (u + T(2));
  const T rho = hk_sqrt(hk_max(q2, Lim<T>::tiny()));
  const T nrm = safe_norm(a);
  const T den_raw = nrm * rho;
  const T denom = hk_max(den_raw, T(ANGLE_DENOM_EPS));
  const bool defined = den_raw >= T(ANGLE_DENOM_EPS);  // else pi/2, gradient 0
  const T arg_raw = defined ? numer / denom : T(0);
  const T lo = T(-1) + T(ASIN_EPS), hi = T(1) - T(ASIN_EPS);
  const T arg = hk_min(hk_max(arg_raw, lo), hi);
  // acos'(t) = -1/sqrt(1 - t^2); zero outside the clip interval and where undefined.
  const T darg = (defined && arg_raw >= lo && arg_raw <= hi) ? -g / hk_sqrt((T(1) - arg) * (T(1) + arg)) : T(0);
  const T dnum = darg / denom;
  const T dden = den_raw >= T(ANGLE_DENOM_EPS) ? -darg * arg / denom : T(0);
  const T dnrm = dden * rho;
  const T drho = dden * nrm;
  T du = q2 >= Lim<T>::tiny() ? drho * (u + T(1)) / rho : T(0);
  T dk = -dnum;                            // numer = -k - u xt
  du += -dnum * xt;
  T dxt = -dnum * u;
  const T dqraw = qraw >= T(0) ? du * T(0.5) * c : T(0);  // u = (c/2) max(qraw, 0)
  T dcv = du * T(0.5) * qc;
  const T de = dqraw;                      // qraw = e - k^2
  dk += -T(2) * k * dqraw;
  const T df = dk / S;                     // k = f / S
  const T dS = -dk * k / S;
  dxt += dS;
  const T dyt = dS;
  dcv += -(dxt / xt + dyt / yt) / (T(2) * c * c);  // xt = sqrt(1/c + a)
  const T da = dxt / (T(2) * xt), db = dyt / (T(2) * yt);
  cdiff = T(2) * de;
  cx = T(2) * (df + da) + (a >= Lim<T>::tiny() ? dnrm / nrm : T(0));
  cy = T(2) * (db - df);
  dc = dcv;
}

}  // namespace hk
