"""Losses built on the Lorentz ops: entailment, contrastive (Lorentz and Euclidean).

(Placeholder until the fused large-batch kernels land: these call the reference / the ops.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .lorentz import ops, reference

__all__ = ["entailment_loss", "lorentz_contrastive_loss", "clip_contrastive_loss"]


def entailment_loss(text: torch.Tensor, image: torch.Tensor, curv, min_radius: float = 0.1, *,
                    backend: str | None = None) -> torch.Tensor:
    """MERU's entailment loss ``mean(relu(oxy_angle(text, image) - half_aperture(text)))``."""
    angle = ops.oxy_angle(text, image, curv, backend=backend)
    aperture = ops.half_aperture(text, curv, min_radius, backend=backend)
    return F.relu(angle.float() - aperture.float()).mean()


def lorentz_contrastive_loss(image, text, logit_scale, curv, targets=None, weights=None):
    return reference.lorentz_contrastive_loss(image, text, logit_scale, curv, targets, weights)


def clip_contrastive_loss(image, text, logit_scale, targets=None, weights=None):
    return reference.clip_contrastive_loss(image, text, logit_scale, targets, weights)
