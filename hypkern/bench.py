"""``hypkern bench``: kernel micro-benchmarks and trainer throughput, with result tables.

What is measured
----------------
For every Lorentz op (``pairwise_inner``, ``pairwise_dist``, ``dist``, ``exp_map0``,
``log_map0``, ``half_aperture``, ``oxy_angle``) and loss (Lorentz and CLIP contrastive,
entailment), three passes, each timed on its own:

* ``fwd``: the forward under ``torch.no_grad()`` (what inference pays);
* ``fwd+bwd``: forward with autograd, then ``torch.autograd.grad(out, inputs, g)``: one
  training step of the op;
* ``bwd``: the backward part of those same ``fwd+bwd`` calls (the timer is read between
  forward and backward; CUDA events on a GPU), so it costs no extra calls.

for each implementation usable on the device: the eager reference (``reference``), the
reference under ``torch.compile`` (``compile``; compile time is in the warm-up, not the
timings), the kernel backends (``triton`` on CUDA only, never its interpreter; ``native``),
the fused losses of ``hypkern.losses``, and the peers a user would otherwise pick: geoopt's
Lorentz ``dist``/``inner``/``expmap0``/``logmap0`` (``geoopt``), open_clip's ``ClipLoss``
(``open_clip``) and Inf-CL's loss (``inf_cl``, CUDA only). A bare ``x @ y.T`` (``matmul``)
is timed beside every matmul-shaped case as the bound those kernels are judged against, and
``x * 1.0`` (``copy``: read N x D, write a fresh N x D, and the same in backward) beside the
two maps.

Timing: median of at least ``min_reps`` calls (more until ``min_time`` seconds of samples),
after warm-up calls (at least one, which also compiles); CUDA times come from CUDA events
around each call (after ``torch.cuda.synchronize``). The 25th/75th percentiles are kept.

Cost model (the numbers behind GB/s and FLOP/s; ``e`` = bytes per element of the input
dtype, N/M rows, D columns). Bytes are the compulsory traffic: read every input once,
write every output once; the backward reads the output gradient and the inputs and writes
one gradient per input; ``fwd+bwd`` is the sum of the two (nothing is assumed kept in
cache between them). FLOPs are the useful arithmetic of the textbook formula: a dot product
of length D is 2D FLOPs, a transcendental or a division counts 1; the backward counts twice
the forward (the matmul convention: two GEMMs for one), and the O(N), O(NM) element-wise
tails of the pairwise ops are left out of both::

    op                       fwd bytes          bwd bytes                   fwd FLOPs
    pairwise_inner / _dist   e((N+M)D + NM)     e(NM + 2(N+M)D)             2NMD + 2(N+M)D
    dist, oxy_angle          e(2ND + N)         e(N + 4ND)                  6ND   (x.x, y.y, x.y)
    exp_map0, log_map0       e(2ND)             e(3ND)                      3ND   (|v|^2, scale)
    half_aperture            e(ND + N)          e(N + 2ND)                  2ND   (|x|^2)
    contrastive (B, D)       e(2BD)             e(4BD)                      2B^2 D (the logits GEMM)
    entailment (B, D)        e(2BD)             e(4BD)                      8BD   (oxy_angle + aperture)

so the contrastive FLOP/s is the model-FLOP rate (MFU-style: 6B^2D per fwd+bwd, however
many GEMMs the implementation really runs, e.g. a backward that recomputes the logits).

Peak memory (column ``peak_mb``, fwd+bwd pass, one call, after the inputs exist): on CUDA
``torch.cuda.max_memory_allocated()`` minus the allocation before the call (what PyTorch's
allocator handed out, not what the driver reserved). On CPU the resident-set high-water
mark: a fresh worker process per op/loss runs its implementations one after the other, sizes
in increasing order; for each it runs one warm-up call (skipped where one call takes
seconds), frees, ``malloc_trim(0)``, resets the kernel's high-water mark (writes ``5`` to
``/proc/self/clear_refs``) and reports ``VmHWM - VmRSS`` around one call. That counts every
page the call touches (temporaries, outputs, gradients, allocator slack), to within a page
and whatever glibc keeps after the trim; where ``clear_refs`` is not writable the column is
empty. ``--in-process`` (the default for ``--quick``) measures the same way without the
fresh process.

Every implementation is also checked, once per size, against the float64 reference on the
same inputs: ``err`` is ``max |out - ref| / max(1, |ref|)`` of the forward output (not at
the B = 8192 contrastive size on CPU, whose float64 check alone takes a minute; the smaller
size of the same case is checked).

The full CPU suite takes ``torch.compile`` at the smallest size of each case only (compiling
costs tens of seconds per case on two cores); the quick suite leaves it out.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import csv
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = [
    "OPS", "LOSSES", "PASSES", "Case", "cost_model", "time_callable", "machine_info", "ceilings",
    "plan", "run_benchmarks", "write_results", "evaluate_targets", "trainer_benchmark",
    "register", "main", "CSV_COLUMNS",
]

# ----------------------------------------------------------------------------- catalogue

#: op name -> (number of tensor inputs, pairwise?)
OPS = {
    "pairwise_inner": (2, True),
    "pairwise_dist": (2, True),
    "dist": (2, False),
    "exp_map0": (1, False),
    "log_map0": (1, False),
    "half_aperture": (1, False),
    "oxy_angle": (2, False),
}
#: loss name -> matmul-shaped?
LOSSES = {
    "lorentz_contrastive": True,
    "clip_contrastive": True,
    "entailment": False,
}
PASSES = ("fwd", "bwd", "fwd+bwd")
CURV = 0.5          # c: the geometry runs on curvature -0.5 (geoopt: k = 1/c = 2)
LOGIT_SCALE = 14.0  # s, about MERU's / CLIP's 1/0.07 initialisation
MIN_RADIUS = 0.1

#: Sizes per suite: size class (or a case's own name) -> list of (N, M, D) (M = N row-wise).
SIZES = {
    "quick": {
        "pairwise": [(64, 48, 16)],
        "rowwise": [(256, 256, 16)],
        "contrastive": [(64, 64, 16)],
        "entailment": [(256, 256, 16)],
    },
    "full": {
        "pairwise": [(512, 512, 128), (2048, 2048, 512)],
        "rowwise": [(4096, 4096, 128), (32768, 32768, 512)],
        # B = 8192, D = 512 is issue 8's CPU target size for the fused Lorentz loss
        "contrastive": [(1024, 1024, 512), (8192, 8192, 512)],
        "clip_contrastive": [(1024, 1024, 512), (4096, 4096, 512)],
        "entailment": [(4096, 4096, 128), (32768, 32768, 512)],
    },
    # On a GPU the sizes where launch overheads stop mattering.
    "gpu": {
        "pairwise": [(4096, 4096, 512), (16384, 16384, 512)],
        "rowwise": [(65536, 65536, 512), (1048576, 1048576, 512)],
        "contrastive": [(8192, 8192, 512), (65536, 65536, 512)],
        "entailment": [(65536, 65536, 512), (1048576, 1048576, 512)],
    },
}

CSV_COLUMNS = [
    "kind", "name", "impl", "pass", "n", "m", "d", "dtype", "device", "median_ms", "p25_ms",
    "p75_ms", "reps", "speedup_vs_ref", "gbps", "gflops", "peak_mb", "mem_vs_ref", "err",
    "status",
]


@dataclass(frozen=True)
class Case:
    """One benchmarked function: an op or a loss at one size."""
    kind: str  # "op" | "loss"
    name: str
    n: int
    m: int
    d: int

    @property
    def pairwise(self) -> bool:
        return OPS[self.name][1] if self.kind == "op" else LOSSES[self.name]

    @property
    def label(self) -> str:
        if self.kind == "op" and self.pairwise:
            return f"{self.n}x{self.m}x{self.d}"
        return f"{self.n}x{self.d}"


def _size_class(kind: str, name: str) -> str:
    if kind == "op":
        return "pairwise" if OPS[name][1] else "rowwise"
    return "entailment" if name == "entailment" else "contrastive"


# ----------------------------------------------------------------------------- cost model

def cost_model(kind: str, name: str, pass_: str, n: int, m: int, d: int, elem_bytes: int):
    """(bytes, FLOPs) of one call under the model in the module docstring."""
    e = elem_bytes
    if kind == "op":
        if name in ("pairwise_inner", "pairwise_dist"):
            fb, bb = e * ((n + m) * d + n * m), e * (n * m + 2 * (n + m) * d)
            ff = 2 * n * m * d + 2 * (n + m) * d
        elif name in ("dist", "oxy_angle"):
            fb, bb, ff = e * (2 * n * d + n), e * (n + 4 * n * d), 6 * n * d
        elif name in ("exp_map0", "log_map0"):
            fb, bb, ff = e * 2 * n * d, e * 3 * n * d, 3 * n * d
        elif name == "half_aperture":
            fb, bb, ff = e * (n * d + n), e * (n + 2 * n * d), 2 * n * d
        else:
            raise KeyError(name)
    else:
        if name in ("lorentz_contrastive", "clip_contrastive"):
            fb, bb, ff = e * (n + m) * d, e * 2 * (n + m) * d, 2 * n * m * d
        elif name == "entailment":
            fb, bb, ff = e * 2 * n * d, e * 4 * n * d, 8 * n * d
        else:
            raise KeyError(name)
    bf = 2 * ff
    return {"fwd": (fb, ff), "bwd": (bb, bf), "fwd+bwd": (fb + bb, ff + bf)}[pass_]


# ----------------------------------------------------------------------------- machine

def _cpu_model() -> str:
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
        "cpu": _cpu_model(),
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

def _proc_status_kb(key: str) -> int | None:
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
    base = _proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t0
    peak = _proc_status_kb("VmHWM")
    del out
    _trim()
    if not ok or base is None or peak is None:
        return None, sec
    return max(peak - base, 0) / 1024, sec


# ----------------------------------------------------------------------------- inputs

def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[name]


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Standard inputs (space parts / features): rows of norm about 2, like MERU's embeddings."""
    g = torch.Generator().manual_seed(seed)
    k = OPS[case.name][0] if case.kind == "op" else 2
    rows = [case.n] if k == 1 else [case.n, case.m if case.pairwise else case.n]
    scale = 2.0 / math.sqrt(case.d)
    return [(torch.randn(r, case.d, generator=g) * scale).to(device=device, dtype=dtype) for r in rows]


def _reference_f64(case: Case, inputs: list[torch.Tensor]) -> torch.Tensor:
    from .lorentz import reference as R
    from .losses import reference as LR
    xs = [t.detach().to(torch.float64) for t in inputs]
    if case.kind == "op":
        extra = (MIN_RADIUS,) if case.name == "half_aperture" else ()
        return getattr(R, case.name)(*xs, CURV, *extra)
    if case.name == "lorentz_contrastive":
        return LR.lorentz_contrastive_loss(xs[0], xs[1], LOGIT_SCALE, CURV)
    if case.name == "clip_contrastive":
        return LR.clip_contrastive_loss(xs[0], xs[1], LOGIT_SCALE)
    return LR.entailment_loss(xs[0], xs[1], CURV, MIN_RADIUS)


# ----------------------------------------------------------------------------- implementations

@dataclass
class Built:
    """An implementation ready to run: ``fn(*args)``, its (differentiable) ``args``, and how
    to turn its output into the standard one for the accuracy check (None: no check)."""
    fn: Callable
    args: list[torch.Tensor]
    to_standard: Callable | None = lambda out: out
    note: str = ""


def _kernel_backend_ok(name: str, device: str) -> tuple[bool, str]:
    from .lorentz import ops
    return ops._supports(name, torch.device(device))


def _geoopt_ambient(x: torch.Tensor) -> torch.Tensor:
    """geoopt's hyperboloid <x,x>_L = -k with k = 1/c, time coordinate first: (x_t, x)."""
    xt = torch.sqrt(1.0 / CURV + (x * x).sum(-1, keepdim=True))
    return torch.cat([xt, x], dim=-1)


#: geoopt's pairwise ops broadcast to an (N, M, D+1) tensor; skip above this many bytes.
GEOOPT_PAIRWISE_MAX_BYTES = 1 << 30


def _impl_names(kind: str, name: str, device: str) -> list[str]:
    cuda = device.startswith("cuda")
    names = ["reference", "compile"]
    if kind == "op":
        names += ["triton", "native"] if cuda else ["native"]
        if name in ("pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0"):
            names.append("geoopt")
        if OPS[name][1]:
            names.append("matmul")
        if name in ("exp_map0", "log_map0"):
            names.append("copy")
        return names
    # the fused backends of hypkern.losses that implement this loss (the one registry);
    # Triton only on CUDA here (never benchmark the interpreter)
    from .kernels import registry
    names += [n for n in registry.BACKENDS if n != "reference" and name in registry.BACKENDS[n].implements
              and (cuda or n != "triton")]
    if name != "entailment":
        names.append("matmul")
    if name == "clip_contrastive":
        names.append("open_clip")
        if cuda:
            names.append("inf_cl")
    return names


#: The implementation of each loss that the issue's "fused" targets are judged on.
FUSED_LOSS_IMPL = {"cpu": "chunked", "cuda": "triton"}


#: Implementations that build the B x B logits (or the N x M output) of a contrastive case.
MATERIALISING = ("reference", "compile", "open_clip", "matmul")


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def build_impl(impl: str, case: Case, inputs: list[torch.Tensor]) -> Built:
    """Raise ``_Skip`` when ``impl`` cannot run this case here (including: a materialised
    B x B contrastive whose fwd+bwd would need more than half the free memory)."""
    from .lorentz import ops
    from .lorentz import reference as R
    from .losses import reference as LR
    device = inputs[0].device.type
    if case.kind == "loss" and case.pairwise and impl in MATERIALISING:
        need = 6 * case.n * case.m * 4  # ~six fp32 B x B buffers alive in a materialised fwd+bwd
        if need > 0.5 * _available_bytes(device):
            raise _Skip(f"materialises B x B: ~{need / 2 ** 30:.0f} GiB > half the free memory")
    extra = (MIN_RADIUS,) if case.name == "half_aperture" else ()
    args = [t.detach().clone().requires_grad_(True) for t in inputs]

    if impl == "matmul":
        return Built(lambda x, y: x @ y.T, args, None, "bound: bare x @ y.T")
    if impl == "copy":
        # bound of an N x D -> N x D map: ``x * 1.0`` reads the input and writes a freshly
        # allocated output, and its backward does the same for the gradient (``clone`` would
        # pass the gradient through for free). On CPU the fresh output's page faults, not the
        # arithmetic, dominate at large N x D.
        return Built(lambda x: x * 1.0, args, None, "bound: x * 1.0")

    if case.kind == "op":
        if impl == "reference":
            f = getattr(ops, case.name)
            return Built(lambda *t: f(*t, CURV, *extra, backend="reference"), args)
        if impl == "compile":
            f = torch.compile(getattr(R, case.name))
            return Built(lambda *t: f(*t, CURV, *extra), args)
        if impl in ("triton", "native"):
            if impl == "triton" and device != "cuda":
                raise _Skip("the Triton kernels run on CUDA here (never benchmark the interpreter)")
            ok, why = _kernel_backend_ok(impl, device)
            if not ok:
                raise _Skip(why)
            f = getattr(ops, case.name)
            return Built(lambda *t: f(*t, CURV, *extra, backend=impl), args)
        if impl == "geoopt":
            return _build_geoopt(case, inputs)
        raise _Skip(f"no implementation {impl!r} for op {case.name}")

    # losses
    from . import losses as L
    if impl == "compile":
        if case.name == "lorentz_contrastive":
            f = torch.compile(LR.lorentz_contrastive_loss)
            return Built(lambda a, b: f(a, b, LOGIT_SCALE, CURV), args)
        if case.name == "clip_contrastive":
            f = torch.compile(LR.clip_contrastive_loss)
            return Built(lambda a, b: f(a, b, LOGIT_SCALE), args)
        f = torch.compile(LR.entailment_loss)
        return Built(lambda t, i: f(t, i, CURV, MIN_RADIUS), args)
    from .kernels import registry
    if impl in registry.BACKENDS:
        # hypkern.losses as a user calls it, with backend= (reference: the materialised B x B).
        if case.name not in registry.BACKENDS[impl].implements:
            raise _Skip(f"backend {impl!r} does not implement {case.name}")
        if impl == "triton" and device != "cuda":
            raise _Skip("the Triton loss runs on CUDA here (never benchmark the interpreter)")
        ok, why = registry.available(impl, torch.device(device).type)
        if not ok:
            raise _Skip(why)
        if case.name == "lorentz_contrastive":
            return Built(lambda a, b: L.lorentz_contrastive_loss(a, b, LOGIT_SCALE, CURV, backend=impl), args)
        if case.name == "clip_contrastive":
            return Built(lambda a, b: L.clip_contrastive_loss(a, b, LOGIT_SCALE, backend=impl), args)
        return Built(lambda t, i: L.entailment_loss(t, i, CURV, MIN_RADIUS, backend=impl), args)
    if impl == "open_clip" and case.name == "clip_contrastive":
        try:
            from open_clip.loss import ClipLoss
        except Exception as exc:  # pragma: no cover - open_clip is a dependency
            raise _Skip(f"open_clip not importable: {exc}")
        loss = ClipLoss()
        import torch.nn.functional as F
        # ClipLoss takes normalised features: normalise inside, as hypkern's loss does.
        return Built(lambda a, b: loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1), LOGIT_SCALE),
                     args)
    if impl == "inf_cl" and case.name == "clip_contrastive":
        if device != "cuda":
            raise _Skip("Inf-CL runs on CUDA only")
        try:
            from inf_cl import cal_inf_loss
        except Exception as exc:
            raise _Skip(f"inf_cl not importable: {type(exc).__name__}: {exc}")
        import torch.nn.functional as F

        scale = torch.tensor(LOGIT_SCALE, device=inputs[0].device, dtype=torch.float32)

        def inf_cl(a, b):
            # cal_inf_loss(q, k, labels=None, scale=tensor) is one direction (q's rows against
            # all k, labels arange(B)); CLIP's symmetric loss is the mean of both directions.
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
            return 0.5 * (cal_inf_loss(a, b, scale=scale) + cal_inf_loss(b, a, scale=scale))
        return Built(inf_cl, args)
    raise _Skip(f"no implementation {impl!r} for loss {case.name}")


def _build_geoopt(case: Case, inputs: list[torch.Tensor]) -> Built:
    """geoopt's Lorentz model: ambient (D+1)-vectors, time first, <x,x>_L = -k, k = 1/c.

    Its ``dist(x, y, k) = sqrt(k) acosh(-<x,y>_L / k)`` equals ours with k = 1/c;
    ``expmap0(u, k)`` of the tangent vector ``u = (0, v)`` at its origin ``(sqrt(k), 0)`` has
    space part ``sinh(sqrt(c)|v|) v / (sqrt(c)|v|)`` = our ``exp_map0(v)``; ``logmap0(y, k)``
    has space part our ``log_map0``. Inputs are converted to its ambient form before timing
    (a geoopt user holds them that way); gradients are w.r.t. the ambient tensors."""
    try:
        from geoopt.manifolds.lorentz import math as gm
    except Exception as exc:
        raise _Skip(f"geoopt not importable ({type(exc).__name__}); pip install 'hypkern[bench]'")
    dev, dt = inputs[0].device, inputs[0].dtype
    k = torch.tensor(1.0 / CURV, device=dev, dtype=dt)
    name = case.name
    if name in ("pairwise_inner", "pairwise_dist"):
        need = case.n * case.m * (case.d + 1) * inputs[0].element_size()
        if need > GEOOPT_PAIRWISE_MAX_BYTES:
            raise _Skip(f"geoopt broadcasts to (N, M, D+1): {need / 2 ** 30:.1f} GiB > "
                        f"{GEOOPT_PAIRWISE_MAX_BYTES / 2 ** 30:.0f} GiB cap")
    if name == "exp_map0":
        u = torch.cat([torch.zeros_like(inputs[0][:, :1]), inputs[0]], dim=-1)
        args = [u.detach().clone().requires_grad_(True)]
        return Built(lambda a: gm.expmap0(a, k=k), args, lambda out: out[:, 1:])
    args = [_geoopt_ambient(t.to(torch.float64)).to(dt).detach().clone().requires_grad_(True)
            for t in inputs]
    if name == "log_map0":
        return Built(lambda a: gm.logmap0(a, k=k), args, lambda out: out[:, 1:])
    if name == "dist":
        return Built(lambda a, b: gm.dist(a, b, k=k), args)
    if name == "pairwise_dist":
        return Built(lambda a, b: gm.dist(a[:, None, :], b[None, :, :], k=k), args)
    if name == "pairwise_inner":
        # geoopt's inner has no curvature: the same <x,y>_L as ours for the same points.
        return Built(lambda a, b: gm.inner(a[:, None, :], b[None, :, :]), args)
    raise _Skip(f"geoopt has no {name}")


class _Skip(Exception):
    pass


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


def _is_slow(case: Case) -> bool:
    """Cases whose float64 check and extra warm-up cost tens of seconds on a CPU: the
    contrastive losses above 4096 x 4096 (their correctness is checked at the smaller size)."""
    return case.kind == "loss" and case.pairwise and case.n * case.m > 4096 * 4096


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


# ----------------------------------------------------------------------------- ceilings

def ceilings(device: str, quick: bool = False) -> dict:
    """The two rates kernels are judged against, measured here: a large device-local copy
    (GB/s counted as read + write bytes) and a large square matmul (FLOP/s: 2 n^3)."""
    out = {}
    cuda = device.startswith("cuda")
    copy_bytes = (64 << 20) if quick else ((4 << 30) if cuda else (256 << 20))
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_callable(lambda: dst.copy_(src), device, min_reps=5, min_time=0.2 if quick else 0.5)
    out["copy_bytes"] = copy_bytes
    out["copy_gbps"] = 2 * copy_bytes / (t["median_ms"] * 1e-3) / 1e9
    del src, dst
    specs = [("float32", 512 if quick else 2048)] if not cuda else [("bfloat16", 8192), ("float32", 8192)]
    for dname, sz in specs:
        a = torch.randn(sz, sz, device=device, dtype=_dtype(dname))
        b = torch.randn(sz, sz, device=device, dtype=_dtype(dname))
        t = time_callable(lambda: a @ b, device, min_reps=5, min_time=0.2 if quick else 0.5)
        out[f"matmul_{dname}_n"] = sz
        out[f"matmul_{dname}_tflops"] = 2 * sz ** 3 / (t["median_ms"] * 1e-3) / 1e12
        del a, b
    if cuda:
        torch.cuda.empty_cache()
    return out


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


def _worker_env() -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_group_subprocess(spec: dict, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        try:
            # the worker's progress lines (stderr) go straight to this process's stderr
            proc = subprocess.run([sys.executable, "-m", "hypkern.bench", "--worker", spec_path, out_path],
                                  env=_worker_env(), stdout=subprocess.PIPE, stderr=None, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return _failed_rows(spec, f"timeout: worker exceeded {timeout:.0f} s")
        if proc.returncode != 0 or not os.path.exists(out_path):
            return _failed_rows(spec, f"error: worker exited {proc.returncode} (its stderr is in the log above)")
        with open(out_path) as f:
            return json.load(f)


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


def _worker_main(spec_path: str, out_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    rows = _run_case(spec, log=lambda m: print(m, file=sys.stderr, flush=True))
    with open(out_path, "w") as f:
        json.dump(rows, f)
    return 0


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


# ----------------------------------------------------------------------------- targets

def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and r["status"] == "ok":
            return r
    return None


def _largest(rows, kind, name):
    sizes = sorted({(r["n"] * r["m"] * r["d"], r["n"], r["m"], r["d"]) for r in rows
                    if r["kind"] == kind and r["name"] == name})
    return sizes[-1][1:] if sizes else None


def evaluate_targets(result: dict) -> list[dict]:
    """Issue 8's CPU targets against these rows (GPU targets: benchmarks/gpu_suite.py).
    Each item: target, measured, met (True/False/None = not measurable here), margin."""
    rows = result["rows"]
    out = []

    def add(target, measured, met, margin, note=""):
        out.append({"target": target, "measured": measured, "met": met, "margin": margin, "note": note})

    # 1. fused Lorentz contrastive at B=8192, D=512 (or the largest size run).
    size = (8192, 8192, 512) if _find(rows, kind="loss", name="lorentz_contrastive", n=8192) else \
        _largest(rows, "loss", "lorentz_contrastive")
    if size:
        n, m, d = size
        key = dict(kind="loss", name="lorentz_contrastive", n=n, m=m, d=d, **{"pass": "fwd+bwd"})
        fused_impl = FUSED_LOSS_IMPL.get(result["settings"]["device"].split(":")[0], "chunked")
        ref, fused = _find(rows, impl="reference", **key), _find(rows, impl=fused_impl, **key)
        at = f" (B={n}, D={d})" + ("" if n == 8192 else " — not the target size")
        if ref and fused and ref.get("peak_mb") and fused.get("peak_mb") is not None:
            ratio = fused["peak_mb"] / ref["peak_mb"]
            add("fused Lorentz contrastive fwd+bwd peak memory <= 5% of reference" + at,
                f"{fused['peak_mb']:.1f} MiB vs {ref['peak_mb']:.1f} MiB = {100 * ratio:.2f}%",
                ratio <= 0.05, f"{100 * (0.05 - ratio):+.2f} pts")
        else:
            add("fused Lorentz contrastive fwd+bwd peak memory <= 5% of reference" + at, "n/a", None, "",
                "no fused or reference row with memory")
        if ref and fused:
            ratio = fused["median_ms"] / ref["median_ms"]
            add("fused Lorentz contrastive fwd+bwd time <= 0.7x reference" + at,
                f"{fused['median_ms']:.1f} ms vs {ref['median_ms']:.1f} ms = {ratio:.2f}x",
                ratio <= 0.7, f"{ratio / 0.7:.2f}x of the allowed time")
        else:
            add("fused Lorentz contrastive fwd+bwd time <= 0.7x reference" + at, "n/a", None, "",
                "missing rows")
    # 2. native pairwise_dist vs a bare matmul at the largest size.
    size = _largest(rows, "op", "pairwise_dist")
    if size:
        n, m, d = size
        for p in ("fwd", "fwd+bwd"):
            key = dict(kind="op", name="pairwise_dist", n=n, m=m, d=d, **{"pass": p})
            nat, mm = _find(rows, impl="native", **key), _find(rows, impl="matmul", **key)
            tgt = f"native pairwise_dist {p} <= 1.25x bare matmul ({n}x{m}x{d})"
            if nat and mm:
                ratio = nat["median_ms"] / mm["median_ms"]
                add(tgt, f"{nat['median_ms']:.2f} ms vs {mm['median_ms']:.2f} ms = {ratio:.2f}x",
                    ratio <= 1.25, f"{ratio / 1.25:.2f}x of the allowed time")
            else:
                add(tgt, "n/a", None, "", "native backend not usable here" if not nat else "no matmul row")
    # 3. maps / angles >= 3x the eager reference (native on CPU).
    for name in ("exp_map0", "log_map0", "half_aperture", "oxy_angle"):
        size = _largest(rows, "op", name)
        if not size:
            continue
        n, m, d = size
        for p in ("fwd", "fwd+bwd"):
            r = _find(rows, kind="op", name=name, impl="native", n=n, m=m, d=d, **{"pass": p})
            bound = _find(rows, kind="op", name=name, impl="copy", n=n, m=m, d=d, **{"pass": p})
            tgt = f"native {name} {p} >= 3x eager reference ({n}x{d})"
            if r and r.get("speedup_vs_ref"):
                s = r["speedup_vs_ref"]
                note = ""
                if bound and bound.get("speedup_vs_ref"):
                    note = (f"; the bound `x * 1.0` (read, write a fresh N x D; same in backward) is "
                            f"{bound['speedup_vs_ref']:.2f}x the reference, native takes "
                            f"{r['median_ms'] / bound['median_ms']:.2f}x its time")
                add(tgt, f"{s:.2f}x", s >= 3.0, f"{s / 3.0:.2f}x of the target speedup" + note)
            else:
                add(tgt, "n/a", None, "", "native backend not usable here")
    return out


# ----------------------------------------------------------------------------- output

def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _stamp(machine: dict, settings: dict) -> str:
    load = machine.get("load_avg_1_5_15")
    cores = machine.get("cores")
    busy = load and cores and load[0] > 0.5 * cores
    s = (f"Machine: {machine['cpu']}, {cores} cores ({machine['torch_threads']} torch threads)"
         + (f", GPU {machine['gpu']} ({machine['gpu_memory_gib']} GiB), CUDA {machine['cuda']}"
            if machine.get("gpu") else "")
         + f"; torch {machine['torch']}, triton {machine.get('triton')}, Python {machine['python']}; "
         f"commit {machine['git_commit']}; {machine['date_utc']}.  \n"
         f"Load average (1/5/15 min) at start {load}, at end {machine.get('load_avg_end')}"
         + (" — **the machine was busy (other processes), timings are noisy**" if busy else "")
         + f"; suite `{settings['suite']}`, dtype {settings['dtype']}, wall {machine.get('wall_s')} s.")
    return s


def markdown_table(result: dict, title: str = "Kernel benchmarks") -> str:
    rows, machine, ceil = result["rows"], result["machine"], result["ceilings"]
    lines = [f"# {title}", "", _stamp(machine, result["settings"]), ""]
    lines.append("Ceilings measured in this run: copy "
                 f"{ceil['copy_gbps']:.1f} GB/s (read+write, {ceil['copy_bytes'] >> 20} MiB), "
                 + ", ".join(f"{k[7:-7]} matmul {v:.3g} TFLOP/s (n={ceil[k[:-7] + '_n']})"
                             for k, v in ceil.items() if k.startswith("matmul_") and k.endswith("_tflops"))
                 + ".")
    lines += ["", "Times are medians in ms; `speedup` = eager reference time / this time (same pass);",
              "GB/s and GFLOP/s follow the cost model in `hypkern/bench.py` (fwd+bwd pass); `%copy` ",
              "is that GB/s as a share of the measured copy rate, `%mm` the GFLOP/s as a share of the ",
              "measured matmul rate; `peak MiB` is the fwd+bwd call's peak memory above its inputs, ",
              "`mem/ref` its ratio to the reference's; `err` = max |out - ref64| / max(1, |ref64|).", ""]
    targets = evaluate_targets(result) if result["settings"]["device"] == "cpu" else []
    if targets:
        lines += ["## Targets (issue 8, CPU)", ""]
        if result["settings"]["suite"] == "quick":
            lines += ["*Quick suite: tiny sizes, so these verdicts mean nothing; run the full suite.*", ""]
        lines += ["| target | measured | met | margin |", "|---|---|---|---|"]
        for t in targets:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {t['measured']} | {met} | {t['margin'] or t['note']} |")
        lines.append("")
    copy_gbps = ceil.get("copy_gbps")
    mm_tf = next((v for k, v in ceil.items() if k.endswith("_tflops") and result["settings"]["dtype"] in k),
                 None) or next((v for k, v in ceil.items() if k.endswith("_tflops")), None)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["name"]), []).append(r)
    for (kind, name), rs in groups.items():
        case_pairwise = OPS[name][1] if kind == "op" else LOSSES[name]
        lines += [f"## {kind} `{name}`", "",
                  "| size | impl | fwd | bwd | fwd+bwd | speedup fwd | speedup f+b | GB/s | GFLOP/s | "
                  + ("%mm" if case_pairwise else "%copy") + " | peak MiB | mem/ref | err |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        by = {}
        for r in rs:
            by.setdefault((r["n"], r["m"], r["d"], r["impl"]), {})[r["pass"]] = r
        skipped = []
        for (n, m, d, impl), ps in by.items():
            label = Case(kind, name, n, m, d).label
            fb = ps.get("fwd+bwd", {})
            if fb.get("status") != "ok":
                skipped.append(f"{label} `{impl}`: {fb.get('status')}")
                continue
            share = None
            if case_pairwise and mm_tf and fb.get("gflops"):
                share = 100 * fb["gflops"] / (mm_tf * 1e3)
            elif not case_pairwise and copy_gbps and fb.get("gbps"):
                share = 100 * fb["gbps"] / copy_gbps
            lines.append("| " + " | ".join([
                label, impl, _fmt(ps["fwd"].get("median_ms")), _fmt(ps["bwd"].get("median_ms")),
                _fmt(fb.get("median_ms")), _fmt(ps["fwd"].get("speedup_vs_ref"), 2),
                _fmt(fb.get("speedup_vs_ref"), 2), _fmt(fb.get("gbps")), _fmt(fb.get("gflops")),
                _fmt(share, 2), _fmt(fb.get("peak_mb")), _fmt(fb.get("mem_vs_ref"), 2),
                _fmt(fb.get("err"), 2)]) + " |")
        if skipped:
            lines += ["", "Not run: " + "; ".join(skipped)]
        lines.append("")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})


IMPL_COLORS = {"reference": "tab:blue", "compile": "tab:cyan", "native": "tab:orange", "triton": "tab:red",
               "chunked": "tab:green", "geoopt": "tab:purple", "open_clip": "tab:brown", "inf_cl": "tab:pink",
               "matmul": "tab:gray", "copy": "tab:olive"}


def plot(result: dict, path: str) -> bool:
    """One panel per op/loss: fwd+bwd median time vs size, one line per implementation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    rows = [r for r in result["rows"] if r["status"] == "ok" and r["pass"] == "fwd+bwd"]
    cases = list(dict.fromkeys((r["kind"], r["name"]) for r in rows))
    if not cases:
        return False
    cols = min(4, len(cases))
    nrows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (kind, name) in zip(axes.flat, cases):
        rs = [r for r in rows if r["kind"] == kind and r["name"] == name]
        labels = list(dict.fromkeys(Case(kind, name, r["n"], r["m"], r["d"]).label for r in rs))
        for impl in dict.fromkeys(r["impl"] for r in rs):
            pts = [(labels.index(Case(kind, name, r["n"], r["m"], r["d"]).label), r["median_ms"])
                   for r in rs if r["impl"] == impl]
            xs, ys = zip(*sorted(pts))
            bound = impl in ("matmul", "copy")
            ax.plot(xs, ys, marker="x" if bound else "o", linestyle="--" if bound else "-",
                    label=impl, color=IMPL_COLORS.get(impl, "black"))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{name} (fwd+bwd)", fontsize=9)
        ax.set_ylabel("ms (median)", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(f"hypkern bench — {m['cpu']} x{m['cores']}, torch {m['torch']}, {m['date_utc']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(result: dict, out_dir: str, stem: str, title: str, make_plot: bool = True) -> dict:
    """``stem``.csv / .json / .md (and .png) in ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("csv", "json", "md", "png")}
    write_csv(result["rows"], paths["csv"])
    result = {**result, "targets": evaluate_targets(result), "cost_model": __doc__}
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(result, title) + "\n")
    if not (make_plot and plot(result, paths["png"])):
        paths.pop("png")
    return paths


# ----------------------------------------------------------------------------- trainer

#: Extra memory (RSS high-water mark above the process after the model and data exist) a
#: trainer run may use in the "largest batch that fits" search.
TRAINER_MEMORY_BUDGET_GIB = 2.0
TRAINER_MODELS = {"tiny_meru": "hac", "tiny_clip": "ac"}
#: "fused": the defaults (hypkern.losses' fused backend, the fastest op backend);
#: "reference": backend="reference" everywhere (materialised B x B logits, eager ops).
TRAINER_PATHS = {"fused": None, "reference": "reference"}


def _trainer_worker(spec: dict) -> dict:
    """One unlearning run in this (fresh) process: per-step times and the RSS peak."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        from .models import tiny_clip, tiny_meru
        from .unlearning import unlearn
        from .data.demo import load_demo
    except Exception as exc:
        return {"status": f"error: the trainer is not available ({type(exc).__name__}: {exc})"}
    from .lorentz.ops import resolve_backend
    from . import losses as L
    model = {"tiny_meru": tiny_meru, "tiny_clip": tiny_clip}[spec["model"]](0)
    data = load_demo("train")
    _trim()
    hwm_ok = _reset_hwm()
    base = _proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    res = unlearn(model, [spec["concept"]], data, steps=spec["steps"], retain_batch_size=spec["retain"],
                  forget_batch_size=spec["forget"], micro_batch_size=spec.get("micro"),
                  backend=spec["backend"], eval=False, progress=False, log=lambda msg: None)
    wall = time.perf_counter() - t0
    peak = _proc_status_kb("VmHWM") if hwm_ok else None
    times = [h["time_s"] for h in res.history]
    timed = times[1:] if len(times) > 1 else times  # the first step warms up
    dev = torch.device("cpu")
    return {"status": "ok", "method": res.method, "step_s": times,
            "median_step_s": statistics.median(timed), "wall_s": wall,
            "peak_mb": (peak - base) / 1024 if (peak is not None and base is not None) else None,
            "loss_backend": L.resolve_loss_backend(spec["backend"], dev),
            "op_backend": resolve_backend(spec["backend"], dev)}


def _run_trainer_subprocess(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sp, op = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(sp, "w") as f:
            json.dump(spec, f)
        try:
            proc = subprocess.run([sys.executable, "-m", "hypkern.bench", "--trainer-worker", sp, op],
                                  env=_worker_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": f"timeout: more than {timeout:.0f} s"}
        if proc.returncode != 0 or not os.path.exists(op):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            return {"status": f"error: worker exited {proc.returncode}: {tail[0][:300]}"}
        with open(op) as f:
            return json.load(f)


def trainer_benchmark(device: str = "cpu", quick: bool = False, log=print, threads: int | None = None,
                      timeout: float = 300.0) -> dict:
    """Unlearning throughput of the tiny models, fused vs reference loss path, and the largest
    global batch that fits in ``TRAINER_MEMORY_BUDGET_GIB`` (CPU; every run in a fresh process).

    Throughput: ``retain + forget`` samples per median step time (the first step, a warm-up,
    left out), one concept ("red circle") of the embedded demo set, no gradient caching. Peak
    memory: RSS high-water mark of the whole ``unlearn`` call above the process after the
    model and data exist. Largest batch: gradient caching (``micro_batch_size``) so that the
    encoders' activations do not grow with the batch, peaks measured at two global batches
    per path; the model ``peak(B) = a + b B`` (fused) / ``a + b B + q B^2`` (reference, ``a``
    and ``b`` taken from the fused path, which shares the encoders and data; ``q`` is the
    reference's excess at the larger batch over ``B^2``) is solved for the budget. Largest
    batches beyond the measured ones are extrapolations and marked so."""
    if device != "cpu":
        raise RuntimeError("the trainer benchmark runs on CPU (tiny models); GPU: benchmarks/gpu_suite.sh")
    try:
        import hypkern.unlearning as _u  # noqa: F401
        from .models import tiny_meru  # noqa: F401
        if not callable(getattr(_u, "unlearn", None)):
            raise ImportError("hypkern.unlearning.unlearn is missing")
    except Exception as exc:
        raise RuntimeError(f"the unlearning trainer is not available in this checkout: {exc}") from exc
    threads = threads or (1 if quick else torch.get_num_threads())
    t_start = time.time()
    machine = machine_info(device)
    machine["torch_threads"] = threads
    thr_b = (32, 16) if quick else (512, 256)
    steps = 2 if quick else 4
    rows = []
    for model, method in TRAINER_MODELS.items():
        for path, backend in TRAINER_PATHS.items():
            spec = {"model": model, "concept": "red circle", "backend": backend, "retain": thr_b[0],
                    "forget": thr_b[1], "steps": steps, "micro": None, "threads": threads}
            r = _run_trainer_subprocess(spec, timeout)
            row = {"test": "throughput", "model": model, "method": method, "path": path,
                   "batch": thr_b[0] + thr_b[1], "micro_batch": None, **r}
            if r.get("status") == "ok":
                row["samples_per_s"] = row["batch"] / r["median_step_s"]
            rows.append(row)
            log(f"[trainer] {model} {path:<9} batch {row['batch']}: "
                + (f"{row['samples_per_s']:.0f} samples/s, peak {_fmt(r.get('peak_mb'))} MiB"
                   if r.get("status") == "ok" else r.get("status", "")))
    # Largest batch that fits: MERU (HAC), gradient caching.
    micro = 32 if quick else 256
    sizes = [(64, 32), (256, 128)] if quick else [(1024, 512), (4096, 2048)]
    fit = {}
    for path, backend in TRAINER_PATHS.items():
        for (br, bf) in sizes:
            spec = {"model": "tiny_meru", "concept": "red circle", "backend": backend, "retain": br,
                    "forget": bf, "steps": 1, "micro": micro, "threads": threads}
            r = _run_trainer_subprocess(spec, timeout)
            row = {"test": "memory", "model": "tiny_meru", "method": "hac", "path": path, "batch": br + bf,
                   "micro_batch": micro, **r}
            if r.get("status") == "ok":
                row["samples_per_s"] = row["batch"] / r["median_step_s"]
                fit.setdefault(path, []).append((br + bf, r["peak_mb"]))
            rows.append(row)
            log(f"[trainer] memory tiny_meru {path:<9} batch {br + bf}: "
                + (f"peak {_fmt(r.get('peak_mb'))} MiB" if r.get("status") == "ok" else r.get("status", "")))
    max_batch = _max_batch(fit, TRAINER_MEMORY_BUDGET_GIB * 1024)
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["wall_s"] = round(time.time() - t_start, 1)
    return {"machine": machine, "rows": rows, "max_batch": max_batch,
            "settings": {"quick": quick, "budget_gib": TRAINER_MEMORY_BUDGET_GIB, "threads": threads,
                         "throughput_batch": list(thr_b), "steps": steps, "micro_batch": micro,
                         "suite": "quick" if quick else "full", "dtype": "float32"}}


def _max_batch(fit: dict, budget_mb: float) -> dict:
    """Largest global batch within ``budget_mb`` per path (see ``trainer_benchmark``)."""
    out = {}
    fused = sorted(fit.get("fused", []))
    if len(fused) < 2 or any(p is None for _, p in fused):
        return {"note": "not enough memory measurements"}
    (b1, p1), (b2, p2) = fused[0], fused[-1]
    slope = max((p2 - p1) / (b2 - b1), 1e-9)
    icpt = p1 - slope * b1
    measured_ok = [b for b, p in fused if p <= budget_mb]
    bmax = int((budget_mb - icpt) / slope)
    out["fused"] = {"model": f"{icpt:.1f} MiB + {slope * 1024:.2f} KiB x B", "max_batch": bmax,
                    "largest_measured_within_budget": max(measured_ok) if measured_ok else None,
                    "extrapolated": bmax > b2}
    ref = sorted(fit.get("reference", []))
    if len(ref) >= 1 and all(p is not None for _, p in ref):
        bq, pq = ref[-1]
        q = max((pq - (icpt + slope * bq)) / bq ** 2, 0.0)
        if q > 0:
            bmax_r = int((-slope + math.sqrt(slope ** 2 + 4 * q * (budget_mb - icpt))) / (2 * q))
        else:
            bmax_r = bmax
        measured_ok = [b for b, p in ref if p <= budget_mb]
        out["reference"] = {"model": f"{icpt:.1f} MiB + {slope * 1024:.2f} KiB x B + {q * 2 ** 20:.2f} B x B^2",
                            "max_batch": bmax_r,
                            "largest_measured_within_budget": max(measured_ok) if measured_ok else None,
                            "extrapolated": bmax_r > bq}
    return out


def trainer_markdown(res: dict) -> str:
    m, st = res["machine"], res["settings"]
    lines = ["# hypkern unlearning trainer throughput (CPU, tiny models)", "", _stamp(m, st), "",
             f"Embedded demo set (32x32 shapes), concept 'red circle'; fp32; {st['threads']} torch "
             f"thread(s). Throughput: batch {st['throughput_batch'][0]} retain + "
             f"{st['throughput_batch'][1]} forget per step, {st['steps']} steps, samples/s = batch / "
             "median step time (first step left out). Peak = RSS high-water mark of the whole "
             "`unlearn` call above the process after the model and data exist, each run in a fresh "
             "process. `fused` = default backends (fused loss, fastest ops); `reference` = "
             "`backend='reference'` (materialised B x B logits, eager ops).", "",
             "| test | model | method | path | loss / op backend | batch | micro-batch | step s | samples/s | peak MiB | status |",
             "|---|---|---|---|---|--:|--:|--:|--:|--:|---|"]
    for r in res["rows"]:
        lines.append("| " + " | ".join([
            r["test"], r["model"], r["method"], r["path"],
            f"{r.get('loss_backend', '')} / {r.get('op_backend', '')}", str(r["batch"]),
            _fmt(r.get("micro_batch")), _fmt(r.get("median_step_s")), _fmt(r.get("samples_per_s")),
            _fmt(r.get("peak_mb")), r.get("status", "")]) + " |")
    mb = res.get("max_batch", {})
    lines += ["", f"## Largest global batch within {st['budget_gib']} GiB (tiny MERU, HAC, "
              f"micro-batch {st['micro_batch']})", ""]
    if "note" in mb:
        lines.append(mb["note"])
    for path in ("fused", "reference"):
        if path in mb:
            e = mb[path]
            lines.append(f"- **{path}**: {e['max_batch']:,} samples"
                         + (" (extrapolated beyond the measured batches)" if e["extrapolated"] else " (within the measured range)")
                         + f"; peak model {e['model']}; largest measured batch within budget: "
                         f"{e['largest_measured_within_budget']}.")
    if "fused" in mb and "reference" in mb:
        lines.append(f"- fused / reference: {mb['fused']['max_batch'] / max(mb['reference']['max_batch'], 1):.1f}x larger batch.")
    return "\n".join(lines) + "\n"


def write_trainer_results(res: dict, out: str, stem: str) -> dict:
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, f"{stem}.{k}") for k in ("csv", "json", "md")}
    cols = ["test", "model", "method", "path", "loss_backend", "op_backend", "batch", "micro_batch",
            "median_step_s", "samples_per_s", "peak_mb", "status"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in res["rows"]:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    with open(paths["json"], "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(paths["md"], "w") as f:
        f.write(trainer_markdown(res))
    return paths


# ----------------------------------------------------------------------------- CLI

def _cmd(args) -> int:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("hypkern bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    suite = "quick" if args.quick else ("gpu" if device.startswith("cuda") else "full")
    tag = "cpu" if device == "cpu" else "gpu"
    out = args.out
    what = set(args.what or ["all"])
    if what - {"all", "ops", "trainer"}:
        print(f"hypkern bench: unknown {sorted(what - {'all', 'ops', 'trainer'})}; choose ops, trainer or all",
              file=sys.stderr)
        return 2
    rc = 0
    if what & {"ops", "all"}:
        only = args.only.split(",") if args.only else None
        impls = args.impls.split(",") if args.impls else None
        result = run_benchmarks(suite, device, args.dtype, only, impls, isolate=False if args.in_process else None,
                                group_timeout=args.group_timeout, threads=args.threads)
        stem = f"ops_{tag}" + ("_quick" if args.quick else "")
        paths = write_results(result, out, stem, f"hypkern kernel benchmarks ({tag}, {suite})",
                              make_plot=not args.no_plot)
        print(f"[bench] wrote {', '.join(paths.values())} in {result['machine']['wall_s']} s")
        for t in evaluate_targets(result):
            print(f"[target] {t['target']}: {t['measured']} -> "
                  f"{ {True: 'met', False: 'MISSED', None: 'not measured'}[t['met']]} {t['margin']}")
    if what & {"trainer", "all"}:
        try:
            res = trainer_benchmark(device=device, quick=args.quick, log=print, threads=args.threads)
        except Exception as exc:
            print(f"[bench] trainer benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
        else:
            stem = f"trainer_{tag}" + ("_quick" if args.quick else "")
            paths = write_trainer_results(res, out, stem)
            print(f"[bench] wrote {', '.join(paths.values())}")
    return rc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="*", default=[], metavar="{ops,trainer,all}",
                   help="what to run: ops (ops and losses), trainer, or all (default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke run)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"),
                   help="folder for the CSV/JSON/Markdown/PNG results (default benchmarks/results)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda if visible)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--only", default="", help="comma-separated op/loss names (or 'op', 'loss')")
    p.add_argument("--impls", default="", help="comma-separated implementations (reference always runs)")
    p.add_argument("--in-process", action="store_true",
                   help="run every case in this process (the default for --quick and CUDA; CPU peak "
                        "memory is then less isolated)")
    p.add_argument("--group-timeout", type=float, default=420.0,
                   help="seconds one op/loss may take, all implementations and sizes (default 420)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all cores; 1 with --quick)")
    p.add_argument("--no-plot", action="store_true")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark the ops, losses and unlearning trainer",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=_cmd)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hypkern.bench")
    add_arguments(p)
    return _cmd(p.parse_args(argv))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 4 and sys.argv[1] == "--trainer-worker":
        with open(sys.argv[2]) as _f:
            _res = _trainer_worker(json.load(_f))
        with open(sys.argv[3], "w") as _f:
            json.dump(_res, _f)
        sys.exit(0)
    sys.exit(main())
