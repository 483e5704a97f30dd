"""Unlearning objectives: Alignment Calibration (AC) and its hyperbolic adaptation (HAC).

Everything here works on *embeddings* of one (global) step batch: a retain batch
``(img_r, txt_r)`` of ``N_r`` pairs and a forget batch ``(img_f, txt_f)`` of ``N_f`` pairs, fp32.
``sim`` is ``-d_L`` for MERU (Lorentz) and cosine for CLIP (Euclidean). DESIGN.md §3:

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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import losses as _losses
from ..lorentz import ops as _ops

__all__ = ["StepEmbeddings", "mismatch_targets", "unlearning_loss", "TERM_NAMES"]

#: Names of the logged loss terms (unweighted values; ``total`` is the weighted sum).
TERM_NAMES = ("total", "align", "retain_ce", "forget_ce", "positive", "entail_cal",
              "retain_entail", "norm_reg")


@dataclass
class StepEmbeddings:
    """Embeddings of one global step batch (fp32). ``frozen_*_norm`` are the frozen original
    model's embedding norms of the same inputs (only needed when ``delta > 0`` on HAC)."""

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


def _contrastive(image, text, geometry, logit_scale, curv, targets, weights, backend):
    if geometry == "lorentz":
        return _losses.lorentz_contrastive_loss(image, text, logit_scale, curv, targets=targets,
                                                weights=weights, **_kw(backend))
    return _losses.clip_contrastive_loss(image, text, logit_scale, targets=targets, weights=weights,
                                         **_kw(backend))


def _rowwise_sim(a, b, geometry, curv, backend):
    if geometry == "lorentz":
        return -_ops.dist(a, b, curv, backend=backend).float()
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def entailment_calibration(text: torch.Tensor, image: torch.Tensor, curv, margin: float,
                           min_radius: float = 0.1, backend=None) -> torch.Tensor:
    """``mean relu(half_aperture(text) - oxy_angle(text, image) + margin)``: zero once every
    image lies at least ``margin`` radians outside its text's entailment cone."""
    fused = getattr(_losses, "entailment_calibration_loss", None)
    if fused is not None:  # hypkern.losses' fused kernel (one pass, loss and gradient)
        return fused(text, image, curv, margin=margin, min_radius=min_radius, **_kw(backend))
    angle = _ops.oxy_angle(text, image, curv, backend=backend).float()
    aperture = _ops.half_aperture(text, curv, min_radius, backend=backend).float()
    return F.relu(aperture - angle + margin).mean()


def unlearning_loss(emb: StepEmbeddings, *, geometry: str, method: str, cfg, logit_scale,
                    curv=None, seed: int = 0, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """The AC / HAC loss of one global step batch (see the module docstring).

    Returns ``(total, terms)`` where ``terms`` holds the unweighted value of each term
    (floats, for logging) and ``total`` the weighted sum to backpropagate."""
    if method not in ("ac", "hac"):
        raise ValueError(f"method must be 'ac' or 'hac', got {method!r}")
    if method == "hac" and geometry != "lorentz":
        raise ValueError("HAC needs a Lorentz (MERU) model; use AC for Euclidean models")
    lorentz = geometry == "lorentz"
    ri, rt = emb.retain_image.float(), emb.retain_text.float()
    fi, ft = emb.forget_image.float(), emb.forget_text.float()
    nr, nf = ri.shape[0], fi.shape[0]
    dev = ri.device
    backend = cfg.backend

    # Retain alignment + negative calibration: one weighted contrastive loss.
    mu = mismatch_targets(nr, nf, seed, step).to(dev)
    images = torch.cat([ri, fi])
    texts = torch.cat([rt, ft])
    targets = torch.cat([torch.arange(nr, device=dev), mu])
    weights = torch.cat([torch.ones(nr, device=dev), torch.full((nf,), float(cfg.alpha), device=dev)])
    if cfg.alpha == 0:  # forget images are then only extra negatives
        weights[nr:] = 0.0
    align = _contrastive(images, texts, geometry, logit_scale, curv, targets, weights, backend)
    total = align
    terms = {"align": align}

    with torch.no_grad():  # the two parts of the mean, for the log
        terms["retain_ce"] = _contrastive(images, texts, geometry, logit_scale.detach(),
                                          None if curv is None else curv.detach(), targets,
                                          torch.cat([weights[:nr], torch.zeros(nf, device=dev)]), backend)
        terms["forget_ce"] = _contrastive(images, texts, geometry, logit_scale.detach(),
                                          None if curv is None else curv.detach(), targets,
                                          torch.cat([torch.zeros(nr, device=dev), torch.ones(nf, device=dev)]),
                                          backend)

    # Positive calibration.
    sim_f = _rowwise_sim(fi, ft, geometry, curv, backend)
    if not lorentz:
        positive = sim_f.mean()
    elif cfg.positive_bound == "softplus":
        positive = F.softplus(logit_scale.detach().float() * sim_f).mean()
    else:
        if cfg.positive_target is not None:
            target = torch.tensor(float(cfg.positive_target), device=dev)
        else:  # mean distance of mismatched retain pairs (image i, caption i+1), detached
            with torch.no_grad():
                target = (-_rowwise_sim(ri, rt.roll(1, dims=0), geometry, curv.detach(), backend)).mean() \
                    if nr > 1 else (-sim_f).mean()
        positive = F.relu(target + sim_f).mean()  # relu(t - d)
        terms["positive_target"] = target
    terms["positive"] = positive
    if cfg.beta:
        total = total + cfg.beta * positive

    if method == "hac":
        ent_cal = entailment_calibration(ft, fi, curv, cfg.gamma_margin, cfg.min_radius, backend)
        terms["entail_cal"] = ent_cal
        if cfg.gamma:
            total = total + cfg.gamma * ent_cal
        ret_ent = _losses.entailment_loss(rt, ri, curv, cfg.min_radius, **_kw(backend))
        terms["retain_entail"] = ret_ent
        if cfg.retain_entail_weight:
            total = total + cfg.retain_entail_weight * ret_ent
        if cfg.delta:
            cur, ref = [ri, rt], [emb.frozen_retain_image_norm, emb.frozen_retain_text_norm]
            if cfg.norm_reg_on == "all":
                cur += [fi, ft]
                ref += [emb.frozen_forget_image_norm, emb.frozen_forget_text_norm]
            if any(r is None for r in ref):
                raise ValueError("norm regularisation (delta > 0) needs the frozen model's norms")
            now = torch.cat([x.norm(dim=-1) for x in cur])
            then = torch.cat([r.float() for r in ref]).to(dev)
            norm_reg = ((now - then) ** 2).mean()
            terms["norm_reg"] = norm_reg
            total = total + cfg.delta * norm_reg
    terms["total"] = total
    return total, {k: float(v.detach()) for k, v in terms.items()}
