"""The ``hypkern`` command: ``hypkern demo | unlearn | eval | bench | backends``.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int``; this module only wires them together.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: (module, what it adds) — imported lazily so `hypkern --help` stays fast.
COMMAND_MODULES = (
    "hypkern.demo",
    "hypkern.unlearning.command",
    "hypkern.eval.command",
    "hypkern.bench",
)


def _backends_command(args) -> int:
    from .lorentz.ops import backends
    for status in backends().values():
        print(status)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypkern",
        description="Fast, exact Lorentz-model kernels and concept unlearning for MERU and CLIP. "
                    "Start with `hypkern demo`.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module: show it
                raise
            continue
        module.register(sub)
    p = sub.add_parser("backends", help="list the kernel backends usable here, and why not")
    p.set_defaults(func=_backends_command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
