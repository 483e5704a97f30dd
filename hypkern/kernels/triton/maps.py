"""Triton kernels for the exponential and logarithmic maps at the origin (row-wise).

With ``n = |v|`` and ``r = sqrt(c) n`` both maps are ``out = phi(r) v``:

* ``exp_map0``: ``phi = sinhc(r) = sinh(min(r, EXP_MAP_MAX)) / r`` (MERU's cap
  ``asinh(2^15)``; series below ``SMALL_R``; ``v = 0`` maps to 0);
* ``log_map0``: ``phi = asinhc(r) = asinh(r) / r`` (series below ``SMALL_R``).

Backward, from the per-row scalars ``n^2`` and ``s = v . grad`` (one pass, then a second pass
that writes the gradient): ``dv = phi(r) grad + c (phi'(r)/r) s v`` and
``dc = sum_rows (phi'(r)/r) s r^2 / (2c)``; ``phi'(r)/r`` is ``sinhc_d``/``asinhc_d`` of
``_math`` (stable series near 0, so ``v = 0`` has gradient ``phi(0) grad``).
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from . import _math as M
from ._common import compute_dtype, curv_operand, finish_curv_grad, row_config, tl_compute


@triton.jit
def _phi(r, LOG: tl.constexpr):
    if LOG:
        out = M.asinhc(r)
    else:
        out = M.sinhc(r)
    return out


@triton.jit
def _phi_d(r, LOG: tl.constexpr):
    if LOG:
        out = M.asinhc_d(r)
    else:
        out = M.sinhc_d(r)
    return out


@triton.jit
def _map_fwd_kernel(V, CURV, OUT, N, D, LOG: tl.constexpr, CDT: tl.constexpr,
                    BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    base = rows.to(tl.int64) * D
    a = tl.zeros([BR], CDT)
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        v = tl.load(V + base[:, None] + ks[None, :], mask=m, other=0.0).to(CDT)
        a += tl.sum(v * v, 1)
    c = tl.load(CURV).to(CDT)
    r = tl.sqrt(c) * tl.sqrt(a)
    phi = _phi(r, LOG)
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        ptr = base[:, None] + ks[None, :]
        v = tl.load(V + ptr, mask=m, other=0.0).to(CDT)
        tl.store(OUT + ptr, (phi[:, None] * v).to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _map_bwd_kernel(V, CURV, G, DV, CPART, N, D, LOG: tl.constexpr, CDT: tl.constexpr,
                    BR: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    rmask = rows < N
    base = rows.to(tl.int64) * D
    a = tl.zeros([BR], CDT)
    s = tl.zeros([BR], CDT)
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        ptr = base[:, None] + ks[None, :]
        v = tl.load(V + ptr, mask=m, other=0.0).to(CDT)
        g = tl.load(G + ptr, mask=m, other=0.0).to(CDT)
        a += tl.sum(v * v, 1)
        s += tl.sum(v * g, 1)
    c = tl.load(CURV).to(CDT)
    r = tl.sqrt(c) * tl.sqrt(a)
    phi = _phi(r, LOG)
    hd = _phi_d(r, LOG)
    coef = c * hd * s
    tl.store(CPART + pid, tl.sum(tl.where(rmask, hd * s * r * r * (0.5 / c), 0.0), 0))
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        ptr = base[:, None] + ks[None, :]
        v = tl.load(V + ptr, mask=m, other=0.0).to(CDT)
        g = tl.load(G + ptr, mask=m, other=0.0).to(CDT)
        dv = phi[:, None] * g + coef[:, None] * v
        tl.store(DV + ptr, dv.to(DV.dtype.element_ty), mask=m)


def _fwd(v, curv, log: bool):
    n, d = v.shape
    out = torch.empty_like(v)
    cfg = row_config(d)
    _map_fwd_kernel[(triton.cdiv(n, cfg["BR"]),)](v, curv_operand(curv, v), out, n, d, LOG=log,
                                                  CDT=tl_compute(v.dtype), **cfg)
    return out


def _bwd(grad, v, curv, log: bool):
    n, d = v.shape
    cfg = row_config(d)
    grid = (triton.cdiv(n, cfg["BR"]),)
    dv = torch.empty_like(v)
    cpart = torch.empty(grid[0], device=v.device, dtype=compute_dtype(v.dtype))
    _map_bwd_kernel[grid](v, curv_operand(curv, v), grad, dv, cpart, n, d, LOG=log,
                          CDT=tl_compute(v.dtype), **cfg)
    return dv, finish_curv_grad(cpart, curv)


def exp_map0_fwd(v, curv):
    """sinh(sqrt(c)|v|) v / (sqrt(c)|v|), sqrt(c)|v| capped at asinh(2^15)."""
    return _fwd(v, curv, log=False)


def exp_map0_bwd(grad, v, curv):
    return _bwd(grad, v, curv, log=False)


def log_map0_fwd(x, curv):
    """asinh(sqrt(c)|x|) x / (sqrt(c)|x|)."""
    return _fwd(x, curv, log=True)


def log_map0_bwd(grad, x, curv):
    return _bwd(grad, x, curv, log=True)
