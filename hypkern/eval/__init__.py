"""Evaluation before and after unlearning: zero-shot accuracy (forget / retain), retrieval,
audits (similarity matrices, distance to the origin, entailment-cone membership), reports."""
from .zeroshot import ZeroShotResult, resolve_concepts, zeroshot_accuracy, zeroshot_classifier  # noqa: F401
