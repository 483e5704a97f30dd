"""Triton kernels for the entailment-cone quantities (row-wise).

* ``half_aperture(x) = asin(2K / (sqrt(c) n))``, ``n = max(|x|, n_min)``,
  ``n_min = 2K / (sqrt(c) (1 - ASIN_EPS))``, argument clipped at ``1 - ASIN_EPS``: points
  within ``n_min`` of the origin (``x = 0`` included) get ``asin(1 - ASIN_EPS)`` and
  gradient 0 (w.r.t. ``x`` and ``c``).
* ``oxy_angle(x, y)``: from the per-row scalars ``a = |x|^2``, ``b = |y|^2``,
  ``e = |x - y|^2``, ``f = (x - y).(x + y)``: ``z = c (x_t y_t - x.y)``, computed as
  ``z - 1 = c (e - (f / (x_t + y_t))^2) / 2`` (no cancellation), ``u = max(z - 1, 0)``,
  ``arg = (y_t - z x_t) / max(sqrt(a) sqrt(u (u + 2)), ANGLE_DENOM_EPS)`` clipped into
  ``[-1 + ASIN_EPS, 1 - ASIN_EPS]``, angle ``acos(arg)``. Degenerate ``x = 0`` or ``x = y``
  give ``pi/2``-ish with finite gradients; every clip zeroes the gradient through it, exactly
  as in the reference. Backward: the scalar partials ``F_a, F_b, F_e, F_f, F_c``, then
  ``dx = 2 F_e (x - y) + 2 (F_f + F_a) x``, ``dy = -2 F_e (x - y) + 2 (F_b - F_f) y``.
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from ...lorentz.constants import ASIN_EPS
from . import _math as M
from .dist import pair_scalars, store_pair_grads
from ._common import compute_dtype, curv_operand, finish_curv_grad, row_config, tl_compute


# ----------------------------------------------------------------------------- half-aperture

@triton.jit
def _half_aperture_core(a, c, TWO_K: tl.constexpr, TWO_K_HI: tl.constexpr):
    """(value, d value / d|x| / |x|, d value / dc) per row; TWO_K = 2K and
    TWO_K_HI = 2K / (1 - ASIN_EPS) come from the host (exact in float64)."""
    sc = tl.sqrt(c)
    nrm = tl.sqrt(a)
    n_min = TWO_K_HI / sc
    inside = nrm > n_min
    nn = tl.where(nrm <= n_min, n_min, nrm)  # NaN: kept (NaN in, NaN out)
    arg = M.min_c(TWO_K / (sc * nn), M.ASIN_HI)
    val = M.asin(arg)
    dval_darg = tl.where(inside, M.asin_d(arg), 0.0)
    d_dn_over_n = -dval_darg * arg / (nn * nn)
    d_dc = -dval_darg * arg * (0.5 / c)
    return val, d_dn_over_n, d_dc


@triton.jit
def _row_sq(X, base, rmask, D, CDT: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    a = tl.zeros([BR], CDT)
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        x = tl.load(X + base[:, None] + ks[None, :], mask=m, other=0.0).to(CDT)
        a += tl.sum(x * x, 1)
    return a


@triton.jit
def _half_aperture_fwd_kernel(X, CURV, OUT, N, D, TWO_K: tl.constexpr, TWO_K_HI: tl.constexpr, CDT: tl.constexpr,
                              BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    a = _row_sq(X, rows.to(tl.int64) * D, rmask, D, CDT, BR, BD)
    c = tl.load(CURV).to(CDT)
    val, _, _ = _half_aperture_core(a, c, TWO_K, TWO_K_HI)
    tl.store(OUT + rows, val.to(OUT.dtype.element_ty), mask=rmask)


@triton.jit
def _half_aperture_bwd_kernel(X, CURV, G, DX, CPART, N, D, TWO_K: tl.constexpr, TWO_K_HI: tl.constexpr, CDT: tl.constexpr,
                              BR: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    rmask = rows < N
    base = rows.to(tl.int64) * D
    a = _row_sq(X, base, rmask, D, CDT, BR, BD)
    c = tl.load(CURV).to(CDT)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(CDT)
    _, dn, dc = _half_aperture_core(a, c, TWO_K, TWO_K_HI)
    tl.store(CPART + pid, tl.sum(g * dc, 0))
    coef = g * dn
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        ptr = base[:, None] + ks[None, :]
        x = tl.load(X + ptr, mask=m, other=0.0).to(CDT)
        tl.store(DX + ptr, (coef[:, None] * x).to(DX.dtype.element_ty), mask=m)


def _k_consts(min_radius):
    two_k = 2.0 * float(min_radius)
    return dict(TWO_K=two_k, TWO_K_HI=two_k / (1.0 - ASIN_EPS))


def half_aperture_fwd(x, curv, min_radius):
    """asin(2K / (sqrt(c)|x|)), argument clipped at 1 - ASIN_EPS."""
    n, d = x.shape
    out = torch.empty(n, device=x.device, dtype=x.dtype)
    cfg = row_config(d)
    _half_aperture_fwd_kernel[(triton.cdiv(n, cfg["BR"]),)](
        x, curv_operand(curv, x), out, n, d, **_k_consts(min_radius), CDT=tl_compute(x.dtype), **cfg)
    return out


def half_aperture_bwd(grad, x, curv, min_radius):
    n, d = x.shape
    cfg = row_config(d)
    grid = (triton.cdiv(n, cfg["BR"]),)
    dx = torch.empty_like(x)
    cpart = torch.empty(grid[0], device=x.device, dtype=compute_dtype(x.dtype))
    _half_aperture_bwd_kernel[grid](x, curv_operand(curv, x), grad, dx, cpart, n, d,
                                    **_k_consts(min_radius), CDT=tl_compute(x.dtype), **cfg)
    return dx, finish_curv_grad(cpart, curv)


# ----------------------------------------------------------------------------- oxy_angle

@triton.jit
def _oxy_core(a, b, e, f, c, g, WITH_GRAD: tl.constexpr):
    """Angle and (if WITH_GRAD) grad * (d/da, d/db, d/de, d/df, d/dc) of it, per row.

    ``z - 1 = c (x_t y_t - p) - 1`` is computed without cancellation as ``c q / 2`` with
    ``q = e - (f / s)^2``, ``s = x_t + y_t`` (the row-wise distance's ``|x - y|_L^2``), and the
    numerator ``y_t - z x_t`` as ``-f / s - (z - 1) x_t``: the same numbers as the
    reference's formula, without its rounding for nearby or collinear points."""
    inv_c = 1.0 / c
    xt = tl.sqrt(inv_c + a)
    yt = tl.sqrt(inv_c + b)
    s = xt + yt
    gg = f / s                             # x_t - y_t
    uraw = 0.5 * c * (e - gg * gg)         # z - 1
    u_ok = uraw >= 0.0
    u = tl.where(u_ok, uraw, 0.0)
    numer = -gg - u * xt                   # y_t - z x_t, with z - 1 clipped at 0 as the reference
    nx = tl.sqrt(a)
    q = u * (u + 2.0)
    q_ok = q >= M.tiny_like(q)
    sq = tl.sqrt(M.maxnan(q, M.tiny_like(q)))
    den_raw = nx * sq
    den_ok = den_raw >= M.ANGLE_DENOM_EPS
    den = M.max_c(den_raw, M.ANGLE_DENOM_EPS)
    # undefined (x = 0 or x = y): pi/2 with zero gradient (the rule at coincident points)
    ratio = tl.where(den_raw < M.ANGLE_DENOM_EPS, 0.0, numer / den)  # NaN: computed
    arg_ok = den_ok & (ratio >= M.ASIN_LO) & (ratio <= M.ASIN_HI)
    arg = M.min_c(M.max_c(ratio, M.ASIN_LO), M.ASIN_HI)
    val = M.acos(arg)
    if WITH_GRAD:
        g_arg = tl.where(arg_ok, -g * M.asin_d(arg), 0.0)
        g_num = g_arg / den
        g_den = tl.where(den_ok, -g_arg * arg / den, 0.0)
        g_nx = g_den * sq
        sq_safe = tl.where(q_ok, sq, 1.0)
        g_u = tl.where(q_ok & u_ok, g_den * nx * (u + 1.0) / sq_safe, 0.0)
        g_uraw = tl.where(u_ok, g_u - g_num * xt, 0.0)
        g_xt = -g_num * u
        g_gg = -g_num - g_uraw * c * gg
        g_e = 0.5 * c * g_uraw
        g_f = g_gg / s
        g_s = -g_gg * gg / s
        g_xt += g_s
        g_yt = g_s
        nx_safe = tl.where(a > 0.0, nx, 1.0)
        g_a = g_xt / (2.0 * xt) + tl.where(a > 0.0, g_nx / (2.0 * nx_safe), 0.0)
        g_b = g_yt / (2.0 * yt)
        g_c = 0.5 * g_uraw * (e - gg * gg) - (g_xt / xt + g_yt / yt) * (0.5 * inv_c * inv_c)
    else:
        g_a = val
        g_b = val
        g_e = val
        g_f = val
        g_c = val
    return val, g_a, g_b, g_e, g_f, g_c


@triton.jit
def _oxy_fwd_kernel(X, Y, CURV, OUT, N, D, CDT: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    a, b, e, f = pair_scalars(X, Y, rows.to(tl.int64) * D, rmask, D, CDT, BD, BR)
    c = tl.load(CURV).to(CDT)
    val, _, _, _, _, _ = _oxy_core(a, b, e, f, c, a, False)
    tl.store(OUT + rows, val.to(OUT.dtype.element_ty), mask=rmask)


@triton.jit
def _oxy_bwd_kernel(X, Y, CURV, G, DX, DY, CPART, N, D, CDT: tl.constexpr,
                    BR: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    rmask = rows < N
    base = rows.to(tl.int64) * D
    a, b, e, f = pair_scalars(X, Y, base, rmask, D, CDT, BD, BR)
    c = tl.load(CURV).to(CDT)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(CDT)
    _, g_a, g_b, g_e, g_f, g_c = _oxy_core(a, b, e, f, c, g, True)
    tl.store(CPART + pid, tl.sum(tl.where(rmask, g_c, 0.0), 0))
    store_pair_grads(X, Y, DX, DY, base, rmask, D, 2.0 * g_e, 2.0 * (g_f + g_a), 2.0 * (g_b - g_f), CDT, BD)


def oxy_angle_fwd(x, y, curv):
    """Exterior angle at x of the triangle O-x-y (clipping in the module docstring)."""
    n, d = x.shape
    out = torch.empty(n, device=x.device, dtype=x.dtype)
    cfg = row_config(d)
    _oxy_fwd_kernel[(triton.cdiv(n, cfg["BR"]),)](x, y, curv_operand(curv, x), out, n, d,
                                                  CDT=tl_compute(x.dtype), **cfg)
    return out


def oxy_angle_bwd(grad, x, y, curv):
    n, d = x.shape
    cfg = row_config(d)
    grid = (triton.cdiv(n, cfg["BR"]),)
    dx, dy = torch.empty_like(x), torch.empty_like(y)
    cpart = torch.empty(grid[0], device=x.device, dtype=compute_dtype(x.dtype))
    _oxy_bwd_kernel[grid](x, y, curv_operand(curv, x), grad, dx, dy, cpart, n, d,
                          CDT=tl_compute(x.dtype), **cfg)
    return dx, dy, finish_curv_grad(cpart, curv)


# ----------------------------------------------------------------------------- entailment

@triton.jit
def _entail_core(a, b, e, f, c, g, TWO_K: tl.constexpr, TWO_K_HI: tl.constexpr, SIGN: tl.constexpr,
                 MARGIN: tl.constexpr, WITH_GRAD: tl.constexpr):
    """Per row ``relu(SIGN (oxy_angle - half_aperture) + MARGIN)`` from the two cone cores and,
    with WITH_GRAD, ``g *`` its partials: (loss, d/da, d/db, d/de, d/df, d/dc, d_aperture/d|x|/|x|).
    The clipping is exactly that of ``oxy_angle`` and ``half_aperture`` (the cores are theirs)."""
    aper, dn_over_n, dc_aper = _half_aperture_core(a, c, TWO_K, TWO_K_HI)
    # The angle's partials are linear in the upstream gradient: take them for 1 and scale.
    angle, u_a, u_b, u_e, u_f, u_c = _oxy_core(a, b, e, f, c, tl.full(a.shape, 1.0, a.dtype), WITH_GRAD)
    val = SIGN * (angle - aper) + MARGIN
    loss = M.maxnan(val, 0.0)
    if WITH_GRAD:
        g_val = tl.where(val > 0.0, g * SIGN, 0.0)      # d loss / d angle = -d loss / d aperture
        g_a = g_val * u_a
        g_b = g_val * u_b
        g_e = g_val * u_e
        g_f = g_val * u_f
        g_c = g_val * (u_c - dc_aper)
        g_n = -g_val * dn_over_n
    else:
        g_a = loss
        g_b = loss
        g_e = loss
        g_f = loss
        g_c = loss
        g_n = loss
    return loss, g_a, g_b, g_e, g_f, g_c, g_n


@triton.jit
def _entail_fwd_kernel(X, Y, CURV, OUT, N, D, TWO_K: tl.constexpr, TWO_K_HI: tl.constexpr, SIGN: tl.constexpr,
                       MARGIN: tl.constexpr, CDT: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    a, b, e, f = pair_scalars(X, Y, rows.to(tl.int64) * D, rmask, D, CDT, BD, BR)
    c = tl.load(CURV).to(CDT)
    loss, _, _, _, _, _, _ = _entail_core(a, b, e, f, c, a, TWO_K, TWO_K_HI, SIGN, MARGIN, False)
    tl.store(OUT + rows, loss, mask=rmask)


@triton.jit
def _entail_bwd_kernel(X, Y, CURV, G, DX, DY, CPART, N, D, TWO_K: tl.constexpr, TWO_K_HI: tl.constexpr,
                       SIGN: tl.constexpr, MARGIN: tl.constexpr, CDT: tl.constexpr, BR: tl.constexpr,
                       BD: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    rmask = rows < N
    base = rows.to(tl.int64) * D
    a, b, e, f = pair_scalars(X, Y, base, rmask, D, CDT, BD, BR)
    c = tl.load(CURV).to(CDT)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(CDT)
    _, g_a, g_b, g_e, g_f, g_c, g_n = _entail_core(a, b, e, f, c, g, TWO_K, TWO_K_HI, SIGN, MARGIN, True)
    tl.store(CPART + pid, tl.sum(tl.where(rmask, g_c, 0.0), 0))
    store_pair_grads(X, Y, DX, DY, base, rmask, D, 2.0 * g_e, 2.0 * (g_f + g_a) + g_n, 2.0 * (g_b - g_f),
                     CDT, BD)


def _entail_consts(min_radius, sign, margin):
    return dict(**_k_consts(min_radius), SIGN=float(sign), MARGIN=float(margin))


def entailment_fwd(text, image, curv, min_radius, sign, margin):
    """Per-row ``relu(sign (oxy_angle(text, image) - half_aperture(text)) + margin)`` in the
    compute dtype (float32; float64 for float64 inputs)."""
    n, d = text.shape
    out = torch.empty(n, device=text.device, dtype=compute_dtype(text.dtype))
    cfg = row_config(d)
    _entail_fwd_kernel[(triton.cdiv(n, cfg["BR"]),)](
        text, image, curv_operand(curv, text), out, n, d, **_entail_consts(min_radius, sign, margin),
        CDT=tl_compute(text.dtype), **cfg)
    return out


def entailment_bwd(grad, text, image, curv, min_radius, sign, margin):
    """Gradients (text, image, curv) of ``sum(grad * entailment_fwd(...))``."""
    n, d = text.shape
    cfg = row_config(d)
    grid = (triton.cdiv(n, cfg["BR"]),)
    dx, dy = torch.empty_like(text), torch.empty_like(image)
    cpart = torch.empty(grid[0], device=text.device, dtype=compute_dtype(text.dtype))
    _entail_bwd_kernel[grid](text, image, curv_operand(curv, text), grad, dx, dy, cpart, n, d,
                             **_entail_consts(min_radius, sign, margin), CDT=tl_compute(text.dtype), **cfg)
    return dx, dy, finish_curv_grad(cpart, curv)
