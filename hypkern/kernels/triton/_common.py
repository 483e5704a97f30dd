"""Shared launch helpers of the Triton backend: dtypes, block sizes, the row-norm kernel.

Kernels compute in float32 (float64 for float64 inputs): half-precision inputs are converted
on load (Triton's interpreter has no bfloat16 arithmetic) and outputs are cast back on store.
The curvature arrives as a 0-dim tensor and is read inside the kernels (no host sync), and
its gradient is a per-program partial sum that a tiny ``torch.sum`` finishes.
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

try:  # triton >= 3.0
    from triton.runtime.interpreter import InterpretedFunction as _Interpreted
except Exception:  # pragma: no cover - very old triton
    _Interpreted = ()


@triton.jit
def _sqnorm_kernel(X, OUT, N, D, CDT: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """OUT[i] = sum_k X[i, k]^2 in the compute dtype."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    base = rows.to(tl.int64) * D
    acc = tl.zeros([BR], CDT)
    for k0 in range(0, D, BD):
        cols = k0 + tl.arange(0, BD)
        m = rmask[:, None] & (cols[None, :] < D)
        x = tl.load(X + base[:, None] + cols[None, :], mask=m, other=0.0).to(CDT)
        acc += tl.sum(x * x, 1)
    tl.store(OUT + rows, acc, mask=rmask)


#: True when the kernels were built by Triton's interpreter (TRITON_INTERPRET=1 was set when
#: triton decorated them): then they run on CPU tensors, slowly.
INTERPRET = isinstance(_sqnorm_kernel, _Interpreted) if _Interpreted else False


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    """next power of two >= n, clamped into [lo, hi]."""
    p = max(lo, triton.next_power_of_2(max(int(n), 1)))
    return min(p, hi) if hi is not None else p


def row_config(d: int) -> dict:
    """Block sizes for the row-wise kernels: BR rows per program, D in chunks of BD."""
    if INTERPRET:  # few, big programs: the interpreter's cost is per op, not per element
        return dict(BR=128, BD=pow2(d, 16, 512))
    bd = pow2(d, 16, 256)
    return dict(BR=max(1, 4096 // bd) if bd < 256 else 16, BD=bd, num_warps=4)


def sqnorm(x: torch.Tensor) -> torch.Tensor:
    """Row squared norms |x_i|^2 of a contiguous (N, D) tensor, in the compute dtype."""
    n, d = x.shape
    out = torch.empty(n, device=x.device, dtype=compute_dtype(x.dtype))
    cfg = row_config(d)
    _sqnorm_kernel[(triton.cdiv(n, cfg["BR"]),)](x, out, n, d, CDT=tl_compute(x.dtype), **cfg)
    return out


def curv_operand(curv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """curv as a contiguous 1-element tensor of the compute dtype on x's device."""
    return curv.detach().reshape(1).to(device=x.device, dtype=compute_dtype(x.dtype)).contiguous()


def finish_curv_grad(partials: torch.Tensor, curv: torch.Tensor) -> torch.Tensor:
    """Sum the per-program partial curvature gradients into a 0-dim tensor of curv's dtype."""
    return partials.sum().to(curv.dtype).reshape(())
