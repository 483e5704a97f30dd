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

import torch

from ..checks import check_matrix, check_min_radius, check_pair, compute_dtype, positive_scalar, saturate_half
from ..kernels import registry
from . import reference

__all__ = [
    "pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0", "half_aperture",
    "oxy_angle", "backends", "resolve_backend", "KERNEL_BACKENDS", "ALL_BACKENDS", "compute_dtype",
    "as_positive_scalar", "BackendStatus",
]

#: Backends that run through the custom ops, with the module that holds their kernels.
KERNEL_BACKENDS = {n: b.module for n, b in registry.BACKENDS.items() if n in ("triton", "native")}
ALL_BACKENDS = tuple(registry.BACKENDS)
BackendStatus = registry.BackendStatus
as_positive_scalar = positive_scalar  # the old name


def backends() -> dict[str, registry.BackendStatus]:
    """Which backends are usable here, on which device types, what they implement, and why not."""
    return registry.status()


def resolve_backend(backend, device: torch.device, op: str = "pairwise_dist") -> str:
    """The backend ``op`` will use on ``device`` (see :func:`hypkern.kernels.registry.resolve`)."""
    return registry.resolve(op, backend, torch.device(device).type)


# ----------------------------------------------------------------------------- custom ops

def _define(name: str, arg_names: tuple[str, ...], has_radius: bool, out_shape):
    """Register ``hypkern::name`` and ``hypkern::name_backward`` with fake kernels and autograd."""
    tensor_args = ", ".join(f"Tensor {a}" for a in arg_names)
    radius = ", float min_radius" if has_radius else ""
    n_grads = len(arg_names) + 1
    grads_ret = "(" + ", ".join(["Tensor"] * n_grads) + ")"

    def fwd(*args):
        *tensors, backend = args
        return getattr(registry.kernels(backend), f"{name}_fwd")(*tensors)

    def bwd(*args):
        grad, *rest, backend = args
        return tuple(getattr(registry.kernels(backend), f"{name}_bwd")(grad.contiguous(), *rest))

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
        # the half-precision contract: overflow saturates to the largest finite value
        return tuple(saturate_half(g) for g in grads) + (None,) * (len(ctx.extras))

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
    c = positive_scalar("curv", curv, tensors[0])
    chosen = registry.resolve(name, backend, tensors[0].device.type)
    if chosen == "reference" or any(t.shape[0] == 0 for t in tensors):
        return getattr(reference, name)(*tensors, c, *extra)
    return _OPS[name](*(t.contiguous() for t in tensors), c, *extra, chosen)


# ----------------------------------------------------------------------------- public API

def pairwise_inner(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Lorentz inner products ``<x_i, y_j>_L = x_i.y_j - x_t,i y_t,j``: (N, D), (M, D) -> (N, M)."""
    check_pair(x, y, rowwise=False)
    return _run("pairwise_inner", (x, y), curv, backend)


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Geodesic distances ``acosh(-c<x_i, y_j>_L)/sqrt(c)``: (N, D), (M, D) -> (N, M)."""
    check_pair(x, y, rowwise=False)
    return _run("pairwise_dist", (x, y), curv, backend)


def dist(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Row-wise geodesic distance ``d(x_i, y_i)``: (N, D), (N, D) -> (N,)."""
    check_pair(x, y, rowwise=True)
    return _run("dist", (x, y), curv, backend)


def exp_map0(v: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Exponential map at the origin ``sinh(sqrt(c)|v|) v/(sqrt(c)|v|)`` (``sqrt(c)|v|`` capped
    at ``asinh(2^15)``): (N, D) -> (N, D)."""
    check_matrix("v", v)
    return _run("exp_map0", (v,), curv, backend)


def log_map0(x: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Logarithmic map at the origin ``asinh(sqrt(c)|x|) x/(sqrt(c)|x|)``: (N, D) -> (N, D)."""
    check_matrix("x", x)
    return _run("log_map0", (x,), curv, backend)


def half_aperture(x: torch.Tensor, curv, min_radius: float = 0.1, *, backend: str | None = None) -> torch.Tensor:
    """Entailment-cone half-aperture ``asin(2K/(sqrt(c)|x|))``, argument clipped at
    ``1 - 1e-6``: (N, D) -> (N,)."""
    check_matrix("x", x)
    return _run("half_aperture", (x,), curv, backend, (check_min_radius(min_radius),))


def oxy_angle(x: torch.Tensor, y: torch.Tensor, curv, *, backend: str | None = None) -> torch.Tensor:
    """Exterior angle at ``x`` of the triangle O-x-y: (N, D), (N, D) -> (N,)."""
    check_pair(x, y, rowwise=True)
    return _run("oxy_angle", (x, y), curv, backend)
