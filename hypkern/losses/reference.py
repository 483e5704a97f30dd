"""Reference losses: the materialised (N x M logits) spec every fused loss backend must match,
in plain PyTorch on top of :mod:`hypkern.lorentz.reference`. Run in float64 for the exact answer
the kernels are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import upcast
from ..lorentz.reference import half_aperture, oxy_angle, pairwise_dist

__all__ = ["entailment_rows", "entailment_loss", "lorentz_contrastive_loss", "clip_contrastive_loss",
           "lorentz_logits", "clip_logits", "symmetric_ce", "symmetric_ce_per_pair", "pairwise_targets"]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _scalar(value, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return upcast(value.to(device=like.device), like.dtype)
    return torch.tensor(float(value), device=like.device, dtype=like.dtype)


def entailment_rows(text: torch.Tensor, image: torch.Tensor, curv, min_radius: float = 0.1,
                    sign: float = 1.0, margin: float = 0.0) -> torch.Tensor:
    """Per row ``relu(sign (oxy_angle(text, image) - half_aperture(text)) + margin)``, (N,), in
    float32 (float64 for float64 inputs): ``sign=+1, margin=0`` is MERU's entailment loss (the
    text's cone should contain its image), ``sign=-1`` the reversed cone (push the image out,
    ``margin`` radians beyond the boundary)."""
    text, image = upcast(text), upcast(image, _compute_dtype(text))  # half inputs: fp32 throughout
    angle = oxy_angle(text, image, curv)
    aperture = half_aperture(text, curv, min_radius)
    return F.relu(sign * (angle - aperture) + margin)


def entailment_loss(text: torch.Tensor, image: torch.Tensor, curv, min_radius: float = 0.1) -> torch.Tensor:
    """MERU's entailment loss: mean(relu(oxy_angle(text, image) - half_aperture(text))).

    The text's cone should contain its image. Returns a 0-dim tensor in float32 (float64 for
    float64 inputs)."""
    return entailment_rows(text, image, curv, min_radius).mean()


def pairwise_targets(n: int, m: int, targets, device) -> torch.Tensor:
    if targets is None:
        if n != m:
            raise ValueError(f"without targets, image and text need the same number of rows, got {n} and {m}")
        return torch.arange(n, device=device)
    return targets.to(device=device, dtype=torch.long)


def symmetric_ce_per_pair(logits: torch.Tensor, targets) -> torch.Tensor:
    """Per pair ``i``: ``0.5 (lse_j l[i, j] - l[i, t_i]) + 0.5 (lse_k l[k, t_i] - l[i, t_i])``, (N,)."""
    n, m = logits.shape
    t = pairwise_targets(n, m, targets, logits.device)
    pos = logits.gather(1, t[:, None])[:, 0]
    row_lse = torch.logsumexp(logits, dim=1)
    col_lse = torch.logsumexp(logits, dim=0)[t]
    return 0.5 * ((row_lse - pos) + (col_lse - pos))


def symmetric_ce(logits: torch.Tensor, targets, weights) -> torch.Tensor:
    """Per-pair symmetric cross-entropy, weighted mean.

    Pair i (image i, its positive text ``t_i``) contributes
    ``0.5 * (-l[i, t_i] + lse_j l[i, j]) + 0.5 * (-l[i, t_i] + lse_k l[k, t_i])``; the loss is
    ``sum_i w_i loss_i / sum_i w_i``. With ``t = arange(N)`` and unit weights this is CLIP's
    ``0.5 (CE(l, diag) + CE(l^T, diag))``.
    """
    per_pair = symmetric_ce_per_pair(logits, targets)
    if weights is None:
        return per_pair.mean()
    w = weights.to(per_pair.dtype)
    return (w * per_pair).sum() / w.sum()


def lorentz_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale, curv,
                             targets: torch.Tensor | None = None,
                             weights: torch.Tensor | None = None) -> torch.Tensor:
    """MERU's contrastive loss, materialised: logits ``l_ij = -s d(image_i, text_j)``.

    ``logit_scale`` is ``s`` itself (not its log), ``curv`` is ``c``. See ``symmetric_ce``
    for ``targets`` (positive text index per image, default the diagonal) and ``weights``."""
    return symmetric_ce(lorentz_logits(image, text, logit_scale, curv), targets, weights)


def clip_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale,
                          targets: torch.Tensor | None = None,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's contrastive loss, materialised: ``l_ij = s cos(image_i, text_j)``; the raw
    features are L2-normalised here."""
    return symmetric_ce(clip_logits(image, text, logit_scale), targets, weights)


def lorentz_logits(image: torch.Tensor, text: torch.Tensor, logit_scale, curv) -> torch.Tensor:
    """``-s d_L(image_i, text_j)``, (N, M), in the compute dtype."""
    cd = _compute_dtype(image)
    image, text = upcast(image, cd), upcast(text, cd)
    s = _scalar(logit_scale, image)
    return -s * pairwise_dist(image, text, _scalar(curv, image))


def clip_logits(image: torch.Tensor, text: torch.Tensor, logit_scale) -> torch.Tensor:
    """``s cos(image_i, text_j)``, (N, M), in the compute dtype (the raw features are
    L2-normalised here)."""
    cd = _compute_dtype(image)
    image, text = upcast(image, cd), upcast(text, cd)
    s = _scalar(logit_scale, image)
    return s * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
