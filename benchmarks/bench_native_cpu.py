"""Native CPU kernels vs the eager PyTorch reference (fp32), and pairwise_dist vs a bare matmul.

One run; per case the median of ``--repeats`` timings after warm-up. Writes
``benchmarks/results/native_cpu.md`` and ``.csv`` (machine, date, threads, shapes).

Targets (issue 3): maps and angles forward+backward >= 3x faster than the eager reference;
``pairwise_dist`` forward <= 1.25x the time of a bare ``torch.mm`` of the same shape.

    python benchmarks/bench_native_cpu.py [--threads 2] [--repeats 15]
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from a checkout: import the package beside it
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hypkern  # noqa: E402
from benchmarks.harness.timing import cpu_model  # noqa: E402
from hypkern.kernels import native  # noqa: E402
from hypkern.lorentz import reference as R  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

ROWWISE = {  # op: number of (N, D) inputs
    "dist": 2, "exp_map0": 1, "log_map0": 1, "half_aperture": 1, "oxy_angle": 2,
}
PAIRWISE = ("pairwise_inner", "pairwise_dist")
# Ops the >= 3x fwd+bwd target applies to ("maps and angles").
MAPS_ANGLES = ("exp_map0", "log_map0", "half_aperture", "oxy_angle")


def _paired_medians(fa, fb, repeats: int, rounds: int = 3, warmup: int = 2) -> tuple[float, float]:
    """Median times of fa and fb over ``rounds`` alternating blocks (a block: ``warmup`` untimed
    calls, then ``repeats // rounds`` timed ones). Blocks keep each function in its steady state
    (allocator included: fresh pages cost ~8 us each on the VM these numbers come from), the
    alternation lets both see the same drift of the machine's load."""
    ta, tb = [], []
    per = max(1, repeats // rounds)
    for _ in range(rounds):
        for f, ts in ((fa, ta), (fb, tb)):
            for _ in range(warmup):
                f()
            for _ in range(per):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def _inputs(op: str, n: int, d: int, m: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = 2 if op in PAIRWISE else ROWWISE[op]
    rows = [n, m if op in PAIRWISE else n][:k]
    return [torch.randn(r, d, generator=g) * 0.5 for r in rows]


def _callables(op: str, xs, curv: float):
    """(reference fwd, reference fwd+bwd, native fwd, native fwd+bwd)."""
    c = torch.tensor(curv)

    def ref_fwd():
        with torch.no_grad():
            return getattr(R, op)(*xs, c)

    def nat_fwd():
        with torch.no_grad():
            return getattr(hypkern, op)(*xs, c, backend="native")

    leaves = [x.clone().requires_grad_(True) for x in xs]
    cg = c.clone().requires_grad_(True)
    with torch.no_grad():
        gout = torch.randn_like(getattr(R, op)(*xs, c))

    def ref_fb():
        out = getattr(R, op)(*leaves, cg)
        return torch.autograd.grad(out, leaves + [cg], gout)

    def nat_fb():
        out = getattr(hypkern, op)(*leaves, cg, backend="native")
        return torch.autograd.grad(out, leaves + [cg], gout)

    return ref_fwd, ref_fb, nat_fwd, nat_fb


def _machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}), threads={torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rows", type=int, default=4096, help="N of the row-wise ops")
    ap.add_argument("--pair", type=int, default=1024, help="N = M of the pairwise ops")
    ap.add_argument("--dim", type=int, default=512, help="D (MERU's embedding width)")
    ap.add_argument("--out", type=Path, default=RESULTS / "native_cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ok, why = native.supports(torch.device("cpu"))
    if not ok:
        raise SystemExit(f"native CPU extension unavailable: {why}")

    rows = []  # dicts for the CSV
    curv = 1.0
    for op in list(ROWWISE) + list(PAIRWISE):
        if op in PAIRWISE:
            xs = _inputs(op, args.pair, args.dim, m=args.pair)
            shape = f"{args.pair}x{args.pair}x{args.dim}"
        else:
            xs = _inputs(op, args.rows, args.dim)
            shape = f"{args.rows}x{args.dim}"
        ref_fwd, ref_fb, nat_fwd, nat_fb = _callables(op, xs, curv)
        for mode, ref, nat in (("fwd", ref_fwd, nat_fwd), ("fwd+bwd", ref_fb, nat_fb)):
            t_ref, t_nat = _paired_medians(ref, nat, args.repeats)
            target = ""
            if mode == "fwd+bwd" and op in MAPS_ANGLES:
                target = ">= 3x: " + ("met" if t_ref / t_nat >= 3 else "MISSED")
            rows.append(dict(op=op, shape=shape, mode=mode, baseline="eager reference fp32",
                             baseline_ms=t_ref * 1e3, native_ms=t_nat * 1e3,
                             ratio=t_ref / t_nat, target=target))
            print(f"{op:15s} {shape:16s} {mode:8s} ref {t_ref*1e3:9.3f} ms  native {t_nat*1e3:9.3f} ms  "
                  f"speed-up {t_ref/t_nat:6.2f}x {target}", flush=True)

    # pairwise_dist forward against a bare matmul of the same shape.
    x, y = _inputs("pairwise_dist", args.pair, args.dim, m=args.pair, seed=1)
    c = torch.tensor(curv)
    with torch.no_grad():
        t_mm, t_pd = _paired_medians(lambda: torch.mm(x, y.T),
                                     lambda: hypkern.pairwise_dist(x, y, c, backend="native"), args.repeats)
    ratio = t_pd / t_mm
    target = "<= 1.25x: " + ("met" if ratio <= 1.25 else "MISSED")
    rows.append(dict(op="pairwise_dist", shape=f"{args.pair}x{args.pair}x{args.dim}", mode="fwd",
                     baseline="bare torch.mm", baseline_ms=t_mm * 1e3, native_ms=t_pd * 1e3,
                     ratio=ratio, target=target))
    print(f"pairwise_dist fwd {t_pd*1e3:.3f} ms vs torch.mm {t_mm*1e3:.3f} ms: {ratio:.3f}x of the matmul "
          f"{target}", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = _machine()
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["date", "machine", *rows[0].keys()])
        w.writeheader()
        for r in rows:
            w.writerow({"date": when, "machine": machine,
                        **{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()}})
    lines = [
        "# Native CPU kernels: benchmark",
        "",
        f"- date: {when}",
        f"- machine: {machine}",
        f"- command: `python benchmarks/bench_native_cpu.py --threads {args.threads} --repeats {args.repeats}`",
        f"- medians of {args.repeats} timings in 3 alternating blocks (baseline, native) of 2 warm-up + "
        f"{args.repeats // 3} timed calls, "
        f"one run; fp32 inputs, curvature {curv}",
        "- speed-up = eager reference time / native time (the public op `hypkern.<op>(..., backend=\"native\")`, "
        "argument checks and autograd included); last row: native time / bare `torch.mm` time",
        "",
        "| op | shape | mode | baseline | baseline ms | native ms | ratio | target |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {r['baseline']} | {r['baseline_ms']:.3f} | "
                     f"{r['native_ms']:.3f} | {r['ratio']:.2f}x | {r['target']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main()
