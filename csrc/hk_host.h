// hk_host.h -- host-side helpers shared by the CPU and CUDA kernels: argument checks and
// dtype rules (fp16/bf16 are computed in fp32, fp64 in fp64; outputs in the input dtype,
// the curvature gradient in the dtype of `curv`).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace hk {

inline at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "hypkern_native: ", name, " must be 2-D (rows, D), got ", t.sizes());
  TORCH_CHECK(t.size(1) >= 1, "hypkern_native: ", name, " must have D >= 1 columns");
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
              "hypkern_native: ", name, " must be float16, bfloat16, float32 or float64, got ", s);
}

inline void check_pair(const at::Tensor& x, const at::Tensor& y, bool rowwise) {
  check_matrix(x, "x");
  check_matrix(y, "y");
  TORCH_CHECK(x.size(1) == y.size(1), "hypkern_native: x and y must have the same D, got ",
              x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "hypkern_native: x and y must share a dtype");
  TORCH_CHECK(x.device() == y.device(), "hypkern_native: x and y must be on one device");
  if (rowwise) {
    TORCH_CHECK(x.size(0) == y.size(0), "hypkern_native: x and y must have as many rows, got ",
                x.sizes(), " and ", y.sizes());
  }
}

inline void check_curv(const at::Tensor& curv, const at::Tensor& like) {
  TORCH_CHECK(curv.numel() == 1 && curv.dim() <= 1, "hypkern_native: curv must be a 0-dim tensor");
  TORCH_CHECK(curv.is_floating_point(), "hypkern_native: curv must be floating point");
  TORCH_CHECK(curv.device() == like.device(), "hypkern_native: curv must be on the inputs' device");
}

inline void check_grad(const at::Tensor& grad, at::IntArrayRef shape, const at::Tensor& like) {
  TORCH_CHECK(grad.sizes() == shape, "hypkern_native: grad must have shape ", shape, ", got ",
              grad.sizes());
  TORCH_CHECK(grad.is_floating_point() && grad.device() == like.device(),
              "hypkern_native: grad must be a floating tensor on the inputs' device");
}

}  // namespace hk
