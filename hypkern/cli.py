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
    """The capability table of the one registry, and what the native build produced."""
    import glob
    import os

    from .kernels import registry
    rows = registry.capability_table()
    width = max(len(r["backend"]) for r in rows)
    print(f"{'backend':<{width}}  cpu  cuda  implements")
    for r in rows:
        ops = "every op and loss" if set(r["implements"]) == set(registry.ALL_OPS) else ", ".join(r["implements"])
        print(f"{r['backend']:<{width}}  {'yes' if r['cpu'] else 'no ':<3}  {'yes' if r['cuda'] else 'no ':<4}  {ops}")
        if r["reason"]:
            print(f"{'':<{width}}  ({r['reason']})")
    here = os.path.dirname(os.path.abspath(__file__))
    for name, what in (("_C", "native CPU extension"), ("_C_cuda", "native CUDA extension")):
        built = glob.glob(os.path.join(here, f"{name}.*.so")) + glob.glob(os.path.join(here, f"{name}.*.pyd"))
        print(f"{what} ({'hypkern.' + name}): " + ("built" if built else "not built (see docs/readme_native.md)"))
    print("default per op: cpu -> " + ", ".join(f"{op}={registry.resolve(op, None, 'cpu')}" for op in registry.ALL_OPS))
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
    from .unlearning.command import allow_negative_numbers
    for sp in [parser, *sub.choices.values()]:
        allow_negative_numbers(sp)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
