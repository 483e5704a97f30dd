"""Any open_clip model behind hypkern's :class:`VisionLanguageModel` interface.

The wrapped model keeps its own state-dict keys under ``model.*``. Images come in ``[0, 1]``
(as for every hypkern model): the adapter applies the model's mean/std itself, and
``preprocess`` is open_clip's evaluation transform without the normalisation.
Geometry is Euclidean: ``encode_*`` return unnormalised features, ``similarity`` is cosine.
A SigLIP-style ``logit_bias`` is not used by ``logits``.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from .base import VisionLanguageModel

__all__ = ["OpenCLIPModel", "tiny_open_clip", "TINY_OPEN_CLIP_CFG"]

#: A tiny open_clip ViT config (random init) for tests and the demo.
TINY_OPEN_CLIP_CFG = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=4.0),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)

_DEFAULT_PREPROCESS = dict(mean=(0.48145466, 0.4578275, 0.40821073),  # OpenAI CLIP's
                           std=(0.26862954, 0.26130258, 0.27577711),
                           interpolation="bicubic", resize_mode="shortest")


def _side(size) -> int:
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"only square image sizes are supported, got {tuple(size)}")
        size = size[0]
    return int(size)


class OpenCLIPModel(VisionLanguageModel):
    """Wraps an ``open_clip`` CLIP/CustomTextCLIP model.

    Build with :meth:`from_name` (an open_clip config name, optionally with a local weights
    file), :meth:`from_config` (a model-config dict, e.g. a tiny one) or directly from a model
    object (``OpenCLIPModel(open_clip.create_model(...), name=...)``).
    """

    geometry = "euclidean"
    kind = "open_clip"

    def __init__(self, model: nn.Module, *, name: str | None = None, model_cfg: dict | None = None,
                 tokenizer=None, preprocess_cfg: dict | None = None):
        super().__init__()
        if not (hasattr(model, "encode_image") and hasattr(model, "encode_text") and hasattr(model, "logit_scale")):
            raise TypeError(f"model must be an open_clip model (encode_image, encode_text, logit_scale), "
                            f"got {type(model).__name__}")
        import open_clip
        self.model = model
        self.name = name
        self.model_cfg = copy.deepcopy(model_cfg)
        pre = dict(_DEFAULT_PREPROCESS)
        pre.update({k: v for k, v in open_clip.get_model_preprocess_cfg(model).items() if v is not None})
        pre.update(preprocess_cfg or {})
        size = pre.get("size", getattr(model.visual, "image_size", 224))
        self.image_size = _side(size)
        self.preprocess_cfg = dict(mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                   interpolation=pre["interpolation"], resize_mode=pre["resize_mode"],
                                   size=self.image_size)
        self.register_buffer("image_mean", torch.tensor(self.preprocess_cfg["mean"]).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(self.preprocess_cfg["std"]).view(3, 1, 1), persistent=False)
        # open_clip's eval transform with an identity normalisation: the adapter normalises.
        self.preprocess = open_clip.image_transform(
            self.image_size, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
            resize_mode=self.preprocess_cfg["resize_mode"], interpolation=self.preprocess_cfg["interpolation"])
        self.context_length = int(getattr(model, "context_length", 77) or 77)
        if tokenizer is None:
            tokenizer = (open_clip.get_tokenizer(name, context_length=self.context_length) if name
                         else open_clip.SimpleTokenizer(context_length=self.context_length))
        self._tokenizer = tokenizer
        out_dim = getattr(model.visual, "output_dim", None)
        self.embed_dim = int(out_dim) if out_dim is not None else None

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, weights: str | None = None, preprocess_cfg: dict | None = None,
                  **create_kw) -> "OpenCLIPModel":
        """``open_clip.create_model(name)`` with random init, then (if given) a local weights
        file loaded with strict key checking (see ``hypkern.models.load_model``)."""
        import open_clip
        if name not in open_clip.list_models():
            raise ValueError(f"{name!r} is not an open_clip model config; see open_clip.list_models()")
        model = open_clip.create_model(name, pretrained=None, **create_kw)
        wrapped = cls(model, name=name, preprocess_cfg=preprocess_cfg)
        if weights is not None:
            from .io import load_open_clip_weights
            load_open_clip_weights(wrapped, weights)
        return wrapped

    @classmethod
    def from_config(cls, model_cfg: dict, seed: int | None = None, **kw) -> "OpenCLIPModel":
        """A randomly initialised open_clip model from a config dict
        (``embed_dim``, ``vision_cfg``, ``text_cfg``[, ``custom_text``, ...])."""
        import open_clip
        from .meru import seeded
        if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(model_cfg):
            raise ValueError("model_cfg must be a dict with embed_dim, vision_cfg and text_cfg, got "
                             f"{model_cfg if not isinstance(model_cfg, dict) else sorted(model_cfg)}")
        cfg = copy.deepcopy(model_cfg)
        custom_text = cfg.pop("custom_text", False)
        with seeded(seed):
            model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)
        return cls(model, model_cfg=model_cfg, **kw)

    # -- interface ------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.reshape(()).clamp(max=math.log(100.0)).exp().float()

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Clamp the stored log logit scale to ``<= ln 100`` in place (as open_clip training does)."""
        self.model.logit_scale.clamp_(0, math.log(100.0))

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tokenizer(list(texts)).long()

    def _dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def encode_image(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.to(device=self.image_mean.device, dtype=self._dtype())
        x = (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)
        return self.model.encode_image(x, normalize=False).float()

    def encode_text(self, tokens: torch.Tensor, project: bool = True) -> torch.Tensor:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (B, L) from tokenize(), got shape {tuple(tokens.shape)}")
        return self.model.encode_text(tokens.to(self.image_mean.device), normalize=False).float()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.encode_image(images), self.encode_text(tokens)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}"


def tiny_open_clip(seed: int | None = 0, **overrides) -> OpenCLIPModel:
    """A tiny random open_clip ViT (32x32 images, 2+2 layers of width 64, embed_dim 64, the real
    tokenizer with context 77). ``overrides``: top-level config keys (``embed_dim``) or
    ``vision_cfg`` / ``text_cfg`` dicts merged into the tiny ones."""
    cfg = copy.deepcopy(TINY_OPEN_CLIP_CFG)
    for key, value in overrides.items():
        if key in ("vision_cfg", "text_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return OpenCLIPModel.from_config(cfg, seed=seed)
