"""Zero-shot class-name / prompt-template sets for evaluation (CLIP- and MERU-style prompts).

A zero-shot classifier embeds ``template.format(classname)`` for every template, averages
per class (MERU: in the tangent space, before ``exp_map0``) and scores images against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["SIMPLE_TEMPLATES", "CLIP_TEMPLATES", "IMAGENET_TEMPLATES", "ZeroShotSet", "build_prompts"]

#: One plain prompt.
SIMPLE_TEMPLATES = ("a photo of a {}.",)

#: The CIFAR-style CLIP prompt ensemble (also MERU's for CIFAR-10/100).
CLIP_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
)

#: MERU's ImageNet prompts (Reddit-style "subreddit : title" captions, as in RedCaps).
IMAGENET_TEMPLATES = (
    "i took a picture : itap of a {}.", "pics : a bad photo of the {}.", "pics : a origami {}.",
    "pics : a photo of the large {}.", "pics : a {} in a video game.", "pics : art of the {}.",
    "pics : a photo of the small {}.",
)


def build_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """``prompts[k][t] = templates[t].format(classnames[k])``."""
    if isinstance(classnames, str) or isinstance(templates, str):
        raise TypeError("classnames and templates must be sequences of strings, not a single string")
    if not classnames:
        raise ValueError("need at least one class name")
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ValueError(f"templates must be non-empty strings with a '{{}}' for the class name, got {list(templates)!r}")
    return [[t.format(name) for t in templates] for name in classnames]


@dataclass
class ZeroShotSet:
    """Class names and the prompt templates to classify them with."""

    classnames: list[str]
    templates: list[str] = field(default_factory=lambda: list(CLIP_TEMPLATES))

    def __post_init__(self):
        self.classnames = list(self.classnames)
        self.templates = list(self.templates)
        build_prompts(self.classnames, self.templates)  # validates
        dup = sorted({c for c in self.classnames if self.classnames.count(c) > 1})
        if dup:
            raise ValueError(f"duplicate class names: {dup}")

    def prompts(self) -> list[list[str]]:
        return build_prompts(self.classnames, self.templates)

    @classmethod
    def from_dataset(cls, dataset, templates: Sequence[str] | None = None) -> "ZeroShotSet":
        """The classes of a dataset (its ``classnames``) with ``templates`` (default: the
        dataset's ``templates`` if it has them, else :data:`CLIP_TEMPLATES`)."""
        names = getattr(dataset, "classnames", None)
        if not names:
            raise ValueError("the dataset has no classnames: pass them to ZeroShotSet(classnames, ...)")
        templates = templates or getattr(dataset, "templates", None) or CLIP_TEMPLATES
        return cls(list(names), list(templates))
