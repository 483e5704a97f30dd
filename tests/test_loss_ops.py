"""The losses as ``torch.library`` custom ops: ``torch.compile(fullgraph=True)`` traces a
training step through all three without a graph break and matches eager, ``opcheck`` passes
on the custom ops, and ``reduction`` gives the per-pair vector the mean is made of."""
from __future__ import annotations

import pytest
import torch

import hypkern
from hypkern import losses as HL
from hypkern.losses import kernels as LK
from hypkern.losses import reference as LR

def _inputs(n=6, m=6, d=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.6).to(dtype)
    y = (torch.randn(m, d, generator=g, dtype=torch.float64) * 0.6).to(dtype)
    return x, y


class _Tiny(torch.nn.Module):
    """Two linear towers and the two scalars, as in a CLIP/MERU training step."""

    def __init__(self, d=5):
        super().__init__()
        torch.manual_seed(0)
        self.img, self.txt = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
        self.log_s = torch.nn.Parameter(torch.tensor(2.0))
        self.log_c = torch.nn.Parameter(torch.tensor(0.0))


def _step(model, a, b, backend):
    x, y = model.img(a), model.txt(b)
    s, c = model.log_s.exp(), model.log_c.exp()
    # chunked has no entailment kernel: a preference list falls through to native / reference
    entail = "native,reference" if backend == "chunked" else backend
    return (HL.lorentz_contrastive_loss(x, y, s, c, backend=backend)
            + HL.clip_contrastive_loss(x, y, s, backend=backend)
            + 0.2 * HL.entailment_loss(y, x, c, backend=entail))


_TRITON_OK = torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize("backend", ["chunked", "reference", pytest.param("triton", marks=[
    pytest.mark.triton, pytest.mark.skipif(not _TRITON_OK, reason="needs CUDA or TRITON_INTERPRET=1")])])
def test_compile_fullgraph_training_step_through_the_losses(backend):
    """fullgraph=True raises on any graph break; forward and every gradient equal eager."""
    torch._dynamo.reset()
    a, b = _inputs()
    model = _Tiny()
    if backend == "triton" and torch.cuda.is_available():
        a, b, model = a.cuda(), b.cuda(), model.cuda()
    eager = _step(model, a, b, backend)
    g_eager = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(_step, fullgraph=True, backend="aot_eager")
    got = compiled(model, a, b, backend)
    g_got = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    for g1, g2 in zip(g_got, g_eager):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_compile_inductor_fused_losses():
    """The real compiler (inductor, C++ on the CPU) around the fused custom ops."""
    torch._dynamo.reset()
    a, b = _inputs(8, 8, 4)
    model = _Tiny(4)
    compiled = torch.compile(_step, fullgraph=True)
    got = compiled(model, a, b, "chunked")
    eager = _step(model, a, b, "chunked")
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(got, list(model.parameters()))
    g_eager = torch.autograd.grad(_step(model, a, b, "chunked"), list(model.parameters()))
    for g1, g2 in zip(g_got, g_eager):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lorentz", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_contrastive_stats(kind, dtype):
    x, y = _inputs(5, 7, 4, dtype=dtype)
    if kind == "cosine":
        x, y = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
    x.requires_grad_(True)
    y.requires_grad_(True)
    c = torch.tensor(0.7, dtype=dtype, requires_grad=kind == "lorentz")
    beta = torch.tensor(3.0, dtype=dtype, requires_grad=True)
    t = torch.tensor([0, 3, 6, 1, 1])
    torch.library.opcheck(LK._contrastive_stats_op, (x, y, c, beta, t, kind, 2, 3, "chunked"))


@pytest.mark.native
@pytest.mark.parametrize("sign,margin", [(1.0, 0.0), (-1.0, 0.1)])
def test_opcheck_entailment_rows(sign, margin):
    x, y = _inputs(6, 6, 5, dtype=torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(LK._entailment_rows_op, (x, y, c, 0.1, sign, margin, "native"))


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("loss", ["lorentz", "clip"])
def test_reduction_none_is_the_per_pair_vector(backend, loss):
    x, y = _inputs(7, 5, 4, dtype=torch.float64)
    t = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    w = torch.tensor([0.5, 1.0, 0.0, 2.0, 1.0, 0.3, 1.0], dtype=torch.float64)
    fn = (lambda **k: HL.lorentz_contrastive_loss(x, y, 4.0, 0.9, t, backend=backend, **k)) if loss == "lorentz" \
        else (lambda **k: HL.clip_contrastive_loss(x, y, 4.0, t, backend=backend, **k))
    per = fn(reduction="none")
    assert per.shape == (7,)
    logits = LR.lorentz_logits(x, y, torch.tensor(4.0, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64)) \
        if loss == "lorentz" else LR.clip_logits(x, y, torch.tensor(4.0, dtype=torch.float64))
    rows = torch.arange(7)
    want = 0.5 * (torch.logsumexp(logits, 1) - logits[rows, t]) + 0.5 * (torch.logsumexp(logits, 0)[t] - logits[rows, t])
    torch.testing.assert_close(per, want, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fn(reduction="sum"), per.sum(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(fn(), per.mean(), atol=1e-12, rtol=1e-12)
    kw = (dict(weights=w) if loss == "clip" else dict(weights=w))
    if loss == "lorentz":
        weighted = HL.lorentz_contrastive_loss(x, y, 4.0, 0.9, t, backend=backend, **kw)
    else:
        weighted = HL.clip_contrastive_loss(x, y, 4.0, t, backend=backend, **kw)
    torch.testing.assert_close(weighted, (w * per).sum() / w.sum(), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(reduction="avg")
    with pytest.raises(ValueError, match="reduction='none'.*weights=None"):
        if loss == "lorentz":
            HL.lorentz_contrastive_loss(x, y, 4.0, 0.9, t, w, reduction="none", backend=backend)
        else:
            HL.clip_contrastive_loss(x, y, 4.0, t, w, reduction="none", backend=backend)


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=pytest.mark.native)])
def test_entailment_reductions(backend):
    x, noise = _inputs(6, 6, 5, dtype=torch.float64)
    y = torch.cat([2 * x[:3] + 0.05 * noise[:3], noise[3:]])  # three images inside their text's cone
    rows = HL.entailment_rows(x, y, 0.8, 0.1, sign=-1.0, margin=0.3, backend=backend)
    assert rows.shape == (6,) and (rows >= 0).all() and (rows > 0).any()
    torch.testing.assert_close(HL.entailment_calibration_loss(x, y, 0.8, 0.3, reduction="none", backend=backend), rows)
    torch.testing.assert_close(HL.entailment_calibration_loss(x, y, 0.8, 0.3, reduction="sum", backend=backend),
                               rows.sum())
    torch.testing.assert_close(hypkern.entailment_loss(x, y, 0.8, reduction="none", backend=backend),
                               HL.entailment_rows(x, y, 0.8, 0.1, backend=backend))
    with pytest.raises(ValueError, match="sign must be"):
        HL.entailment_rows(x, y, 0.8, sign=0.5, backend=backend)
