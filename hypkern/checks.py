"""Argument checks shared by the geometry ops and the losses: clear errors that name the
argument and say what was expected.

Two kinds of check:

* **Shape/type checks** (rank, ``D``, dtype, device) read only metadata: always on, free.
* **Value checks** (``curv > 0`` and finite, targets in range, weights finite and
  non-negative) read tensor *values*, which on a GPU is a device->host synchronisation.
  They run by default and can be switched off where the values are known to be good, e.g.
  inside a training loop after its first step: ``with hypkern.checks.value_checks(False):``
  or ``HYPKERN_VALUE_CHECKS=0``. They are skipped while ``torch.compile`` traces.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch

__all__ = [
    "FLOAT_DTYPES", "compute_dtype", "upcast", "saturate_half", "is_tracing", "value_checks", "value_checks_enabled",
    "check_matrix", "check_pair", "positive_scalar", "check_min_radius", "check_targets",
    "check_weights",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_VALUE_CHECKS = [os.environ.get("HYPKERN_VALUE_CHECKS", "1").strip().lower() not in ("0", "false", "no", "off")]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, else float32 (half precision computes in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


HALF_DTYPES = (torch.float16, torch.bfloat16)


def saturate_half(g: torch.Tensor) -> torch.Tensor:
    """A half-precision gradient with overflow (``±inf``) saturated to the dtype's largest
    finite value; NaN stays NaN. Other dtypes unchanged."""
    if g.dtype not in HALF_DTYPES:
        return g
    fmax = torch.finfo(g.dtype).max
    return g.clamp(-fmax, fmax)


class _SaturatingUpcast(torch.autograd.Function):
    """``t.to(dtype)`` whose backward saturates the gradient into ``t``'s (half) dtype."""

    @staticmethod
    def forward(ctx, t, dtype):
        ctx.in_dtype = t.dtype
        return t.to(dtype)

    @staticmethod
    def backward(ctx, g):
        fmax = torch.finfo(ctx.in_dtype).max
        return g.clamp(-fmax, fmax).to(ctx.in_dtype), None


def upcast(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` in ``dtype`` (default its compute dtype). The half-precision contract: fp16/bf16
    inputs compute in float32, and a gradient flowing back into a half input that exceeds its
    range is saturated to the largest finite value instead of overflowing to ``inf``."""
    dtype = dtype or compute_dtype(t.dtype)
    if t.dtype == dtype:
        return t
    if t.dtype in HALF_DTYPES and t.requires_grad and torch.is_grad_enabled():
        return _SaturatingUpcast.apply(t, dtype)
    return t.to(dtype)


def is_tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def value_checks_enabled() -> bool:
    """Whether checks that read tensor values (a host sync on GPU) run now."""
    return _VALUE_CHECKS[0] and not is_tracing()


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Switch the value checks on or off inside the ``with`` block (restored on exit)."""
    old = _VALUE_CHECKS[0]
    _VALUE_CHECKS[0] = bool(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS[0] = old


def check_matrix(name: str, t, dim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, D), got shape {tuple(t.shape)}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have D >= 1 columns, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns to match the first input, got shape {tuple(t.shape)}")


def check_pair(x, y, rowwise: bool, names=("x", "y")) -> None:
    check_matrix(names[0], x)
    check_matrix(names[1], y, dim=x.shape[1])
    if y.dtype != x.dtype:
        raise TypeError(f"{names[0]} and {names[1]} must share a dtype, got {x.dtype} and {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"{names[0]} and {names[1]} must be on one device, got {x.device} and {y.device}")
    if rowwise and y.shape[0] != x.shape[0]:
        raise ValueError(f"{names[1]} must have as many rows as {names[0]} ({x.shape[0]}), got {y.shape[0]}")


def positive_scalar(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """Check a Python float or 0-dim tensor is finite and > 0; return it as a 0-dim tensor of
    the compute dtype on ``like``'s device (differentiably, for tensors). A tensor's value is
    checked only while :func:`value_checks_enabled`."""
    dtype = compute_dtype(like.dtype)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.ndim > 1:
            raise ValueError(f"{name} must be a float or a 0-dim tensor, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} must be on the inputs' device {like.device}, got {value.device}")
        if value_checks_enabled():
            v = float(value.detach())
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        return upcast(value.reshape(()), dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return torch.tensor(float(value), dtype=dtype, device=like.device)


def check_min_radius(min_radius) -> float:
    if isinstance(min_radius, bool) or not isinstance(min_radius, (int, float)):
        raise TypeError(f"min_radius must be a float, got {type(min_radius).__name__}")
    if not (math.isfinite(min_radius) and min_radius > 0):
        raise ValueError(f"min_radius must be finite and > 0, got {min_radius}")
    return float(min_radius)


def check_targets(targets, n: int, m: int, device: torch.device, what: str = "text") -> torch.Tensor:
    """(N,) int64 positive-text index per image; the diagonal when None (needs N == M)."""
    if targets is None:
        if n != m:
            raise ValueError(f"without targets, image and {what} need the same number of rows, got {n} and {m}")
        return torch.arange(n, device=device)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be an integer torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    if tuple(targets.shape) != (n,):
        raise ValueError(f"targets must have shape ({n},) (one text index per image), got {tuple(targets.shape)}")
    if targets.device != device:
        raise ValueError(f"targets must be on the inputs' device {device}, got {targets.device}")
    t = targets.long()
    if n and value_checks_enabled():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= m:
            raise ValueError(f"targets must lie in [0, {m}) ({m} texts), got values in [{lo}, {hi}]")
    return t


def check_weights(weights, n: int, device: torch.device, need_positive_sum: bool = True):
    """None, or an (N,) finite non-negative float tensor with a positive sum (the sum is
    checked over all ranks instead when distributed)."""
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a floating torch.Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating tensor, got {weights.dtype}")
    if tuple(weights.shape) != (n,):
        raise ValueError(f"weights must have shape ({n},) (one weight per image), got {tuple(weights.shape)}")
    if weights.device != device:
        raise ValueError(f"weights must be on the inputs' device {device}, got {weights.device}")
    if value_checks_enabled():
        w = weights.detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights must be finite")
        if bool((w < 0).any()):
            raise ValueError(f"weights must be >= 0, got a minimum of {float(w.min())}")
        if need_positive_sum and n and not float(w.sum()) > 0:
            raise ValueError("weights must not all be zero")
    return weights
