// CPU kernels of pairwise_inner and pairwise_dist, (N, D) x (M, D) -> (N, M).
//
// Forward: P = x y^T by the BLAS torch links (at::mm), then ONE fused pass over P that adds
// the time components, clips and applies acosh and the 1/sqrt(c) scale (hk_math.h), in place
// for fp32/fp64 and straight into the fp16/bf16 output otherwise.
// Backward: P is recomputed by at::mm, ONE fused pass turns it into G' = grad * d out/d p
// (in place) while accumulating the row sums r_i = sum_j G'_ij yt_j, the column sums
// s_j = sum_i G'_ij xt_i and the curvature gradient, then two addmm:
//   dX = G' Y - diag(r / xt) X,   dY = G'^T X - diag(s / yt) Y.
#include <algorithm>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../hk_host.h"
#include "../hk_math.h"

// The epilogue loops are compiled for AVX-512 and AVX2+FMA as well as the baseline and the
// best one is picked at load time (GCC function multi-versioning); the log1p of hk_math.h is
// plain arithmetic so these loops vectorise.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HK_CLONES
#endif

namespace hk {
namespace cpu {
namespace {

enum class Kind { Inner, Dist };

// xt, yt: the time components (Inner) or their excesses over 1/sqrt(c) (Dist).
template <typename T, typename O, Kind K>
HK_INLINE void fwd_rows(const T* P, O* out, const T* xt, const T* yt, int64_t i0, int64_t i1,
                        int64_t M, T c, T isc) {
  for (int64_t i = i0; i < i1; ++i) {
    const T* p = P + i * M;
    O* o = out + i * M;
    const T xi = xt[i];
#pragma omp simd
    for (int64_t j = 0; j < M; ++j) {
      const T v = K == Kind::Inner ? pinner_fwd(p[j], xi, yt[j]) : pdist_fwd(p[j], xi, yt[j], c, isc);
      o[j] = static_cast<O>(v);
    }
  }
}

template <typename T, typename GT, Kind K>
HK_INLINE void bwd_rows(const GT* G, T* P, const T* xt, const T* yt, const T* ixt, const T* iyt,
                        const T* ex, const T* ey, int64_t i0, int64_t i1, int64_t M, T c, T* col,
                        T* rsum, double* dcsum) {
  const T isc = T(1) / hk_sqrt(c), ic = T(1) / c, ihc = T(0.5) / c, ic2h = T(0.5) / (c * c);
  double dc_total = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const GT* g = G + i * M;
    T* p = P + i * M;
    const T xi = xt[i], ixi = ixt[i], exi = ex[i];
    T r = 0, dcr = 0;
#pragma omp simd reduction(+ : r, dcr)
    for (int64_t j = 0; j < M; ++j) {
      T gp, dc;
      if (K == Kind::Inner) {
        pinner_bwd(static_cast<T>(g[j]), xi, yt[j], ixi, iyt[j], ic2h, gp, dc);
      } else {
        pdist_bwd(static_cast<T>(g[j]), p[j], exi, ey[j], ixi, iyt[j], c, isc, ic, ihc, gp, dc);
      }
      p[j] = gp;
      col[j] += gp * xi;
      r += gp * yt[j];
      dcr += dc;
    }
    rsum[i] = r;
    dc_total += dcr;
  }
  *dcsum += dc_total;
}

// Multi-versioned instantiations for the common same-dtype cases.
#define HK_FWD_CLONE(NAME, T, K)                                                               \
  HK_CLONES void NAME(const T* P, T* out, const T* xt, const T* yt, int64_t i0, int64_t i1,   \
                      int64_t M, T c, T isc) {                                                 \
    fwd_rows<T, T, K>(P, out, xt, yt, i0, i1, M, c, isc);                                      \
  }
HK_FWD_CLONE(fwd_inner_f32, float, Kind::Inner)
HK_FWD_CLONE(fwd_inner_f64, double, Kind::Inner)
HK_FWD_CLONE(fwd_dist_f32, float, Kind::Dist)
HK_FWD_CLONE(fwd_dist_f64, double, Kind::Dist)
#undef HK_FWD_CLONE

#define HK_BWD_CLONE(NAME, T, K)                                                               \
  HK_CLONES void NAME(const T* G, T* P, const T* xt, const T* yt, const T* ixt, const T* iyt,  \
                      const T* ex, const T* ey, int64_t i0, int64_t i1, int64_t M, T c, T* col,  \
                      T* rsum, double* dcsum) {                                                 \
    bwd_rows<T, T, K>(G, P, xt, yt, ixt, iyt, ex, ey, i0, i1, M, c, col, rsum, dcsum);         \
  }
HK_BWD_CLONE(bwd_inner_f32, float, Kind::Inner)
HK_BWD_CLONE(bwd_inner_f64, double, Kind::Inner)
HK_BWD_CLONE(bwd_dist_f32, float, Kind::Dist)
HK_BWD_CLONE(bwd_dist_f64, double, Kind::Dist)
#undef HK_BWD_CLONE

template <typename T, Kind K>
void fwd_dispatch(const T* P, T* out, const T* xt, const T* yt, int64_t i0, int64_t i1, int64_t M,
                  T c, T isc) {
  if constexpr (std::is_same_v<T, float>) {
    (K == Kind::Inner ? fwd_inner_f32 : fwd_dist_f32)(P, out, xt, yt, i0, i1, M, c, isc);
  } else {
    (K == Kind::Inner ? fwd_inner_f64 : fwd_dist_f64)(P, out, xt, yt, i0, i1, M, c, isc);
  }
}

template <typename T, Kind K>
void bwd_dispatch(const T* G, T* P, const T* xt, const T* yt, const T* ixt, const T* iyt, const T* ex,
                  const T* ey, int64_t i0, int64_t i1, int64_t M, T c, T* col, T* rsum, double* dcsum) {
  if constexpr (std::is_same_v<T, float>) {
    (K == Kind::Inner ? bwd_inner_f32 : bwd_dist_f32)(G, P, xt, yt, ixt, iyt, ex, ey, i0, i1, M, c, col, rsum,
                                                      dcsum);
  } else {
    (K == Kind::Inner ? bwd_inner_f64 : bwd_dist_f64)(G, P, xt, yt, ixt, iyt, ex, ey, i0, i1, M, c, col, rsum,
                                                      dcsum);
  }
}

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

// x_t = sqrt(1/c + |x|^2), 1/x_t and the excess x_t - 1/sqrt(c) per row of a compute-dtype matrix.
template <typename T>
void time_rows(const T* x, T* xt, T* ixt, T* ex, int64_t N, int64_t D, T c) {
  const T isc = T(1) / hk_sqrt(c);
  at::parallel_for(0, N, row_grain(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* r = x + i * D;
      T a = 0;
#pragma omp simd reduction(+ : a)
      for (int64_t k = 0; k < D; ++k) a += r[k] * r[k];
      xt[i] = time_comp(a, c);
      ixt[i] = T(1) / xt[i];
      ex[i] = time_excess(a, xt[i], isc);
    }
  });
}

// out = x * coef[:, None] (the diagonal term of the backward, used as addmm's input).
template <typename T>
at::Tensor scale_rows(const at::Tensor& x, const std::vector<T>& coef) {
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = at::empty_like(x);
  const T* src = x.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  at::parallel_for(0, N, row_grain(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T s = coef[i];
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) dst[i * D + k] = src[i * D + k] * s;
    }
  });
  return out;
}

template <Kind K>
at::Tensor pairwise_fwd(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& curv) {
  check_pair(x_in, y_in, /*rowwise=*/false);
  check_curv(curv, x_in);
  const auto cd = compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.contiguous().to(cd), y = y_in.contiguous().to(cd);
  const int64_t N = x.size(0), M = y.size(0), D = x.size(1);
  at::Tensor P = at::mm(x, y.t());
  const bool same = x_in.scalar_type() == cd;
  at::Tensor out = same ? P : at::empty({N, M}, x_in.options());
  const double cval = curv.item<double>();
  AT_DISPATCH_FLOATING_TYPES(cd, "hypkern_pairwise_fwd", [&] {
    using T = scalar_t;
    const T c = static_cast<T>(cval), isc = T(1) / hk_sqrt(c);
    std::vector<T> xt(N), ixt(N), ex(N), yt(M), iyt(M), ey(M);
    time_rows<T>(x.const_data_ptr<T>(), xt.data(), ixt.data(), ex.data(), N, D, c);
    time_rows<T>(y.const_data_ptr<T>(), yt.data(), iyt.data(), ey.data(), M, D, c);
    const T* p = P.const_data_ptr<T>();
    // the distance reads the excesses (cancellation-free u), the inner product the components
    const T* rx = K == Kind::Inner ? xt.data() : ex.data();
    const T* ry = K == Kind::Inner ? yt.data() : ey.data();
    if (same) {
      T* o = out.mutable_data_ptr<T>();
      at::parallel_for(0, N, row_grain(M), [&](int64_t b, int64_t e) {
        fwd_dispatch<T, K>(p, o, rx, ry, b, e, M, c, isc);
      });
    } else {
      AT_DISPATCH_REDUCED_FLOATING_TYPES(out.scalar_type(), "hypkern_pairwise_fwd_half", [&] {
        scalar_t* o = out.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, N, row_grain(M), [&](int64_t b, int64_t e) {
          fwd_rows<T, scalar_t, K>(p, o, rx, ry, b, e, M, c, isc);
        });
      });
    }
  });
  return out;
}

template <Kind K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_bwd(const at::Tensor& grad,
                                                            const at::Tensor& x_in,
                                                            const at::Tensor& y_in,
                                                            const at::Tensor& curv) {
  check_pair(x_in, y_in, /*rowwise=*/false);
  check_curv(curv, x_in);
  const int64_t N = x_in.size(0), M = y_in.size(0), D = x_in.size(1);
  check_grad(grad, {N, M}, x_in);
  const auto cd = compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.contiguous().to(cd), y = y_in.contiguous().to(cd);
  // The grad is read in the input dtype (fp16/bf16 converted on the fly) or the compute dtype.
  at::Tensor G = grad.contiguous();
  if (G.scalar_type() != x_in.scalar_type()) G = G.to(cd);
  // Overwritten with G'. pairwise_inner's G' is the grad itself: no products needed.
  at::Tensor P = K == Kind::Inner ? at::empty({N, M}, x.options()) : at::mm(x, y.t());
  const double cval = curv.item<double>();
  // Row blocks, one per thread: each owns a buffer for its column sums.
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t rows_per = std::max<int64_t>((N + nthreads - 1) / std::max<int64_t>(nthreads, 1),
                                             row_grain(M));
  const int64_t nchunks = std::max<int64_t>(1, (N + rows_per - 1) / rows_per);
  at::Tensor dX, dY;
  double dc = 0;
  AT_DISPATCH_FLOATING_TYPES(cd, "hypkern_pairwise_bwd", [&] {
    using T = scalar_t;
    const T c = static_cast<T>(cval);
    std::vector<T> xt(N), ixt(N), ex(N), yt(M), iyt(M), ey(M), rsum(N),
        col(static_cast<size_t>(nchunks) * M, T(0));
    std::vector<double> dcs(nchunks, 0.0);
    time_rows<T>(x.const_data_ptr<T>(), xt.data(), ixt.data(), ex.data(), N, D, c);
    time_rows<T>(y.const_data_ptr<T>(), yt.data(), iyt.data(), ey.data(), M, D, c);
    T* p = P.mutable_data_ptr<T>();
    auto run = [&](auto* g) {
      using GT = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
      at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
        for (int64_t ch = b; ch < e; ++ch) {
          const int64_t i0 = ch * rows_per, i1 = std::min(N, i0 + rows_per);
          if constexpr (std::is_same_v<GT, T>) {
            bwd_dispatch<T, K>(g, p, xt.data(), yt.data(), ixt.data(), iyt.data(), ex.data(), ey.data(), i0,
                               i1, M, c, col.data() + ch * M, rsum.data(), &dcs[ch]);
          } else {
            bwd_rows<T, GT, K>(g, p, xt.data(), yt.data(), ixt.data(), iyt.data(), ex.data(), ey.data(), i0,
                               i1, M, c, col.data() + ch * M, rsum.data(), &dcs[ch]);
          }
        }
      });
    };
    if (G.scalar_type() == cd) {
      run(G.const_data_ptr<T>());
    } else {
      AT_DISPATCH_REDUCED_FLOATING_TYPES(G.scalar_type(), "hypkern_pairwise_bwd_half",
                                         [&] { run(G.const_data_ptr<scalar_t>()); });
    }
    std::vector<T> rc(N), sc(M, T(0));
    for (int64_t i = 0; i < N; ++i) rc[i] = -rsum[i] * ixt[i];
    for (int64_t ch = 0; ch < nchunks; ++ch)
      for (int64_t j = 0; j < M; ++j) sc[j] += col[ch * M + j];
    for (int64_t j = 0; j < M; ++j) sc[j] = -sc[j] * iyt[j];
    for (double v : dcs) dc += v;
    dX = at::addmm(scale_rows<T>(x, rc), P, y);
    dY = at::addmm(scale_rows<T>(y, sc), P.t(), x);
  });
  return {dX.to(x_in.scalar_type()), dY.to(x_in.scalar_type()),
          at::scalar_tensor(dc, curv.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hypkern_native, CPU, m) {
  m.impl("pairwise_inner_fwd", &pairwise_fwd<Kind::Inner>);
  m.impl("pairwise_inner_bwd", &pairwise_bwd<Kind::Inner>);
  m.impl("pairwise_dist_fwd", &pairwise_fwd<Kind::Dist>);
  m.impl("pairwise_dist_bwd", &pairwise_bwd<Kind::Dist>);
}

}  // namespace cpu
}  // namespace hk
