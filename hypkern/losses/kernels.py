"""The fused loss kernels as ``torch.library`` custom ops (fake kernels and one autograd
registration each), dispatched to the backend :mod:`hypkern.kernels.registry` picks.

* ``hypkern::contrastive_stats(x, y, c, beta, targets, kind, block_rows, block_cols, backend)
  -> (r, C, p)``: the row log-sum-exp ``r_i = lse_j l_ij``, the column log-sum-exp
  ``C_j = lse_k l_kj`` and the positive logit ``p_i = l_i,t_i`` of the logits
  ``l = -(beta/2) acosh(-c <x_i, y_j>_L)`` (``kind="lorentz"``, ``beta = 2 s / sqrt(c)``) or
  ``l = beta x_i . y_j`` (``kind="cosine"``, unit rows), without storing the N x M logits.
  Its backward op recomputes the logits tile by tile from the upstream gradients of all
  three statistics, so anything built on them (per-pair losses, weights, a distributed
  all-reduce of ``C``) is ordinary autograd outside.
* ``hypkern::entailment_rows(text, image, curv, min_radius, sign, margin, backend) -> (N,)``:
  ``relu(sign (oxy_angle(text, image) - half_aperture(text, min_radius)) + margin)`` per row;
  ``sign=+1, margin=0`` is MERU's entailment loss, ``sign=-1`` the calibration (reversed cone).

Statistics and rows are in the compute dtype (float32; float64 for float64 inputs);
gradients in the inputs' dtypes. ``torch.compile`` traces through both (``register_fake``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import compute_dtype, saturate_half, upcast
from ..kernels import registry

__all__ = ["contrastive_stats", "entailment_rows", "lorentz_operands", "cosine_operands"]


def _cd_empty(like: torch.Tensor, n: int) -> torch.Tensor:
    return like.new_empty((n,), dtype=compute_dtype(like.dtype))


# ----------------------------------------------------------------------------- contrastive

@torch.library.custom_op("hypkern::contrastive_stats", mutates_args=(),
                         schema="(Tensor x, Tensor y, Tensor c, Tensor beta, Tensor targets, str kind, "
                                "int block_rows, int block_cols, str backend) -> (Tensor, Tensor, Tensor)")
def _contrastive_stats_op(x, y, c, beta, targets, kind, block_rows, block_cols, backend):
    r, col, p = registry.kernels(backend).contrastive_fwd(kind, x, y, c, beta, targets, block_rows, block_cols)
    return r.contiguous(), col.contiguous(), p.contiguous()


@_contrastive_stats_op.register_fake
def _(x, y, c, beta, targets, kind, block_rows, block_cols, backend):
    return _cd_empty(x, x.shape[0]), _cd_empty(x, y.shape[0]), _cd_empty(x, x.shape[0])


@torch.library.custom_op("hypkern::contrastive_stats_backward", mutates_args=(),
                         schema="(Tensor g_row, Tensor g_col, Tensor g_pos, Tensor x, Tensor y, Tensor c, "
                                "Tensor beta, Tensor targets, Tensor row_lse, Tensor col_lse, str kind, "
                                "int block_rows, int block_cols, str backend) -> (Tensor, Tensor, Tensor, Tensor)")
def _contrastive_stats_backward_op(g_row, g_col, g_pos, x, y, c, beta, targets, row_lse, col_lse, kind,
                                   block_rows, block_cols, backend):
    dx, dy, dc, db = registry.kernels(backend).contrastive_bwd(
        kind, g_row.contiguous(), g_col.contiguous(), g_pos.contiguous(), x, y, c, beta, targets,
        row_lse, col_lse, block_rows, block_cols)
    return dx.contiguous(), dy.contiguous(), dc.reshape(()).clone(), db.reshape(()).clone()


@_contrastive_stats_backward_op.register_fake
def _(g_row, g_col, g_pos, x, y, c, beta, targets, row_lse, col_lse, kind, block_rows, block_cols, backend):
    return x.new_empty(x.shape), y.new_empty(y.shape), c.new_empty(()), beta.new_empty(())


def _stats_setup(ctx, inputs, output):
    x, y, c, beta, targets, kind, br, bc, backend = inputs
    ctx.save_for_backward(x, y, c, beta, targets, output[0], output[1])
    ctx.extras = (kind, br, bc, backend)


def _stats_backward(ctx, g_row, g_col, g_pos):
    x, y, c, beta, targets, row_lse, col_lse = ctx.saved_tensors
    g_row = torch.zeros_like(row_lse) if g_row is None else g_row
    g_col = torch.zeros_like(col_lse) if g_col is None else g_col
    g_pos = torch.zeros_like(row_lse) if g_pos is None else g_pos
    dx, dy, dc, db = _contrastive_stats_backward_op(g_row, g_col, g_pos, x, y, c, beta, targets, row_lse,
                                                    col_lse, *ctx.extras)
    return saturate_half(dx), saturate_half(dy), dc, db, None, None, None, None, None


_contrastive_stats_op.register_autograd(_stats_backward, setup_context=_stats_setup)


def contrastive_stats(kind: str, x, y, c, beta, targets, backend: str, blocks=None):
    """``(r, C, p)`` of the custom op (see the module docstring); ``blocks=(rows, cols)`` sets
    the tile of the chunked backend (others choose their own)."""
    br, bc = (int(blocks[0]), int(blocks[1])) if blocks is not None else (0, 0)
    return _contrastive_stats_op(x, y, c, beta, targets, kind, br, bc, backend)


def lorentz_operands(image, text, s, c, backend: str):
    """``(x, y, beta)`` for ``kind="lorentz"``: the chunked path computes in the compute dtype,
    the Triton kernels read the features in their own dtype (float32 accumulation)."""
    cd = compute_dtype(image.dtype)
    beta = 2.0 * s / torch.sqrt(c)
    if backend == "triton":
        return image, text, beta
    return upcast(image, cd), upcast(text, cd), beta


def cosine_operands(image, text, backend: str):
    """``(x, y)`` unit rows for ``kind="cosine"`` (the normalisation's gradient included);
    Triton gets half-precision unit vectors for half inputs (tensor cores, fp32 accumulation)."""
    cd = compute_dtype(image.dtype)
    x = F.normalize(upcast(image, cd), dim=-1)
    y = F.normalize(upcast(text, cd), dim=-1)
    if backend == "triton" and image.dtype in (torch.float16, torch.bfloat16):
        x, y = x.to(image.dtype), y.to(image.dtype)
    return x, y


# ----------------------------------------------------------------------------- entailment

@torch.library.custom_op("hypkern::entailment_rows", mutates_args=(),
                         schema="(Tensor text, Tensor image, Tensor curv, float min_radius, float sign, "
                                "float margin, str backend) -> Tensor")
def _entailment_rows_op(text, image, curv, min_radius, sign, margin, backend):
    return registry.kernels(backend).entailment_fwd(text, image, curv, min_radius, sign, margin).contiguous()


@_entailment_rows_op.register_fake
def _(text, image, curv, min_radius, sign, margin, backend):
    return _cd_empty(text, text.shape[0])


@torch.library.custom_op("hypkern::entailment_rows_backward", mutates_args=(),
                         schema="(Tensor grad, Tensor text, Tensor image, Tensor curv, float min_radius, "
                                "float sign, float margin, str backend) -> (Tensor, Tensor, Tensor)")
def _entailment_rows_backward_op(grad, text, image, curv, min_radius, sign, margin, backend):
    gx, gy, gc = registry.kernels(backend).entailment_bwd(grad.contiguous(), text, image, curv, min_radius,
                                                          sign, margin)
    return gx.contiguous(), gy.contiguous(), gc.reshape(()).clone()


@_entailment_rows_backward_op.register_fake
def _(grad, text, image, curv, min_radius, sign, margin, backend):
    return text.new_empty(text.shape), image.new_empty(image.shape), curv.new_empty(())


def _entail_setup(ctx, inputs, output):
    text, image, curv, *extras = inputs
    ctx.save_for_backward(text, image, curv)
    ctx.extras = tuple(extras)


def _entail_backward(ctx, grad):
    text, image, curv = ctx.saved_tensors
    gx, gy, gc = _entailment_rows_backward_op(grad, text, image, curv, *ctx.extras)
    return saturate_half(gx), saturate_half(gy), gc, None, None, None, None


_entailment_rows_op.register_autograd(_entail_backward, setup_context=_entail_setup)


def entailment_rows(text, image, curv, min_radius: float, sign: float, margin: float, backend: str):
    """Per-row entailment (``sign=+1``) or reversed-cone calibration (``sign=-1``) losses via
    the custom op (contiguous inputs, ``curv`` 0-dim in the compute dtype)."""
    return _entailment_rows_op(text.contiguous(), image.contiguous(), curv, float(min_radius), float(sign),
                               float(margin), backend)
