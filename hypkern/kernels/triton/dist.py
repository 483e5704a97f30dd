"""Triton kernels for Lorentz inner products and distances.

* ``pairwise_inner`` / ``pairwise_dist``: a tiled ``tl.dot`` kernel (K-loop over D) whose
  epilogue turns ``p = x_i . y_j`` and the row squared norms ``a_i``, ``b_j`` into
  ``<x,y>_L = p - x_t y_t`` (``x_t = sqrt(1/c + a)``) or the distance
  ``acosh_1p(u) / sqrt(c)``, ``u = max(c ((e_x + e_y)/sqrt(c) + e_x e_y - p), 0)`` (the
  cancellation-free form, ``e = x_t - 1/sqrt(c)``), directly in the output tile.
  No N x M tensor besides the output.
* Backward: both ops depend on ``x, y`` only through ``L = <x,y>_L``, with
  ``dL/dx = y - (y_t / x_t) x``. With ``psi = grad * dout/dL`` (recomputed tile by tile,
  never stored) ``dX_i = sum_j psi_ij y_j - (x_i / x_t,i) sum_j psi_ij y_t,j`` — one kernel
  reduces with ``tl.dot(psi, Y)``; ``dY`` is the same kernel on the transposed problem (no
  atomics). The curvature gradient is a per-block partial sum.
  ``dout/dL`` is 1 (inner) or ``-c / (sqrt(c) sqrt(u (u + 2)))`` (dist), **0 where ``u`` is
  clipped** (coincident points), as in the reference.
* ``dist`` (row-wise): from ``e = |x - y|^2``, ``f = (x - y).(x + y)``:
  ``q = max(e - (f / (x_t + y_t))^2, 0)``, ``d = 2 asinh(sqrt(c q) / 2) / sqrt(c)``,
  exact for nearby points; gradient 0 where ``q`` is clipped.
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from . import _math as M
from ._common import INTERPRET, compute_dtype, curv_operand, finish_curv_grad, pow2, row_config, sqnorm, tl_compute

OP_INNER = 0
OP_DIST = 1


# ----------------------------------------------------------------------------- pairwise

@triton.jit
def _pairwise_fwd_kernel(X, Y, A, B, CURV, OUT, N, M_, D,
                         OP: tl.constexpr, CDT: tl.constexpr, DOT_NATIVE: tl.constexpr,
                         BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_n * BN + tl.arange(0, BN)
    cols = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    cmask = cols < M_
    xbase = rows.to(tl.int64) * D
    ybase = cols.to(tl.int64) * D
    p = tl.zeros([BN, BM], CDT)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < D
        x = tl.load(X + xbase[:, None] + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        yT = tl.load(Y + ybase[None, :] + ks[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        if DOT_NATIVE:  # 16-bit inputs on a GPU: exact products, fp32 accumulation
            p = tl.dot(x, yT, p)
        else:
            p = tl.dot(x.to(CDT), yT.to(CDT), p, input_precision="ieee")
    c = tl.load(CURV).to(CDT)
    a = tl.load(A + rows, mask=rmask, other=0.0)
    b = tl.load(B + cols, mask=cmask, other=0.0)
    xt = tl.sqrt(1.0 / c + a)
    yt = tl.sqrt(1.0 / c + b)
    xy_t = xt[:, None] * yt[None, :]
    if OP == 0:
        out = p - xy_t
    else:
        isc = 1.0 / tl.sqrt(c)
        ex = a / (xt + isc)                      # xt - 1/sqrt(c) without cancellation
        ey = b / (yt + isc)
        u = M.maxnan(c * ((ex[:, None] + ey[None, :]) * isc + ex[:, None] * ey[None, :] - p), 0.0)
        out = M.acosh_1p(u) * isc
    optr = OUT + rows.to(tl.int64)[:, None] * M_ + cols[None, :]
    tl.store(optr, out.to(OUT.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _pairwise_bwd_kernel(X, Y, A, B, CURV, G, DX, CPART, N, M_, D, s_gn, s_gm,
                         OP: tl.constexpr, CDT: tl.constexpr,
                         BN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    """dX[rows, dcols] for out_ij = f(<x_i, y_j>_L); also the partial curvature gradient of
    this block of rows (summed over all j), written to CPART[pid_n, pid_d]."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_n * BN + tl.arange(0, BN)
    rmask = rows < N
    xbase = rows.to(tl.int64) * D
    dcols = pid_d * BD + tl.arange(0, BD)
    dmask = dcols < D
    c = tl.load(CURV).to(CDT)
    sc = tl.sqrt(c)
    inv_c = 1.0 / c
    a = tl.load(A + rows, mask=rmask, other=0.0)
    xt = tl.sqrt(inv_c + a)
    isc = 1.0 / sc
    ex = a / (xt + isc)                          # xt - 1/sqrt(c) without cancellation
    acc = tl.zeros([BN, BD], CDT)
    s_row = tl.zeros([BN], CDT)
    c_row = tl.zeros([BN], CDT)
    for m0 in range(0, M_, BM):
        cols = m0 + tl.arange(0, BM)
        cmask = cols < M_
        ybase = cols.to(tl.int64) * D
        p = tl.zeros([BN, BM], CDT)
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < D
            x = tl.load(X + xbase[:, None] + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            yT = tl.load(Y + ybase[None, :] + ks[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
            p = tl.dot(x.to(CDT), yT.to(CDT), p, input_precision="ieee")
        b = tl.load(B + cols, mask=cmask, other=0.0)
        yt = tl.sqrt(inv_c + b)
        g = tl.load(G + rows.to(tl.int64)[:, None] * s_gn + cols[None, :] * s_gm,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(CDT)
        xy_t = xt[:, None] * yt[None, :]
        # dL/dc = (y_t/x_t + x_t/y_t) / (2 c^2)
        dl_dc = (yt[None, :] / xt[:, None] + xt[:, None] / yt[None, :]) * (0.5 * inv_c * inv_c)
        if OP == 0:
            psi = g
            fc = g * dl_dc
        else:
            ey = b / (yt + isc)
            u = M.maxnan(c * ((ex[:, None] + ey[None, :]) * isc + ex[:, None] * ey[None, :] - p), 0.0)
            g_u = g * M.acosh_1p_d(u) / sc           # grad * dd/du
            psi = -c * g_u                            # grad * dd/dL, u = -c L - 1
            d = M.acosh_1p(u) / sc
            gap = ex[:, None] - ey[None, :]           # xt - yt
            # du/dc at fixed x, y = (u - (xt - yt)^2 / (2 xt yt)) / c: no cancellation near O
            fc = g_u * (u - 0.5 * gap * gap / xy_t) * inv_c - g * d * (0.5 * inv_c)
        s_row += tl.sum(psi * yt[None, :], 1)
        c_row += tl.sum(fc, 1)
        ytile = tl.load(Y + ybase[:, None] + dcols[None, :], mask=cmask[:, None] & dmask[None, :],
                        other=0.0).to(CDT)
        acc = tl.dot(psi, ytile, acc, input_precision="ieee")
    xtile = tl.load(X + xbase[:, None] + dcols[None, :], mask=rmask[:, None] & dmask[None, :],
                    other=0.0).to(CDT)
    dx = acc - xtile * (s_row / xt)[:, None]
    tl.store(DX + xbase[:, None] + dcols[None, :], dx.to(DX.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])
    tl.store(CPART + pid_n * tl.num_programs(1) + pid_d, tl.sum(c_row, 0))


def _fwd_config(x: torch.Tensor) -> dict:
    if INTERPRET:
        return dict(BN=128, BM=128, BK=pow2(x.shape[1], 16, 256))
    if x.dtype == torch.float64:
        return dict(BN=32, BM=32, BK=16, num_warps=4)
    return dict(BN=64, BM=64, BK=32, num_warps=4)


def _bwd_config(x: torch.Tensor) -> dict:
    d = x.shape[1]
    if INTERPRET:
        return dict(BN=128, BM=128, BK=pow2(d, 16, 256), BD=pow2(d, 16, 512))
    if x.dtype == torch.float64:
        return dict(BN=32, BM=32, BK=16, BD=pow2(d, 16, 64), num_warps=4)
    bd = pow2(d, 16, 128)
    return dict(BN=64, BM=32, BK=32, BD=bd, num_warps=8 if bd >= 128 else 4)


def _pairwise_fwd(op: int, x, y, curv):
    n, d = x.shape
    m = y.shape[0]
    a, b = sqnorm(x), sqnorm(y)
    out = torch.empty(n, m, device=x.device, dtype=x.dtype)
    cfg = _fwd_config(x)
    native = (not INTERPRET) and x.dtype in (torch.float16, torch.bfloat16)
    grid = (triton.cdiv(n, cfg["BN"]), triton.cdiv(m, cfg["BM"]))
    _pairwise_fwd_kernel[grid](x, y, a, b, curv_operand(curv, x), out, n, m, d,
                               OP=op, CDT=tl_compute(x.dtype), DOT_NATIVE=native, **cfg)
    return out


def _pairwise_bwd_side(op, x, y, a, b, c, grad, transpose: bool):
    """Gradient w.r.t. x of sum(grad * f(<x, y>_L)); ``grad`` is read transposed if asked."""
    n, d = x.shape
    m = y.shape[0]
    cfg = _bwd_config(x)
    dx = torch.empty_like(x)
    grid = (triton.cdiv(n, cfg["BN"]), triton.cdiv(d, cfg["BD"]))
    cpart = torch.empty(grid[0] * grid[1], device=x.device, dtype=compute_dtype(x.dtype))
    s_gn, s_gm = (grad.stride(1), grad.stride(0)) if transpose else (grad.stride(0), grad.stride(1))
    _pairwise_bwd_kernel[grid](x, y, a, b, c, grad, dx, cpart, n, m, d, s_gn, s_gm,
                               OP=op, CDT=tl_compute(x.dtype), **cfg)
    # every D-block of a row block computed the same partial: keep the first
    return dx, cpart.view(grid[0], grid[1])[:, 0]


def _pairwise_bwd(op: int, grad, x, y, curv):
    a, b = sqnorm(x), sqnorm(y)
    c = curv_operand(curv, x)
    dx, cpart = _pairwise_bwd_side(op, x, y, a, b, c, grad, transpose=False)
    dy, _ = _pairwise_bwd_side(op, y, x, b, a, c, grad, transpose=True)
    return dx, dy, finish_curv_grad(cpart, curv)


def pairwise_inner_fwd(x, y, curv):
    """<x_i, y_j>_L = x_i.y_j - x_t,i y_t,j."""
    return _pairwise_fwd(OP_INNER, x, y, curv)


def pairwise_inner_bwd(grad, x, y, curv):
    return _pairwise_bwd(OP_INNER, grad, x, y, curv)


def pairwise_dist_fwd(x, y, curv):
    """acosh(-c <x_i, y_j>_L) / sqrt(c) as 2 asinh(sqrt(u/2)) / sqrt(c), u clipped at 0."""
    return _pairwise_fwd(OP_DIST, x, y, curv)


def pairwise_dist_bwd(grad, x, y, curv):
    return _pairwise_bwd(OP_DIST, grad, x, y, curv)


# ----------------------------------------------------------------------------- row-wise dist

@triton.jit
def pair_scalars(X, Y, xbase, rmask, D, CDT: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr):
    """Per-row a = |x|^2, b = |y|^2, e = |x - y|^2, f = (x - y).(x + y)."""
    a = tl.zeros([BR], CDT)
    b = tl.zeros([BR], CDT)
    e = tl.zeros([BR], CDT)
    f = tl.zeros([BR], CDT)
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        x = tl.load(X + xbase[:, None] + ks[None, :], mask=m, other=0.0).to(CDT)
        y = tl.load(Y + xbase[:, None] + ks[None, :], mask=m, other=0.0).to(CDT)
        df = x - y
        a += tl.sum(x * x, 1)
        b += tl.sum(y * y, 1)
        e += tl.sum(df * df, 1)
        f += tl.sum(df * (x + y), 1)
    return a, b, e, f


@triton.jit
def store_pair_grads(X, Y, DX, DY, xbase, rmask, D, cdiff, cx, cy, CDT: tl.constexpr, BD: tl.constexpr):
    """The row-wise gradient form shared by dist, oxy_angle and the entailment loss:
    ``dx = cdiff (x - y) + cx x``, ``dy = -cdiff (x - y) + cy y`` (per-row coefficients; the
    difference kept explicit because ``cdiff`` is huge for nearby points)."""
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (ks[None, :] < D)
        ptr = xbase[:, None] + ks[None, :]
        x = tl.load(X + ptr, mask=m, other=0.0).to(CDT)
        y = tl.load(Y + ptr, mask=m, other=0.0).to(CDT)
        de = cdiff[:, None] * (x - y)
        tl.store(DX + ptr, (de + cx[:, None] * x).to(DX.dtype.element_ty), mask=m)
        tl.store(DY + ptr, (cy[:, None] * y - de).to(DY.dtype.element_ty), mask=m)


@triton.jit
def _dist_fwd_kernel(X, Y, CURV, OUT, N, D, CDT: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    xbase = rows.to(tl.int64) * D
    a, b, e, f = pair_scalars(X, Y, xbase, rmask, D, CDT, BD, BR)
    c = tl.load(CURV).to(CDT)
    sc = tl.sqrt(c)
    xt = tl.sqrt(1.0 / c + a)
    yt = tl.sqrt(1.0 / c + b)
    gg = f / (xt + yt)
    q = M.maxnan(e - gg * gg, 0.0)
    r = tl.where(q == 0.0, 0.0, tl.sqrt(M.maxnan(q, M.tiny_like(q))))  # exactly 0 at x = y; NaN: computed
    d = 2.0 * M.asinh(0.5 * sc * r) / sc
    tl.store(OUT + rows, d.to(OUT.dtype.element_ty), mask=rmask)


@triton.jit
def _dist_bwd_kernel(X, Y, CURV, G, DX, DY, CPART, N, D,
                     CDT: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    rmask = rows < N
    xbase = rows.to(tl.int64) * D
    a, b, e, f = pair_scalars(X, Y, xbase, rmask, D, CDT, BD, BR)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(CDT)
    c = tl.load(CURV).to(CDT)
    inv_c = 1.0 / c
    sc = tl.sqrt(c)
    xt = tl.sqrt(inv_c + a)
    yt = tl.sqrt(inv_c + b)
    s = xt + yt
    gg = f / s
    q = M.maxnan(e - gg * gg, 0.0)
    ok = q >= M.tiny_like(q)
    r = tl.sqrt(M.maxnan(q, M.tiny_like(q)))
    w = 0.5 * sc * r
    g_r = g / tl.sqrt(1.0 + w * w)
    g_q = tl.where(ok, g_r * 0.5 / r, 0.0)
    g_gg = -2.0 * gg * g_q
    g_f = g_gg / s
    g_s = -g_gg * gg / s
    g_a = g_s / (2.0 * xt)
    g_b = g_s / (2.0 * yt)
    # d = r asinhc(w); explicit dd/dc = (r / sqrt(1 + w^2) - d) / (2c) = r w^2 asinhc_d(w) / (2c)
    fc = -g_s * (1.0 / xt + 1.0 / yt) * (0.5 * inv_c * inv_c) + g * r * w * w * M.asinhc_d(w) * (0.5 * inv_c)
    tl.store(CPART + pid, tl.sum(tl.where(rmask, fc, 0.0), 0))
    store_pair_grads(X, Y, DX, DY, xbase, rmask, D, 2.0 * g_q, 2.0 * (g_f + g_a), 2.0 * (g_b - g_f), CDT, BD)


def dist_fwd(x, y, curv):
    """Row-wise d(x_i, y_i) = 2 asinh(sqrt(c q) / 2) / sqrt(c), q = |x - y|_L^2 clipped at 0."""
    n, d = x.shape
    out = torch.empty(n, device=x.device, dtype=x.dtype)
    cfg = row_config(d)
    _dist_fwd_kernel[(triton.cdiv(n, cfg["BR"]),)](x, y, curv_operand(curv, x), out, n, d,
                                                   CDT=tl_compute(x.dtype), **cfg)
    return out


def dist_bwd(grad, x, y, curv):
    n, d = x.shape
    cfg = row_config(d)
    grid = (triton.cdiv(n, cfg["BR"]),)
    dx, dy = torch.empty_like(x), torch.empty_like(y)
    cpart = torch.empty(grid[0], device=x.device, dtype=compute_dtype(x.dtype))
    _dist_bwd_kernel[grid](x, y, curv_operand(curv, x), grad, dx, dy, cpart, n, d,
                           CDT=tl_compute(x.dtype), **cfg)
    return dx, dy, finish_curv_grad(cpart, curv)
