"""Native backend (csrc/: C++ CPU and CUDA kernels, torch.ops.hypkern_native) vs the float64
reference: every op, forward and every gradient (curvature included), odd shapes, fp64/fp32/
fp16/bf16, curvatures 0.1...10; gradcheck and opcheck; hard inputs; the clipping constants of
csrc/hk_math.h vs constants.py; agreement of every backend usable on CPU.

The CPU kernels run the same per-element math (csrc/hk_math.h) as the CUDA kernels, so these
tests check the CUDA numerics too; the CUDA launch structure is tested by the ``cuda`` tests,
which are skipped (not passed) without a GPU.

Without the compiled extension every test here skips with the reason -- or FAILS when
``HYPKERN_REQUIRE_NATIVE=1`` (CI sets it, so a broken build cannot pass as skipped).
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hypkern
from hypkern.lorentz import constants as K
from hypkern.kernels import native
from hypkern.lorentz import ops as hk_ops

from conftest import OPS, TOLERANCES, assert_close_to_oracle, hard_inputs, make_inputs, needs_cuda, oracle

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("HYPKERN_REQUIRE_NATIVE") == "1"
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Tests that do not need the compiled extension.
_NO_EXT_NEEDED = {"test_import_without_extension", "test_header_constants_match_python"}

pytestmark = pytest.mark.native


@pytest.fixture(autouse=True)
def _need_native(request):
    if request.function.__name__ in _NO_EXT_NEEDED or native.cpu_available():
        return
    msg = f"native CPU extension missing: {native.load_error()}"
    if REQUIRE:
        pytest.fail(msg + " (HYPKERN_REQUIRE_NATIVE=1)")
    pytest.skip(msg)


# ----------------------------------------------------------------------------- helpers

def _extra(op, min_radius=0.1):
    return {"min_radius": min_radius} if op == "half_aperture" else {}


def _run(op, inputs, curv, grad_out, backend="native", device="cpu", min_radius=0.1):
    """Value and gradients (inputs..., curv) of hypkern.<op>(..., backend=backend)."""
    xs = [t.detach().clone().to(device).requires_grad_(True) for t in inputs]
    cd = torch.float64 if inputs[0].dtype == torch.float64 else torch.float32
    c = torch.tensor(float(curv), dtype=cd, device=device, requires_grad=True)
    out = getattr(hypkern, op)(*xs, c, backend=backend, **_extra(op, min_radius))
    grads = torch.autograd.grad(out, xs + [c], grad_out.to(device=device, dtype=out.dtype))
    return out, grads


def _scale(t: torch.Tensor) -> float:
    """atol multiplier: values and gradients of order one use the table's atol as is; larger
    ones (curvature gradients summed over N x M entries, capped exp_map0 outputs) relative to
    their size."""
    t = t.detach().double()
    return max(1.0, float(t.abs().max())) if t.numel() else 1.0


def _mask_cancelled_pairs(inputs, curv, eps, rtol, masks):
    """pairwise_dist: from the matmul, u = c (xt yt - x.y) - 1 carries an absolute rounding
    error of a couple of eps * c (xt yt + |x.y|) (cancellation, in the float64 reference too):
    acosh(1 + u) and its gradient ~ 1/sqrt(u) are only determined to relative precision du/u.
    Drops those entries, and the gradient rows/columns/curvature that sum over them."""
    x, y = (t.double() for t in inputs)
    p = x @ y.T
    xt = torch.sqrt(1 / curv + (x * x).sum(-1))[:, None]
    yt = torch.sqrt(1 / curv + (y * y).sum(-1))[None, :]
    u = curv * (xt * yt - p) - 1
    du = 2 * eps * curv * (xt * yt + p.abs())
    bad = ~(du < rtol * u)
    return [masks[0] & ~bad, masks[1] & ~bad.any(1, keepdim=True), masks[2] & ~bad.any(0)[:, None],
            masks[3] & ~bad.any()]


def _conditioned(op, inputs, curv, dtype, ref, rgrads, gout, min_radius=0.1):
    """One mask per output (value, grads...): the entries whose float64 value barely moves when
    every input and the curvature are perturbed by one rounding unit of ``dtype``. Only there
    can a ``dtype`` kernel be held to the oracle: e.g. a gradient of acosh at nearly coincident
    points (pairwise_dist with D = 1), where fp32 rounding of the inputs alone moves the exact
    answer by more than the tolerance."""
    eps = torch.finfo(dtype).eps
    tol = TOLERANCES[dtype]
    masks = None
    for seed in range(2):
        g = torch.Generator().manual_seed(100 + seed)
        pert = [t.double() * (1 + eps * (2 * torch.rand(t.shape, generator=g, dtype=torch.float64) - 1))
                for t in inputs]
        c_p = curv * (1 + eps * (2 * float(torch.rand((), generator=g)) - 1))
        out_p, grads_p, _ = oracle(op, pert, c_p, min_radius, grad_out=gout)
        cur = [(a - b).abs() <= 0.25 * (tol["atol"] * _scale(b) + tol["rtol"] * b.abs())
               for a, b in zip([out_p, *grads_p], [ref, *rgrads])]
        masks = cur if masks is None else [m & c for m, c in zip(masks, cur)]
    if op == "pairwise_dist":
        masks = _mask_cancelled_pairs(inputs, curv, eps, tol["rtol"], masks)
    return masks


def _check_against_oracle(op, inputs, curv, dtype, what, device="cpu", min_radius=0.1, backend="native"):
    """Value and every gradient within the dtype's tolerance of the float64 oracle (relative to
    their own scale where that exceeds one). Below float64, entries the oracle itself shows to
    be ill-conditioned at the dtype's precision are left out (``_conditioned``); the value must
    stay comparable on at least half of its entries, and all outputs must be finite."""
    ref, rgrads, gout = oracle(op, inputs, curv, min_radius)
    out, grads = _run(op, inputs, curv, gout, backend=backend, device=device, min_radius=min_radius)
    assert out.dtype == inputs[0].dtype and out.shape == ref.shape
    if dtype == torch.float64:
        masks = [torch.ones_like(r, dtype=torch.bool) for r in [ref, *rgrads]]
    else:
        masks = _conditioned(op, inputs, curv, dtype, ref, rgrads, gout, min_radius)
        assert masks[0].float().mean() >= 0.5, f"{what}: inputs too ill-conditioned to test"
    names = ["value"] + [f"d/d input{i}" for i in range(len(inputs))] + ["d/dcurv"]
    for a, r, mask, name in zip([out, *grads], [ref, *rgrads], masks, names):
        assert a.shape == r.shape, f"{what} {name}: shape {tuple(a.shape)} vs {tuple(r.shape)}"
        assert torch.isfinite(a).all(), f"{what} {name}: non-finite"
        if mask.any():
            assert_close_to_oracle(a.detach().cpu()[mask.cpu()], r[mask], dtype, f"{what} {name}",
                                   scale_atol=_scale(r))


# ----------------------------------------------------------------------------- constants

def _header_constants() -> dict[str, float]:
    text = (ROOT / "csrc" / "hk_math.h").read_text()
    found = dict(re.findall(r"constexpr double (\w+) = ([0-9.eE+-]+);", text))
    return {k: float(v) for k, v in found.items()}


def test_header_constants_match_python():
    # Parsed from the source: holds even where the extension is not built.
    hdr = _header_constants()
    for name in ("ASIN_EPS", "EXP_MAP_MAX", "SMALL_R", "ANGLE_DENOM_EPS"):
        assert name in hdr, f"{name} missing from csrc/hk_math.h"
        assert hdr[name] == pytest.approx(getattr(K, name), rel=1e-15, abs=0), name
    assert hdr["EXP_MAP_MAX"] == pytest.approx(math.asinh(2.0 ** 15), rel=1e-15)


def test_compiled_constants_match_python():
    # The values compiled into the extension (hypkern_native::constants).
    got = native.constants()
    for name in ("ASIN_EPS", "EXP_MAP_MAX", "SMALL_R", "ANGLE_DENOM_EPS"):
        assert got[name] == pytest.approx(getattr(K, name), rel=1e-15, abs=0), name


# ----------------------------------------------------------------------------- vs the oracle

@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("rows", [1, 7, 33, 130])
@pytest.mark.parametrize("d", [1, 3, 64, 512])
def test_shapes_fp32(op, rows, d):
    inputs = make_inputs(op, rows, d, dtype=torch.float32, m=max(1, rows // 2 + 3), seed=rows * 1000 + d)
    _check_against_oracle(op, inputs, 0.9, torch.float32, f"{op} {rows}x{d}")


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("rows,d", [(1, 1), (7, 3), (33, 64), (130, 512)])
def test_shapes_fp64(op, rows, d):
    inputs = make_inputs(op, rows, d, dtype=torch.float64, m=rows + 2, seed=rows + d)
    _check_against_oracle(op, inputs, 1.7, torch.float64, f"{op} {rows}x{d}")


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("curv", [0.1, 1.0, 3.0, 10.0])
def test_dtypes_and_curvatures(op, dtype, curv):
    inputs = make_inputs(op, 33, 64, dtype=dtype, m=17, scale=0.3, seed=int(curv * 10))
    _check_against_oracle(op, inputs, curv, dtype, f"{op} {dtype} c={curv}")


@pytest.mark.parametrize("min_radius", [0.01, 0.1, 0.5])
def test_half_aperture_min_radius(min_radius):
    # Norms on both sides of the clip radius 2K/sqrt(c).
    inputs = make_inputs("half_aperture", 64, 8, dtype=torch.float64, scale=0.2, seed=5)
    _check_against_oracle("half_aperture", inputs, 2.0, torch.float64, f"K={min_radius}", min_radius=min_radius)


def test_native_ops_called_directly_match_public_op():
    x, y = make_inputs("pairwise_dist", 9, 16, m=4, seed=2)
    c = torch.tensor(1.3)
    direct = torch.ops.hypkern_native.pairwise_dist_fwd(x, y, c)
    torch.testing.assert_close(direct, hypkern.pairwise_dist(x, y, c, backend="native"), rtol=0, atol=0)
    gx, gy, gc = torch.ops.hypkern_native.pairwise_dist_bwd(torch.ones(9, 4), x, y, c)
    assert gx.shape == x.shape and gy.shape == y.shape and gc.shape == () and gc.dtype == c.dtype


# ----------------------------------------------------------------------------- autograd machinery

def _gradcheck_inputs(op):
    g = torch.Generator().manual_seed(7)
    n, m, d = 4, 5, 3
    rows = [n] if OPS[op]["inputs"] == 1 else [n, n if OPS[op]["rowwise"] else m]
    out = []
    for r in rows:
        t = torch.randn(r, d, generator=g, dtype=torch.float64)
        t = t / t.norm(dim=-1, keepdim=True) * torch.empty(r, 1, dtype=torch.float64).uniform_(0.5, 1.5, generator=g)
        out.append(t.requires_grad_(True))
    return out


@pytest.mark.parametrize("op", list(OPS))
def test_gradcheck_float64(op):
    xs = _gradcheck_inputs(op)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    fn = lambda *a: getattr(hypkern, op)(*a, backend="native", **_extra(op))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (*xs, c), eps=1e-6, atol=1e-7, rtol=1e-5)


def _raw_args(op, dtype=torch.float64):
    xs = [t.detach().to(dtype) for t in _gradcheck_inputs(op)]
    c = torch.tensor(0.7, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    extra = (0.1,) if op == "half_aperture" else ()
    return xs, c, extra


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_opcheck_native_ops(op, dtype):
    xs, c, extra = _raw_args(op, dtype)
    fwd = getattr(torch.ops.hypkern_native, f"{op}_fwd")
    bwd = getattr(torch.ops.hypkern_native, f"{op}_bwd")
    out = fwd(*xs, c, *extra)
    torch.library.opcheck(fwd, (*xs, c, *extra))
    torch.library.opcheck(bwd, (torch.randn_like(out), *xs, c, *extra))


@pytest.mark.parametrize("op", list(OPS))
def test_opcheck_public_op_native_backend(op):
    xs = _gradcheck_inputs(op)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    extra = (0.1,) if op == "half_aperture" else ()
    torch.library.opcheck(hk_ops._OPS[op], (*xs, c, *extra, "native"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_native_is_default_cpu_backend(monkeypatch):
    monkeypatch.delenv("HYPKERN_BACKEND", raising=False)
    assert hk_ops.resolve_backend(None, torch.device("cpu")) == "native"
    assert hypkern.backends()["native"].cpu


def test_bad_arguments_raise():
    x = torch.randn(3, 4)
    c = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="same D"):
        torch.ops.hypkern_native.pairwise_dist_fwd(x, torch.randn(2, 5), c)
    with pytest.raises(RuntimeError, match="as many rows"):
        torch.ops.hypkern_native.dist_fwd(x, torch.randn(2, 4), c)
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.hypkern_native.exp_map0_fwd(torch.randn(4), c)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.hypkern_native.dist_bwd(torch.ones(2), x, x, c)
    with pytest.raises(RuntimeError, match="min_radius"):
        torch.ops.hypkern_native.half_aperture_fwd(x, c, -1.0)


# ----------------------------------------------------------------------------- hard inputs

@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("curv", [0.1, 1.0, 10.0])
def test_hard_inputs_finite(op, dtype, curv):
    """Equal points, zero vectors, tiny and huge norms: finite value and gradients wherever
    the exact (float64 oracle) answer is representable in ``dtype`` (in fp16, pairwise_inner of
    two points of norm 1e4 is -1e8: out of range, so inf is the right rounding there)."""
    inputs = hard_inputs(op, d=8, dtype=dtype)
    ref, rgrads, gout = oracle(op, inputs, curv)
    out, grads = _run(op, inputs, curv, gout)
    big = torch.finfo(dtype).max / 2
    representable = ref.abs() < big
    assert representable.float().mean() > 0.5
    assert torch.isfinite(out[representable]).all(), f"{op} {dtype}: non-finite value {out}"
    for i, (g, r) in enumerate(zip(grads, rgrads)):
        ok = r.abs() < torch.finfo(g.dtype).max / 2
        assert torch.isfinite(g[ok]).all(), f"{op} {dtype}: non-finite gradient {i}: {g}"


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("curv", [0.1, 1.0, 10.0])
def test_hard_inputs_fp64_match_oracle(op, curv):
    """In float64 the hard inputs also agree with the oracle (same clipping decisions)."""
    inputs = hard_inputs(op, d=8, dtype=torch.float64)
    ref, rgrads, gout = oracle(op, inputs, curv)
    out, grads = _run(op, inputs, curv, gout)
    masks = [torch.ones_like(r, dtype=torch.bool) for r in [ref, *rgrads]]
    if op == "pairwise_dist":  # (3, 3) holds x and x (1 + 1e-6): u ~ 1e-12, cancelled
        masks = _mask_cancelled_pairs(inputs, curv, torch.finfo(torch.float64).eps, 1e-6, masks)
        assert masks[0].float().mean() > 0.5
    torch.testing.assert_close(out[masks[0]], ref[masks[0]], rtol=1e-7, atol=1e-9 * _scale(ref))
    for i, (g, r, m) in enumerate(zip(grads, rgrads, masks[1:])):
        torch.testing.assert_close(g[m], r[m], rtol=1e-6, atol=1e-9 * _scale(r), msg=lambda s: f"grad {i}: {s}")


def test_zero_and_equal_points_values():
    z = torch.zeros(3, 5, dtype=torch.float64)
    c = 2.0
    assert torch.equal(hypkern.exp_map0(z, c, backend="native"), z)
    assert torch.equal(hypkern.log_map0(z, c, backend="native"), z)
    x = make_inputs("dist", 4, 5, dtype=torch.float64)[0]
    assert hypkern.dist(x, x, c, backend="native").abs().max() < 1e-12
    assert hypkern.pairwise_dist(x, x, c, backend="native").diagonal().abs().max() < 1e-6
    ha = hypkern.half_aperture(z, c, backend="native")
    assert torch.allclose(ha, torch.full_like(ha, math.asin(1 - K.ASIN_EPS)))


# ----------------------------------------------------------------------------- cross-backend

@pytest.mark.parametrize("op", list(OPS))
def test_every_cpu_backend_agrees(op):
    usable = [name for name, st in hypkern.backends().items() if st.cpu and op in st.implements]
    assert "native" in usable and "reference" in usable, usable
    assert "chunked" not in usable  # tiled losses only: geometry ops are not its business
    inputs = make_inputs(op, 19, 24, dtype=torch.float32, m=11, seed=4)
    ref, rgrads, gout = oracle(op, inputs, 1.4)
    results = {name: _run(op, inputs, 1.4, gout, backend=name) for name in usable}
    for name, (out, grads) in results.items():
        assert_close_to_oracle(out, ref, torch.float32, f"{name} value", scale_atol=_scale(ref))
        for g, r in zip(grads, rgrads):
            assert_close_to_oracle(g, r, torch.float32, f"{name} grad", scale_atol=_scale(r))
    base_out, base_grads = results["native"]
    for name, (out, grads) in results.items():
        torch.testing.assert_close(out, base_out, **TOLERANCES[torch.float32])
        for g, b in zip(grads, base_grads):
            torch.testing.assert_close(g, b, rtol=2e-4, atol=2e-4 * _scale(b))


# ----------------------------------------------------------------------------- no extension

def test_import_without_extension():
    """With the extensions unloadable, `import hypkern` works, native reports why it cannot
    run, ops fall back to the reference, and one warning is issued."""
    code = r"""
import sys, warnings
sys.modules["hypkern._C"] = None      # makes `import hypkern._C` raise ImportError
sys.modules["hypkern._C_cuda"] = None
import torch, hypkern
from hypkern.kernels import native
from hypkern.lorentz import ops
cpu = torch.device("cpu")
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    ok, why = native.supports(cpu)
    native.supports(cpu)
    assert ops.resolve_backend(None, cpu) == "reference"
assert not ok and "hypkern._C" in why, why
msgs = [str(x.message) for x in w]
assert len(msgs) == 1 and "native kernels unavailable" in msgs[0] and "\n" not in msgs[0], msgs
x = torch.randn(3, 4)
assert hypkern.dist(x, x, 1.0).shape == (3,)
print("OK")
"""
    env = dict(os.environ, HYPKERN_BACKEND="")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


# ----------------------------------------------------------------------------- CUDA

def _cuda_ready():
    if not native.cuda_available():
        msg = f"native CUDA extension missing: {native.load_error()}"
        if REQUIRE:
            pytest.fail(msg + " (HYPKERN_REQUIRE_NATIVE=1 on a GPU machine)")
        pytest.skip(msg)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,d", [(1, 1), (7, 3), (33, 64), (130, 512)])
def test_cuda_vs_oracle(op, dtype, rows, d):
    _cuda_ready()
    inputs = make_inputs(op, rows, d, dtype=dtype, m=rows // 2 + 3, scale=0.3, seed=rows + d)
    _check_against_oracle(op, inputs, 1.3, dtype, f"cuda {op} {rows}x{d}", device="cuda")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_hard_inputs_finite(op, dtype):
    _cuda_ready()
    inputs = hard_inputs(op, d=8, dtype=dtype)
    _, _, gout = oracle(op, inputs, 1.0)
    out, grads = _run(op, inputs, 1.0, gout, device="cuda")
    assert torch.isfinite(out).all()
    for g in grads:
        assert torch.isfinite(g).all()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("op", list(OPS))
def test_cuda_matches_cpu_fp64(op):
    _cuda_ready()
    inputs = make_inputs(op, 45, 70, dtype=torch.float64, m=31, seed=9)
    _, _, gout = oracle(op, inputs, 0.8)
    cpu_out, cpu_grads = _run(op, inputs, 0.8, gout)
    gpu_out, gpu_grads = _run(op, inputs, 0.8, gout, device="cuda")
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=1e-10, atol=1e-11)
    for g, c in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-9, atol=1e-10 * _scale(c))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("op", list(OPS))
def test_cuda_opcheck(op):
    _cuda_ready()
    xs, c, extra = _raw_args(op, torch.float32)
    xs, c = [t.cuda() for t in xs], c.cuda()
    fwd = getattr(torch.ops.hypkern_native, f"{op}_fwd")
    out = fwd(*xs, c, *extra)
    torch.library.opcheck(fwd, (*xs, c, *extra))
    torch.library.opcheck(getattr(torch.ops.hypkern_native, f"{op}_bwd"), (torch.randn_like(out), *xs, c, *extra))


# ----------------------------------------------------------------------------- entailment loss
# hypkern.losses backend "native": the fused op hypkern_native::entailment_fwd_bwd (loss and
# gradient rows in one pass) vs the float64 reference composition.

import torch.nn.functional as F  # noqa: E402

from hypkern import losses as HL  # noqa: E402
from hypkern.lorentz import reference as R  # noqa: E402
from hypkern.losses import reference as LR  # noqa: E402

_ENT_CASES = [("entailment", 0.0), ("calibration", 0.05), ("calibration", 1.5)]


def _ent_inputs(dtype=torch.float64, n=48, d=7):
    """Half the rows random (images mostly outside the text's cone), half with the image just
    beyond the text (inside the cone), so both relu branches of both losses are exercised."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.9
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1
    h = n // 2
    x[:h] *= 0.3  # short texts: wide cones
    y[:h] = x[:h] * 1.6 + 0.02 * torch.randn(h, d, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def _ent_loss(fn, x, y, c, margin, backend):
    if fn == "entailment":
        return HL.entailment_loss(x, y, c, backend=backend)
    return HL.entailment_calibration_loss(x, y, c, margin, backend=backend)


def _ent_reference(fn, x, y, c, margin):
    """float64 value and gradients (x, y, c) of the reference composition."""
    x64 = x.detach().double().requires_grad_(True)
    y64 = y.detach().double().requires_grad_(True)
    c64 = torch.tensor(float(c), dtype=torch.float64, requires_grad=True)
    if fn == "entailment":
        loss = LR.entailment_loss(x64, y64, c64, 0.1)
    else:
        loss = F.relu(R.half_aperture(x64, c64, 0.1) - R.oxy_angle(x64, y64, c64) + margin).mean()
    return loss.detach(), torch.autograd.grad(loss, [x64, y64, c64])


def _ent_native(fn, x, y, c, margin):
    xs = x.detach().clone().requires_grad_(True)
    ys = y.detach().clone().requires_grad_(True)
    cs = torch.tensor(float(c), dtype=torch.float64, requires_grad=True)
    loss = _ent_loss(fn, xs, ys, cs, margin, "native")
    return loss.detach(), torch.autograd.grad(loss, [xs, ys, cs])


@pytest.mark.parametrize("fn,margin", _ENT_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("curv", [0.3, 1.0, 2.5])
def test_entailment_native_matches_reference(fn, margin, dtype, curv):
    x, y = _ent_inputs(dtype)
    want, wgrads = _ent_reference(fn, x, y, curv, margin)
    got, grads = _ent_native(fn, x, y, curv, margin)
    assert got.dtype == dtype and all(g.dtype == t.dtype for g, t in zip(grads[:2], (x, y)))
    assert float(want) > 0, "inputs must make the loss active"
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-4)
    torch.testing.assert_close(got.double(), want, **tol, msg=f"{fn} value")
    for name, a, b in zip(("text", "image", "curv"), grads, wgrads):
        torch.testing.assert_close(a.double(), b, atol=tol["atol"] * max(1.0, float(b.abs().max())),
                                   rtol=tol["rtol"], msg=f"{fn} d/d{name}")


@pytest.mark.parametrize("fn,margin", _ENT_CASES)
def test_entailment_native_matches_reference_backend(fn, margin):
    x, y = _ent_inputs(torch.float64)
    got, grads = _ent_native(fn, x, y, 0.8, margin)
    xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    cs = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    want = _ent_loss(fn, xs, ys, cs, margin, "reference")
    wgrads = torch.autograd.grad(want, [xs, ys, cs])
    torch.testing.assert_close(got, want.detach(), atol=1e-12, rtol=1e-10)
    for a, b in zip(grads, wgrads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("fn,margin", [("entailment", 0.0), ("calibration", 1.0)])
def test_entailment_native_gradcheck_float64(fn, margin):
    x, y = _ent_inputs(torch.float64, n=10, d=5)
    x, y = x.requires_grad_(True), y.requires_grad_(True)
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, c: _ent_loss(fn, x, y, c, margin, "native"), (x, y, c))


def _ent_hard_inputs(dtype):
    # x = 0, x = y, tiny and huge norms (conftest.hard_inputs), both orders.
    x, y = hard_inputs("oxy_angle", d=8, dtype=torch.float64)
    x, y = torch.cat([x, y]), torch.cat([y, x])
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("fn,margin", _ENT_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_entailment_native_hard_inputs_finite(fn, margin, dtype):
    """Finite loss and gradients wherever the exact gradient (float64 reference on the same,
    rounded inputs) is representable in ``dtype``: in fp16, x = y exactly (x * (1 + 1e-6)
    rounds to x) has a reference gradient of ~1e6, beyond fp16's range."""
    x, y = _ent_hard_inputs(dtype)
    got, grads = _ent_native(fn, x, y, 0.8, margin)
    _, wgrads = _ent_reference(fn, x, y, 0.8, margin)
    assert torch.isfinite(got)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for g, w in zip(grads, wgrads):
        ok = w.abs() < torch.finfo(g.dtype).max / 2
        assert ok.float().mean() > 0.5
        assert torch.isfinite(g[ok]).all(), f"{fn} {dtype}: non-finite gradient {g}"
    assert grads[0].dtype == dtype and grads[1].dtype == dtype


@pytest.mark.parametrize("fn,margin", _ENT_CASES)
def test_entailment_native_hard_inputs_fp64_match_reference(fn, margin):
    x, y = _ent_hard_inputs(torch.float64)
    want, wgrads = _ent_reference(fn, x, y, 0.8, margin)
    got, grads = _ent_native(fn, x, y, 0.8, margin)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
    for a, b in zip(grads, wgrads):  # gradients up to ~1e4 at norms of 1e4: relative to the largest
        torch.testing.assert_close(a, b, atol=max(1e-12, 1e-10 * float(b.abs().max())), rtol=1e-9)


def test_entailment_native_op_rows_and_no_grad():
    x, y = _ent_inputs(torch.float64, n=12, d=4)
    c = torch.tensor(0.8, dtype=torch.float64)
    loss, gx, gy, gc = native.entailment_fwd_bwd(x, y, c, 0.1, 1.0, 0.0, True)
    assert loss.shape == (12,) and gx.shape == (12, 4) and gy.shape == (12, 4) and gc.shape == (12,)
    ref = F.relu(R.oxy_angle(x, y, c) - R.half_aperture(x, c, 0.1))
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-10)
    loss2, gx2, gy2, gc2 = native.entailment_fwd_bwd(x, y, c, 0.1, 1.0, 0.0, False)
    assert torch.equal(loss, loss2) and gx2.numel() == gy2.numel() == gc2.numel() == 0
    # the loss without any input requiring grad skips the gradient sweep and still agrees
    torch.testing.assert_close(HL.entailment_loss(x, y, 0.8, backend="native"), ref.mean())
    with pytest.raises(RuntimeError, match="sign"):
        native.entailment_fwd_bwd(x, y, c, 0.1, 0.5, 0.0, True)
    with pytest.raises(RuntimeError, match="min_radius"):
        native.entailment_fwd_bwd(x, y, c, -0.1, 1.0, 0.0, True)


@pytest.mark.parametrize("need_grad", [True, False])
def test_entailment_native_opcheck(need_grad):
    x, y = _ent_inputs(torch.float32, n=6, d=5)
    torch.library.opcheck(torch.ops.hypkern_native.entailment_fwd_bwd,
                          (x, y, torch.tensor(0.8), 0.1, -1.0, 0.2, need_grad))


def test_entailment_native_is_default_cpu_backend(monkeypatch):
    monkeypatch.delenv("HYPKERN_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert HL.resolve_loss_backend(None, cpu, kind="entailment") == "native"
    assert HL.resolve_loss_backend(None, cpu) == "chunked"  # contrastive: unchanged
    x, y = _ent_inputs(torch.float64, n=8, d=4)
    torch.testing.assert_close(HL.entailment_loss(x, y, 0.8), HL.entailment_loss(x, y, 0.8, backend="native"),
                               rtol=0, atol=0)
    assert "native" in HL.ENTAILMENT_BACKENDS and "native" not in HL.CONTRASTIVE_BACKENDS


def test_contrastive_losses_reject_native_backend():
    x, y = _ent_inputs(torch.float64, n=8, d=4)
    with pytest.raises(RuntimeError, match=r"cannot run lorentz_contrastive on cpu \('native' does not implement it\)"
                                           r"; backends that can: reference, chunked"):
        HL.lorentz_contrastive_loss(x, y, 2.0, 1.0, backend="native")
    with pytest.raises(RuntimeError, match=r"cannot run clip_contrastive on cpu \('native' does not implement it\)"):
        HL.clip_contrastive_loss(x, y, 2.0, backend="native")
    # a preference list falls through to the first backend that implements the loss
    torch.testing.assert_close(HL.lorentz_contrastive_loss(x, y, 2.0, 1.0, backend="native,chunked"),
                               HL.lorentz_contrastive_loss(x, y, 2.0, 1.0, backend="chunked"), rtol=0, atol=0)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("fn,margin", _ENT_CASES)
def test_entailment_cuda_matches_cpu_fp64(fn, margin):
    _cuda_ready()
    x, y = _ent_inputs(torch.float64, n=45, d=70)
    cpu_loss, cpu_grads = _ent_native(fn, x, y, 0.8, margin)
    xs, ys = x.cuda().requires_grad_(True), y.cuda().requires_grad_(True)
    cs = torch.tensor(0.8, dtype=torch.float64, device="cuda", requires_grad=True)
    loss = _ent_loss(fn, xs, ys, cs, margin, "native")
    grads = torch.autograd.grad(loss, [xs, ys, cs])
    torch.testing.assert_close(loss.cpu(), cpu_loss, rtol=1e-10, atol=1e-11)
    for g, c in zip(grads, cpu_grads):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-9, atol=1e-10 * _scale(c))
