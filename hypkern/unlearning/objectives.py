"""Unlearning objectives: Alignment Calibration (AC) and its hyperbolic adaptation (HAC).

Everything here works on *embeddings* of one step batch: a retain batch ``(img_r, txt_r)`` of
``N_r`` pairs and a forget batch ``(img_f, txt_f)`` of ``N_f`` pairs, fp32. ``sim`` is
``-d_L`` for MERU (Lorentz) and cosine for CLIP (Euclidean). DESIGN.md §3:

AC
  * retain alignment + negative calibration (weight α), one weighted contrastive loss over
    images ``[img_r; img_f]`` and texts ``[txt_r; txt_f]`` where retain image ``i`` has its own
    caption as positive and forget image ``j`` a *mismatched* retain caption ``μ(j)``::

        L_align = (Σ_retain ℓ_i + α Σ_forget ℓ_j) / (N_r + α N_f)

    (``ℓ`` the symmetric per-pair cross-entropy of ``hypkern.losses``).
  * positive calibration (weight β): ``+β · P``, pushing each forget image from its caption.
    Euclidean: ``P = mean_f cos(img_f, txt_f)`` (bounded already). Lorentz, where ``-d_L`` is
    unbounded below: ``hinge``: ``P = mean_f relu(t - d_L(img_f, txt_f))`` (stop at distance
    ``t``), or ``softplus``: ``P = mean_f softplus(-s · d_L(img_f, txt_f))`` (the positive logit,
    ``s`` the detached logit scale; tends to 0 with vanishing gradient as ``d_L`` grows).

HAC (MERU) adds
  * entailment calibration (weight γ, margin m):
    ``mean_f relu(aper(txt_f) - angle(txt_f, img_f) + m)`` — the image leaves its caption's cone;
  * retain entailment (weight w_e): MERU's ``mean_r relu(angle(txt_r, img_r) - aper(txt_r))``;
  * norm regularisation (weight δ): ``mean (|x| - |x_frozen|)^2`` over the step's embeddings
    (space-part norms; ``|x|`` is monotone in the distance to the origin, which encodes
    generality in MERU), anchors from the frozen original model.

Distributed (``distributed=True`` under an initialised process group): each rank passes *its
own* equal share of the rows. The contrastive term is the exact sharded loss (this rank's
images against every rank's texts, column statistics all-reduced), every other term is
row-wise, and each term is divided by the *global* counts, so the returned loss is this rank's
share ``L_r`` with ``sum_r L_r = L`` of the concatenated batch. Backpropagating ``L_r`` on every
rank and summing parameter gradients over ranks gives exactly ``dL/dθ`` (the collectives'
backward sums over ranks). Nothing in here reads a tensor value on the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import losses as loss_api
from ..geometry import geometry_of
from ..losses.distributed import all_reduce_sum, gather_with_grad, world_info

__all__ = ["StepEmbeddings", "mismatch_targets", "unlearning_loss", "TERM_NAMES"]

#: Names of the logged loss terms (unweighted values; ``total`` is the weighted sum).
TERM_NAMES = ("total", "align", "retain_ce", "forget_ce", "positive", "entail_cal",
              "retain_entail", "norm_reg")


@dataclass
class StepEmbeddings:
    """Embeddings of one step batch (fp32): the whole batch on one process, this rank's
    share when distributed. ``frozen_*_norm`` are the frozen original model's embedding norms
    of the same inputs (only needed when ``delta > 0`` on HAC)."""

    retain_image: torch.Tensor
    retain_text: torch.Tensor
    forget_image: torch.Tensor
    forget_text: torch.Tensor
    frozen_retain_image_norm: Optional[torch.Tensor] = None
    frozen_retain_text_norm: Optional[torch.Tensor] = None
    frozen_forget_image_norm: Optional[torch.Tensor] = None
    frozen_forget_text_norm: Optional[torch.Tensor] = None


def mismatch_targets(n_retain: int, n_forget: int, seed: int, step: int) -> torch.Tensor:
    """``μ``: for each forget image, the index of the retain caption used as its (mismatched)
    positive. Deterministic in ``(seed, step)`` so every rank (and a resumed run) draws the same
    one; distinct captions while ``n_forget <= n_retain``."""
    if n_retain < 1:
        raise ValueError("negative calibration needs at least one retain pair in the batch")
    g = torch.Generator().manual_seed(_mix(seed, step, 0x5EED))
    reps = -(-n_forget // n_retain)
    perm = torch.cat([torch.randperm(n_retain, generator=g) for _ in range(reps)])
    return perm[:n_forget]


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h ^= (int(x) + 0x9E3779B97F4A7C15 + ((h << 6) & (2 ** 64 - 1)) + (h >> 2)) & (2 ** 64 - 1)
        h = (h * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
        h ^= h >> 31
    return h & (2 ** 63 - 1)


def _kw(backend):
    return {} if backend is None else {"backend": backend}


def entailment_calibration(text: torch.Tensor, image: torch.Tensor, curv, margin: float,
                           min_radius: float = 0.1, backend=None, reduction: str = "mean") -> torch.Tensor:
    """``mean relu(half_aperture(text) - oxy_angle(text, image) + margin)``: zero once every
    image lies at least ``margin`` radians outside its text's entailment cone."""
    return loss_api.entailment_calibration_loss(text, image, curv, margin=margin, min_radius=min_radius,
                                               reduction=reduction, **_kw(backend))


def _global_targets(nr: int, nf: int, rank: int, world: int, seed: int, step: int, device) -> torch.Tensor:
    """Positive text per local image, as an index into the texts gathered in rank order
    (rank ``q`` contributes its ``nr`` retain then ``nf`` forget captions): retain image ``i``
    its own caption, forget image ``j`` the mismatched retain caption ``μ(global j)`` of the
    global batch. One process: ``[0..nr) ++ μ``."""
    mu = mismatch_targets(nr * world, nf * world, seed, step)[rank * nf:(rank + 1) * nf]
    mu = (mu // nr) * (nr + nf) + mu % nr
    own = torch.arange(nr) + rank * (nr + nf)
    return torch.cat([own, mu]).to(device)


def _hinge_target(ri, rt, sim_f, geometry, curv, backend, n_retain, n_forget, rank, world, group):
    """Mean distance of mismatched retain pairs (image ``i``, caption ``i - 1``) of the global
    retain batch, detached (with one retain pair: the forget pairs' mean distance)."""
    with torch.no_grad():
        if n_retain > 1:
            nr = ri.shape[0]
            rt_all = gather_with_grad(rt.detach(), group, uniform=True)
            prev = rt_all.roll(1, dims=0)[rank * nr:(rank + 1) * nr]
            d = -geometry.rowwise_similarity(ri, prev, curv.detach(), backend)
            return all_reduce_sum(d.sum(), group) / n_retain
        return all_reduce_sum((-sim_f).sum(), group) / n_forget


def unlearning_loss(emb: StepEmbeddings, *, geometry, method: str, cfg, logit_scale,
                    curv=None, seed: int = 0, step: int = 0, distributed: bool = False,
                    group=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AC / HAC loss of one step batch (see the module docstring); ``geometry`` is a
    name or a :class:`hypkern.geometry.Geometry`.

    Returns ``(loss, terms)``: ``loss`` the weighted sum to backpropagate (this rank's share
    when distributed, the whole loss otherwise) and ``terms`` the unweighted value of each
    term of the *global* batch as detached 0-dim tensors (one all-reduce when distributed;
    convert with ``float`` when logging, which is a host sync on GPU). The contrastive loss
    runs once: its per-pair vector gives ``align``, ``retain_ce`` and ``forget_ce``."""
    if method not in ("ac", "hac"):
        raise ValueError(f"method must be 'ac' or 'hac', got {method!r}")
    geometry = geometry_of(geometry)
    if method == "hac" and not geometry.has_cones:
        raise ValueError("HAC needs a Lorentz (MERU) model; use AC for Euclidean models")
    rank, world = world_info(group) if distributed else (0, 1)
    ri, rt = emb.retain_image.float(), emb.retain_text.float()
    fi, ft = emb.forget_image.float(), emb.forget_text.float()
    nr, nf = ri.shape[0], fi.shape[0]
    n_retain, n_forget = nr * world, nf * world  # global counts (equal shares per rank)
    dev = ri.device
    backend = cfg.backend
    alpha = float(cfg.alpha)

    # Retain alignment + negative calibration: one contrastive pass, per-pair losses.
    targets = _global_targets(nr, nf, rank, world, seed, step, dev)
    images, texts = torch.cat([ri, fi]), torch.cat([rt, ft])
    per_pair = geometry.contrastive_loss(images, texts, logit_scale, curv, targets, reduction="none",
                                         distributed=world > 1, group=group, uniform_shards=True, **_kw(backend))
    retain_sum, forget_sum = per_pair[:nr].sum(), per_pair[nr:].sum()
    # alpha = 0: forget images are only extra negatives (their pairs do not count)
    align = (retain_sum + alpha * forget_sum) / (n_retain + alpha * n_forget)
    total = align
    shares = {"align": align, "retain_ce": retain_sum / n_retain, "forget_ce": forget_sum / n_forget}
    replicated = {}

    # Positive calibration.
    sim_f = geometry.rowwise_similarity(fi, ft, curv, backend)
    if geometry.bounded_similarity:  # cosine: bounded already
        positive = sim_f.sum() / n_forget
    elif cfg.positive_bound == "softplus":
        positive = F.softplus(logit_scale.detach().float() * sim_f).sum() / n_forget
    else:
        if cfg.positive_target is not None:
            target = torch.tensor(float(cfg.positive_target), device=dev)
        else:
            target = _hinge_target(ri, rt, sim_f, geometry, curv, backend, n_retain, n_forget, rank, world,
                                   group if world > 1 else None)
        positive = F.relu(target + sim_f).sum() / n_forget  # relu(t - d)
        replicated["positive_target"] = target
    shares["positive"] = positive
    if cfg.beta:
        total = total + cfg.beta * positive

    if method == "hac":
        ent_cal = entailment_calibration(ft, fi, curv, cfg.gamma_margin, cfg.min_radius, backend,
                                         reduction="sum") / n_forget
        shares["entail_cal"] = ent_cal
        if cfg.gamma:
            total = total + cfg.gamma * ent_cal
        ret_ent = loss_api.entailment_loss(rt, ri, curv, cfg.min_radius, reduction="sum",
                                          **_kw(backend)) / n_retain
        shares["retain_entail"] = ret_ent
        if cfg.retain_entail_weight:
            total = total + cfg.retain_entail_weight * ret_ent
        if cfg.delta:
            cur, ref = [ri, rt], [emb.frozen_retain_image_norm, emb.frozen_retain_text_norm]
            count = 2 * n_retain
            if cfg.norm_reg_on == "all":
                cur += [fi, ft]
                ref += [emb.frozen_forget_image_norm, emb.frozen_forget_text_norm]
                count += 2 * n_forget
            if any(r is None for r in ref):
                raise ValueError("norm regularisation (delta > 0) needs the frozen model's norms")
            now = torch.cat([x.norm(dim=-1) for x in cur])
            then = torch.cat([r.float() for r in ref]).to(dev)
            norm_reg = ((now - then) ** 2).sum() / count
            shares["norm_reg"] = norm_reg
            total = total + cfg.delta * norm_reg
    shares["total"] = total
    names = list(shares)
    summed = torch.stack([shares[k].detach().float() for k in names])
    if world > 1:  # one all-reduce for every logged term
        summed = all_reduce_sum(summed, group)
    terms = dict(zip(names, summed.unbind()))
    terms.update({k: v.detach().float() for k, v in replicated.items()})
    return total, terms
