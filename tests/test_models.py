"""Models: MERU checkpoint layout, save/load round trips, clear key errors, the shared interface,
and the geometry of the embeddings (MERU on the hyperboloid)."""
from __future__ import annotations

import math

import pytest
import torch

from hypkern.models import (
    MERU, MERUCLIP, CheckpointError, CheckpointKeyError, MERUConfig, OpenCLIPModel, VisionLanguageModel,
    infer_meru_config, load_model, load_open_clip_weights, save_model, sincos_position_embedding,
    tiny_clip, tiny_meru, tiny_open_clip,
)
from hypkern.models.meru import TINY, meru_vit_l, meru_vit_s

TINY_HEADS = dict(vision_heads=TINY["vision_heads"], text_heads=TINY["text_heads"])
CAPTIONS = ["a photo of a dog.", "Two CATS on a sofa", "", "a very long caption " * 30]


def meru_keys(vision_layers: int, text_layers: int, lorentz: bool = True) -> set[str]:
    """The state-dict keys of an official MERU (or MERU-CLIP) checkpoint, written out from the
    published layout (not from our module)."""
    keys = {"visual.cls_token", "visual.pos_embed", "visual.patch_embed.proj.weight",
            "visual.patch_embed.proj.bias", "visual.norm.weight", "visual.norm.bias"}
    for i in range(vision_layers):
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"visual.blocks.{i}.{m}.weight", f"visual.blocks.{i}.{m}.bias"}
    keys |= {"textual.token_embed.weight", "textual.posit_embed", "textual.attn_mask",
             "textual.ln_final.weight", "textual.ln_final.bias"}
    for i in range(text_layers):
        p = f"textual.resblocks.{i}."
        keys |= {p + "attn.in_proj_weight", p + "attn.in_proj_bias", p + "attn.out_proj.weight",
                 p + "attn.out_proj.bias"}
        for m in ("ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2"):
            keys |= {f"{p}{m}.weight", f"{p}{m}.bias"}
    keys |= {"visual_proj.weight", "textual_proj.weight", "logit_scale", "pixel_mean", "pixel_std"}
    if lorentz:
        keys |= {"curv", "visual_alpha", "textual_alpha"}
    return keys


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["meru", "clip", "open_clip"])
def model(request):
    return {"meru": tiny_meru, "clip": tiny_clip, "open_clip": tiny_open_clip}[request.param](seed=1).eval()


def embed(model, images):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(model.tokenize(CAPTIONS))


def lorentz_self_inner(x: torch.Tensor, curv) -> torch.Tensor:
    x = x.double()
    x_t = torch.sqrt(1 / float(torch.as_tensor(curv).detach()) + (x * x).sum(-1))
    return (x * x).sum(-1) - x_t * x_t


# ------------------------------------------------------------------------------ MERU layout

def test_tiny_meru_has_exactly_meru_keys():
    assert set(tiny_meru().state_dict()) == meru_keys(TINY["vision_layers"], TINY["text_layers"])
    assert set(tiny_clip().state_dict()) == meru_keys(TINY["vision_layers"], TINY["text_layers"], lorentz=False)


@pytest.mark.parametrize("factory,width,layers,heads", [(meru_vit_s, 384, 12, 12), (meru_vit_l, 1024, 24, 16)])
def test_official_shapes_and_inferred_config(factory, width, layers, heads):
    with torch.device("meta"):
        m = factory()
    sd = m.state_dict()
    assert set(sd) == meru_keys(layers, 12)
    assert sd["textual.posit_embed"].shape == (77, 512)
    assert sd["textual.token_embed.weight"].shape == (49408, 512)
    assert sd["textual.attn_mask"].shape == (77, 77) and sd["textual.attn_mask"].dtype == torch.bool
    assert sd["visual.pos_embed"].shape == (1, 197, width)
    assert sd["visual_proj.weight"].shape == (512, width) and sd["textual_proj.weight"].shape == (512, 512)
    assert m.visual.blocks[0].attn.num_heads == heads
    assert m.visual.norm.eps == 1e-5 and m.textual.resblocks[0].attn.num_heads == 8
    cfg = infer_meru_config(sd)
    assert (cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.image_size, cfg.patch_size) == (
        width, layers, heads, 224, 16)
    assert (cfg.text_layers, cfg.text_heads, cfg.embed_dim, cfg.geometry) == (12, 8, 512, "lorentz")


def test_meru_checkpoint_loads_strictly_and_matches(tmp_path, images):
    src = tiny_meru(seed=3).eval()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    assert set(sd) == meru_keys(TINY["vision_layers"], TINY["text_layers"])
    path = tmp_path / "meru_tiny.pth"
    torch.save({"model": sd, "optimizer": {}, "scheduler": {}, "iteration": 7}, path)
    loaded = load_model(path, **TINY_HEADS)
    assert isinstance(loaded, MERU) and loaded.geometry == "lorentz"
    for a, b in zip(embed(src, images), embed(loaded, images)):
        assert torch.equal(a, b)
    # A DDP-style "module." prefix and a bare state dict load too.
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    assert torch.equal(embed(load_model(path, **TINY_HEADS), images)[0], embed(src, images)[0])


def test_official_width_missing_blocks_are_reported():
    with torch.device("meta"):
        sd = meru_vit_s().state_dict()
    cut = {k: v for k, v in sd.items() if not k.startswith(("visual.blocks.11.", "textual.resblocks.11."))}
    cfg = infer_meru_config(cut)
    assert cfg.vision_layers == 12 and cfg.text_layers == 12  # so a strict load names blocks 11


def test_heads_of_non_official_width_must_be_given(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"model": tiny_meru().state_dict()}, path)
    with pytest.raises(CheckpointError, match="vision_heads"):
        load_model(path)


@pytest.mark.parametrize("change", ["drop", "extra", "shape", "truncate"])
def test_wrong_state_dict_names_the_keys(tmp_path, change):
    sd = dict(tiny_meru().state_dict())
    if change == "drop":
        del sd["textual.resblocks.1.ln_2.bias"], sd["curv"]
        expect = ["textual.resblocks.1.ln_2.bias", "curv", "missing"]
    elif change == "extra":
        sd["visual.head.weight"] = torch.zeros(3)
        expect = ["visual.head.weight", "unexpected"]
    elif change == "shape":
        sd["textual_proj.weight"] = torch.zeros(64, 32)
        expect = ["textual_proj.weight", "(64, 32)", "shape mismatch"]
    else:  # a truncated checkpoint: its last keys are gone
        keys = list(sd)
        sd = {k: sd[k] for k in keys[: len(keys) // 2]}
        expect = [keys[len(keys) // 2], "missing", f"{len(keys) - len(keys) // 2} missing"]
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointKeyError) as err:  # architecture given: every key is checked
        load_model(path, config=MERUConfig(**TINY))
    for text in expect:
        assert text in str(err.value)
    if change == "truncate":  # the exception carries the full list
        assert err.value.missing == keys[len(keys) // 2:]
    with pytest.raises(CheckpointKeyError) as err:  # architecture inferred from the shapes
        load_model(path, **TINY_HEADS)
    if change == "truncate":
        assert "textual.token_embed.weight" in str(err.value) and "truncated" in str(err.value)
    else:
        for text in expect:
            assert text in str(err.value)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_model(junk)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(tmp_path / "nope.pth")
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_model(lst)
    st = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(st))
    with pytest.raises(CheckpointError, match="no hypkern config"):
        load_model(st)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_model("ViT-B-32", weights=tmp_path / "missing.bin")


# ------------------------------------------------------------------------------ save / load

@pytest.mark.parametrize("as_file", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, model, images, as_file):
    target = tmp_path / ("m.safetensors" if as_file else "m")
    save_model(model, target)
    assert (tmp_path / ("m.json" if as_file else "m/config.json")).is_file()
    loaded = load_model(target)
    assert type(loaded) is type(model) and loaded.geometry == model.geometry
    for a, b in zip(embed(model, images), embed(loaded, images)):
        assert torch.equal(a, b)
    assert torch.equal(loaded.logit_scale, model.logit_scale)


def test_open_clip_weights_file(tmp_path, images):
    src, dst = tiny_open_clip(seed=5).eval(), tiny_open_clip(seed=6).eval()
    torch.save({"state_dict": src.model.state_dict()}, tmp_path / "w.pt")
    load_open_clip_weights(dst, tmp_path / "w.pt")
    assert torch.equal(embed(src, images)[0], embed(dst, images)[0])
    bad = dict(src.model.state_dict())
    bad.pop("text_projection")
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError, match="text_projection"):
        load_open_clip_weights(dst, tmp_path / "bad.pt")


def test_open_clip_config_name_with_local_weights(tmp_path, images):
    """An open_clip config *name* plus a local weights file (a tiny config registered for the test)."""
    import json
    import open_clip
    from hypkern.models.openclip_adapter import TINY_OPEN_CLIP_CFG
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "hypkern-test-tiny.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(tmp_path / "cfgs")
    src = OpenCLIPModel(open_clip.create_model("hypkern-test-tiny"), name="hypkern-test-tiny").eval()
    from safetensors.torch import save_file
    save_file(src.model.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_model("hypkern-test-tiny", weights=tmp_path / "w.safetensors")
    assert isinstance(loaded, OpenCLIPModel) and loaded.image_size == 32
    for a, b in zip(embed(src, images), embed(loaded, images)):
        assert torch.equal(a, b)
    save_model(loaded, tmp_path / "saved")  # saved by name, rebuilt by name
    assert torch.equal(embed(load_model(tmp_path / "saved"), images)[1], embed(src, images)[1])


def test_open_clip_hub_style_folder(tmp_path, images):
    import json
    from safetensors.torch import save_file
    from hypkern.models.openclip_adapter import TINY_OPEN_CLIP_CFG
    src = tiny_open_clip(seed=9).eval()
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_OPEN_CLIP_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    with pytest.raises(CheckpointError, match="without weights"):
        load_model(tmp_path)
    save_file(src.model.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    loaded = load_model(tmp_path)
    assert loaded.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)
    assert torch.equal(embed(src, images)[1], embed(loaded, images)[1])


def test_deepcopy_is_independent(images):
    import copy
    m = tiny_meru(seed=8).eval()
    frozen = copy.deepcopy(m)
    assert torch.equal(embed(m, images)[0], embed(frozen, images)[0])
    with torch.no_grad():
        m.log_curv.fill_(0.5)
    assert float(frozen.curv.detach()) == 1.0


def test_factory_names():
    assert isinstance(load_model("tiny_meru"), MERU)
    assert isinstance(load_model("tiny_open_clip"), OpenCLIPModel)
    with pytest.raises(FileNotFoundError, match="not a model name"):
        load_model("no_such_model")


# ------------------------------------------------------------------------------ interface

def test_interface(model, images):
    assert isinstance(model, VisionLanguageModel)
    tokens = model.tokenize(CAPTIONS)
    assert tokens.dtype == torch.int64 and tokens.shape == (len(CAPTIONS), 77)
    assert int(tokens[3, -1]) == 49407  # a cut caption keeps its end-of-text token
    img, txt = embed(model, images)
    assert img.dtype == txt.dtype == torch.float32 and img.shape == (3, 64) and txt.shape == (4, 64)
    sim = model.similarity(img, txt)
    assert sim.shape == (3, 4)
    assert torch.allclose(model.logits(img, txt), model.logit_scale * sim)
    assert math.isclose(float(model.logit_scale.detach()), 1 / 0.07, rel_tol=1e-5)
    from PIL import Image
    pil = Image.new("RGB", (50, 40), (200, 10, 10))
    x = model.preprocess(pil)
    assert x.shape == (3, model.image_size, model.image_size) and 0 <= float(x.min()) <= float(x.max()) <= 1
    with torch.no_grad():
        raw = model.encode_text(tokens, project=False)
        assert torch.allclose(model.project_text(raw), txt)
    if model.geometry == "euclidean":
        assert model.curv is None
        assert sim.abs().max() <= 1 + 1e-5
    else:
        assert model.curv.ndim == 0 and (sim <= 0).all()


def test_text_feature_is_taken_at_end_of_text():
    m = tiny_meru(seed=2).eval()
    tokens = m.tokenize(["a dog", "a much longer caption about a cat"])
    with torch.no_grad():
        full = m.encode_text(tokens)
        short = m.encode_text(tokens[:, :10])  # MERU pads only to the longest caption
        alone = m.encode_text(tokens[:1])
    assert torch.allclose(full, short, atol=1e-6) and torch.allclose(full[:1], alone, atol=1e-6)


# ------------------------------------------------------------------------------ geometry

@pytest.mark.parametrize("curv", [1.0, 2.5])
def test_meru_embeddings_lie_on_the_hyperboloid(images, curv):
    m = tiny_meru(seed=4).eval()
    with torch.no_grad():
        m.log_curv.fill_(math.log(curv))
    img, txt = embed(m, images)
    assert math.isclose(float(m.curv.detach()), curv, rel_tol=1e-6)
    for x in (img, txt):
        inner = lorentz_self_inner(x, m.curv)
        assert torch.allclose(inner, torch.full_like(inner, -1 / curv), rtol=1e-5, atol=1e-5)


def test_lift_is_float32_under_autocast(images):
    m = tiny_meru(seed=4).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = m.encode_image(images)
    assert x.dtype == torch.float32
    inner = lorentz_self_inner(x, m.curv)
    assert torch.allclose(inner, torch.full_like(inner, -1.0), rtol=1e-5, atol=1e-5)


def test_scalars_clamped_like_meru():
    m = tiny_meru()
    with torch.no_grad():
        m.log_logit_scale.fill_(10.0)
        m.log_curv.fill_(5.0)
        m.visual_alpha.fill_(0.5)
    assert math.isclose(float(m.logit_scale.detach()), 100.0, rel_tol=1e-5)
    assert math.isclose(float(m.curv.detach()), 10.0, rel_tol=1e-5)
    m.clamp_parameters_()
    assert float(m.log_curv.detach()) == pytest.approx(math.log(10)) and float(m.visual_alpha.detach()) == 0.0
    assert float(m.log_logit_scale.detach()) == pytest.approx(math.log(100))


def test_gradients_reach_curv_and_alphas(images):
    m = tiny_meru()
    img, txt = m.encode_image(images[:2]), m.encode_text(m.tokenize(["a", "b"]))
    m.logits(img, txt).diag().sum().backward()
    for p in (m.log_curv, m.visual_alpha, m.textual_alpha, m.log_logit_scale, m.visual_proj.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert m.visual.pos_embed.grad is None  # the sin-cos position embedding is fixed


def test_sincos_position_embedding():
    emb = sincos_position_embedding(2, 3, 8)
    assert emb.shape == (1, 7, 8) and torch.equal(emb[0, 0], torch.zeros(8))
    # patch (row 1, col 2) is flat position 1*3+2 = 5 (+1 for the class token)
    omega = 1.0 / 10000 ** (torch.arange(2) / 2)
    expect = torch.cat([torch.sin(1 * omega), torch.cos(1 * omega), torch.sin(2 * omega), torch.cos(2 * omega)])
    assert torch.allclose(emb[0, 6], expect)


def test_config_validation():
    with pytest.raises(ValueError, match="geometry"):
        MERUConfig(geometry="spherical")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MERUConfig(image_size=30, patch_size=8)
    assert isinstance(MERUCLIP(MERUConfig(**TINY)), MERUCLIP)
