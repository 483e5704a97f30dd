#!/usr/bin/env python
"""Re-draw the plot of a `hypkern bench` result without re-running it.

    python benchmarks/plot.py benchmarks/results/ops_cpu.json [OUT.png]

One panel per op/loss: fwd+bwd median time against size, one line per implementation
(the bare-matmul bound dashed). The JSON is what `hypkern bench` writes beside its CSV/MD.
"""
from __future__ import annotations

import json
import os
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 64
    src = argv[0]
    out = argv[1] if len(argv) > 1 else os.path.splitext(src)[0] + ".png"
    with open(src) as f:
        result = json.load(f)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:  # run as a script: the harness is benchmarks.harness of this checkout
        sys.path.insert(0, root)
    from benchmarks.harness.tables import plot
    if not plot(result, out):
        print("nothing to plot (no successful fwd+bwd rows, or matplotlib missing)", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
