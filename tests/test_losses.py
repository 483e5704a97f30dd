"""Fused losses against the materialised float64 reference: value and every gradient (image,
text, logit scale, curvature), diagonal and other positives with weights, N != M, gradcheck,
hard inputs, open_clip's ClipLoss, entailment and its calibration, argument checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hypkern
from hypkern import losses as HL
from hypkern.lorentz import reference as R
from hypkern.losses import reference as LR

from conftest import TOLERANCES, hard_inputs, triton_interpreter_on

triton_ok = torch.cuda.is_available() or triton_interpreter_on()
needs_triton = pytest.mark.skipif(not triton_ok, reason="needs CUDA or TRITON_INTERPRET=1")


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _features(n, m, d, dtype, seed=0, scale=0.6, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * scale
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _positives(n, m, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, m, (n,), generator=g)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.05
    w[0] = 0.0  # a pair that must not count
    return t.to(device), w.to(device)


def _run(kind, backend, x, y, s, c, targets=None, weights=None, blocks=None):
    """Loss and gradients (x, y, s[, c]) of one backend; s, c as float64 leaves."""
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    s_t = torch.tensor(s, dtype=torch.float64, device=x.device, requires_grad=True)
    c_t = torch.tensor(c, dtype=torch.float64, device=x.device, requires_grad=True)
    kw = dict(backend=backend)
    if blocks is not None:
        kw["blocks"] = blocks
    if kind == "lorentz":
        loss = HL.lorentz_contrastive_loss(x, y, s_t, c_t, targets, weights, **kw)
        wrt = [x, y, s_t, c_t]
    else:
        loss = HL.clip_contrastive_loss(x, y, s_t, targets, weights, **kw)
        wrt = [x, y, s_t]
    grads = torch.autograd.grad(loss, wrt)
    return loss.detach(), grads


def _oracle(kind, x, y, s, c, targets=None, weights=None):
    x64, y64 = x.detach().cpu().double(), y.detach().cpu().double()
    t = None if targets is None else targets.cpu()
    w = None if weights is None else weights.cpu().double()
    return _run(kind, "reference", x64, y64, s, c, t, w)


def _assert_matches(got, want, dtype, what, grad_scale=1.0):
    tol = TOLERANCES[dtype]
    (l1, g1), (l0, g0) = got, want
    torch.testing.assert_close(l1.double().cpu(), l0, **tol, msg=lambda m: f"{what} loss: {m}")
    names = ["d image", "d text", "d logit_scale", "d curv"]
    for a, b, name in zip(g1, g0, names):
        a = a.double().cpu()
        assert torch.isfinite(a).all(), f"{what} {name}: non-finite"
        torch.testing.assert_close(a, b, atol=tol["atol"] * grad_scale, rtol=tol["rtol"],
                                   msg=lambda m: f"{what} {name}: {m}")


# ----------------------------------------------------------------------------- chunked (CPU)

CASES = [
    # (n, m, d, targets?)
    (13, 13, 6, False),
    (11, 7, 5, True),    # N != M, other positives, weights
    (6, 17, 3, True),
]


@pytest.mark.parametrize("kind", ["lorentz", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,m,d,with_targets", CASES)
def test_chunked_matches_reference(kind, dtype, n, m, d, with_targets):
    x, y = _features(n, m, d, dtype)
    t, w = _positives(n, m) if with_targets else (None, None)
    want = _oracle(kind, x, y, 5.0, 0.7, t, w)
    # Tiles smaller than the batch, with ragged edges, so the online merge is exercised.
    for blocks in [(4, 5), (64, 64)]:
        got = _run(kind, "chunked", x, y, 5.0, 0.7, t, w, blocks=blocks)
        _assert_matches(got, want, dtype, f"chunked {kind} {dtype} blocks={blocks}")


def test_default_backend_on_cpu_is_chunked(monkeypatch):
    monkeypatch.delenv("HYPKERN_BACKEND", raising=False)
    assert HL.resolve_loss_backend(None, torch.device("cpu")) == "chunked"
    assert HL.resolve_loss_backend(None, torch.device("cpu"), kind="clip") == "chunked"
    x, y = _features(8, 8, 4, torch.float64)
    torch.testing.assert_close(hypkern.lorentz_contrastive_loss(x, y, 3.0, 1.0),
                               LR.lorentz_contrastive_loss(x, y, 3.0, 1.0), atol=1e-12, rtol=1e-12)


def test_float16_inputs_give_float32_loss_and_grads_in_input_dtype():
    x, y = _features(9, 9, 8, torch.bfloat16)
    xg = x.clone().requires_grad_(True)
    loss = HL.lorentz_contrastive_loss(xg, y, 2.0, 1.0, backend="chunked", blocks=(4, 4))
    loss.backward()
    assert loss.dtype == torch.float32 and xg.grad.dtype == torch.bfloat16
    ref = LR.lorentz_contrastive_loss(x.double(), y.double(), 2.0, 1.0)
    torch.testing.assert_close(loss.double(), ref, **TOLERANCES[torch.bfloat16])


@pytest.mark.parametrize("kind", ["lorentz", "cosine"])
def test_chunked_gradcheck(kind):
    g = torch.Generator().manual_seed(5)
    n, m, d = 5, 4, 3
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.7).requires_grad_(True)
    y = (torch.randn(m, d, generator=g, dtype=torch.float64) * 0.7).requires_grad_(True)
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, 0, 3, 3, 2])
    w = (torch.rand(n, generator=g, dtype=torch.float64) + 0.2).requires_grad_(True)
    if kind == "lorentz":
        fn = lambda x, y, s, c, w: HL.lorentz_contrastive_loss(x, y, s, c, t, w, backend="chunked", blocks=(2, 3))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y, s, c, w))
    else:
        fn = lambda x, y, s, w: HL.clip_contrastive_loss(x, y, s, t, w, backend="chunked", blocks=(2, 3))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y, s, w))


def _hard_batch(dtype):
    """Duplicates, near-duplicates, the origin, huge and tiny norms."""
    x, y = hard_inputs("pairwise_dist", d=8, dtype=torch.float64)
    x = torch.cat([x, x[3:4], x[3:4]])           # duplicate image rows
    y = torch.cat([y, x[3:4], x[3:4] * 3.0])     # a text equal to an image
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("kind", ["lorentz", "cosine"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0, 300.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hard_inputs_finite(kind, scale, dtype):
    x, y = _hard_batch(dtype)
    loss, grads = _run(kind, "chunked", x, y, scale, 1.0, blocks=(3, 4))
    assert torch.isfinite(loss), f"{kind} s={scale}: loss {loss}"
    for gr in grads:
        assert torch.isfinite(gr).all(), f"{kind} s={scale}: non-finite gradient"
    if dtype == torch.float64:
        # Same math as the reference, so it agrees even here; near-coincident points make
        # d(distance)/du ~ 1/sqrt(u) ill-conditioned, hence the relative gradient tolerance.
        want = _oracle(kind, x, y, scale, 1.0)
        torch.testing.assert_close(loss, want[0], atol=1e-8, rtol=1e-8)
        for a, b in zip(grads, want[1]):
            torch.testing.assert_close(a, b, atol=1e-6 * float(b.abs().max()), rtol=1e-4)


def test_huge_logit_range_online_max():
    # s = 300 on points spread far apart: logits span thousands; a fixed-shift LSE would underflow.
    x, y = _features(12, 12, 4, torch.float64, scale=3.0)
    got = _run("lorentz", "chunked", x, y, 300.0, 1.0, blocks=(5, 5))
    want = _oracle("lorentz", x, y, 300.0, 1.0)
    _assert_matches(got, want, torch.float64, "s=300", grad_scale=1e3)


@pytest.mark.parametrize("backend", ["chunked", pytest.param("triton", marks=[pytest.mark.triton, needs_triton])])
def test_clip_loss_equals_open_clip(backend):
    open_clip_loss = pytest.importorskip("open_clip.loss")
    dev = _device(backend)
    x, y = _features(16, 16, 12, torch.float32, seed=7, device=dev)
    s = 1 / 0.07
    ours = HL.clip_contrastive_loss(x, y, s, backend=backend)
    theirs = open_clip_loss.ClipLoss()(F.normalize(x, dim=-1), F.normalize(y, dim=-1), torch.tensor(s, device=dev))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # and the gradients w.r.t. the raw features
    xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    xb, yb = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    HL.clip_contrastive_loss(xa, ya, s, backend=backend).backward()
    open_clip_loss.ClipLoss()(F.normalize(xb, dim=-1), F.normalize(yb, dim=-1), torch.tensor(s, device=dev)).backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ya.grad, yb.grad, atol=1e-5, rtol=1e-4)


def test_contrastive_module():
    x, y = _features(8, 8, 5, torch.float64)
    mod = HL.ContrastiveLoss("lorentz", backend="chunked")
    torch.testing.assert_close(mod(x, y, 2.0, 0.5), LR.lorentz_contrastive_loss(x, y, 2.0, 0.5))
    mod = HL.ContrastiveLoss("euclidean", backend="chunked")
    torch.testing.assert_close(mod(x, y, 2.0), LR.clip_contrastive_loss(x, y, 2.0))


def test_no_dense_logits_in_chunked_autograd_graph():
    # Everything autograd keeps is O((N + M) D): no tensor with N * M elements.
    n, m, d = 300, 200, 4
    x, y = _features(n, m, d, torch.float32)
    x.requires_grad_(True)
    t = torch.arange(n) % m
    sizes = []

    def pack(saved):
        sizes.append(saved.numel())
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved):
        loss = HL.lorentz_contrastive_loss(x, y, 2.0, 1.0, t, backend="chunked", blocks=(64, 64))
    loss.backward()
    assert sizes and max(sizes) <= (n + m) * (d + 1), sizes


# ----------------------------------------------------------------------------- entailment

def _ent_inputs(dtype, hard=False):
    if hard:
        x, y = hard_inputs("oxy_angle", d=8, dtype=torch.float64)
        x, y = torch.cat([x, y]), torch.cat([y, x])
    else:
        g = torch.Generator().manual_seed(11)
        x = torch.randn(40, 6, generator=g, dtype=torch.float64) * 0.8
        y = torch.randn(40, 6, generator=g, dtype=torch.float64) * 1.2
    return x.to(dtype), y.to(dtype)


def _ent_ref(fn, x, y, c, **kw):
    x64 = x.detach().cpu().double().requires_grad_(True)
    y64 = y.detach().cpu().double().requires_grad_(True)
    c64 = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    sign, margin = (1.0, 0.0) if fn == "entailment" else (-1.0, kw["margin"])
    loss = F.relu(sign * (R.oxy_angle(x64, y64, c64) - R.half_aperture(x64, c64, 0.1)) + margin).mean()
    return loss.detach(), torch.autograd.grad(loss, [x64, y64, c64])


def _ent_run(fn, backend, x, y, c, **kw):
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    c_t = torch.tensor(c, dtype=torch.float64, device=x.device, requires_grad=True)
    if fn == "entailment":
        loss = hypkern.entailment_loss(x, y, c_t, backend=backend)
    else:
        loss = HL.entailment_calibration_loss(x, y, c_t, kw["margin"], backend=backend)
    return loss.detach(), torch.autograd.grad(loss, [x, y, c_t])


ENT_BACKENDS = ["reference", pytest.param("native", marks=pytest.mark.native)]


@pytest.mark.parametrize("backend", ENT_BACKENDS)
@pytest.mark.parametrize("fn,margin", [("entailment", 0.0), ("calibration", 0.05), ("calibration", 1.5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hard", [False, True])
def test_entailment_matches_float64(backend, fn, margin, dtype, hard):
    x, y = _ent_inputs(dtype, hard)
    got = _ent_run(fn, backend, x, y, 0.8, margin=margin)
    assert torch.isfinite(got[0]) and all(torch.isfinite(g).all() for g in got[1])
    if hard and dtype == torch.float32:
        return  # norms of 1e4 in float32: finite is the claim, not agreement
    want = _ent_ref(fn, x, y, 0.8, margin=margin)
    tol = dict(atol=1e-9, rtol=1e-7) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0].double(), want[0], **tol)
    for a, b in zip(got[1], want[1]):
        if hard:  # gradients up to ~1e4 at norms of 1e4: relative to the largest
            tol = dict(atol=max(1e-12, 1e-10 * float(b.abs().max())), rtol=1e-9)
        torch.testing.assert_close(a.double(), b, **tol)


@pytest.mark.parametrize("backend", ENT_BACKENDS)
def test_entailment_gradcheck(backend):
    x, y = _ent_inputs(torch.float64)
    x, y = x[:8].requires_grad_(True), y[:8].requires_grad_(True)
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, c: hypkern.entailment_loss(x, y, c, backend=backend), (x, y, c))
    assert torch.autograd.gradcheck(
        lambda x, y, c: HL.entailment_calibration_loss(x, y, c, 1.0, backend=backend), (x, y, c))


# ----------------------------------------------------------------------------- argument checks

def test_argument_errors():
    x, y = _features(4, 4, 3, torch.float32)
    L = HL.lorentz_contrastive_loss
    with pytest.raises(ValueError, match="2-D"):
        L(x[0], y, 1.0, 1.0)
    with pytest.raises(ValueError, match="D = 3"):
        L(x, torch.randn(4, 5), 1.0, 1.0)
    with pytest.raises(TypeError, match="share a dtype"):
        L(x, y.double(), 1.0, 1.0)
    with pytest.raises(TypeError, match="float16, bfloat16"):
        L(x.int(), y.int(), 1.0, 1.0)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0"):
        L(x, y, -1.0, 1.0)
    with pytest.raises(ValueError, match="curv must be finite and > 0"):
        L(x, y, 1.0, 0.0)
    with pytest.raises(ValueError, match="same number of rows"):
        L(x, y[:3], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        L(x, y, 1.0, 1.0, targets=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="targets must have shape"):
        L(x, y, 1.0, 1.0, targets=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer tensor"):
        L(x, y, 1.0, 1.0, targets=torch.zeros(4))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        L(x, y, 1.0, 1.0, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must have shape"):
        L(x, y, 1.0, 1.0, weights=torch.ones(3))
    with pytest.raises(ValueError, match="not all be zero"):
        L(x, y, 1.0, 1.0, weights=torch.zeros(4))
    with pytest.raises(ValueError, match="backend must be one of"):
        L(x, y, 1.0, 1.0, backend="nope")
    with pytest.raises(ValueError, match="at least one"):
        L(x[:0], y[:0], 1.0, 1.0)
    with pytest.raises(ValueError, match="as many rows"):
        hypkern.entailment_loss(x, y[:3], 1.0)
    with pytest.raises(ValueError, match="min_radius"):
        hypkern.entailment_loss(x, y, 1.0, min_radius=0.0)
    with pytest.raises(TypeError, match="margin"):
        HL.entailment_calibration_loss(x, y, 1.0, margin=None)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0"):
        HL.clip_contrastive_loss(x, y, 0.0)


# ----------------------------------------------------------------------------- Triton

@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("kind", ["lorentz", "cosine"])
@pytest.mark.parametrize("n,m,d,with_targets", [(20, 20, 10, False), (19, 12, 7, True)])
def test_triton_matches_reference(kind, n, m, d, with_targets):
    dev = _device("triton")
    x, y = _features(n, m, d, torch.float32, device=dev)
    t, w = _positives(n, m, device=dev) if with_targets else (None, None)
    want = _oracle(kind, x, y, 5.0, 0.7, t, w)
    got = _run(kind, "triton", x, y, 5.0, 0.7, t, w)
    _assert_matches(got, want, torch.float32, f"triton {kind}")


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("kind", ["lorentz", "cosine"])
def test_triton_float64_several_tiles(kind):
    # More rows and columns than one program's tile (128 in the interpreter): the online
    # max/sum merges across tiles; float64 must agree to rounding.
    dev = _device("triton")
    x, y = _features(150, 131, 4, torch.float64, scale=1.5, device=dev)
    t, w = _positives(150, 131, device=dev)
    want = _oracle(kind, x, y, 40.0, 0.7, t, w)
    got = _run(kind, "triton", x, y, 40.0, 0.7, t, w)
    _assert_matches(got, want, torch.float64, f"triton float64 {kind}")


@pytest.mark.triton
@needs_triton
def test_triton_gradcheck():
    g = torch.Generator().manual_seed(5)
    dev = _device("triton")
    x = (torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.7).to(dev).requires_grad_(True)
    y = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.7).to(dev).requires_grad_(True)
    s = torch.tensor(2.5, dtype=torch.float64, device=dev, requires_grad=True)
    c = torch.tensor(0.9, dtype=torch.float64, device=dev, requires_grad=True)
    t = torch.tensor([1, 0, 3, 3, 2], device=dev)
    fn = lambda x, y, s, c: HL.lorentz_contrastive_loss(x, y, s, c, t, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y, s, c))
    ent = lambda x, c: HL.entailment_calibration_loss(x, x.flip(0) * 2.0, c, 0.2, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(ent, (x, c))


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("kind", ["lorentz", "cosine"])
def test_triton_hard_inputs_finite(kind):
    dev = _device("triton")
    x, y = _hard_batch(torch.float32)
    for scale in (1e-3, 300.0):
        loss, grads = _run(kind, "triton", x.to(dev), y.to(dev), scale, 1.0)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads), (kind, scale)


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("fn,margin", [("entailment", 0.0), ("calibration", 0.3)])
@pytest.mark.parametrize("hard", [False, True])
def test_triton_entailment_matches_reference(fn, margin, hard):
    dev = _device("triton")
    x, y = _ent_inputs(torch.float32, hard)
    got = _ent_run(fn, "triton", x.to(dev), y.to(dev), 0.8, margin=margin)
    assert torch.isfinite(got[0]) and all(torch.isfinite(g).all() for g in got[1])
    if not hard:
        want = _ent_ref(fn, x, y, 0.8, margin=margin)
        torch.testing.assert_close(got[0].double().cpu(), want[0], atol=1e-4, rtol=1e-4)
        for a, b in zip(got[1], want[1]):
            torch.testing.assert_close(a.double().cpu(), b, atol=1e-4, rtol=1e-4)
    # float64: the same formulas as the reference, so agreement to rounding even on hard inputs.
    x64, y64 = x.double(), y.double()
    got = _ent_run(fn, "triton", x64.to(dev), y64.to(dev), 0.8, margin=margin)
    want = _ent_ref(fn, x64, y64, 0.8, margin=margin)
    torch.testing.assert_close(got[0].cpu(), want[0], atol=1e-12, rtol=1e-10)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a.cpu(), b, atol=max(1e-12, 1e-10 * float(b.abs().max())), rtol=1e-9)
