"""Points near the origin (issue: exact fp32 gradients of the fused Lorentz loss) and the rule
at coincident points, on every backend against the float64 reference.

Inputs: random directions times norms log-uniform from 1e-6 to 30/sqrt(c), c = 0.1 — where
MERU's generic concepts, freshly initialised projections and HAC's norm regularisation put
embeddings. The pairwise form ``u = -c<x,y>_L - 1`` is cancellation-free (relative to the
norms, not to 1/c), so float32 values and every gradient (curvature and logit scale included)
stay within 1e-3 of float64 in norm."""
from __future__ import annotations

import math

import pytest
import torch

import hypkern
from hypkern import losses as HL

from conftest import backend_device, registry_backends
from hypkern.lorentz import reference as R
from hypkern.losses import reference as LR

C = 0.1
SCALE = 50.0


_backends = registry_backends


_device = backend_device


def near_origin(n, d=32, c=C, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, d, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    lo, hi = math.log(1e-6), math.log(30.0 / math.sqrt(c))
    return dirs * torch.exp(lo + (hi - lo) * torch.rand(n, 1, generator=g, dtype=torch.float64))


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def _grads(fn, tensors, dtype, device):
    leaves = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in tensors]
    s = torch.tensor(SCALE, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.tensor(C, dtype=torch.float64, device=device, requires_grad=True)
    out = fn(*leaves, s, c)
    return [out] + list(torch.autograd.grad(out, leaves + [s, c], allow_unused=True))


@pytest.mark.parametrize("backend", _backends("pairwise_dist"))
def test_pairwise_dist_fp32_near_origin(backend):
    x, y = near_origin(40, seed=0), near_origin(24, seed=1)
    gout = torch.randn(40, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dev = _device(backend)

    def f(x, y, s, c, backend=backend):
        d = hypkern.pairwise_dist(x, y, c, backend=backend) if backend else R.pairwise_dist(x, y, c)
        return (d.double() * gout.to(d.device)).sum()
    want = _grads(lambda x, y, s, c: f(x, y, s, c, None), [x, y], torch.float64, "cpu")
    got = _grads(f, [x, y], torch.float32, dev)
    for name, a, b in zip(("value", "d/dx", "d/dy", None, "d/dc"), got, want):
        if name is not None:
            assert _rel(a, b) <= 1e-3, (backend, name, _rel(a, b))
    d32 = hypkern.pairwise_dist(x.float().to(dev), y.float().to(dev), C, backend=backend).double().cpu()
    d64 = R.pairwise_dist(x, y, C)
    assert float(((d32 - d64).abs() / d64).max()) <= 1e-3  # every entry, not only in norm


@pytest.mark.parametrize("backend", _backends("lorentz_contrastive"))
@pytest.mark.parametrize("weighted", [False, True])
def test_lorentz_contrastive_fp32_near_origin(backend, weighted):
    """The issue's reproduction (64 x 64, D = 32, c = 0.1, s = 50): float32 chunked had a
    relative gradient error of 9.7 against float64; every backend is now within 1e-3 for the
    loss, the image and text gradients, the logit scale and the curvature."""
    x, y = near_origin(64, seed=0), near_origin(64, seed=1)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 64, (64,), generator=g) if weighted else None
    w = (torch.rand(64, generator=g, dtype=torch.float64) + 0.1) if weighted else None
    dev = _device(backend)

    def f(x, y, s, c, backend=backend):
        tt = None if t is None else t.to(x.device)
        ww = None if w is None else w.to(x.device)
        if backend is None:
            return LR.lorentz_contrastive_loss(x, y, s, c, tt, ww)
        return HL.lorentz_contrastive_loss(x, y, s, c, tt, ww, backend=backend)
    want = _grads(lambda x, y, s, c: f(x, y, s, c, None), [x, y], torch.float64, "cpu")
    got = _grads(f, [x, y], torch.float32, dev)
    for name, a, b in zip(("loss", "d/dimage", "d/dtext", "d/ds", "d/dc"), got, want):
        assert _rel(a, b) <= 1e-3, (backend, name, _rel(a, b))


# ----------------------------------------------------------------------------- coincident points

@pytest.mark.parametrize("backend", _backends("oxy_angle"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_oxy_angle_at_coincident_points_is_pi_over_2_with_zero_gradient(backend, dtype):
    """The angle is undefined at x = y and at x = 0: pi/2, and a zero gradient w.r.t. x, y and
    curvature (before: ~1.9e5 at |x| = 0.012, overflowing in fp16)."""
    dev = _device(backend)
    x = near_origin(6, d=8, seed=4)
    x = torch.cat([x, torch.zeros(1, 8, dtype=torch.float64)])
    x[0] = x[0] / x[0].norm() * 0.012
    xs = x.to(device=dev, dtype=dtype).requires_grad_(True)
    ys = x.to(device=dev, dtype=dtype).requires_grad_(True)
    c = torch.tensor(C, device=dev, dtype=torch.float64, requires_grad=True)
    out = hypkern.oxy_angle(xs, ys, c, backend=backend)
    torch.testing.assert_close(out.double().cpu(), torch.full((7,), math.pi / 2, dtype=torch.float64),
                               atol=2e-3 if dtype == torch.float16 else 1e-6, rtol=0)
    gx, gy, gc = torch.autograd.grad(out.sum(), [xs, ys, c])
    assert (gx == 0).all() and (gy == 0).all() and gc == 0, (gx, gy, gc)


@pytest.mark.parametrize("backend", _backends("dist"))
def test_dist_at_coincident_points_is_zero_with_zero_gradient(backend):
    dev = _device(backend)
    x = near_origin(6, d=8, seed=5).to(dev).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    c = torch.tensor(C, device=dev, dtype=torch.float64, requires_grad=True)
    out = hypkern.dist(x, y, c, backend=backend)
    assert (out == 0).all()
    gx, gy, gc = torch.autograd.grad(out.sum(), [x, y, c])
    assert (gx == 0).all() and (gy == 0).all() and gc == 0


@pytest.mark.parametrize("backend", _backends("pairwise_dist"))
def test_pairwise_dist_diagonal_at_coincident_points(backend):
    """The pairwise (GEMM) form cannot see coincidence exactly: d(x, x) is 0 up to rounding
    relative to |x| (not to 1/c), and the gradient there stays bounded by the clip."""
    dev = _device(backend)
    x = near_origin(5, d=8, seed=6).to(dev).requires_grad_(True)
    c = torch.tensor(C, device=dev, dtype=torch.float64, requires_grad=True)
    d = hypkern.pairwise_dist(x, x.detach(), c, backend=backend)
    norms = x.detach().norm(dim=-1)
    assert (d.diagonal().abs() <= 1e-7 * norms).all(), (d.diagonal(), norms)
    gx, gc = torch.autograd.grad(d.diagonal().sum(), [x, c])
    assert torch.isfinite(gx).all() and torch.isfinite(gc)
    assert float(gx.norm(dim=-1).max()) <= 2.0  # |grad_x d(x, y)| <= ~1 for a distance
