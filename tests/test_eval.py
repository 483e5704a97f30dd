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


# ----------------------------------------------------------------------------- retrieval

from hypkern.eval import audits  # noqa: E402
from hypkern.eval.report import evaluate, targets_met  # noqa: E402
from hypkern.eval.retrieval import caption_retrieval, recall_at_k  # noqa: E402


def test_recall_at_k_known_ranks():
    # 3 images x 4 texts; image i's positive is text i (image 2 also matches text 3).
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.3],    # positive ranked 1st
                        [0.8, 0.7, 0.6, 0.5],    # positive ranked 2nd
                        [0.4, 0.9, 0.1, 0.3]])   # positives text 2 (4th) and text 3 (3rd): best 3rd
    pos = torch.zeros(3, 4, dtype=torch.bool)
    pos[0, 0] = pos[1, 1] = pos[2, 2] = pos[2, 3] = True
    r = recall_at_k(sim, pos, ks=(1, 2, 3))
    assert r["i2t"] == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}
    # Text queries: text 0 -> image 0 is 1st; text 1 -> image 1 is 2nd (image 2 has 0.9);
    # text 2 -> image 2 is 3rd (0.2, 0.6 above 0.1); text 3 -> image 2 is 2nd (0.5 above 0.3).
    assert r["t2i"] == {1: pytest.approx(1 / 4), 2: pytest.approx(3 / 4), 3: pytest.approx(1.0)}
    # Ties go to the query: an equal score does not push the positive down.
    tie = recall_at_k(torch.tensor([[0.5, 0.5]]), torch.tensor([[False, True]]), ks=(1,))
    assert tie["i2t"][1] == 1.0
    # A query subset: only image 1 (and its text 1) are queries.
    sub = recall_at_k(sim, pos, ks=(1, 2), queries=torch.tensor([False, True, False]))
    assert sub["i2t"] == {1: 0.0, 2: 1.0} and sub["t2i"] == {1: 0.0, 2: 1.0}


def test_caption_retrieval_with_repeated_captions():
    model = StubModel({"a": [1.0, 0.0], "b": [0.0, 1.0]})
    images = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.1, 1.0]])
    captions = ["a", "a", "b"]
    texts = ["a", "b"]
    r = caption_retrieval(model, images, captions, model.encode_text(model.tokenize(texts)), texts, ks=(1,))
    assert r["i2t"][1] == 1.0 and r["t2i"][1] == 1.0


# ----------------------------------------------------------------------------- audits

def test_cone_membership_on_constructed_points():
    model = StubModel({"t": [1.0, 0.0]}, geometry="lorentz", curv=1.0)
    e1 = torch.tensor([[1.0, 0.0]])
    text = 2.0 * e1
    # Half-aperture at |x| = 2, c = 1, K = 0.1: asin(0.1).
    assert float(hypkern.half_aperture(text, 1.0, 0.1, backend="reference")) == pytest.approx(math.asin(0.1), abs=1e-6)
    further_out = 5.0 * e1                              # on the ray beyond the text: angle 0, inside
    slightly_off = torch.tensor([[6.0, 0.1]])           # a small angle from the ray, farther out
    sideways = torch.tensor([[2.0, 2.0]])               # 45 degrees off at a similar norm: outside
    behind = -1.0 * e1                                  # towards the origin and beyond: outside
    inside = audits.cone_membership(model, text.repeat(4, 1), torch.cat([further_out, slightly_off, sideways, behind]))
    assert inside.tolist() == [True, True, False, False]
    assert audits.cone_membership(StubModel({"t": [1.0, 0.0]}), text, e1) is None  # Euclidean: n/a


def test_origin_distance_and_class_similarity():
    c = 0.7
    model = StubModel({"t": [1.0, 0.0]}, geometry="lorentz", curv=c)
    x = torch.tensor([[0.0, 0.0], [1.5, -2.0], [0.3, 0.1]])
    d = audits.origin_distance(model, x)
    expected = hypkern.pairwise_dist(x.double(), torch.zeros(1, 2, dtype=torch.float64), c, backend="reference")[:, 0]
    assert torch.allclose(d, expected, atol=1e-9)
    assert audits.origin_distance(StubModel({"t": [1.0]}), x).tolist() == pytest.approx([0.0, 2.5, math.sqrt(0.1)])
    euclid = StubModel({"t": [1.0, 0.0]})
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    clf = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = audits.class_similarity(euclid, feats, torch.tensor([0, 0, 1]), clf)
    r = math.sqrt(0.5)
    assert torch.allclose(m, torch.tensor([[0.5, 0.5], [r, r]], dtype=m.dtype))


def test_targets_met():
    before = {"forget": 0.9, "retain": 0.8, "chance": 0.05}
    ok = targets_met(before, {"forget": 0.10, "retain": 0.72, "chance": 0.05})
    assert ok["pass"] and ok["forget_limit"] == pytest.approx(0.10) and ok["retain_limit"] == pytest.approx(0.72)
    bad = targets_met(before, {"forget": 0.11, "retain": 0.71, "chance": 0.05})
    assert not bad["forget_ok"] and not bad["retain_ok"] and not bad["pass"]


def test_evaluate_writes_report(tmp_path):
    import json
    from hypkern.data import demo
    from hypkern.models import tiny_meru
    data = demo.load_demo("test", n_per_class=2)
    before, after = tiny_meru(seed=0), tiny_meru(seed=1)
    res = evaluate(after, data, ["red circle", "blue"], before=before, out_dir=str(tmp_path), title="t")
    for name in ("report.json", "report.md", "similarity.png", "origin_distance.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    # "blue" names every blue class (whole-word match); classes in index order.
    assert saved["after"]["forget_classes"] == ["red circle", "blue circle", "blue ring", "blue cross", "blue triangle"]
    zs = res["after"]["zeroshot"]
    assert saved["after"]["zeroshot"]["forget"] == pytest.approx(zs["forget"])
    assert set(saved["after"]["origin_distance"]["levels"]) == {"root", "family", "shape", "class", "caption"}
    assert 0 <= res["after"]["cone"]["forget"] <= 1
    assert res["targets"]["forget_limit"] == pytest.approx(zs["chance"] + 0.05)
    md = (tmp_path / "report.md").read_text()
    assert f"| forget | {100 * res['before']['zeroshot']['forget']:.1f} | {100 * zs['forget']:.1f} |" in md
