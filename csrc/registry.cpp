// The one op registry of the native kernels: the schemas of hypkern_native::<op>_fwd/_bwd.
// The CPU kernels register for them in csrc/cpu (TORCH_LIBRARY_IMPL ... CPU), the CUDA
// kernels in csrc/cuda (... CUDA). This file is linked into the CPU extension hypkern._C,
// which therefore has to be loaded before hypkern._C_cuda (hypkern/lorentz/native.py does).
//
// Interface (hypkern/lorentz/ops.py): inputs in their own dtype, curv a 0-dim tensor of the
// compute dtype; outputs in the input dtype, one gradient per tensor input plus the 0-dim
// gradient w.r.t. curv (in curv's dtype).
#include <Python.h>

#include <string>
#include <vector>

#include <torch/library.h>

#include "hk_math.h"

namespace {

// The clipping constants compiled into hk_math.h, for tests/test_native_ops.py to compare
// with hypkern/lorentz/constants.py: [ASIN_EPS, EXP_MAP_MAX, SMALL_R, ANGLE_DENOM_EPS].
std::vector<double> constants() {
  return {hk::ASIN_EPS, hk::EXP_MAP_MAX, hk::SMALL_R, hk::ANGLE_DENOM_EPS};
}

}  // namespace

TORCH_LIBRARY(hypkern_native, m) {
  for (const char* name : {"pairwise_inner", "pairwise_dist", "dist", "oxy_angle"}) {
    m.def((std::string(name) + "_fwd(Tensor x, Tensor y, Tensor curv) -> Tensor").c_str());
    m.def((std::string(name) + "_bwd(Tensor grad, Tensor x, Tensor y, Tensor curv) -> (Tensor, Tensor, Tensor)").c_str());
  }
  m.def("exp_map0_fwd(Tensor v, Tensor curv) -> Tensor");
  m.def("exp_map0_bwd(Tensor grad, Tensor v, Tensor curv) -> (Tensor, Tensor)");
  m.def("log_map0_fwd(Tensor x, Tensor curv) -> Tensor");
  m.def("log_map0_bwd(Tensor grad, Tensor x, Tensor curv) -> (Tensor, Tensor)");
  m.def("half_aperture_fwd(Tensor x, Tensor curv, float min_radius) -> Tensor");
  m.def("half_aperture_bwd(Tensor grad, Tensor x, Tensor curv, float min_radius) -> (Tensor, Tensor)");
  // Fused entailment / calibration rows (hypkern.losses backend "native"): loss, and with
  // need_grad the per-row gradients w.r.t. text, image and curv, in the compute dtype.
  m.def("entailment_fwd_bwd(Tensor text, Tensor image, Tensor curv, float min_radius, float sign, "
        "float margin, bool need_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("constants() -> float[]", &constants);
}

// A bare Python module so that `import hypkern._C` loads the library (and runs the static
// registrations above); everything is reached through torch.ops.hypkern_native.
static struct PyModuleDef hk_module = {PyModuleDef_HEAD_INIT, "_C",
                                       "hypkern native CPU kernels (torch.ops.hypkern_native)", -1,
                                       nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&hk_module); }
