"""The embedded demo dataset (deterministic, hierarchical) and `hypkern demo --quick` end to end."""
from __future__ import annotations

import json

import pytest
import torch

from hypkern.data import demo


def test_demo_dataset_is_deterministic_and_split():
    a, b = demo.load_demo("test", seed=3, n_per_class=3), demo.load_demo("test", seed=3, n_per_class=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.labels == b.labels
    other_seed = demo.load_demo("test", seed=4, n_per_class=3)
    train = demo.load_demo("train", seed=3, n_per_class=3)
    assert not torch.equal(a.images, other_seed.images) and not torch.equal(a.images, train.images)
    assert a.images.shape == (60, 3, 32, 32) and a.images.dtype == torch.uint8
    item = a[5]
    assert set(item) >= {"image", "caption", "label", "target", "index"}
    assert item["image"].dtype == torch.float32 and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["label"] == demo.CLASSNAMES[item["target"]] and item["index"] == 5
    # Balanced classes and sizes.
    assert torch.bincount(a.targets, minlength=20).tolist() == [3] * 20
    big = demo.load_demo("train", n_per_class=4)
    assert int(big.sizes.sum()) == len(big) // 2


def test_demo_dataset_hierarchy():
    assert len(demo.CLASSNAMES) == 20 and len(set(demo.CLASSNAMES)) == 20  # enough to remove 1, 3, 10
    levels = demo.concept_texts()
    assert [len(levels[k]) for k in ("root", "family", "shape", "class", "caption")] == [1, 2, 4, 20, 40]
    d = demo.load_demo("test", n_per_class=2)
    for i in range(len(d)):
        chain = d.hierarchy(i)
        assert chain[0] == "a shape" and chain[-1] == d.captions[i]
        # Each level's text is the parent of the next, and a caption names its class.
        for parent, child in zip(chain, chain[1:]):
            assert d.parents[child] == parent
        assert d.labels[i] in d.captions[i]
        colour, shape = d.labels[i].split()
        assert chain[2] == f"a {shape}" and chain[3] == f"a {colour} {shape}"
    assert d.parents["a circle"] == "a round shape" and d.parents["a cross"] == "an angular shape"


def test_demo_images_show_their_colour():
    d = demo.load_demo("val", n_per_class=2)
    for i in range(0, len(d), 7):
        img = d[i]["image"]
        colour = d.labels[i].split()[0]
        rgb = torch.tensor(demo._RGB[colour])
        # The shape's pixels are near the class colour (jitter and noise are small).
        flat = img.reshape(3, -1)
        mask = (flat - rgb[:, None]).abs().max(dim=0).values < 0.25
        assert mask.sum() >= 20, (i, d.captions[i])


def test_pretraining_is_deterministic():
    from hypkern.eval.pretrain import PretrainConfig, pretrain_demo_model
    cfg = PretrainConfig(steps=2, batch_size=8, n_per_class=1, patch_size=8, seed=5)
    a = pretrain_demo_model("meru", cfg, progress=False, log=lambda m: None)
    b = pretrain_demo_model("meru", cfg, progress=False, log=lambda m: None)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def _cell(row: dict, key: str) -> str:
    return f"{row[key]:5.1f}"


def test_quick_demo_end_to_end(tmp_path):
    from hypkern.cli import main
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
               "--seed", "1"])
    assert rc == 0  # without --strict a miss never fails the command
    for name in ("report.json", "report.md", "accuracy.png", "hierarchy.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert [(r["model"], r["method"], r["n_concepts"]) for r in rows] == [
        ("meru", "hac", 1), ("meru", "hac", 3), ("clip", "ac", 1), ("clip", "ac", 3)]
    md = (out / "report.md").read_text()
    for r in rows:
        name = f"{r['model']}-{r['n_concepts']}"
        run = json.loads((out / f"{name}_report.json").read_text())
        assert (out / f"{name}_similarity.png").stat().st_size > 0
        before, after = run["before"]["zeroshot"], run["after"]["zeroshot"]
        # The table row is the run's numbers, and PASS/FAIL is the targets applied to them.
        assert r["forget_before"] == pytest.approx(100 * before["forget"], abs=0.01)
        assert r["forget_after"] == pytest.approx(100 * after["forget"], abs=0.01)
        assert r["retain_before"] == pytest.approx(100 * before["retain"], abs=0.01)
        assert r["retain_after"] == pytest.approx(100 * after["retain"], abs=0.01)
        assert r["chance"] == pytest.approx(5.0)
        assert sorted(run["after"]["forget_classes"]) == sorted(r["concepts"])
        # (checked on the unrounded fractions: the row shows them rounded to 0.01 points)
        assert r["forget_ok"] == (after["forget"] <= after["chance"] + 0.05 + 1e-9)
        assert r["retain_ok"] == (after["retain"] >= 0.9 * before["retain"] - 1e-9)
        assert r["pass"] == (r["forget_ok"] and r["retain_ok"])
        assert r["i2t_r1_after"] == pytest.approx(100 * run["after"]["retrieval"]["retain"]["i2t"]["1"], abs=0.01)
        # The Markdown table shows the same numbers.
        line = next(l for l in md.splitlines() if l.startswith(f"| {r['name']} |"))
        assert f"{_cell(r, 'forget_before')} → {_cell(r, 'forget_after')}" in line
        assert f"{_cell(r, 'retain_before')} → {_cell(r, 'retain_after')}" in line
        assert ("PASS" in line) == r["pass"]
    assert report["all_pass"] == all(r["pass"] for r in rows)
    # Concept sets are nested and drawn from the seed.
    sets = report["concept_sets"]
    assert sets["3"][:1] == sets["1"] and all(c in demo.CLASSNAMES for c in sets["3"])


def test_strict_exit_code(monkeypatch, tmp_path):
    import hypkern.demo as D
    from hypkern.cli import main
    monkeypatch.setattr(D, "run_demo", lambda **kw: {"all_pass": False})
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert main(["demo", "--quick", "--strict", "--out", str(tmp_path)]) == 1
    monkeypatch.setattr(D, "run_demo", lambda **kw: {"all_pass": True})
    assert main(["demo", "--strict", "--out", str(tmp_path)]) == 0
