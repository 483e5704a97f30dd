"""The embedded demo dataset: coloured shapes with a concept hierarchy, generated on the fly.

Nothing is downloaded: every image is drawn by this module from a seeded ``torch.Generator``,
so the same ``(split, seed, n_per_class)`` always gives bit-identical tensors.

How it is built
---------------
* **Leaf concepts (classes)**: ``colour x shape`` = 5 x 4 = 20 classes, named
  ``"<colour> <shape>"`` (``"red circle"``, ``"blue triangle"``, ...). Class ``k`` is
  ``COLOURS[k // 4] + " " + SHAPES[k % 4]``. Removing 1, 3 or 10 of them leaves the rest.
* **Hierarchy** (most general first), each level a caption a model can be asked about::

      "a shape"                                      root
      "a round shape" / "an angular shape"            family (circle, ring / cross, triangle)
      "a circle"                                      shape
      "a red circle"                                  class (the leaf concept)
      "a small red circle"                            instance caption (size: small / large)

  Every image carries its instance caption as ``caption``; ``hierarchy_texts(label, size)``
  returns the whole chain, and ``DemoShapes.parents`` maps each text to its parent.
* **Images**: 3 x 32 x 32 floats in [0, 1]. A dark background with a random tint and pixel
  noise; one shape, its colour jittered around the class colour, drawn at a random position,
  radius 5-7 px ("small") or 9-12 px ("large"), with a random rotation (+-15 degrees) for
  crosses and triangles. Shapes are rasterised from coordinate grids (no PIL), in one batched pass.
* **Splits**: ``"pretrain"`` (what the demo's tiny models are pretrained on), ``"train"``
  (what unlearning trains on), ``"test"`` (held out: zero-shot and retrieval) and ``"val"``
  use different seeds derived from ``seed``, so every split holds different images.
* **Captions**: ``captions="instance"`` (default) gives every image its instance caption;
  ``"varied"`` phrases each through a seeded template, about the instance or the class
  (``"a picture of a small red circle"``, ``"an image of a red circle"``): what the demo
  unlearns on, so the retain alignment covers the phrasings zero-shot prompts use.
* **Items** follow ``hypkern.data`` (``DemoShapes`` is a ``PairDataset``):
  ``{"image", "caption", "label" (class name), "target" (class index), "index"}``;
  ``targets`` (int64) and ``sizes`` (0 small, 1 large) hold every item's class index and size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .pairs import PairDataset

__all__ = [
    "VERSION", "SHAPES", "COLOURS", "SIZES", "FAMILIES", "ROOT", "CLASSNAMES", "TEMPLATES", "IMAGE_SIZE",
    "DemoShapes", "load_demo", "class_name", "hierarchy_texts", "concept_texts",
]

SHAPES = ("circle", "ring", "cross", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple")
SIZES = ("small", "large")
#: Shape -> the family above it in the hierarchy.
FAMILIES = {"circle": "round", "ring": "round", "cross": "angular", "triangle": "angular"}
ROOT = "a shape"
IMAGE_SIZE = 32
#: Class index -> leaf concept name.
CLASSNAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
#: Zero-shot prompt templates for the demo classes (``{}`` is the class name).
TEMPLATES = ("a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}")

_RGB = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.15),
    "purple": (0.65, 0.20, 0.85),
}
_SPLIT_OFFSET = {"train": 0, "test": 1_000_003, "val": 2_000_029, "pretrain": 3_000_017}
#: Bumped whenever the generator's output changes (part of the pretrained models' cache key).
VERSION = 2
_RADIUS = {"small": (5.0, 7.0), "large": (9.0, 12.0)}


def class_name(label: int) -> str:
    """Leaf concept name of class ``label``."""
    return CLASSNAMES[int(label)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def hierarchy_texts(label: int, size: str | None = None) -> list[str]:
    """The captions that describe an image of class ``label``, most general first:
    root, family, shape, class and (if ``size`` is given) the instance caption."""
    colour, shape = class_name(label).split(" ")
    family = FAMILIES[shape]
    texts = [ROOT, f"{_article(family)} {family} shape", f"a {shape}", f"a {colour} {shape}"]
    if size is not None:
        texts.append(f"a {size} {colour} {shape}")
    return texts


def concept_texts() -> dict[str, list[str]]:
    """Every text of the hierarchy grouped by level: ``root``, ``family``, ``shape``,
    ``class`` and ``caption`` (used by the norm audit: general texts sit nearer the origin)."""
    levels: dict[str, list[str]] = {"root": [], "family": [], "shape": [], "class": [], "caption": []}
    for label in range(len(CLASSNAMES)):
        for size in SIZES:
            for level, text in zip(levels, hierarchy_texts(label, size)):
                if text not in levels[level]:
                    levels[level].append(text)
    return levels


def _draw(n: int, labels: torch.Tensor, sizes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Rasterise ``n`` images (uint8 (n, 3, S, S)) for the given labels and size indices."""
    S = IMAGE_SIZE
    shape_idx = labels % len(SHAPES)
    colour_idx = labels // len(SHAPES)
    lo = torch.tensor([_RADIUS[s][0] for s in SIZES])[sizes]
    hi = torch.tensor([_RADIUS[s][1] for s in SIZES])[sizes]
    radius = lo + (hi - lo) * torch.rand(n, generator=g)
    margin = radius + 1.0
    cx = margin + (S - 1 - 2 * margin) * torch.rand(n, generator=g)
    cy = margin + (S - 1 - 2 * margin) * torch.rand(n, generator=g)
    theta = (torch.rand(n, generator=g) - 0.5) * (math.pi / 6)  # +-15 degrees

    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32),
                            indexing="ij")
    dx = xs[None] - cx[:, None, None]
    dy = ys[None] - cy[:, None, None]
    # Rotated coordinates (for the angular shapes).
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    r = radius[:, None, None]
    d2 = dx * dx + dy * dy
    circle = d2 <= r * r
    ring = circle & (d2 >= (0.55 * r) ** 2)
    cross = ((u.abs() <= 0.9 * r) & (v.abs() <= 0.3 * r)) | ((u.abs() <= 0.3 * r) & (v.abs() <= 0.9 * r))
    # Upright triangle in (u, v): apex at v = -r, base at v = 0.7 r.
    t = (v + r) / (1.7 * r)
    triangle = (v >= -r) & (v <= 0.7 * r) & (u.abs() <= t * r)
    masks = torch.stack([circle, ring, cross, triangle], 1)  # (n, 4, S, S), order = SHAPES
    mask = masks[torch.arange(n), shape_idx].float()

    base = torch.tensor([_RGB[c] for c in COLOURS])[colour_idx]  # (n, 3)
    colour = (base + 0.06 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    background = 0.05 + 0.2 * torch.rand(n, 3, generator=g)
    img = background[:, :, None, None] * (1 - mask[:, None]) + colour[:, :, None, None] * mask[:, None]
    img = img + 0.04 * torch.randn(n, 3, S, S, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


class DemoShapes(PairDataset):
    """The demo dataset (see the module docstring). ``images`` are stored as uint8 (N, 3, 32, 32)
    and served as float32 in [0, 1]; ``transform`` (if given) is applied to each served image."""

    classnames = list(CLASSNAMES)
    templates = list(TEMPLATES)

    def __init__(self, split: str = "train", seed: int = 0, n_per_class: int = 40, transform=None,
                 captions: str = "instance"):
        if captions not in ("instance", "varied"):
            raise ValueError(f"captions must be 'instance' or 'varied', got {captions!r}")
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"split must be one of {tuple(_SPLIT_OFFSET)}, got {split!r}")
        if n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
        self.split, self.seed, self.n_per_class, self.transform = split, seed, n_per_class, transform
        g = torch.Generator().manual_seed(int(seed) * 7919 + _SPLIT_OFFSET[split])
        k = len(CLASSNAMES)
        n = k * n_per_class
        targets = torch.arange(k).repeat_interleave(n_per_class)
        # Balanced sizes within each class, then a seeded shuffle of the whole set.
        sizes = (torch.arange(n) % len(SIZES))
        perm = torch.randperm(n, generator=g)
        self.targets = targets[perm]
        self.sizes = sizes[perm]
        self.images = _draw(n, self.targets, self.sizes, g)
        self.labels = [class_name(int(t)) for t in self.targets]
        self.captions = [f"a {SIZES[int(s)]} {name}" for name, s in zip(self.labels, self.sizes)]
        if captions == "varied":
            # Each caption phrased by a seeded template, about the class or the sized instance.
            forms = torch.randint(0, 2 * len(TEMPLATES), (n,), generator=g).tolist()
            self.captions = [
                TEMPLATES[f // 2].format(name if f % 2 else f"{SIZES[int(s)]} {name}")
                for f, name, s in zip(forms, self.labels, self.sizes)]
        self.parents = self._parents()

    @staticmethod
    def _parents() -> dict[str, str | None]:
        parents: dict[str, str | None] = {ROOT: None}
        for label in range(len(CLASSNAMES)):
            for size in SIZES:
                chain = hierarchy_texts(label, size)
                for parent, child in zip(chain, chain[1:]):
                    parents[child] = parent
        return parents

    def _image(self, i: int) -> torch.Tensor:
        image = self.images[i].float() / 255.0
        return self.transform(image) if self.transform is not None else image

    def hierarchy(self, i: int) -> list[str]:
        """The captions of item ``i``, root first, instance caption last."""
        return hierarchy_texts(int(self.targets[i]), SIZES[int(self.sizes[i])])

    def hierarchy_levels(self) -> dict[str, list[str]]:
        """Every hierarchy text by level (see :func:`concept_texts`)."""
        return concept_texts()

    def indices_of(self, targets: Sequence[int]) -> list[int]:
        """Indices of the items whose class index is in ``targets``."""
        keep = torch.isin(self.targets, torch.as_tensor(list(targets), dtype=torch.long))
        return torch.nonzero(keep)[:, 0].tolist()


def load_demo(split: str = "train", seed: int = 0, n_per_class: int | None = None, transform=None,
              captions: str = "instance") -> DemoShapes:
    """The demo dataset split. Default size per class: 200 for ``"pretrain"`` (4000 images),
    40 for ``"train"`` (800), 16 for ``"test"`` / ``"val"`` (320)."""
    if n_per_class is None:
        n_per_class = {"pretrain": 200, "train": 40}.get(split, 16)
    return DemoShapes(split, seed=seed, n_per_class=n_per_class, transform=transform, captions=captions)
