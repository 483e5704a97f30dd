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
                     max_per_class: int | None = None) -> dict | None:
    """``{"forget", "retain", "overall", "chance", "per_class", "forget_classes"}`` or ``None``
    when ``data`` has no class names / the concepts name no class (then only the loss history
    tells what happened)."""
    from ..eval import zeroshot_accuracy

    if data is None or getattr(data, "classnames", None) is None:
        return None
    data = _capped(data, max_per_class)
    try:
        res = zeroshot_accuracy(model, data, list(concepts), batch_size=batch_size)
    except ValueError as exc:
        if "names no class" in str(exc):
            return None
        raise
    out = res.to_dict()
    return {k: out[k] for k in ("forget", "retain", "overall", "chance", "per_class",
                                "forget_classes", "n_images")}


class _Capped(torch.utils.data.Dataset):
    """At most ``cap`` items per label of ``data`` (first ones), keeping its attributes."""

    def __init__(self, data, cap: int):
        self.data = data
        labels = getattr(data, "labels", None)
        if labels is None:
            labels = [data[i]["label"] for i in range(len(data))]
        labels = [int(l) for l in (labels.tolist() if hasattr(labels, "tolist") else labels)]
        seen: dict[int, int] = {}
        self.keep = []
        for i, l in enumerate(labels):
            if seen.get(l, 0) < cap:
                seen[l] = seen.get(l, 0) + 1
                self.keep.append(i)
        self.classnames = data.classnames
        if hasattr(data, "templates"):
            self.templates = data.templates

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, i):
        return self.data[self.keep[i]]


def _capped(data, cap):
    if cap is None:
        return data
    capped = _Capped(data, cap)
    return data if len(capped) == len(data) else capped


def fmt_acc(x) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}"
