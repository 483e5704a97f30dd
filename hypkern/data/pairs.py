"""Image–text pair datasets, their collate function and loaders.

Three sources, one item type::

    {"image": Tensor(3, H, W), "caption": str, "label": str, "target": int, "index": int}

``label`` is the class name (``""`` when the source has none), ``target`` its index in
``dataset.classnames`` (``-1`` when none), ``index`` the item's position in the dataset (kept
through :meth:`PairDataset.subset`). Every dataset also exposes ``captions``, ``labels`` and
``classnames`` without loading images, which is what the forget/retain split reads.

Images go through ``transform`` — pass the model's ``preprocess`` (it resizes to the model's
``image_size`` and returns floats in ``[0, 1]``; models normalise themselves).
"""
from __future__ import annotations

import abc
import csv
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "PairDataset", "ImageFolderPairs", "CaptionFilePairs", "TensorPairs", "PairSubset",
    "ImageReadError", "collate", "make_loader", "IMAGE_EXTENSIONS", "DEFAULT_CAPTION_TEMPLATES",
    "DEFAULT_PROMPTS", "check_templates",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Captions of an image folder: the class name through these templates, cycling by index.
DEFAULT_CAPTION_TEMPLATES = ("a photo of a {}.",)


class ImageReadError(OSError):
    """An image file that is missing or cannot be decoded (the message names the file)."""


def _default_transform(image_size: int):
    from ..models.transforms import image_transform
    return image_transform(image_size)


def _read_image(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageReadError(f"image file not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


#: Zero-shot prompts of a dataset that was given none (CLIP's single-template prompt).
DEFAULT_PROMPTS = ("a photo of a {}.",)


def check_templates(templates, what: str = "templates") -> tuple[str, ...]:
    """A non-empty sequence of strings with a ``{}`` for the class name (one string allowed)."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ValueError(f"{what} must be strings with a '{{}}' for the class name, got {templates!r}")
    return tuple(templates)


def _labels_and_classes(labels, n: int, classnames, where: str) -> tuple[list[str], list[str]]:
    """(labels as class-name strings, classnames). ``labels``: None, class-name strings ('' for
    none) or integers (indices into ``classnames`` when given, else their decimal string).
    ``classnames``: explicit (every label must be one of them), else the order of first
    appearance."""
    if classnames is not None:
        classnames = [" ".join(str(c).split()) for c in classnames]
        if len(set(classnames)) != len(classnames) or not all(classnames):
            raise ValueError(f"{where}: classnames must be distinct non-empty strings, got {classnames!r}")
    if labels is None:
        out = [""] * n
    else:
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist()
        labels = list(labels)
        if len(labels) != n:
            raise ValueError(f"{where}: got {len(labels)} labels for {n} pairs")
        out = []
        for lab in labels:
            if isinstance(lab, bool):
                raise TypeError(f"{where}: labels must be class names or integers, got {lab!r}")
            if isinstance(lab, int):
                if classnames is not None:
                    if not 0 <= lab < len(classnames):
                        raise ValueError(f"{where}: label {lab} is not an index into the {len(classnames)} classnames")
                    lab = classnames[lab]
                else:
                    lab = str(lab)
            elif not isinstance(lab, str):
                raise TypeError(f"{where}: labels must be class names or integers, got {type(lab).__name__}")
            out.append(" ".join(lab.replace("_", " ").split()))
    if classnames is None:
        classnames = list(dict.fromkeys(lab for lab in out if lab))
    else:
        unknown = sorted({lab for lab in out if lab and lab not in classnames})
        if unknown:
            raise ValueError(f"{where}: labels {unknown} are not among the classnames {classnames}")
    return out, classnames


class PairDataset(Dataset, abc.ABC):
    """Base of the pair datasets: ``captions``, ``labels``, ``classnames``, ``templates`` (the
    zero-shot prompts ``unlearn`` and ``evaluate`` use) and ``_image(i)``."""

    captions: list[str]
    labels: list[str]
    classnames: list[str]
    templates: tuple[str, ...] = DEFAULT_PROMPTS

    def __len__(self) -> int:
        return len(self.captions)

    @abc.abstractmethod
    def _image(self, i: int) -> torch.Tensor:
        """The (untransformed) image of pair ``i``."""

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} pairs")
        i = i % n
        label = self.labels[i]
        return {"image": self._image(i), "caption": self.captions[i], "label": label,
                "target": self._class_index.get(label, -1), "index": i}

    @property
    def _class_index(self) -> dict[str, int]:
        cache = self.__dict__.get("_class_index_cache")
        if cache is None:
            cache = self.__dict__["_class_index_cache"] = {c: k for k, c in enumerate(self.classnames)}
        return cache

    def subset(self, indices: Sequence[int]) -> "PairSubset":
        """The pairs at ``indices``; items keep their ``index`` in this dataset."""
        return PairSubset(self, indices)


class PairSubset(PairDataset):
    """A view of some pairs of a :class:`PairDataset` (``index`` stays the parent's)."""

    def __init__(self, dataset: PairDataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < len(dataset)]
        if bad:
            raise IndexError(f"subset indices out of range [0, {len(dataset)}): {bad[:10]}")
        self.captions = [dataset.captions[i] for i in self.indices]
        self.labels = [dataset.labels[i] for i in self.indices]
        self.classnames = dataset.classnames
        self.templates = getattr(dataset, "templates", DEFAULT_PROMPTS)

    def _image(self, i: int) -> torch.Tensor:
        return self.dataset._image(self.indices[i])

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]]


def _check_transform(transform) -> None:
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable (e.g. model.preprocess), got {type(transform).__name__}")


class ImageFolderPairs(PairDataset):
    """Pairs from ``root/<class>/*.{jpg,jpeg,png}``: the label is the folder name (``_`` read as
    a space), the caption ``templates[index % len(templates)].format(label)``.

    Folders without images are ignored; a root without any image is an error.
    """

    def __init__(self, root: str | os.PathLike, templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES,
                 transform: Callable | None = None, image_size: int = 224,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        templates = [templates] if isinstance(templates, str) else list(templates)
        if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
            raise ValueError(f"templates must be strings with a '{{}}' for the class name, got {templates!r}")
        _check_transform(transform)
        exts = tuple(e.lower() for e in extensions)
        self.root, self.templates = root, templates
        self.transform = transform if transform is not None else _default_transform(image_size)
        self.paths: list[Path] = []
        self.labels = []
        classnames = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
            if not files:
                continue
            name = " ".join(folder.name.replace("_", " ").split())
            classnames.append(name)
            self.paths.extend(files)
            self.labels.extend([name] * len(files))
        if not self.paths:
            raise ValueError(f"no images ({', '.join(exts)}) in any class folder of {root} "
                             f"(expected root/<class>/<image>)")
        self.classnames = classnames
        self.captions = [templates[i % len(templates)].format(lab) for i, lab in enumerate(self.labels)]

    def _image(self, i: int) -> torch.Tensor:
        return self.transform(_read_image(self.paths[i]))

    def verify(self) -> None:
        """Decode every image now; raise :class:`ImageReadError` naming each unreadable file."""
        _verify(self.paths)


def _verify(paths: Sequence[Path]) -> None:
    bad = []
    for p in paths:
        try:
            _read_image(p)
        except ImageReadError as exc:
            bad.append(str(exc))
    if bad:
        raise ImageReadError(f"{len(bad)} unreadable image(s): " + "; ".join(bad[:10])
                             + (f"; ... and {len(bad) - 10} more" if len(bad) > 10 else ""))


_IMAGE_KEYS = ("image", "image_path", "filepath", "file", "path")
_CAPTION_KEYS = ("caption", "text", "title")
_LABEL_KEYS = ("label", "class", "classname")


class CaptionFilePairs(PairDataset):
    """Pairs listed in a captions file: JSONL (one object per line) or CSV/TSV (a header row).

    Each record needs an image path and a caption; a label is optional. Keys are looked up as
    ``image_key`` / ``caption_key`` / ``label_key`` if given, else the first present of
    ``image, image_path, filepath, file, path`` / ``caption, text, title`` / ``label, class,
    classname``. Relative image paths are resolved against ``image_root`` (default: the
    captions file's folder). Missing image files are reported at construction. Labels may be
    class names or integers (indices into ``classnames`` when given); ``classnames`` fixes the
    class order (default: the order of first appearance); ``templates`` are the zero-shot
    prompts (default :data:`DEFAULT_PROMPTS`).
    """

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 transform: Callable | None = None, image_size: int = 224, image_key: str | None = None,
                 caption_key: str | None = None, label_key: str | None = None, check_files: bool = True,
                 templates: Sequence[str] | None = None, classnames: Sequence[str] | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"captions file not found: {path}")
        _check_transform(transform)
        self.path = path
        self.transform = transform if transform is not None else _default_transform(image_size)
        root = Path(image_root) if image_root is not None else path.parent
        records = _read_records(path)
        if not records:
            raise ValueError(f"captions file {path} has no records")
        self.paths, self.captions, raw = [], [], []
        for line, rec in records:
            img = _field(rec, image_key, _IMAGE_KEYS, path, line, "image path")
            cap = _field(rec, caption_key, _CAPTION_KEYS, path, line, "caption")
            lab = _field(rec, label_key, _LABEL_KEYS, path, line, "label", required=False)
            p = Path(str(img))
            self.paths.append(p if p.is_absolute() else root / p)
            self.captions.append(str(cap))
            raw.append("" if lab is None else lab if isinstance(lab, int) and not isinstance(lab, bool)
                       else str(lab))
        self.labels, self.classnames = _labels_and_classes(raw, len(raw), classnames, str(path))
        self.templates = check_templates(templates) if templates is not None else DEFAULT_PROMPTS
        if check_files:
            missing = [str(p) for p in self.paths if not p.is_file()]
            if missing:
                raise ImageReadError(f"{path}: {len(missing)} image file(s) not found: "
                                     + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))

    def _image(self, i: int) -> torch.Tensor:
        return self.transform(_read_image(self.paths[i]))

    def verify(self) -> None:
        """Decode every image now; raise :class:`ImageReadError` naming each unreadable file."""
        _verify(self.paths)


def _read_records(path: Path) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    out = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON object per line ({exc.msg})") from exc
                if not isinstance(rec, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
                out.append((n, rec))
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for n, rec in enumerate(reader, start=2):
                out.append((n, {k.strip(): v for k, v in rec.items() if k is not None}))
    else:
        raise ValueError(f"captions file must be .jsonl, .json (JSON lines), .csv or .tsv, got {path.name}")
    return out


def _field(rec: dict, key: str | None, aliases, path: Path, line: int, what: str, required: bool = True):
    keys = (key,) if key is not None else aliases
    for k in keys:
        if k in rec and rec[k] not in (None, ""):
            return rec[k]
    if required:
        raise ValueError(f"{path}:{line}: no {what} (looked for {', '.join(keys)}; record has "
                         f"{', '.join(map(str, rec)) or 'no keys'})")
    return None


class TensorPairs(PairDataset):
    """Pairs from in-memory tensors: ``images`` ``(N, 3, H, W)`` (float in ``[0, 1]``, or uint8
    scaled by 1/255) or a list of ``(3, H, W)`` tensors, with ``captions`` and optional ``labels``
    (class names or integers, see ``classnames``). ``transform``, if given, is applied to each
    image tensor. ``templates``: the zero-shot prompts (default :data:`DEFAULT_PROMPTS`);
    ``classnames``: the class order (default: the order of first appearance), which integer
    labels index."""

    def __init__(self, images, captions: Sequence[str], labels=None, transform: Callable | None = None,
                 *, templates: Sequence[str] | None = None, classnames: Sequence[str] | None = None):
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a sequence of strings")
        n = len(captions)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        elif not all(isinstance(im, torch.Tensor) and im.ndim == 3 and im.shape[0] == 3 for im in images):
            raise ValueError("images must be a (N, 3, H, W) tensor or a list of (3, H, W) tensors")
        if len(images) != n:
            raise ValueError(f"got {len(images)} images but {n} captions")
        if labels is not None and len(labels) != n:
            raise ValueError(f"got {len(labels)} labels but {n} captions")
        _check_transform(transform)
        self.images, self.transform = images, transform
        self.captions = list(captions)
        self.labels, self.classnames = _labels_and_classes(labels, n, classnames, "TensorPairs")
        self.templates = check_templates(templates) if templates is not None else DEFAULT_PROMPTS

    def _image(self, i: int) -> torch.Tensor:
        image = self.images[i]
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return self.transform(image) if self.transform is not None else image


def collate(batch: Sequence[dict]):
    """Items -> ``(images (B, 3, H, W), captions list[str], labels list[str], indices (B,) int64)``."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [it["image"] for it in batch]
    if not all(isinstance(im, torch.Tensor) for im in images):
        raise TypeError("dataset images must be tensors: give the dataset a transform "
                        "(e.g. transform=model.preprocess)")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images of one batch must share a shape, got {sorted(shapes)}: "
                         f"use a transform that resizes (model.preprocess)")
    return (torch.stack(images), [it["caption"] for it in batch], [it["label"] for it in batch],
            torch.tensor([int(it["index"]) for it in batch], dtype=torch.long))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, distributed: bool = False, *,
                num_workers: int = 0, drop_last: bool = False, seed: int = 0,
                num_replicas: int | None = None, rank: int | None = None, **loader_kw) -> DataLoader:
    """A ``DataLoader`` of :func:`collate` batches.

    ``distributed=True`` shards the data with a ``DistributedSampler`` (``num_replicas`` /
    ``rank`` default to the initialised process group's); call
    ``loader.sampler.set_epoch(epoch)`` each epoch to reshuffle. ``seed`` seeds the shuffle.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to load")
    if distributed:
        from torch.utils.data.distributed import DistributedSampler
        if num_replicas is None or rank is None:
            import torch.distributed as dist
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("distributed=True needs an initialised process group (torchrun) "
                                 "or explicit num_replicas= and rank=")
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                     seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          drop_last=drop_last, collate_fn=collate, **loader_kw)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, collate_fn=collate, generator=generator, **loader_kw)
