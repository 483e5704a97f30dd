"""Lorentz-model geometry: the float64 reference (``reference``), the public custom ops
(``ops``) and their kernel backends (``triton``, ``native``)."""
from . import reference  # noqa: F401
from .ops import (  # noqa: F401
    backends,
    dist,
    exp_map0,
    half_aperture,
    log_map0,
    oxy_angle,
    pairwise_dist,
    pairwise_inner,
)
