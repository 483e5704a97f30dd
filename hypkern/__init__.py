"""hypkern: fast, exact Lorentz-model kernels and concept unlearning for MERU and CLIP.

Layers (nothing lower imports anything higher): ``lorentz`` (geometry ops and kernels) ->
``losses`` -> ``models`` -> ``unlearn`` / ``eval`` -> ``cli``.
"""
from .lorentz.ops import (  # noqa: F401
    backends,
    dist,
    exp_map0,
    half_aperture,
    log_map0,
    oxy_angle,
    pairwise_dist,
    pairwise_inner,
)
from .losses import clip_contrastive_loss, entailment_loss, lorentz_contrastive_loss  # noqa: F401

__version__ = "0.1.0"
