"""``hypkern eval``: evaluate a model (and optionally the model before unlearning) on data.

Examples::

    hypkern eval --model runs/no-red/model --before demo:meru --concepts "red circle" --out eval-out
    hypkern eval --model demo:clip --concepts "blue ring,green cross"           # demo test split
    hypkern eval --model ckpt/meru_vit_s.pth --data pairs.jsonl --concepts dog --out eval-out

Writes ``OUT/report.json``, ``OUT/report.md`` and the plots (see ``hypkern.eval.report``).
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["register", "load_for_eval"]


def load_for_eval(spec: str, *, seed: int = 0, cache_dir: str | None = None):
    """A model from ``spec``: ``demo:meru`` / ``demo:clip`` (the pretrained demo models), or
    anything ``hypkern.models.load_model`` accepts (a save_model folder, a checkpoint, a name)."""
    if spec.startswith("demo:"):
        from .pretrain import demo_model
        return demo_model(spec.split(":", 1)[1], seed, cache_dir=cache_dir)
    from ..models import load_model
    return load_model(spec)


def _data(spec: str | None, model, seed: int):
    """``None`` / ``demo`` -> the demo test split; a folder or captions file -> hypkern.data."""
    if spec in (None, "demo"):
        from ..data.demo import load_demo
        return load_demo("test", seed=seed)
    from ..data import CaptionFilePairs, ImageFolderPairs
    transform = getattr(model, "preprocess", None)
    if os.path.isdir(spec):
        return ImageFolderPairs(spec, transform=transform)
    return CaptionFilePairs(spec, transform=transform)


def _command(args) -> int:
    """``hypkern eval``: 0 ok, 1 a missed target with --strict, 2 bad input (a clear message,
    no traceback: a missing or corrupt model, unknown concepts, unreadable data)."""
    from ..data.split import ConceptError
    from ..models.io import CheckpointError
    try:
        return _evaluate(args)
    except (ConceptError, CheckpointError, ValueError, FileNotFoundError, OSError, KeyError) as exc:
        print(f"hypkern eval: error: {exc}", file=sys.stderr)
        return 2


def _evaluate(args) -> int:
    from .report import evaluate
    model = load_for_eval(args.model, seed=args.seed, cache_dir=args.cache_dir)
    before = load_for_eval(args.before, seed=args.seed, cache_dir=args.cache_dir) if args.before else None
    data = _data(args.data, model, args.seed)
    concepts = [c.strip() for c in (args.concepts or "").split(",") if c.strip()]
    templates = [t for t in args.template] if args.template else None
    result = evaluate(model, data, concepts, before=before, out_dir=args.out, templates=templates,
                      title=args.title or f"evaluation of {args.model}", batch_size=args.batch_size)
    after = result["after"]["zeroshot"]
    cols = [("before", result["before"]), ("after", result["after"])] if before is not None else [("model", result["after"])]
    print(f"zero-shot accuracy (%, mean per class, chance {100 * after['chance']:.1f}):")
    for key in ("forget", "retain", "overall"):
        print(f"  {key:<8}" + "".join(f"  {name} {100 * m['zeroshot'][key]:5.1f}" for name, m in cols))
    t = result.get("targets")
    if t:
        print(f"targets: forget <= {100 * t['forget_limit']:.1f} % {'PASS' if t['forget_ok'] else 'FAIL'}; "
              f"retain >= {100 * t['retain_limit']:.1f} % {'PASS' if t['retain_ok'] else 'FAIL'}")
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return 1 if args.strict and t and not t["pass"] else 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``hypkern eval`` to the CLI."""
    p = subparsers.add_parser(
        "eval", help="zero-shot (forget/retain), retrieval and audits of a model, before/after",
        description="Evaluate a model, optionally against the model before unlearning: zero-shot "
        "accuracy on the forget and retain classes, retrieval recall@1/5/10, similarity heat maps, "
        "distance to the origin and entailment-cone audits. Writes report.json, report.md and PNGs.")
    p.add_argument("--model", required=True, metavar="PATH_OR_NAME",
                   help="the model to evaluate: demo:meru, demo:clip, a save_model folder, a MERU checkpoint "
                        "or a model name")
    p.add_argument("--before", default=None, metavar="PATH_OR_NAME", help="the model before unlearning (same forms)")
    p.add_argument("--concepts", default="", metavar="C1,C2", help="forget concepts (class names or words)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="image folder or captions file with class labels; default: the demo test split")
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="zero-shot prompt template with {} (repeatable; default: the data's, else 'a {}')")
    p.add_argument("--out", default="eval-out", metavar="DIR", help="output folder (default ./eval-out)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo data / demo models (default 0)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="demo model cache (default $HYPKERN_CACHE "
                   "or ~/.cache/hypkern)")
    p.add_argument("--strict", action="store_true", help="exit 1 when --before is given and a target is missed")
    p.set_defaults(func=_command)
    return p
