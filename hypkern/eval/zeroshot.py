"""Zero-shot classification, done the way each geometry's paper does it.

* **Lorentz (MERU)**: for each class, the prompt-ensemble text features are taken *before* the
  lift (``encode_text(project=False)``: the tangent vectors at the origin), averaged there,
  then lifted once with ``model.project_text`` (alpha scaling + ``exp_map0``). Images are
  scored against these class points by the Lorentz inner product ``<x, y>_L``
  (``hypkern.pairwise_inner``; higher = closer, a monotone function of ``-d_L``).
* **Euclidean (CLIP)**: each prompt's features are L2-normalised, averaged, normalised again;
  images are scored by cosine similarity.

Accuracy is the **mean per-class accuracy** (the mean over classes of the share of that class's
images predicted correctly), reported over all classes, over the forget classes and over the
retain classes. Every image is classified among *all* classes, so chance is ``1 / K``.
All accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch

from ..geometry import geometry_of

__all__ = [
    "ZeroShotResult", "EncodedImages", "zeroshot_accuracy", "zeroshot_classifier", "class_scores",
    "per_class_accuracy", "resolve_concepts", "encode_images", "model_device", "eval_mode",
]


@dataclass
class ZeroShotResult:
    """Zero-shot accuracies (fractions). ``forget`` / ``retain`` are NaN when that group is empty."""

    overall: float
    forget: float
    retain: float
    chance: float
    per_class: dict[str, float] = field(default_factory=dict)
    forget_classes: list[str] = field(default_factory=list)
    retain_classes: list[str] = field(default_factory=list)
    n_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EncodedImages:
    """Image embeddings (lifted: ``project=True``) of a dataset, with their labels and captions."""

    feats: torch.Tensor
    labels: torch.Tensor
    captions: list[str]


def model_device(model) -> torch.device:
    """The device of the model's first parameter (CPU when it has none)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model):
    """``model.eval()`` and ``torch.no_grad()`` for the block; restores the training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def resolve_concepts(classnames: Sequence[str], concepts: Iterable) -> list[int]:
    """Class indices named by ``concepts``: an ``int`` is a class index; a string matches a class
    name exactly (case-insensitive) or, failing that, every class whose name contains it as
    whole words (``"circle"`` -> ``"red circle"``, ``"blue circle"``, ...)."""
    names = [c.lower() for c in classnames]
    out: list[int] = []
    for concept in concepts:
        if isinstance(concept, int) and not isinstance(concept, bool):
            if not 0 <= concept < len(names):
                raise ValueError(f"class index {concept} out of range [0, {len(names)})")
            hits = [concept]
        else:
            key = str(concept).strip().lower()
            hits = [i for i, n in enumerate(names) if n == key]
            if not hits:
                words = key.split()
                hits = [i for i, n in enumerate(names) if _contains_words(n.split(), words)]
            if not hits:
                raise ValueError(f"concept {concept!r} names no class (classes: {list(classnames)[:8]}...)")
        out.extend(h for h in hits if h not in out)
    return sorted(out)


def _contains_words(name: list[str], words: list[str]) -> bool:
    k = len(words)
    return any(name[i:i + k] == words for i in range(len(name) - k + 1))


def _label_index(label, index: dict[str, int] | None) -> int:
    if isinstance(label, str):
        if index is None:
            raise ValueError("string labels need classnames to map them to class indices")
        return index.get(label, -1)
    return int(label)


def _batches(data, batch_size: int, classnames: Sequence[str] | None = None):
    """Yield ``(images, captions, labels)`` (labels: class indices, -1 for none) from a dataset
    of item dicts (``target`` preferred over ``label``), a loader of ``(images, captions,
    labels, indices)`` tuples or of dicts, or a list of such batches. String labels are
    mapped through ``classnames``."""
    index = {c: k for k, c in enumerate(classnames)} if classnames is not None else None
    if isinstance(data, torch.utils.data.Dataset):
        n = len(data)
        for start in range(0, n, batch_size):
            items = [data[i] for i in range(start, min(n, start + batch_size))]
            labels = [it["target"] if "target" in it else it["label"] for it in items]
            yield (torch.stack([it["image"] for it in items]), [it["caption"] for it in items],
                   torch.tensor([_label_index(l, index) for l in labels], dtype=torch.long))
        return
    for batch in data:
        if isinstance(batch, dict):
            images, captions = batch["image"], batch["caption"]
            labels = batch["target"] if "target" in batch else batch["label"]
        else:
            images, captions, labels = batch[0], batch[1], batch[2]
        if torch.is_tensor(labels):
            labels = labels.long().cpu()
        else:
            labels = torch.tensor([_label_index(l, index) for l in labels], dtype=torch.long)
        yield images, list(captions), labels


def encode_images(model, data, *, batch_size: int = 256, device=None,
                  classnames: Sequence[str] | None = None) -> EncodedImages:
    """Embed every image of ``data`` with ``model.encode_image(project=True)`` (float32, CPU).
    ``labels`` are class indices (``-1`` for items without a class); string labels are mapped
    through ``classnames`` (default ``data.classnames``)."""
    device = torch.device(device) if device is not None else model_device(model)
    if classnames is None:
        classnames = _attr(data, "classnames", ())
    feats, labels, captions = [], [], []
    with eval_mode(model):
        for images, caps, labs in _batches(data, batch_size, classnames or None):
            feats.append(model.encode_image(images.to(device)).float().cpu())
            labels.append(labs)
            captions.extend(caps)
    if not feats:
        raise ValueError("data is empty")
    return EncodedImages(torch.cat(feats), torch.cat(labels), captions)


def encode_texts(model, texts: Sequence[str], *, project: bool = True, batch_size: int = 256,
                 device=None) -> torch.Tensor:
    """Embed ``texts`` with ``model.encode_text`` (float32, on the model's device)."""
    device = torch.device(device) if device is not None else model_device(model)
    out = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            tokens = model.tokenize(list(texts[start:start + batch_size])).to(device)
            out.append(model.encode_text(tokens, project=project).float())
    return torch.cat(out)


def zeroshot_classifier(model, classnames: Sequence[str], templates: Sequence[str], *,
                        device=None) -> torch.Tensor:
    """One embedding per class, ``(K, D)``, from the prompt ensemble ``template.format(name)``.

    Lorentz: mean of the unlifted text features, then ``model.project_text`` (a point on the
    hyperboloid). Euclidean: mean of the unit-normalised features, normalised again."""
    if not templates:
        raise ValueError("need at least one prompt template")
    prompts = [t.format(name) for name in classnames for t in templates]
    geom = geometry_of(model)
    feats = encode_texts(model, prompts, project=geom.average_projected_prompts, device=device)
    feats = feats.reshape(len(classnames), len(templates), -1)
    with eval_mode(model):
        return geom.class_embedding(model, feats)


def class_scores(model, image_feats: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Zero-shot scores ``(N, K)``: Lorentz inner product (Lorentz) or cosine (Euclidean)."""
    image_feats = image_feats.float().to(classifier.device)
    curv = model.curv.detach().float().to(classifier.device) if model.curv is not None else None
    return geometry_of(model).class_scores(image_feats, classifier, curv)


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Share of each class's images predicted as that class, ``(K,)``; NaN for absent classes."""
    preds, labels = preds.long().cpu(), labels.long().cpu()
    correct = torch.zeros(n_classes, dtype=torch.float64)
    total = torch.zeros(n_classes, dtype=torch.float64)
    correct.index_add_(0, labels, (preds == labels).double())
    total.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    return torch.where(total > 0, correct / total.clamp(min=1), torch.full_like(total, math.nan))


def _nanmean(values: torch.Tensor) -> float:
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else math.nan


def accuracy_from_scores(scores: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                         forget: Sequence[int] = ()) -> ZeroShotResult:
    """Mean per-class accuracy (all / forget / retain classes) from ``(N, K)`` scores."""
    k = len(classnames)
    acc = per_class_accuracy(scores.argmax(dim=1), labels, k)
    forget = sorted(set(int(i) for i in forget))
    retain = [i for i in range(k) if i not in forget]
    present = [i for i in range(k) if not math.isnan(float(acc[i]))]
    return ZeroShotResult(
        overall=_nanmean(acc),
        forget=_nanmean(acc[forget]) if forget else math.nan,
        retain=_nanmean(acc[retain]) if retain else math.nan,
        chance=1.0 / k,
        per_class={classnames[i]: float(acc[i]) for i in present},
        forget_classes=[classnames[i] for i in forget],
        retain_classes=[classnames[i] for i in retain],
        n_images=int(labels.numel()),
    )


def zeroshot_accuracy(model, data, concepts: Iterable = (), *, classnames: Sequence[str] | None = None,
                      templates: Sequence[str] | None = None, batch_size: int = 256, device=None,
                      images: EncodedImages | None = None) -> ZeroShotResult:
    """Zero-shot mean per-class accuracy of ``model`` on ``data``, split into the classes named by
    ``concepts`` (forget) and the rest (retain).

    ``data``: a dataset of ``{"image", "caption", "label", ...}`` items (image tensors as the
    model expects), or a loader of ``(images, captions, labels, indices)`` batches.
    ``classnames`` / ``templates`` default to ``data.classnames`` / ``data.templates``
    (``templates`` else ``("a {}",)``). ``images``: precomputed ``encode_images`` output.
    Returns a ``ZeroShotResult`` (fractions; ``.forget`` / ``.retain`` / ``.overall`` / ``.chance``).
    """
    classnames = list(classnames if classnames is not None else _attr(data, "classnames"))
    if templates is None:
        templates = _attr(data, "templates", ("a {}",))
    forget = resolve_concepts(classnames, concepts)
    if images is None:
        images = encode_images(model, data, batch_size=batch_size, device=device, classnames=classnames)
    classifier = zeroshot_classifier(model, classnames, templates, device=device)
    keep = images.labels >= 0  # items without a class take no part
    with torch.no_grad():
        scores = class_scores(model, images.feats[keep], classifier)
    return accuracy_from_scores(scores.cpu(), images.labels[keep], classnames, forget)


def _attr(data, name: str, default=None):
    """``data.<name>``, also through a DataLoader's ``.dataset`` or a Subset's ``.dataset``."""
    obj = data
    for _ in range(4):
        if hasattr(obj, name):
            return getattr(obj, name)
        obj = getattr(obj, "dataset", None)
        if obj is None:
            break
    if default is not None:
        return default
    raise ValueError(f"pass {name}=...: the data has no .{name}")
