"""Loading and saving models: official MERU checkpoints, hypkern safetensors, open_clip weights.

``load_model(path_or_name, ...)`` accepts:

* an official MERU / MERU-CLIP checkpoint (``.pth``: ``{"model": state_dict, ...}`` or a bare
  state dict), read with ``torch.load(weights_only=True)``; the architecture is inferred from
  the tensor shapes (``overrides`` or ``config=`` for non-official sizes);
* a hypkern save (a directory with ``model.safetensors`` + ``config.json``, or a
  ``.safetensors`` file whose metadata holds the config) written by :func:`save_model`;
* an open_clip config name, with ``weights=`` a local weights file (``.safetensors``, ``.bin``,
  ``.pt``), or without for random init;
* an open_clip Hugging Face-style folder (``open_clip_config.json`` + ``open_clip_model.safetensors``
  or ``open_clip_pytorch_model.bin``), for models with open_clip's own tokenizer;
* a factory name of :data:`MODEL_FACTORIES` (``"tiny_meru"``, ``"meru_vit_b"``, ...): random init.

Every state dict is checked strictly: missing keys, unexpected keys and shape mismatches are
all listed in one :class:`CheckpointKeyError`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .base import VisionLanguageModel
from .meru import MERUConfig, VIT_ARCHS, build_meru_family
from . import meru as _meru
from . import openclip_adapter as _oc

__all__ = [
    "CheckpointError", "CheckpointKeyError", "load_model", "save_model", "load_state_dict_strict",
    "load_open_clip_weights", "infer_meru_config", "MODEL_FACTORIES",
]

FORMAT = "hypkern"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_METADATA_KEY = "hypkern_config"

#: Names ``load_model`` builds with random weights.
MODEL_FACTORIES = {
    "tiny_meru": _meru.tiny_meru, "tiny_clip": _meru.tiny_clip, "tiny_open_clip": _oc.tiny_open_clip,
    "meru_vit_s": _meru.meru_vit_s, "meru_vit_b": _meru.meru_vit_b, "meru_vit_l": _meru.meru_vit_l,
    "clip_vit_s": _meru.clip_vit_s, "clip_vit_b": _meru.clip_vit_b, "clip_vit_l": _meru.clip_vit_l,
}


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint (not readable, wrong format, no config)."""


class CheckpointKeyError(CheckpointError):
    """A state dict whose keys or shapes do not match the model; lists every problem."""

    def __init__(self, source: str, model_name: str, missing, unexpected, mismatched):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_listing(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatch(es): " + _listing(
                [f"{k} (checkpoint {tuple(a)}, model {tuple(b)})" for k, a, b in self.mismatched]))
        super().__init__(f"{source}: state dict does not match {model_name}: " + "; ".join(parts))


def _listing(items, limit: int = 20) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """``module.load_state_dict(state_dict, strict=True)``, but first compare keys and shapes
    and raise one :class:`CheckpointKeyError` naming every missing, unexpected or mis-shaped key."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, state_dict[k].shape, expected[k].shape) for k in expected
                  if k in state_dict and isinstance(state_dict[k], torch.Tensor)
                  and state_dict[k].shape != expected[k].shape]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state dict values must be tensors; not tensors: {_listing(bad)}")
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(source, type(module).__name__, missing, unexpected, mismatched)
    module.load_state_dict(state_dict, strict=True)


# ------------------------------------------------------------------------------ reading files

def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, disallowed globals...
        raise CheckpointError(f"{path}: not a PyTorch checkpoint readable with weights_only=True "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _safetensors_load(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    return tensors, metadata


def _strip_prefix(sd: dict, prefix: str) -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _as_state_dict(obj, path: Path) -> dict:
    """The state dict inside a loaded checkpoint (``{"model": ...}``, ``{"state_dict": ...}``
    or bare), without a DDP ``module.`` prefix."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    sd = dict(obj)
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, or one under "
                              f"a 'model' or 'state_dict' key; top-level keys: {_listing(map(str, obj))})")
    return _strip_prefix(sd, "module.")


# ------------------------------------------------------------------------------ MERU

_TEXT_HEADS = {512: 8, 768: 12, 1024: 16}


def _count_blocks(sd: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(ids) + 1 if ids else 0


def infer_meru_config(sd: Mapping[str, torch.Tensor], source: str = "state dict", **overrides) -> MERUConfig:
    """The :class:`MERUConfig` of a MERU / MERU-CLIP state dict, from its tensor shapes.

    Depth is the number of blocks present, raised to the official depth for official widths
    (12 text layers at width 512; ViT-S/B 12, ViT-L 24 blocks), so a truncated checkpoint
    fails with its missing keys. Attention heads cannot be read from shapes: official widths use MERU's values (vision 384,
    768 -> 12, 1024 -> 16; text 512 -> 8); other widths need ``vision_heads`` / ``text_heads``
    in ``overrides``. ``curv_init`` (which sets MERU's curvature clamp) defaults to 1.
    """
    need = ["visual.cls_token", "visual.pos_embed", "visual.patch_embed.proj.weight",
            "textual.token_embed.weight", "textual.posit_embed", "visual_proj.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointKeyError(source, "MERU (needed to infer its architecture; the checkpoint may "
                                 "be truncated; pass config= to list every missing key)", missing, [], [])
    vw = int(sd["visual.cls_token"].shape[-1])
    patch = int(sd["visual.patch_embed.proj.weight"].shape[-1])
    n_patches = int(sd["visual.pos_embed"].shape[1]) - 1
    grid = int(round(n_patches ** 0.5))
    if grid * grid != n_patches:
        raise CheckpointError(f"visual.pos_embed has {n_patches} patch positions, not a square grid")
    tw = int(sd["textual.token_embed.weight"].shape[1])
    vision_heads = {arch["vision_width"]: arch["vision_heads"] for arch in VIT_ARCHS.values()}.get(vw)
    text_heads = _TEXT_HEADS.get(tw)
    cfg = dict(
        geometry="lorentz" if {"curv", "visual_alpha", "textual_alpha"} & set(sd) else "euclidean",
        image_size=grid * patch, patch_size=patch, vision_width=vw,
        vision_layers=_count_blocks(sd, "visual.blocks."), vision_heads=vision_heads,
        text_width=tw, text_layers=_count_blocks(sd, "textual.resblocks."), text_heads=text_heads,
        context_length=int(sd["textual.posit_embed"].shape[0]),
        vocab_size=int(sd["textual.token_embed.weight"].shape[0]),
        embed_dim=int(sd["visual_proj.weight"].shape[0]),
    )
    if "pixel_mean" in sd and "pixel_std" in sd and not sd["pixel_mean"].is_meta:
        cfg["pixel_mean"] = tuple(sd["pixel_mean"].flatten().tolist())
        cfg["pixel_std"] = tuple(sd["pixel_std"].flatten().tolist())
    # A checkpoint cut short loses whole trailing blocks: for official widths assume the
    # official depth, so the strict load names the missing blocks instead of shrinking the model.
    official_vision = {a["vision_width"]: a["vision_layers"] for a in VIT_ARCHS.values()}.get(vw)
    if official_vision is not None and cfg["vision_layers"] < official_vision:
        cfg["vision_layers"] = official_vision
    if tw in _TEXT_HEADS and cfg["text_layers"] < 12:
        cfg["text_layers"] = 12
    cfg.update(overrides)
    for key, width in (("vision_heads", vw), ("text_heads", tw)):
        if cfg[key] is None:
            raise CheckpointError(f"cannot infer {key} for the non-official width {width}; pass "
                                  f"{key}=... (or config=MERUConfig(...)) to load_model")
    return MERUConfig(**cfg)


def _load_meru_state_dict(sd: dict, source: str, config, overrides) -> VisionLanguageModel:
    if config is not None:
        cfg = config if isinstance(config, MERUConfig) else MERUConfig.from_dict(dict(config))
        if overrides:
            cfg = MERUConfig.from_dict({**cfg.to_dict(), **overrides})
    else:
        cfg = infer_meru_config(sd, source, **overrides)
    model = build_meru_family(cfg)
    load_state_dict_strict(model, sd, source)
    return model


# ------------------------------------------------------------------------------ open_clip

def load_open_clip_weights(model: "_oc.OpenCLIPModel", weights: str | os.PathLike) -> None:
    """Load a local open_clip weights file (safetensors or torch) into ``model.model``, strictly."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"open_clip weights file not found: {path}")
    if path.suffix == ".safetensors":
        obj, _ = _safetensors_load(path)
    else:
        obj = _torch_load(path)
    sd = _as_state_dict(obj, path)
    if "logit_scale" not in sd:
        sd = _strip_prefix(sd, "model.")  # a hypkern state dict of the adapter
    load_state_dict_strict(model.model, sd, str(path))


def _build_open_clip(cfg: dict) -> "_oc.OpenCLIPModel":
    if cfg.get("model_cfg") is not None:
        return _oc.OpenCLIPModel.from_config(cfg["model_cfg"], preprocess_cfg=cfg.get("preprocess_cfg"))
    if cfg.get("name"):
        return _oc.OpenCLIPModel.from_name(cfg["name"], preprocess_cfg=cfg.get("preprocess_cfg"))
    raise CheckpointError("open_clip config needs 'name' or 'model_cfg'")


# ------------------------------------------------------------------------------ hypkern format

def _model_config(model: VisionLanguageModel) -> dict:
    kind = getattr(model, "kind", None)
    if kind in ("meru", "clip"):
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "config": model.config.to_dict()}
    if kind == "open_clip":
        if model.name is None and model.model_cfg is None:
            raise ValueError("save_model: this open_clip model was wrapped without name= or model_cfg=, "
                             "so it cannot be rebuilt; wrap it with OpenCLIPModel(model, name=...)")
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind,
                "config": {"name": model.name, "model_cfg": model.model_cfg,
                           "preprocess_cfg": model.preprocess_cfg}}
    raise TypeError(f"save_model: model must be a MERU, MERUCLIP or OpenCLIPModel, got {type(model).__name__}")


def save_model(model: VisionLanguageModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as safetensors plus a JSON config; returns the weights file.

    ``path`` ending in ``.safetensors``: that file (config in its metadata and in a sibling
    ``<name>.json``); otherwise a directory holding ``model.safetensors`` and ``config.json``.
    ``load_model(path)`` rebuilds the model with identical outputs.
    """
    from safetensors.torch import save_file
    config = _model_config(model)
    path = Path(path)
    if path.suffix == ".safetensors":
        weights, config_path = path, path.with_suffix(".json")
    else:
        weights, config_path = path / WEIGHTS_NAME, path / CONFIG_NAME
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset()) if value.numel() else None
        if ptr in seen:  # safetensors refuses shared storage: store a copy
            value = value.clone()
        seen.add(ptr)
        tensors[key] = value
    text = json.dumps(config, indent=2)
    save_file(tensors, str(weights), metadata={_METADATA_KEY: text})
    config_path.write_text(text + "\n")
    return weights


def _config_from(weights: Path, metadata: dict, sidecar: Path | None) -> dict:
    text = metadata.get(_METADATA_KEY)
    if text is None and sidecar is not None and sidecar.is_file():
        text = sidecar.read_text()
    if text is None:
        raise CheckpointError(f"{weights}: no hypkern config (neither in the file's metadata nor in "
                              f"{sidecar}); for open_clip weights use load_model(<open_clip name>, weights=...)")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{weights}: hypkern config is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT or "kind" not in config:
        raise CheckpointError(f"{weights}: config is not a hypkern model config")
    if config.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{weights}: format version {config['version']} is newer than this "
                              f"hypkern supports ({FORMAT_VERSION})")
    return config


def _load_hypkern(weights: Path, sidecar: Path | None) -> VisionLanguageModel:
    tensors, metadata = _safetensors_load(weights)
    config = _config_from(weights, metadata, sidecar)
    kind = config["kind"]
    if kind in ("meru", "clip"):
        return _load_meru_state_dict(tensors, str(weights), config["config"], {})
    if kind == "open_clip":
        model = _build_open_clip(config["config"])
        load_state_dict_strict(model, tensors, str(weights))
        return model
    raise CheckpointError(f"{weights}: unknown model kind {kind!r} (expected meru, clip or open_clip)")


# ------------------------------------------------------------------------------ entry point

def load_model(path_or_name: str | os.PathLike, *, weights: str | os.PathLike | None = None,
               config: MERUConfig | dict | None = None, device: str | torch.device | None = None,
               **overrides) -> VisionLanguageModel:
    """Load a model (see the module docstring for what ``path_or_name`` may be).

    ``weights``: a local weights file for an open_clip name. ``config`` / ``overrides``
    (``MERUConfig`` fields such as ``vision_heads=4``): the architecture of a MERU ``.pth``
    whose shapes do not determine it; for factory names, keyword arguments of the factory.
    ``device``: where to put the model (default: CPU). The model is returned in eval mode.
    """
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"path_or_name must be a path or a name, got {type(path_or_name).__name__}")
    path = Path(path_or_name)
    name = str(path_or_name)
    if path.exists():
        if weights is not None:
            raise ValueError("weights= is only for open_clip names; got a path as path_or_name")
        model = _load_path(path, config, overrides)
    elif name in MODEL_FACTORIES:
        model = MODEL_FACTORIES[name](**overrides)
    elif _is_open_clip_name(name):
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"open_clip weights file not found: {weights}")
        model = _oc.OpenCLIPModel.from_name(name, weights=weights, **overrides)
    elif weights is not None:
        raise ValueError(f"{name!r} is not an open_clip model config name; see open_clip.list_models()")
    else:
        raise FileNotFoundError(f"{name!r}: no such file or directory, and not a model name "
                                f"(hypkern factories: {sorted(MODEL_FACTORIES)}; or an open_clip "
                                f"name from open_clip.list_models())")
    if device is not None:
        model = model.to(device)
    return model.eval()


def _is_open_clip_name(name: str) -> bool:
    import open_clip
    return name in open_clip.list_models()


def _load_path(path: Path, config, overrides) -> VisionLanguageModel:
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        return _load_open_clip_dir(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{path}: directory has no {WEIGHTS_NAME} (expected a hypkern "
                                  f"save_model directory with {WEIGHTS_NAME} and {CONFIG_NAME})")
        return _load_hypkern(weights, path / CONFIG_NAME)
    if path.suffix == ".safetensors":
        return _load_hypkern(path, path.with_suffix(".json"))
    sd = _as_state_dict(_torch_load(path), path)
    meru_like = ("textual.", "visual_proj.", "textual_proj.", "visual_alpha", "textual_alpha", "pixel_mean")
    if any(k.startswith(meru_like) for k in sd):
        return _load_meru_state_dict(sd, str(path), config, overrides)
    if "token_embedding.weight" in sd and "logit_scale" in sd:
        raise CheckpointError(f"{path}: looks like open_clip weights; load them with "
                              f"load_model(<open_clip model name>, weights={str(path)!r})")
    raise CheckpointError(f"{path}: not a MERU, MERU-CLIP or open_clip state dict "
                          f"(first keys: {_listing(list(sd)[:8])})")


_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _load_open_clip_dir(path: Path) -> VisionLanguageModel:
    """An open_clip Hugging Face-style folder: ``open_clip_config.json`` (``model_cfg``,
    ``preprocess_cfg``) and ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``."""
    try:
        config = json.loads((path / "open_clip_config.json").read_text())
        model_cfg = config["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / 'open_clip_config.json'}: expected JSON with a 'model_cfg' "
                              f"({type(exc).__name__}: {exc})") from exc
    weights = next((path / n for n in _OPEN_CLIP_WEIGHTS if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: open_clip folder without weights (expected one of {', '.join(_OPEN_CLIP_WEIGHTS)})")
    if model_cfg.get("text_cfg", {}).get("hf_tokenizer_name"):
        raise CheckpointError(f"{path}: models with a Hugging Face tokenizer are not supported offline; "
                              f"wrap open_clip.create_model(...) with OpenCLIPModel(model, tokenizer=...)")
    pre = {k: v for k, v in (config.get("preprocess_cfg") or {}).items()
           if k in ("mean", "std", "interpolation", "resize_mode")}
    model = _oc.OpenCLIPModel.from_config(model_cfg, preprocess_cfg=pre)
    load_open_clip_weights(model, weights)
    return model
