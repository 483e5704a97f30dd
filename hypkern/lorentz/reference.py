"""Reference Lorentz-model geometry: the spec every backend must match, in plain PyTorch.

Curvature is ``-c`` with ``c > 0``. Points live on the hyperboloid
``{(x_t, x) : x_t = sqrt(1/c + |x|^2)}``; every function takes and returns only the
*space part* ``x`` (last dimension ``D``) and recomputes ``x_t`` from it, as MERU does.
``<x, y>_L = x.y - x_t y_t``.

Everything here is differentiable with plain autograd, including with respect to ``curv``,
and finite (forward and backward) for every finite input. Run it in float64 to get the
exact answer the kernels are tested against; half-precision inputs are computed in float32
and returned in their own dtype.

Clipping constants (shared by every backend, see ``hypkern/lorentz/constants.py``):

* ``ASIN_EPS = 1e-6``: arguments of ``asin``/``acos`` are clipped into
  ``[-1 + ASIN_EPS, 1 - ASIN_EPS]`` so the derivative stays below ``1/sqrt(2e-6) ~ 707``.
* ``EXP_MAP_MAX = asinh(2**15)``: ``exp_map0`` caps ``sqrt(c)|v|`` there (as MERU does), so
  outputs stay finite in float32 and half precision.
* ``SMALL_R = 1e-3``: below this ``sqrt(c)|v|`` the maps use Taylor series of
  ``sinh(r)/r`` and ``asinh(r)/r`` instead of the 0/0 quotient.
* ``ANGLE_DENOM_EPS = 1e-8``: where the exterior angle's denominator ``|x| sqrt(u (u + 2))``
  is below this (``x = 0`` or ``x = y``: the angle is undefined) it is ``pi/2`` with a
  **zero** gradient with respect to every input (the rule at coincident points).

Coincident points: ``pairwise_dist``/``dist`` are 0 at ``x = y`` with gradient 0 (the
distance's subgradient at its minimum); ``oxy_angle(x, x)`` is ``pi/2`` with gradient 0.
Elsewhere no gradient exceeds what the clips above imply.

NaN: a NaN in an input row gives NaN in every output that depends on it (every clip and
branch is written so that NaN takes the computing branch), on every backend.

Half precision: fp16/bf16 inputs compute in float32 (``hypkern.checks.upcast``); outputs
are returned in the input dtype and are ``inf`` only where the float64 value itself exceeds
the dtype's range; gradients flowing back into half inputs (and a half curvature) that
exceed the range are **saturated** to the largest finite value (``±65504`` in fp16), never
``inf``.
"""
from __future__ import annotations

import math

import torch

from ..checks import upcast
from .constants import ANGLE_DENOM_EPS, ASIN_EPS, EXP_MAP_MAX, SMALL_R

__all__ = [
    "time_component",
    "pairwise_inner",
    "pairwise_dist",
    "dist",
    "exp_map0",
    "log_map0",
    "half_aperture",
    "oxy_angle",
]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _curv(curv, like: torch.Tensor) -> torch.Tensor:
    if isinstance(curv, torch.Tensor):
        return upcast(curv.to(device=like.device), like.dtype)
    return torch.tensor(float(curv), device=like.device, dtype=like.dtype)


def _safe_sqrt(q: torch.Tensor) -> torch.Tensor:
    """sqrt(q) for q >= 0, exactly 0 at 0, with gradient 0 (not inf/NaN) there."""
    tiny = torch.finfo(q.dtype).tiny
    # written so that NaN takes the sqrt branch: NaN in, NaN out
    return torch.where(q == 0, torch.zeros_like(q), torch.sqrt(torch.where(q < tiny, tiny, q)))


def time_component(x: torch.Tensor, curv) -> torch.Tensor:
    """x_t = sqrt(1/c + |x|^2), shape ``x.shape[:-1]``."""
    c = _curv(curv, x)
    return torch.sqrt(1.0 / c + (x * x).sum(-1))


def pairwise_inner(x: torch.Tensor, y: torch.Tensor, curv) -> torch.Tensor:
    """<x_i, y_j>_L = x_i . y_j - x_t,i y_t,j for (N, D) x (M, D) -> (N, M)."""
    out_dtype = x.dtype
    x, y = upcast(x), upcast(y, _compute_dtype(x))
    c = _curv(curv, x)
    xt, yt = time_component(x, c), time_component(y, c)
    return (x @ y.T - xt[:, None] * yt[None, :]).to(out_dtype)


def _acosh_1p(u: torch.Tensor) -> torch.Tensor:
    """acosh(1 + u) for u >= 0 as 2 asinh(sqrt(u/2)): exact near u = 0, where acosh(z) loses
    all precision; the gradient is 0 at u = 0 (points that coincide)."""
    return 2.0 * torch.asinh(_safe_sqrt(0.5 * u))


def time_excess(x: torch.Tensor, curv) -> torch.Tensor:
    """``x_t - 1/sqrt(c) = |x|^2 / (x_t + 1/sqrt(c))`` (N,): the time component's excess over
    the origin's, without the cancellation of the difference."""
    c = _curv(curv, x)
    return (x * x).sum(-1) / (time_component(x, c) + torch.rsqrt(c))


def pairwise_u(x: torch.Tensor, y: torch.Tensor, curv) -> torch.Tensor:
    """``u = -c<x_i, y_j>_L - 1 >= 0`` (N, M) in the cancellation-free pairwise form every
    backend uses: with the excesses ``e_x = x_t - 1/sqrt(c)`` (:func:`time_excess`),
    ``x_t y_t - 1/c = (e_x + e_y)/sqrt(c) + e_x e_y``, so

        u = c ((e_x,i + e_y,j)/sqrt(c) + e_x,i e_y,j - x_i . y_j),

    whose rounding is relative to the norms rather than to ``1/c`` (the naive
    ``c (x_t y_t - x.y) - 1`` loses everything near the origin). Clipped at 0."""
    c = _curv(curv, x)
    ex, ey = time_excess(x, c), time_excess(y, c)
    return torch.clamp(c * ((ex[:, None] + ey[None, :]) * torch.rsqrt(c) + ex[:, None] * ey[None, :] - x @ y.T),
                       min=0.0)


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, curv) -> torch.Tensor:
    """d(x_i, y_j) = acosh(-c <x_i, y_j>_L) / sqrt(c), (N, D) x (M, D) -> (N, M).

    ``u = -c<x,y>_L - 1`` from :func:`pairwise_u` (cancellation-free, clipped at 0) and the
    distance as ``2 asinh(sqrt(u/2)) / sqrt(c)``; its gradient is 0 where ``u`` is clipped
    (coincident points).
    """
    out_dtype = x.dtype
    x, y = upcast(x), upcast(y, _compute_dtype(x))
    c = _curv(curv, x)
    return (_acosh_1p(pairwise_u(x, y, c)) / torch.sqrt(c)).to(out_dtype)


def _half_sq_lorentz_gap(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor):
    """``(x_t, x_t - y_t, q)`` with ``q = |x-y|_L^2 = |x-y|^2 - (x_t-y_t)^2 >= 0``, from differences.

    ``x_t - y_t = (x-y).(x+y) / (x_t+y_t)``, so neither it nor ``q`` has the cancellation of
    subtracting the large time components; ``-c<x,y>_L - 1 = c q / 2``."""
    xt, yt = time_component(x, c), time_component(y, c)
    diff = x - y
    e = (diff * diff).sum(-1)
    gap = (diff * (x + y)).sum(-1) / (xt + yt)
    return xt, gap, torch.clamp(e - gap ** 2, min=0.0)


def dist(x: torch.Tensor, y: torch.Tensor, curv) -> torch.Tensor:
    """Row-wise distance d(x_i, y_i), (N, D) x (N, D) -> (N,).

    Computed from differences, so it stays exact for nearby points:
    ``|x-y|_L^2 = |x-y|^2 - (x_t-y_t)^2`` with ``x_t - y_t = (x-y).(x+y) / (x_t+y_t)``
    (clipped at 0), and ``d = 2 asinh(sqrt(c) |x-y|_L / 2) / sqrt(c)``.
    """
    out_dtype = x.dtype
    x, y = upcast(x), upcast(y, _compute_dtype(x))
    c = _curv(curv, x)
    _, _, q = _half_sq_lorentz_gap(x, y, c)
    sc = torch.sqrt(c)
    return (2.0 * torch.asinh(0.5 * sc * _safe_sqrt(q)) / sc).to(out_dtype)


def _sinhc(r: torch.Tensor) -> torch.Tensor:
    """sinh(min(r, EXP_MAP_MAX)) / r for r >= 0, with the series 1 + r^2/6 + r^4/120 below SMALL_R."""
    small = r < SMALL_R
    r_big = torch.where(small, torch.ones_like(r), r)
    big = torch.sinh(torch.clamp(r_big, max=EXP_MAP_MAX)) / r_big
    r2 = r * r
    series = 1.0 + r2 / 6.0 + r2 * r2 / 120.0
    return torch.where(small, series, big)


def _asinhc(r: torch.Tensor) -> torch.Tensor:
    """asinh(r) / r for r >= 0, with the series 1 - r^2/6 + 3 r^4/40 below SMALL_R."""
    small = r < SMALL_R
    r_big = torch.where(small, torch.ones_like(r), r)
    big = torch.asinh(r_big) / r_big
    r2 = r * r
    series = 1.0 - r2 / 6.0 + 3.0 * r2 * r2 / 40.0
    return torch.where(small, series, big)


def _norm(x: torch.Tensor) -> torch.Tensor:
    """|x| over the last dimension, with the gradient defined as 0 at x = 0."""
    return _safe_sqrt((x * x).sum(-1))


def exp_map0(v: torch.Tensor, curv) -> torch.Tensor:
    """Exponential map at the origin: sinh(sqrt(c)|v|) v / (sqrt(c)|v|), (N, D) -> (N, D).

    ``sqrt(c)|v|`` is capped at ``EXP_MAP_MAX = asinh(2^15)`` inside ``sinh`` (MERU's cap), so
    huge tangent vectors map to points of space norm ``2^15/sqrt(c)``; ``v = 0`` maps to 0.
    """
    out_dtype = v.dtype
    v = upcast(v)
    c = _curv(curv, v)
    r = torch.sqrt(c) * _norm(v)
    return (_sinhc(r)[..., None] * v).to(out_dtype)


def log_map0(x: torch.Tensor, curv) -> torch.Tensor:
    """Logarithmic map at the origin: asinh(sqrt(c)|x|) x / (sqrt(c)|x|), (N, D) -> (N, D).

    ``asinh(sqrt(c)|x|)`` equals MERU's ``acosh(sqrt(c) x_t)`` without its loss of precision
    near the origin; ``x = 0`` maps to 0.
    """
    out_dtype = x.dtype
    x = upcast(x)
    c = _curv(curv, x)
    r = torch.sqrt(c) * _norm(x)
    return (_asinhc(r)[..., None] * x).to(out_dtype)


def half_aperture(x: torch.Tensor, curv, min_radius: float = 0.1) -> torch.Tensor:
    """Half-aperture of the entailment cone at x: asin(2K / (sqrt(c)|x|)), (N, D) -> (N,).

    The argument is clipped at ``1 - ASIN_EPS`` (points within ``2K/sqrt(c)`` of the origin,
    ``x = 0`` included, get the widest cone ``asin(1 - ASIN_EPS) ~ pi/2``, with gradient 0).
    """
    out_dtype = x.dtype
    x = upcast(x)
    c = _curv(curv, x)
    limit = 1.0 - ASIN_EPS
    # |x| below 2K / (sqrt(c) (1 - eps)) is clipped before dividing, so nothing is infinite.
    n_min = 2.0 * min_radius / (torch.sqrt(c) * limit)
    nrm = _norm(x)
    n = torch.where(nrm < n_min, n_min, nrm)  # where(), not clamp: a NaN row keeps its gradient
    arg = 2.0 * min_radius / (torch.sqrt(c) * n)
    arg = torch.where(arg > limit, torch.full_like(arg, limit), arg)
    return torch.asin(arg).to(out_dtype)


def oxy_angle(x: torch.Tensor, y: torch.Tensor, curv) -> torch.Tensor:
    """Exterior angle at x of the triangle O-x-y, (N, D) x (N, D) -> (N,).

    ``acos((y_t + c<x,y>_L x_t) / (|x| sqrt((c<x,y>_L)^2 - 1)))``. With ``z = -c<x,y>_L``,
    ``u = z - 1 = c |x-y|_L^2 / 2`` is computed from differences (no cancellation), the root
    as ``sqrt(u (u + 2))``; the denominator is at least
    ``ANGLE_DENOM_EPS`` and the quotient is clipped into ``[-1 + ASIN_EPS, 1 - ASIN_EPS]``;
    where the raw denominator is below ``ANGLE_DENOM_EPS`` (``x = 0`` or ``x = y``) the angle
    is ``pi/2`` with zero gradient.
    """
    out_dtype = x.dtype
    x, y = upcast(x), upcast(y, _compute_dtype(x))
    c = _curv(curv, x)
    xt, gap, q = _half_sq_lorentz_gap(x, y, c)
    u = 0.5 * c * q  # z - 1 without the cancellation of c (x_t y_t - x.y) - 1
    numer = -gap - u * xt  # y_t - z x_t = (y_t - x_t) - (z - 1) x_t
    den_raw = _norm(x) * _safe_sqrt(u * (u + 2.0))
    denom = torch.clamp(den_raw, min=ANGLE_DENOM_EPS)
    # undefined (x = 0 or x = y): pi/2 with zero gradient, not the clip's artefact
    ratio = torch.where(den_raw < ANGLE_DENOM_EPS, torch.zeros_like(numer), numer / denom)  # NaN: computed
    arg = torch.clamp(ratio, min=-1.0 + ASIN_EPS, max=1.0 - ASIN_EPS)
    return torch.acos(arg).to(out_dtype)


# Keep the documented constant visible to readers of this module.
assert abs(EXP_MAP_MAX - math.asinh(2.0 ** 15)) < 1e-12
