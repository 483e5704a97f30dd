"""MERU (hyperbolic, Lorentz model) and MERU's CLIP baseline, checkpoint-compatible with the
official MERU release.

Both share one layout, so an official checkpoint's ``"model"`` state dict loads as it is:

* ``visual.*``: a timm ``VisionTransformer`` (class token pooling, ``nn.LayerNorm`` with eps 1e-5,
  a fixed 2-D sin-cos position embedding that is not trained);
* ``textual.*``: a causal pre-LN text transformer (``token_embed``, ``posit_embed``,
  ``resblocks.N.{attn, ln_1, mlp.c_fc, mlp.c_proj, ln_2}``, ``ln_final``, bool buffer ``attn_mask``);
  the text feature is the output at the end-of-text token (the largest token id);
* ``visual_proj`` / ``textual_proj``: bias-free linear maps to ``embed_dim``;
* ``logit_scale`` (and for MERU ``curv``): stored as logs; ``visual_alpha`` / ``textual_alpha``
  (MERU): log scales applied before the exponential map;
* buffers ``pixel_mean`` / ``pixel_std``: images come in ``[0, 1]`` and are normalised inside.

The text uses open_clip's BPE tokenizer (the same vocabulary as MERU's, context 77).
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace
from typing import Sequence

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from ..lorentz import ops
from .base import VisionLanguageModel
from .transforms import image_transform

__all__ = [
    "MERUConfig", "MERU", "MERUCLIP", "TextTransformer", "sincos_position_embedding",
    "VIT_ARCHS", "meru_vit_s", "meru_vit_b", "meru_vit_l", "clip_vit_s", "clip_vit_b",
    "clip_vit_l", "tiny_meru", "tiny_clip", "build_meru_family", "tokenize",
]

#: Vision towers of the official MERU/CLIP checkpoints (width, layers, heads). MERU's ViT-S
#: is MoCo-v3's small ViT: timm's ``vit_small`` with 12 heads instead of 6.
VIT_ARCHS = {
    "vit_s": dict(vision_width=384, vision_layers=12, vision_heads=12),
    "vit_b": dict(vision_width=768, vision_layers=12, vision_heads=12),
    "vit_l": dict(vision_width=1024, vision_layers=24, vision_heads=16),
}

#: The tiny configuration used by tests and the demo (fast on a CPU).
TINY = dict(image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
            text_width=64, text_layers=2, text_heads=4, embed_dim=64)


@dataclass
class MERUConfig:
    """Architecture and initial scalars of a MERU / CLIP-baseline model.

    ``geometry="lorentz"`` builds MERU, ``"euclidean"`` MERU's CLIP baseline. The defaults
    are the official ViT-B model (text: 12 layers, width 512, 8 heads, context 77).
    """

    geometry: str = "lorentz"
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 512
    curv_init: float = 1.0
    learn_curv: bool = True
    pixel_mean: tuple = (0.485, 0.456, 0.406)
    pixel_std: tuple = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if self.geometry not in ("lorentz", "euclidean"):
            raise ValueError(f"geometry must be 'lorentz' or 'euclidean', got {self.geometry!r}")
        for name in ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads",
                     "text_width", "text_layers", "text_heads", "context_length", "vocab_size",
                     "embed_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MERUConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.vision_width % 4 or self.vision_width % self.vision_heads:
            raise ValueError(f"vision_width ({self.vision_width}) must be divisible by 4 (sin-cos "
                             f"position embedding) and by vision_heads ({self.vision_heads})")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width ({self.text_width}) must be divisible by text_heads ({self.text_heads})")
        if self.vocab_size < 49408:
            raise ValueError(f"vocab_size must be >= 49408 (open_clip's BPE vocabulary), got {self.vocab_size}")
        if not (math.isfinite(self.curv_init) and self.curv_init > 0):
            raise ValueError(f"curv_init must be finite and > 0, got {self.curv_init}")
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MERUConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MERUConfig fields {unknown}; expected some of {sorted(known)}")
        return cls(**d)


@functools.lru_cache(maxsize=None)
def _tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """open_clip's BPE tokenizer (MERU's vocabulary): ``(B, context_length)`` int64 ids,
    right-padded with 0; captions that are too long are cut and keep their end-of-text token."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a string or a sequence of strings")
    return _tokenizer(context_length)(texts).long()


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int, class_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MoCo-v3 style): ``(1, [1 +] grid_h*grid_w, dim)``.

    The patch in row ``r``, column ``q`` gets ``[sin(rω), cos(rω), sin(qω), cos(qω)]`` with
    ``ω_k = 10000^(-k / (dim/4))``; the class token gets zeros.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for a 2-D sin-cos embedding, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows = torch.arange(grid_h, dtype=torch.float32).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float32).repeat(grid_h)
    a, b = rows[:, None] * omega, cols[:, None] * omega
    emb = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)
    if class_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb[None]


def build_vit(cfg: MERUConfig) -> VisionTransformer:
    """timm ViT as MERU uses it: class-token pooling, no head, LayerNorm eps 1e-5, fixed sin-cos
    position embedding (kept in the state dict, ``requires_grad=False``)."""
    vit = VisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.vision_width,
        depth=cfg.vision_layers, num_heads=cfg.vision_heads, mlp_ratio=4.0, qkv_bias=True,
        num_classes=0, global_pool="token", class_token=True, norm_layer=nn.LayerNorm)
    grid_h, grid_w = vit.patch_embed.grid_size
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_position_embedding(grid_h, grid_w, cfg.vision_width))
    vit.pos_embed.requires_grad_(False)
    return vit


class _ResidualBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (GELU MLP, 4x)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Causal text transformer: token ids ``(B, L)`` -> per-token features ``(B, L, width)``."""

    def __init__(self, width: int, layers: int, heads: int, context_length: int, vocab_size: int):
        super().__init__()
        self.width, self.context_length = width, context_length
        self.token_embed = nn.Embedding(vocab_size, width)
        self.posit_embed = nn.Parameter(torch.empty(context_length, width))
        self.resblocks = nn.ModuleList(_ResidualBlock(width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        # True = may not attend (a future position).
        self.register_buffer("attn_mask", torch.ones(context_length, context_length, dtype=torch.bool).triu(1))
        # CLIP-style initialisation.
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.posit_embed, std=0.01)
        out_std = (2 * width * layers) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=out_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=out_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[-1]
        if n > self.context_length:
            raise ValueError(f"tokens have length {n}, more than the context length {self.context_length}")
        x = self.token_embed(tokens) + self.posit_embed[:n]
        mask = self.attn_mask[:n, :n]
        for block in self.resblocks:
            x = block(x, mask)
        return self.ln_final(x)


class MERUCLIP(VisionLanguageModel):
    """MERU's CLIP baseline: the MERU encoders, Euclidean geometry (cosine logits).

    ``encode_*`` return the unnormalised projected features; ``similarity`` normalises.
    Construct from a :class:`MERUConfig` (or keyword overrides of the default one).
    """

    geometry = "euclidean"
    kind = "clip"

    def __init__(self, config: MERUConfig | None = None, **overrides):
        super().__init__()
        cfg = replace(config or MERUConfig(), **overrides) if overrides else (config or MERUConfig())
        if cfg.geometry != self.geometry:
            cfg = replace(cfg, geometry=self.geometry)
        self.config = cfg
        self.visual = build_vit(cfg)
        self.textual = TextTransformer(cfg.text_width, cfg.text_layers, cfg.text_heads,
                                       cfg.context_length, cfg.vocab_size)
        self.visual_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.textual_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.visual_proj.weight, std=cfg.vision_width ** -0.5)
        nn.init.normal_(self.textual_proj.weight, std=cfg.text_width ** -0.5)
        # Stored as a log under MERU's key; ``self.logit_scale`` is the clamped exp.
        self._parameters["logit_scale"] = nn.Parameter(torch.tensor(1 / 0.07).log())
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1))
        self.image_size = cfg.image_size
        self.embed_dim = cfg.embed_dim
        self.context_length = cfg.context_length
        self.preprocess = image_transform(cfg.image_size)

    # -- scalars --------------------------------------------------------------------------
    #: MERU clamps ``log(logit_scale) <= ln(100)``.
    LOGIT_SCALE_MAX = math.log(100.0)

    @property
    def log_logit_scale(self) -> nn.Parameter:
        """The stored parameter (``state_dict()["logit_scale"]``): the log of the scale."""
        return self._parameters["logit_scale"]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=self.LOGIT_SCALE_MAX).exp().float()

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Clamp the stored scalars in place as MERU does before each training step."""
        self.log_logit_scale.clamp_(max=self.LOGIT_SCALE_MAX)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -- encoders -------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return tokenize(texts, self.context_length)

    def batch_tokens(self, texts: Sequence[str]) -> torch.Tensor:
        """``tokenize`` cut after the batch's last end-of-text token (the largest id)."""
        tokens = self.tokenize(texts)
        return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1] if tokens.numel() else tokens

    def encode_image(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        x = (x - self.pixel_mean) / self.pixel_std
        feats = self.visual_proj(self.visual(x)).float()
        return self.project_image(feats) if project else feats

    def encode_text(self, tokens: torch.Tensor, project: bool = True) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"tokens must be a (B, L) integer tensor from tokenize(), got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        if (tokens.device.type == "cpu" and tokens.shape[1] == self.context_length and tokens.numel()
                and not torch.compiler.is_compiling()):
            # Causal attention: positions after the last end-of-text token never matter. Cut
            # on the host only (device tokens are used as they are: no device->host sync).
            tokens = tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]
        tokens = tokens.to(self.pixel_mean.device).long()
        eot = tokens.argmax(dim=-1)
        out = self.textual(tokens)
        feats = self.textual_proj(out[torch.arange(out.shape[0], device=out.device), eot]).float()
        return self.project_text(feats) if project else feats

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """``(image_embeddings, text_embeddings)``, both projected."""
        return self.encode_image(images), self.encode_text(tokens)

    def extra_repr(self) -> str:
        return f"geometry={self.geometry!r}, embed_dim={self.embed_dim}, image_size={self.image_size}"


class MERU(MERUCLIP):
    """MERU: embeddings are lifted onto the hyperboloid of curvature ``-curv`` by
    ``exp_map0(feats * alpha.exp(), curv)``, computed in float32 even under autocast."""

    geometry = "lorentz"
    kind = "meru"

    def __init__(self, config: MERUConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        cfg = self.config
        self._parameters["curv"] = nn.Parameter(torch.tensor(cfg.curv_init).log(), requires_grad=cfg.learn_curv)
        # MERU clamps log(curv) into [log(curv_init/10), log(curv_init*10)].
        self.curv_bounds = (math.log(cfg.curv_init / 10), math.log(cfg.curv_init * 10))
        alpha = torch.tensor(cfg.embed_dim ** -0.5).log()
        self.visual_alpha = nn.Parameter(alpha.clone())
        self.textual_alpha = nn.Parameter(alpha.clone())

    @property
    def log_curv(self) -> nn.Parameter:
        """The stored parameter (``state_dict()["curv"]``): the log of the curvature."""
        return self._parameters["curv"]

    @property
    def curv(self) -> torch.Tensor:
        lo, hi = self.curv_bounds
        return self.log_curv.clamp(lo, hi).exp().float()

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """MERU's in-place clamps: logit scale <= 100, curv in [curv_init/10, curv_init*10],
        alphas <= 0 (they never scale features up)."""
        super().clamp_parameters_()
        self.log_curv.clamp_(*self.curv_bounds)
        self.visual_alpha.clamp_(max=0.0)
        self.textual_alpha.clamp_(max=0.0)

    def _lift(self, feats: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        autocast_off = (torch.autocast(feats.device.type, enabled=False)
                        if feats.device.type in ("cuda", "cpu") else contextlib.nullcontext())
        with autocast_off:
            return ops.exp_map0(feats.float() * alpha.float().exp(), self.curv)

    def project_image(self, feats: torch.Tensor) -> torch.Tensor:
        return self._lift(feats, self.visual_alpha)

    def project_text(self, feats: torch.Tensor) -> torch.Tensor:
        return self._lift(feats, self.textual_alpha)


# ------------------------------------------------------------------------------ factories

@contextlib.contextmanager
def seeded(seed: int | None):
    """Run the block with the CPU RNG seeded (restored afterwards); no-op for ``None``."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_meru_family(config: MERUConfig, seed: int | None = None) -> MERUCLIP:
    """A MERU (``config.geometry == "lorentz"``) or CLIP-baseline model, randomly initialised
    (deterministically when ``seed`` is given)."""
    with seeded(seed):
        return (MERU if config.geometry == "lorentz" else MERUCLIP)(config)


def _named(geometry: str, arch: str, seed, overrides) -> MERUCLIP:
    return build_meru_family(MERUConfig(geometry=geometry, **{**VIT_ARCHS[arch], **overrides}), seed)


def meru_vit_s(seed: int | None = None, **overrides) -> MERU:
    """MERU ViT-S/16 (random init; load the official weights with ``load_model``)."""
    return _named("lorentz", "vit_s", seed, overrides)


def meru_vit_b(seed: int | None = None, **overrides) -> MERU:
    """MERU ViT-B/16 (random init)."""
    return _named("lorentz", "vit_b", seed, overrides)


def meru_vit_l(seed: int | None = None, **overrides) -> MERU:
    """MERU ViT-L/16 (random init)."""
    return _named("lorentz", "vit_l", seed, overrides)


def clip_vit_s(seed: int | None = None, **overrides) -> MERUCLIP:
    """MERU's CLIP baseline, ViT-S/16 (random init)."""
    return _named("euclidean", "vit_s", seed, overrides)


def clip_vit_b(seed: int | None = None, **overrides) -> MERUCLIP:
    """MERU's CLIP baseline, ViT-B/16 (random init)."""
    return _named("euclidean", "vit_b", seed, overrides)


def clip_vit_l(seed: int | None = None, **overrides) -> MERUCLIP:
    """MERU's CLIP baseline, ViT-L/16 (random init)."""
    return _named("euclidean", "vit_l", seed, overrides)


def tiny_meru(seed: int | None = 0, **overrides) -> MERU:
    """A tiny random MERU for tests and the demo: 32x32 images, patch 8, 2+2 layers of width 64,
    embed_dim 64, the real tokenizer with context 77. ``overrides``: any :class:`MERUConfig` field."""
    return build_meru_family(MERUConfig(geometry="lorentz", **{**TINY, **overrides}), seed)


def tiny_clip(seed: int | None = 0, **overrides) -> MERUCLIP:
    """The CLIP-baseline twin of :func:`tiny_meru` (same encoders, Euclidean geometry)."""
    return build_meru_family(MERUConfig(geometry="euclidean", **{**TINY, **overrides}), seed)
