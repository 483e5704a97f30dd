#!/usr/bin/env python
"""The Python steps of ``benchmarks/gpu_suite.sh`` (one NVIDIA GPU, no network).

    python benchmarks/gpu_suite.py check    OUT    # exit 3 unless a CUDA GPU is usable
    python benchmarks/gpu_suite.py ceilings OUT    # copy GB/s and bf16/fp32 matmul TFLOP/s -> OUT/ceilings.json
    python benchmarks/gpu_suite.py ops      OUT [--dtype bfloat16]   # ops + losses -> OUT/ops_gpu_<dtype>.*
    python benchmarks/gpu_suite.py losses   OUT    # fused contrastive bf16 at B=65536 and 1,048,576
    python benchmarks/gpu_suite.py report   OUT    # the one table: each kernel's share of its ceiling
    python benchmarks/gpu_suite.py dry-run  OUT    # no GPU needed: imports, plans, renders a fake report

It imports the *installed* ``hypkern`` (the shell script runs it from outside the checkout after
``pip install --no-build-isolation .``), so the CUDA extension that was just built is the one
measured. Ceilings (issue 8): element-wise ops are judged against the measured device-to-device
copy rate (bytes read + written per second), the fused contrastive loss against the measured
bf16 matmul rate. Targets: element-wise ops >= 85 % of copy bandwidth; fused contrastive fwd+bwd
in bf16 >= 45 % of the bf16 matmul rate at B = 65536; B = 1,048,576 fits on one GPU.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # for benchmarks.harness; appended, so an installed hypkern still comes first
    sys.path.append(ROOT)

from benchmarks.harness import runner, tables, timing  # noqa: E402

ROWWISE_OPS = ("dist", "exp_map0", "log_map0", "half_aperture", "oxy_angle")
PAIRWISE_OPS = ("pairwise_inner", "pairwise_dist")
GPU_IMPLS = ["reference", "triton", "native", "geoopt", "matmul", "copy", "chunked", "open_clip", "inf_cl"]
#: One size per case on the GPU (large enough that launch overheads do not matter).
GPU_SIZES = {
    "pairwise": [(16384, 16384, 512)],
    "rowwise": [(1048576, 1048576, 512)],
    "contrastive": [(65536, 65536, 512)],
    "entailment": [(1048576, 1048576, 512)],
}
COPY_TARGET = 0.85
MATMUL_TARGET = 0.45
LOSS_SIZES = (65536, 1048576)
D = 512


def _load_losses_bench():
    """``benchmarks/bench_losses_cpu.py`` (the losses engineer's script) as a module, or None."""
    path = os.path.join(HERE, "bench_losses_cpu.py")
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("bench_losses_cpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- steps

def step_check(out: str) -> int:
    import torch
    if not torch.cuda.is_available():
        print("FATAL: torch sees no CUDA device (torch.cuda.is_available() is False); "
              f"torch {torch.__version__}, CUDA build {torch.version.cuda}", file=sys.stderr)
        return 3
    import hypkern
    p = torch.cuda.get_device_properties(0)
    info = {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2 ** 30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda, "hypkern_from": hypkern.__file__,
            "backends": {k: str(v) for k, v in hypkern.backends().items()}}
    print(json.dumps(info, indent=1))
    _write_json(os.path.join(out, "device.json"), info)
    return 0


def step_ceilings(out: str) -> int:
    c = timing.ceilings("cuda")
    c["machine"] = timing.machine_info("cuda")
    print(json.dumps(c, indent=1, default=str))
    _write_json(os.path.join(out, "ceilings.json"), c)
    return 0


def step_ops(out: str, dtype: str, deadline: float) -> int:
    t0 = time.time()
    res = runner.run_benchmarks("gpu", "cuda", dtype, impls=GPU_IMPLS, isolate=False, sizes=GPU_SIZES,
                               log=lambda m: print(m, flush=True), deadline_s=deadline)
    short = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(dtype, dtype)
    paths = tables.write_results(res, out, f"ops_gpu_{short}", f"hypkern GPU benchmarks ({dtype})")
    print(f"wrote {', '.join(paths.values())} in {time.time() - t0:.0f} s")
    return 0


def _own_contrastive(sizes, dtype="bfloat16", repeats=2):
    """Fallback when benchmarks/bench_losses_cpu.py has no ``bench_gpu``: the Triton fused
    Lorentz loss fwd+bwd, timed the same way (median of ``repeats`` after one warm-up)."""
    import torch
    import hypkern.losses as L
    rows = []
    for b in sizes:
        g = torch.Generator(device="cuda").manual_seed(0)
        dt = getattr(torch, dtype)
        image = (torch.randn(b, D, device="cuda", dtype=dt, generator=g) / math.sqrt(D)).requires_grad_(True)
        text = (torch.randn(b, D, device="cuda", dtype=dt, generator=g) / math.sqrt(D)).requires_grad_(True)
        s = torch.tensor(10.0, device="cuda", requires_grad=True)
        c = torch.tensor(1.0, device="cuda", requires_grad=True)

        def step(image, text, s, c):
            L.lorentz_contrastive_loss(image, text, s, c, backend="triton").backward()
            image.grad = text.grad = s.grad = c.grad = None

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        try:
            # inputs bound, not closed over: the ``del`` below frees them before the next size
            t = timing.time_callable(functools.partial(step, image, text, s, c), "cuda", warmup=1,
                                     min_reps=repeats, max_reps=repeats, min_time=0, warmup_time=0)
            sec = t["median_ms"] / 1e3
            rows.append(dict(backend="triton", B=b, D=D, dtype=dtype, seconds=sec,
                             peak_bytes=torch.cuda.max_memory_allocated() - base))
        except torch.cuda.OutOfMemoryError:
            rows.append(dict(backend="triton", B=b, D=D, dtype=dtype, seconds=float("nan"), peak_bytes=-1))
        del image, text
    return rows


def step_losses(out: str, repeats: int) -> int:
    """B = 65536 with ``repeats`` timed calls, then B = 1,048,576 with one (a call there takes
    seconds); the results file is rewritten after each size so a timeout keeps what ran."""
    mod = _load_losses_bench()
    use_theirs = mod is not None and hasattr(mod, "bench_gpu")
    source = ("benchmarks/bench_losses_cpu.py:bench_gpu" if use_theirs
              else "benchmarks/gpu_suite.py fallback (hypkern.losses, backend='triton')")
    if use_theirs:
        import hypkern  # noqa: F401  (the installed package; bench_gpu reuses it)
    rows = []
    for b, reps in ((LOSS_SIZES[0], repeats), (LOSS_SIZES[1], 1)):
        t0 = time.time()
        if use_theirs:
            try:
                got = mod.bench_gpu(sizes=(b,), d=D, dtype="bfloat16", repeats=reps, reference_max=0)
            except TypeError:  # a different signature: call it with what it takes
                got = mod.bench_gpu(sizes=(b,))
        else:
            got = _own_contrastive((b,), repeats=reps)
        rows += got
        _write_json(os.path.join(out, "losses_gpu.json"), {"source": source, "rows": rows})
        print(f"B={b}: {time.time() - t0:.0f} s", flush=True)
    print(f"fused contrastive rows from {source}:")
    for r in rows:
        print("  ", {k: r[k] for k in ("backend", "B", "D", "dtype", "seconds", "peak_bytes") if k in r})
    return 0


# ----------------------------------------------------------------------------- report

def _verdict(share, target):
    if share is None or (isinstance(share, float) and math.isnan(share)):
        return "not measured"
    return "met" if share >= target else f"MISSED by {100 * (target - share):.1f} pts"


def summary_rows(ceil: dict, ops_results: list[dict], losses: dict | None) -> list[dict]:
    """The rows of the one table: kernel, impl, dtype, pass, size, ms, achieved, ceiling, share, target."""
    out = []
    copy = ceil.get("copy_gbps")
    mm = {k[len("matmul_"):-len("_tflops")]: v for k, v in ceil.items()
          if k.startswith("matmul_") and k.endswith("_tflops")}
    for res in ops_results:
        dtype = res["settings"]["dtype"]
        for r in res["rows"]:
            if r.get("status") != "ok" or r["pass"] not in ("fwd", "fwd+bwd"):
                continue
            if r["impl"] not in ("triton", "native", "chunked", "reference", "geoopt", "open_clip", "inf_cl"):
                continue
            size = f"{r['n']}x{r['m']}x{r['d']}" if (r["kind"] == "op" and r["name"] in PAIRWISE_OPS) \
                else f"{r['n']}x{r['d']}"
            if r["kind"] == "op" and r["name"] in ROWWISE_OPS or r["name"] == "entailment":
                share = r["gbps"] / copy if copy else None
                tgt = COPY_TARGET if (r["kind"] == "op" and r["impl"] in ("triton", "native")) else None
                out.append(dict(kernel=r["name"], impl=r["impl"], dtype=dtype, pass_=r["pass"], size=size,
                                ms=r["median_ms"], achieved=f"{r['gbps']:.0f} GB/s",
                                ceiling=f"copy {copy:.0f} GB/s", share=share, target=tgt))
            else:
                rate = mm.get(dtype) or mm.get("float32")
                share = (r["gflops"] / 1e3) / rate if rate else None
                out.append(dict(kernel=r["name"], impl=r["impl"], dtype=dtype, pass_=r["pass"], size=size,
                                ms=r["median_ms"], achieved=f"{r['gflops'] / 1e3:.0f} TFLOP/s (model)",
                                ceiling=f"{dtype} mm {rate:.0f} TFLOP/s" if rate else "", share=share,
                                target=None))
    if losses:
        rate = mm.get("bfloat16")
        for r in losses["rows"]:
            b, d, sec = r["B"], r["D"], r.get("seconds", float("nan"))
            ok = sec == sec and sec > 0 and r.get("peak_bytes", -1) >= 0
            model = 6 * b * b * d / sec / 1e12 if ok else None
            executed = 12 * b * b * d / sec / 1e12 if ok else None
            base = dict(kernel="lorentz_contrastive (fused)", impl=r.get("backend", "triton"), dtype=r.get("dtype"),
                        pass_="fwd+bwd", size=f"{b}x{d}", ms=sec * 1e3 if ok else None,
                        ceiling=f"bf16 mm {rate:.0f} TFLOP/s" if rate else "")
            tgt = MATMUL_TARGET if b == 65536 else None
            out.append({**base, "achieved": f"{model:.0f} TFLOP/s (model 6B²D)" if ok else "failed/OOM",
                        "share": model / rate if (ok and rate) else None, "target": tgt})
            out.append({**base, "achieved": f"{executed:.0f} TFLOP/s (executed 12B²D)" if ok else "failed/OOM",
                        "share": executed / rate if (ok and rate) else None, "target": tgt})
            if b >= 1048576:
                out.append({**base, "achieved": (f"fits: peak +{r['peak_bytes'] / 2 ** 30:.2f} GiB" if ok
                                                 else "did not run (OOM or failure)"),
                            "ceiling": "one GPU", "share": 1.0 if ok else 0.0, "target": 1.0,
                            "kernel": "lorentz_contrastive (fused), B = 1,048,576 fits"})
    return out


def render_summary(ceil: dict, rows: list[dict], steps: str = "") -> str:
    m = ceil.get("machine", {})
    lines = ["# hypkern GPU suite", "",
             f"{m.get('gpu', '?')} ({m.get('gpu_memory_gib', '?')} GiB), CUDA {m.get('cuda')}, torch {m.get('torch')}, "
             f"triton {m.get('triton')}, commit {m.get('git_commit')}, {m.get('date_utc')}.", "",
             f"Ceilings measured first: device-to-device copy **{ceil.get('copy_gbps', float('nan')):.0f} GB/s** "
             f"(read + write, {ceil.get('copy_bytes', 0) >> 20} MiB fp32); "
             + ", ".join(f"{k[7:-7]} matmul **{v:.0f} TFLOP/s** (n = {ceil.get(k[:-7] + '_n')})"
                         for k, v in ceil.items() if k.startswith("matmul_") and k.endswith("_tflops")) + ".", "",
             "Element-wise ops: achieved GB/s (bytes model of `benchmarks/harness`: inputs read once, outputs "
             "written once) as a share of the copy rate, target >= 85 % for the Triton and native kernels. "
             "Matmul-shaped kernels: model TFLOP/s (2NMD per forward, twice that backward) as a share of the "
             "matmul rate in the same dtype. Fused contrastive: shown on two FLOP counts — the model's "
             "6B²D per fwd+bwd, and the 12B²D the recompute-in-backward kernel executes (as "
             "`bench_losses_cpu.bench_gpu` counts) — target >= 45 % of the bf16 matmul rate at B = 65536.", "",
             "| kernel | impl | dtype | pass | size | ms | achieved | ceiling | share | target | verdict |",
             "|---|---|---|---|---|--:|---|---|--:|--:|---|"]
    for r in rows:
        share = r["share"]
        lines.append("| " + " | ".join([
            r["kernel"], str(r["impl"]), str(r["dtype"]), r["pass_"], r["size"],
            f"{r['ms']:.3f}" if r.get("ms") is not None else "", r["achieved"], r["ceiling"],
            f"{100 * share:.1f} %" if share is not None else "",
            f"{100 * r['target']:.0f} %" if r.get("target") else "",
            _verdict(share, r["target"]) if r.get("target") else ""]) + " |")
    if steps:
        lines += ["", "## Steps", "", "```", steps.strip(), "```"]
    return "\n".join(lines) + "\n"


def step_report(out: str) -> int:
    ceil = _read_json(os.path.join(out, "ceilings.json"))
    if ceil is None:
        print("no ceilings.json: the ceilings step did not run", file=sys.stderr)
        ceil = {}
    ops_results = [r for r in (_read_json(os.path.join(out, f"ops_gpu_{t}.json")) for t in ("bf16", "fp32", "fp16"))
                   if r]
    losses = _read_json(os.path.join(out, "losses_gpu.json"))
    steps = open(os.path.join(out, "steps.tsv")).read() if os.path.exists(os.path.join(out, "steps.tsv")) else ""
    text = render_summary(ceil, summary_rows(ceil, ops_results, losses), steps)
    with open(os.path.join(out, "gpu_summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def step_dry_run(out: str) -> int:
    """Everything but the GPU: imports, the plan, the losses engineer's entry point, and the
    report rendered from made-up numbers (marked as such)."""
    import inspect
    groups = runner.plan("gpu", "cuda", impls=GPU_IMPLS, sizes=GPU_SIZES)
    print(f"plan: {len(groups)} groups on cuda, e.g. {groups[0][:3]} ... {groups[-1][:3]}")
    assert all(g[2] != "compile" for g in groups)
    mod = _load_losses_bench()
    if mod is None or not hasattr(mod, "bench_gpu"):
        print("benchmarks/bench_losses_cpu.py:bench_gpu not found: the losses step will use the fallback")
    else:
        params = inspect.signature(mod.bench_gpu).parameters
        missing = {"sizes", "d", "dtype", "repeats", "reference_max"} - set(params)
        print(f"bench_gpu{inspect.signature(mod.bench_gpu)}" + (f" (missing {missing}: default call)" if missing else ""))
    fake_ceil = {"copy_bytes": 4 << 30, "copy_gbps": 4000.0, "matmul_bfloat16_n": 8192, "matmul_bfloat16_tflops": 700.0,
                 "matmul_float32_n": 8192, "matmul_float32_tflops": 50.0,
                 "machine": {"gpu": "DRY RUN (made-up numbers)", "date_utc": "-"}}
    fake_rows = []
    for kind, name, impl, sizes in groups:
        n, m, d = sizes[0]
        for p in ("fwd", "fwd+bwd"):
            fake_rows.append(dict(kind=kind, name=name, impl=impl, n=n, m=m, d=d, status="ok", median_ms=1.0,
                                  gbps=3500.0, gflops=3e5, dtype="bfloat16", **{"pass": p}))
    fake_ops = [{"settings": {"dtype": "bfloat16"}, "rows": fake_rows}]
    fake_losses = {"rows": [dict(backend="triton", B=65536, D=512, dtype="bfloat16", seconds=0.02, peak_bytes=1 << 28),
                            dict(backend="triton", B=1048576, D=512, dtype="bfloat16", seconds=float("nan"),
                                 peak_bytes=-1)]}
    text = render_summary(fake_ceil, summary_rows(fake_ceil, fake_ops, fake_losses))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_summary_DRYRUN.md"), "w") as f:
        f.write(text)
    assert "| dist | triton | bfloat16 | fwd |" in text and "MISSED" in text and "met" in text
    print(f"dry run OK: rendered {len(text.splitlines())} report lines to {out}/gpu_summary_DRYRUN.md")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["check", "ceilings", "ops", "losses", "report", "dry-run"])
    p.add_argument("out")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--deadline", type=float, default=75.0,
                   help="ops: start no new op/loss after this many seconds (tables still written)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if a.step == "check":
        return step_check(a.out)
    if a.step == "ceilings":
        return step_ceilings(a.out)
    if a.step == "ops":
        return step_ops(a.out, a.dtype, a.deadline)
    if a.step == "losses":
        return step_losses(a.out, a.repeats)
    if a.step == "report":
        return step_report(a.out)
    return step_dry_run(a.out)


if __name__ == "__main__":
    sys.exit(main())
