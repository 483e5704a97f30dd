"""``measure`` one model, ``evaluate`` a model before/after unlearning, and write the report.

A report folder holds ``report.json`` (every number), ``report.md`` (the tables) and PNG
plots: ``similarity.png`` (class-level image-text similarity, before | after),
``origin_distance.png`` (per concept and per hierarchy level) and, for Lorentz models, the
cone audit in the tables.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Sequence

import torch

from ..geometry import geometry_of
from . import audits, plots
from .retrieval import caption_retrieval
from .zeroshot import (
    EncodedImages, _attr, accuracy_from_scores, class_scores, encode_images, encode_texts, eval_mode,
    resolve_concepts, zeroshot_classifier,
)

__all__ = ["measure", "evaluate", "targets_met", "write_report", "jsonable", "FORGET_MARGIN", "RETAIN_RATIO"]

#: Targets: forget accuracy <= chance + FORGET_MARGIN, retain >= RETAIN_RATIO x before.
FORGET_MARGIN = 0.05
RETAIN_RATIO = 0.90
KS = (1, 5, 10)


def measure(model, data, concepts: Iterable = (), *, classnames: Sequence[str] | None = None,
            templates: Sequence[str] | None = None, hierarchy: dict[str, list[str]] | None = None,
            batch_size: int = 256, device=None, ks: Sequence[int] = KS,
            images: EncodedImages | None = None) -> dict:
    """Every metric of one model on ``data`` (fractions; distances in embedding units):

    * ``zeroshot``: mean per-class accuracy overall / forget / retain, per class, chance;
    * ``retrieval``: recall@k image->text and text->image (captions of ``data``), for all,
      forget and retain queries;
    * ``class_similarity``: (K, K) mean similarity of each class's images to each class text;
    * ``origin_distance``: per class, of its images and of its zero-shot text embedding, and
      per hierarchy level (``hierarchy``: level -> texts; default ``data.hierarchy_levels()``);
    * ``cone`` (Lorentz only): share of each class's images inside its class text's cone.
    """
    classnames = list(classnames if classnames is not None else _attr(data, "classnames"))
    if templates is None:
        templates = _attr(data, "templates", ("a {}",))
    if hierarchy is None:
        fn = _attr(data, "hierarchy_levels", None) if _has(data, "hierarchy_levels") else None
        hierarchy = fn() if callable(fn) else None
    forget = resolve_concepts(classnames, concepts)
    retain = [k for k in range(len(classnames)) if k not in forget]
    if images is None:
        images = encode_images(model, data, batch_size=batch_size, device=device, classnames=classnames)
    keep = images.labels >= 0
    feats, labels = images.feats[keep], images.labels[keep]
    captions = [c for c, k in zip(images.captions, keep.tolist()) if k]

    classifier = zeroshot_classifier(model, classnames, templates, device=device)
    with eval_mode(model):
        scores = class_scores(model, feats, classifier).cpu()
        zs = accuracy_from_scores(scores, labels, classnames, forget)

        texts = list(dict.fromkeys(captions))
        text_feats = encode_texts(model, texts, device=device)
        is_forget = torch.isin(labels, torch.tensor(forget, dtype=torch.long))
        retrieval = {
            "all": caption_retrieval(model, feats, captions, text_feats, texts, None, ks),
            "forget": caption_retrieval(model, feats, captions, text_feats, texts, is_forget, ks),
            "retain": caption_retrieval(model, feats, captions, text_feats, texts, ~is_forget, ks),
        }
        sim = audits.class_similarity(model, feats, labels, classifier)
        img_dist = audits.per_class_mean(audits.origin_distance(model, feats), labels, len(classnames))
        if not geometry_of(model).average_projected_prompts:  # the class's point: the lifted ensemble
            txt_dist = audits.origin_distance(model, classifier)
        else:  # the classifier is unit-norm: report the raw prompt features' mean norm
            prompts = [t.format(name) for name in classnames for t in templates]
            raw = audits.origin_distance(model, encode_texts(model, prompts, device=device))
            txt_dist = raw.reshape(len(classnames), len(templates)).mean(dim=1)
        levels = None
        if hierarchy:
            levels = {}
            for level, level_texts in hierarchy.items():
                d = audits.origin_distance(model, encode_texts(model, list(level_texts), device=device))
                levels[level] = float(d.mean())
        cone = None
        shares = audits.cone_share_per_class(model, classifier, feats, labels, range(len(classnames)))
        if shares is not None:
            inside = audits.cone_membership(model, classifier.cpu()[labels], feats)
            cone = {
                "forget": _share(inside, is_forget),
                "retain": _share(inside, ~is_forget),
                "per_class": {classnames[k]: v for k, v in shares.items() if not math.isnan(v)},
            }
    return {
        "geometry": model.geometry,
        "n_images": int(labels.numel()),
        "classnames": classnames,
        "forget_classes": [classnames[k] for k in forget],
        "retain_classes": [classnames[k] for k in retain],
        "zeroshot": zs.to_dict(),
        "retrieval": retrieval,
        "class_similarity": sim.tolist(),
        "origin_distance": {
            "images": {classnames[k]: float(v) for k, v in enumerate(img_dist) if not math.isnan(v)},
            "class_texts": {classnames[k]: float(v) for k, v in enumerate(txt_dist)},
            "levels": levels,
        },
        "cone": cone,
    }


def _has(data, name: str) -> bool:
    try:
        _attr(data, name)
        return True
    except ValueError:
        return False


def _share(mask: torch.Tensor, rows: torch.Tensor) -> float:
    return float(mask[rows].double().mean()) if rows.any() else math.nan


def targets_met(before: dict, after: dict, forget_margin: float = FORGET_MARGIN,
                retain_ratio: float = RETAIN_RATIO) -> dict:
    """The demo's targets from two ``zeroshot`` dicts: forget accuracy after <= chance +
    ``forget_margin`` and retain accuracy after >= ``retain_ratio`` x retain before."""
    forget_ok = after["forget"] <= after["chance"] + forget_margin + 1e-12
    retain_ok = after["retain"] >= retain_ratio * before["retain"] - 1e-12
    return {"forget_ok": bool(forget_ok), "retain_ok": bool(retain_ok), "pass": bool(forget_ok and retain_ok),
            "forget_limit": after["chance"] + forget_margin, "retain_limit": retain_ratio * before["retain"]}


def evaluate(model, data, concepts: Iterable = (), *, before=None, out_dir: str | None = None,
             title: str = "", classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None,
             hierarchy: dict[str, list[str]] | None = None, batch_size: int = 256, device=None) -> dict:
    """Evaluate ``model`` (and, if given, the model ``before`` unlearning) on ``data``.

    Returns ``{"title", "concepts", "after": measure(model), "before": measure(before) | None,
    "targets": targets_met(...) | None}``; with ``out_dir``, also writes ``report.json``,
    ``report.md`` and the plots there (see :func:`write_report`).
    """
    concepts = [concepts] if isinstance(concepts, str) else list(concepts)
    kw = dict(classnames=classnames, templates=templates, hierarchy=hierarchy, batch_size=batch_size,
              device=device)
    after = measure(model, data, concepts, **kw)
    prior = measure(before, data, concepts, **kw) if before is not None else None
    result = {
        "title": title or "hypkern evaluation",
        "concepts": [str(c) for c in concepts],
        "after": after,
        "before": prior,
        "targets": targets_met(prior["zeroshot"], after["zeroshot"]) if prior and concepts else None,
    }
    if out_dir is not None:
        write_report(result, out_dir)
    return result


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def write_report(result: dict, out_dir: str, prefix: str = "") -> dict[str, str]:
    """Write ``<prefix>report.json``, ``<prefix>report.md``, ``<prefix>similarity.png`` and
    ``<prefix>origin_distance.png`` for an :func:`evaluate` result; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    panels = {k: result[k] for k in ("before", "after") if result.get(k)}
    first = panels[next(iter(panels))]
    classnames, forget = first["classnames"], result["after"]["forget_classes"]
    paths["similarity"] = plots.plot_similarity(
        {k: v["class_similarity"] for k, v in panels.items()}, classnames, forget,
        os.path.join(out_dir, f"{prefix}similarity.png"),
        title=f"{result['title']}: mean image-text similarity per class")
    paths["origin_distance"] = plots.plot_origin_distance(
        {f"images, {k}": v["origin_distance"]["images"] for k, v in panels.items()},
        os.path.join(out_dir, f"{prefix}origin_distance.png"),
        title=f"{result['title']}: image distance to the origin per concept", highlight=forget)
    json_path = os.path.join(out_dir, f"{prefix}report.json")
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(jsonable(result), fh, indent=1)
    paths["json"] = json_path
    md_path = os.path.join(out_dir, f"{prefix}report.md")
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write(markdown(result, images={k: os.path.basename(v) for k, v in paths.items() if v.endswith(".png")}))
    paths["md"] = md_path
    return paths


def jsonable(obj):
    """NaN -> None (strict JSON), keys -> str, tensors -> lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def markdown(result: dict, images: dict[str, str] | None = None) -> str:
    """The report of an :func:`evaluate` result as Markdown."""
    cols = [k for k in ("before", "after") if result.get(k)]
    m = {k: result[k] for k in cols}
    last = m[cols[-1]]
    lines = [f"# {result['title']}", ""]
    lines.append(f"Geometry: {last['geometry']}; {last['n_images']} images, {len(last['classnames'])} classes "
                 f"(chance {_pct(last['zeroshot']['chance'])} %).")
    lines.append(f"Forget concepts: {', '.join(result['concepts']) or '(none)'} -> classes "
                 f"{', '.join(last['forget_classes']) or '(none)'}.")
    lines += ["", "## Zero-shot accuracy (mean per class, %)", "",
              "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for key in ("forget", "retain", "overall"):
        lines.append(f"| {key} | " + " | ".join(_pct(m[c]["zeroshot"][key]) for c in cols) + " |")
    t = result.get("targets")
    if t:
        lines += ["", f"Targets: forget <= {_pct(t['forget_limit'])} % "
                      f"({'PASS' if t['forget_ok'] else 'FAIL'}), retain >= {_pct(t['retain_limit'])} % "
                      f"({'PASS' if t['retain_ok'] else 'FAIL'}): **{'PASS' if t['pass'] else 'FAIL'}**"]
    lines += ["", "## Retrieval recall@k (%)", "", "| queries | direction | k | " + " | ".join(cols) + " |",
              "|---|---|---:|" + "---:|" * len(cols)]
    for group in ("all", "forget", "retain"):
        for direction in ("i2t", "t2i"):
            for k in last["retrieval"][group][direction]:
                vals = [_pct(m[c]["retrieval"][group][direction][k]) for c in cols]
                lines.append(f"| {group} | {direction} | {k} | " + " | ".join(vals) + " |")
    lines += ["", "## Audits", "", "Distance to the origin (mean over each class's images; class text embedding):", "",
              "| class | " + " | ".join(f"images {c} | text {c}" for c in cols) + " |",
              "|---|" + "---:|---:|" * len(cols)]
    for name in last["classnames"]:
        mark = " (forget)" if name in last["forget_classes"] else ""
        vals = []
        for c in cols:
            od = m[c]["origin_distance"]
            vals += [_num(od["images"].get(name)), _num(od["class_texts"].get(name))]
        lines.append(f"| {name}{mark} | " + " | ".join(vals) + " |")
    if last["origin_distance"].get("levels"):
        lines += ["", "Hierarchy (mean text distance to the origin per level; general texts should sit nearer):", "",
                  "| level | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for level in last["origin_distance"]["levels"]:
            lines.append(f"| {level} | " + " | ".join(
                _num((m[c]["origin_distance"].get("levels") or {}).get(level)) for c in cols) + " |")
    if last.get("cone"):
        lines += ["", "Share of images inside their class text's entailment cone (%):", "",
                  "| images | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for group in ("forget", "retain"):
            lines.append(f"| {group} | " + " | ".join(_pct((m[c].get("cone") or {}).get(group)) for c in cols) + " |")
    if images:
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in images.items()]
    return "\n".join(lines) + "\n"
