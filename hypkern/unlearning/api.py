"""``hypkern.unlearn(model, concepts, data=None, *, method="auto", **config) -> UnlearnResult``."""
from __future__ import annotations

import copy
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .config import ConfigError, UnlearnConfig
from .data import DataError, normalise_concepts, split_concepts
from .dist import rank_world
from .evaluation import concept_accuracy, fmt_acc
from .trainer import Trainer

__all__ = ["unlearn", "UnlearnResult", "resolve_data", "DEMO_NOTE"]

DEMO_NOTE = ("data=None: using the embedded demo dataset (hypkern.data.demo: coloured shapes, "
             "20 classes 'red circle' ... 'purple triangle'; test split for the zero-shot eval)")


@dataclass
class UnlearnResult:
    """What an unlearning run returns.

    ``before`` / ``after``: zero-shot mean per-class accuracy (fractions) over the forget
    classes (``"forget"``) and the retain classes (``"retain"``), plus ``"per_class"``; ``None``
    when the evaluation data has no class names the concepts match."""

    model: Any
    config: UnlearnConfig
    method: str
    concepts: list[str]
    history: list[dict] = field(default_factory=list)
    before: dict | None = None
    after: dict | None = None
    data_source: str = ""
    n_forget: int = 0
    n_retain: int = 0

    @property
    def forget_drop(self) -> float:
        """Forget accuracy before minus after (NaN without evaluation)."""
        if not (self.before and self.after):
            return math.nan
        return self.before["forget"] - self.after["forget"]

    def summary(self) -> str:
        """A plain-text table: loss terms at the first and last step, accuracies before/after."""
        stopped = (f" of {self.config.steps}, stopped at the forgetting target"
                   if self.history and len(self.history) < self.config.steps else "")
        lines = [f"unlearned {', '.join(self.concepts)} with {self.method.upper()} "
                 f"({len(self.history)} steps{stopped}; data: {self.data_source}; "
                 f"{self.n_forget} forget / {self.n_retain} retain pairs)"]
        if self.history:
            first, last = self.history[0], self.history[-1]
            keys = [k for k in ("total", "align", "retain_ce", "forget_ce", "positive", "entail_cal",
                                "retain_entail", "norm_reg") if k in last]
            lines.append(f"  {'loss term':<14}{'first step':>12}{'last step':>12}")
            for k in keys:
                lines.append(f"  {k:<14}{first.get(k, float('nan')):>12.4f}{last[k]:>12.4f}")
        if self.before and self.after:
            lines.append(f"  {'zero-shot acc %':<18}{'before':>8}{'after':>8}")
            for k in ("forget", "retain", "overall"):
                lines.append(f"  {k:<18}{fmt_acc(self.before[k]):>8}{fmt_acc(self.after[k]):>8}")
            lines.append(f"  {'chance':<18}{fmt_acc(self.before['chance']):>8}")
            for c in self.before.get("forget_classes", []):
                lines.append(f"  {'  ' + c:<18}{fmt_acc(self.before['per_class'].get(c)):>8}"
                             f"{fmt_acc(self.after['per_class'].get(c)):>8}")
        else:
            lines.append("  (no zero-shot evaluation: the evaluation data has no class names for these concepts)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"method": self.method, "concepts": self.concepts, "config": self.config.to_dict(),
                "history": self.history, "before": self.before, "after": self.after,
                "data_source": self.data_source, "n_forget": self.n_forget, "n_retain": self.n_retain}

    def save(self, path: str) -> str:
        """Save the unlearned model with ``hypkern.models.save_model`` to ``path``, and the run's
        summary (``unlearn_result.json``) beside it; returns ``path``."""
        from ..models import save_model
        save_model(self.model, path)
        target = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        with open(os.path.join(target, "unlearn_result.json"), "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1)
        return path


def resolve_data(data, model, log) -> tuple[Any, Any, str]:
    """``(train_data, eval_data, description)``: ``None`` (or ``"demo"``) -> the demo dataset
    (train split to unlearn on, test split to evaluate); a directory -> ``ImageFolderPairs``
    (``root/<class>/*.jpg``); a ``.jsonl``/``.csv``/``.tsv`` file -> ``CaptionFilePairs``; a
    dataset object as is. Path datasets use ``model.preprocess``."""
    if data is None or (isinstance(data, str) and data == "demo"):
        try:
            from ..data.demo import load_demo
        except ImportError as exc:  # pragma: no cover - the demo ships with the package
            raise DataError("data=None needs the embedded demo dataset (hypkern.data.demo), which is "
                            "not available; pass data=") from exc
        log(DEMO_NOTE)
        size = getattr(model, "image_size", 32)
        transform = None
        if size != 32:  # the demo images are 32x32: resize to what the model expects
            import torch.nn.functional as F
            transform = lambda im: F.interpolate(im[None], size=(size, size), mode="bilinear",  # noqa: E731
                                                 align_corners=False)[0]
        return (load_demo("train", transform=transform), load_demo("test", transform=transform),
                "embedded demo dataset (hypkern.data.demo)")
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.exists(path):
            raise DataError(f"data path not found: {path}")
        from ..data import CaptionFilePairs, ImageFolderPairs
        transform = getattr(model, "preprocess", None)
        ds = (ImageFolderPairs(path, transform=transform) if os.path.isdir(path)
              else CaptionFilePairs(path, transform=transform))
        return ds, ds, path
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise DataError(f"data must be a dataset of {{'image', 'caption', 'label', 'index'}} items, a "
                        f"path, or None for the demo dataset; got {type(data).__name__}")
    return data, data, type(data).__name__


def _log(msg: str) -> None:
    if rank_world()[0] == 0:
        print(msg, file=sys.stderr)


def _warn_about_settings(cfg, split, log) -> None:
    """Settings that run but are probably not what the user wants: batches larger than the
    data (every pair repeats within a step) and half precision on a CPU (slower than fp32)."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    for what, batch, have in (("retain", cfg.retain_batch_size, len(split.retain)),
                              ("forget", cfg.forget_batch_size, split.n_forget)):
        if batch > have:
            say(f"warning: {what}_batch_size={batch} but the data has only {have} {what} pairs: each step "
                f"repeats pairs; set {what}_batch_size <= {have}")
    import torch
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.precision != "fp32" and str(device).startswith("cpu"):
        say(f"warning: precision={cfg.precision} on the CPU is slower than fp32 here (no half-precision "
            "matmul units); use precision='fp32' on CPU")


def unlearn(model, concepts, data=None, *, method: str = "auto", config=None, eval_data=None,
            templates: Sequence[str] | None = None,
            callbacks: Sequence[Callable[[int, dict], None]] = (), log: Callable[[str], None] | None = None,
            **overrides) -> UnlearnResult:
    """Remove ``concepts`` from ``model`` (trained in place) and report what changed.

    * ``model``: a ``hypkern.models`` model (``VisionLanguageModel``) or a name/path for
      ``hypkern.models.load_model``.
    * ``concepts``: ``["red circle", ...]`` or ``"red circle,blue square"``.
    * ``data``: a dataset of ``{"image", "caption", "label", "index"}`` items, a path, or
      ``None`` for the embedded demo dataset (said on stderr).
    * ``method``: ``"auto"`` (HAC for Lorentz/MERU models, AC for Euclidean/CLIP), ``"hac"``, ``"ac"``.
    * ``config``: an ``UnlearnConfig``, a mapping or a YAML/JSON path; ``**overrides`` set single
      fields (``steps=200, lr=1e-5, alpha=1.0, ...``, see ``UnlearnConfig``).
    * ``eval_data``: data for the before/after zero-shot accuracy (default: the demo test split
      for the demo, else ``data``).
    * ``templates``: the zero-shot prompts of that evaluation (``"a photo of a {}."``, ...);
      default: the dataset's own ``templates`` (every ``hypkern.data`` dataset has them).
    * ``callbacks``: ``f(step_done, record)`` after every step.

    Loss (per step, global batch): ``CE_w + β·P + [γ·E_cal + w_e·E_retain + δ·N]`` (HAC terms in
    brackets), see ``hypkern.unlearning.objectives``.
    """
    log = log or _log
    if templates is not None:
        from ..data.pairs import check_templates
        templates = check_templates(templates)
    if method != "auto":
        overrides["method"] = method
    cfg = UnlearnConfig.from_any(config, **overrides)
    concepts = normalise_concepts(concepts)
    if isinstance(model, (str, os.PathLike)):
        from ..models import load_model
        model = load_model(os.fspath(model))
    if not hasattr(model, "geometry") or not hasattr(model, "encode_image"):
        raise TypeError(f"model must be a hypkern VisionLanguageModel, got {type(model).__name__}")
    resolved = cfg.resolved_method(model.geometry)
    train_data, default_eval, source = resolve_data(data, model, log)
    eval_data = default_eval if eval_data is None else eval_data
    split = split_concepts(train_data, concepts, source=source)
    rank = rank_world()[0]
    if rank == 0:
        _warn_about_settings(cfg, split, log)

    def evaluate():
        if not cfg.eval or rank != 0:
            return None
        return concept_accuracy(model, eval_data, concepts, batch_size=cfg.eval_batch_size,
                                max_per_class=cfg.eval_max_per_class, templates=templates)

    if cfg.device:
        model.to(cfg.device)
    before = evaluate()
    frozen = None
    if resolved == "hac" and cfg.delta > 0:
        frozen = copy.deepcopy(model)
    def forget_accuracy():
        res = concept_accuracy(model, eval_data, concepts, batch_size=cfg.eval_batch_size,
                               max_per_class=cfg.eval_max_per_class, templates=templates)
        return None if res is None else res["forget"]

    if cfg.stop_forget_acc is not None and concept_accuracy(model, eval_data, concepts, max_per_class=1,
                                                             templates=templates) is None:
        raise ConfigError("unlearn config field 'stop_forget_acc': the evaluation data has no class that the "
                          "concepts name, so the forget accuracy cannot be measured; pass eval_data= with labels")
    trainer = Trainer(model, train_data, split, concepts, cfg, resolved, frozen=frozen,
                      callbacks=callbacks, log=log, forget_accuracy=forget_accuracy)
    history = trainer.run()
    del frozen
    after = evaluate()
    result = UnlearnResult(model=model, config=cfg, method=resolved, concepts=concepts, history=history,
                           before=before, after=after, data_source=source, n_forget=split.n_forget,
                           n_retain=len(split.retain))
    if rank == 0 and cfg.out_dir:
        with open(os.path.join(cfg.out_dir, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in result.to_dict().items() if k != "history"}, fh, indent=1)
        with open(os.path.join(cfg.out_dir, "summary.txt"), "w", encoding="utf-8") as fh:
            fh.write(result.summary() + "\n")
    return result
