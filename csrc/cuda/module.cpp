// hypkern._C_cuda: registers the CUDA kernels for the hypkern_native ops whose schemas
// csrc/registry.cpp (in hypkern._C, loaded first) defines.
#include <Python.h>

#include <torch/library.h>

#include "kernels.h"

TORCH_LIBRARY_IMPL(hypkern_native, CUDA, m) {
  m.impl("pairwise_inner_fwd", &hk::cuda::pairwise_inner_fwd);
  m.impl("pairwise_inner_bwd", &hk::cuda::pairwise_inner_bwd);
  m.impl("pairwise_dist_fwd", &hk::cuda::pairwise_dist_fwd);
  m.impl("pairwise_dist_bwd", &hk::cuda::pairwise_dist_bwd);
  m.impl("dist_fwd", &hk::cuda::dist_fwd);
  m.impl("dist_bwd", &hk::cuda::dist_bwd);
  m.impl("oxy_angle_fwd", &hk::cuda::oxy_angle_fwd);
  m.impl("oxy_angle_bwd", &hk::cuda::oxy_angle_bwd);
  m.impl("exp_map0_fwd", &hk::cuda::exp_map0_fwd);
  m.impl("exp_map0_bwd", &hk::cuda::exp_map0_bwd);
  m.impl("log_map0_fwd", &hk::cuda::log_map0_fwd);
  m.impl("log_map0_bwd", &hk::cuda::log_map0_bwd);
  m.impl("half_aperture_fwd", &hk::cuda::half_aperture_fwd);
  m.impl("half_aperture_bwd", &hk::cuda::half_aperture_bwd);
  m.impl("entailment_fwd_bwd", &hk::cuda::entailment_fwd_bwd);
}

static struct PyModuleDef hk_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda",
                                            "hypkern native CUDA kernels (torch.ops.hypkern_native)",
                                            -1, nullptr};
PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&hk_cuda_module); }
