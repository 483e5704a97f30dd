"""Data parallelism for the unlearning trainer (torchrun / ``torch.distributed``).

Scheme (the same maths as DDP, written out so it composes with gradient caching): every rank
encodes its shard of the global batch, the shards are all-gathered (rank order), and *every
rank computes the same global loss* ``L``. The gather's backward hands each rank the gradient
w.r.t. its *own* shard only — ``∂L/∂(local embeddings)`` — so a rank's parameter gradient is
its shard's contribution to ``∂L/∂θ``; summing the parameter gradients over ranks
(``all_reduce_grads``) gives exactly ``∂L/∂θ`` of the single-process global batch.
Parameters the loss uses directly (logit scale, curvature when trained) get the same gradient
on every rank, so the loss sees them through ``scale_grad(x, 1/world)``.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist

__all__ = ["rank_world", "gather_cat", "scale_grad", "all_reduce_grads", "broadcast_module",
           "local_slice", "default_device"]


def rank_world() -> tuple[int, int]:
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def local_slice(n_global: int, rank: int, world: int) -> slice:
    per = n_global // world
    return slice(rank * per, (rank + 1) * per)


class _GatherCat(torch.autograd.Function):
    """Forward: concatenation of every rank's ``(n, D)`` shard in rank order (equal ``n``).
    Backward: the rows of this rank's shard (see the module docstring)."""

    @staticmethod
    def forward(ctx, x):
        rank, world = rank_world()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        tdist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """All-gather with a local-slice gradient; identity on one process."""
    if rank_world()[1] == 1:
        return x
    if not x.requires_grad:
        with torch.no_grad():
            return _GatherCat.apply(x)
    return _GatherCat.apply(x)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_grad(x, factor: float):
    """Identity forward, gradient times ``factor`` backward (no-op for factor 1 / no grad)."""
    if x is None or factor == 1.0 or not x.requires_grad:
        return x
    return _ScaleGrad.apply(x, factor)


def all_reduce_grads(params) -> None:
    """Sum ``p.grad`` over ranks (missing grads count as zeros), one flat buffer per dtype."""
    _, world = rank_world()
    if world == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict = {}
    for p in params:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        tdist.all_reduce(flat)
        off = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))
            off += n


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (all ranks start equal)."""
    if rank_world()[1] == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)
