"""Triton kernels of the contrastive statistics (Lorentz and cosine logits); the same math as
``hypkern.kernels.chunked`` (read its docstring for the formulas), on the GPU. The entailment
kernels compose the cone cores and live in ``cones.py``.

Contrastive, four launches of one stats kernel and one gradient kernel, no atomics:

* ``_lse_kernel`` (P = images, Q = texts): per image row, online max/sum over column tiles ->
  row log-sum-exp ``r_i`` and the positive logit ``l_i,t_i``.
* ``_lse_kernel`` (P = texts, Q = images): column log-sum-exp ``C_j`` (logits are symmetric
  in the two sides, so it is the same kernel on the swapped operands).
* ``_grad_kernel`` (P = images): ``dX_i = sum_j K_ij Y_j`` with ``K = dL/dS`` recomputed tile
  by tile, plus ``dXt_i`` and per-program partials of ``dL/dc`` and ``dL/dbeta``.
* ``_grad_kernel`` (P = texts): ``dY`` and ``dYt`` likewise.

``S_ij = x_i . y_j`` comes from ``tl.dot`` (16-bit inputs use the tensor cores with float32
accumulation on a GPU); everything after it is float32 (float64 for float64 inputs).
Lorentz: ``u = max(c ((e_i + f_j)/sqrt(c) + e_i f_j - S_ij), 0)`` with the time components'
excesses ``e = xt - 1/sqrt(c)``, ``f = yt - 1/sqrt(c)`` (the cancellation-free form of
``c (xt yt - S) - 1``, see :func:`hypkern.lorentz.reference.pairwise_u`),
``l = -beta asinh(sqrt(u / 2))``. Cosine: ``l = beta S``. ``PT``/``QT`` hold ``[xt; e]``
(2 x N) per side.
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from . import _math as M
from ._common import INTERPRET, compute_dtype, pow2, tl_compute

__all__ = ["contrastive_fwd", "contrastive_bwd"]

KIND_LORENTZ = 0
KIND_COSINE = 1


# ----------------------------------------------------------------------------- tile math

@triton.jit
def _dot_tile(P, Q, pbase, qbase, pmask, qmask, D, CDT: tl.constexpr, DOT_NATIVE: tl.constexpr,
              BP: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr):
    """S = P[rows] . Q[cols]^T for one (BP, BQ) tile, K-loop over D."""
    s = tl.zeros([BP, BQ], CDT)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < D
        p = tl.load(P + pbase[:, None] + ks[None, :], mask=pmask[:, None] & kmask[None, :], other=0.0)
        qT = tl.load(Q + qbase[None, :] + ks[:, None], mask=kmask[:, None] & qmask[None, :], other=0.0)
        if DOT_NATIVE:
            s = tl.dot(p, qT, s)
        else:
            s = tl.dot(p.to(CDT), qT.to(CDT), s, input_precision="ieee")
    return s


@triton.jit
def _logits(s, pe, qe, c, beta, KIND: tl.constexpr):
    """(logits, u) of a tile; u = -c<x,y>_L - 1 >= 0 from the excesses ``pe``, ``qe`` (Lorentz)
    or S (cosine)."""
    if KIND == 0:
        u = M.maxnan(c * ((pe[:, None] + qe[None, :]) / tl.sqrt(c) + pe[:, None] * qe[None, :] - s), 0.0)
        lg = -beta * M.asinh(tl.sqrt(0.5 * u))
    else:
        u = s
        lg = beta * s
    return lg, u


@triton.jit
def _lse_kernel(P, Q, PT, QT, PARAMS, TGT, LSE, POS, NP, NQ, D,
                KIND: tl.constexpr, WITH_POS: tl.constexpr, CDT: tl.constexpr, DOT_NATIVE: tl.constexpr,
                BP: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr):
    """LSE[p] = log sum_q exp(l_pq) (online max), and POS[p] = l_p,TGT[p] if WITH_POS."""
    rows = tl.program_id(0) * BP + tl.arange(0, BP)
    pmask = rows < NP
    pbase = rows.to(tl.int64) * D
    c = tl.load(PARAMS).to(CDT)
    beta = tl.load(PARAMS + 1).to(CDT)
    pe = tl.load(PT + NP + rows, mask=pmask, other=0.0).to(CDT)
    if WITH_POS:
        tgt = tl.load(TGT + rows, mask=pmask, other=-1)
    run_max = tl.full([BP], float("-inf"), CDT)
    run_sum = tl.zeros([BP], CDT)
    pos = tl.zeros([BP], CDT)
    for q0 in range(0, NQ, BQ):
        cols = q0 + tl.arange(0, BQ)
        qmask = cols < NQ
        s = _dot_tile(P, Q, pbase, cols.to(tl.int64) * D, pmask, qmask, D, CDT, DOT_NATIVE, BP, BQ, BK)
        qe = tl.load(QT + NQ + cols, mask=qmask, other=0.0).to(CDT)
        lg, u = _logits(s, pe, qe, c, beta, KIND)
        lg = tl.where(qmask[None, :], lg, float("-inf"))
        new_max = M.maxnan(run_max, tl.max(lg, 1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(lg - new_max[:, None]), 1)
        run_max = new_max
        if WITH_POS:
            pos += tl.sum(tl.where(cols[None, :] == tgt[:, None], lg, 0.0), 1)
    tl.store(LSE + rows, run_max + tl.log(run_sum), mask=pmask)
    if WITH_POS:
        tl.store(POS + rows, pos, mask=pmask)


@triton.jit
def _grad_kernel(P, Q, PT, QT, PARAMS, LSE_P, HW_P, LSE_Q, HW_Q, TGT, POSW,
                 DP, DPT, PART, NP, NQ, D,
                 KIND: tl.constexpr, TGT_ON_Q: tl.constexpr, CDT: tl.constexpr, DOT_NATIVE: tl.constexpr,
                 BP: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    """For the rows ``p`` of this program and D-columns ``dcols``:
    ``G_pq = HW_P[p] e^(l - LSE_P[p]) + HW_Q[q] e^(l - LSE_Q[q]) - POSW[i] [pair (i, t_i) = (p, q)]``
    (the positive indicator reads TGT on whichever side holds the images), then
    DP[p, dcols] = sum_q K_pq Q[q, dcols], DPT[p] = sum_q psi_pq c qt_q (Lorentz), and
    PART[prog] = (sum psi du/dc, sum G l / beta) from the first D-block, with the
    cancellation-free ``du/dc = (u - (e_p - f_q)^2 / (2 pt qt)) / c`` at fixed features."""
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid * BP + tl.arange(0, BP)
    pmask = rows < NP
    pbase = rows.to(tl.int64) * D
    dcols = pid_d * BD + tl.arange(0, BD)
    dmask = dcols < D
    c = tl.load(PARAMS).to(CDT)
    beta = tl.load(PARAMS + 1).to(CDT)
    pt = tl.load(PT + rows, mask=pmask, other=1.0).to(CDT)
    pe = tl.load(PT + NP + rows, mask=pmask, other=0.0).to(CDT)
    lse_p = tl.load(LSE_P + rows, mask=pmask, other=0.0).to(CDT)
    hw_p = tl.load(HW_P + rows, mask=pmask, other=0.0).to(CDT)
    if TGT_ON_Q:
        posw_p = tl.zeros([BP], CDT)
        tgt_p = tl.full([BP], -1, tl.int64)
    else:
        posw_p = tl.load(POSW + rows, mask=pmask, other=0.0).to(CDT)
        tgt_p = tl.load(TGT + rows, mask=pmask, other=-1).to(tl.int64)
    acc = tl.zeros([BP, BD], CDT)
    acc_t = tl.zeros([BP], CDT)
    acc_c = tl.zeros([BP], CDT)
    acc_b = tl.zeros([BP], CDT)
    for q0 in range(0, NQ, BQ):
        cols = q0 + tl.arange(0, BQ)
        qmask = cols < NQ
        qbase = cols.to(tl.int64) * D
        s = _dot_tile(P, Q, pbase, qbase, pmask, qmask, D, CDT, DOT_NATIVE, BP, BQ, BK)
        qt = tl.load(QT + cols, mask=qmask, other=1.0).to(CDT)
        qe = tl.load(QT + NQ + cols, mask=qmask, other=0.0).to(CDT)
        lse_q = tl.load(LSE_Q + cols, mask=qmask, other=0.0).to(CDT)
        hw_q = tl.load(HW_Q + cols, mask=qmask, other=0.0).to(CDT)
        lg, u = _logits(s, pe, qe, c, beta, KIND)
        g = hw_p[:, None] * tl.exp(lg - lse_p[:, None]) + hw_q[None, :] * tl.exp(lg - lse_q[None, :])
        if TGT_ON_Q:
            tgt_q = tl.load(TGT + cols, mask=qmask, other=-1).to(tl.int64)
            posw_q = tl.load(POSW + cols, mask=qmask, other=0.0).to(CDT)
            g -= tl.where(tgt_q[None, :] == rows.to(tl.int64)[:, None], posw_q[None, :], 0.0)
        else:
            g -= tl.where(cols.to(tl.int64)[None, :] == tgt_p[:, None], posw_p[:, None], 0.0)
        g = tl.where(pmask[:, None] & qmask[None, :], g, 0.0)
        acc_b += tl.sum(g * lg, 1)
        if KIND == 0:
            psi = g * (-0.5 * beta) * M.acosh_1p_d(u)    # dL/du
            gap = pe[:, None] - qe[None, :]                 # xt - yt
            acc_c += tl.sum(psi * (u - 0.5 * gap * gap / (pt[:, None] * qt[None, :])), 1)
            acc_t += tl.sum(psi * qt[None, :], 1)
            k = -c * psi                                # dL/dS
        else:
            k = g * beta
        qtile = tl.load(Q + qbase[:, None] + dcols[None, :], mask=qmask[:, None] & dmask[None, :], other=0.0)
        if DOT_NATIVE:
            acc = tl.dot(k.to(qtile.dtype), qtile, acc)
        else:
            acc = tl.dot(k, qtile.to(CDT), acc, input_precision="ieee")
    tl.store(DP + pbase[:, None] + dcols[None, :], acc.to(DP.dtype.element_ty), mask=pmask[:, None] & dmask[None, :])
    if KIND == 0:
        tl.store(DPT + rows, acc_t * c, mask=pmask & (pid_d == 0))
    if pid_d == 0:
        tl.store(PART + 2 * pid, tl.sum(acc_c, 0) / c)
        tl.store(PART + 2 * pid + 1, tl.sum(acc_b, 0) / beta)


def _config(x: torch.Tensor, n_p: int, n_q: int) -> dict:
    d = x.shape[1]
    if INTERPRET:  # few big programs: the interpreter pays per op, not per element
        return dict(BP=pow2(n_p, 16, 128), BQ=pow2(n_q, 16, 128), BK=pow2(d, 16, 256), BD=pow2(d, 16, 512))
    if x.dtype == torch.float64:
        return dict(BP=32, BQ=32, BK=16, BD=pow2(d, 16, 64), num_warps=4)
    # BD: the backward recomputes the S tile once per D-block, so keep D in few blocks
    # (untuned: no GPU was available when this was written).
    if x.dtype in (torch.float16, torch.bfloat16):
        return dict(BP=64, BQ=64, BK=64, BD=pow2(d, 16, 256), num_warps=8)
    return dict(BP=64, BQ=32, BK=32, BD=pow2(d, 16, 256), num_warps=8)


def _lse(kind, p, q, pt, qt, params, tgt):
    n_p, d = p.shape
    cfg = _config(p, n_p, q.shape[0])
    cfg.pop("BD")
    lse = torch.empty(n_p, device=p.device, dtype=params.dtype)
    pos = torch.empty(n_p, device=p.device, dtype=params.dtype) if tgt is not None else lse
    native = (not INTERPRET) and p.dtype in (torch.float16, torch.bfloat16)
    _lse_kernel[(triton.cdiv(n_p, cfg["BP"]),)](
        p, q, pt, qt, params, tgt if tgt is not None else lse, lse, pos, n_p, q.shape[0], d,
        KIND=kind, WITH_POS=tgt is not None, CDT=tl_compute(params.dtype), DOT_NATIVE=native, **cfg)
    return lse, (pos if tgt is not None else None)


def _grad(kind, p, q, pt, qt, params, lse_p, hw_p, lse_q, hw_q, tgt, posw, tgt_on_q):
    n_p, d = p.shape
    cfg = _config(p, n_p, q.shape[0])
    grid = (triton.cdiv(n_p, cfg["BP"]), triton.cdiv(d, cfg["BD"]))
    dp = torch.empty(n_p, d, device=p.device, dtype=params.dtype)
    dpt = torch.zeros(n_p, device=p.device, dtype=params.dtype)
    part = torch.empty(grid[0], 2, device=p.device, dtype=params.dtype)
    native = (not INTERPRET) and p.dtype in (torch.float16, torch.bfloat16)
    _grad_kernel[grid](p, q, pt, qt, params, lse_p, hw_p, lse_q, hw_q, tgt, posw, dp, dpt, part,
                       n_p, q.shape[0], d, KIND=kind, TGT_ON_Q=tgt_on_q, CDT=tl_compute(params.dtype),
                       DOT_NATIVE=native, **cfg)
    return dp, dpt, part.sum(0)


def contrastive_fwd(kind: str, x, y, c, beta, targets, block_rows: int = 0, block_cols: int = 0):
    """``(r (N,), C (M,), p (N,))``: row/column log-sum-exp and positive logit (see
    :mod:`hypkern.kernels.chunked`), in the compute dtype; ``block_*`` are ignored (the kernels
    choose their tiles)."""
    k, x, y, xt, yt, params = _operands(kind, x, y, c, beta)
    tgt = targets.contiguous()
    row_lse, pos = _lse(k, x, y, xt, yt, params, tgt)
    col_lse, _ = _lse(k, y, x, yt, xt, params, None)
    return row_lse, col_lse, pos


def contrastive_bwd(kind: str, g_row, g_col, g_pos, x, y, c, beta, targets, row_lse, col_lse,
                    block_rows: int = 0, block_cols: int = 0):
    """``(dx, dy, dc, dbeta)`` from the upstream gradients of ``(r, C, p)``: two launches of
    ``_grad_kernel`` (images, then texts), no atomics; the time components' gradient is folded
    into ``dx``, ``dy`` and ``dc`` here."""
    k, xc, yc, xt, yt, params = _operands(kind, x, y, c, beta)
    cd = params.dtype
    tgt = targets.contiguous()
    g_row, g_col = g_row.to(cd).contiguous(), g_col.to(cd).contiguous()
    posw = (-g_pos).to(cd).contiguous()
    row_lse, col_lse = row_lse.to(cd).contiguous(), col_lse.to(cd).contiguous()
    dx, dxt, part = _grad(k, xc, yc, xt, yt, params, row_lse, g_row, col_lse, g_col, tgt, posw, False)
    dy, dyt, _ = _grad(k, yc, xc, yt, xt, params, col_lse, g_col, row_lse, g_row, tgt, posw, True)
    g_c, g_beta = part[0], part[1]                       # g_c: the whole dL/dc (du/dc in-kernel)
    if k == KIND_LORENTZ:
        ax, ay = dxt / xt[0], dyt / yt[0]                # xt = sqrt(1/c + |x|^2)
        dx = dx.addcmul_(xc.to(cd), ax[:, None])
        dy = dy.addcmul_(yc.to(cd), ay[:, None])
    else:
        g_c = torch.zeros_like(g_c)
    return dx.to(x.dtype), dy.to(y.dtype), g_c.reshape(()).to(c.dtype), g_beta.reshape(()).to(beta.dtype)


def _operands(kind, x, y, c, beta):
    """(kind id, x, y, xt, yt, params=[c, beta]) for the kernels, in the compute dtype for the
    scalars; features stay in their own dtype (the kernels accumulate in float32). ``xt``,
    ``yt``: (2, N) stacks of the time components and their excesses over ``1/sqrt(c)``."""
    k = KIND_LORENTZ if kind == "lorentz" else KIND_COSINE
    cd = compute_dtype(x.dtype)
    x, y = x.contiguous(), y.contiguous()
    if k == KIND_LORENTZ:
        c_ = c.detach().to(cd).reshape(1)

        def times(v):
            a = torch.linalg.vecdot(v.to(cd), v.to(cd))
            t = torch.sqrt(a + 1.0 / c_)
            return torch.stack([t, a / (t + torch.rsqrt(c_))])
        xt, yt = times(x), times(y)
    else:
        c_ = torch.ones(1, device=x.device, dtype=cd)
        xt = torch.ones(2, x.shape[0], device=x.device, dtype=cd)
        yt = torch.ones(2, y.shape[0], device=x.device, dtype=cd)
    params = torch.cat([c_, beta.detach().to(cd).reshape(1)]).contiguous()
    return k, x, y, xt.contiguous(), yt.contiguous(), params
