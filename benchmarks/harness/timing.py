"""Timing, memory and machine probes of the benchmark harness (no hypkern imports): synchronised
medians (``time_callable``), peak memory of one call (``peak_memory_mb``), the machine stamp
(``machine_info``) and the copy / matmul ceilings measured beside every run."""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import functools
import gc
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable

import torch


# ----------------------------------------------------------------------------- machine

def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def machine_info(device: str = "cpu") -> dict:
    """Where and when: CPU model, cores, threads, torch/triton versions, GPU, load, date."""
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "git_commit": _git_commit(),
    }
    try:
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_avg_1_5_15"] = None
    try:
        import triton  # noqa: F401
        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["gpu_memory_gib"] = round(p.total_memory / 2 ** 30, 1)
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------- timing

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_callable(fn: Callable[..., Any], device: str = "cpu", *, setup: Callable[[], Any] | None = None,
                  warmup: int = 1, min_reps: int = 3, max_reps: int = 30, min_time: float = 0.3,
                  warmup_time: float = 0.1, slow_s: float = 2.0, warm: bool = False) -> dict:
    """Median (and quartiles) of ``fn()`` in milliseconds; with ``setup``, of ``fn(setup())``
    where ``setup()`` runs before each call, untimed (e.g. the forward before a backward).

    Warm-up: ``warmup`` calls (none if ``warm``: the caller already ran it), then more until
    ``warmup_time`` seconds have passed (at most 10 calls). Then at least ``min_reps`` timed
    calls, more until ``min_time`` seconds of samples or ``max_reps``. A call slower than
    ``slow_s`` seconds (the B = 8192 materialised losses on CPU) ends the warm-up and lowers
    ``min_reps`` to 2. CUDA: each call between two CUDA events, synchronised."""
    t0 = time.perf_counter()
    for i in range(0 if warm else 10):
        s = time.perf_counter()
        fn() if setup is None else fn(setup())
        _sync(device)
        if time.perf_counter() - s > slow_s:
            min_reps = min(min_reps, 2)
            break
        if i + 1 >= warmup and time.perf_counter() - t0 >= warmup_time:
            break
    samples: list[float] = []
    cuda = device.startswith("cuda")
    while len(samples) < min_reps or (len(samples) < max_reps and sum(samples) < min_time * 1e3):
        state = setup() if setup is not None else None
        _sync(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn() if setup is None else fn(state)
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            s = time.perf_counter()
            fn() if setup is None else fn(state)
            samples.append((time.perf_counter() - s) * 1e3)
        del state
        if samples[-1] > slow_s * 1e3:
            min_reps = min(min_reps, 2)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "p25_ms": q[0], "p75_ms": q[2],
            "reps": len(samples)}


# ----------------------------------------------------------------------------- memory

def proc_status_kb(key: str) -> int | None:
    """A kB field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim(collect: bool = False) -> None:
    """Hand freed heap memory back to the OS (and, with ``collect``, run the GC first)."""
    if collect:
        gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: str) -> tuple[float | None, float]:
    """(extra memory one call of ``fn`` needs at its peak in MiB, the call's seconds); see the
    module docstring for what is measured. The call also serves as a warm-up."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak / 2 ** 20, sec
    _trim(collect=True)
    ok = _reset_hwm()
    base = proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t0
    peak = proc_status_kb("VmHWM")
    del out
    _trim()
    if not ok or base is None or peak is None:
        return None, sec
    return max(peak - base, 0) / 1024, sec


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[name]


# ----------------------------------------------------------------------------- ceilings

def ceilings(device: str, quick: bool = False) -> dict:
    """The two rates kernels are judged against, measured here: a large device-local copy
    (GB/s counted as read + write bytes) and a large square matmul (FLOP/s: 2 n^3)."""
    out = {}
    cuda = device.startswith("cuda")
    copy_bytes = (64 << 20) if quick else ((4 << 30) if cuda else (256 << 20))
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    # the tensors are bound into the callable (not closed over) so that the ``del`` below frees them
    t = time_callable(functools.partial(torch.Tensor.copy_, dst, src), device, min_reps=5,
                      min_time=0.2 if quick else 0.5)
    out["copy_bytes"] = copy_bytes
    out["copy_gbps"] = 2 * copy_bytes / (t["median_ms"] * 1e-3) / 1e9
    del src, dst
    specs = [("float32", 512 if quick else 2048)] if not cuda else [("bfloat16", 8192), ("float32", 8192)]
    for dname, sz in specs:
        a = torch.randn(sz, sz, device=device, dtype=_dtype(dname))
        b = torch.randn(sz, sz, device=device, dtype=_dtype(dname))
        t = time_callable(functools.partial(torch.matmul, a, b), device, min_reps=5,
                          min_time=0.2 if quick else 0.5)
        out[f"matmul_{dname}_n"] = sz
        out[f"matmul_{dname}_tflops"] = 2 * sz ** 3 / (t["median_ms"] * 1e-3) / 1e12
        del a, b
    if cuda:
        torch.cuda.empty_cache()
    return out
