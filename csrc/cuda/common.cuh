// Launch helpers shared by the CUDA kernels: dtype dispatch, warp and block reductions.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../hk_host.h"
#include "../hk_math.h"

namespace hk {
namespace cuda {

// Accumulation type: fp32 for fp16/bf16/fp32, fp64 for fp64.
template <typename S> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename S> using acc_t = typename Acc<S>::type;

// Calls f with a value of the storage type (float, double, Half, BFloat16).
template <typename F>
void dispatch_all(at::ScalarType st, const F& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "hypkern_native: unsupported dtype ", st);
  }
}

template <typename S> __device__ __forceinline__ acc_t<S> ld(const S* p) {
  return static_cast<acc_t<S>>(*p);
}

// Sum over the 32 lanes of a warp; every lane gets the result.
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); result in thread 0.
template <typename T> __device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  v = threadIdx.x < nwarps ? partial[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace cuda
}  // namespace hk
