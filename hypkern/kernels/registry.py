"""The one backend registry: which kernel backend implements which op, on which device, and
which one a call uses.

Ops are the seven geometry ops of :mod:`hypkern.lorentz.ops` and the three loss families of
:mod:`hypkern.losses` (``lorentz_contrastive``, ``clip_contrastive``, ``entailment``, the
last covering the entailment loss and its calibration). Backends:

============  ===========================================================  =================
backend       what                                                         implements
============  ===========================================================  =================
reference     the spec in plain PyTorch with autograd (losses build N x M)  every op
chunked       tiled PyTorch contrastive losses, O((N + M) D) memory         contrastive
triton        Triton kernels (CUDA; CPU only under ``TRITON_INTERPRET=1``)  every op
native        C++ CPU / CUDA extension built from ``csrc/``                 geometry, entailment
============  ===========================================================  =================

``backend=`` (on every op and loss, and ``UnlearnConfig.backend``) or the one environment
variable ``$HYPKERN_BACKEND`` names a backend, or a comma-separated preference list
(``"native,chunked"``: the first that implements the op and runs on the device). A named
backend is strict: if none in the list implements the op on the device, the call raises and
says which backends would. Without either, the default order is tried (CUDA: triton, native,
chunked, reference; CPU: native, chunked, reference).

A kernel module (``module`` below) has ``supports(device) -> (bool, reason)`` and, per
geometry op, ``<op>_fwd`` / ``<op>_bwd`` (see :mod:`hypkern.lorentz.ops`); for the contrastive
losses ``contrastive_fwd`` / ``contrastive_bwd`` and for entailment ``entailment_fwd`` /
``entailment_bwd`` (see :mod:`hypkern.losses`). ``reference`` has no kernel module: the op
layers run their own spec.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from dataclasses import dataclass

import torch

__all__ = [
    "GEOMETRY_OPS", "LOSS_OPS", "ALL_OPS", "BACKENDS", "DEFAULT_ORDER", "ENV_VAR", "Backend",
    "BackendStatus", "available", "resolve", "kernels", "status", "capability_table", "parse_backend",
    "check_backend_for",
]

GEOMETRY_OPS = ("pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0", "half_aperture", "oxy_angle")
LOSS_OPS = ("lorentz_contrastive", "clip_contrastive", "entailment")
ALL_OPS = GEOMETRY_OPS + LOSS_OPS
ENV_VAR = "HYPKERN_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str
    module: str | None
    implements: tuple[str, ...]
    summary: str


BACKENDS = {
    "reference": Backend("reference", None, ALL_OPS,
                         "the spec in plain PyTorch with autograd (the losses build the N x M logits)"),
    "chunked": Backend("chunked", "hypkern.kernels.chunked", ("lorentz_contrastive", "clip_contrastive"),
                       "tiled PyTorch contrastive losses, O((N + M) D) memory, any device"),
    "triton": Backend("triton", "hypkern.kernels.triton", ALL_OPS,
                      "Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1)"),
    "native": Backend("native", "hypkern.kernels.native", GEOMETRY_OPS + ("entailment",),
                      "C++ CPU and CUDA kernels built from csrc/ (hypkern._C, hypkern._C_cuda)"),
}
DEFAULT_ORDER = {
    "cuda": ("triton", "native", "chunked", "reference"),
    "cpu": ("native", "chunked", "reference"),
}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend runs here on CPU and CUDA, what it implements, and why not."""
    name: str
    cpu: bool
    cuda: bool
    reason: str
    implements: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = [d for d, ok in (("cpu", self.cpu), ("cuda", self.cuda)) if ok]
        return f"{self.name}: {'usable on ' + ', '.join(where) if where else 'unavailable'}" + (
            f" ({self.reason})" if self.reason else "")


@functools.lru_cache(maxsize=None)
def _module(name: str):
    """Import a backend's kernel module once: (module or None, reason)."""
    path = BACKENDS[name].module
    if path is None:
        return None, ""
    try:
        return importlib.import_module(path), ""
    except Exception as exc:  # an optional backend must never break `import hypkern`
        return None, f"{type(exc).__name__}: {exc}"


def available(name: str, device_type: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run on ``device_type`` ("cpu", "cuda"), and if not why."""
    if name == "reference":
        return True, ""
    if name == "chunked":  # plain PyTorch: wherever torch runs
        return (True, "") if device_type in ("cpu", "cuda") else (False, f"no device type {device_type!r}")
    module, why = _module(name)
    if module is None:
        return False, why
    return module.supports(torch.device(device_type))


def kernels(name: str):
    """The kernel module of backend ``name`` (raises if it failed to import)."""
    module, why = _module(name)
    if module is None:
        raise RuntimeError(f"backend {name!r} is not available: {why or 'it has no kernel module'}")
    return module


def parse_backend(backend) -> tuple[str, ...]:
    """``None``/``""`` -> ``()``; ``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")``, names checked."""
    if backend is None:
        return ()
    if isinstance(backend, str):
        names = tuple(p.strip() for p in backend.split(",") if p.strip())
    elif isinstance(backend, (list, tuple)) and all(isinstance(b, str) for b in backend):
        names = tuple(b.strip() for b in backend)
    else:
        raise TypeError(f"backend must be a name, a comma-separated list or None, got {backend!r}")
    for n in names:
        if n not in BACKENDS:
            raise ValueError(f"backend must be one of {tuple(BACKENDS)} (or a comma-separated list of them) "
                             f"or None, got {n!r}")
    return names


_warned_loss_env = []


def _from_env() -> tuple[str, ...]:
    if os.environ.get("HYPKERN_LOSS_BACKEND") and not _warned_loss_env:
        _warned_loss_env.append(True)
        warnings.warn("HYPKERN_LOSS_BACKEND is no longer read: set HYPKERN_BACKEND (one variable for ops "
                      "and losses; a list such as 'native,chunked' is allowed)", RuntimeWarning, stacklevel=4)
    try:
        return parse_backend(os.environ.get(ENV_VAR) or None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"${ENV_VAR}: {exc}") from None


def resolve(op: str, backend, device_type: str) -> str:
    """The backend that runs ``op`` on ``device_type``: the first of ``backend`` (or
    ``$HYPKERN_BACKEND``) that implements it and runs there; without either, the first of
    :data:`DEFAULT_ORDER`. Raises ``ValueError`` for unknown names and ``RuntimeError`` when no
    named backend can run the op, naming the ones that could."""
    if isinstance(backend, (list, tuple)):
        parse_backend(backend)
        backend = ",".join(backend)
    elif backend is not None and not isinstance(backend, str):
        parse_backend(backend)  # raises the TypeError
    return _resolve_constant(op, backend or "", device_type)


@torch.compiler.assume_constant_result
def _resolve_constant(op: str, backend: str, device_type: str) -> str:
    # A constant for torch.compile: the answer depends only on the arguments and on what is
    # installed, and a traced graph must not import modules.
    if op not in ALL_OPS:
        raise ValueError(f"op must be one of {ALL_OPS}, got {op!r}")
    return _resolve_eager(op, parse_backend(backend or None), device_type)


def _resolve_eager(op: str, names: tuple[str, ...], device_type: str) -> str:
    explicit = bool(names)
    source = "backend"
    if not names:
        names = _from_env()
        explicit, source = bool(names), f"${ENV_VAR}"
    if not explicit:
        for n in DEFAULT_ORDER.get(device_type, ("reference",)):
            if op in BACKENDS[n].implements and available(n, device_type)[0]:
                return n
        return "reference"
    reasons = []
    for n in names:
        if op not in BACKENDS[n].implements:
            reasons.append(f"{n!r} does not implement it")
            continue
        ok, why = available(n, device_type)
        if ok:
            return n
        reasons.append(f"{n!r} cannot run on {device_type}: {why}")
    could = [n for n in BACKENDS if op in BACKENDS[n].implements and available(n, device_type)[0]]
    raise RuntimeError(f"{source}={','.join(names)!r} cannot run {op} on {device_type} ("
                       + "; ".join(reasons) + f"); backends that can: {', '.join(could)}"
                       + (f" (e.g. {names[0]},{could[-1]!s})" if could and names[0] != could[-1] else ""))


def check_backend_for(ops, backend, device_type: str) -> dict[str, str]:
    """Resolve every op of ``ops`` now (for configs: fail before a run starts); ``{op: backend}``."""
    return {op: resolve(op, backend, device_type) for op in ops}


def status() -> dict[str, BackendStatus]:
    """Every backend: usable on CPU / CUDA here, and why not."""
    out = {}
    cuda_ok = torch.cuda.is_available()
    for name, b in BACKENDS.items():
        cpu, why_cpu = available(name, "cpu")
        if cuda_ok:
            cuda, why_cuda = available(name, "cuda")
        else:
            cuda, why_cuda = False, "no CUDA device"
        reasons = [f"cpu: {why_cpu}"] if not cpu and why_cpu else []
        if not cuda and why_cuda:
            reasons.append(f"cuda: {why_cuda}")
        out[name] = BackendStatus(name, cpu, cuda, "; ".join(reasons), b.implements)
    return out


def capability_table() -> list[dict]:
    """One row per backend: name, summary, implemented ops, and per device whether it runs
    (and why not). What ``hypkern backends`` prints and the README documents."""
    rows = []
    for name, st in status().items():
        rows.append({"backend": name, "summary": BACKENDS[name].summary, "implements": list(st.implements),
                     "cpu": st.cpu, "cuda": st.cuda, "reason": st.reason})
    return rows
