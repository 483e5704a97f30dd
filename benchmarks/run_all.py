#!/usr/bin/env python
"""Regenerate every CPU result table in benchmarks/results/ in one go.

    python benchmarks/run_all.py [--quick] [--threads N] [--skip-others]

1. `python -m benchmarks.harness.cli ops` (= `hypkern bench ops`) -> ops_cpu.{md,csv,json,png}
   (every op and loss, every backend, peers)
2. `python -m benchmarks.harness.cli trainer` -> trainer_cpu.{md,csv,json}
3. unless --skip-others: the kernel owners' own scripts, benchmarks/bench_native_cpu.py
   (native_cpu.*) and benchmarks/bench_losses_cpu.py (losses_cpu.*), with their defaults.

Prints the load average before and after: on a shared machine, re-run when it is quiet.
The GPU results come from benchmarks/gpu_suite.sh on a GPU machine instead.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(cmd: list[str]) -> int:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"-> exit {rc} after {time.time() - t0:.0f} s", flush=True)
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-others", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    a = p.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    # the harness of this checkout, directly (what `hypkern bench` would find and run)
    base = [sys.executable, "-m", "benchmarks.harness.cli", "--device", "cpu", "--out", a.out]
    extra = (["--quick"] if a.quick else []) + (["--threads", str(a.threads)] if a.threads else [])
    rcs = [_run(base + ["ops"] + extra), _run(base + ["trainer"] + extra)]
    if not a.skip_others and not a.quick:
        for script in ("bench_native_cpu.py", "bench_losses_cpu.py"):
            path = os.path.join(HERE, script)
            if os.path.exists(path):
                rcs.append(_run([sys.executable, path]))
    print(f"load average after: {os.getloadavg()}")
    return max(rcs)


if __name__ == "__main__":
    sys.exit(main())
