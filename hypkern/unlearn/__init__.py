"""Concept unlearning for MERU (HAC) and CLIP (AC): ``hypkern.unlearn.unlearn(model, concepts)``.

The package itself is callable, so ``hypkern.unlearn(model, concepts, ...)`` works too (it calls
:func:`unlearn`). Pieces: ``config`` (``UnlearnConfig``), ``objectives`` (the AC/HAC losses),
``data`` (forget/retain split, stateless balanced sampling), ``trainer`` (gradient caching,
mixed precision, data parallel, checkpoints), ``command`` (the ``hypkern unlearn`` CLI).
"""
import sys as _sys
import types as _types

from .api import UnlearnResult, unlearn  # noqa: F401
from .config import ConfigError, UnlearnConfig  # noqa: F401
from .data import DataError  # noqa: F401
from .objectives import StepEmbeddings, unlearning_loss  # noqa: F401

__all__ = ["unlearn", "UnlearnResult", "UnlearnConfig", "ConfigError", "DataError",
           "unlearning_loss", "StepEmbeddings"]


class _CallablePackage(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return unlearn(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
