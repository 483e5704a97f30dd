"""The two embedding geometries as objects: what models, losses, objectives, evaluation and
audits ask of an embedding space, answered once per geometry.

=============================  ==========================================  =====================
question                        ``LORENTZ`` (MERU)                          ``EUCLIDEAN`` (CLIP)
=============================  ==========================================  =====================
``similarity(a, b)`` (N x M)    ``-d_L(a_i, b_j)``                          ``cos(a_i, b_j)``
``rowwise_similarity(a, b)``    ``-d_L(a_i, b_i)``                          ``cos(a_i, b_i)``
``contrastive_loss``            :func:`~hypkern.losses.lorentz_contrastive_loss`  :func:`~hypkern.losses.clip_contrastive_loss`
``class_scores(x, classes)``    Lorentz inner product ``<x, k>_L``          cosine
``class_embedding(feats)``      mean of unlifted prompt features, lifted    mean of unit features, normalised
``origin_distance(x)``          ``asinh(sqrt(c) |x|) / sqrt(c)``            ``|x|``
``has_cones``                   True (entailment cones, HAC)                False
``bounded_similarity``          False (``-d_L`` is unbounded below)         True
=============================  ==========================================  =====================

Points are space components (Lorentz) or raw features (Euclidean: the functions normalise).
``curv`` is ignored by the Euclidean geometry. Get one with :func:`geometry_of` (a name, or a
model with a ``geometry`` attribute).
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

from . import losses
from .lorentz import ops

__all__ = ["Geometry", "LORENTZ", "EUCLIDEAN", "GEOMETRIES", "geometry_of"]


class Geometry(abc.ABC):
    """One embedding geometry (see the module docstring); subclasses fill in the maths."""

    name: str = ""
    has_cones: bool = False
    bounded_similarity: bool = True
    #: the registry op of the contrastive loss, and every op a HAC/AC run needs
    contrastive_op: str = ""
    run_ops: tuple[str, ...] = ()
    #: zero-shot prompt ensembles average the features before (False) or after (True) the lift
    average_projected_prompts: bool = True
    default_method: str = "ac"

    @abc.abstractmethod
    def similarity(self, a, b, curv=None, backend=None) -> torch.Tensor:
        """(N, M) similarities, no logit scale (``-d_L`` or cosine)."""

    @abc.abstractmethod
    def rowwise_similarity(self, a, b, curv=None, backend=None) -> torch.Tensor:
        """(N,) similarity of each row pair."""

    @abc.abstractmethod
    def contrastive_loss(self, image, text, logit_scale, curv=None, targets=None, weights=None, **kw):
        """The geometry's contrastive loss (``hypkern.losses``); ``curv`` ignored by Euclidean."""

    @abc.abstractmethod
    def class_embedding(self, model, feats: torch.Tensor) -> torch.Tensor:
        """``(K, T, D)`` prompt features (per class, per template) -> ``(K, D)`` classes."""

    @abc.abstractmethod
    def class_scores(self, image_feats, classifier, curv=None) -> torch.Tensor:
        """(N, K) zero-shot scores of images against class embeddings."""

    @abc.abstractmethod
    def origin_distance(self, feats, curv=None) -> torch.Tensor:
        """(N,) distance of each embedding to the origin."""

    def __repr__(self) -> str:
        return f"<Geometry {self.name}>"


class _Lorentz(Geometry):
    name = "lorentz"
    has_cones = True
    bounded_similarity = False
    contrastive_op = "lorentz_contrastive"
    run_ops = ("lorentz_contrastive", "dist", "entailment", "pairwise_dist", "exp_map0")
    average_projected_prompts = False
    default_method = "hac"

    def similarity(self, a, b, curv=None, backend=None):
        return -ops.pairwise_dist(a.float(), b.float(), curv, backend=backend)

    def rowwise_similarity(self, a, b, curv=None, backend=None):
        return -ops.dist(a, b, curv, backend=backend).float()

    def contrastive_loss(self, image, text, logit_scale, curv=None, targets=None, weights=None, **kw):
        return losses.lorentz_contrastive_loss(image, text, logit_scale, curv, targets, weights, **kw)

    def class_embedding(self, model, feats):
        return model.project_text(feats.mean(dim=1)).float()

    def class_scores(self, image_feats, classifier, curv=None):
        return ops.pairwise_inner(image_feats.float(), classifier, curv)

    def origin_distance(self, feats, curv=None):
        sc = torch.as_tensor(curv, dtype=feats.dtype, device=feats.device).sqrt()
        return torch.asinh(sc * feats.norm(dim=-1)) / sc


class _Euclidean(Geometry):
    name = "euclidean"
    contrastive_op = "clip_contrastive"
    run_ops = ("clip_contrastive",)

    def similarity(self, a, b, curv=None, backend=None):
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T

    def rowwise_similarity(self, a, b, curv=None, backend=None):
        return F.cosine_similarity(a.float(), b.float(), dim=-1)

    def contrastive_loss(self, image, text, logit_scale, curv=None, targets=None, weights=None, **kw):
        return losses.clip_contrastive_loss(image, text, logit_scale, targets, weights, **kw)

    def class_embedding(self, model, feats):
        return F.normalize(F.normalize(feats, dim=-1).mean(dim=1), dim=-1)

    def class_scores(self, image_feats, classifier, curv=None):
        return F.normalize(image_feats.float(), dim=-1) @ F.normalize(classifier, dim=-1).T

    def origin_distance(self, feats, curv=None):
        return feats.norm(dim=-1)


LORENTZ = _Lorentz()
EUCLIDEAN = _Euclidean()
GEOMETRIES = {g.name: g for g in (LORENTZ, EUCLIDEAN)}


def geometry_of(what) -> Geometry:
    """The :class:`Geometry` of a name (``"lorentz"``, ``"euclidean"``), of a model (its
    ``geometry`` attribute) or of a Geometry itself."""
    if isinstance(what, Geometry):
        return what
    name = what if isinstance(what, str) else getattr(what, "geometry", None)
    if name not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {tuple(GEOMETRIES)} (or a model that has one), got {name!r}")
    return GEOMETRIES[name]
