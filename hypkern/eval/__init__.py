"""Evaluation before and after unlearning: zero-shot accuracy (forget / retain), retrieval,
audits (similarity matrices, distance to the origin, entailment-cone membership), reports.

``evaluate(model, data, concepts, before=..., out_dir=...)`` is the one-call entry point;
``zeroshot_accuracy`` is what ``hypkern.unlearn`` uses for its before/after numbers.
"""
from .zeroshot import ZeroShotResult, resolve_concepts, zeroshot_accuracy, zeroshot_classifier  # noqa: F401


def __getattr__(name):  # the report side imports matplotlib lazily
    if name in ("evaluate", "measure", "write_report", "targets_met"):
        from . import report
        return getattr(report, name)
    if name in ("recall_at_k", "caption_retrieval"):
        from . import retrieval
        return getattr(retrieval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
