"""The half-precision and NaN contract on every backend: NaN in gives NaN out (only where the
output depends on it), gradients into half inputs saturate instead of overflowing, and a
sweep of hard rows has no non-finite value for finite inputs."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import hypkern
from hypkern import losses as HL
from hypkern.kernels import registry

from conftest import backend_device, registry_backends

ROWWISE = ("dist", "oxy_angle")
PAIRWISE = ("pairwise_inner", "pairwise_dist")
UNARY = ("exp_map0", "log_map0", "half_aperture")


_backends = registry_backends


def _cases(pairs):
    """``pytest.param(first, backend)`` for each (first, registry op) and every backend of it."""
    out = []
    for first, op in pairs:
        for b in _backends(op):
            out.append(pytest.param(first, b.values[0], marks=b.marks, id=f"{first}-{b.values[0]}"))
    return out


_dev = backend_device


def _pts(n, d=6, seed=0, dtype=torch.float32, dev="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5).to(device=dev, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("op,backend", _cases([(op, op) for op in PAIRWISE + ROWWISE + UNARY]))
def test_nan_in_gives_nan_out(op, backend, dtype):
    dev = _dev(backend)
    x, y = _pts(5, dtype=dtype, dev=dev), _pts(5, seed=1, dtype=dtype, dev=dev)
    x[1, 2] = float("nan")
    x.requires_grad_(True)
    if op in UNARY:
        out = getattr(hypkern, op)(x, 0.7, backend=backend)
        bad = out.isnan().reshape(5, -1).any(1)
        assert bad.tolist() == [False, True, False, False, False], out
        (gx,) = torch.autograd.grad(out, [x], torch.ones_like(out))
        assert gx[1].isnan().all() and torch.isfinite(gx[[0, 2, 3, 4]]).all(), gx  # and in the gradient
        return
    out = getattr(hypkern, op)(x, y, 0.7, backend=backend)
    (gx,) = torch.autograd.grad(out, [x], torch.ones_like(out))
    assert gx[1].isnan().all() and torch.isfinite(gx[[0, 2, 3, 4]]).all(), gx  # and in the gradient
    x = x.detach()
    if op in PAIRWISE:
        assert out[1].isnan().all() and torch.isfinite(out[[0, 2, 3, 4]]).all(), out
        y2 = y.clone()
        y2[3, 0] = float("nan")
        out2 = getattr(hypkern, op)(x.nan_to_num(0.3), y2, 0.7, backend=backend)
        assert out2[:, 3].isnan().all() and torch.isfinite(out2[:, [0, 1, 2, 4]]).all(), out2
    else:
        assert out.isnan().tolist() == [False, True, False, False, False], out


@pytest.mark.parametrize("loss,backend", _cases([("lorentz", "lorentz_contrastive"), ("clip", "clip_contrastive"),
                                                 ("entailment", "entailment")]))
def test_nan_in_a_row_makes_the_loss_nan(loss, backend):
    dev = _dev(backend)
    x, y = _pts(6, dev=dev), _pts(6, seed=1, dev=dev)
    x[4, 1] = float("nan")
    if loss == "lorentz":
        out = HL.lorentz_contrastive_loss(x, y, 5.0, 0.7, backend=backend)
    elif loss == "clip":
        out = HL.clip_contrastive_loss(x, y, 5.0, backend=backend)
    else:
        rows = HL.entailment_rows(x, y, 0.7, backend=backend)
        assert rows.isnan().tolist() == [False] * 4 + [True, False], rows
        out = rows.mean()
    assert out.isnan(), out


@pytest.mark.parametrize("op,backend", _cases([(op, op) for op in ("pairwise_inner", "dist", "oxy_angle")]))
def test_fp16_gradients_saturate_instead_of_overflowing(op, backend):
    """Far from the origin (c = 0.1, |x| ~ 2e3, |y| ~ 2.5e5, nearly collinear) the true
    gradient exceeds fp16's range: the returned gradient is finite, saturated at +-65504
    where the float64 gradient is beyond it, and the curvature gradient is finite."""
    dev = _dev(backend)
    g = torch.Generator().manual_seed(3)
    d = torch.randn(8, 64, generator=g, dtype=torch.float64)
    d /= d.norm(dim=-1, keepdim=True)
    x64 = d * 2e3
    y64 = ((d + 1e-3 * torch.randn(8, 64, generator=g, dtype=torch.float64)) * 2.5e5).clamp(-6e4, 6e4)
    assert torch.isfinite(y64.half()).all()
    x = x64.to(device=dev, dtype=torch.float16).requires_grad_(True)
    y = y64.to(device=dev, dtype=torch.float16).requires_grad_(True)
    c = torch.tensor(0.1, device=dev, dtype=torch.float16, requires_grad=True)
    out = getattr(hypkern, op)(x, y, c, backend=backend)
    gout = torch.ones_like(out)
    gx, gy, gc = torch.autograd.grad(out, [x, y, c], gout)
    for gr in (gx, gy, gc):
        assert torch.isfinite(gr).all(), (op, backend, gr)
    if op == "pairwise_inner":  # d<x,y>_L/dy = x - y x_t/y_t: ~2e3 per entry, summed over 8 rows
        assert gy.abs().max() <= 65504


def _sweep_module():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "half_sweep.py")
    spec = importlib.util.spec_from_file_location("hypkern_half_sweep", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_sweep_of_hard_rows_has_no_non_finite_values(dtype):
    """A small version of benchmarks/half_sweep.py (the committed table runs 10^5 rows per op)."""
    sweep = _sweep_module()
    for op in sweep.OPS:
        rop = sweep.REGISTRY_OP.get(op, op)
        for backend in ("reference", "native", "chunked"):
            if rop not in registry.BACKENDS[backend].implements or not registry.available(backend, "cpu")[0]:
                continue
            bad_fwd, bad_grad, total = sweep.run_case(op, backend, dtype, 1200, 8, seed=7)
            assert total > 0 and (bad_fwd, bad_grad) == (0, 0), (op, backend, dtype, bad_fwd, bad_grad)
