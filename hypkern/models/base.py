"""The interface every model behind hypkern implements (MERU, MERU's CLIP baseline, open_clip).

Unlearning and evaluation only talk to this interface, so a model is interchangeable as long
as it provides:

* ``geometry``: ``"lorentz"`` (MERU: embeddings are space components on the hyperboloid of
  curvature ``-curv``) or ``"euclidean"`` (CLIP: raw features, compared by cosine).
* ``encode_image(images, project=True)`` / ``encode_text(tokens, project=True)`` -> ``(B, D)``
  float32. With ``project=True``: Lorentz models return points on the hyperboloid (space part),
  Euclidean models return the *unnormalised* features (the losses and ``similarity`` normalise).
  With ``project=False``: the features *before* the geometry's lift (Lorentz: the tangent vector
  before the alpha scaling and ``exp_map0``; Euclidean: the same unnormalised features). Used by
  zero-shot prompt ensembles, which average here and then call ``project_text``.
* ``project_image(feats)`` / ``project_text(feats)``: the lift applied by ``project=True``
  (Lorentz: ``exp_map0(feats * alpha.exp(), curv)`` in float32; Euclidean: identity).
* ``tokenize(texts) -> LongTensor (B, context_length)``.
* ``curv`` (0-dim tensor ``c``, differentiable; ``None`` for Euclidean models) and
  ``logit_scale`` (0-dim tensor ``s`` itself, i.e. the exp of the stored log, clamped).
* ``similarity(image_feats, text_feats) -> (N, M)``: ``-d_L`` (Lorentz) or cosine (Euclidean),
  no logit scale; ``logits(...) = logit_scale * similarity(...)``.
* ``preprocess``: callable turning a PIL image into a ``(3, H, W)`` float tensor as the model
  expects; ``image_size``: the side of that tensor.

hypkern's models (MERU, MERUCLIP, OpenCLIPModel) also agree on:

* images are float tensors in ``[0, 1]``; each model applies its own mean/std inside
  ``encode_image`` (so ``preprocess`` only resizes, crops and converts);
* ``embed_dim``, ``context_length``, ``kind`` (``"meru" | "clip" | "open_clip"``, used by
  ``save_model``) and ``device``;
* ``clamp_parameters_()``: the in-place clamps of the stored scalars that training applies
  before each step (MERU: log logit scale <= ln 100, curv in [curv_init/10, curv_init*10],
  alphas <= 0). The ``curv`` / ``logit_scale`` properties clamp functionally as well.
"""
from __future__ import annotations

import abc
from typing import Callable, Sequence

import torch
from torch import nn

GEOMETRIES = ("lorentz", "euclidean")


class VisionLanguageModel(nn.Module, abc.ABC):
    """Base class for the models hypkern unlearns and evaluates (see the module docstring)."""

    geometry: str = "euclidean"
    image_size: int = 224
    preprocess: Callable | None = None
    kind: str = ""
    embed_dim: int | None = None
    context_length: int = 77

    @abc.abstractmethod
    def encode_image(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) float32 (see the module docstring for ``project``)."""

    @abc.abstractmethod
    def encode_text(self, tokens: torch.Tensor, project: bool = True) -> torch.Tensor:
        """(B, L) token ids -> (B, D) float32."""

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (B, L) token ids for ``encode_text``."""

    def batch_tokens(self, texts: Sequence[str]) -> torch.Tensor:
        """``tokenize`` for a training batch: a model may drop padding columns no caption of
        the batch needs here, on the host, so ``encode_text`` never reads device values."""
        return self.tokenize(texts)

    def project_image(self, feats: torch.Tensor) -> torch.Tensor:
        return feats

    def project_text(self, feats: torch.Tensor) -> torch.Tensor:
        return feats

    @property
    def curv(self) -> torch.Tensor | None:
        return None

    @property
    @abc.abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """The logit scale ``s`` itself (0-dim tensor)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def clamp_parameters_(self) -> None:
        """Clamp stored scalars in place before a training step (no-op unless overridden)."""

    @property
    def geom(self):
        """This model's :class:`hypkern.geometry.Geometry` (the object behind ``geometry``)."""
        from ..geometry import geometry_of
        return geometry_of(self.geometry)

    def similarity(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.geom.similarity(image_feats, text_feats, self.curv)

    def logits(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.similarity(image_feats, text_feats)
