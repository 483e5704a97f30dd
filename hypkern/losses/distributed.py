"""Multi-process helpers: all-gather with gradient, and the distributed contrastive loss.

The distributed loss follows open_clip's ``local_loss=True, gather_with_grad=True`` pattern
but is *exact*: each rank holds some images (rows) and some texts; texts are gathered with
gradient, each rank computes its own rows against all columns, and the column statistics
(the text-side log-sum-exps, which need every row) are **all-reduced** (log-sum-exp merge of
the per-rank partial column LSEs; an O(M) message), not approximated from local rows. The
backward all-reduces the column weights ``b_j = 0.5 sum_{k: t_k = j} g_k``. Images are
never gathered.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_with_grad", "all_reduce_logsumexp", "distributed_contrastive", "world_info"]


def world_info(group=None) -> tuple[int, int]:
    """(rank, world size) of ``group``; (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_sizes(n: int, device, group) -> list[int]:
    _, world = world_info(group)
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(v) for v in out]


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's ``t`` along dim 0 (sizes may differ).
    Backward: all-reduce (sum) the gradient of the concatenation, return this rank's slice."""

    @staticmethod
    def forward(ctx, t, group):
        rank, world = world_info(group)
        sizes = _gather_sizes(t.shape[0], t.device, group)
        big = max(sizes)
        padded = t.new_zeros((big,) + tuple(t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.sizes = group, rank, sizes
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_with_grad(t: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather ``t`` (concatenated along dim 0, rank order) keeping the autograd graph: the
    gradient w.r.t. this rank's ``t`` is its slice of the sum over ranks of the gradient w.r.t.
    the gathered tensor. Identity without a process group."""
    if world_info(group)[1] == 1:
        return t
    return _GatherWithGrad.apply(t, group)


def all_reduce_logsumexp(v: torch.Tensor, group=None) -> torch.Tensor:
    """Elementwise ``log(sum_ranks exp(v_rank))`` (max all-reduce, then a sum of shifted exps)."""
    m = v.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(v - m)
    dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    return m + torch.log(s)


def _all_reduce_sum(v: torch.Tensor, group=None) -> torch.Tensor:
    v = v.clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM, group=group)
    return v


def distributed_contrastive(kind: str, image, text, s, c, targets, weights, *, backend: str,
                            group=None, blocks=None, grad_world_scale: bool = True) -> torch.Tensor:
    """Contrastive loss of the concatenated batch (rank order) from this rank's rows.

    ``image``/``text``: this rank's rows (counts may differ between ranks). ``targets``: this
    rank's images' positives as *global* text indices (default: the diagonal of the
    concatenation, which needs equal totals). ``weights``: this rank's (treated as constants:
    no gradient). ``s``, ``c``: 0-dim, replicated on every rank.

    Returns the global loss ``L`` (the same value on every rank). Gradient convention:
    with ``grad_world_scale=True`` (open_clip's, for DDP which *averages* gradients) this
    rank's backward produces ``world_size * dL_rank``, where ``L = sum_ranks L_rank`` and
    ``L_rank`` is the share of this rank's rows; after DDP's average every parameter gradient
    equals the single-process one (feature gradients seen on a rank are ``world_size``
    times ``dL/dfeatures``). With ``False`` the feature gradients are exactly ``dL/dfeatures``
    and replicated parameters (``s``, ``c``) need an all-reduce *sum*.
    ``backend="reference"`` is not distributed (it would need all rows): use chunked/triton.
    """
    from .. import losses as L  # late: losses imports this module lazily

    if backend == "reference":
        raise ValueError("the distributed loss runs on the fused backends ('chunked' or 'triton'), not 'reference'")
    rank, world = world_info(group)
    dev = image.device
    n_loc = image.shape[0]
    sizes_n = _gather_sizes(n_loc, dev, group)
    sizes_m = _gather_sizes(text.shape[0], dev, group)
    n_all, m_all = sum(sizes_n), sum(sizes_m)
    if targets is None:
        if n_all != m_all:
            raise ValueError(f"without targets, the total numbers of images and texts must agree, got {n_all} and {m_all}")
        t = torch.arange(n_loc, device=dev) + sum(sizes_n[:rank])
    else:
        t = L._check_targets(targets, n_loc, m_all, dev, what="text")
    if kind == "lorentz":
        x, y, xt, yt, beta = L._lorentz_operands(image, text, s, c, backend)
        y_all = gather_with_grad(y, group)
        yt_all = None if yt is None else gather_with_grad(yt, group)
    else:
        x, y = L._clip_operands(image, text, backend)
        xt = yt_all = None
        y_all, beta = gather_with_grad(y, group), s
    per_pair = L._per_pair(kind, x, y_all, xt, yt_all, c, beta, t, backend, blocks,
                           reduce_cols=lambda v: all_reduce_logsumexp(v, group),
                           reduce_colw=lambda v: _all_reduce_sum(v, group))
    if weights is None:
        w = torch.ones(n_loc, dtype=per_pair.dtype, device=dev)
    else:
        w = weights.detach().to(per_pair.dtype)
    total_w = _all_reduce_sum(w.sum(), group)
    if not float(total_w) > 0:
        raise ValueError("weights must not all be zero (summed over every rank)")
    share = (w * per_pair).sum() / total_w
    full = _all_reduce_sum(share.detach(), group)
    scale = float(world) if grad_world_scale else 1.0
    return scale * share + (full - scale * share).detach()
