"""``hypkern unlearn``: remove concepts from a model from the command line.

Examples::

    hypkern unlearn --model tiny_meru --concepts "red circle"            # demo data
    hypkern unlearn --model ckpt/meru_vit_s.pth --concepts dog,cat --data pairs.jsonl \\
        --config hac.yaml --out runs/no-pets --seed 0
    torchrun --nproc_per_node 4 -m hypkern.cli unlearn ... --out runs/x   # data parallel
    hypkern unlearn ... --out runs/x --resume                             # after a kill

Writes ``OUT/model`` (``save_model``; load with ``hypkern.models.load_model``),
``OUT/metrics.jsonl``, ``OUT/summary.{json,txt}`` and ``OUT/checkpoints/``.
"""
from __future__ import annotations

import argparse
import re
import os
import sys

__all__ = ["register", "run", "build_parser"]

_DESCRIPTION = """Remove concepts from a MERU (HAC) or CLIP (AC) model and report zero-shot
accuracy on the forgotten and the retained classes before and after. Settings come from the
defaults of hypkern.unlearning.UnlearnConfig, then --config, then --set, then the dedicated
options below (later wins). See docs/readme_unlearn.md."""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH_OR_NAME",
                   help="model to unlearn: a save_model directory or .safetensors file, a MERU .pth "
                        "checkpoint, a hypkern factory name (e.g. tiny_meru) or an open_clip name")
    p.add_argument("--concepts", required=True, metavar="C1,C2",
                   help="comma-separated concepts to forget, e.g. 'dog,cat'; a pair is forgotten when its "
                        "caption or class name names one")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="image-text pairs: an image folder (root/<class>/*.jpg) or a captions file "
                        "(.jsonl/.csv/.tsv with image, caption[, label]); default: the embedded demo dataset")
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="zero-shot prompt template with {} for the before/after accuracy (repeatable; "
                        "default: the data's own templates)")
    p.add_argument("--method", default=None, choices=("auto", "hac", "ac"),
                   help="hac (MERU: AC + entailment calibration + norm regularisation), ac (alignment "
                        "calibration, CLIP) or auto (hac for Lorentz models, ac for Euclidean); default auto")
    p.add_argument("--config", default=None, metavar="FILE.yaml|json",
                   help="UnlearnConfig fields as a flat YAML/JSON mapping (or under an 'unlearn:' key)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                   help="override one config field (YAML value syntax), repeatable: --set alpha=0.5 "
                        "--set micro_batch_size=64")
    p.add_argument("--out", default="unlearn-out", metavar="DIR",
                   help="output directory: model/, metrics.jsonl, summary.{json,txt}, checkpoints/ "
                        "(default: ./unlearn-out)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (same model, data and settings); "
                        "ends with the same weights as an uninterrupted run")
    p.add_argument("--seed", type=int, default=None, help="seed of batch sampling and initialisation (default 0)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default 100)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-5)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="encoder autocast precision; geometry is always fp32 (default fp32)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="gradient caching: encode the batch in chunks of this many rows (default off)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def allow_negative_numbers(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let option values be negative numbers in any notation (``--lr -1e-3``): argparse only
    recognises ``-1`` and ``-0.5`` and takes ``-1e-3`` for an unknown option, so the config
    check never gets to say what is wrong with the value."""
    parser._negative_number_matcher = _NEGATIVE_NUMBER
    return parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypkern unlearn", description=_DESCRIPTION)
    _add_arguments(p)
    return allow_negative_numbers(p)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``unlearn`` subcommand to ``hypkern``'s subparsers."""
    p = subparsers.add_parser("unlearn", help="remove concepts from a MERU/CLIP model (AC / HAC)",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _parse_overrides(items) -> dict:
    import yaml
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _init_distributed():
    import torch
    import torch.distributed as tdist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group(backend=backend)
        return True
    return False


def run(args) -> int:
    """Run ``hypkern unlearn`` from parsed ``args``; returns the exit code (0 ok, 2 bad input)."""
    from .config import ConfigError, UnlearnConfig
    from .data import DataError

    started = False
    try:
        overrides = _parse_overrides(args.overrides)
        for name, value in (("method", args.method), ("seed", args.seed), ("steps", args.steps),
                            ("lr", args.lr), ("precision", args.precision),
                            ("micro_batch_size", args.micro_batch_size), ("device", args.device)):
            if value is not None:
                overrides[name] = value
        if args.resume:
            overrides["resume"] = True
        if args.no_progress:
            overrides["progress"] = False
        overrides["out_dir"] = args.out
        cfg = UnlearnConfig.from_any(args.config, **overrides)
        started = _init_distributed()
        from .api import unlearn
        result = unlearn(args.model, args.concepts, args.data, config=cfg, templates=args.template)
        from .dist import rank_world
        if rank_world()[0] == 0:
            path = result.save(os.path.join(args.out, "model"))
            print(result.summary())
            print(f"saved the unlearned model to {path} (load with hypkern.models.load_model)")
        return 0
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        print(f"hypkern unlearn: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            import torch.distributed as tdist
            tdist.destroy_process_group()


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
