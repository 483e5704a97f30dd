"""A toy problem for the tests and examples of ``hypkern.unlearning``: six classes of coloured
noise images, a very small MERU/CLIP, a short contrastive pretraining, and the worker the
distributed test spawns. Seconds on a CPU.
"""
from __future__ import annotations


import torch

__all__ = ["TOY_CLASSES", "toy_pairs", "toy_model", "pretrain", "TOY_MODEL"]

TOY_CLASSES = ("dog", "cat", "car", "tree", "boat", "bird")
_RGB = ((0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.9), (0.9, 0.9, 0.9), (0.05, 0.05, 0.05), (0.5, 0.5, 0.5))
#: A smaller-than-tiny MERU config (16x16 images, one layer per tower, width 32).
TOY_MODEL = dict(image_size=16, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                 text_width=32, text_layers=1, text_heads=2, embed_dim=32)


def toy_pairs(n_per_class: int = 20, seed: int = 0, size: int = 16):
    """``TensorPairs``: class ``k`` is noise tinted with colour ``k``, captioned
    ``"a photo of a <class>"``; ``templates = ("a photo of a {}",)`` for zero-shot."""
    from ..data import TensorPairs
    g = torch.Generator().manual_seed(seed)
    k = len(TOY_CLASSES)
    labels = torch.arange(k).repeat(n_per_class)
    base = torch.tensor(_RGB)[labels]
    n = labels.shape[0]
    img = base[:, :, None, None] * (0.7 + 0.3 * torch.rand(n, 1, size, size, generator=g)) \
        + 0.1 * torch.randn(n, 3, size, size, generator=g)
    names = [TOY_CLASSES[int(l)] for l in labels]
    ds = TensorPairs(img.clamp(0, 1), [f"a photo of a {c}" for c in names], names)
    ds.classnames = list(TOY_CLASSES)
    ds.templates = ("a photo of a {}",)
    return ds


def toy_model(geometry: str = "lorentz", seed: int = 0):
    from ..models import tiny_clip, tiny_meru
    return (tiny_meru if geometry == "lorentz" else tiny_clip)(seed, **TOY_MODEL)


def pretrain(model, data, steps: int = 150, lr: float = 2e-3, batch_size: int = 32, seed: int = 0):
    """MERU/CLIP contrastive pretraining (plus MERU's entailment loss, weight 0.2) with AdamW."""
    from .. import losses
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    tokens = model.tokenize(list(data.captions))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(data), generator=g)[:batch_size]
        img, txt = model.encode_image(images[idx]), model.encode_text(tokens[idx])
        loss = model.geom.contrastive_loss(img, txt, model.logit_scale, model.curv)
        if model.geom.has_cones:
            loss = loss + 0.2 * losses.entailment_loss(txt, img, model.curv)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_parameters_()
    return model.eval()


def distributed_worker(rank: int, world: int, port: int, jobs: list) -> None:
    """One rank of the distributed test: gloo on 127.0.0.1; for each ``(geometry, config,
    out_path)`` job, unlearn ``dog`` on the toy problem and (rank 0) save the final parameters
    to ``out_path`` (safetensors)."""
    import torch.distributed as tdist
    from safetensors.torch import save_file

    from .api import unlearn
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for geometry, config, out_path in jobs:
            res = unlearn(toy_model(geometry, seed=0), ["dog"], toy_pairs(8, seed=0), **config)
            if rank == 0:
                save_file({k: v.detach().contiguous() for k, v in res.model.state_dict().items()}, out_path)
    finally:
        tdist.destroy_process_group()
