"""Concept unlearning for MERU (HAC) and CLIP (AC): ``hypkern.unlearn(model, concepts)`` is
:func:`hypkern.unlearning.unlearn`. Pieces: ``config`` (``UnlearnConfig``), ``objectives`` (the AC/HAC losses),
``data`` (forget/retain split, stateless balanced sampling), ``trainer`` (gradient caching,
mixed precision, data parallel, checkpoints), ``command`` (the ``hypkern unlearn`` CLI).
"""
from .api import UnlearnResult, unlearn  # noqa: F401
from .config import ConfigError, UnlearnConfig  # noqa: F401
from .data import DataError  # noqa: F401
from .objectives import StepEmbeddings, unlearning_loss  # noqa: F401

__all__ = ["unlearn", "UnlearnResult", "UnlearnConfig", "ConfigError", "DataError",
           "unlearning_loss", "StepEmbeddings"]

