"""The reference geometry against identities it must satisfy (it is the oracle for the kernels,
so it is checked against mathematics, not against itself)."""
import math

import pytest
import torch

from hypkern.lorentz import reference as R
from hypkern.losses import reference as LR
from hypkern.lorentz.constants import ASIN_EPS, EXP_MAP_MAX

torch.manual_seed(0)
F64 = torch.float64
CURVS = [0.1, 1.0, 10.0]


def rand(n, d, scale=1.0):
    return torch.randn(n, d, dtype=F64) * scale


@pytest.mark.parametrize("c", CURVS)
def test_points_lie_on_hyperboloid(c):
    x = rand(10, 5)
    xt = R.time_component(x, c)
    inner = (x * x).sum(-1) - xt * xt
    torch.testing.assert_close(inner, torch.full_like(inner, -1.0 / c))
    torch.testing.assert_close(torch.diagonal(R.pairwise_inner(x, x, c)), inner)


@pytest.mark.parametrize("c", CURVS)
def test_log_exp_roundtrip(c):
    v = rand(20, 7, 0.7 / math.sqrt(c))
    v[0] = 0.0
    v[1] = 1e-6
    torch.testing.assert_close(R.log_map0(R.exp_map0(v, c), c), v, atol=1e-12, rtol=1e-10)
    x = rand(20, 7, 3.0)
    torch.testing.assert_close(R.exp_map0(R.log_map0(x, c), c), x, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("c", CURVS)
def test_distance_from_origin_is_tangent_norm(c):
    v = rand(20, 4, 1.5 / math.sqrt(c))
    origin = torch.zeros_like(v)
    torch.testing.assert_close(R.dist(origin, R.exp_map0(v, c), c), v.norm(dim=-1))
    torch.testing.assert_close(R.pairwise_dist(origin[:1], R.exp_map0(v, c), c)[0], v.norm(dim=-1))


@pytest.mark.parametrize("c", CURVS)
def test_distance_metric_axioms(c):
    x, y, z = rand(30, 6), rand(30, 6), rand(30, 6)
    dxy, dyx = R.dist(x, y, c), R.dist(y, x, c)
    torch.testing.assert_close(dxy, dyx)
    assert (dxy > 0).all()
    assert (R.dist(x, y, c) <= R.dist(x, z, c) + R.dist(z, y, c) + 1e-9).all()
    assert R.dist(x, x, c).abs().max() == 0
    torch.testing.assert_close(torch.diagonal(R.pairwise_dist(x, y, c)), dxy)
    torch.testing.assert_close(R.pairwise_dist(x, y, c), R.pairwise_dist(y, x, c).T)


def test_rowwise_dist_exact_for_nearby_points():
    # d(x, x + h) ~ |h|_metric for tiny h; the pairwise (acosh) form loses this, the row-wise must not.
    x = rand(5, 3, 2.0)
    h = rand(5, 3) * 1e-9
    d = R.dist(x, x + h, 1.0)
    assert (d > 0).all()
    # Riemannian metric at x: |h|^2 - (dx_t)^2 with dx_t = x.h / x_t.
    xt = R.time_component(x, 1.0)
    metric = torch.sqrt((h * h).sum(-1) - ((x * h).sum(-1) / xt) ** 2)
    torch.testing.assert_close(d, metric, rtol=1e-6, atol=0)


def test_argmax_inner_is_argmin_dist():
    x, y = rand(12, 5), rand(40, 5)
    assert torch.equal(R.pairwise_inner(x, y, 0.7).argmax(1), R.pairwise_dist(x, y, 0.7).argmin(1))


@pytest.mark.parametrize("c", CURVS)
def test_exterior_angle_is_pi_minus_interior_angle(c):
    # Interior angle at x of O-x-y via the hyperbolic law of cosines on the distances.
    x = rand(25, 4, 1.0 / math.sqrt(c))
    y = rand(25, 4, 1.0 / math.sqrt(c))
    sc = math.sqrt(c)
    a = R.dist(torch.zeros_like(x), x, c) * sc  # |Ox| in units of curvature -1
    b = R.dist(x, y, c) * sc                    # |xy|
    o = R.dist(torch.zeros_like(y), y, c) * sc  # |Oy|
    cos_interior = (torch.cosh(a) * torch.cosh(b) - torch.cosh(o)) / (torch.sinh(a) * torch.sinh(b))
    interior = torch.acos(cos_interior.clamp(-1, 1))
    torch.testing.assert_close(R.oxy_angle(x, y, c), math.pi - interior, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("c", CURVS)
def test_half_aperture_monotone_decreasing_in_norm(c):
    unit = rand(1, 3)
    unit = unit / unit.norm()
    norms = torch.logspace(-3, 3, 200, dtype=F64)[:, None]
    ha = R.half_aperture(unit * norms, c, 0.1)
    assert (ha[1:] <= ha[:-1]).all()
    assert ha[0] == pytest.approx(math.asin(1 - ASIN_EPS))
    far = norms[-1, 0].item()
    assert ha[-1] == pytest.approx(math.asin(0.2 / (math.sqrt(c) * far)))


def test_exp_map_cap():
    v = torch.tensor([[1e6, 0.0]], dtype=F64)
    out = R.exp_map0(v, 1.0)
    assert torch.isfinite(out).all()
    assert out[0, 0] == pytest.approx(math.sinh(EXP_MAP_MAX))


HARD = [
    torch.zeros(3, 4, dtype=F64),
    torch.full((3, 4), 1e-8, dtype=F64),
    torch.full((3, 4), 1e4, dtype=F64),
    torch.randn(3, 4, dtype=F64),
]


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("x", HARD, ids=["zero", "tiny", "huge", "random"])
def test_finite_forward_and_backward_on_hard_inputs(x, c):
    """x == y, zero vectors, tiny and huge norms: every output and every gradient is finite."""
    for op, args in [
        ("pairwise_inner", (x, x)), ("pairwise_dist", (x, x)), ("dist", (x, x)),
        ("exp_map0", (x,)), ("log_map0", (x,)), ("half_aperture", (x,)), ("oxy_angle", (x, x)),
        ("oxy_angle", (x, torch.zeros_like(x))), ("oxy_angle", (torch.zeros_like(x), x)),
    ]:
        xs = [a.clone().requires_grad_(True) for a in args]
        curv = torch.tensor(c, dtype=F64, requires_grad=True)
        out = getattr(R, op)(*xs, curv)
        assert torch.isfinite(out).all(), op
        grads = torch.autograd.grad(out.sum(), xs + [curv])
        for g in grads:
            assert torch.isfinite(g).all(), f"{op}: non-finite gradient"


def test_equal_points_have_zero_distance_and_zero_gradient():
    x = rand(4, 3).requires_grad_(True)
    d = R.dist(x, x.detach(), 1.0)
    assert d.abs().max() == 0
    (g,) = torch.autograd.grad(d.sum(), x)
    assert g.abs().max() == 0


@pytest.mark.parametrize("op", ["pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0",
                                "half_aperture", "oxy_angle"])
def test_gradcheck_reference(op):
    two = op in ("pairwise_inner", "pairwise_dist", "dist", "oxy_angle")
    xs = [rand(4 if op != "pairwise_dist" else 3, 3).requires_grad_(True)]
    if two:
        xs.append(rand(4 if op not in ("pairwise_inner", "pairwise_dist") else 5, 3).requires_grad_(True))
    c = torch.tensor(0.8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: getattr(R, op)(*a), (*xs, c))


def test_half_precision_inputs_computed_in_fp32():
    x = rand(6, 8).half()
    out = R.pairwise_dist(x, x, 1.0)
    assert out.dtype == torch.float16
    expected = R.pairwise_dist(x.double(), x.double(), 1.0)
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)


def test_contrastive_losses_match_textbook_definition():
    img, txt = rand(6, 4), rand(6, 4)
    s = 3.0
    logits = -s * R.pairwise_dist(img, txt, 1.0)
    labels = torch.arange(6)
    ce = torch.nn.functional.cross_entropy
    expected = 0.5 * (ce(logits, labels) + ce(logits.T, labels))
    torch.testing.assert_close(LR.lorentz_contrastive_loss(img, txt, s, 1.0), expected)
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    expected = 0.5 * (ce(s * cos, labels) + ce(s * cos.T, labels))
    torch.testing.assert_close(LR.clip_contrastive_loss(img, txt, s), expected)


def test_contrastive_targets_and_weights():
    img, txt = rand(4, 3), rand(7, 3)
    t = torch.tensor([3, 0, 6, 3])
    w = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=F64)
    logits = -2.0 * R.pairwise_dist(img, txt, 1.0)
    per = 0.5 * ((torch.logsumexp(logits, 1) - logits[torch.arange(4), t])
                 + (torch.logsumexp(logits, 0)[t] - logits[torch.arange(4), t]))
    torch.testing.assert_close(LR.lorentz_contrastive_loss(img, txt, 2.0, 1.0, t, w), (w * per).sum() / w.sum())
    with pytest.raises(ValueError, match="same number of rows"):
        LR.lorentz_contrastive_loss(img, txt, 2.0, 1.0)
