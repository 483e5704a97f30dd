"""The native kernel backend: C++ CPU kernels (``hypkern._C``) and CUDA kernels
(``hypkern._C_cuda``) from ``csrc/``, registered as ``torch.ops.hypkern_native.<op>_fwd/_bwd``.

Implements the kernel-module interface of :mod:`hypkern.kernels.registry`: ``supports(device)``
and ``<name>_fwd(*inputs, curv[, min_radius])`` / ``<name>_bwd(grad, *inputs, curv[, min_radius])``.
The per-element math (stable acosh/asin/acos, the clipping of ``constants.py``, each op's
local forward and backward formula) lives in ``csrc/hk_math.h`` and is shared by both
extensions.

Importing this module never fails: if an extension was not built (no compiler at install
time, ``HYPKERN_BUILD_CPU=0``, ...), ``supports`` says so and a one-line warning is issued once,
at first use. Build with ``pip install --no-build-isolation .`` or
``python setup.py build_ext --inplace`` (see docs/readme_native.md).
"""
from __future__ import annotations

import importlib
import warnings

import torch

__all__ = [
    "supports", "cpu_available", "cuda_available", "load_error", "constants",
    "pairwise_inner_fwd", "pairwise_inner_bwd", "pairwise_dist_fwd", "pairwise_dist_bwd",
    "dist_fwd", "dist_bwd", "exp_map0_fwd", "exp_map0_bwd", "log_map0_fwd", "log_map0_bwd",
    "half_aperture_fwd", "half_aperture_bwd", "oxy_angle_fwd", "oxy_angle_bwd",
    "entailment_fwd_bwd", "entailment_fwd", "entailment_bwd",
]


def _load(name: str) -> tuple[bool, str]:
    try:
        importlib.import_module(name)
        return True, ""
    except Exception as exc:  # ImportError, or an ABI mismatch surfacing as OSError/RuntimeError
        return False, f"{name} is not built or failed to load ({type(exc).__name__}: {exc})"


# _C holds the op schemas (TORCH_LIBRARY) and the CPU kernels; _C_cuda adds CUDA kernels to
# the same ops and therefore loads second.
_CPU_OK, _CPU_WHY = _load("hypkern._C")
if _CPU_OK:
    _CUDA_OK, _CUDA_WHY = _load("hypkern._C_cuda")
else:
    _CUDA_OK, _CUDA_WHY = False, "hypkern._C_cuda needs hypkern._C, which is missing"
_warned = False

_BUILD_HINT = ("build it with `pip install --no-build-isolation .` or "
               "`python setup.py build_ext --inplace`")


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"hypkern: native kernels unavailable, using another backend: {reason}; "
                      f"{_BUILD_HINT}", RuntimeWarning, stacklevel=3)


def cpu_available() -> bool:
    return _CPU_OK


def cuda_available() -> bool:
    return _CUDA_OK


def load_error() -> str:
    """Why an extension is missing ('' when both loaded)."""
    return "; ".join(w for w in (_CPU_WHY, _CUDA_WHY) if w)


def supports(device) -> tuple[bool, str]:
    """Whether the native kernels can run on ``device`` and, if not, why."""
    device = torch.device(device)
    if device.type == "cpu":
        if not _CPU_OK:
            _warn_once(_CPU_WHY)
        return _CPU_OK, _CPU_WHY
    if device.type == "cuda":
        if not _CUDA_OK:
            if _CPU_OK:  # CPU works: a CPU-only build is a normal choice, not worth a warning
                return False, _CUDA_WHY
            _warn_once(_CUDA_WHY)
            return False, _CUDA_WHY
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""
    return False, f"no native kernels for device type {device.type!r}"


def constants() -> dict[str, float]:
    """The clipping constants compiled into csrc/hk_math.h."""
    names = ("ASIN_EPS", "EXP_MAP_MAX", "SMALL_R", "ANGLE_DENOM_EPS")
    return dict(zip(names, torch.ops.hypkern_native.constants()))


def _op(name: str):
    return getattr(torch.ops.hypkern_native, name)


def pairwise_inner_fwd(x, y, curv):
    return _op("pairwise_inner_fwd")(x, y, curv)


def pairwise_inner_bwd(grad, x, y, curv):
    return _op("pairwise_inner_bwd")(grad, x, y, curv)


def pairwise_dist_fwd(x, y, curv):
    return _op("pairwise_dist_fwd")(x, y, curv)


def pairwise_dist_bwd(grad, x, y, curv):
    return _op("pairwise_dist_bwd")(grad, x, y, curv)


def dist_fwd(x, y, curv):
    return _op("dist_fwd")(x, y, curv)


def dist_bwd(grad, x, y, curv):
    return _op("dist_bwd")(grad, x, y, curv)


def exp_map0_fwd(v, curv):
    return _op("exp_map0_fwd")(v, curv)


def exp_map0_bwd(grad, v, curv):
    return _op("exp_map0_bwd")(grad, v, curv)


def log_map0_fwd(x, curv):
    return _op("log_map0_fwd")(x, curv)


def log_map0_bwd(grad, x, curv):
    return _op("log_map0_bwd")(grad, x, curv)


def half_aperture_fwd(x, curv, min_radius):
    return _op("half_aperture_fwd")(x, curv, float(min_radius))


def half_aperture_bwd(grad, x, curv, min_radius):
    return _op("half_aperture_bwd")(grad, x, curv, float(min_radius))


def oxy_angle_fwd(x, y, curv):
    return _op("oxy_angle_fwd")(x, y, curv)


def oxy_angle_bwd(grad, x, y, curv):
    return _op("oxy_angle_bwd")(grad, x, y, curv)


def entailment_fwd_bwd(text, image, curv, min_radius, sign, margin, need_grad=True):
    """Fused entailment (``sign=+1``) / calibration (``sign=-1``, ``margin``) rows:
    ``(loss (N,), gx (N, D), gy (N, D), gc (N,))`` in the compute dtype, the gradients for a
    unit upstream gradient per row (empty tensors when ``need_grad`` is False)."""
    return _op("entailment_fwd_bwd")(text, image, curv, float(min_radius), float(sign), float(margin),
                                     bool(need_grad))


def entailment_fwd(text, image, curv, min_radius, sign, margin):
    """Per-row entailment (``sign=+1``) / calibration (``sign=-1``) losses, compute dtype."""
    return entailment_fwd_bwd(text, image, curv, min_radius, sign, margin, need_grad=False)[0]


def entailment_bwd(grad, text, image, curv, min_radius, sign, margin):
    """Gradients (text, image, curv) of ``sum(grad * entailment_fwd(...))``: the fused op's
    unit-gradient rows scaled by ``grad``."""
    _, gx, gy, gc = entailment_fwd_bwd(text, image, curv, min_radius, sign, margin, need_grad=True)
    g = grad.to(gx.dtype)
    return ((g[:, None] * gx).to(text.dtype), (g[:, None] * gy).to(image.dtype),
            (g * gc).sum().to(curv.dtype).reshape(()))


# ----------------------------------------------------------------------------- fake kernels
# Shapes for FakeTensor / torch.compile / opcheck (the C++ ops have no Meta kernels).
if _CPU_OK:
    def _register_fakes() -> None:
        lib = "hypkern_native::"
        for name in ("pairwise_inner", "pairwise_dist"):
            torch.library.register_fake(lib + name + "_fwd")(
                lambda x, y, curv: x.new_empty((x.shape[0], y.shape[0])))
        for name in ("dist", "oxy_angle"):
            torch.library.register_fake(lib + name + "_fwd")(lambda x, y, curv: x.new_empty((x.shape[0],)))
        for name in ("pairwise_inner", "pairwise_dist", "dist", "oxy_angle"):
            torch.library.register_fake(lib + name + "_bwd")(
                lambda grad, x, y, curv: (x.new_empty(x.shape), y.new_empty(y.shape), curv.new_empty(())))
        for name in ("exp_map0", "log_map0"):
            torch.library.register_fake(lib + name + "_fwd")(lambda v, curv: v.new_empty(v.shape))
            torch.library.register_fake(lib + name + "_bwd")(
                lambda grad, v, curv: (v.new_empty(v.shape), curv.new_empty(())))
        torch.library.register_fake(lib + "half_aperture_fwd")(
            lambda x, curv, min_radius: x.new_empty((x.shape[0],)))
        torch.library.register_fake(lib + "half_aperture_bwd")(
            lambda grad, x, curv, min_radius: (x.new_empty(x.shape), curv.new_empty(())))

        def _entailment_fake(text, image, curv, min_radius, sign, margin, need_grad):
            cd = torch.float64 if text.dtype == torch.float64 else torch.float32
            n, d = text.shape[0], text.shape[1]
            rows = n if need_grad else 0
            return (text.new_empty((n,), dtype=cd), text.new_empty((rows, d), dtype=cd),
                    text.new_empty((rows, d), dtype=cd), text.new_empty((rows,), dtype=cd))

        torch.library.register_fake(lib + "entailment_fwd_bwd")(_entailment_fake)

    _register_fakes()
