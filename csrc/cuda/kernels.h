// Host entry points of the CUDA kernels (defined in rowwise.cu and pairwise.cu, registered
// for the CUDA dispatch key of hypkern_native in module.cpp).
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace hk {
namespace cuda {

using at::Tensor;
using Grads2 = std::tuple<Tensor, Tensor>;
using Grads3 = std::tuple<Tensor, Tensor, Tensor>;
using Ent4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

Tensor pairwise_inner_fwd(const Tensor& x, const Tensor& y, const Tensor& curv);
Grads3 pairwise_inner_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv);
Tensor pairwise_dist_fwd(const Tensor& x, const Tensor& y, const Tensor& curv);
Grads3 pairwise_dist_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv);

Tensor dist_fwd(const Tensor& x, const Tensor& y, const Tensor& curv);
Grads3 dist_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv);
Tensor oxy_angle_fwd(const Tensor& x, const Tensor& y, const Tensor& curv);
Grads3 oxy_angle_bwd(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& curv);
Tensor exp_map0_fwd(const Tensor& v, const Tensor& curv);
Grads2 exp_map0_bwd(const Tensor& grad, const Tensor& v, const Tensor& curv);
Tensor log_map0_fwd(const Tensor& x, const Tensor& curv);
Grads2 log_map0_bwd(const Tensor& grad, const Tensor& x, const Tensor& curv);
Tensor half_aperture_fwd(const Tensor& x, const Tensor& curv, double min_radius);
Grads2 half_aperture_bwd(const Tensor& grad, const Tensor& x, const Tensor& curv, double min_radius);
// (loss, gx, gy, gc) rows of the fused entailment / calibration loss, compute dtype.
Ent4 entailment_fwd_bwd(const Tensor& x, const Tensor& y, const Tensor& curv, double min_radius, double sign,
                        double margin, bool need_grad);

}  // namespace cuda
}  // namespace hk
