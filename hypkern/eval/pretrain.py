"""Tiny MERU and CLIP pretrained on the embedded demo dataset by the package itself.

``demo_model("meru" | "clip", seed)`` returns a model pretrained on the ``"pretrain"`` split of
:mod:`hypkern.data.demo`, from the cache when it is there (``$HYPKERN_CACHE``, default
``~/.cache/hypkern``; folder ``demo_models/<kind>-<key>``), else trained now (about two minutes for
both on one CPU core) and cached. The same seed and config give the same weights.

Training (per step, one batch of images):

* a *caption form* is drawn: one of the zero-shot templates (``"a picture of a {}"`` ...) or
  the instance caption (``"a small red circle"``); the text side of the step is that form for
  every class (20 texts) or every caption (40 texts), and each image's positive is its own;
* contrastive loss (``hypkern.losses.lorentz_contrastive_loss`` for MERU,
  ``clip_contrastive_loss`` for CLIP) with those targets;
* the token embeddings keep their random init (the demo's vocabulary is ~30 words; it saves
  a quarter of each step); everything else trains (AdamW, one-cycle learning rate);
* MERU only, weight ``entail_weight``: ``hypkern.losses.entailment_loss`` for every edge of the
  hierarchy the batch touches: the image in its positive text's cone and in its shape's
  ("a circle") cone, each shape in its family's cone, each family in the root's ("a shape"),
  each class text in its shape's cone. So general texts sit near the origin with wide cones.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

__all__ = ["PretrainConfig", "QUICK", "DEFAULTS", "demo_model", "pretrain_demo_model", "cache_root"]


@dataclass(frozen=True)
class PretrainConfig:
    """How the demo models are pretrained (every field is part of the cache key)."""

    steps: int = 900
    batch_size: int = 96
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.1          # share of the steps with a rising learning rate
    entail_weight: float = 0.2   # MERU only
    n_per_class: int = 200       # images per class of the "pretrain" split
    patch_size: int = 4          # the tiny ViT's patch (32x32 images)
    train_token_embedding: bool = False  # the demo's ~30 words do fine with random embeddings
    seed: int = 0


#: The demo's settings per model (CLIP converges in fewer steps than MERU).
DEFAULTS = {"meru": PretrainConfig(steps=900), "clip": PretrainConfig(steps=600)}


#: A much smaller run for CI (``hypkern demo --quick``): weaker models, seconds to train.
QUICK = PretrainConfig(steps=100, batch_size=48, lr=3e-3, n_per_class=24, patch_size=8)



def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$HYPKERN_CACHE``, else ``~/.cache/hypkern``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("HYPKERN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hypkern"


def _key(kind: str, cfg: PretrainConfig) -> str:
    from ..data import demo
    blob = json.dumps({"kind": kind, "cfg": asdict(cfg), "data": demo.VERSION, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _build(kind: str, cfg: PretrainConfig):
    from ..models import tiny_clip, tiny_meru
    if kind not in ("meru", "clip"):
        raise ValueError(f"kind must be 'meru' or 'clip', got {kind!r}")
    return (tiny_meru if kind == "meru" else tiny_clip)(seed=cfg.seed, patch_size=cfg.patch_size)


def pretrain_demo_model(kind: str, config: PretrainConfig | None = None, *, progress: bool = True,
                        log: Callable[[str], None] | None = None):
    """Train a tiny MERU (``"meru"``) or CLIP (``"clip"``) on the demo set (see the module
    docstring); deterministic for a given config (seed included). Returns it in eval mode."""
    from .. import losses
    from ..data import demo

    cfg = config or PretrainConfig()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = _build(kind, cfg)
        model.train()
        if not cfg.train_token_embedding:
            model.textual.token_embed.weight.requires_grad_(False)
        data = demo.load_demo("pretrain", seed=cfg.seed, n_per_class=cfg.n_per_class)
        images = data.images.float() / 255.0
        targets, sizes = data.targets, data.sizes
        k = len(demo.CLASSNAMES)
        captions = [f"a {s} {c}" for c in demo.CLASSNAMES for s in demo.SIZES]  # index 2*class + size
        forms = [model.tokenize([t.format(c) for c in demo.CLASSNAMES]) for t in demo.TEMPLATES]
        forms.append(model.tokenize(captions))
        caption_form = len(forms) - 1
        # The general texts: root, the two families, then the shapes.
        families = sorted(set(demo.FAMILIES.values()))
        general = [demo.ROOT] + [f"{'an' if f[0] in 'aeiou' else 'a'} {f} shape" for f in families]
        general += [f"a {s}" for s in demo.SHAPES]
        general_tokens = model.tokenize(general)
        shape_row = torch.arange(len(demo.SHAPES)) + 1 + len(families)
        family_row = torch.tensor([1 + families.index(demo.FAMILIES[s]) for s in demo.SHAPES])
        class_shape = torch.arange(k) % len(demo.SHAPES)

        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "embed" not in n]
        ids = {id(p) for p in decay}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                    pct_start=cfg.warmup)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        bar = _progress(cfg.steps, f"pretrain tiny {kind.upper()}", progress)
        start = time.time()
        for step in range(cfg.steps):
            idx = torch.randint(0, len(targets), (cfg.batch_size,), generator=g)
            y = targets[idx]
            form = int(torch.randint(0, len(forms), (1,), generator=g))
            tgt = 2 * y + sizes[idx] if form == caption_form else y
            img = model.encode_image(images[idx])
            txt = model.encode_text(forms[form])
            loss = model.geom.contrastive_loss(img, txt, model.logit_scale, model.curv, targets=tgt)
            if model.geom.has_cones:
                c = model.curv
                gen = model.encode_text(general_tokens)
                ent = losses.entailment_loss(txt[tgt], img, c)
                ent = ent + losses.entailment_loss(gen[shape_row[y % len(demo.SHAPES)]], img, c)
                ent = ent + losses.entailment_loss(gen[family_row], gen[shape_row], c)
                ent = ent + losses.entailment_loss(gen[[0] * len(families)], gen[1:1 + len(families)], c)
                if form != caption_form:
                    ent = ent + losses.entailment_loss(gen[shape_row[class_shape]], txt, c)
                loss = loss + cfg.entail_weight * ent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.clamp_parameters_()
            bar.update(loss.item())
        bar.close()
        log(f"pretrained tiny {kind.upper()}: {cfg.steps} steps in {time.time() - start:.0f} s "
            f"(final loss {loss.item():.3f})")
    model.textual.token_embed.weight.requires_grad_(True)
    return model.eval()


def demo_model(kind: str = "meru", seed: int = 0, *, config: PretrainConfig | None = None, quick: bool = False,
               cache_dir: str | os.PathLike | None = None, refresh: bool = False, progress: bool = True,
               log: Callable[[str], None] | None = None):
    """The pretrained tiny ``kind`` model for ``seed``: loaded from the cache, or pretrained and
    cached (``refresh=True`` retrains). ``quick`` uses :data:`QUICK` (CI-sized)."""
    from ..models import load_model, save_model

    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = replace(config or (QUICK if quick else DEFAULTS[kind]), seed=seed)
    folder = cache_root(cache_dir) / "demo_models" / f"{kind}-{_key(kind, cfg)}"
    with _cache_lock(folder, log):  # concurrent runs: one trains, the others wait and load
        if folder.exists() and not refresh:
            try:
                model = load_model(str(folder))
                log(f"loaded pretrained tiny {kind.upper()} from {folder}")
                return model.eval()
            except Exception as exc:  # a broken cache entry: retrain and overwrite it
                log(f"cached {folder} unreadable ({type(exc).__name__}: {exc}); pretraining again")
        model = pretrain_demo_model(kind, cfg, progress=progress, log=log)
        try:
            _save_atomically(model, folder, {"kind": kind, **asdict(cfg)}, save_model)
            log(f"cached it in {folder}")
        except OSError as exc:  # a read-only home: still usable, just not cached
            log(f"could not cache the model in {folder}: {exc}")
    return model


class _cache_lock:
    """An exclusive ``flock`` on ``<folder>.lock`` while a cache entry is checked, trained and
    written (no-op where ``fcntl`` is missing, or the directory is read-only)."""

    def __init__(self, folder: Path, log):
        self.path, self.log, self.fh = folder.parent / f"{folder.name}.lock", log, None

    def __enter__(self):
        try:
            import fcntl
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a+")
        except (ImportError, OSError):
            return self
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.log(f"waiting for another run that is writing {self.path.with_suffix('')} ...")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # releases the lock
        return False


def _save_atomically(model, folder: Path, meta: dict, save_model) -> None:
    """Write the model to a temporary sibling, then rename it into place: a reader never sees
    a half-written entry (the old entry, on refresh, is moved away first and removed)."""
    import shutil
    tmp = folder.parent / f".{folder.name}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp))
    with open(tmp / "pretrain.json", "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old.{os.getpid()}"
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _progress:
    """A one-line progress display on stderr (tqdm when available and asked for)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, mininterval=1.0)
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
