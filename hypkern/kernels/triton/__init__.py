"""Triton backend of the Lorentz ops and losses (the kernel-module interface of
:mod:`hypkern.kernels.registry`).

``supports(device) -> (bool, reason)`` and, per op, ``<name>_fwd(*inputs, curv[, min_radius])``
and ``<name>_bwd(grad, *inputs, curv[, min_radius])`` (one gradient per tensor input plus the
0-dim gradient w.r.t. ``curv``). Inputs arrive contiguous in fp16/bf16/fp32/fp64; kernels
compute in float32 (float64 for float64 inputs) and return the input dtype.

Runs on CUDA GPUs, and on CPU tensors when ``TRITON_INTERPRET=1`` was set before triton
decorated the kernels (i.e. before this package was imported): the same kernels, interpreted.

Modules: ``_math`` (core-``tl`` acosh/asinh/asin/acos/sinh/sinhc..., importable by other
kernels), ``dist`` (pairwise and row-wise distances, pairwise inner products), ``maps``
(``exp_map0``/``log_map0``), ``cones`` (``half_aperture``/``oxy_angle`` and the entailment loss
built from their cores), ``losses`` (the contrastive statistics).
"""
from __future__ import annotations

import torch

from ._common import INTERPRET
from .cones import (
    entailment_bwd, entailment_fwd, half_aperture_bwd, half_aperture_fwd, oxy_angle_bwd, oxy_angle_fwd,
)
from .dist import (
    dist_bwd, dist_fwd, pairwise_dist_bwd, pairwise_dist_fwd, pairwise_inner_bwd, pairwise_inner_fwd,
)
from .losses import contrastive_bwd, contrastive_fwd
from .maps import exp_map0_bwd, exp_map0_fwd, log_map0_bwd, log_map0_fwd

__all__ = [
    "supports", "INTERPRET",
    "pairwise_inner_fwd", "pairwise_inner_bwd", "pairwise_dist_fwd", "pairwise_dist_bwd",
    "dist_fwd", "dist_bwd", "exp_map0_fwd", "exp_map0_bwd", "log_map0_fwd", "log_map0_bwd",
    "half_aperture_fwd", "half_aperture_bwd", "oxy_angle_fwd", "oxy_angle_bwd",
    "contrastive_fwd", "contrastive_bwd", "entailment_fwd", "entailment_bwd",
]


def supports(device) -> tuple[bool, str]:
    """Whether these kernels can run on ``device`` (a ``torch.device`` or string), and why not."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""
    if device.type == "cpu":
        if INTERPRET:
            return True, ""
        return False, ("Triton runs on CPU only in its interpreter: set TRITON_INTERPRET=1 "
                       "before triton is imported")
    return False, f"Triton kernels do not run on {device.type} tensors"
