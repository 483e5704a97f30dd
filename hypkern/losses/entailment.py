"""Entailment-cone losses: MERU's entailment loss and its reversed-cone form (the forget side
of HAC), one fused pass per row.

Per row, with ``angle = oxy_angle(text, image)`` and ``aperture = half_aperture(text, K)``::

    entailment:   relu(angle - aperture)                 the text's cone should hold its image
    reversed:     relu(aperture - angle + margin)         push the image out of the cone

Both are :func:`entailment_rows` with ``sign = +1`` / ``-1``; the backends that have a fused
kernel for it (``native``, ``triton``) run the custom op ``hypkern::entailment_rows``
(:mod:`hypkern.losses.kernels`), ``reference`` composes the reference ops with autograd. The
clipping is exactly that of ``oxy_angle`` and ``half_aperture``.
"""
from __future__ import annotations

import math

import torch

from ..checks import check_min_radius, check_pair, positive_scalar
from ..kernels import registry
from . import reference as loss_reference
from .contrastive import REDUCTIONS
from .kernels import entailment_rows as fused_entailment_rows

__all__ = ["entailment_rows", "entailment_loss", "entailment_calibration_loss"]


def _check_margin(margin) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise TypeError(f"margin must be a finite float, got {margin!r}")
    return float(margin)


def entailment_rows(text: torch.Tensor, image: torch.Tensor, curv, min_radius: float = 0.1, *,
                    sign: float = 1.0, margin: float = 0.0, backend=None) -> torch.Tensor:
    """``relu(sign (oxy_angle(text, image) - half_aperture(text)) + margin)`` per row, (N,):
    ``sign=+1`` the entailment loss, ``sign=-1`` the reversed cone (HySAC's ``relu(aperture -
    angle)`` on chosen pairs, HAC's calibration). Float32 (float64 for float64 inputs)."""
    check_pair(text, image, rowwise=True, names=("text", "image"))
    if sign not in (1, -1, 1.0, -1.0) or isinstance(sign, bool):
        raise ValueError(f"sign must be +1 (entailment) or -1 (reversed cone), got {sign!r}")
    c = positive_scalar("curv", curv, text)
    radius = check_min_radius(min_radius)
    margin = _check_margin(margin)
    if text.shape[0] == 0:
        raise ValueError("the entailment loss needs at least one pair")
    chosen = registry.resolve("entailment", backend, text.device.type)
    if chosen == "reference":
        return loss_reference.entailment_rows(text, image, c, radius, float(sign), margin)
    return fused_entailment_rows(text, image, c, radius, float(sign), margin, chosen)


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return rows.mean() if reduction == "mean" else rows.sum() if reduction == "sum" else rows


def entailment_loss(text: torch.Tensor, image: torch.Tensor, curv, min_radius: float = 0.1, *,
                    reduction: str = "mean", backend=None) -> torch.Tensor:
    """MERU's entailment loss ``mean(relu(oxy_angle(text, image) - half_aperture(text)))``:
    the text's cone should contain its image. ``reduction``: ``"mean"``, ``"sum"``, ``"none"``."""
    return _reduce(entailment_rows(text, image, curv, min_radius, sign=1.0, margin=0.0, backend=backend),
                   reduction)


def entailment_calibration_loss(text: torch.Tensor, image: torch.Tensor, curv, margin: float = 0.0,
                                min_radius: float = 0.1, *, reduction: str = "mean",
                                backend=None) -> torch.Tensor:
    """Forget-side entailment calibration (HAC):
    ``mean(relu(half_aperture(text) - oxy_angle(text, image) + margin))`` pushes each image
    out of its text's cone, at least ``margin`` radians beyond its boundary."""
    return _reduce(entailment_rows(text, image, curv, min_radius, sign=-1.0, margin=_check_margin(margin),
                                   backend=backend), reduction)
