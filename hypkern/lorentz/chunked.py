"""Tiled (chunked) PyTorch implementation of the large-batch contrastive loss and a one-pass
entailment loss: the CPU path of ``hypkern.losses``, O((N + M) D) memory.

Contrastive loss (see ``reference._symmetric_ce``). With logits ``l_ij`` (N x M), positives
``t_i`` and normalised weights ``w_i`` (``sum_i w_i = 1``)::

    L = sum_i w_i (0.5 (r_i - l_i,t_i) + 0.5 (C_t_i - l_i,t_i)),
    r_i = lse_j l_ij   (row log-sum-exp),   C_j = lse_k l_kj   (column log-sum-exp).

The logits are never stored: forward walks (rows x columns) blocks and merges the per-block
log-sum-exps into running row and column statistics with ``logaddexp`` (an online max and
sum, so logits unbounded below are fine); backward recomputes each block and applies::

    dL/dl_ij = a_i softmax_row_i(j) + b_j softmax_col_j(i) - w_i [j = t_i],
    a_i = w_i / 2,    b_j = 0.5 sum_{k: t_k = j} w_k   (a scatter of w onto t).

Two logit kinds:

* ``"lorentz"``: ``S_ij = xt_i yt_j - x_i . y_j`` (one GEMM on ``[x, xt]`` and ``[-y, yt]``),
  ``u = max(c S - 1, 0)``, ``l = -beta asinh(sqrt(u / 2))`` with ``beta = 2 s / sqrt(c)``,
  i.e. ``l = -s acosh(1 + u) / sqrt(c) = -s d_L``. ``dl/du = -beta / (2 sqrt(u (u + 2)))``,
  set to 0 where ``u / 2`` underflows (coinciding points), as the reference does.
* ``"cosine"``: ``l = beta x_i . y_j`` on already normalised features, ``beta = s``.

Inputs ``xt``, ``yt``, ``c`` and ``beta`` are separate tensors so that their dependence on the
features, the curvature and the logit scale is left to ordinary autograd outside (O(N D)).
"""
from __future__ import annotations

import torch

__all__ = ["TiledContrastive", "tiled_contrastive", "entailment_terms", "EntailmentRows",
           "DEFAULT_BLOCK_ROWS", "DEFAULT_BLOCK_COLS"]

DEFAULT_BLOCK_ROWS = 1024
DEFAULT_BLOCK_COLS = 2048


def _augment(kind, x, y, xt, yt):
    """Operands of the one GEMM per block: ``a @ b.T = S``."""
    if kind == "lorentz":
        a = torch.cat([x, xt[:, None].to(x.dtype)], dim=1)
        b = torch.cat([-y, yt[:, None].to(y.dtype)], dim=1)
        return a, b
    return x, y


def _block(kind, a, b, c: float, beta: float):
    """Logits of one block and, for Lorentz, ``u`` (needed by the backward)."""
    if kind == "lorentz":
        # u = c S - 1 in one addmm, clipped at 0 (rounding can push it below).
        minus_one = torch.full((), -1.0, dtype=a.dtype, device=a.device)
        u = torch.addmm(minus_one, a, b.T, alpha=c).clamp_(min=0.0)
        logits = torch.mul(u, 0.5).sqrt_().asinh_().mul_(-beta)
        return logits, u
    return torch.mm(a, b.T).mul_(beta), None


def _merge_lse(running: torch.Tensor, block_lse: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(running, block_lse)


class TiledContrastive(torch.autograd.Function):
    """Per-pair losses ``0.5 (r_i - l_i,t_i) + 0.5 (C_t_i - l_i,t_i)``, tiled.

    ``forward(kind, x, y, xt, yt, c, beta, targets, blocks, reduce_cols, reduce_colw)`` returns
    the (N,) per-pair losses; weighting them is left to autograd outside. With the upstream
    gradient ``g`` (N,), backward uses ``a_i = g_i / 2`` and ``b_j = 0.5 sum_{k: t_k = j} g_k``.
    Distributed use (this process holds some rows, ``y`` holds every column): ``reduce_cols``
    merges the partial column log-sum-exps over processes in forward, ``reduce_colw`` sums
    ``b`` over processes in backward; both None on one process. Gradients for x, y, xt, yt,
    c, beta (``c``, ``xt``, ``yt`` are None for ``kind="cosine"``).
    """

    @staticmethod
    def forward(ctx, kind, x, y, xt, yt, c, beta, targets, blocks, reduce_cols, reduce_colw):
        n, m = x.shape[0], y.shape[0]
        br, bc = blocks
        c_f = float(c) if c is not None else 1.0
        beta_f = float(beta)
        a, b = _augment(kind, x, y, xt, yt)
        dt, dev = a.dtype, a.device
        neg_inf = float("-inf")
        row_lse = torch.full((n,), neg_inf, dtype=dt, device=dev)
        col_lse = torch.full((m,), neg_inf, dtype=dt, device=dev)
        pos = torch.zeros(n, dtype=dt, device=dev)
        for r0 in range(0, n, br):
            r1 = min(r0 + br, n)
            ar, tr = a[r0:r1], targets[r0:r1]
            rl = torch.full((r1 - r0,), neg_inf, dtype=dt, device=dev)
            pr = pos[r0:r1]
            for c0 in range(0, m, bc):
                c1 = min(c0 + bc, m)
                logits, _ = _block(kind, ar, b[c0:c1], c_f, beta_f)
                rl = torch.logaddexp(rl, torch.logsumexp(logits, dim=1))
                col_lse[c0:c1] = torch.logaddexp(col_lse[c0:c1], torch.logsumexp(logits, dim=0))
                hit = (tr >= c0) & (tr < c1)
                at = logits.gather(1, (tr - c0).clamp(0, c1 - c0 - 1)[:, None])[:, 0]
                pr.copy_(torch.where(hit, at, pr))
            row_lse[r0:r1] = rl
        if reduce_cols is not None:
            col_lse = reduce_cols(col_lse)
        per_pair = 0.5 * ((row_lse - pos) + (col_lse[targets] - pos))
        ctx.kind, ctx.blocks, ctx.c_f, ctx.beta_f = kind, blocks, c_f, beta_f
        ctx.reduce_colw, ctx.d = reduce_colw, x.shape[1]
        ctx.save_for_backward(a, b, targets, row_lse, col_lse)
        return per_pair

    @staticmethod
    def backward(ctx, grad):
        a, b, targets, row_lse, col_lse = ctx.saved_tensors
        kind, (br, bc), c_f, beta_f = ctx.kind, ctx.blocks, ctx.c_f, ctx.beta_f
        n, m = a.shape[0], b.shape[0]
        dt = a.dtype
        grad = grad.to(dt)
        colw = torch.zeros(m, dtype=dt, device=a.device).scatter_add_(0, targets, grad)
        if ctx.reduce_colw is not None:
            colw = ctx.reduce_colw(colw)
        half_w, half_cw = 0.5 * grad, 0.5 * colw
        da, db = torch.zeros_like(a), torch.zeros_like(b)
        d_beta = torch.zeros((), dtype=dt, device=a.device)  # sum G * l   (dl/dbeta = l / beta)
        d_c = torch.zeros((), dtype=dt, device=a.device)     # sum K * S   (du/dc = S)
        tiny2 = 2.0 * torch.finfo(dt).tiny
        for r0 in range(0, n, br):
            r1 = min(r0 + br, n)
            ar, tr = a[r0:r1], targets[r0:r1]
            neg_pos = (-grad[r0:r1])[:, None]
            for c0 in range(0, m, bc):
                c1 = min(c0 + bc, m)
                bb = b[c0:c1]
                logits, u = _block(kind, ar, bb, c_f, beta_f)
                # G = dL/dl on this block.
                g = torch.exp(logits - row_lse[r0:r1, None]).mul_(half_w[r0:r1, None])
                g.add_(torch.exp(logits - col_lse[None, c0:c1]).mul_(half_cw[None, c0:c1]))
                hit = ((tr >= c0) & (tr < c1))[:, None]
                g.scatter_add_(1, (tr - c0).clamp(0, c1 - c0 - 1)[:, None],
                               torch.where(hit, neg_pos, torch.zeros_like(neg_pos)))
                d_beta += torch.sum(g * logits)
                if kind == "lorentz":
                    # dL/du = G dl/du, dl/du = -beta / (2 sqrt(u (u + 2))), 0 where u underflows;
                    # u = c S - 1: dL/dc += dL/du * S with S = (u + 1) / c, and K = dL/dS = c dL/du.
                    den = torch.mul(u, u + 2.0).sqrt_()
                    k = g.div_(den).mul_(-0.5 * beta_f)
                    k.masked_fill_(u <= tiny2, 0.0)
                    d_c += torch.sum(k * (u + 1.0)) / c_f
                    k.mul_(c_f)
                else:
                    k = g.mul_(beta_f)
                da[r0:r1].addmm_(k, bb)
                db[c0:c1].addmm_(k.T, ar)
        gbeta = (d_beta / beta_f).reshape(())
        d = ctx.d
        if kind == "lorentz":
            return (None, da[:, :d], -db[:, :d], da[:, d], db[:, d], d_c.reshape(()), gbeta,
                    None, None, None, None)
        return (None, da, db, None, None, None, gbeta, None, None, None, None)


def tiled_contrastive(kind, x, y, xt, yt, c, beta, targets, blocks=None, reduce_cols=None,
                      reduce_colw=None):
    """Per-pair losses via :class:`TiledContrastive` (``blocks`` = (rows, cols) per tile)."""
    blocks = tuple(blocks) if blocks is not None else (DEFAULT_BLOCK_ROWS, DEFAULT_BLOCK_COLS)
    return TiledContrastive.apply(kind, x, y, xt, yt, c, beta, targets, blocks, reduce_cols,
                                  reduce_colw)


# ----------------------------------------------------------------------------- entailment

def entailment_terms(x, y, c, min_radius: float, sign: float, margin: float, need_grad: bool = True):
    """Per-row ``relu(sign (oxy_angle(x, y) - half_aperture(x)) + margin)`` and its gradients.

    ``sign=+1, margin=0`` is MERU's entailment loss, ``sign=-1, margin=m`` the calibration
    (push ``y`` out of ``x``'s cone). Same clipping as ``reference.oxy_angle`` and
    ``reference.half_aperture``; the gradient is the reference's autograd gradient, written
    in closed form (0 wherever a clamp is active). Returns ``(loss (N,), gx (N, D),
    gy (N, D), gc (N,))`` for a unit upstream gradient per row (grads None if not needed).
    """
    from .constants import ANGLE_DENOM_EPS, ASIN_EPS

    lo, hi = -1.0 + ASIN_EPS, 1.0 - ASIN_EPS
    n2, m2 = (x * x).sum(-1), (y * y).sum(-1)
    dot = (x * y).sum(-1)
    n = torch.sqrt(n2)
    xt, yt = torch.sqrt(1.0 / c + n2), torch.sqrt(1.0 / c + m2)
    p = xt * yt - dot                     # -<x, y>_L
    z = c * p
    u = torch.clamp(z - 1.0, min=0.0)
    root = torch.sqrt(u * (u + 2.0))      # sqrt(z^2 - 1)
    numer = yt - z * xt
    den_raw = n * root
    den = torch.clamp(den_raw, min=ANGLE_DENOM_EPS)
    q_raw = numer / den
    q = torch.clamp(q_raw, lo, hi)
    angle = torch.acos(q)
    sc = torch.sqrt(c)
    n_min = 2.0 * min_radius / (sc * hi)
    nn_ = torch.maximum(n, n_min)
    arg_raw = 2.0 * min_radius / (sc * nn_)
    arg = torch.clamp(arg_raw, max=hi)
    aperture = torch.asin(arg)
    val = sign * (angle - aperture) + margin
    loss = torch.relu(val)
    if not need_grad:
        return loss, None, None, None
    act = (val > 0).to(x.dtype)
    zero = torch.zeros_like(n)
    # angle = acos(q): clamp passes the gradient inside [lo, hi].
    q_in = (q_raw >= lo) & (q_raw <= hi)
    g_q = torch.where(q_in, -sign * act / torch.sqrt(1.0 - q * q), zero)
    g_num = g_q / den
    g_den = torch.where(den_raw >= ANGLE_DENOM_EPS, -g_q * q_raw / den, zero)
    g_yt = g_num
    g_xt = -g_num * z
    g_z = -g_num * xt
    g_n = g_den * root
    g_root = g_den * n
    g_z = g_z + torch.where((root > 0) & (z - 1.0 >= 0), g_root * (u + 1.0) / torch.where(root > 0, root, 1.0), zero)
    # z = c p, p = xt yt - x.y
    g_c = g_z * p
    g_xt = g_xt + g_z * c * yt
    g_yt = g_yt + g_z * c * xt
    g_dot = -g_z * c
    # aperture = asin(2K / (sqrt(c) |x|)) where |x| > n_min (else clipped: gradient 0).
    ha_live = (n > n_min) & (arg_raw <= hi)
    g_arg = torch.where(ha_live, -sign * act / torch.sqrt(1.0 - arg * arg), zero)
    g_n = g_n - g_arg * arg / torch.where(ha_live, nn_, 1.0)
    g_c = g_c - g_arg * arg / (2.0 * c)
    # xt = sqrt(1/c + |x|^2), yt likewise.
    g_c = g_c - g_xt / (2.0 * c * c * xt) - g_yt / (2.0 * c * c * yt)
    coef_x = g_xt / xt + torch.where(n > 0, g_n / torch.where(n > 0, n, 1.0), zero)
    gx = coef_x[:, None] * x + g_dot[:, None] * y
    gy = (g_yt / yt)[:, None] * y + g_dot[:, None] * x
    return loss, gx, gy, g_c


class EntailmentRows(torch.autograd.Function):
    """Per-row entailment (or calibration) losses with the gradient computed in the same pass
    (:func:`entailment_terms`); backward only scales it by the upstream gradient."""

    @staticmethod
    def forward(ctx, x, y, c, min_radius, sign, margin):
        need = any(t.requires_grad for t in (x, y, c))
        loss, gx, gy, gc = entailment_terms(x, y, c, min_radius, sign, margin, need_grad=need)
        if need:
            ctx.save_for_backward(gx, gy, gc)
        return loss

    @staticmethod
    def backward(ctx, grad):
        gx, gy, gc = ctx.saved_tensors
        grad = grad.to(gx.dtype)
        return grad[:, None] * gx, grad[:, None] * gy, (grad * gc).sum(), None, None, None
