"""Image–text pair data: three sources (image folder, captions file, tensors), one item type,
loaders (DistributedSampler-ready), the forget/retain split and zero-shot prompt sets.

The embedded demo dataset lives in :mod:`hypkern.data.demo` (``load_demo``, ``DemoShapes``;
also reachable as ``hypkern.data.load_demo``).
"""
from .pairs import (  # noqa: F401
    DEFAULT_CAPTION_TEMPLATES, IMAGE_EXTENSIONS, CaptionFilePairs, ImageFolderPairs, ImageReadError,
    PairDataset, PairSubset, TensorPairs, collate, make_loader,
)
from .split import (  # noqa: F401
    IRREGULAR_PLURALS, ConceptError, ForgetRetainSplit, concept_pattern, names_concept, plural_forms,
    split_forget_retain,
)
from .zeroshot import CLIP_TEMPLATES, IMAGENET_TEMPLATES, SIMPLE_TEMPLATES, ZeroShotSet, build_prompts  # noqa: F401

_DEMO_NAMES = ("load_demo", "DemoShapes")


def __getattr__(name):  # the demo module is imported only when asked for
    if name in _DEMO_NAMES:
        from . import demo
        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
