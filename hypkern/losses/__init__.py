"""Losses on the Lorentz and Euclidean geometries, fused so that the N x M logits are never
stored: large-batch contrastive (MERU's Lorentz, CLIP's cosine) and entailment (MERU's and the
reversed cone).

Modules: ``contrastive`` and ``entailment`` (the public functions), ``kernels`` (the fused
kernels as ``torch.library`` custom ops), ``distributed`` (the one gather-with-grad and the
exact sharded contrastive loss), ``reference`` (the materialised spec the fused backends are
tested against).

Backends (``backend=``, a name or a comma-separated preference list; default
``$HYPKERN_BACKEND``, else the device's default order) come from the one registry,
:mod:`hypkern.kernels.registry`: the contrastive losses run on ``chunked`` (tiled PyTorch,
the CPU default), ``triton`` (the CUDA default) and ``reference``; the entailment losses on
``native`` (the CPU default when built), ``triton`` and ``reference``. The fused backends use
O((N + M) D) memory and accumulate in float32 (float64 for float64 inputs); half-precision
inputs give a float32 loss.
"""
from __future__ import annotations

import torch

from ..kernels import registry
from . import reference  # noqa: F401
from .contrastive import REDUCTIONS, ContrastiveLoss, clip_contrastive_loss, lorentz_contrastive_loss
from .entailment import entailment_calibration_loss, entailment_loss, entailment_rows

__all__ = [
    "lorentz_contrastive_loss",
    "clip_contrastive_loss",
    "entailment_loss",
    "entailment_calibration_loss",
    "entailment_rows",
    "ContrastiveLoss",
    "REDUCTIONS",
    "LOSS_BACKENDS",
    "CONTRASTIVE_BACKENDS",
    "ENTAILMENT_BACKENDS",
    "resolve_loss_backend",
]

# Which backends implement each loss family (read from the registry).
CONTRASTIVE_BACKENDS = tuple(n for n, b in registry.BACKENDS.items() if "lorentz_contrastive" in b.implements)
ENTAILMENT_BACKENDS = tuple(n for n, b in registry.BACKENDS.items() if "entailment" in b.implements)
LOSS_BACKENDS = tuple(dict.fromkeys(CONTRASTIVE_BACKENDS + ENTAILMENT_BACKENDS))


def resolve_loss_backend(backend, device: torch.device, kind: str = "contrastive") -> str:
    """The backend a loss of ``kind`` (``"contrastive"``, ``"clip"`` or ``"entailment"``) uses on
    ``device`` (see :func:`hypkern.kernels.registry.resolve`)."""
    ops = {"contrastive": "lorentz_contrastive", "clip": "clip_contrastive", "entailment": "entailment"}
    if kind not in ops:
        raise ValueError(f"kind must be one of {tuple(ops)}, got {kind!r}")
    return registry.resolve(ops[kind], backend, torch.device(device).type)
