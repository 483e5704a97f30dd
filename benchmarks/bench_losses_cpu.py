"""Benchmark: fused (chunked) Lorentz contrastive loss vs the materialised reference.

CPU (default): forward + backward at B = 8192, D = 512 (and smaller B for the memory slope),
each configuration in a fresh subprocess (``benchmarks.harness.runner.run_worker``). Peak memory
is the process's RSS high-water mark (``VmHWM``) minus the RSS measured just before the first
loss call (inputs already allocated), so it counts everything the loss and its backward
allocate, and nothing else.
Time is the median of ``--repeats`` runs after one warm-up. The largest B that fits in
8 GiB is extrapolated from the measured peaks: the reference's peak grows as B^2 (fitted
``a B^2 + b B`` on the two largest sizes), the fused one as B (fitted ``a B + b``); the
8 GiB budget also holds the inputs and their gradients (4 B D floats of 4 bytes).

    python benchmarks/bench_losses_cpu.py                      # writes benchmarks/results/losses_cpu.{md,csv}
    python benchmarks/bench_losses_cpu.py --device cuda        # GPU variant (bf16, Triton), see bench_gpu()
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import functools
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # for benchmarks.harness; appended, so an installed hypkern still comes first
    sys.path.append(ROOT)

from benchmarks.harness.runner import run_worker, worker_env  # noqa: E402
from benchmarks.harness.timing import cpu_model, proc_status_kb, time_callable  # noqa: E402

GIB = 1024 ** 3


# ----------------------------------------------------------------------------- one configuration (child)

def run_child(backend: str, b: int, d: int, repeats: int, threads: int) -> dict:
    import torch
    sys.path.insert(0, ROOT)
    import hypkern.losses as L

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    # MERU-like embeddings: space components of norm ~1.
    image = (torch.randn(b, d, generator=g) / math.sqrt(d)).requires_grad_(True)
    text = (torch.randn(b, d, generator=g) / math.sqrt(d)).requires_grad_(True)
    s = torch.tensor(10.0, requires_grad=True)
    c = torch.tensor(1.0, requires_grad=True)

    def step(x, y):
        loss = L.lorentz_contrastive_loss(x, y, s, c, backend=backend)
        loss.backward()
        x.grad = y.grad = s.grad = c.grad = None
        return float(loss.detach())

    # Page in the code paths (BLAS, thread pools) on a tiny batch first: library code is not
    # the loss's memory. Then the baseline is taken with the inputs allocated.
    step(image[:64].detach().clone().requires_grad_(True), text[:64].detach().clone().requires_grad_(True))
    base = proc_status_kb("VmRSS") * 1024
    times, cpu_times = [], []
    value = None
    for i in range(repeats + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        value = step(image, text)
        if i:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    peak = proc_status_kb("VmHWM") * 1024 - base
    return dict(backend=backend, B=b, D=d, seconds=statistics.median(times),
                cpu_seconds=statistics.median(cpu_times), peak_bytes=peak, loss=value, threads=threads)


def _child(spec: dict) -> dict:
    return run_child(**spec)


def _spawn(backend, b, d, repeats, threads) -> dict:
    spec = dict(backend=backend, b=b, d=d, repeats=repeats, threads=threads)
    res, failed = run_worker("benchmarks.bench_losses_cpu:_child", spec, capture_stderr=True,
                             env=worker_env({"OMP_NUM_THREADS": str(threads)}))
    if failed:
        raise RuntimeError(f"{backend} B={b} D={d}: {failed}")
    return res


# ----------------------------------------------------------------------------- CPU report

def _fit_max_b(rows, quadratic: bool, d: int, budget: float = 8 * GIB) -> int:
    """Largest B with peak(B) + inputs/grads <= budget, peak fitted through the two largest B."""
    (b1, p1), (b2, p2) = sorted((r["B"], r["peak_bytes"]) for r in rows)[-2:]
    if quadratic:  # p = a B^2 + k B
        k = (p2 / b2 ** 2 - p1 / b1 ** 2) / (1 / b2 - 1 / b1)
        a = (p2 - k * b2) / b2 ** 2
        f = lambda B: a * B * B + k * B  # noqa: E731
    else:  # p = a B + k
        a = (p2 - p1) / (b2 - b1)
        k = p2 - a * b2
        f = lambda B: a * B + k  # noqa: E731
    lo, hi = 1, 1 << 40
    while lo < hi:  # bisection on the monotone fit
        mid = (lo + hi + 1) // 2
        if f(mid) + 4 * mid * d * 4 <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def bench_cpu(args) -> None:
    import torch
    d = args.dim
    sizes = sorted(set(args.sizes + [args.batch]))
    results = []
    for backend in ("reference", "chunked"):
        for b in sizes:
            r = _spawn(backend, b, d, args.repeats, args.threads)
            print(f"{backend:9s} B={b:6d} D={d}: {r['seconds']:.3f} s wall, {r['cpu_seconds']:.3f} s CPU, peak +{r['peak_bytes'] / 2**20:.0f} MiB, loss {r['loss']:.5f}",
                  flush=True)
            results.append(r)
    ref = {r["B"]: r for r in results if r["backend"] == "reference"}
    fused = {r["B"]: r for r in results if r["backend"] == "chunked"}
    max_ref = _fit_max_b(list(ref.values()), True, d)
    max_fused = _fit_max_b(list(fused.values()), False, d)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    csv_path = os.path.join(HERE, "results", "losses_cpu.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["backend", "B", "D", "seconds", "cpu_seconds", "peak_bytes", "loss", "threads"])
        w.writeheader()
        w.writerows(results)
    cpu = cpu_model()
    b = args.batch
    lines = [
        "# Fused Lorentz contrastive loss vs materialised reference (CPU, forward + backward)",
        "",
        f"Machine: {cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__}, "
        f"{args.threads} threads; shared with other jobs, so times are indicative. "
        f"Date: {_dt.date.today().isoformat()}. float32, D = {d}, s = 10, c = 1.",
        "",
        "Peak = RSS high-water mark of a fresh process (one per row) minus its RSS before the first "
        "loss call (inputs allocated, code paged in on a B = 64 warm-up). Times = median of "
        f"{args.repeats} runs after a warm-up; the ratio uses process CPU time (user + system, one "
        "thread), which a shared machine does not inflate the way it inflates wall time. "
        "Fused = `backend=\"chunked\"` (tiles of 512 x 1024).",
        "",
        "| B | reference CPU s (wall) | fused CPU s (wall) | time ratio (CPU) | reference peak (MiB) | fused peak (MiB) | memory ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bb in sizes:
        r0, r1 = ref[bb], fused[bb]
        lines.append(f"| {bb} | {r0['cpu_seconds']:.2f} ({r0['seconds']:.2f}) | {r1['cpu_seconds']:.2f} ({r1['seconds']:.2f}) | "
                     f"{r1['cpu_seconds'] / r0['cpu_seconds']:.2f} | "
                     f"{r0['peak_bytes'] / 2**20:.0f} | {r1['peak_bytes'] / 2**20:.0f} | "
                     f"{r1['peak_bytes'] / r0['peak_bytes']:.3f} |")
    r0, r1 = ref[b], fused[b]
    lines += [
        "",
        f"At B = {b}: fused/reference time **{r1['cpu_seconds'] / r0['cpu_seconds']:.2f}x** CPU time "
        f"({r1['seconds'] / r0['seconds']:.2f}x wall) (target <= 0.7), "
        f"peak memory **{100 * r1['peak_bytes'] / r0['peak_bytes']:.1f} %** of the reference (target <= 5 %).",
        "",
        f"Largest B in 8 GiB (peak fitted through the two largest measured B, plus 4 B D float32 for "
        f"inputs and gradients): reference ~ **{max_ref}** (a B^2 + k B), fused ~ **{max_fused}** (a B + k). "
        "The fused figure is an extrapolation far beyond the measured sizes; its time grows as B^2.",
        "",
    ]
    md_path = os.path.join(HERE, "results", "losses_cpu.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {md_path} and {csv_path}")


# ----------------------------------------------------------------------------- GPU variant

def bench_gpu(sizes=(8192, 65536, 262144, 1048576), d: int = 512, dtype: str = "bfloat16",
              repeats: int = 3, reference_max: int = 32768, out: str | None = None) -> list[dict]:
    """GPU benchmark of the Triton fused Lorentz loss (fwd + bwd) at large B in bf16.

    Reports time, peak memory (``torch.cuda.max_memory_allocated``) and the achieved share of
    the measured bf16 GEMM rate: the fused loss does six B x B x D products (row stats, column
    stats, and in backward a recompute plus a gradient product for each side), i.e.
    ``12 B^2 D`` flops; the rate is that over the time, divided by the measured rate of a
    ``torch.mm`` of (8192 x D) @ (D x 8192) in the same dtype. The materialised reference is
    timed up to ``reference_max``. Returns the rows (and writes ``out`` as CSV if given).
    """
    import torch
    sys.path.insert(0, ROOT)
    import hypkern.losses as L

    dev = torch.device("cuda")
    dt = getattr(torch, dtype)

    def timed(fn):  # seconds: median of ``repeats`` calls after one warm-up, CUDA events
        t = time_callable(fn, "cuda", warmup=1, min_reps=repeats, max_reps=repeats, min_time=0,
                          warmup_time=0, slow_s=float("inf"))
        return t["median_ms"] / 1e3

    a = torch.randn(8192, d, device=dev, dtype=dt)
    bt = torch.randn(d, 8192, device=dev, dtype=dt)
    mm_rate = 2 * 8192 * 8192 * d / timed(lambda: torch.mm(a, bt))
    rows = []
    for b in sizes:
        for backend in ("triton", "reference"):
            if backend == "reference" and b > reference_max:
                continue
            g = torch.Generator(device=dev).manual_seed(0)
            image = (torch.randn(b, d, device=dev, dtype=dt, generator=g) / math.sqrt(d)).requires_grad_(True)
            text = (torch.randn(b, d, device=dev, dtype=dt, generator=g) / math.sqrt(d)).requires_grad_(True)
            s = torch.tensor(10.0, device=dev, requires_grad=True)
            c = torch.tensor(1.0, device=dev, requires_grad=True)

            def step(image, text, s, c):
                loss = L.lorentz_contrastive_loss(image, text, s, c, backend=backend)
                loss.backward()
                image.grad = text.grad = s.grad = c.grad = None

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                # inputs bound, not closed over: the ``del`` below frees them before the next size
                sec = timed(functools.partial(step, image, text, s, c))
            except torch.cuda.OutOfMemoryError:
                rows.append(dict(backend=backend, B=b, D=d, dtype=dtype, seconds=float("nan"), peak_bytes=-1,
                                 tflops=float("nan"), share_of_mm=float("nan")))
                continue
            peak = torch.cuda.max_memory_allocated() - base
            flops = 12 * b * b * d
            row = dict(backend=backend, B=b, D=d, dtype=dtype, seconds=sec, peak_bytes=peak,
                       tflops=flops / sec / 1e12, share_of_mm=flops / sec / mm_rate)
            print(f"{backend:9s} B={b:8d}: {sec * 1e3:9.2f} ms, peak +{peak / 2**20:9.1f} MiB, "
                  f"{row['tflops']:.1f} TFLOP/s = {100 * row['share_of_mm']:.1f} % of bf16 mm "
                  f"({mm_rate / 1e12:.0f} TFLOP/s)", flush=True)
            rows.append(row)
            del image, text
    if out:
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


# ----------------------------------------------------------------------------- main

def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=8192, help="the headline B (CPU)")
    p.add_argument("--sizes", type=int, nargs="*", default=[2048, 4096], help="extra B for the memory slope (CPU)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 by default: on a shared, oversubscribed machine every parallel "
                        "region waits for a descheduled thread, which swamps the measurement)")
    p.add_argument("--gpu-sizes", type=int, nargs="*", default=[8192, 65536, 262144, 1048576])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=os.path.join(HERE, "results", "losses_gpu.csv"))
    args = p.parse_args(argv)
    if args.device == "cuda":
        bench_gpu(tuple(args.gpu_sizes), args.dim, args.dtype, args.repeats, out=args.out)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
