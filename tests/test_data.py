"""Data: the three pair sources, collate and loaders (DistributedSampler), the forget/retain
split on hand-made captions, and zero-shot prompt sets."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hypkern.data import (
    CLIP_TEMPLATES, CaptionFilePairs, ConceptError, ImageFolderPairs, ImageReadError, TensorPairs,
    ZeroShotSet, build_prompts, collate, make_loader, names_concept, plural_forms, split_forget_retain,
)
from hypkern.models.transforms import image_transform

SIZE = 16


def _png(path, colour=(255, 0, 0), size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "golden_retriever" / "a.png")
    _png(root / "golden_retriever" / "b.jpg", (0, 255, 0))
    _png(root / "cat" / "c.png", (0, 0, 255))
    (root / "empty").mkdir()
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------------------ sources

def test_image_folder(folder):
    ds = ImageFolderPairs(folder, templates=["a photo of a {}.", "art of the {}."], transform=image_transform(SIZE))
    assert len(ds) == 3 and ds.classnames == ["cat", "golden retriever"]
    assert ds.labels == ["cat", "golden retriever", "golden retriever"]
    assert ds.captions == ["a photo of a cat.", "art of the golden retriever.", "a photo of a golden retriever."]
    item = ds[1]
    assert set(item) == {"image", "caption", "label", "target", "index"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["label"] == "golden retriever" and item["target"] == 1 and item["index"] == 1
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0


def test_image_folder_errors(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderPairs(tmp_path / "nowhere")
    (tmp_path / "hollow" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderPairs(tmp_path / "hollow")
    with pytest.raises(ValueError, match="templates"):
        ImageFolderPairs(folder, templates=["no placeholder"])
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    ds = ImageFolderPairs(folder, transform=image_transform(SIZE))
    bad = ds.paths.index(folder / "cat" / "broken.png")
    with pytest.raises(ImageReadError, match="broken.png"):
        ds[bad]
    with pytest.raises(ImageReadError, match="broken.png"):
        ds.verify()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_captions_file(tmp_path, fmt):
    _png(tmp_path / "pics" / "one.png")
    _png(tmp_path / "pics" / "two.png", (9, 9, 9))
    rows = [{"image": "pics/one.png", "caption": "A dog on grass", "label": "dog"},
            {"image": str(tmp_path / "pics" / "two.png"), "caption": "an empty room", "label": ""}]
    path = tmp_path / f"caps.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    else:
        path.write_text("image,caption,label\n" + "".join(f"{r['image']},{r['caption']},{r['label']}\n" for r in rows))
    ds = CaptionFilePairs(path, transform=image_transform(SIZE))
    assert ds.captions == ["A dog on grass", "an empty room"] and ds.labels == ["dog", ""]
    assert ds.classnames == ["dog"]
    assert ds[0]["image"].shape == (3, SIZE, SIZE) and ds[1]["target"] == -1


def test_captions_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="caps.jsonl"):
        CaptionFilePairs(tmp_path / "caps.jsonl")
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"img": "x.png", "caption": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"caps.jsonl:1: no image path .*img"):
        CaptionFilePairs(path)
    path.write_text(json.dumps({"image": "missing.png", "caption": "c"}) + "\n")
    with pytest.raises(ImageReadError, match="missing.png"):
        CaptionFilePairs(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="caps.jsonl:1"):
        CaptionFilePairs(path)
    other = tmp_path / "caps.xml"
    other.write_text("<x/>")
    with pytest.raises(ValueError, match=".jsonl"):
        CaptionFilePairs(other)


def test_tensor_pairs():
    imgs = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    ds = TensorPairs(imgs, ["a", "b", "c", "d"], ["x", "y", "x", ""])
    item = ds[2]
    assert torch.allclose(item["image"], imgs[2].float() / 255) and item["label"] == "x" and item["target"] == 0
    assert ds[-1]["index"] == 3
    with pytest.raises(ValueError, match="4 images but 3 captions"):
        TensorPairs(imgs, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        TensorPairs(torch.rand(4, 8, 8), list("abcd"))
    with pytest.raises(IndexError):
        ds[4]


# ------------------------------------------------------------------------------ loaders

def _tensor_ds(n=10):
    return TensorPairs(torch.rand(n, 3, 8, 8), [f"caption {i}" for i in range(n)], [f"c{i % 3}" for i in range(n)])


def test_collate_and_loader():
    ds = _tensor_ds()
    images, captions, labels, indices = next(iter(make_loader(ds, batch_size=4)))
    assert images.shape == (4, 3, 8, 8) and captions == [f"caption {i}" for i in range(4)]
    assert labels == ["c0", "c1", "c2", "c0"] and indices.tolist() == [0, 1, 2, 3]
    order = [i for b in make_loader(ds, 3, shuffle=True, seed=1) for i in b[3].tolist()]
    assert sorted(order) == list(range(10)) and order == [i for b in make_loader(ds, 3, shuffle=True, seed=1) for i in b[3].tolist()]
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0)
    with pytest.raises(TypeError, match="transform"):
        collate([{"image": Image.new("RGB", (2, 2)), "caption": "", "label": "", "index": 0}])


def test_distributed_loader_shards_the_data():
    ds = _tensor_ds(10)
    seen = []
    for rank in range(3):
        loader = make_loader(ds, batch_size=2, shuffle=True, distributed=True, num_replicas=3, rank=rank, seed=7)
        loader.sampler.set_epoch(1)
        seen.append([i for b in loader for i in b[3].tolist()])
    assert all(len(s) == 4 for s in seen)  # 10 padded to 12 = 3 x 4
    assert set().union(*map(set, seen)) == set(range(10))
    with pytest.raises(ValueError, match="process group"):
        make_loader(ds, 2, distributed=True)


def test_subset_keeps_parent_indices():
    ds = _tensor_ds(6)
    sub = ds.subset([4, 1])
    assert len(sub) == 2 and sub.captions == ["caption 4", "caption 1"] and sub[0]["index"] == 4
    _, _, _, idx = next(iter(make_loader(sub, 2)))
    assert idx.tolist() == [4, 1]


# ------------------------------------------------------------------------------ forget / retain

CAPTIONS = [
    "A Dog runs on the beach",          # 0 dog
    "two dogs and a CAT",               # 1 dog, cat
    "a hotdog stand",                   # 2 -
    "dogma is not a pet",               # 3 -
    "the dog's bone",                   # 4 dog
    "Teddy Bears on a bed",             # 5 teddy bear
    "a teddy and a bear",               # 6 -
    "a teddy-bear picnic",              # 7 teddy bear
    "three puppies",                    # 8 puppy
    "a hot-dog",                        # 9 dog (hyphen separates words)
    "People in a park",                 # 10 person
]


def test_split_words_plurals_case_multiword():
    split = split_forget_retain(CAPTIONS, ["dog", "teddy bear", "puppy", "cat", "person"])
    assert split.forget == {"dog": [0, 1, 4, 9], "teddy bear": [5, 7], "puppy": [8], "cat": [1], "person": [10]}
    assert split.retain == [2, 3, 6]
    assert split.forget_indices == [0, 1, 4, 5, 7, 8, 9, 10]
    assert "retain 3" in split.summary()


def test_split_without_plurals_and_with_aliases():
    split = split_forget_retain(CAPTIONS, {"dog": ["puppy"]}, plurals=False)
    assert split.forget == {"dog": [0, 4, 9]}  # "dogs" and "puppies" are not matched
    split = split_forget_retain(CAPTIONS, {"dog": ["puppy"]})
    assert split.forget == {"dog": [0, 1, 4, 8, 9]}


def test_split_uses_labels():
    class Data:
        captions = ["a photo", "a photo", "another photo"]
        labels = ["golden_retriever", "Tabby Cat", ""]
    assert split_forget_retain(Data(), ["retriever"]).forget == {"retriever": [0]}
    assert split_forget_retain(Data(), ["cat"]).retain == [0, 2]
    with pytest.raises(ConceptError, match="'cat'"):
        split_forget_retain(Data(), ["cat"], match_labels=False)

    class IdData:  # integer labels with classnames (the demo dataset's layout)
        captions = ["x", "y"]
        labels = torch.tensor([1, 0])
        classnames = ["red circle", "blue square"]
    assert split_forget_retain(IdData(), ["blue square"]).forget == {"blue square": [0]}


def test_split_on_a_dataset(folder):
    ds = ImageFolderPairs(folder, transform=image_transform(SIZE))
    split = split_forget_retain(ds, ["golden retriever"])
    assert split.forget == {"golden retriever": [1, 2]} and split.retain == [0]


def test_split_errors_name_the_concept():
    with pytest.raises(ConceptError, match="'zebra'"):
        split_forget_retain(CAPTIONS, ["dog", "zebra"])
    split = split_forget_retain(CAPTIONS, ["dog", "zebra"], allow_missing=True)
    assert split.forget["zebra"] == []
    with pytest.raises(ConceptError, match="'zebra'"):  # never an empty forget set
        split_forget_retain(CAPTIONS, ["zebra"], allow_missing=True)
    with pytest.raises(ConceptError, match="no concepts"):
        split_forget_retain(CAPTIONS, [])
    with pytest.raises(ConceptError, match="empty concept"):
        split_forget_retain(CAPTIONS, ["  "])
    with pytest.raises(ConceptError, match="no retain"):
        split_forget_retain(["a dog", "dogs"], ["dog"])
    with pytest.raises(ConceptError, match="empty"):
        split_forget_retain([], ["dog"])
    with pytest.raises(TypeError):
        split_forget_retain("a dog", ["dog"])


def test_plural_forms():
    assert {"dog", "dogs"} <= set(plural_forms("dog"))
    assert "puppies" in plural_forms("puppy") and "boys" in plural_forms("boy")
    assert "knives" in plural_forms("knife") and "wolves" in plural_forms("wolf")
    assert "buses" in plural_forms("bus") and "mice" in plural_forms("mouse")
    assert names_concept("Ice-cream cones", "ice cream cone") and not names_concept("icecream", "ice cream")


# ------------------------------------------------------------------------------ zero-shot

def test_zero_shot_sets(folder):
    prompts = build_prompts(["dog", "cat"], ["a photo of a {}.", "a {}"])
    assert prompts == [["a photo of a dog.", "a dog"], ["a photo of a cat.", "a cat"]]
    zs = ZeroShotSet.from_dataset(ImageFolderPairs(folder, templates=["a {}"], transform=image_transform(SIZE)))
    assert zs.classnames == ["cat", "golden retriever"] and zs.templates == ["a {}"]
    assert "a photo of a {}." in CLIP_TEMPLATES and len(ZeroShotSet(["x"]).prompts()[0]) == len(CLIP_TEMPLATES)
    with pytest.raises(ValueError, match="duplicate"):
        ZeroShotSet(["a", "a"])
    with pytest.raises(ValueError, match="template"):
        build_prompts(["a"], ["no slot"])


# ------------------------------------------------------------------------------ prompts, class order, int labels

def test_pair_datasets_carry_prompts_class_order_and_integer_labels(tmp_path):
    import json as _json
    from hypkern.data import TensorPairs
    from hypkern.data.pairs import DEFAULT_PROMPTS, CaptionFilePairs
    imgs = torch.rand(4, 3, 8, 8)
    caps = ["a zebra", "a dog", "another zebra", "a cat"]
    ds = TensorPairs(imgs, caps, ["zebra", "dog", "zebra", "cat"])
    assert ds.classnames == ["zebra", "dog", "cat"]            # order of first appearance, not sorted
    assert ds.templates == DEFAULT_PROMPTS and ds.subset([1]).templates == DEFAULT_PROMPTS
    ds = TensorPairs(imgs, caps, torch.tensor([2, 0, 2, 1]), classnames=["dog", "cat", "zebra"],
                     templates=["art of a {}"])
    assert ds.labels == ["zebra", "dog", "zebra", "cat"] and ds[0]["target"] == 2 and ds.templates == ("art of a {}",)
    assert TensorPairs(imgs, caps, [3, 1, 3, 2]).classnames == ["3", "1", "2"]
    with pytest.raises(ValueError, match="not an index"):
        TensorPairs(imgs, caps, [0, 1, 2, 5], classnames=["a", "b", "c"])
    with pytest.raises(ValueError, match="not among the classnames"):
        TensorPairs(imgs, caps, ["zebra", "dog", "zebra", "owl"], classnames=["zebra", "dog"])
    with pytest.raises(ValueError, match="templates must be strings with a"):
        TensorPairs(imgs, caps, templates=["no slot"])
    for i in range(2):
        _png(tmp_path / f"{i}.png", (10 * i, 0, 0))
    (tmp_path / "pairs.jsonl").write_text("\n".join(_json.dumps(r) for r in (
        {"image": "0.png", "caption": "a red one", "label": 1}, {"image": "1.png", "caption": "x", "label": 0})))
    cf = CaptionFilePairs(tmp_path / "pairs.jsonl", classnames=["dark", "red"], templates=["a {} square"],
                          transform=image_transform(SIZE))
    assert cf.labels == ["red", "dark"] and cf.templates == ("a {} square",) and cf.classnames == ["dark", "red"]


def test_unlearn_uses_the_given_templates(monkeypatch):
    from hypkern.unlearning import unlearn
    from hypkern.unlearning.toy import toy_model, toy_pairs
    seen = []
    import hypkern.eval as E
    orig = E.zeroshot_accuracy

    def spy(model, data, concepts, **kw):
        seen.append(tuple(data.templates))
        return orig(model, data, concepts, **kw)
    monkeypatch.setattr(E, "zeroshot_accuracy", spy)
    unlearn(toy_model("euclidean"), ["dog"], toy_pairs(4), steps=1, retain_batch_size=4, forget_batch_size=2,
            progress=False, templates=["a picture of a {}"])
    assert seen and all(t == ("a picture of a {}",) for t in seen), seen
