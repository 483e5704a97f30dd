"""hypkern: fast, exact Lorentz-model kernels and concept unlearning for MERU and CLIP.

Layers (nothing lower imports anything higher): ``lorentz`` (geometry ops and kernels) ->
``losses`` -> ``models`` -> ``unlearning`` / ``eval`` -> ``cli``.

The geometry ops and losses import eagerly; the model, unlearning and evaluation entry points
(``load_model``, ``save_model``, ``unlearn``, ``evaluate``) load on first use, so
``import hypkern`` stays light for kernel users.
"""
import importlib as _importlib

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
from .losses import (  # noqa: F401
    ContrastiveLoss,
    clip_contrastive_loss,
    entailment_calibration_loss,
    entailment_loss,
    lorentz_contrastive_loss,
)

__version__ = "0.1.0"

#: Public names that live in heavier sub-packages: name -> (module, attribute or None).
_LAZY = {
    "load_model": ("hypkern.models", "load_model"),
    "save_model": ("hypkern.models", "save_model"),
    "evaluate": ("hypkern.eval", "evaluate"),
    "unlearn": ("hypkern.unlearning", "unlearn"),
    "unlearning": ("hypkern.unlearning", None),
    "models": ("hypkern.models", None),
    "data": ("hypkern.data", None),
    "eval": ("hypkern.eval", None),
}

__all__ = [
    "backends", "pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0",
    "half_aperture", "oxy_angle", "entailment_loss", "entailment_calibration_loss",
    "lorentz_contrastive_loss", "clip_contrastive_loss", "ContrastiveLoss",
    "load_model", "save_model", "unlearn", "evaluate",
]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'hypkern' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = _importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
