// CUDA kernels of pairwise_inner and pairwise_dist, (N, D) x (M, D) -> (N, M).
//
// cuBLAS (at::mm) computes P = x y^T -- for fp16/bf16 inputs with the fp32-output overload
// at::mm(x, y^T, kFloat), i.e. tensor cores with fp32 accumulation and fp32 products, so the
// cancellation in c(x_t y_t - p) - 1 sees the same fp32 values as the reference -- and ONE
// fused epilogue kernel applies the time components, clipping, acosh and 1/sqrt(c) (hk_math.h)
// and writes the output in the input dtype (in place for fp32/fp64). This is the "cuBLAS plus
// one epilogue pass" variant; a single tiled kernel would save one N x M round trip through
// memory but was not written: it could not be measured on the GPU-less machines.
//
// Backward: P is recomputed, one fused kernel turns it (in place, fp32) into
// G' = grad * d out/d p and block-reduces the curvature gradient (deterministic partials, no
// atomics); the row/column sums r = G' yt and s = G'^T xt ride along in the two matmuls as an
// extra column: G' [Y | yt] and G'^T [X | xt]; a last elementwise kernel forms
//   dX = G' Y - diag(r / xt) X,   dY = G'^T X - diag(s / yt) Y   in the input dtype.
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include "common.cuh"
#include "kernels.h"

namespace hk {
namespace cuda {
namespace {

enum class Kind { Inner, Dist };

constexpr int kThreads = 256;

// x_t = sqrt(1/c + |x|^2) and its excess x_t - 1/sqrt(c) (hk::time_excess) per row, one warp
// per row (fp32 accumulation for fp16/bf16).
template <typename S>
__global__ void time_kernel(const S* __restrict__ x, const acc_t<S>* __restrict__ curv, acc_t<S>* __restrict__ xt,
                            acc_t<S>* __restrict__ ex, int64_t N, int64_t D) {
  using T = acc_t<S>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= N) return;
  const int lane = threadIdx.x & 31;
  T a = 0;
  for (int64_t k = lane; k < D; k += 32) {
    const T t = ld(x + row * D + k);
    a += t * t;
  }
  a = warp_sum(a);
  if (lane == 0) {
    const T c = *curv, t = hk::time_comp(a, c);
    xt[row] = t;
    ex[row] = hk::time_excess(a, t, T(1) / hk_sqrt(c));
  }
}

// Grid: x over column blocks of kThreads, y over rows (grid-stride beyond 65535 rows).
inline dim3 epilogue_grid(int64_t N, int64_t M) {
  const int64_t gx = (M + kThreads - 1) / kThreads;
  const int64_t gy = N < 65535 ? N : 65535;
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

// xt, yt: the time components (Inner) or their excesses over 1/sqrt(c) (Dist).
template <typename T, typename O, Kind K>
__global__ void fwd_epilogue(const T* P, O* out, const T* __restrict__ xt, const T* __restrict__ yt,
                             const T* __restrict__ curv, int64_t N, int64_t M) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= M) return;
  const T c = *curv, isc = T(1) / hk_sqrt(c);
  const T ytj = yt[j];
  for (int64_t i = blockIdx.y; i < N; i += gridDim.y) {
    const T p = P[i * M + j];  // P and out may alias (same index read then written)
    const T v = K == Kind::Inner ? pinner_fwd(p, xt[i], ytj) : pdist_fwd(p, xt[i], ytj, c, isc);
    out[i * M + j] = static_cast<O>(v);
  }
}

template <typename T, typename GT, Kind K>
__global__ void bwd_epilogue(const GT* __restrict__ G, T* P, const T* __restrict__ xt, const T* __restrict__ yt,
                             const T* __restrict__ ex, const T* __restrict__ ey, const T* __restrict__ curv,
                             T* __restrict__ dc_part, int64_t N, int64_t M) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  T dcsum = 0;
  if (j < M) {
    const T c = *curv, isc = T(1) / hk_sqrt(c), ic = T(1) / c, ihc = T(0.5) / c, ic2h = T(0.5) / (c * c);
    const T ytj = yt[j], iytj = T(1) / ytj;
    for (int64_t i = blockIdx.y; i < N; i += gridDim.y) {
      const T xi = xt[i];
      const T g = static_cast<T>(G[i * M + j]);
      T gp, dc;
      if (K == Kind::Inner) {
        pinner_bwd(g, xi, ytj, T(1) / xi, iytj, ic2h, gp, dc);
      } else {
        pdist_bwd(g, P[i * M + j], ex[i], ey[j], T(1) / xi, iytj, c, isc, ic, ihc, gp, dc);
      }
      P[i * M + j] = gp;
      dcsum += dc;
    }
  }
  dcsum = block_sum(dcsum);  // every thread of the block takes part
  if (threadIdx.x == 0) dc_part[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = dcsum;
}

// dX[i, k] = A[i, k] - (A[i, D] / xt[i]) X[i, k], A = G' [Y | yt] of shape (N, D + 1).
template <typename S>
__global__ void finish_kernel(const acc_t<S>* __restrict__ A, const acc_t<S>* __restrict__ X,
                              const acc_t<S>* __restrict__ xt, S* __restrict__ out, int64_t N, int64_t D) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= N * D) return;
  const int64_t i = idx / D, k = idx - i * D;
  const acc_t<S>* a = A + i * (D + 1);
  out[idx] = static_cast<S>(a[k] - a[D] / xt[i] * X[idx]);
}

// (2, N): row 0 the time components x_t, row 1 their excesses x_t - 1/sqrt(c).
Tensor time_components(const Tensor& x, const Tensor& curv) {
  const int64_t N = x.size(0), D = x.size(1);
  Tensor xt = at::empty({2, N}, curv.options());
  if (N == 0) return xt;
  dispatch_all(x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const unsigned blocks = static_cast<unsigned>((N + kThreads / 32 - 1) / (kThreads / 32));
    time_kernel<S><<<blocks, kThreads, 0, stream()>>>(x.template const_data_ptr<S>(),
                                                       curv.template const_data_ptr<acc_t<S>>(),
                                                       xt.template mutable_data_ptr<acc_t<S>>(),
                                                       xt.template mutable_data_ptr<acc_t<S>>() + N, N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return xt;
}

// P = x y^T in the compute dtype (fp32 output and accumulation for fp16/bf16 inputs).
Tensor products(const Tensor& x, const Tensor& y) {
  const auto st = x.scalar_type();
  if (st == at::kHalf || st == at::kBFloat16) return at::mm(x, y.t(), at::kFloat);
  return at::mm(x, y.t());
}

struct Prep {
  Tensor x, y, curv;
};

Prep prep(const Tensor& x, const Tensor& y, const Tensor& curv) {
  check_pair(x, y, /*rowwise=*/false);
  check_curv(curv, x);
  TORCH_CHECK(x.is_cuda(), "hypkern_native: CUDA kernel called with a ", x.device(), " tensor");
  return {x.contiguous(), y.contiguous(), curv.reshape({}).to(compute_dtype(x.scalar_type())).contiguous()};
}

template <Kind K>
Tensor pairwise_fwd(const Tensor& x_in, const Tensor& y_in, const Tensor& curv_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Prep p = prep(x_in, y_in, curv_in);
  const int64_t N = p.x.size(0), M = p.y.size(0);
  Tensor P = products(p.x, p.y);
  if (N == 0 || M == 0) return P.to(x_in.scalar_type());
  const Tensor tx = time_components(p.x, p.curv), ty = time_components(p.y, p.curv);
  // the distance reads the excesses (cancellation-free u), the inner product the components
  const Tensor xt = tx[K == Kind::Inner ? 0 : 1], yt = ty[K == Kind::Inner ? 0 : 1];
  const bool same = P.scalar_type() == p.x.scalar_type();
  Tensor out = same ? P : at::empty({N, M}, p.x.options());
  dispatch_all(p.x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    using T = acc_t<S>;
    fwd_epilogue<T, S, K><<<epilogue_grid(N, M), kThreads, 0, stream()>>>(
        P.template const_data_ptr<T>(), out.template mutable_data_ptr<S>(), xt.template const_data_ptr<T>(),
        yt.template const_data_ptr<T>(), p.curv.template const_data_ptr<T>(), N, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <Kind K>
Grads3 pairwise_bwd(const Tensor& grad_in, const Tensor& x_in, const Tensor& y_in, const Tensor& curv_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Prep p = prep(x_in, y_in, curv_in);
  const int64_t N = p.x.size(0), M = p.y.size(0), D = p.x.size(1);
  check_grad(grad_in, {N, M}, p.x);
  Tensor G = grad_in.scalar_type() == p.x.scalar_type() ? grad_in.contiguous()
                                                        : grad_in.to(p.x.scalar_type()).contiguous();
  // Becomes G'. pairwise_inner's G' is the grad itself: no products needed.
  Tensor P = K == Kind::Inner ? at::empty({N, M}, p.curv.options()) : products(p.x, p.y);
  const Tensor tx = time_components(p.x, p.curv), ty = time_components(p.y, p.curv);
  const Tensor xt = tx[0], yt = ty[0], ex = tx[1], ey = ty[1];
  const dim3 grid = epilogue_grid(N, M);
  Tensor dc_part = at::zeros({static_cast<int64_t>(grid.x) * grid.y}, p.curv.options());
  Tensor dX = at::empty_like(p.x), dY = at::empty_like(p.y);
  if (N == 0 || M == 0) {
    dX.zero_();
    dY.zero_();
    return {dX, dY, at::zeros({}, curv_in.options())};
  }
  dispatch_all(p.x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    using T = acc_t<S>;
    bwd_epilogue<T, S, K><<<grid, kThreads, 0, stream()>>>(
        G.template const_data_ptr<S>(), P.template mutable_data_ptr<T>(), xt.template const_data_ptr<T>(),
        yt.template const_data_ptr<T>(), ex.template const_data_ptr<T>(), ey.template const_data_ptr<T>(),
        p.curv.template const_data_ptr<T>(), dc_part.template mutable_data_ptr<T>(), N, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto cd = P.scalar_type();
    const Tensor xc = p.x.to(cd), yc = p.y.to(cd);
    const Tensor A = at::mm(P, at::cat({yc, yt.unsqueeze(1)}, 1));      // (N, D+1)
    const Tensor B = at::mm(P.t(), at::cat({xc, xt.unsqueeze(1)}, 1));  // (M, D+1)
    const unsigned bx = static_cast<unsigned>((N * D + kThreads - 1) / kThreads);
    const unsigned by = static_cast<unsigned>((M * D + kThreads - 1) / kThreads);
    finish_kernel<S><<<bx, kThreads, 0, stream()>>>(A.template const_data_ptr<T>(), xc.template const_data_ptr<T>(),
                                                     xt.template const_data_ptr<T>(), dX.template mutable_data_ptr<S>(),
                                                     N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finish_kernel<S><<<by, kThreads, 0, stream()>>>(B.template const_data_ptr<T>(), yc.template const_data_ptr<T>(),
                                                     yt.template const_data_ptr<T>(), dY.template mutable_data_ptr<S>(),
                                                     M, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dX, dY, at::sum(dc_part).to(curv_in.scalar_type())};
}

}  // namespace

Tensor pairwise_inner_fwd(const Tensor& x, const Tensor& y, const Tensor& curv) {
  return pairwise_fwd<Kind::Inner>(x, y, curv);
}
Grads3 pairwise_inner_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv) {
  return pairwise_bwd<Kind::Inner>(grad, x, y, curv);
}
Tensor pairwise_dist_fwd(const Tensor& x, const Tensor& y, const Tensor& curv) {
  return pairwise_fwd<Kind::Dist>(x, y, curv);
}
Grads3 pairwise_dist_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv) {
  return pairwise_bwd<Kind::Dist>(grad, x, y, curv);
}

}  // namespace cuda
}  // namespace hk
