"""Data side of an unlearning run: which pairs are forget / retain, and which indices each
step sees.

Sampling is *stateless*: the indices of step ``t`` are a pure function of ``(seed, t)``, so a
resumed run, every rank of a distributed run and a single-process run all see the same global
batch without saving any loader state.

* retain: an epoch stream over the retain indices (a fresh seeded permutation per epoch, no
  repeats within an epoch); step ``t`` takes items ``[t·B_r, (t+1)·B_r)`` of the stream.
* forget: ``B_f`` split evenly across the ``K`` concepts (the ``B_f mod K`` extra slots rotate
  with the step), each concept drawing from its own epoch stream — so every concept is seen
  equally often whatever its number of pairs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..data import names_concept, split_forget_retain
from .objectives import _mix

__all__ = ["ForgetRetain", "split_concepts", "StepSampler", "normalise_concepts", "concept_classes",
           "fetch_batch", "DataError"]


class DataError(ValueError):
    """The concepts or the data of an unlearning run are unusable (message says why)."""


@dataclass
class ForgetRetain:
    """``forget[c]``: indices of the pairs naming concept ``c``; ``retain``: the rest."""

    forget: dict[str, list[int]]
    retain: list[int]
    source: str = ""

    @property
    def n_forget(self) -> int:
        return len({i for v in self.forget.values() for i in v})


def normalise_concepts(concepts) -> list[str]:
    """``"dog,cat"`` or ``["dog", "cat"]`` -> ``["dog", "cat"]`` (stripped, deduplicated, order
    kept); empty -> ``DataError``."""
    if concepts is None:
        raise DataError("no concepts to unlearn: pass at least one, e.g. concepts=['red circle']")
    if isinstance(concepts, str):
        concepts = concepts.split(",")
    out: list[str] = []
    for c in concepts:
        if not isinstance(c, str):
            raise DataError(f"concepts must be strings, got {c!r}")
        c = " ".join(c.strip().split())
        if c and c not in out:
            out.append(c)
    if not out:
        raise DataError("no concepts to unlearn: pass at least one, e.g. concepts=['red circle']")
    return out


def split_concepts(dataset, concepts: Sequence[str], source: str = "") -> ForgetRetain:
    """Forget/retain split: a pair is *forget* for concept ``c`` when its caption or its class
    name (``dataset.classnames[label]``) names ``c`` — the rule of
    ``hypkern.data.split_forget_retain`` (whole words, case-insensitive, plurals); errors name
    unknown concepts."""
    if len(dataset) == 0:
        raise DataError(f"the dataset{' (' + source + ')' if source else ''} is empty: nothing to unlearn from")
    try:
        split = split_forget_retain(dataset, list(concepts), allow_missing=True)
    except (KeyError, ValueError) as exc:
        raise DataError(f"{exc}" + _pass_data_hint(source)) from exc
    forget = {c: sorted(int(i) for i in split.forget.get(c, [])) for c in concepts}
    retain = sorted(int(i) for i in split.retain)
    missing = [c for c in concepts if not forget[c]]
    if missing:
        known = getattr(dataset, "classnames", None)
        hint = f" Known classes: {', '.join(known)}." if known is not None else ""
        raise DataError(f"unknown concept(s) {', '.join(repr(c) for c in missing)}: no caption or class "
                        f"name in the {source or 'dataset'} names them.{hint}" + _pass_data_hint(source))
    if not retain:
        raise DataError("every pair names a forget concept: unlearning needs retain pairs too")
    return ForgetRetain(forget=forget, retain=retain, source=source)


def _pass_data_hint(source: str) -> str:
    if source.startswith("embedded demo"):
        return ("; these concepts are not in the embedded demo dataset: pass data= (API) or --data (CLI) "
                "with a dataset that contains them")
    return ""


def concept_classes(classnames: Sequence[str], concepts: Sequence[str]) -> dict[str, list[int]]:
    """Class indices each concept names (class name contains the concept's words)."""
    return {c: [k for k, name in enumerate(classnames) if names_concept(name, c)] for c in concepts}


@functools.lru_cache(maxsize=64)
def _perm(n: int, seed: int, salt: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(_mix(seed, salt, epoch))
    return tuple(torch.randperm(n, generator=g).tolist())


def _stream(pool: Sequence[int], start: int, count: int, seed: int, salt: int) -> list[int]:
    out: list[int] = []
    n = len(pool)
    pos = start
    while len(out) < count:
        epoch, off = divmod(pos, n)
        perm = _perm(n, seed, salt, epoch)
        take = min(count - len(out), n - off)
        out.extend(pool[j] for j in perm[off:off + take])
        pos += take
    return out


@dataclass
class StepSampler:
    """Global indices of each step (see the module docstring)."""

    split: ForgetRetain
    retain_batch_size: int
    forget_batch_size: int
    seed: int = 0
    concepts: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.concepts:
            self.concepts = list(self.split.forget)

    def forget_counts(self, step: int) -> list[int]:
        k = len(self.concepts)
        base, extra = divmod(self.forget_batch_size, k)
        counts = [base] * k
        for j in range(extra):
            counts[(step * extra + j) % k] += 1
        return counts

    def __call__(self, step: int) -> tuple[list[int], list[int], list[int]]:
        """``(retain_indices, forget_indices, forget_concept_ids)`` of step ``step``."""
        retain = _stream(self.split.retain, step * self.retain_batch_size, self.retain_batch_size,
                         self.seed, 1)
        k = len(self.concepts)
        per = -(-self.forget_batch_size // k)
        forget, which = [], []
        for j, (c, cnt) in enumerate(zip(self.concepts, self.forget_counts(step))):
            if cnt:
                forget.extend(_stream(self.split.forget[c], step * per, cnt, self.seed, 100 + j))
                which.extend([j] * cnt)
        return retain, forget, which


def fetch_batch(dataset, indices: Sequence[int], model, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, H, W)`` float and tokens ``(B, L)`` of ``indices`` (PIL images go through
    ``model.preprocess``)."""
    images, captions = [], []
    for i in indices:
        item = dataset[int(i)]
        img = item["image"]
        if not torch.is_tensor(img):
            if getattr(model, "preprocess", None) is None:
                raise DataError("dataset images are not tensors and the model has no preprocess")
            img = model.preprocess(img)
        images.append(img)
        captions.append(item["caption"])
    if not images:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    tokens = model.batch_tokens(captions) if hasattr(model, "batch_tokens") else model.tokenize(captions)
    return torch.stack(images).to(device), tokens.to(device)
