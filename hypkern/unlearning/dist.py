"""Data parallelism for the unlearning trainer (torchrun / ``torch.distributed``).

Scheme (the same maths as DDP, written out so it composes with gradient caching): every rank
encodes its shard of the global batch and computes its *share* ``L_r`` of the global loss
(``hypkern.unlearning.objectives``: the sharded contrastive loss of its rows against every
rank's texts, the row-wise terms of its rows), with ``sum_r L_r = L``. The collectives inside
the loss (``hypkern.losses.distributed``, the package's one gather-with-grad) sum gradients
over ranks in their backward, so a rank's parameter gradient is its shard's contribution to
``∂L/∂θ``; summing the parameter gradients over ranks (``all_reduce_grads``) gives exactly
``∂L/∂θ`` of the single-process global batch, the logit scale and curvature included.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist

from ..losses.distributed import world_info

__all__ = ["rank_world", "all_reduce_grads", "broadcast_module", "local_slice", "default_device"]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    return world_info(None)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def local_slice(n_global: int, rank: int, world: int) -> slice:
    per = n_global // world
    return slice(rank * per, (rank + 1) * per)


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
