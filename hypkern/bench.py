"""``hypkern bench``: run the benchmark harness of a source checkout.

The benchmarks (case catalogue, timing, memory probes, peers, tables, trainer benchmark) are
not part of the installed package: they live in ``benchmarks/harness/`` of the repository. This
command finds that folder and runs ``benchmarks.harness.cli`` with the same arguments, in this
process and with this ``hypkern``. Where it looks, in order:

1. ``$HYPKERN_BENCH_DIR``: the ``benchmarks/`` folder of a checkout (or the checkout itself);
   when set, nothing else is tried;
2. the current directory and the directories above it;
3. the git checkout this ``hypkern`` is imported from (an editable install, or ``PYTHONPATH``).

Without one it exits 2 and says how to get one.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

ENV_VAR = "HYPKERN_BENCH_DIR"

HOW_TO = ("hypkern bench runs the harness in benchmarks/ of a source checkout: "
          "git clone <hypkern repository> hypkern && cd hypkern && hypkern bench ...  "
          f"(or set {ENV_VAR} to the benchmarks/ folder of a checkout)")


class HarnessNotFound(LookupError):
    """No ``benchmarks/harness`` where ``hypkern bench`` looked."""


def _has_harness(bench_dir: Path) -> bool:
    return (bench_dir / "__init__.py").is_file() and (bench_dir / "harness" / "cli.py").is_file()


def find_benchmarks(environ=None, cwd=None, package_file=None) -> Path:
    """The ``benchmarks/`` folder to run (see the module docstring for the search order).
    ``environ``, ``cwd`` and ``package_file`` (this module's file) default to the real ones.
    Raises ``HarnessNotFound`` with the reason."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_VAR)
    if explicit:
        given = Path(explicit).expanduser()
        for cand in (given, given / "benchmarks"):
            if _has_harness(cand):
                return cand.resolve()
        raise HarnessNotFound(f"{ENV_VAR}={explicit} is not the benchmarks/ folder of a checkout "
                              f"(no {given / 'harness' / 'cli.py'})")
    start = Path.cwd() if cwd is None else Path(cwd)
    start = start.resolve()
    for d in (start, *start.parents):
        if _has_harness(d / "benchmarks"):
            return d / "benchmarks"
    checkout = Path(package_file or __file__).resolve().parents[1]
    if (checkout / ".git").exists() and _has_harness(checkout / "benchmarks"):
        return checkout / "benchmarks"
    raise HarnessNotFound(f"no benchmarks/harness/ in {start} or above it, and this hypkern "
                          f"({checkout / 'hypkern'}) is not imported from a source checkout")


def _load_cli(bench_dir: Path):
    """``benchmarks.harness.cli`` of ``bench_dir`` (refusing another ``benchmarks`` package)."""
    root = str(bench_dir.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    cli = importlib.import_module("benchmarks.harness.cli")
    got = Path(cli.__file__).resolve().parents[1]
    if got != bench_dir.resolve():
        raise HarnessNotFound(f"another 'benchmarks' package ({got}) is imported instead of {bench_dir}")
    return cli


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cli = _load_cli(find_benchmarks())
    except HarnessNotFound as exc:
        print(f"hypkern bench: {exc}.\n{HOW_TO}", file=sys.stderr)
        return 2
    return int(cli.main(argv, prog="hypkern bench") or 0)


def register(subparsers) -> None:
    # Every argument goes to the harness's own parser unparsed (its --help included): the
    # '\0' prefix makes this parser take '--quick' etc. as plain strings.
    p = subparsers.add_parser("bench", add_help=False, prefix_chars="\0",
                              help="benchmark the ops, losses and unlearning trainer (runs "
                                   "benchmarks/harness of a source checkout; --help for options)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: main(args.argv))


if __name__ == "__main__":
    sys.exit(main())
