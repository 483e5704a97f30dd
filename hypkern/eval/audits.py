"""Audits that show *what* unlearning changed, beyond accuracy.

* ``class_similarity``: the image-text similarity matrix at class level: entry ``(a, b)`` is
  the mean ``model.similarity`` (``-d_L`` or cosine) between the images of class ``a`` and the
  zero-shot embedding of class ``b``. Forgetting should empty the forget rows' diagonal.
* ``origin_distance``: distance to the origin, which encodes generality in MERU
  (``asinh(sqrt(c)|x|)/sqrt(c)`` on the hyperboloid; the feature norm for Euclidean models).
* ``cone_membership``: whether an image lies inside its concept's entailment cone,
  ``oxy_angle(text, image) <= half_aperture(text)`` (Lorentz models only).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..geometry import geometry_of
from ..lorentz import ops

__all__ = ["class_similarity", "origin_distance", "cone_membership", "per_class_mean"]


def per_class_mean(values: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean of ``values`` (N, ...) over the rows of each class -> (K, ...); NaN for absent classes."""
    values = values.double().cpu()
    labels = labels.long().cpu()
    total = torch.zeros((n_classes,) + values.shape[1:], dtype=torch.float64)
    total.index_add_(0, labels, values)
    count = torch.bincount(labels, minlength=n_classes).double()
    count = count.reshape((n_classes,) + (1,) * (values.ndim - 1))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def class_similarity(model, image_feats: torch.Tensor, labels: torch.Tensor,
                     classifier: torch.Tensor) -> torch.Tensor:
    """(K, K) mean similarity between the images of each class (rows) and each class
    embedding (columns)."""
    with torch.no_grad():
        sim = model.similarity(image_feats.to(classifier.device), classifier).cpu()
    return per_class_mean(sim, labels, classifier.shape[0])


def origin_distance(model, feats: torch.Tensor) -> torch.Tensor:
    """Distance of each embedding to the origin, (N,): hyperbolic for Lorentz models
    (``asinh(sqrt(c)|x|)/sqrt(c)``, exact for the space part ``x``), the L2 norm otherwise."""
    feats = feats.detach().double().cpu()
    curv = model.curv.detach().double().cpu() if model.curv is not None else None
    return geometry_of(model).origin_distance(feats, curv)


def cone_membership(model, text_points: torch.Tensor, image_points: torch.Tensor,
                    min_radius: float = 0.1) -> torch.Tensor | None:
    """Boolean (N,): image ``i`` lies in the entailment cone of text ``i`` (rows paired),
    i.e. ``oxy_angle(text, image) <= half_aperture(text)``. ``None`` for Euclidean models."""
    if not geometry_of(model).has_cones:
        return None
    t = text_points.detach().double().cpu()
    x = image_points.detach().double().cpu()
    c = torch.tensor(float(model.curv.detach()), dtype=torch.float64)
    angle = ops.oxy_angle(t, x, c, backend="reference")
    aperture = ops.half_aperture(t, c, min_radius, backend="reference")
    return angle <= aperture


def cone_share_per_class(model, classifier: torch.Tensor, image_feats: torch.Tensor, labels: torch.Tensor,
                         classes: Sequence[int], min_radius: float = 0.1) -> dict[int, float] | None:
    """For each class in ``classes``: the share of its images inside its class embedding's
    cone. ``None`` for Euclidean models."""
    if not geometry_of(model).has_cones:
        return None
    inside = cone_membership(model, classifier.cpu()[labels.long()], image_feats, min_radius)
    out = {}
    for k in classes:
        rows = labels == k
        out[int(k)] = float(inside[rows].double().mean()) if rows.any() else math.nan
    return out
