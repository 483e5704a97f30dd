"""Multi-process pieces of the losses: the one all-gather with gradient of the package, a
differentiable log-sum-exp all-reduce, and the exact sharded contrastive loss.

The sharded loss follows open_clip's ``local_loss=True, gather_with_grad=True`` pattern but is
*exact*: each rank holds some images (rows) and some texts; texts are gathered with gradient,
each rank computes the statistics of its own rows against all columns, and the column
log-sum-exps (which need every row) are **all-reduced** (a log-sum-exp merge of the per-rank
partial column statistics, an O(M) message), not approximated from local rows. Images are
never gathered, so each rank does ``1/W`` of the loss work.

Gradients: the global loss is ``L = sum_ranks L_rank``. Every collective's backward sums the
incoming gradients over ranks (each rank's ``L_rank`` depends on every rank's texts and column
statistics), so a rank's backward of its own ``L_rank`` yields exactly ``dL/d(its inputs)``
once every rank has run its backward.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..checks import check_targets, value_checks_enabled
from .kernels import contrastive_stats, cosine_operands, lorentz_operands

__all__ = ["world_info", "gather_with_grad", "all_reduce_logsumexp", "all_reduce_sum", "sharded_stats",
           "distributed_contrastive"]


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
    def forward(ctx, t, group, sizes):
        rank, world = world_info(group)
        if sizes is None:
            sizes = _gather_sizes(t.shape[0], t.device, group)
        big = max(sizes)
        if all(s == big for s in sizes):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous(), group=group)
            out = torch.cat(parts, dim=0)
        else:
            padded = t.new_zeros((big,) + tuple(t.shape[1:]))
            padded[: t.shape[0]] = t
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded.contiguous(), group=group)
            out = torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)
        ctx.group, ctx.rank, ctx.sizes = group, rank, sizes
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(t: torch.Tensor, group=None, uniform: bool = False) -> torch.Tensor:
    """All-gather ``t`` (concatenated along dim 0, rank order) keeping the autograd graph: the
    gradient w.r.t. this rank's ``t`` is its slice of the sum over ranks of the gradient w.r.t.
    the gathered tensor (every rank's loss may use every row). ``uniform=True``: every rank
    passes the same number of rows, which skips the size exchange (a host sync on GPU).
    Identity without a process group."""
    rank, world = world_info(group)
    if world == 1:
        return t
    sizes = [t.shape[0]] * world if uniform else None
    return _GatherWithGrad.apply(t, group, sizes)


def all_reduce_sum(v: torch.Tensor, group=None) -> torch.Tensor:
    """Sum over ranks (no gradient; a copy)."""
    v = v.detach().clone()
    if world_info(group)[1] > 1:
        dist.all_reduce(v, op=dist.ReduceOp.SUM, group=group)
    return v


class _AllReduceLSE(torch.autograd.Function):
    """``out = log sum_ranks exp(v_rank)`` elementwise; backward: ``g_v = (sum_ranks g_out)
    e^(v - out)`` (``out`` is replicated and every rank's loss may use it)."""

    @staticmethod
    def forward(ctx, v, group):
        m = v.detach().clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        s = torch.exp(v.detach() - m)
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
        out = m + torch.log(s)
        ctx.save_for_backward(v, out)
        ctx.group = group
        return out

    @staticmethod
    def backward(ctx, grad):
        v, out = ctx.saved_tensors
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g * torch.exp(v - out), None


def all_reduce_logsumexp(v: torch.Tensor, group=None) -> torch.Tensor:
    """Elementwise ``log(sum_ranks exp(v_rank))``, differentiable (see ``_AllReduceLSE``)."""
    if world_info(group)[1] == 1:
        return v
    return _AllReduceLSE.apply(v, group)


def sharded_stats(kind: str, image, text, s, c, targets, *, backend: str, group=None, blocks=None,
                  uniform_shards: bool = False):
    """``(per_pair (N_local,), targets)`` of this rank's images against every rank's texts:
    texts gathered with gradient, column statistics all-reduced. ``targets``: this rank's
    images' positives as *global* text indices (default: the diagonal of the concatenation,
    which needs equal totals)."""
    rank, world = world_info(group)
    dev = image.device
    n_loc = image.shape[0]
    if uniform_shards:
        sizes_n, sizes_m = [n_loc] * world, [text.shape[0]] * world
    else:
        sizes_n, sizes_m = _gather_sizes(n_loc, dev, group), _gather_sizes(text.shape[0], dev, group)
    n_all, m_all = sum(sizes_n), sum(sizes_m)
    if targets is None:
        if n_all != m_all:
            raise ValueError(f"without targets, the total numbers of images and texts must agree, got {n_all} and {m_all}")
        t = torch.arange(n_loc, device=dev) + sum(sizes_n[:rank])
    else:
        t = check_targets(targets, n_loc, m_all, dev, what="text")
    if kind == "lorentz":
        x, y, beta = lorentz_operands(image, text, s, c, backend)
    else:
        (x, y), beta = cosine_operands(image, text, backend), s
        c = torch.ones((), dtype=beta.dtype, device=dev)
    y_all = gather_with_grad(y, group, uniform=uniform_shards)
    row_lse, col_part, pos = contrastive_stats(kind, x, y_all, c, beta, t, backend, blocks)
    col_lse = all_reduce_logsumexp(col_part, group)
    return 0.5 * ((row_lse - pos) + (col_lse[t] - pos)), t


def distributed_contrastive(kind: str, image, text, s, c, targets, weights, *, backend: str,
                            group=None, blocks=None, grad_world_scale: bool = True,
                            reduction: str = "mean", uniform_shards: bool = False) -> torch.Tensor:
    """Contrastive loss of the concatenated batch (rank order) from this rank's rows.

    ``image``/``text``: this rank's rows (counts may differ between ranks unless
    ``uniform_shards``). ``targets``: global text indices (see :func:`sharded_stats`).
    ``weights``: this rank's (constants: no gradient). ``s``, ``c``: 0-dim, replicated.

    ``reduction="none"``: this rank's per-pair losses (exact: global column statistics).
    ``"mean"`` / ``"sum"``: the global weighted mean / sum ``L`` (the same value on every
    rank). Gradient convention for those two: with ``grad_world_scale=True`` (open_clip's, for
    DDP which *averages* gradients) this rank's backward produces ``world_size * dL_rank``,
    ``L_rank`` the share of this rank's rows, so after DDP's average every parameter gradient
    equals the single-process one. With ``False`` this rank's backward gives exactly its
    share, and summing parameter gradients over ranks gives ``dL/dθ``.
    ``backend="reference"`` is not distributed (it would need all rows): use chunked/triton.
    """
    if backend == "reference":
        raise ValueError("the distributed loss runs on the fused backends ('chunked' or 'triton'), not 'reference'")
    _, world = world_info(group)
    per_pair, _ = sharded_stats(kind, image, text, s, c, targets, backend=backend, group=group, blocks=blocks,
                                uniform_shards=uniform_shards)
    if reduction == "none":
        return per_pair
    dev = image.device
    if weights is None:
        w = torch.ones(per_pair.shape[0], dtype=per_pair.dtype, device=dev)
    else:
        w = weights.detach().to(per_pair.dtype)
    share = (w * per_pair).sum()
    if reduction == "mean":
        total_w = all_reduce_sum(w.sum(), group)
        if value_checks_enabled() and not float(total_w) > 0:
            raise ValueError("weights must not all be zero (summed over every rank)")
        share = share / total_w
    full = all_reduce_sum(share, group)
    scale = float(world) if grad_world_scale else 1.0
    return scale * share + (full - scale * share).detach()
