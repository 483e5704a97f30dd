"""hypkern.geometry: each Geometry answers the questions the rest of the package asks, against
the float64 reference formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hypkern.geometry import EUCLIDEAN, LORENTZ, geometry_of
from hypkern.lorentz import reference as R
from hypkern.losses import reference as LR


def _pts(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * 0.7


def test_lorentz_geometry_against_reference():
    a, b, c = _pts(5), _pts(4, seed=1), torch.tensor(0.6, dtype=torch.float64)
    torch.testing.assert_close(LORENTZ.similarity(a.double(), b, c).double(), -R.pairwise_dist(a, b, c),
                               atol=1e-5, rtol=1e-5)  # similarity computes in float32
    torch.testing.assert_close(LORENTZ.rowwise_similarity(a, a.flip(0), c).double(), -R.dist(a, a.flip(0), c))
    torch.testing.assert_close(LORENTZ.class_scores(a, b.float(), c.float()).double(), R.pairwise_inner(a, b, c),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(LORENTZ.origin_distance(a, c), R.dist(a, torch.zeros_like(a), c))
    loss = LORENTZ.contrastive_loss(a[:4], b, 3.0, c, backend="reference")
    torch.testing.assert_close(loss, LR.lorentz_contrastive_loss(a[:4], b, 3.0, c))
    assert LORENTZ.has_cones and not LORENTZ.bounded_similarity and LORENTZ.default_method == "hac"


def test_euclidean_geometry_against_reference():
    a, b = _pts(5), _pts(4, seed=1)
    cos = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    torch.testing.assert_close(EUCLIDEAN.similarity(a, b).double(), cos, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(EUCLIDEAN.rowwise_similarity(a, a.flip(0)).double(),
                               F.cosine_similarity(a, a.flip(0), dim=-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(EUCLIDEAN.origin_distance(a), a.norm(dim=-1))
    loss = EUCLIDEAN.contrastive_loss(a[:4], b, 3.0, backend="reference")
    torch.testing.assert_close(loss, LR.clip_contrastive_loss(a[:4], b, 3.0))
    assert not EUCLIDEAN.has_cones and EUCLIDEAN.bounded_similarity and EUCLIDEAN.default_method == "ac"


def test_geometry_of_names_models_and_errors():
    class M:
        geometry = "euclidean"
    assert geometry_of("lorentz") is LORENTZ and geometry_of(M()) is EUCLIDEAN and geometry_of(LORENTZ) is LORENTZ
    with pytest.raises(ValueError, match="geometry must be one of"):
        geometry_of("spherical")
