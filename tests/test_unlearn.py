"""hypkern.unlearning: objectives, sampling, gradient caching, end-to-end forgetting, CLI, errors.

The end-to-end tests pretrain a very small MERU / CLIP on a six-class toy problem (seconds),
then unlearn and check zero-shot accuracy on held-out images: forget classes fall to about
zero, retain classes stay.
"""
from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch

from hypkern.unlearning import ConfigError, DataError, UnlearnConfig, unlearn
from hypkern.unlearning.data import StepSampler, split_concepts
from hypkern.unlearning.objectives import StepEmbeddings, entailment_calibration, unlearning_loss
from hypkern.unlearning.params import select_trainable
from hypkern.unlearning.toy import pretrain, toy_model, toy_pairs
from hypkern.lorentz import ops, reference as R

torch.set_num_threads(1)

FAST = dict(steps=20, lr=3e-4, retain_batch_size=24, forget_batch_size=12, progress=False,
            schedule="constant")


@pytest.fixture(scope="module")
def toy_data():
    return toy_pairs(20, seed=0), toy_pairs(10, seed=1)


@pytest.fixture(scope="module")
def pretrained(toy_data):
    train, _ = toy_data
    return {g: pretrain(toy_model(g, seed=0), train) for g in ("lorentz", "euclidean")}


# ---------------------------------------------------------------------------- objectives

def _rand_points(n, d=8, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale


def test_negative_calibration_is_the_weighted_mean():
    """align = (Σ_retain ℓ + α Σ_forget ℓ) / (N_r + α N_f), forget positives = mismatched retain captions."""
    ri, rt, fi, ft = (_rand_points(n, seed=s) for n, s in ((6, 0), (6, 1), (3, 2), (3, 3)))
    curv, scale = torch.tensor(1.0), torch.tensor(10.0)
    cfg = UnlearnConfig(alpha=0.5, beta=0.0, positive_target=1.0)
    _, terms = unlearning_loss(StepEmbeddings(ri, rt, fi, ft), geometry="lorentz", method="ac", cfg=cfg,
                               logit_scale=scale, curv=curv, seed=3, step=7)
    from hypkern.unlearning.objectives import mismatch_targets
    mu = mismatch_targets(6, 3, 3, 7)
    assert len(set(mu.tolist())) == 3 and mu.max() < 6  # distinct retain captions
    logits = -scale * R.pairwise_dist(torch.cat([ri, fi]).double(), torch.cat([rt, ft]).double(), curv.double())
    t = torch.cat([torch.arange(6), mu])
    per = 0.5 * (torch.logsumexp(logits, 1) - logits[torch.arange(9), t]) \
        + 0.5 * (torch.logsumexp(logits, 0)[t] - logits[torch.arange(9), t])
    expected = (per[:6].sum() + 0.5 * per[6:].sum()) / (6 + 0.5 * 3)
    assert math.isclose(terms["align"], float(expected), rel_tol=1e-5)
    assert math.isclose(terms["retain_ce"], float(per[:6].mean()), rel_tol=1e-5)
    assert math.isclose(terms["forget_ce"], float(per[6:].mean()), rel_tol=1e-5)
    assert math.isclose(terms["total"], terms["align"], rel_tol=1e-6)  # beta = 0: nothing else (AC)


def test_positive_calibration_bounded_on_meru_and_cosine_on_clip():
    fi = _rand_points(4, seed=0)
    ft = fi + 0.01  # forget pairs almost coincide: positive term active
    far = fi * 40  # far from their captions: hinge inactive
    curv, scale = torch.tensor(1.0), torch.tensor(10.0)
    ri, rt = _rand_points(5, seed=1), _rand_points(5, seed=2)
    cfg = UnlearnConfig(alpha=1.0, beta=1.0, positive_target=2.0)
    for img, expect_zero in ((fi, False), (far, True)):
        _, terms = unlearning_loss(StepEmbeddings(ri, rt, img, ft), geometry="lorentz", method="ac", cfg=cfg,
                                   logit_scale=scale, curv=curv)
        d = R.dist(img.double(), ft.double(), 1.0)
        assert math.isclose(terms["positive"], float(torch.relu(2.0 - d).mean()), rel_tol=1e-5, abs_tol=1e-7)
        assert (terms["positive"] == 0.0) == expect_zero
    soft = UnlearnConfig(positive_bound="softplus")
    _, terms = unlearning_loss(StepEmbeddings(ri, rt, fi, ft), geometry="lorentz", method="ac", cfg=soft,
                               logit_scale=scale, curv=curv)
    d = R.dist(fi.double(), ft.double(), 1.0)
    assert math.isclose(terms["positive"], float(torch.nn.functional.softplus(-10.0 * d).mean()), rel_tol=1e-5)
    _, terms = unlearning_loss(StepEmbeddings(ri, rt, fi, ft), geometry="euclidean", method="ac",
                               cfg=UnlearnConfig(), logit_scale=scale)
    cos = torch.nn.functional.cosine_similarity(fi, ft, dim=-1).mean()
    assert math.isclose(terms["positive"], float(cos), rel_tol=1e-5)


def test_hac_terms_entailment_and_norm():
    ri, rt = _rand_points(5, seed=1), _rand_points(5, seed=2)
    ft = _rand_points(4, seed=3, scale=0.5)
    inside = ft * 3 + 0.03 * _rand_points(4, seed=4, scale=1.0)  # near the text's ray, further out: in its cone
    curv = torch.tensor(1.0)
    ang = ops.oxy_angle(ft, inside, curv)
    ap = ops.half_aperture(ft, curv, 0.1)
    assert (ang < ap).all()
    val = entailment_calibration(ft, inside, curv, margin=0.1)
    ref = torch.relu(R.half_aperture(ft.double(), 1.0, 0.1) - R.oxy_angle(ft.double(), inside.double(), 1.0) + 0.1)
    assert math.isclose(float(val), float(ref.mean()), abs_tol=2e-4)
    assert float(val) > 0
    outside = -ft  # opposite direction: far outside the cone
    assert float(entailment_calibration(ft, outside, curv, margin=0.1)) == 0.0
    norms = [x.norm(dim=-1) for x in (ri, rt, inside, ft)]
    emb = StepEmbeddings(ri, rt, inside, ft, *norms)
    cfg = UnlearnConfig(delta=2.0, gamma=1.0, retain_entail_weight=0.2, beta=0.0)
    total, terms = unlearning_loss(emb, geometry="lorentz", method="hac", cfg=cfg,
                                   logit_scale=torch.tensor(10.0), curv=curv)
    assert terms["norm_reg"] == 0.0  # same norms as the anchors
    expected = terms["align"] + terms["entail_cal"] + 0.2 * terms["retain_entail"]
    assert math.isclose(float(total), expected, rel_tol=1e-5) and terms["entail_cal"] > 0
    emb2 = StepEmbeddings(ri, rt, inside, ft, *[n + 0.5 for n in norms])
    _, terms2 = unlearning_loss(emb2, geometry="lorentz", method="hac", cfg=cfg,
                                logit_scale=torch.tensor(10.0), curv=curv)
    assert math.isclose(terms2["norm_reg"], 0.25, rel_tol=1e-5)
    with pytest.raises(ValueError, match="Lorentz"):
        unlearning_loss(emb, geometry="euclidean", method="hac", cfg=cfg, logit_scale=torch.tensor(10.0))


# ---------------------------------------------------------------------------- sampling, params

def test_sampler_balanced_deterministic_and_covers_retain(toy_data):
    train, _ = toy_data
    split = split_concepts(train, ["dog", "car", "boat"])
    assert all(len(v) == 20 for v in split.forget.values()) and len(split.retain) == 60
    s = StepSampler(split, retain_batch_size=12, forget_batch_size=8, seed=5)
    seen_retain, per_concept = [], {c: 0 for c in split.forget}
    for step in range(5):
        r, f, which = s(step)
        assert (r, f, which) == s(step)  # pure function of the step
        assert len(r) == 12 and len(f) == 8 and set(r) <= set(split.retain)
        counts = [which.count(j) for j in range(3)]
        assert max(counts) - min(counts) <= 1
        for j, c in enumerate(split.forget):
            assert all(i in split.forget[c] for i, w in zip(f, which) if w == j)
            per_concept[c] += counts[j]
        seen_retain += r
    assert sorted(seen_retain) == sorted(split.retain)  # 5 x 12 = one retain epoch, no repeats
    assert max(per_concept.values()) - min(per_concept.values()) <= 1
    assert StepSampler(split, 12, 8, seed=6)(0) != s(0)


def test_trainable_selection():
    model = toy_model("lorentz")
    names = select_trainable(model, "projections")
    assert set(names) == {"visual_proj.weight", "textual_proj.weight", "visual.norm.weight",
                          "visual.norm.bias", "textual.ln_final.weight", "textual.ln_final.bias"}
    assert not model.visual.blocks[0].attn.qkv.weight.requires_grad
    model = toy_model("lorentz")
    model.visual.blocks.append(copy.deepcopy(model.visual.blocks[0]))
    names = select_trainable(model, "last_blocks", last_k=1)
    assert any(n.startswith("visual.blocks.1.") for n in names)
    assert not any(n.startswith("visual.blocks.0.") for n in names)
    assert any(n.startswith("textual.resblocks.0.") for n in names)  # the text tower has one block
    names = select_trainable(toy_model("lorentz"), "all")
    assert "curv" not in names and "logit_scale" not in names and "visual_alpha" not in names
    assert "visual.pos_embed" not in names  # MERU keeps it frozen
    assert "curv" in select_trainable(toy_model("lorentz"), "all", train_scalars=True)


def test_unlearn_leaves_requires_grad_flags_as_found(toy_data):
    train, _ = toy_data
    model = toy_model("lorentz")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    unlearn(model, ["dog"], train, steps=1, trainable="projections", retain_batch_size=4, forget_batch_size=2,
            progress=False, eval=False)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


# ---------------------------------------------------------------------------- gradient caching

@pytest.mark.parametrize("geometry", ["lorentz", "euclidean"])
def test_gradient_caching_equals_plain_large_batch(geometry, toy_data):
    """One SGD step (the update is lr x gradient): micro-batches of 5 == the whole batch of 32."""
    train, _ = toy_data
    cfg = dict(steps=2, lr=0.5, optimizer="sgd", momentum=0.0, grad_clip=None, schedule="constant",
               retain_batch_size=20, forget_batch_size=12, progress=False, eval=False)
    start = toy_model(geometry, seed=1)
    plain = unlearn(copy.deepcopy(start), ["dog", "car"], train, **cfg).model
    cached = unlearn(copy.deepcopy(start), ["dog", "car"], train, micro_batch_size=5, **cfg).model
    moved = 0.0
    for (n, a), b, s in zip(plain.named_parameters(), cached.parameters(), start.parameters()):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
        moved = max(moved, float((a - s).detach().abs().max()))
    assert moved > 1e-3  # the step really changed the weights


def test_bf16_autocast_runs_and_keeps_fp32_geometry(toy_data):
    train, _ = toy_data
    res = unlearn(toy_model("lorentz", seed=2), ["dog"], train, steps=2, precision="bf16", micro_batch_size=8,
                  retain_batch_size=16, forget_batch_size=4, progress=False, eval=False)
    assert all(math.isfinite(r["total"]) for r in res.history)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())


# ---------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("geometry,method", [("lorentz", "hac"), ("euclidean", "ac")])
def test_unlearn_one_concept(geometry, method, pretrained, toy_data, tmp_path):
    train, test = toy_data
    model = copy.deepcopy(pretrained[geometry])
    res = unlearn(model, ["dog"], train, eval_data=test, out_dir=str(tmp_path), **FAST)
    assert res.method == method
    b, a = res.before, res.after
    assert b["forget"] >= 0.9 and b["retain"] >= 0.9, "pretraining failed: the test has no signal"
    assert a["forget"] <= 0.2, f"forget accuracy {a['forget']} (before {b['forget']})"
    assert a["retain"] >= b["retain"] - 0.1, f"retain accuracy {b['retain']} -> {a['retain']}"
    assert len(res.history) == FAST["steps"]
    assert res.history[-1]["forget_ce"] < res.history[0]["forget_ce"]  # forget images moved to mismatches
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(1, FAST["steps"] + 1))
    assert "forget" in (tmp_path / "summary.txt").read_text()
    assert "dog" in res.summary()


def test_stop_at_a_forgetting_target(pretrained, toy_data, tmp_path):
    """stop_forget_acc: the run ends at the first check where the forget accuracy is at or
    below the target, with a checkpoint there, instead of running every step."""
    train, test = toy_data
    model = copy.deepcopy(pretrained["euclidean"])
    said = []
    res = unlearn(model, ["dog"], train, eval_data=test, out_dir=str(tmp_path), log=said.append,
                  **{**FAST, "steps": 200, "stop_forget_acc": 0.3, "stop_check_every": 4})
    n = len(res.history)
    assert n < 200 and n % 4 == 0, n
    assert res.after["forget"] <= 0.3 and res.before["forget"] >= 0.9
    assert any(f"after step {n} of 200" in m for m in said), said
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == n
    with pytest.raises(ConfigError, match="'stop_forget_acc'"):
        UnlearnConfig(stop_forget_acc=5.0)


@pytest.mark.parametrize("geometry", ["lorentz", "euclidean"])
def test_unlearn_several_concepts(geometry, pretrained, toy_data):
    train, test = toy_data
    model = copy.deepcopy(pretrained[geometry])
    res = unlearn(model, "dog, car,boat", train, eval_data=test, **{**FAST, "steps": 30, "forget_batch_size": 18})
    assert res.concepts == ["dog", "car", "boat"]
    b, a = res.before, res.after
    assert b["forget"] >= 0.9 and b["retain"] >= 0.9, "pretraining failed: the test has no signal"
    for c in ("dog", "car", "boat"):
        assert a["per_class"][c] <= 0.2, f"{c}: {b['per_class'][c]} -> {a['per_class'][c]}"
    assert a["retain"] >= b["retain"] - 0.1, f"retain accuracy {b['retain']} -> {a['retain']}"


def test_demo_default_and_plain_function(capsys):
    import inspect
    import hypkern
    U = hypkern.unlearn
    assert inspect.isfunction(U) and list(inspect.signature(U).parameters)[:3] == ["model", "concepts", "data"]
    import hypkern.unlearning  # noqa: F401  (importing the subpackage must not shadow the function)
    assert hypkern.unlearn is U
    res = U(toy_model("lorentz"), ["red circle"], steps=1, retain_batch_size=4, forget_batch_size=2,
            progress=False, eval=False)
    assert "embedded demo dataset" in capsys.readouterr().err
    assert res.data_source.startswith("embedded demo") and len(res.history) == 1


# ---------------------------------------------------------------------------- errors

def test_bad_inputs_give_clear_errors(toy_data, tmp_path):
    train, _ = toy_data
    model = toy_model("euclidean")
    with pytest.raises(DataError, match="no concepts"):
        unlearn(model, [], train)
    with pytest.raises(DataError, match="no concepts"):
        unlearn(model, " , ", train)
    with pytest.raises(DataError, match="'zebra'"):
        unlearn(model, ["dog", "zebra"], train)
    with pytest.raises(DataError, match=r"(?s)'zebra'.*pass data="):
        unlearn(model, ["zebra"])  # not in the demo dataset: tell the user to pass data=
    from hypkern.data import TensorPairs
    with pytest.raises(DataError, match="empty"):
        unlearn(model, ["dog"], TensorPairs(torch.zeros(0, 3, 16, 16), []))
    with pytest.raises(DataError, match="retain"):
        unlearn(model, ["photo"], train)  # every caption names it
    with pytest.raises(ConfigError, match=r"'aplha'.*did you mean 'alpha'"):
        unlearn(model, ["dog"], train, aplha=1.0)
    with pytest.raises(ConfigError, match="'beta'"):
        unlearn(model, ["dog"], train, beta=-1.0)
    with pytest.raises(ConfigError, match="'optimizer'"):
        UnlearnConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="'steps'"):
        UnlearnConfig(steps=0)
    with pytest.raises(ConfigError, match="'method'.*hac"):
        unlearn(model, ["dog"], train, method="hac")  # HAC on a Euclidean model
    with pytest.raises(ConfigError, match="'resume'"):
        UnlearnConfig(resume=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: 1.0\ngamma_marginn: 0.2\n")
    with pytest.raises(ConfigError, match="gamma_marginn"):
        UnlearnConfig.from_file(bad)


def test_config_files_roundtrip(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("unlearn:\n  alpha: 0.5\n  trainable: last_blocks\n  last_k: 1\n  betas: [0.9, 0.99]\n")
    cfg = UnlearnConfig.from_file(y, steps=7)
    assert (cfg.alpha, cfg.trainable, cfg.last_k, cfg.betas, cfg.steps) == (0.5, "last_blocks", 1, (0.9, 0.99), 7)
    j = tmp_path / "c.json"
    j.write_text(cfg.to_json())
    assert UnlearnConfig.from_file(j) == cfg
    assert UnlearnConfig().resolved_method("lorentz") == "hac"
    assert UnlearnConfig().resolved_method("euclidean") == "ac"


# ---------------------------------------------------------------------------- backends, host syncs

#: Which backend settings run an unlearning step on the CPU (True) and which the config
#: refuses before step 0 (False): MERU needs a contrastive loss, dist and entailment; CLIP
#: only the contrastive loss. Triton runs on the CPU only under the interpreter.
_TRITON_CPU = __import__("os").environ.get("TRITON_INTERPRET") == "1"
_BACKEND_RUNS = {
    "reference": (True, True), "chunked": (False, True), "native": (False, False),
    "triton": (_TRITON_CPU, _TRITON_CPU), "native,chunked": (True, True), "chunked,native": (True, True),
    "native,reference": (True, True),
}


def test_backend_table_covers_every_backend():
    from hypkern.kernels import registry
    assert set(registry.BACKENDS) <= set(_BACKEND_RUNS)


@pytest.mark.parametrize("backend", sorted(_BACKEND_RUNS))
@pytest.mark.parametrize("geometry", ["lorentz", "euclidean"])
def test_config_backend_checked_before_step_0(backend, geometry, toy_data):
    train, _ = toy_data
    runs = _BACKEND_RUNS[backend][geometry == "euclidean"]
    steps_run = []
    kw = dict(steps=1, retain_batch_size=4, forget_batch_size=2, progress=False, eval=False, backend=backend,
              callbacks=[lambda done, record: steps_run.append(record)])
    if runs:
        res = unlearn(toy_model(geometry), ["dog"], train, **kw)
        assert len(steps_run) == 1 and math.isfinite(res.history[-1]["total"])
    else:
        with pytest.raises(ConfigError, match=r"field 'backend'.*cannot run .*backends that can"):
            unlearn(toy_model(geometry), ["dog"], train, **kw)
        assert steps_run == []  # refused before the first step


def test_config_backend_names_and_parallel_checked_on_construction():
    with pytest.raises(ConfigError, match=r"'backend'.*must be one of .*'cuda'"):
        UnlearnConfig(backend="cuda")
    with pytest.raises(ConfigError, match=r"'backend'.*must be one of .*'chunkd'"):
        UnlearnConfig(backend="native,chunkd")
    with pytest.raises(ConfigError, match=r"'parallel'.*'fsdp' is not offered"):
        UnlearnConfig(parallel="fsdp")
    with pytest.raises(ConfigError, match="'check_values'"):
        UnlearnConfig(check_values="never")


_HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


@pytest.mark.parametrize("geometry,extra", [("lorentz", dict(micro_batch_size=3)), ("euclidean", {}),
                                            ("lorentz", dict(check_values="every_step"))])
def test_no_host_sync_inside_a_step_after_the_first(geometry, extra, toy_data, monkeypatch):
    """Counts every read of a tensor value on the host (what is a device->host sync on a GPU)
    inside each optimiser step: the first step runs the value checks, later steps read
    nothing (unless check_values='every_step'); the history still holds every step."""
    from hypkern.unlearning import trainer as T
    train, _ = toy_data
    counts, real_step = [], T.Trainer._train_step
    current = [0]

    def counting(name):
        real = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            caller = sys._getframe(1).f_code
            # torch's optimisers read their own step counter, a CPU tensor even on CUDA: no sync
            if not (caller.co_name == "_get_value" and caller.co_filename.endswith("optimizer.py")):
                current[0] += 1
            return real(self, *a, **k)
        return read

    def counted_step(self, *a, **k):
        current[0] = 0
        with monkeypatch.context() as m:
            for name in _HOST_READS:
                m.setattr(torch.Tensor, name, counting(name))
            out = real_step(self, *a, **k)
        counts.append(current[0])
        return out

    monkeypatch.setattr(T.Trainer, "_train_step", counted_step)
    res = unlearn(toy_model(geometry), ["dog"], train, steps=4, retain_batch_size=6, forget_batch_size=3,
                  progress=False, eval=False, log_every=100, **extra)
    assert len(counts) == 4 and counts[0] > 0, counts  # the counter sees the first step's checks
    if extra.get("check_values") == "every_step":
        assert all(c > 0 for c in counts), counts
    else:
        assert counts[1:] == [0, 0, 0], counts
    assert [r["step"] for r in res.history] == [1, 2, 3, 4]
    assert all(isinstance(r["total"], float) and isinstance(r["grad_norm"], float) for r in res.history)


def test_one_contrastive_pass_per_step(toy_data, monkeypatch):
    """align, retain_ce and forget_ce come from one call of the fused contrastive kernel."""
    from hypkern.kernels import chunked
    train, _ = toy_data
    calls, real = [], chunked.contrastive_fwd

    def probe(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(chunked, "contrastive_fwd", probe)
    res = unlearn(toy_model("lorentz"), ["dog"], train, steps=3, retain_batch_size=6, forget_batch_size=3,
                  progress=False, eval=False, backend="native,chunked")
    assert len(calls) == 3
    r = res.history[-1]
    assert r["align"] == pytest.approx((6 * r["retain_ce"] + 3 * r["forget_ce"]) / 9, rel=1e-5)


# ---------------------------------------------------------------------------- CLI

def test_cli_end_to_end(tmp_path, capsys):
    from PIL import Image
    from hypkern.cli import main
    from hypkern.models import load_model, save_model

    data = toy_pairs(4, seed=3)
    root = tmp_path / "pairs"
    for i in range(len(data)):
        item = data[i]
        d = root / item["label"]
        d.mkdir(parents=True, exist_ok=True)
        arr = (item["image"].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(arr).save(d / f"{i}.png")
    save_model(toy_model("lorentz"), tmp_path / "start")
    cfg = tmp_path / "u.json"
    cfg.write_text(json.dumps({"retain_batch_size": 8, "forget_batch_size": 2, "lr": 1e-4}))
    out = tmp_path / "out"
    argv = ["unlearn", "--model", str(tmp_path / "start"), "--concepts", "dog,cat", "--data", str(root),
            "--config", str(cfg), "--out", str(out), "--steps", "2", "--seed", "3", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "HAC" in text and "zero-shot" in text
    model = load_model(out / "model")
    assert model.geometry == "lorentz"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == 3 and summary["concepts"] == ["dog", "cat"]
    assert main(argv + ["--set", "alhpa=2"]) == 2
    assert "alhpa" in capsys.readouterr().err
    assert main(["unlearn", "--model", str(tmp_path / "start"), "--concepts", "zebra", "--data", str(root),
                 "--out", str(out)]) == 2
    assert "zebra" in capsys.readouterr().err
