"""Image-text retrieval recall@k on held-out pairs.

Captions may repeat (many images share "a small red circle"), so a query counts as a hit at
``k`` when *any* of its positives is among the top ``k`` of the gallery. The rank of a query is
the number of gallery items scored strictly higher than its best positive (ties go to the
query), so recall is deterministic and hand-computable.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["recall_at_k", "caption_retrieval"]


def _ranks(sim: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Per query (row): how many gallery items score strictly above its best positive."""
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive")
    best = sim.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    return (sim > best).sum(dim=1)


def recall_at_k(sim: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                queries: torch.Tensor | None = None) -> dict:
    """Recall@k both ways from an image-by-text similarity ``sim`` (N, M) and a boolean
    ``positives`` (N, M). Image->text ranks the M texts for each image (row); text->image
    ranks the N images for each text (column) that is a positive of some query image.
    ``queries`` (boolean (N,)) restricts the image queries, and so the text queries, to a
    subset; the galleries stay whole. Returns ``{"i2t": {k: r}, "t2i": {k: r}}``, fractions
    (NaN when there is no query)."""
    sim, positives = sim.float().cpu(), positives.bool().cpu()
    if sim.shape != positives.shape:
        raise ValueError(f"sim {tuple(sim.shape)} and positives {tuple(positives.shape)} differ in shape")
    if queries is None:
        queries = torch.ones(sim.shape[0], dtype=torch.bool)
    queries = queries.bool().cpu()
    if not queries.any():
        nan = float("nan")
        return {"i2t": {int(k): nan for k in ks}, "t2i": {int(k): nan for k in ks}}
    i2t = _ranks(sim[queries], positives[queries])
    cols = positives[queries].any(dim=0)
    t2i = _ranks(sim.T[cols], positives.T[cols])
    return {
        "i2t": {int(k): float((i2t < k).double().mean()) for k in ks},
        "t2i": {int(k): float((t2i < k).double().mean()) for k in ks},
    }


def caption_retrieval(model, image_feats: torch.Tensor, captions: Sequence[str], text_feats: torch.Tensor,
                      texts: Sequence[str], queries: torch.Tensor | None = None,
                      ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k between images and their captions, scored by ``model.similarity``
    (``-d_L`` or cosine). The galleries are all the images and all ``texts`` (the unique
    captions, embedded as ``text_feats``); ``queries`` as in ``recall_at_k``."""
    with torch.no_grad():
        sim = model.similarity(image_feats.to(text_feats.device), text_feats).cpu()
    index = {t: j for j, t in enumerate(texts)}
    positives = torch.zeros(len(captions), len(texts), dtype=torch.bool)
    positives[torch.arange(len(captions)), torch.tensor([index[c] for c in captions])] = True
    return recall_at_k(sim, positives, ks, queries)
