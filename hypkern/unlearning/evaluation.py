"""Before/after zero-shot accuracy of an unlearning run (adapter over ``hypkern.eval``).

Mean per-class zero-shot accuracy, every image classified among all classes, reported over the
classes the forget concepts name and over the rest (``hypkern.eval.zeroshot_accuracy``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["concept_accuracy"]


def concept_accuracy(model, data, concepts: Sequence[str], *, batch_size: int = 128,
                     max_per_class: int | None = None, templates: Sequence[str] | None = None) -> dict | None:
    """``{"forget", "retain", "overall", "chance", "per_class", "forget_classes"}`` or ``None``
    when ``data`` has no class names / the concepts name no class (then only the loss history
    tells what happened)."""
    from ..eval import zeroshot_accuracy

    if data is None or getattr(data, "classnames", None) is None:
        return None
    data = _EvalView(data, max_per_class, templates)
    if len(data) == 0:
        return None
    try:
        res = zeroshot_accuracy(model, data, list(concepts), batch_size=batch_size)
    except ValueError as exc:
        if "names no class" in str(exc):
            return None
        raise
    out = res.to_dict()
    return {k: out[k] for k in ("forget", "retain", "overall", "chance", "per_class",
                                "forget_classes", "n_images")}


class _EvalView(torch.utils.data.Dataset):
    """The items of ``data`` that have a class, at most ``cap`` per class, with ``label`` as the
    class index (``hypkern.data`` pair datasets carry the class *name* in ``label`` and its index
    in ``target``; the demo dataset carries the index in ``label``)."""

    def __init__(self, data, cap: int | None, templates=None):
        self.data = data
        self.classnames = list(data.classnames)
        if templates is not None:
            self.templates = tuple(templates)
        elif hasattr(data, "templates"):
            self.templates = data.templates
        index = {c: k for k, c in enumerate(self.classnames)}
        labels = getattr(data, "labels", None)
        if labels is None:
            labels = [data[i]["label"] for i in range(len(data))]
        labels = labels.tolist() if hasattr(labels, "tolist") else list(labels)
        self.targets = [index.get(l, -1) if isinstance(l, str) else int(l) for l in labels]
        seen: dict[int, int] = {}
        self.keep = []
        for i, t in enumerate(self.targets):
            if t >= 0 and (cap is None or seen.get(t, 0) < cap):
                seen[t] = seen.get(t, 0) + 1
                self.keep.append(i)

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, i):
        j = self.keep[i]
        return {**self.data[j], "label": self.targets[j]}


def fmt_acc(x) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}"
