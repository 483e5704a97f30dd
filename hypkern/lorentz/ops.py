"""Public Lorentz ops: argument checks, backend choice, and one custom op per function.

Each op (``pairwise_inner``, ``pairwise_dist``, ``dist``, ``exp_map0``, ``log_map0``,
``half_aperture``, ``oxy_angle``) is a ``torch.library`` custom op ``hypkern::<name>`` whose
last argument names the kernel backend, with a backward op ``hypkern::<name>_backward``: one
autograd formula, several implementations (Triton, native C++/CUDA). ``torch.compile`` and
``torch.export`` see through them via ``register_fake``.

``backend="reference"`` skips the custom ops and runs ``reference.py`` with plain autograd
(which also supports double backward).

A kernel backend is a module with ``supports(device) -> (bool, reason)`` and, per op,
``<name>_fwd(*inputs, curv[, min_radius])`` and ``<name>_bwd(grad, *inputs, curv[, min_radius])``
returning one gradient per tensor input plus the 0-dim gradient w.r.t. ``curv``. Inputs come
in contiguous, in their own dtype (fp16/bf16/fp32/fp64); ``curv`` is a 0-dim tensor of the
compute dtype (float64 for float64 inputs, else float32) on the inputs' device. Outputs are
in the input dtype; the gradient w.r.t. ``curv`` in ``curv``'s dtype.
"""
from __future__ import annotations

import functools
import importlib
import math
import os
from dataclasses import dataclass

import torch

from . import reference

__all__ = [
    "pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0", "half_aperture",
    "oxy_angle", "backends", "resolve_backend", "KERNEL_BACKENDS",
]

#: Backends that run through the custom ops, with the module that holds their kernels.
KERNEL_BACKENDS = {
    "triton": "hypkern.kernels.triton",
    "native": "hypkern.kernels.native",
}
ALL_BACKENDS = ("reference",) + tuple(KERNEL_BACKENDS)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class BackendStatus:
    name: str
    cpu: bool
    cuda: bool
    reason: str

    def __str__(self) -> str:
        where = [d for d, ok in (("cpu", self.cpu), ("cuda", self.cuda)) if ok]
        return f"{self.name}: {'usable on ' + ', '.join(where) if where else 'unavailable'}" + (
            f" ({self.reason})" if self.reason else "")


@functools.lru_cache(maxsize=None)
def _kernel_module(name: str):
    """Import a backend's kernel module; returns (module or None, reason)."""
    try:
        return importlib.import_module(KERNEL_BACKENDS[name]), ""
    except Exception as exc:  # an optional backend must never break `import hypkern`
        return None, f"{type(exc).__name__}: {exc}"


def _supports(name: str, device: torch.device) -> tuple[bool, str]:
    if name == "reference":
        return True, ""
    module, reason = _kernel_module(name)
    if module is None:
        return False, reason
    return module.supports(device)


def backends() -> dict[str, BackendStatus]:
    """Which backends are usable here, on which device types, and why not."""
    out = {}
    cuda_ok = torch.cuda.is_available()
    for name in ALL_BACKENDS:
        cpu, why_cpu = _supports(name, torch.device("cpu"))
        if cuda_ok:
            cuda, why_cuda = _supports(name, torch.device("cuda"))
        else:
            cuda, why_cuda = False, "no CUDA device"
        reasons = []
        if not cpu and why_cpu:
            reasons.append(f"cpu: {why_cpu}")
        if not cuda and why_cuda:
            reasons.append(f"cuda: {why_cuda}")
        out[name] = BackendStatus(name, cpu, cuda, "; ".join(reasons))
    return out


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend an op will use: ``backend`` if given (checked), else ``$HYPKERN_BACKEND``,
    else the fastest usable one for the device (CUDA: triton, native, reference;
    CPU: native, reference)."""
    return _resolve(backend or "", device.type)


@torch.compiler.assume_constant_result
def _resolve(backend: str, device_type: str) -> str:
    # A constant for torch.compile: the answer depends only on the arguments and on what is
    # installed, and a traced graph must not call importlib.
    device = torch.device(device_type)
    backend = backend or os.environ.get("HYPKERN_BACKEND") or ""
    if backend:
        if backend not in ALL_BACKENDS:
            raise ValueError(f"backend must be one of {ALL_BACKENDS} or None, got {backend!r}")
        ok, why = _supports(backend, device)
        if not ok:
            raise RuntimeError(f"backend {backend!r} cannot run on {device.type}: {why}")
        return backend
    order = ("triton", "native") if device.type == "cuda" else ("native",)
    for name in order:
        if _supports(name, device)[0]:
            return name
    return "reference"


# ----------------------------------------------------------------------------- checks

def _check_matrix(name: str, t, dim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, D), got shape {tuple(t.shape)}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have D >= 1 columns, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns to match the first input, got shape {tuple(t.shape)}")


def _check_pair(x, y, rowwise: bool, names=("x", "y")) -> None:
    _check_matrix(names[0], x)
    _check_matrix(names[1], y, dim=x.shape[1])
    if y.dtype != x.dtype:
        raise TypeError(f"{names[0]} and {names[1]} must share a dtype, got {x.dtype} and {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"{names[0]} and {names[1]} must be on one device, got {x.device} and {y.device}")
    if rowwise and y.shape[0] != x.shape[0]:
        raise ValueError(f"{names[1]} must have as many rows as {names[0]} ({x.shape[0]}), got {y.shape[0]}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def as_positive_scalar(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """Check a Python float or 0-dim tensor is finite and > 0; return it as a 0-dim tensor of
    the compute dtype on ``like``'s device (differentiably, for tensors)."""
    dtype = compute_dtype(like.dtype)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.ndim > 1:
            raise ValueError(f"{name} must be a float or a 0-dim tensor, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} must be on the inputs' device {like.device}, got {value.device}")
        if not _is_tracing():
            v = float(value.detach())
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        return value.reshape(()).to(dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return torch.tensor(float(value), dtype=dtype, device=like.device)


def _check_min_radius(min_radius) -> float:
    if isinstance(min_radius, bool) or not isinstance(min_radius, (int, float)):
        raise TypeError(f"min_radius must be a float, got {type(min_radius).__name__}")
    if not (math.isfinite(min_radius) and min_radius > 0):
        raise ValueError(f"min_radius must be finite and > 0, got {min_radius}")
    return float(min_radius)


# ----------------------------------------------------------------------------- custom ops

def _kernels(backend: str):
    module, reason = _kernel_module(backend)
    if module is None:
        raise RuntimeError(f"backend {backend!r} is not available: {reason}")
    return module


def _define(name: str, arg_names: tuple[str, ...], has_radius: bool, out_shape):
    """Register ``hypkern::name`` and ``hypkern::name_backward`` with fake kernels and autograd."""
    tensor_args = ", ".join(f"Tensor {a}" for a in arg_names)
    radius = ", float min_radius" if has_radius else ""
    n_grads = len(arg_names) + 1
    grads_ret = "(" + ", ".join(["Tensor"] * n_grads) + ")"

    def fwd(*args):
        *tensors, backend = args
        return getattr(_kernels(backend), f"{name}_fwd")(*tensors)

    def bwd(*args):
        grad, *rest, backend = args
        return tuple(getattr(_kernels(backend), f"{name}_bwd")(grad.contiguous(), *rest))

    op = torch.library.custom_op(
        f"hypkern::{name}", fwd, mutates_args=(),
        schema=f"({tensor_args}, Tensor curv{radius}, str backend) -> Tensor")
    op_bwd = torch.library.custom_op(
        f"hypkern::{name}_backward", bwd, mutates_args=(),
        schema=f"(Tensor grad, {tensor_args}, Tensor curv{radius}, str backend) -> {grads_ret}")

    @op.register_fake
    def _(*args):
        tensors = args[:len(arg_names)]
        return tensors[0].new_empty(out_shape(*tensors))

    @op_bwd.register_fake
    def _(*args):
        tensors = args[1:len(arg_names) + 1]
        curv = args[len(arg_names) + 1]
        return tuple(t.new_empty(t.shape) for t in tensors) + (curv.new_empty(()),)

    n_tensors = len(arg_names) + 1  # the inputs and curv

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.extras = tuple(inputs[n_tensors:])  # ([min_radius,] backend)

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        grads = op_bwd(grad, *saved, *ctx.extras)
        return tuple(grads) + (None,) * (len(ctx.extras))

    op.register_autograd(backward, setup_context=setup_context)
    return op


_rows = lambda x, *_: (x.shape[0],)  # noqa: E731
_OPS = {
    "pairwise_inner": _define("pairwise_inner", ("x", "y"), False, lambda x, y: (x.shape[0], y.shape[0])),
    "pairwise_dist": _define("pairwise_dist", ("x", "y"), False, lambda x, y: (x.shape[0], y.shape[0])),
    "dist": _define("dist", ("x", "y"), False, _rows),
    "exp_map0": _define("exp_map0", ("v",), False, lambda v: tuple(v.shape)),
    "log_map0": _define("log_map0", ("x",), False, lambda x: tuple(x.shape)),
    "half_aperture": _define("half_aperture", ("x",), True, _rows),
    "oxy_angle": _define("oxy_angle", ("x", "y"), False, _rows),
}


def _run(name: str, tensors: tuple[torch.Tensor, ...], curv, backend, extra=()):
    c = as_positive_scalar("curv", curv, tensors[0])
    chosen = resolve_backend(backend, tensors[0].device)
    if chosen == "reference" or any(t.shape[0] == 0 for t in tensors):
        return getattr(reference, name)(*tensors, c, *extra)
    return _OPS[name](*(t.contiguous() for t in tensors), c, *extra, chosen)


# ----------------------------------------------------------------------------- public API

def pairwise_inner(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Lorentz inner products ``<x_i, y_j>_L = x_i.y_j - x_t,i y_t,j``: (N, D), (M, D) -> (N, M)."""
    _check_pair(x, y, rowwise=False)
    return _run("pairwise_inner", (x, y), curv, backend)


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Geodesic distances ``acosh(-c<x_i, y_j>_L)/sqrt(c)``: (N, D), (M, D) -> (N, M)."""
    _check_pair(x, y, rowwise=False)
    return _run("pairwise_dist", (x, y), curv, backend)


def dist(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Row-wise geodesic distance ``d(x_i, y_i)``: (N, D), (N, D) -> (N,)."""
    _check_pair(x, y, rowwise=True)
    return _run("dist", (x, y), curv, backend)


def exp_map0(v: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Exponential map at the origin ``sinh(sqrt(c)|v|) v/(sqrt(c)|v|)`` (``sqrt(c)|v|`` capped
    at ``asinh(2^15)``): (N, D) -> (N, D)."""
    _check_matrix("v", v)
    return _run("exp_map0", (v,), curv, backend)


def log_map0(x: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Logarithmic map at the origin ``asinh(sqrt(c)|x|) x/(sqrt(c)|x|)``: (N, D) -> (N, D)."""
    _check_matrix("x", x)
    return _run("log_map0", (x,), curv, backend)


def half_aperture(x: torch.Tensor, curv, min_radius: float = 0.1, *, backend: str | None = None) -> torch.Tensor:
    """Entailment-cone half-aperture ``asin(2K/(sqrt(c)|x|))``, argument clipped at
    ``1 - 1e-6``: (N, D) -> (N,)."""
    _check_matrix("x", x)
    return _run("half_aperture", (x,), curv, backend, (_check_min_radius(min_radius),))


def oxy_angle(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Exterior angle at ``x`` of the triangle O-x-y: (N, D), (N, D) -> (N,)."""
    _check_pair(x, y, rowwise=True)
    return _run("oxy_angle", (x, y), curv, backend)
