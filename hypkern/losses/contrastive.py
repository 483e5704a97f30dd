"""Large-batch contrastive losses (MERU's Lorentz and CLIP's cosine) that never store the
N x M logits.

Per pair ``i`` (image ``i``, its positive text ``t_i``, default ``t_i = i``)::

    loss_i = 0.5 (lse_j l_ij - l_i,t_i) + 0.5 (lse_k l_k,t_i - l_i,t_i),
    L = sum_i w_i loss_i / sum_i w_i          (plain mean without weights)

with ``l_ij = -s d_L(image_i, text_j)`` (MERU) or ``l_ij = s cos(image_i, text_j)`` (CLIP).
With the diagonal and unit weights this is ``0.5 (CE(l, diag) + CE(l^T, diag))``. The three
statistics (row/column log-sum-exp, positive logit) come from the custom op
``hypkern::contrastive_stats`` (:mod:`hypkern.losses.kernels`); the per-pair combination,
weights and reduction are plain autograd on O(N) tensors.
"""
from __future__ import annotations

import torch

from ..checks import check_pair, check_targets, check_weights, positive_scalar
from ..kernels import registry
from . import reference as loss_reference
from .distributed import distributed_contrastive, world_info
from .kernels import contrastive_stats, cosine_operands, lorentz_operands

__all__ = ["lorentz_contrastive_loss", "clip_contrastive_loss", "ContrastiveLoss", "REDUCTIONS",
           "reduce_pairs"]

REDUCTIONS = ("mean", "sum", "none")


def reduce_pairs(per_pair: torch.Tensor, weights, reduction: str) -> torch.Tensor:
    """``"mean"``: ``sum w l / sum w`` (plain mean without weights); ``"sum"``: ``sum w l``;
    ``"none"``: the per-pair losses themselves."""
    if reduction == "none":
        return per_pair
    if weights is None:
        return per_pair.mean() if reduction == "mean" else per_pair.sum()
    w = weights.to(per_pair.dtype)
    total = (w * per_pair).sum()
    return total / w.sum() if reduction == "mean" else total


def _check_common(image, text, targets, weights, reduction, distributed: bool):
    """Checks shared by both losses; targets are checked later when distributed (they index
    the gathered texts)."""
    check_pair(image, text, rowwise=False, names=("image", "text"))
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    n, m = image.shape[0], text.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"the contrastive loss needs at least one image and one text, got {n} and {m}")
    if reduction == "none" and weights is not None:
        raise ValueError("reduction='none' returns the unweighted per-pair losses: pass weights=None")
    t = None if distributed else check_targets(targets, n, m, image.device)
    return t, check_weights(weights, n, image.device, need_positive_sum=not distributed and reduction == "mean")


def _contrastive(kind, image, text, logit_scale, curv, targets, weights, backend, distributed, group,
                 grad_world_scale, blocks, reduction, uniform_shards):
    dist_on = bool(distributed) and world_info(group)[1] > 1
    t, w = _check_common(image, text, targets, weights, reduction, dist_on)
    s = positive_scalar("logit_scale", logit_scale, image)
    c = positive_scalar("curv", curv, image) if kind == "lorentz" else None
    op = "lorentz_contrastive" if kind == "lorentz" else "clip_contrastive"
    chosen = registry.resolve(op, backend, image.device.type)
    if dist_on:
        return distributed_contrastive(kind, image, text, s, c, targets, weights, backend=chosen, group=group,
                                       blocks=blocks, grad_world_scale=grad_world_scale, reduction=reduction,
                                       uniform_shards=uniform_shards)
    if chosen == "reference":
        logits = (loss_reference.lorentz_logits(image, text, s, c) if kind == "lorentz"
                  else loss_reference.clip_logits(image, text, s))
        per_pair = loss_reference.symmetric_ce_per_pair(logits, t)
    else:
        if kind == "lorentz":
            x, y, beta = lorentz_operands(image, text, s, c, chosen)
        else:
            (x, y), beta = cosine_operands(image, text, chosen), s
            c = torch.ones((), dtype=s.dtype, device=image.device)
        row_lse, col_lse, pos = contrastive_stats(kind, x, y, c, beta, t, chosen, blocks)
        per_pair = 0.5 * ((row_lse - pos) + (col_lse[t] - pos))
    return reduce_pairs(per_pair, w, reduction)


def lorentz_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale, curv,
                             targets: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                             *, reduction: str = "mean", backend=None, distributed: bool = False, group=None,
                             grad_world_scale: bool = True, uniform_shards: bool = False,
                             blocks=None) -> torch.Tensor:
    """MERU's contrastive loss without the N x M logits: ``l_ij = -s d_L(image_i, text_j)``.

    ``image`` (N, D) and ``text`` (M, D) are space components; ``logit_scale`` is ``s`` and
    ``curv`` is ``c`` (floats or 0-dim tensors, > 0, may require grad). ``targets`` (N,) is
    the positive text index per image (default the diagonal, then N == M), ``weights`` (N,)
    non-negative per-pair weights. ``reduction``: ``"mean"`` (weighted mean), ``"sum"``
    (weighted sum) or ``"none"`` (the (N,) unweighted per-pair losses, e.g. to log parts of a
    batch from one pass). ``backend``: a name or preference list (see
    :mod:`hypkern.kernels.registry`). ``distributed=True``: the inputs are this rank's rows, see
    :func:`hypkern.losses.distributed.distributed_contrastive` (``uniform_shards=True`` when
    every rank has the same row counts saves a host sync). ``blocks=(rows, cols)`` sets the
    chunked backend's tile. Float32 result (float64 for float64 inputs).
    """
    return _contrastive("lorentz", image, text, logit_scale, curv, targets, weights, backend, distributed,
                        group, grad_world_scale, blocks, reduction, uniform_shards)


def clip_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale,
                          targets: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                          *, reduction: str = "mean", backend=None, distributed: bool = False, group=None,
                          grad_world_scale: bool = True, uniform_shards: bool = False,
                          blocks=None) -> torch.Tensor:
    """CLIP's contrastive loss without the N x M logits: ``l_ij = s cos(image_i, text_j)``.

    ``image``/``text`` are raw features (L2-normalised here, the normalisation's gradient
    included); otherwise as :func:`lorentz_contrastive_loss`. Equals open_clip's ``ClipLoss``
    on normalised features with ``logit_scale = s``.
    """
    return _contrastive("cosine", image, text, logit_scale, None, targets, weights, backend, distributed,
                        group, grad_world_scale, blocks, reduction, uniform_shards)


class ContrastiveLoss(torch.nn.Module):
    """Module form, in the spirit of open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``.

    ``geometry="lorentz"`` (``forward(image, text, logit_scale, curv, targets, weights)``) or
    ``"euclidean"`` (``forward(image, text, logit_scale, targets=None, weights=None)``). Under
    an initialised process group with ``distributed=True`` (default) each rank passes its own
    rows; see :func:`hypkern.losses.distributed.distributed_contrastive` for the gradient convention.
    """

    def __init__(self, geometry: str = "lorentz", *, backend=None, distributed: bool = True,
                 group=None, grad_world_scale: bool = True):
        super().__init__()
        if geometry not in ("lorentz", "euclidean"):
            raise ValueError(f"geometry must be 'lorentz' or 'euclidean', got {geometry!r}")
        self.geometry, self.backend, self.distributed = geometry, backend, distributed
        self.group, self.grad_world_scale = group, grad_world_scale

    def forward(self, image, text, logit_scale, *args, targets=None, weights=None):
        kw = dict(backend=self.backend, distributed=self.distributed, group=self.group,
                  grad_world_scale=self.grad_world_scale)
        if self.geometry == "lorentz":  # (losses sit below hypkern.geometry: two signatures here)
            if not args:
                raise TypeError("the Lorentz loss needs curv: forward(image, text, logit_scale, curv)")
            curv, *rest = args
            rest = list(rest) + [None] * (2 - len(rest))
            return lorentz_contrastive_loss(image, text, logit_scale, curv, targets if targets is not None else rest[0],
                                            weights if weights is not None else rest[1], **kw)
        rest = list(args) + [None] * (2 - len(args))
        return clip_contrastive_loss(image, text, logit_scale, targets if targets is not None else rest[0],
                                     weights if weights is not None else rest[1], **kw)
