"""Tiled (chunked) PyTorch kernels of the contrastive statistics: the backend ``"chunked"``,
O((N + M) D) memory on any device.

The contrastive losses of :mod:`hypkern.losses` are built from three statistics of the
logits ``l_ij`` (N x M) and the positives ``t_i``::

    r_i = lse_j l_ij  (row log-sum-exp),   C_j = lse_k l_kj  (column log-sum-exp),
    p_i = l_i,t_i     (the positive logit).

:func:`contrastive_fwd` returns them without storing the logits: it walks (rows x columns)
blocks and merges the per-block log-sum-exps into running statistics with ``logaddexp`` (an
online max and sum, so logits unbounded below are fine). :func:`contrastive_bwd` takes the
upstream gradients ``(g_r, g_C, g_p)`` of the three, recomputes each block and applies::

    dL/dl_ij = g_r_i e^(l_ij - r_i) + g_C_j e^(l_ij - C_j) + g_p_i [j = t_i].

Two logit kinds:

* ``"lorentz"``: ``u = -c<x_i, y_j>_L - 1`` in the cancellation-free form of
  :func:`hypkern.lorentz.reference.pairwise_u`, ``u = c ((e_i + f_j)/sqrt(c) + e_i f_j -
  x_i . y_j)`` with the time components' excesses ``e = xt - 1/sqrt(c) = |x|^2 / (xt +
  1/sqrt(c))`` (a GEMM added onto an outer product and two broadcasts), clipped at 0;
  ``l = -(beta / 2) acosh(1 + u)`` with ``beta = 2 s / sqrt(c)``, i.e. ``l = -s d_L``.
  ``dl/du = -beta / (2 sqrt(u (u + 2)))``, set to 0 where ``u = 0`` (coinciding points), as
  the reference does. ``du/dc = (u - (xt - yt)^2 / (2 xt yt)) / c`` at fixed features, with
  ``xt - yt = e - f``: no cancellation near the origin. ``xt``'s dependence on ``x`` is
  folded into ``dx``.
* ``"cosine"``: ``l = beta x_i . y_j`` on already normalised features (``beta = s``; ``c``
  is unused and gets a zero gradient).

``c`` and ``beta`` are 0-dim tensors read inside the tile arithmetic (no device->host copy).
"""
from __future__ import annotations

import torch

__all__ = ["supports", "contrastive_fwd", "contrastive_bwd", "DEFAULT_BLOCK_ROWS", "DEFAULT_BLOCK_COLS"]

DEFAULT_BLOCK_ROWS = 512
DEFAULT_BLOCK_COLS = 1024


def supports(device) -> tuple[bool, str]:
    """Plain PyTorch: CPU and CUDA."""
    device = torch.device(device)
    return (True, "") if device.type in ("cpu", "cuda") else (False, f"no device type {device.type!r}")


def _blocks(block_rows: int, block_cols: int) -> tuple[int, int]:
    return (block_rows if block_rows > 0 else DEFAULT_BLOCK_ROWS,
            block_cols if block_cols > 0 else DEFAULT_BLOCK_COLS)


def _time(x, c):
    """``(xt, e)``: the time components ``sqrt(1/c + |x|^2)`` and their excesses over 1/sqrt(c)."""
    a = torch.linalg.vecdot(x, x)
    xt = torch.sqrt(a + c.reciprocal())
    return xt, a / (xt + torch.rsqrt(c))


def _block(kind, x, y, ex, ey, c, beta, need_den: bool = False):
    """(logits, u, 1 / sqrt(u (u + 2))) of one block (the last two for Lorentz only).

    Lorentz: ``u = c (e f^T + (e + f^T)/sqrt(c) - x y^T)`` (``e``, ``f`` the rows' and columns'
    time excesses) as one addmm on the outer product, clipped at 0 (rounding can push it
    below). ``acosh(1 + u)`` is taken as ``log(1 + u + sqrt(u (u + 2)))``:
    torch's ``asinh`` and ``log1p`` are not vectorised on CPU (20-50x slower than ``log``), and
    the loss only needs the logits to absolute precision (error ~ beta * eps), which this form
    has.
    """
    if kind != "lorentz":
        return torch.mm(x, y.T).mul_(beta), None, None
    isc = torch.rsqrt(c)
    u = torch.outer(ex, ey).add_((ex * isc)[:, None]).add_((ey * isc)[None, :]).addmm_(x, y.T, alpha=-1.0)
    u = u.mul_(c).clamp_(min=0.0)
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


def contrastive_fwd(kind: str, x, y, c, beta, targets, block_rows: int = 0, block_cols: int = 0):
    """``(r (N,), C (M,), p (N,))`` (see the module docstring), in ``x``'s dtype."""
    n, m = x.shape[0], y.shape[0]
    br, bc = _blocks(block_rows, block_cols)
    lorentz = kind == "lorentz"
    dt, dev = x.dtype, x.device
    c, beta = c.to(dt), beta.to(dt)
    ex = _time(x, c)[1] if lorentz else None
    ey = _time(y, c)[1] if lorentz else None
    neg_inf = float("-inf")
    row_lse = torch.empty(n, dtype=dt, device=dev)
    col_lse = torch.full((m,), neg_inf, dtype=dt, device=dev)
    pos = torch.zeros(n, dtype=dt, device=dev)
    scratch = torch.empty(min(br, n) * min(bc, m), dtype=dt, device=dev)
    for r0 in range(0, n, br):
        r1 = min(r0 + br, n)
        xr, tr = x[r0:r1], targets[r0:r1]
        exr = ex[r0:r1] if lorentz else None
        rl = torch.full((r1 - r0,), neg_inf, dtype=dt, device=dev)
        pr = pos[r0:r1]
        for c0 in range(0, m, bc):
            c1 = min(c0 + bc, m)
            logits, _, _ = _block(kind, xr, y[c0:c1], exr, ey[c0:c1] if lorentz else None, c, beta)
            lse_r, lse_c = _lse_rows_cols(logits, scratch[: logits.numel()].view_as(logits))
            rl = torch.logaddexp(rl, lse_r)
            col_lse[c0:c1] = torch.logaddexp(col_lse[c0:c1], lse_c)
            hit = (tr >= c0) & (tr < c1)
            at = logits.gather(1, (tr - c0).clamp(0, c1 - c0 - 1)[:, None])[:, 0]
            pr.copy_(torch.where(hit, at, pr))
        row_lse[r0:r1] = rl
    return row_lse, col_lse, pos


def contrastive_bwd(kind: str, g_row, g_col, g_pos, x, y, c, beta, targets, row_lse, col_lse,
                    block_rows: int = 0, block_cols: int = 0):
    """``(dx, dy, dc, dbeta)`` from the upstream gradients of ``(r, C, p)``."""
    n, m = x.shape[0], y.shape[0]
    br, bc = _blocks(block_rows, block_cols)
    lorentz = kind == "lorentz"
    dt, dev = x.dtype, x.device
    c_in = c
    c, beta = c.to(dt), beta.to(dt)
    g_row, g_col, g_pos = g_row.to(dt), g_col.to(dt), g_pos.to(dt)
    if lorentz:
        (xt, ex), (yt, ey) = _time(x, c), _time(y, c)
        dxt, dyt = torch.zeros_like(xt), torch.zeros_like(yt)
        # du/dc = (u - (xt - yt)^2 / (2 xt yt)) / c = (u - (e^2/xt)(1/yt) + 2 (e/xt)(f/yt) - (1/xt)(f^2/yt)) / c
        gap_r = torch.stack([ex * ex / xt, ex / xt, xt.reciprocal()], 1)                    # (N, 3)
        gap_c = torch.stack([yt.reciprocal(), -2.0 * ey / yt, ey * ey / yt], 1)            # (M, 3)
    dx, dy = torch.zeros_like(x), torch.zeros_like(y)
    d_beta = torch.zeros((), dtype=dt, device=dev)  # sum G * l   (dl/dbeta = l / beta)
    d_c = torch.zeros((), dtype=dt, device=dev)     # sum psi * dU/dc
    scratch = torch.empty(min(br, n) * min(bc, m), dtype=dt, device=dev)
    for r0 in range(0, n, br):
        r1 = min(r0 + br, n)
        xr, tr = x[r0:r1], targets[r0:r1]
        xtr = xt[r0:r1] if lorentz else None
        exr = ex[r0:r1] if lorentz else None
        gp = g_pos[r0:r1, None]
        for c0 in range(0, m, bc):
            c1 = min(c0 + bc, m)
            yc = y[c0:c1]
            ytc = yt[c0:c1] if lorentz else None
            eyc = ey[c0:c1] if lorentz else None
            logits, u, inv_den = _block(kind, xr, yc, exr, eyc, c, beta, need_den=True)
            # G = dL/dl on this block.
            g = torch.sub(logits, row_lse[r0:r1, None]).exp_().mul_(g_row[r0:r1, None])
            t = torch.sub(logits, col_lse[None, c0:c1], out=scratch[: g.numel()].view_as(g))
            g.add_(t.exp_().mul_(g_col[None, c0:c1]))
            hit = ((tr >= c0) & (tr < c1))[:, None]
            g.scatter_add_(1, (tr - c0).clamp(0, c1 - c0 - 1)[:, None],
                           torch.where(hit, gp, torch.zeros_like(gp)))
            d_beta += torch.dot(g.view(-1), logits.view(-1))
            if lorentz:
                # psi = dL/du = G dl/du with u = c (xt yt - x.y) - 1:
                # dL/dc += psi du/dc, dL/dx = -c psi y, dL/dxt = c psi yt (and for y).
                psi = g.mul_(inv_den).mul_(-0.5 * beta)
                gap = (gap_r[r0:r1] * psi.mm(gap_c[c0:c1])).sum()  # sum psi (xt - yt)^2 / (xt yt)
                d_c += (torch.dot(psi.view(-1), u.view(-1)) - 0.5 * gap) / c
                k = psi.mul_(-c)                                # dL/d(x.y) = -c psi
                dx[r0:r1].addmm_(k, yc)
                dy[c0:c1].addmm_(k.T, xr)
                dxt[r0:r1].addmv_(k, ytc, alpha=-1.0)
                dyt[c0:c1].addmv_(k.T, xtr, alpha=-1.0)
            else:                                               # dL/dS = beta G
                g.mul_(beta)
                dx[r0:r1].addmm_(g, yc)
                dy[c0:c1].addmm_(g.T, xr)
    gbeta = (d_beta / beta).reshape(())
    if lorentz:
        # xt = sqrt(1/c + |x|^2): dx += dxt x / xt (its c-dependence is inside du/dc); same for y.
        dx.addcmul_(x, (dxt / xt)[:, None])
        dy.addcmul_(y, (dyt / yt)[:, None])
    return dx, dy, d_c.reshape(()).to(c_in.dtype), gbeta.to(beta.dtype)
