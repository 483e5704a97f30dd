"""Losses built on the Lorentz geometry: large-batch contrastive (Lorentz and Euclidean) and
entailment, fused so that the N x M logits are never stored.

Contrastive loss, per pair ``i`` (image ``i``, its positive text ``t_i``, default ``t_i = i``)::

    loss_i = 0.5 (lse_j l_ij - l_i,t_i) + 0.5 (lse_k l_k,t_i - l_i,t_i),
    L = sum_i w_i loss_i / sum_i w_i          (plain mean without weights)

with ``l_ij = -s d_L(image_i, text_j)`` (MERU) or ``l_ij = s cos(image_i, text_j)`` (CLIP).
With the diagonal and unit weights this is ``0.5 (CE(l, diag) + CE(l^T, diag))``.

Backends (``backend=``): ``"reference"`` (materialised, ``hypkern.losses.reference``),
``"chunked"`` (tiled PyTorch, ``hypkern.kernels.chunked``; any device) and ``"triton"``
(``hypkern.kernels.triton.losses``; CUDA, or CPU under ``TRITON_INTERPRET=1``). Default:
``$HYPKERN_LOSS_BACKEND`` if set, else triton on CUDA when available, else chunked. The fused
backends use O((N + M) D) memory and accumulate in float32 (float64 for float64 inputs);
half-precision inputs give a float32 loss.

Entailment (MERU): ``mean(relu(oxy_angle(text, image) - half_aperture(text)))``; calibration
(the forget side of HAC): ``mean(relu(half_aperture(text) - oxy_angle(text, image) + margin))``.
These two also have the backend ``"native"`` (the fused C++/CUDA op
``hypkern_native::entailment_fwd_bwd`` of ``csrc/``), their default on CPU when the native CPU
extension is built; the contrastive losses have no native backend.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ..kernels import chunked
from ..lorentz import reference as lorentz_reference
from . import reference as loss_reference
from ..lorentz.ops import _check_min_radius, _check_pair, _is_tracing, as_positive_scalar, compute_dtype

__all__ = [
    "lorentz_contrastive_loss",
    "clip_contrastive_loss",
    "entailment_loss",
    "entailment_calibration_loss",
    "ContrastiveLoss",
    "LOSS_BACKENDS",
    "CONTRASTIVE_BACKENDS",
    "ENTAILMENT_BACKENDS",
    "resolve_loss_backend",
]

LOSS_BACKENDS = ("reference", "chunked", "triton", "native")
# Backends per loss family: the contrastive losses have no native kernel.
CONTRASTIVE_BACKENDS = ("reference", "chunked", "triton")
ENTAILMENT_BACKENDS = LOSS_BACKENDS


# ----------------------------------------------------------------------------- backends

def _triton_losses():
    """The Triton loss module, or (None, reason)."""
    try:
        from ..kernels.triton import losses as tl_losses
    except Exception as exc:  # optional: never break `import hypkern`
        return None, f"{type(exc).__name__}: {exc}"
    return tl_losses, ""


def _triton_supports(device: torch.device) -> tuple[bool, str]:
    module, why = _triton_losses()
    if module is None:
        return False, why
    return module.supports(device)


def _native_supports(device: torch.device) -> tuple[bool, str]:
    from ..kernels import native
    return native.supports(device)


def resolve_loss_backend(backend: str | None, device: torch.device, kind: str = "contrastive") -> str:
    """The loss backend: ``backend`` if given (checked), else ``$HYPKERN_LOSS_BACKEND``, else
    triton on CUDA when usable, else (``kind="entailment"`` on CPU) native when built, else
    chunked. ``kind`` is ``"contrastive"`` (backends :data:`CONTRASTIVE_BACKENDS`) or
    ``"entailment"`` (:data:`ENTAILMENT_BACKENDS`, which adds ``"native"``)."""
    if kind not in ("contrastive", "entailment"):
        raise ValueError(f"kind must be 'contrastive' or 'entailment', got {kind!r}")
    allowed = ENTAILMENT_BACKENDS if kind == "entailment" else CONTRASTIVE_BACKENDS
    backend = backend or os.environ.get("HYPKERN_LOSS_BACKEND") or None
    if backend is None:
        if device.type == "cuda" and _triton_supports(device)[0]:
            return "triton"
        if kind == "entailment" and device.type == "cpu" and _native_supports(device)[0]:
            return "native"
        return "chunked"
    if backend not in allowed:
        if backend in LOSS_BACKENDS:
            raise ValueError(f"the {kind} losses have no backend {backend!r}; "
                             f"backend must be one of {allowed} or None")
        raise ValueError(f"backend must be one of {allowed} or None, got {backend!r}")
    if backend == "triton":
        ok, why = _triton_supports(device)
        if not ok:
            raise RuntimeError(f"backend 'triton' cannot run on {device.type}: {why}")
    if backend == "native":
        ok, why = _native_supports(device)
        if not ok:
            raise RuntimeError(f"backend 'native' cannot run on {device.type}: {why}")
    return backend


# ----------------------------------------------------------------------------- checks

def _check_targets(targets, n: int, m: int, device: torch.device, what: str = "text") -> torch.Tensor:
    """(N,) int64 positive-text index per image; the diagonal when None (needs N == M)."""
    if targets is None:
        if n != m:
            raise ValueError(f"without targets, image and {what} need the same number of rows, got {n} and {m}")
        return torch.arange(n, device=device)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be an integer torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    if tuple(targets.shape) != (n,):
        raise ValueError(f"targets must have shape ({n},) (one text index per image), got {tuple(targets.shape)}")
    if targets.device != device:
        raise ValueError(f"targets must be on the inputs' device {device}, got {targets.device}")
    t = targets.long()
    if n and not _is_tracing():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= m:
            raise ValueError(f"targets must lie in [0, {m}) ({m} texts), got values in [{lo}, {hi}]")
    return t


def _check_weights(weights, n: int, device: torch.device, need_positive_sum: bool = True):
    """None, or an (N,) finite non-negative float tensor with a positive sum (the sum is
    checked over all ranks instead when distributed)."""
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a floating torch.Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating tensor, got {weights.dtype}")
    if tuple(weights.shape) != (n,):
        raise ValueError(f"weights must have shape ({n},) (one weight per image), got {tuple(weights.shape)}")
    if weights.device != device:
        raise ValueError(f"weights must be on the inputs' device {device}, got {weights.device}")
    if not _is_tracing():
        w = weights.detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights must be finite")
        if bool((w < 0).any()):
            raise ValueError(f"weights must be >= 0, got a minimum of {float(w.min())}")
        if need_positive_sum and n and not float(w.sum()) > 0:
            raise ValueError("weights must not all be zero")
    return weights


def _check_common(image, text, targets, weights, distributed: bool = False):
    """Checks shared by both losses; targets are checked later when distributed (they index
    the gathered texts)."""
    _check_pair(image, text, rowwise=False, names=("image", "text"))
    n, m = image.shape[0], text.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"the contrastive loss needs at least one image and one text, got {n} and {m}")
    t = None if distributed else _check_targets(targets, n, m, image.device)
    return t, _check_weights(weights, n, image.device, need_positive_sum=not distributed)


def _weighted_mean(per_pair: torch.Tensor, weights) -> torch.Tensor:
    if weights is None:
        return per_pair.mean()
    w = weights.to(per_pair.dtype)
    return (w * per_pair).sum() / w.sum()


# ----------------------------------------------------------------------------- contrastive

def _per_pair(kind, x, y, xt, yt, c, beta, targets, backend, blocks, reduce_cols=None, reduce_colw=None):
    if backend == "triton":
        module, why = _triton_losses()
        if module is None:
            raise RuntimeError(f"backend 'triton' is not available: {why}")
        return module.triton_contrastive(kind, x, y, xt, yt, c, beta, targets, blocks=blocks,
                                         reduce_cols=reduce_cols, reduce_colw=reduce_colw)
    return chunked.tiled_contrastive(kind, x, y, xt, yt, c, beta, targets, blocks=blocks,
                                     reduce_cols=reduce_cols, reduce_colw=reduce_colw)


def _lorentz_operands(image, text, s, c, backend):
    """Inputs of the fused kernels: features (compute dtype for chunked, own dtype for Triton,
    which accumulates in float32), time components (Triton only), and beta = 2 s / sqrt(c)."""
    cd = compute_dtype(image.dtype)
    beta = 2.0 * s / torch.sqrt(c)
    if backend != "triton":  # the chunked path computes the time components itself
        return image.to(cd), text.to(cd), None, None, beta
    xt = lorentz_reference.time_component(image.to(cd), c)
    yt = lorentz_reference.time_component(text.to(cd), c)
    return image, text, xt, yt, beta


def _clip_operands(image, text, backend):
    cd = compute_dtype(image.dtype)
    x = F.normalize(image.to(cd), dim=-1)
    y = F.normalize(text.to(cd), dim=-1)
    if backend == "triton" and image.dtype in (torch.float16, torch.bfloat16):
        # Feed the tensor cores half-precision unit vectors; the kernel accumulates in fp32.
        x, y = x.to(image.dtype), y.to(image.dtype)
    return x, y


def lorentz_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale, curv,
                             targets: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                             *, backend: str | None = None, distributed: bool = False, group=None,
                             grad_world_scale: bool = True, blocks=None) -> torch.Tensor:
    """MERU's contrastive loss without the N x M logits: ``l_ij = -s d_L(image_i, text_j)``.

    ``image`` (N, D) and ``text`` (M, D) are space components; ``logit_scale`` is ``s`` and
    ``curv`` is ``c`` (floats or 0-dim tensors, > 0, may require grad). ``targets`` (N,) is
    the positive text index per image (default the diagonal, then N == M), ``weights`` (N,)
    non-negative per-pair weights (weighted mean). ``distributed=True``: see
    :func:`hypkern.losses.distributed.distributed_contrastive`; the inputs are this rank's rows.
    ``blocks=(rows, cols)`` overrides the tile size of the fused backends.
    """
    dist_on = bool(distributed) and _dist_active(group)
    t, w = _check_common(image, text, targets, weights, dist_on)
    s = as_positive_scalar("logit_scale", logit_scale, image)
    c = as_positive_scalar("curv", curv, image)
    chosen = resolve_loss_backend(backend, image.device)
    if dist_on:
        from . import distributed as hd
        return hd.distributed_contrastive("lorentz", image, text, s, c, targets, weights,
                                          backend=chosen, group=group, blocks=blocks,
                                          grad_world_scale=grad_world_scale)
    if chosen == "reference":
        return loss_reference.lorentz_contrastive_loss(image, text, s, c, t, w)
    x, y, xt, yt, beta = _lorentz_operands(image, text, s, c, chosen)
    per_pair = _per_pair("lorentz", x, y, xt, yt, c, beta, t, chosen, blocks)
    return _weighted_mean(per_pair, w)


def clip_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale,
                          targets: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                          *, backend: str | None = None, distributed: bool = False, group=None,
                          grad_world_scale: bool = True, blocks=None) -> torch.Tensor:
    """CLIP's contrastive loss without the N x M logits: ``l_ij = s cos(image_i, text_j)``.

    ``image``/``text`` are raw features (L2-normalised here, the normalisation's gradient
    included); otherwise as :func:`lorentz_contrastive_loss`. Equals open_clip's ``ClipLoss``
    on normalised features with ``logit_scale = s``.
    """
    dist_on = bool(distributed) and _dist_active(group)
    t, w = _check_common(image, text, targets, weights, dist_on)
    s = as_positive_scalar("logit_scale", logit_scale, image)
    chosen = resolve_loss_backend(backend, image.device)
    if dist_on:
        from . import distributed as hd
        return hd.distributed_contrastive("cosine", image, text, s, None, targets, weights,
                                          backend=chosen, group=group, blocks=blocks,
                                          grad_world_scale=grad_world_scale)
    if chosen == "reference":
        return loss_reference.clip_contrastive_loss(image, text, s, t, w)
    x, y = _clip_operands(image, text, chosen)
    per_pair = _per_pair("cosine", x, y, None, None, None, s, t, chosen, blocks)
    return _weighted_mean(per_pair, w)


def _dist_active(group) -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size(group) > 1)


class ContrastiveLoss(torch.nn.Module):
    """Module form, in the spirit of open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``.

    ``geometry="lorentz"`` (``forward(image, text, logit_scale, curv, targets, weights)``) or
    ``"euclidean"`` (``forward(image, text, logit_scale, targets=None, weights=None)``). Under
    an initialised process group with ``distributed=True`` (default) each rank passes its own
    rows; see :func:`hypkern.losses.distributed.distributed_contrastive` for the gradient convention.
    """

    def __init__(self, geometry: str = "lorentz", *, backend: str | None = None, distributed: bool = True,
                 group=None, grad_world_scale: bool = True):
        super().__init__()
        if geometry not in ("lorentz", "euclidean"):
            raise ValueError(f"geometry must be 'lorentz' or 'euclidean', got {geometry!r}")
        self.geometry, self.backend, self.distributed = geometry, backend, distributed
        self.group, self.grad_world_scale = group, grad_world_scale

    def forward(self, image, text, logit_scale, *args, targets=None, weights=None):
        kw = dict(backend=self.backend, distributed=self.distributed, group=self.group,
                  grad_world_scale=self.grad_world_scale)
        if self.geometry == "lorentz":
            if not args:
                raise TypeError("the Lorentz loss needs curv: forward(image, text, logit_scale, curv)")
            curv, *rest = args
            rest = list(rest) + [None] * (2 - len(rest))
            return lorentz_contrastive_loss(image, text, logit_scale, curv, targets if targets is not None else rest[0],
                                            weights if weights is not None else rest[1], **kw)
        rest = list(args) + [None] * (2 - len(args))
        return clip_contrastive_loss(image, text, logit_scale, targets if targets is not None else rest[0],
                                     weights if weights is not None else rest[1], **kw)


# ----------------------------------------------------------------------------- entailment

def _entailment(text, image, curv, min_radius, sign, margin, backend):
    _check_pair(text, image, rowwise=True, names=("text", "image"))
    c = as_positive_scalar("curv", curv, text)
    radius = _check_min_radius(min_radius)
    if text.shape[0] == 0:
        raise ValueError("the entailment loss needs at least one pair")
    chosen = resolve_loss_backend(backend, text.device, kind="entailment")
    cd = compute_dtype(text.dtype)
    if chosen == "reference":
        angle = lorentz_reference.oxy_angle(text, image, c).to(cd)
        aperture = lorentz_reference.half_aperture(text, c, radius).to(cd)
        return F.relu(sign * (angle - aperture) + margin).mean()
    if chosen == "triton":
        module, why = _triton_losses()
        if module is None:
            raise RuntimeError(f"backend 'triton' is not available: {why}")
        rows = module.triton_entailment_rows(text, image, c, radius, sign, margin)
    elif chosen == "native":
        rows = _NativeEntailment.apply(text, image, c.to(cd), radius, sign, margin)
    else:
        rows = chunked.EntailmentRows.apply(text.to(cd), image.to(cd), c, radius, sign, margin)
    return rows.mean()


class _NativeEntailment(torch.autograd.Function):
    """Per-row entailment / calibration losses from the fused native op
    ``hypkern_native::entailment_fwd_bwd`` (loss and gradient in one pass, compute dtype);
    backward only scales the saved gradient rows by the upstream gradient."""

    @staticmethod
    def forward(ctx, x, y, c, min_radius, sign, margin):
        need = any(t.requires_grad for t in (x, y, c))
        from ..kernels import native
        loss, gx, gy, gc = native.entailment_fwd_bwd(x, y, c.detach(), min_radius, sign, margin, need)
        if need:
            ctx.save_for_backward(gx, gy, gc)
            ctx.dtypes = (x.dtype, y.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad):
        gx, gy, gc = ctx.saved_tensors
        grad = grad.to(gx.dtype)
        return ((grad[:, None] * gx).to(ctx.dtypes[0]), (grad[:, None] * gy).to(ctx.dtypes[1]),
                (grad * gc).sum(), None, None, None)


def entailment_loss(text: torch.Tensor, image: torch.Tensor, curv, min_radius: float = 0.1, *,
                    backend: str | None = None) -> torch.Tensor:
    """MERU's entailment loss ``mean(relu(oxy_angle(text, image) - half_aperture(text)))``:
    the text's cone should contain its image. One pass computes the loss and its gradient
    (text, image, curv); float32 result (float64 for float64 inputs)."""
    return _entailment(text, image, curv, min_radius, 1.0, 0.0, backend)


def entailment_calibration_loss(text: torch.Tensor, image: torch.Tensor, curv, margin: float = 0.0,
                                min_radius: float = 0.1, *, backend: str | None = None) -> torch.Tensor:
    """Forget-side entailment calibration (HAC):
    ``mean(relu(half_aperture(text) - oxy_angle(text, image) + margin))`` pushes each image
    out of its text's cone, at least ``margin`` radians beyond its boundary."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise TypeError(f"margin must be a finite float, got {margin!r}")
    return _entailment(text, image, curv, min_radius, -1.0, float(margin), backend)
