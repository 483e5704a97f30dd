"""Tiled (chunked) PyTorch implementation of the large-batch contrastive loss and a one-pass
entailment loss: the CPU path of ``hypkern.losses``, O((N + M) D) memory.

Contrastive loss (see ``hypkern.losses.reference.symmetric_ce``). With logits ``l_ij`` (N x M), positives
``t_i`` and normalised weights ``w_i`` (``sum_i w_i = 1``)::

    L = sum_i w_i (0.5 (r_i - l_i,t_i) + 0.5 (C_t_i - l_i,t_i)),
    r_i = lse_j l_ij   (row log-sum-exp),   C_j = lse_k l_kj   (column log-sum-exp).

The logits are never stored: forward walks (rows x columns) blocks and merges the per-block
log-sum-exps into running row and column statistics with ``logaddexp`` (an online max and
sum, so logits unbounded below are fine); backward recomputes each block and applies::

    dL/dl_ij = a_i softmax_row_i(j) + b_j softmax_col_j(i) - w_i [j = t_i],
    a_i = w_i / 2,    b_j = 0.5 sum_{k: t_k = j} w_k   (a scatter of w onto t).

Two logit kinds:

* ``"lorentz"``: ``S_ij = xt_i yt_j - x_i . y_j`` (a GEMM added onto the outer product),
  ``u = max(c S - 1, 0)``, ``l = -(beta / 2) acosh(1 + u)`` with ``beta = 2 s / sqrt(c)``,
  i.e. ``l = -s d_L``. ``dl/du = -beta / (2 sqrt(u (u + 2)))``, set to 0 where ``u = 0``
  (coinciding points), as the reference does.
* ``"cosine"``: ``l = beta x_i . y_j`` on already normalised features, ``beta = s``.

``c`` and ``beta`` are separate inputs, so the logit scale's path (``beta = 2 s / sqrt(c)``)
is ordinary autograd outside. The time components ``xt``, ``yt`` are computed inside when
passed as None (then their gradient is folded into ``dx``, ``dy``, ``dc`` in place), or taken
as inputs with their own gradients.
"""
from __future__ import annotations

import torch

__all__ = ["TiledContrastive", "tiled_contrastive", "entailment_terms", "EntailmentRows",
           "DEFAULT_BLOCK_ROWS", "DEFAULT_BLOCK_COLS"]

DEFAULT_BLOCK_ROWS = 512
DEFAULT_BLOCK_COLS = 1024


def _block(kind, x, y, xt, yt, c: float, beta: float, need_den: bool = False):
    """(logits, u, 1 / sqrt(u (u + 2))) of one block (the last two for Lorentz only).

    Lorentz: ``u = c (xt yt^T - 1/c) - c x y^T = c (xt yt - x.y) - 1`` as one in-place addmm
    on the outer product, clipped at 0 (rounding can push it below). ``acosh(1 + u)`` is taken
    as ``log(1 + u + sqrt(u (u + 2)))``: torch's ``asinh`` and ``log1p`` are not vectorised on
    CPU (20-50x slower than ``log``), and the loss only needs the logits to absolute precision
    (error ~ beta * eps), which this form has.
    """
    if kind != "lorentz":
        return torch.mm(x, y.T).mul_(beta), None, None
    u = torch.outer(xt, yt).sub_(1.0 / c).addmm_(x, y.T, beta=c, alpha=-c).clamp_(min=0.0)
    den = u.add(2.0).mul_(u).sqrt_()                       # sqrt(u (u + 2)) = sqrt(z^2 - 1)
    logits = torch.add(den, u).add_(1.0).log_().mul_(-0.5 * beta)
    if not need_den:
        return logits, u, None
    # dl/du = -beta / (2 den); 0 where u = 0 (coinciding points), as in the reference.
    inv_den = den.reciprocal_().nan_to_num_(nan=0.0, posinf=0.0)
    return logits, u, inv_den


def _lse_rows_cols(logits, scratch):
    """(row lse, column lse) of a block, each with its own online shift (two exps)."""
    m_r = logits.amax(dim=1)
    m_c = logits.amax(dim=0)
    e = torch.sub(logits, m_r[:, None], out=scratch).exp_()
    s_r = e.sum(dim=1)
    e = torch.sub(logits, m_c[None, :], out=scratch).exp_()
    s_c = e.sum(dim=0)
    return m_r + s_r.log(), m_c + s_c.log()


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
        lorentz = kind == "lorentz"
        dt, dev = x.dtype, x.device
        own_t = lorentz and xt is None
        if own_t:  # time components here: their backward then needs no (N, D) temporaries
            xt = torch.sqrt(1.0 / c_f + torch.linalg.vecdot(x, x))
            yt = torch.sqrt(1.0 / c_f + torch.linalg.vecdot(y, y))
        neg_inf = float("-inf")
        row_lse = torch.full((n,), neg_inf, dtype=dt, device=dev)
        col_lse = torch.full((m,), neg_inf, dtype=dt, device=dev)
        pos = torch.zeros(n, dtype=dt, device=dev)
        scratch = torch.empty(min(br, n) * min(bc, m), dtype=dt, device=dev)
        for r0 in range(0, n, br):
            r1 = min(r0 + br, n)
            xr, tr = x[r0:r1], targets[r0:r1]
            xtr = xt[r0:r1] if lorentz else None
            rl = torch.full((r1 - r0,), neg_inf, dtype=dt, device=dev)
            pr = pos[r0:r1]
            for c0 in range(0, m, bc):
                c1 = min(c0 + bc, m)
                logits, _, _ = _block(kind, xr, y[c0:c1], xtr, yt[c0:c1] if lorentz else None, c_f, beta_f)
                lse_r, lse_c = _lse_rows_cols(logits, scratch[: logits.numel()].view_as(logits))
                rl = torch.logaddexp(rl, lse_r)
                col_lse[c0:c1] = torch.logaddexp(col_lse[c0:c1], lse_c)
                hit = (tr >= c0) & (tr < c1)
                at = logits.gather(1, (tr - c0).clamp(0, c1 - c0 - 1)[:, None])[:, 0]
                pr.copy_(torch.where(hit, at, pr))
            row_lse[r0:r1] = rl
        if reduce_cols is not None:
            col_lse = reduce_cols(col_lse)
        per_pair = 0.5 * ((row_lse - pos) + (col_lse[targets] - pos))
        ctx.kind, ctx.blocks, ctx.c_f, ctx.beta_f = kind, blocks, c_f, beta_f
        ctx.reduce_colw, ctx.d, ctx.own_t = reduce_colw, x.shape[1], own_t
        if lorentz:
            ctx.save_for_backward(x, y, targets, row_lse, col_lse, xt, yt)
        else:
            ctx.save_for_backward(x, y, targets, row_lse, col_lse)
        return per_pair

    @staticmethod
    def backward(ctx, grad):
        kind, (br, bc), c_f, beta_f = ctx.kind, ctx.blocks, ctx.c_f, ctx.beta_f
        lorentz = kind == "lorentz"
        if lorentz:
            x, y, targets, row_lse, col_lse, xt, yt = ctx.saved_tensors
            dxt, dyt = torch.zeros_like(xt), torch.zeros_like(yt)
        else:
            x, y, targets, row_lse, col_lse = ctx.saved_tensors
        n, m = x.shape[0], y.shape[0]
        dt = x.dtype
        grad = grad.to(dt)
        colw = torch.zeros(m, dtype=dt, device=x.device).scatter_add_(0, targets, grad)
        if ctx.reduce_colw is not None:
            colw = ctx.reduce_colw(colw)
        half_w, half_cw = 0.5 * grad, 0.5 * colw
        dx, dy = torch.zeros_like(x), torch.zeros_like(y)
        d_beta = torch.zeros((), dtype=dt, device=x.device)  # sum G * l   (dl/dbeta = l / beta)
        d_c = torch.zeros((), dtype=dt, device=x.device)     # sum psi * dU/dc
        scratch = torch.empty(min(br, n) * min(bc, m), dtype=dt, device=x.device)
        for r0 in range(0, n, br):
            r1 = min(r0 + br, n)
            xr, tr = x[r0:r1], targets[r0:r1]
            xtr = xt[r0:r1] if lorentz else None
            neg_pos = (-grad[r0:r1])[:, None]
            for c0 in range(0, m, bc):
                c1 = min(c0 + bc, m)
                yc = y[c0:c1]
                ytc = yt[c0:c1] if lorentz else None
                logits, u, inv_den = _block(kind, xr, yc, xtr, ytc, c_f, beta_f, need_den=True)
                # G = dL/dl on this block.
                g = torch.sub(logits, row_lse[r0:r1, None]).exp_().mul_(half_w[r0:r1, None])
                t = torch.sub(logits, col_lse[None, c0:c1], out=scratch[: g.numel()].view_as(g))
                g.add_(t.exp_().mul_(half_cw[None, c0:c1]))
                hit = ((tr >= c0) & (tr < c1))[:, None]
                g.scatter_add_(1, (tr - c0).clamp(0, c1 - c0 - 1)[:, None],
                               torch.where(hit, neg_pos, torch.zeros_like(neg_pos)))
                d_beta += torch.dot(g.view(-1), logits.view(-1))
                if lorentz:
                    # psi = dL/du = G dl/du with u = c (xt yt - x.y) - 1:
                    # dL/dc += psi (u + 1) / c, dL/dx = -c psi y, dL/dxt = c psi yt (and for y).
                    psi = g.mul_(inv_den).mul_(-0.5 * beta_f)
                    d_c += (torch.dot(psi.view(-1), u.view(-1)) + psi.sum()) / c_f
                    dx[r0:r1].addmm_(psi, yc, alpha=-c_f)
                    dy[c0:c1].addmm_(psi.T, xr, alpha=-c_f)
                    dxt[r0:r1].addmv_(psi, ytc, alpha=c_f)
                    dyt[c0:c1].addmv_(psi.T, xtr, alpha=c_f)
                else:                                           # dL/dS = beta G
                    dx[r0:r1].addmm_(g, yc, alpha=beta_f)
                    dy[c0:c1].addmm_(g.T, xr, alpha=beta_f)
        gbeta = (d_beta / beta_f).reshape(())
        if lorentz and ctx.own_t:
            # xt = sqrt(1/c + |x|^2): dx += dxt x / xt, dc -= dxt / (2 c^2 xt); same for y.
            d_c -= ((dxt / xt).sum() + (dyt / yt).sum()) / (2.0 * c_f * c_f)
            dx.addcmul_(x, (dxt / xt)[:, None])
            dy.addcmul_(y, (dyt / yt)[:, None])
            return (None, dx, dy, None, None, d_c.reshape(()), gbeta, None, None, None, None)
        if lorentz:
            return (None, dx, dy, dxt, dyt, d_c.reshape(()), gbeta, None, None, None, None)
        return (None, dx, dy, None, None, None, gbeta, None, None, None, None)


@torch.compiler.disable  # a Python loop over tiles with host syncs: run eagerly, graph-break
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
    from ..lorentz.constants import ANGLE_DENOM_EPS, ASIN_EPS

    lo, hi = -1.0 + ASIN_EPS, 1.0 - ASIN_EPS
    diff = x - y
    n2, m2 = (x * x).sum(-1), (y * y).sum(-1)
    e = (diff * diff).sum(-1)                 # |x - y|^2
    f = (diff * (x + y)).sum(-1)              # |x|^2 - |y|^2, from differences
    n = torch.sqrt(n2)
    xt, yt = torch.sqrt(1.0 / c + n2), torch.sqrt(1.0 / c + m2)
    s_t = xt + yt
    gap = f / s_t                             # x_t - y_t without cancellation
    q_raw = e - gap * gap                     # |x - y|_L^2
    q = torch.clamp(q_raw, min=0.0)
    u = 0.5 * c * q                           # z - 1
    root = torch.sqrt(u * (u + 2.0))          # sqrt(z^2 - 1)
    numer = -gap - u * xt                     # y_t - z x_t
    den_raw = n * root
    den = torch.clamp(den_raw, min=ANGLE_DENOM_EPS)
    ratio = numer / den
    arg_q = torch.clamp(ratio, lo, hi)
    angle = torch.acos(arg_q)
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
    # angle = acos(arg_q): the clamp passes the gradient inside [lo, hi].
    g_r = torch.where((ratio >= lo) & (ratio <= hi), -sign * act / torch.sqrt(1.0 - arg_q * arg_q), zero)
    g_num = g_r / den
    g_den = torch.where(den_raw >= ANGLE_DENOM_EPS, -g_r * ratio / den, zero)
    g_gap = -g_num
    g_u = -g_num * xt
    g_xt = -g_num * u
    g_n = g_den * root
    g_u = g_u + torch.where(root > 0, g_den * n * (u + 1.0) / torch.where(root > 0, root, 1.0), zero)
    g_c = g_u * 0.5 * q
    g_q = torch.where(q_raw >= 0, g_u * 0.5 * c, zero)
    g_e = g_q
    g_gap = g_gap - 2.0 * gap * g_q
    g_f = g_gap / s_t
    g_xt = g_xt - g_gap * gap / s_t
    g_yt = -g_gap * gap / s_t
    # aperture = asin(2K / (sqrt(c) |x|)) where |x| > n_min (else clipped: gradient 0).
    ha_live = (n > n_min) & (arg_raw <= hi)
    g_arg = torch.where(ha_live, -sign * act / torch.sqrt(1.0 - arg * arg), zero)
    g_n = g_n - g_arg * arg / torch.where(ha_live, nn_, 1.0)
    g_c = g_c - g_arg * arg / (2.0 * c)
    # xt = sqrt(1/c + |x|^2), yt likewise; f = |x|^2 - |y|^2.
    g_c = g_c - g_xt / (2.0 * c * c * xt) - g_yt / (2.0 * c * c * yt)
    g_n2 = g_xt / (2.0 * xt) + g_f
    g_m2 = g_yt / (2.0 * yt) - g_f
    coef_x = 2.0 * g_n2 + torch.where(n > 0, g_n / torch.where(n > 0, n, 1.0), zero)
    gx = coef_x[:, None] * x + (2.0 * g_e)[:, None] * diff
    gy = (2.0 * g_m2)[:, None] * y - (2.0 * g_e)[:, None] * diff
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
