"""Triton kernels for the fused losses: tiled contrastive loss (Lorentz and cosine logits) and
the one-pass entailment / calibration loss. Same math as ``hypkern.kernels.chunked`` (read its
docstring for the formulas); this module only changes where it runs.

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
Lorentz: ``u = max(c (xt_i yt_j - S_ij) - 1, 0)``, ``l = -beta asinh(sqrt(u / 2))``.
Cosine: ``l = beta S``.
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from ...lorentz.constants import ASIN_EPS
from . import _math as M
from ._common import INTERPRET, compute_dtype, pow2, tl_compute

__all__ = ["supports", "triton_contrastive", "triton_entailment_rows"]

KIND_LORENTZ = 0
KIND_COSINE = 1


def supports(device) -> tuple[bool, str]:
    """CUDA, or CPU tensors under the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    device = torch.device(device)
    if device.type == "cuda":
        return (True, "") if torch.cuda.is_available() else (False, "no CUDA device")
    if device.type == "cpu":
        if INTERPRET:
            return True, ""
        return False, "Triton runs on CPU only in its interpreter: set TRITON_INTERPRET=1 before importing hypkern"
    return False, f"Triton kernels do not run on {device.type} tensors"


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
def _logits(s, pt, qt, c, beta, KIND: tl.constexpr):
    """(logits, u) of a tile; u is the clipped ``c (xt yt - S) - 1`` (Lorentz) or S (cosine)."""
    if KIND == 0:
        u = tl.maximum(c * (pt[:, None] * qt[None, :] - s) - 1.0, 0.0)
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
    pt = tl.load(PT + rows, mask=pmask, other=1.0).to(CDT)
    if WITH_POS:
        tgt = tl.load(TGT + rows, mask=pmask, other=-1)
    run_max = tl.full([BP], float("-inf"), CDT)
    run_sum = tl.zeros([BP], CDT)
    pos = tl.zeros([BP], CDT)
    for q0 in range(0, NQ, BQ):
        cols = q0 + tl.arange(0, BQ)
        qmask = cols < NQ
        s = _dot_tile(P, Q, pbase, cols.to(tl.int64) * D, pmask, qmask, D, CDT, DOT_NATIVE, BP, BQ, BK)
        qt = tl.load(QT + cols, mask=qmask, other=1.0).to(CDT)
        lg, u = _logits(s, pt, qt, c, beta, KIND)
        lg = tl.where(qmask[None, :], lg, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(lg, 1))
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
    PART[prog] = (sum psi (u + 1) / c, sum G l / beta) from the first D-block."""
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
        lse_q = tl.load(LSE_Q + cols, mask=qmask, other=0.0).to(CDT)
        hw_q = tl.load(HW_Q + cols, mask=qmask, other=0.0).to(CDT)
        lg, u = _logits(s, pt, qt, c, beta, KIND)
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
            acc_c += tl.sum(psi * (u + 1.0), 1)
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


class _TritonContrastive(torch.autograd.Function):
    """Per-pair losses (as ``chunked.TiledContrastive``) with the Triton kernels."""

    @staticmethod
    def forward(ctx, kind, x, y, xt, yt, c, beta, targets, reduce_cols, reduce_colw):
        k = KIND_LORENTZ if kind == "lorentz" else KIND_COSINE
        cd = compute_dtype(x.dtype)
        x, y = x.contiguous(), y.contiguous()
        if k == KIND_LORENTZ:
            xt_, yt_ = xt.detach().to(cd).contiguous(), yt.detach().to(cd).contiguous()
            c_ = c.detach().to(cd).reshape(1)
        else:
            xt_ = torch.ones(x.shape[0], device=x.device, dtype=cd)
            yt_ = torch.ones(y.shape[0], device=x.device, dtype=cd)
            c_ = torch.ones(1, device=x.device, dtype=cd)
        params = torch.cat([c_, beta.detach().to(cd).reshape(1)]).contiguous()
        tgt = targets.contiguous()
        row_lse, pos = _lse(k, x, y, xt_, yt_, params, tgt)
        col_lse, _ = _lse(k, y, x, yt_, xt_, params, None)
        if reduce_cols is not None:
            col_lse = reduce_cols(col_lse)
        per_pair = 0.5 * ((row_lse - pos) + (col_lse[targets] - pos))
        ctx.k, ctx.reduce_colw, ctx.dtypes = k, reduce_colw, (x.dtype, y.dtype)
        ctx.save_for_backward(x, y, xt_, yt_, params, tgt, row_lse, col_lse)
        return per_pair

    @staticmethod
    def backward(ctx, grad):
        x, y, xt_, yt_, params, tgt, row_lse, col_lse = ctx.saved_tensors
        k = ctx.k
        grad = grad.to(params.dtype).contiguous()
        colw = torch.zeros(y.shape[0], device=y.device, dtype=params.dtype).scatter_add_(0, tgt, grad)
        if ctx.reduce_colw is not None:
            colw = ctx.reduce_colw(colw)
        hw_row, hw_col = (0.5 * grad).contiguous(), (0.5 * colw).contiguous()
        dx, dxt, part = _grad(k, x, y, xt_, yt_, params, row_lse, hw_row, col_lse, hw_col, tgt, grad, False)
        dy, dyt, _ = _grad(k, y, x, yt_, xt_, params, col_lse, hw_col, row_lse, hw_row, tgt, grad, True)
        g_c, g_beta = part[0].reshape(()), part[1].reshape(())
        dx, dy = dx.to(ctx.dtypes[0]), dy.to(ctx.dtypes[1])
        if k == KIND_LORENTZ:
            return None, dx, dy, dxt, dyt, g_c, g_beta, None, None, None
        return None, dx, dy, None, None, None, g_beta, None, None, None


@torch.compiler.disable
def triton_contrastive(kind, x, y, xt, yt, c, beta, targets, blocks=None, reduce_cols=None, reduce_colw=None):
    """Per-pair contrastive losses with the Triton kernels (``blocks`` is ignored: the kernels
    choose their tiles)."""
    return _TritonContrastive.apply(kind, x, y, xt, yt, c, beta, targets, reduce_cols, reduce_colw)


# ----------------------------------------------------------------------------- entailment

@triton.jit
def _entail_kernel(X, Y, CURV, LOSS, GX, GY, GC, N, D,
                   TWO_K: tl.constexpr, TWO_K_HI: tl.constexpr, SIGN: tl.constexpr, MARGIN: tl.constexpr,
                   NEED_GRAD: tl.constexpr, CDT: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Per row: loss = relu(SIGN (oxy_angle(x, y) - half_aperture(x)) + MARGIN) and, in the
    same pass, its gradient (x, y, c) for a unit upstream gradient; see
    ``chunked.entailment_terms`` for the formulas and clipping."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    base = rows.to(tl.int64) * D
    n2 = tl.zeros([BR], CDT)
    m2 = tl.zeros([BR], CDT)
    e = tl.zeros([BR], CDT)
    f = tl.zeros([BR], CDT)
    for k0 in range(0, D, BD):
        ks = k0 + tl.arange(0, BD)
        msk = rmask[:, None] & (ks[None, :] < D)
        x = tl.load(X + base[:, None] + ks[None, :], mask=msk, other=0.0).to(CDT)
        y = tl.load(Y + base[:, None] + ks[None, :], mask=msk, other=0.0).to(CDT)
        dxy = x - y
        n2 += tl.sum(x * x, 1)
        m2 += tl.sum(y * y, 1)
        e += tl.sum(dxy * dxy, 1)
        f += tl.sum(dxy * (x + y), 1)
    c = tl.load(CURV).to(CDT)
    inv_c = 1.0 / c
    nrm = tl.sqrt(n2)
    xt = tl.sqrt(inv_c + n2)
    yt = tl.sqrt(inv_c + m2)
    s_t = xt + yt
    gap = f / s_t                                 # x_t - y_t
    q_raw = e - gap * gap                         # |x - y|_L^2
    q = tl.maximum(q_raw, 0.0)
    u = 0.5 * c * q                               # z - 1
    root = tl.sqrt(u * (u + 2.0))
    numer = -gap - u * xt
    den_raw = nrm * root
    den = M.max_c(den_raw, M.ANGLE_DENOM_EPS)
    ratio = numer / den
    arg_q = M.min_c(M.max_c(ratio, M.ASIN_LO), M.ASIN_HI)
    angle = M.acos(arg_q)
    sc = tl.sqrt(c)
    n_min = TWO_K_HI / sc
    nn = tl.where(nrm > n_min, nrm, n_min)
    arg_raw = TWO_K / (sc * nn)
    arg = M.min_c(arg_raw, M.ASIN_HI)
    aperture = M.asin(arg)
    val = SIGN * (angle - aperture) + MARGIN
    tl.store(LOSS + rows, tl.maximum(val, 0.0), mask=rmask)
    if NEED_GRAD:
        act = tl.where(val > 0.0, 1.0, 0.0)
        r_in = (ratio >= M.ASIN_LO) & (ratio <= M.ASIN_HI)
        g_r = tl.where(r_in, -SIGN * act * M.asin_d(arg_q), 0.0)
        g_num = g_r / den
        g_den = tl.where(den_raw >= M.ANGLE_DENOM_EPS, -g_r * ratio / den, 0.0)
        g_gap = -g_num
        g_u = -g_num * xt
        g_xt = -g_num * u
        g_n = g_den * root
        root_ok = root > 0.0
        g_u += tl.where(root_ok, g_den * nrm * (u + 1.0) / tl.where(root_ok, root, 1.0), 0.0)
        g_c = g_u * 0.5 * q
        g_q = tl.where(q_raw >= 0.0, g_u * 0.5 * c, 0.0)
        g_e = g_q
        g_gap -= 2.0 * gap * g_q
        g_f = g_gap / s_t
        g_xt -= g_gap * gap / s_t
        g_yt = -g_gap * gap / s_t
        ha_live = (nrm > n_min) & (arg_raw <= M.ASIN_HI)
        g_arg = tl.where(ha_live, -SIGN * act * M.asin_d(arg), 0.0)
        g_n -= g_arg * arg / tl.where(ha_live, nn, 1.0)
        g_c -= g_arg * arg * (0.5 * inv_c)
        g_c -= (g_xt / xt + g_yt / yt) * (0.5 * inv_c * inv_c)
        g_n2 = g_xt / (2.0 * xt) + g_f
        g_m2 = g_yt / (2.0 * yt) - g_f
        coef_x = 2.0 * g_n2 + tl.where(nrm > 0.0, g_n / tl.where(nrm > 0.0, nrm, 1.0), 0.0)
        coef_y = 2.0 * g_m2
        coef_d = 2.0 * g_e
        tl.store(GC + rows, g_c, mask=rmask)
        for k0 in range(0, D, BD):
            ks = k0 + tl.arange(0, BD)
            msk = rmask[:, None] & (ks[None, :] < D)
            x = tl.load(X + base[:, None] + ks[None, :], mask=msk, other=0.0).to(CDT)
            y = tl.load(Y + base[:, None] + ks[None, :], mask=msk, other=0.0).to(CDT)
            dxy = x - y
            gx = coef_x[:, None] * x + coef_d[:, None] * dxy
            gy = coef_y[:, None] * y - coef_d[:, None] * dxy
            tl.store(GX + base[:, None] + ks[None, :], gx, mask=msk)
            tl.store(GY + base[:, None] + ks[None, :], gy, mask=msk)


class _TritonEntailment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, c, min_radius, sign, margin):
        n, d = x.shape
        cd = compute_dtype(x.dtype)
        x, y = x.contiguous(), y.contiguous()
        need = any(t.requires_grad for t in (x, y, c))
        loss = torch.empty(n, device=x.device, dtype=cd)
        gx = torch.empty(n, d, device=x.device, dtype=cd) if need else loss
        gy = torch.empty(n, d, device=x.device, dtype=cd) if need else loss
        gc = torch.empty(n, device=x.device, dtype=cd) if need else loss
        if INTERPRET:
            cfg = dict(BR=pow2(n, 16, 128), BD=pow2(d, 16, 512))
        else:
            bd = pow2(d, 16, 256)
            cfg = dict(BR=max(1, 4096 // bd) if bd < 256 else 16, BD=bd, num_warps=4)
        _entail_kernel[(triton.cdiv(n, cfg["BR"]),)](
            x, y, c.detach().to(cd).reshape(1).contiguous(), loss, gx, gy, gc, n, d,
            TWO_K=2.0 * min_radius, TWO_K_HI=2.0 * min_radius / (1.0 - ASIN_EPS), SIGN=float(sign),
            MARGIN=float(margin), NEED_GRAD=need, CDT=tl_compute(x.dtype), **cfg)
        if need:
            ctx.save_for_backward(gx, gy, gc)
        ctx.dtypes = (x.dtype, y.dtype, c.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad):
        gx, gy, gc = ctx.saved_tensors
        grad = grad.to(gx.dtype)
        return ((grad[:, None] * gx).to(ctx.dtypes[0]), (grad[:, None] * gy).to(ctx.dtypes[1]),
                (grad * gc).sum().to(ctx.dtypes[2]), None, None, None)


def triton_entailment_rows(text, image, c, min_radius: float, sign: float, margin: float):
    """Per-row entailment (``sign=+1``) or calibration (``sign=-1``, ``margin``) losses, float32
    (float64 for float64 inputs); the gradient is computed in the forward kernel."""
    return _TritonEntailment.apply(text, image, c, min_radius, sign, margin)
