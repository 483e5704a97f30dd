"""Scalar math for the Triton kernels, written only from core ``tl`` ops.

Triton's interpreter (``TRITON_INTERPRET=1``) has no libdevice, so ``acosh``, ``asinh``,
``asin``, ``acos``, ``sinh``, ``cosh``, ``log1p`` and ``expm1`` are built here from ``exp``,
``log``, ``sqrt`` and ``where``. The same functions run in the interpreter and on the GPU.
Each one works elementwise on a block of float32 or float64 and returns the same dtype;
the float64 versions are accurate to float64 rounding (longer series, chosen at compile
time from the argument's dtype).

Stable names (the fused-loss kernels import them; keep them):

==================  ===========================================================================
``log1p(x)``        ``log(1 + x)``, ``x > -1`` (Goldberg: ``log(w) * x / (w - 1)``, ``w = 1 + x``)
``expm1(x)``        ``exp(x) - 1`` (Kahan: ``(u - 1) * x / log(u)``, ``u = exp(x)``, for ``|x| <= 1/2``)
``sinh``/``cosh``   via ``expm1`` near 0, ``exp`` elsewhere
``asinh(x)``        ``sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2)))``, ``log(2|x|)`` above 1e10
``acosh_1p(u)``     ``acosh(1 + u) = 2 asinh(sqrt(u / 2))`` for ``u >= 0``: exact as ``u -> 0``
``acosh(z)``        ``acosh_1p(max(z - 1, 0))``
``acosh_1p_d(u)``   ``d/du acosh_1p = 1 / sqrt(u (u + 2))``, **0** where ``u / 2 < tiny``
                    (coincident points: the reference's gradient there is 0, not inf)
``asin``/``acos``   Taylor series on ``|t| <= 1/2`` plus ``asin(x) = pi/2 - 2 asin(sqrt((1-x)/2))``
``asin_d(x)``       ``1 / sqrt((1 - x)(1 + x))`` (callers clip ``x`` first)
``sinhc(r)``        ``sinh(min(r, EXP_MAP_MAX)) / r``, series ``1 + r^2/6 + r^4/120`` below SMALL_R
``sinhc_d(r)``      ``sinhc'(r) / r`` (series below 1/2, ``-sinh(EXP_MAP_MAX) / r^3`` above the cap)
``asinhc(r)``       ``asinh(r) / r``, series ``1 - r^2/6 + 3 r^4/40`` below SMALL_R
``asinhc_d(r)``     ``asinhc'(r) / r`` (series below 0.1)
``min_c``/``max_c`` ``min(x, c)``/``max(x, c)`` with the constant ``c`` at ``x``'s precision
``tiny_like(x)``    smallest normal number of ``x``'s dtype (the reference's ``_safe_sqrt`` floor)
==================  ===========================================================================

Clipping constants of ``hypkern/lorentz/constants.py`` are module-level ``tl.constexpr``
values here (``ASIN_EPS``, ``EXP_MAP_MAX``, ``SMALL_R``, ``ANGLE_DENOM_EPS``), so every kernel
clips exactly where the reference does. Pitfalls for float64 kernels (both checked by the
tests): ``tl.minimum``/``tl.maximum`` with a float scalar, and arithmetic between two
constexprs inside a kernel, round the constant to float32; use ``min_c``/``max_c`` and the
precomputed ``ASIN_HI``/``ASIN_LO`` (or host-computed constexprs) instead.
"""
from __future__ import annotations

import math

import triton
import triton.language as tl

from ...lorentz import constants as _C

ASIN_EPS = tl.constexpr(_C.ASIN_EPS)
#: ``1 - ASIN_EPS`` and ``-1 + ASIN_EPS``, precomputed: arithmetic between constexprs inside a
#: kernel is rounded to float32 by the interpreter, so kernels use these instead.
ASIN_HI = tl.constexpr(1.0 - _C.ASIN_EPS)
ASIN_LO = tl.constexpr(-1.0 + _C.ASIN_EPS)
EXP_MAP_MAX = tl.constexpr(_C.EXP_MAP_MAX)
NEG_SINH_EXP_MAP_MAX = tl.constexpr(-math.sinh(_C.EXP_MAP_MAX))
SMALL_R = tl.constexpr(_C.SMALL_R)
ANGLE_DENOM_EPS = tl.constexpr(_C.ANGLE_DENOM_EPS)
PI = tl.constexpr(math.pi)
HALF_PI = tl.constexpr(math.pi / 2)
LN2 = tl.constexpr(math.log(2.0))
TINY_F32 = tl.constexpr(1.1754943508222875e-38)
TINY_F64 = tl.constexpr(2.2250738585072014e-308)

__all__ = [
    "ASIN_EPS", "ASIN_HI", "ASIN_LO", "EXP_MAP_MAX", "SMALL_R", "ANGLE_DENOM_EPS", "PI", "HALF_PI",
    "log1p", "expm1", "sinh", "cosh", "asinh", "acosh", "acosh_1p", "acosh_1p_d",
    "asin", "acos", "asin_d", "sinhc", "sinhc_d", "asinhc", "asinhc_d", "tiny_like", "min_c", "max_c",
    "maxnan", "minnan",
]


@triton.jit
def maxnan(x, y):
    """max(x, y) that propagates a NaN in ``x`` (``tl.maximum`` on a GPU returns the other
    operand: NaN in must be NaN out)."""
    return tl.where(x < y, y, x)


@triton.jit
def minnan(x, y):
    """min(x, y) that propagates a NaN in ``x`` (see ``maxnan``)."""
    return tl.where(x > y, y, x)


@triton.jit
def min_c(x, c: tl.constexpr):
    """min(x, c) for a constant c kept at x's precision (``tl.minimum`` with a scalar, like
    any non-constexpr float argument, rounds it to float32 first, which float64 kernels cannot
    afford; ``c`` must be a compile-time constant)."""
    return tl.where(x > c, c, x)  # NaN in x: x


@triton.jit
def max_c(x, c: tl.constexpr):
    """max(x, c) for a constant c kept at x's precision (see ``min_c``); NaN propagates."""
    return tl.where(x < c, c, x)


@triton.jit
def tiny_like(x):
    """Smallest positive normal number of x's dtype, as a block like x."""
    if x.dtype == tl.float64:
        t = tl.full(x.shape, TINY_F64, tl.float64)
    else:
        t = tl.full(x.shape, TINY_F32, tl.float32)
    return t


@triton.jit
def log1p(x):
    """log(1 + x) for x > -1, accurate for small x: log(w) * x / (w - 1) with w = 1 + x
    (the rounding error of w cancels in the quotient)."""
    w = 1.0 + x
    d = w - 1.0
    d_safe = tl.where(d == 0.0, 1.0, d)
    return tl.where(d == 0.0, x, tl.log(w) * (x / d_safe))


@triton.jit
def expm1(x):
    """exp(x) - 1, accurate for small x: for |x| <= 1/2, (u - 1) * x / log(u) with u = exp(x)."""
    u = tl.exp(minnan(maxnan(x, -0.5), 0.5))
    d = u - 1.0
    lu = tl.log(u)
    lu_safe = tl.where(lu == 0.0, 1.0, lu)
    small = tl.where(d == 0.0, x, d * (x / lu_safe))
    return tl.where(tl.abs(x) <= 0.5, small, tl.exp(x) - 1.0)


@triton.jit
def sinh(x):
    """sinh(x): (em + em / (em + 1)) / 2 with em = expm1(|x|) for |x| < 1, (e - 1/e) / 2 above."""
    ax = tl.abs(x)
    em = expm1(minnan(ax, 1.0))
    small = 0.5 * (em + em / (em + 1.0))
    e = tl.exp(ax)
    big = 0.5 * (e - 1.0 / e)
    s = tl.where(ax < 1.0, small, big)
    return tl.where(x < 0.0, -s, s)


@triton.jit
def cosh(x):
    """cosh(x) = (e + 1/e) / 2, e = exp(|x|)."""
    e = tl.exp(tl.abs(x))
    return 0.5 * (e + 1.0 / e)


@triton.jit
def asinh(x):
    """asinh(x) = sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))); log(2|x|) for |x| > 1e10."""
    ax = tl.abs(x)
    am = minnan(ax, 1e10)
    a2 = am * am
    mid = log1p(am + a2 / (1.0 + tl.sqrt(1.0 + a2)))
    big = tl.log(maxnan(ax, 1e10)) + LN2
    s = tl.where(ax > 1e10, big, mid)
    return tl.where(x < 0.0, -s, s)


@triton.jit
def acosh_1p(u):
    """acosh(1 + u) = 2 asinh(sqrt(u / 2)) for u >= 0 (callers clip u at 0); exact as u -> 0."""
    return 2.0 * asinh(tl.sqrt(0.5 * u))


@triton.jit
def acosh(z):
    """acosh(z) for z >= 1 (z below 1 is clipped to 1, giving 0)."""
    return acosh_1p(maxnan(z - 1.0, 0.0))


@triton.jit
def acosh_1p_d(u):
    """d/du acosh(1 + u) = 1 / sqrt(u (u + 2)); 0 where u / 2 < tiny (as the reference, whose
    sqrt is floored at the smallest normal number there)."""
    ok = 0.5 * u >= tiny_like(u)
    us = tl.where(ok, u, 1.0)
    return tl.where(ok, 1.0 / (tl.sqrt(us) * tl.sqrt(us + 2.0)), 0.0)


@triton.jit
def _asin_series(t):
    """asin(t) for |t| <= 1/2: t * sum_k (2k)! / (4^k k!^2 (2k+1)) t^(2k)."""
    z = t * t
    if t.dtype == tl.float64:
        p = 0.0024894486782468836
        p = p * z + 0.00265787063820729
        p = p * z + 0.002846178401108942
        p = p * z + 0.0030578216492580306
        p = p * z + 0.003297059503473485
        p = p * z + 0.0035692053938259347
        p = p * z + 0.003880964558837669
        p = p * z + 0.004240907093679363
        p = p * z + 0.004660143486915096
        p = p * z + 0.005153309682319905
        p = p * z + 0.005740037670841924
        p = p * z + 0.006447210311889649
        p = p * z + 0.0073125258735988454
        p = p * z + 0.008390335809616815
        p = p * z + 0.009761609529194078
        p = p * z + 0.011551800896139705
        p = p * z + 0.01396484375
        p = p * z + 0.017352764423076924
        p = p * z + 0.022372159090909092
        p = p * z + 0.030381944444444444
        p = p * z + 0.044642857142857144
        p = p * z + 0.075
        p = p * z + 0.16666666666666666
        p = p * z + 1.0
    else:
        p = 0.009761609529194078 * z + 0.011551800896139705
        p = p * z + 0.01396484375
        p = p * z + 0.017352764423076924
        p = p * z + 0.022372159090909092
        p = p * z + 0.030381944444444444
        p = p * z + 0.044642857142857144
        p = p * z + 0.075
        p = p * z + 0.16666666666666666
        p = p * z + 1.0
    return t * p


@triton.jit
def _asin_reduced(ax):
    """For 0 <= ax <= 1: (t, series(t), big) with t = ax if ax <= 1/2 else sqrt((1 - ax) / 2)."""
    big = ax > 0.5
    t = tl.where(big, tl.sqrt(maxnan(0.5 * (1.0 - ax), 0.0)), ax)
    return _asin_series(t), big


@triton.jit
def asin(x):
    """asin(x) for |x| <= 1 (clipped there): series on |x| <= 1/2, else pi/2 - 2 asin(sqrt((1-|x|)/2))."""
    ax = minnan(tl.abs(x), 1.0)
    s, big = _asin_reduced(ax)
    r = tl.where(big, HALF_PI - 2.0 * s, s)
    return tl.where(x < 0.0, -r, r)


@triton.jit
def acos(x):
    """acos(x) for |x| <= 1 (clipped there): pi/2 - asin(x) on |x| <= 1/2, 2 asin(sqrt((1-x)/2))
    for x > 1/2, pi - 2 asin(sqrt((1+x)/2)) for x < -1/2."""
    ax = minnan(tl.abs(x), 1.0)
    s, big = _asin_reduced(ax)
    mid = tl.where(x < 0.0, HALF_PI + s, HALF_PI - s)
    far = tl.where(x < 0.0, PI - 2.0 * s, 2.0 * s)
    return tl.where(big, far, mid)


@triton.jit
def asin_d(x):
    """d/dx asin(x) = 1 / sqrt((1 - x)(1 + x)); callers clip x into (-1, 1) first."""
    return 1.0 / tl.sqrt((1.0 - x) * (1.0 + x))


@triton.jit
def sinhc(r):
    """sinh(min(r, EXP_MAP_MAX)) / r for r >= 0; the series 1 + r^2/6 + r^4/120 below SMALL_R."""
    small = r < SMALL_R
    rb = tl.where(small, 1.0, r)
    big = sinh(min_c(rb, EXP_MAP_MAX)) / rb
    r2 = r * r
    series = 1.0 + r2 / 6.0 + r2 * r2 / 120.0
    return tl.where(small, series, big)


@triton.jit
def sinhc_d(r):
    """sinhc'(r) / r for r >= 0: (r cosh r - sinh r) / r^3, its series
    sum_j 2(j+1) r^(2j) / (2j+3)! below 1/2, and -sinh(EXP_MAP_MAX) / r^3 above the cap
    (where sinhc is sinh(EXP_MAP_MAX) / r)."""
    z = r * r
    p = 3.9145882126782523e-19 * z + 1.4797143443923793e-16
    p = p * z + 4.498331606952833e-14
    p = p * z + 1.0706029224547743e-11
    p = p * z + 1.9270852604185937e-09
    p = p * z + 2.505210838544172e-07
    p = p * z + 2.2045855379188714e-05
    p = p * z + 0.0011904761904761906
    p = p * z + 0.03333333333333333
    p = p * z + 0.3333333333333333
    rm = min_c(maxnan(r, 0.5), EXP_MAP_MAX)
    mid = (rm * cosh(rm) - sinh(rm)) / (rm * rm * rm)
    rb = max_c(r, EXP_MAP_MAX)
    big = NEG_SINH_EXP_MAP_MAX / (rb * rb * rb)
    return tl.where(r < 0.5, p, tl.where(r > EXP_MAP_MAX, big, mid))


@triton.jit
def asinhc(r):
    """asinh(r) / r for r >= 0; the series 1 - r^2/6 + 3 r^4/40 below SMALL_R."""
    small = r < SMALL_R
    rb = tl.where(small, 1.0, r)
    big = asinh(rb) / rb
    r2 = r * r
    series = 1.0 - r2 / 6.0 + 3.0 * r2 * r2 / 40.0
    return tl.where(small, series, big)


@triton.jit
def asinhc_d(r):
    """asinhc'(r) / r = (r / sqrt(1 + r^2) - asinh r) / r^3 for r >= 0; its series
    sum_{k>=1} 2k (-1)^k (2k)! / (4^k k!^2 (2k+1)) r^(2k-2) below 0.1."""
    z = r * r
    p = -0.17570897152549342 * z + 0.18482881433823528
    p = p * z - 0.1955078125
    p = p * z + 0.20823317307692307
    p = p * z - 0.2237215909090909
    p = p * z + 0.24305555555555555
    p = p * z - 0.26785714285714285
    p = p * z + 0.3
    p = p * z - 0.3333333333333333
    rm = maxnan(r, 0.1)
    mid = (1.0 / tl.sqrt(1.0 + rm * rm) - asinh(rm) / rm) / (rm * rm)
    return tl.where(r < 0.1, p, mid)
