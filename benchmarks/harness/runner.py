"""Running benchmarks: one implementation at every size (``run_group``), the plan of a suite,
whole suites (``run_benchmarks``) with one fresh worker process per op/loss on CPU, and the
derived columns (speedup, GB/s, FLOP/s, memory ratio)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .cases import (CSV_COLUMNS, CURV, LOGIT_SCALE, LOSSES, OPS, PASSES, SIZES, Case, _is_slow,
                    _reference_f64, _size_class, cost_model, make_inputs)
from .impls import Built, _impl_names, _Skip, build_impl
from .timing import _dtype, _trim, ceilings, machine_info, peak_memory_mb, time_callable


# ----------------------------------------------------------------------------- one group

def _passes(built: Built, device: str):
    """``fwd`` (no grad) and ``fwd+bwd`` callables; every ``fwd+bwd`` call also records the
    time of its backward part (the timer read between forward and backward, CUDA events on a
    GPU) into the returned list, which is where the ``bwd`` column comes from."""
    fn, args = built.fn, built.args
    with torch.no_grad():
        probe = fn(*args)
    g = torch.ones_like(probe) if probe.ndim == 0 else torch.randn_like(probe)
    del probe
    splits: list = []
    cuda = device.startswith("cuda")

    def fwd():
        with torch.no_grad():
            return fn(*args)

    def fwdbwd():
        if cuda:
            mid, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            out = fn(*args)
            mid.record()
            grads = torch.autograd.grad(out, args, g)
            end.record()
            splits.append((mid, end))
            return grads
        out = fn(*args)
        t = time.perf_counter()
        grads = torch.autograd.grad(out, args, g)
        splits.append(time.perf_counter() - t)
        return grads

    return fwd, fwdbwd, splits


def _bwd_stats(splits: list, reps: int) -> dict:
    """Median and quartiles (ms) of the backward parts of the last ``reps`` fwd+bwd calls."""
    last = splits[-reps:]
    if last and isinstance(last[0], tuple):
        torch.cuda.synchronize()
        samples = [a.elapsed_time(b) for a, b in last]
    else:
        samples = [x * 1e3 for x in last]
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "p25_ms": q[0], "p75_ms": q[2], "reps": len(samples)}


def _error(case: Case, built: Built, inputs) -> float | None:
    if built.to_standard is None or _is_slow(case):
        return None
    with torch.no_grad():
        out = built.to_standard(built.fn(*built.args)).detach().to(torch.float64).cpu()
        ref = _reference_f64(case, inputs).cpu()
    if out.shape != ref.shape:
        raise RuntimeError(f"output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    return float(((out - ref).abs() / ref.abs().clamp(min=1.0)).max()) if out.numel() else 0.0


def run_group(kind: str, name: str, impl: str, sizes: list, dtype: str, device: str,
              timing: dict, measure_memory: bool = True, check: bool = True) -> list[dict]:
    """Benchmark one implementation of one op/loss at every size; one row per (size, pass)."""
    rows = []
    dt = _dtype(dtype)
    for (n, m, d) in sizes:
        case = Case(kind, name, n, m, d)
        base = {"kind": kind, "name": name, "impl": impl, "n": n, "m": m, "d": d,
                "dtype": dtype, "device": device}
        try:
            inputs = make_inputs(case, dt, device)
            built = build_impl(impl, case, inputs)
            err = _error(case, built, inputs) if check else None
            fwd, f, splits = _passes(built, device)
            results = {"fwd": time_callable(fwd, device, **timing)}
            peak, warm = None, False
            if measure_memory:
                # one call to warm up (lazy init, compile guards), then the clean measurement,
                # which also warms the timing below when a call takes seconds
                if impl == "compile" or not _is_slow(case):
                    f()
                peak, sec = peak_memory_mb(f, device)
                warm = sec > timing.get("slow_s", 2.0)
            results["fwd+bwd"] = time_callable(f, device, warm=warm, **timing)
            results["bwd"] = _bwd_stats(splits, results["fwd+bwd"]["reps"])
            for p in PASSES:
                rows.append({**base, "pass": p, **results[p],
                             "peak_mb": peak if p == "fwd+bwd" else None,
                             "err": err, "status": "ok"})
            del built, fwd, f, splits, inputs
            _trim()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except _Skip as exc:
            rows += [{**base, "pass": p, "status": f"skipped: {exc}"} for p in PASSES]
        except Exception as exc:  # report, keep going
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            rows += [{**base, "pass": p, "status": f"error: {msg}"} for p in PASSES]
            if device.startswith("cuda"):
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- orchestration

def plan(suite: str, device: str, only: list[str] | None = None, impls: list[str] | None = None,
         sizes: dict | None = None):
    """(kind, name, impl, sizes) groups for a suite: 'quick', 'full' or 'gpu'. ``quick`` leaves
    ``torch.compile`` out unless ``impls`` names it; ``full`` compiles at the smallest size only
    (each compile costs tens of seconds of a 2-core CPU's 10-minute budget). ``sizes`` overrides the suite's sizes."""
    sizes = {**SIZES[suite], **(sizes or {})}
    groups = []
    for kind, catalogue in (("op", OPS), ("loss", LOSSES)):
        for name in catalogue:
            if only and not any(o in (name, kind, kind + "s") for o in only):
                continue
            for impl in _impl_names(kind, name, device):
                if impls and impl not in impls and impl != "reference":
                    continue
                if not impls and suite == "quick" and impl == "compile":
                    continue  # compiling takes tens of seconds per case: not in a smoke run
                szs = sizes.get(name) or sizes[_size_class(kind, name)]
                if impl == "compile" and suite == "full":
                    szs = szs[:1]  # compile (and recompile per shape) only at the smallest size
                groups.append((kind, name, impl, szs))
    return groups


def _hypkern_root() -> str | None:
    """The folder holding the ``hypkern`` this process imports (or would import)."""
    mod = sys.modules.get("hypkern")
    origin = getattr(mod, "__file__", None) if mod else None
    if origin is None:
        spec = importlib.util.find_spec("hypkern")
        origin = spec.origin if spec else None
    return os.path.dirname(os.path.dirname(os.path.abspath(origin))) if origin else None


def worker_env(extra: dict | None = None) -> dict:
    """This environment (plus ``extra``) with the folders of this process's ``hypkern`` and of
    this harness first on ``PYTHONPATH``, so that a worker process runs the same code."""
    env = dict(os.environ, **(extra or {}))
    harness_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    roots = list(dict.fromkeys(r for r in (_hypkern_root(), harness_root) if r))
    env["PYTHONPATH"] = os.pathsep.join(roots + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_worker(target: str, spec: dict, timeout: float | None = None, *, capture_stderr: bool = False,
               env: dict | None = None):
    """``target(spec)`` in a fresh Python process: ``(its result, None)``, or ``(None, status)``
    where the worker failed (``"timeout: ..."``, ``"error: ..."``, the row status to record).

    ``target`` is ``"module:function"``, importable in the worker (``env``: ``worker_env()`` by
    default); ``spec`` and the result travel as JSON files. The worker's stdout is dropped; its
    stderr (progress lines) goes to this process's stderr, or with ``capture_stderr`` is kept
    and its last line ends the error status. This is the one way the harness and the scripts
    beside it start a worker: fresh processes give clean peak-memory readings."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        cmd = [sys.executable, "-m", "benchmarks.harness.runner", "--worker", target, spec_path, out_path]
        try:
            proc = subprocess.run(cmd, env=worker_env() if env is None else env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE if capture_stderr else None, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timeout: worker exceeded {timeout:.0f} s"
        if proc.returncode != 0 or not os.path.exists(out_path):
            if not capture_stderr:
                return None, f"error: worker exited {proc.returncode} (its stderr is in the log above)"
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            return None, f"error: worker exited {proc.returncode}: {tail[0][:300]}"
        with open(out_path) as f:
            return json.load(f), None


def _worker_main(target: str, spec_path: str, out_path: str) -> int:
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    with open(spec_path) as f:
        spec = json.load(f)
    result = fn(spec)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


def _run_group_subprocess(spec: dict, timeout: float) -> list[dict]:
    rows, failed = run_worker("benchmarks.harness.runner:_case_worker", spec, timeout)
    return _failed_rows(spec, failed) if failed else rows


def _failed_rows(spec: dict, status: str) -> list[dict]:
    return [{"kind": spec["kind"], "name": spec["name"], "impl": impl, "n": n, "m": m, "d": d,
             "dtype": spec["dtype"], "device": spec["device"], "pass": p, "status": status}
            for impl, sizes in spec["impls"] for (n, m, d) in sizes for p in PASSES]


def _run_case(spec: dict, log=None) -> list[dict]:
    """Every implementation of one op/loss (``spec["impls"]``: [impl, sizes] pairs)."""
    rows = []
    for impl, sizes in spec["impls"]:
        t0 = time.time()
        got = run_group(spec["kind"], spec["name"], impl, [tuple(s) for s in sizes], spec["dtype"],
                        spec["device"], spec["timing"], spec.get("memory", True), spec.get("check", True))
        rows += got
        if log:
            status = {r["status"].split(":")[0] for r in got}
            log(f"[bench]   {spec['kind']} {spec['name']:<20} {impl:<10} {time.time() - t0:6.1f} s "
                f"{'/'.join(sorted(status))}")
    return rows


def _case_worker(spec: dict) -> list[dict]:
    """``_run_case`` in a worker process (progress lines on stderr)."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    return _run_case(spec, log=lambda m: print(m, file=sys.stderr, flush=True))


TIMING = {
    "quick": dict(warmup=1, min_reps=3, max_reps=10, min_time=0.02, warmup_time=0.0),
    "full": dict(warmup=1, min_reps=3, max_reps=30, min_time=0.2, warmup_time=0.1, slow_s=1.0),
    "gpu": dict(warmup=2, min_reps=5, max_reps=50, min_time=0.1, warmup_time=0.05),
}


def run_benchmarks(suite: str = "quick", device: str = "cpu", dtype: str = "float32",
                   only=None, impls=None, isolate: bool | None = None, group_timeout: float = 420.0,
                   log=print, sizes: dict | None = None, threads: int | None = None,
                   deadline_s: float | None = None) -> dict:
    """Run a suite; returns ``{"machine", "ceilings", "rows", "settings"}`` with derived
    columns (speedup, GB/s, FLOP/s, memory ratio) filled in. ``threads``: torch CPU threads
    (default: torch's, i.e. the cores; 1 for the quick suite, whose tiny ops only measure
    OpenMP barrier waits on a busy machine). ``deadline_s``: start no new op/loss after this
    many seconds (its rows say so), so a time-boxed caller still gets the tables."""
    if threads is None and suite == "quick" and not device.startswith("cuda"):
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    if isolate is None:  # CPU peak memory wants a clean process; a smoke run does not
        isolate = not device.startswith("cuda") and suite != "quick"
    timing = TIMING.get(suite, TIMING["quick"])
    t_start = time.time()
    machine = machine_info(device)
    log(f"[bench] {machine['cpu']} x{machine['cores']}, torch {machine['torch']}, device {device}, "
        f"load {machine['load_avg_1_5_15']}")
    ceil = ceilings(device, quick=(suite == "quick"))
    log("[bench] ceilings: " + ", ".join(f"{k}={v:.4g}" for k, v in ceil.items()))
    rows: list[dict] = []
    groups = plan(suite, device, only, impls, sizes)
    cases: dict = {}
    for kind, name, impl, szs in groups:
        cases.setdefault((kind, name), []).append([impl, [list(x) for x in szs]])
    for i, ((kind, name), impl_sizes) in enumerate(cases.items()):
        spec = {"kind": kind, "name": name, "impls": impl_sizes, "dtype": dtype, "device": device,
                "timing": timing, "memory": True, "check": True, "threads": torch.get_num_threads()}
        t0 = time.time()
        if deadline_s is not None and t0 - t_start > deadline_s:
            rows += _failed_rows(spec, f"skipped: time budget of {deadline_s:.0f} s used up")
            log(f"[bench] {i + 1}/{len(cases)} {kind} {name}: skipped (time budget)")
            continue
        # CPU: one fresh worker process per op/loss (all its implementations, one after the
        # other, each size's memory measured from a trimmed heap and a reset high-water mark)
        got = _run_group_subprocess(spec, group_timeout) if isolate else _run_case(spec)
        rows += got
        status = {r["status"].split(":")[0] for r in got}
        log(f"[bench] {i + 1}/{len(cases)} {kind} {name:<20} {len(impl_sizes)} impls {time.time() - t0:6.1f} s "
            f"{'/'.join(sorted(status))}")
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    machine["wall_s"] = round(time.time() - t_start, 1)
    _derive(rows, ceil)
    return {"machine": machine, "ceilings": ceil, "rows": rows,
            "settings": {"suite": suite, "dtype": dtype, "device": device, "timing": timing,
                         "isolated_workers": isolate, "curv": CURV, "logit_scale": LOGIT_SCALE}}


def _derive(rows: list[dict], ceil: dict) -> None:
    """Fill speedup vs the eager reference, GB/s, GFLOP/s, memory vs reference."""
    ref = {}
    for r in rows:
        if r["impl"] == "reference" and r["status"] == "ok":
            ref[(r["kind"], r["name"], r["n"], r["m"], r["d"], r["pass"])] = r
    for r in rows:
        for c in CSV_COLUMNS:
            r.setdefault(c, None)
        if r["status"] != "ok":
            continue
        eb = torch.empty((), dtype=_dtype(r["dtype"])).element_size()
        nbytes, flops = cost_model(r["kind"], r["name"], r["pass"], r["n"], r["m"], r["d"], eb)
        sec = r["median_ms"] * 1e-3
        r["gbps"] = nbytes / sec / 1e9
        r["gflops"] = flops / sec / 1e9
        rr = ref.get((r["kind"], r["name"], r["n"], r["m"], r["d"], r["pass"]))
        if rr is not None:
            r["speedup_vs_ref"] = rr["median_ms"] / r["median_ms"]
            if r.get("peak_mb") is not None and rr.get("peak_mb"):
                r["mem_vs_ref"] = r["peak_mb"] / rr["peak_mb"]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(*sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.harness.runner --worker MODULE:FUNCTION SPEC.json OUT.json")
