"""Evaluation functions against hand-computed cases (stub models with known embeddings)."""
from __future__ import annotations

import math

import pytest
import torch

import hypkern
from hypkern.eval import zeroshot as Z
from hypkern.models.base import VisionLanguageModel


class StubModel(VisionLanguageModel):
    """Images are their own embeddings; each known text has a fixed (unlifted) feature vector."""

    def __init__(self, texts: dict[str, list[float]], geometry="euclidean", curv=1.0, alpha=1.0):
        super().__init__()
        self.geometry = geometry
        self.names = list(texts)
        self.table = torch.nn.Parameter(torch.tensor([texts[n] for n in self.names]), requires_grad=False)
        self._curv = torch.tensor(float(curv))
        self.alpha = alpha

    def tokenize(self, texts):
        return torch.tensor([[self.names.index(t)] for t in texts])

    def encode_text(self, tokens, project=True):
        feats = self.table[tokens[:, 0]]
        return self.project_text(feats) if project else feats

    def encode_image(self, images, project=True):
        return images.float()

    def project_text(self, feats):
        if self.geometry == "lorentz":
            return hypkern.exp_map0(feats * self.alpha, self._curv, backend="reference")
        return feats

    @property
    def curv(self):
        return self._curv if self.geometry == "lorentz" else None

    @property
    def logit_scale(self):
        return torch.tensor(10.0)


def _data(images, labels, captions=None):
    captions = captions or [f"c{i}" for i in range(len(labels))]
    return [(torch.as_tensor(images, dtype=torch.float32), captions, torch.as_tensor(labels), None)]


def test_per_class_accuracy_hand_computed():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 1, 0])
    acc = Z.per_class_accuracy(preds, labels, 4)
    assert acc[:3].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert math.isnan(acc[3])  # no images of class 3
    scores = torch.nn.functional.one_hot(preds, 3).float()
    res = Z.accuracy_from_scores(scores, labels, ["a", "b", "c"], forget=[2])
    assert res.overall == pytest.approx(5 / 9)
    assert res.forget == pytest.approx(0.0)
    assert res.retain == pytest.approx(5 / 6)
    assert res.chance == pytest.approx(1 / 3)
    assert res.forget_classes == ["c"] and res.retain_classes == ["a", "b"]


def test_resolve_concepts():
    names = ["red circle", "blue circle", "red square", "red"]
    assert Z.resolve_concepts(names, ["Red Circle"]) == [0]
    assert Z.resolve_concepts(names, ["circle"]) == [0, 1]
    assert Z.resolve_concepts(names, ["red"]) == [3]  # an exact name wins over word matches
    assert Z.resolve_concepts(names, [2, "blue circle"]) == [1, 2]
    with pytest.raises(ValueError):
        Z.resolve_concepts(names, ["triangle"])


def test_euclidean_ensemble_normalises_before_and_after_averaging():
    # Class 0's prompts point at 0 deg (norm 10) and 90 deg (norm 1): normalised then averaged
    # it points at 45 deg; a raw average would point at ~5.7 deg. Class 1 points at 0 deg.
    texts = {"a x": [10.0, 0.0], "the x": [0.0, 1.0], "a y": [1.0, 0.0], "the y": [3.0, 0.0]}
    model = StubModel(texts)
    clf = Z.zeroshot_classifier(model, ["x", "y"], ["a {}", "the {}"])
    assert clf[0].tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)], abs=1e-6)
    assert clf[1].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    # An image at 20 deg is nearer 0 deg (class y) than 45 deg (class x); one at 40 deg is x.
    img = [[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in (20, 40)]
    res = Z.zeroshot_accuracy(model, _data(img, [1, 0]), ["x"], classnames=["x", "y"],
                              templates=["a {}", "the {}"])
    assert res.forget == 1.0 and res.retain == 1.0


def test_lorentz_ensemble_averages_in_tangent_space_and_scores_by_inner_product():
    c, alpha = 0.5, 0.7
    texts = {"a x": [2.0, 0.0], "the x": [0.0, 2.0], "a y": [4.0, 0.2], "the y": [4.0, -0.2]}
    model = StubModel(texts, geometry="lorentz", curv=c, alpha=alpha)
    clf = Z.zeroshot_classifier(model, ["x", "y"], ["a {}", "the {}"])
    expected = hypkern.exp_map0(torch.tensor([[1.0, 1.0], [4.0, 0.0]]) * alpha, c, backend="reference")
    assert torch.allclose(clf, expected, atol=1e-5)
    # A small-norm image along +x: cosine would pick y (same direction), but y lies far out on
    # the hyperboloid; the Lorentz inner product (i.e. -distance) picks the nearer x.
    img = torch.tensor([[0.3, 0.0]])
    scores = Z.class_scores(model, img, clf)
    d = hypkern.pairwise_dist(img, clf, c, backend="reference")
    assert scores.argmax().item() == 0 and d.argmin().item() == 0
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(clf, dim=-1).T
    assert cos.argmax().item() == 1
    # Scores are exactly <x, y>_L = x.y - x_t y_t.
    xt = torch.sqrt(1 / c + (img ** 2).sum(-1, keepdim=True))
    yt = torch.sqrt(1 / c + (clf ** 2).sum(-1, keepdim=True))
    assert torch.allclose(scores, img @ clf.T - xt @ yt.T, atol=1e-5)
