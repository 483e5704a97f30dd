"""The command line of the benchmark harness: ``python -m benchmarks.harness.cli [ops|trainer|all]``
from the root of a checkout, or ``hypkern bench ...`` (which finds this and runs it)."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from . import __doc__ as _HARNESS_DOC
from .runner import run_benchmarks
from .tables import evaluate_targets, write_results
from .trainer import trainer_benchmark, write_trainer_results


# ----------------------------------------------------------------------------- CLI

def _cmd(args) -> int:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("hypkern bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    suite = "quick" if args.quick else ("gpu" if device.startswith("cuda") else "full")
    tag = "cpu" if device == "cpu" else "gpu"
    out = args.out
    what = set(args.what or ["all"])
    if what - {"all", "ops", "trainer"}:
        print(f"hypkern bench: unknown {sorted(what - {'all', 'ops', 'trainer'})}; choose ops, trainer or all",
              file=sys.stderr)
        return 2
    rc = 0
    if what & {"ops", "all"}:
        only = args.only.split(",") if args.only else None
        impls = args.impls.split(",") if args.impls else None
        result = run_benchmarks(suite, device, args.dtype, only, impls, isolate=False if args.in_process else None,
                                group_timeout=args.group_timeout, threads=args.threads)
        stem = f"ops_{tag}" + ("_quick" if args.quick else "")
        paths = write_results(result, out, stem, f"hypkern kernel benchmarks ({tag}, {suite})",
                              make_plot=not args.no_plot)
        print(f"[bench] wrote {', '.join(paths.values())} in {result['machine']['wall_s']} s")
        for t in evaluate_targets(result):
            print(f"[target] {t['target']}: {t['measured']} -> "
                  f"{ {True: 'met', False: 'MISSED', None: 'not measured'}[t['met']]} {t['margin']}")
    if what & {"trainer", "all"}:
        try:
            res = trainer_benchmark(device=device, quick=args.quick, log=print, threads=args.threads)
        except Exception as exc:
            print(f"[bench] trainer benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
        else:
            stem = f"trainer_{tag}" + ("_quick" if args.quick else "")
            paths = write_trainer_results(res, out, stem)
            print(f"[bench] wrote {', '.join(paths.values())}")
    return rc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="*", default=[], metavar="{ops,trainer,all}",
                   help="what to run: ops (ops and losses), trainer, or all (default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke run)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"),
                   help="folder for the CSV/JSON/Markdown/PNG results (default benchmarks/results)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda if visible)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--only", default="", help="comma-separated op/loss names (or 'op', 'loss')")
    p.add_argument("--impls", default="", help="comma-separated implementations (reference always runs)")
    p.add_argument("--in-process", action="store_true",
                   help="run every case in this process (the default for --quick and CUDA; CPU peak "
                        "memory is then less isolated)")
    p.add_argument("--group-timeout", type=float, default=420.0,
                   help="seconds one op/loss may take, all implementations and sizes (default 420)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all cores; 1 with --quick)")
    p.add_argument("--no-plot", action="store_true")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark the ops, losses and unlearning trainer",
                              description=_HARNESS_DOC.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=_cmd)


def main(argv=None, prog: str = "python -m benchmarks.harness.cli") -> int:
    p = argparse.ArgumentParser(prog=prog, description=_HARNESS_DOC.split("\n\n")[0])
    add_arguments(p)
    return _cmd(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
