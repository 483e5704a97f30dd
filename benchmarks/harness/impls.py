"""Every implementation a case is timed with: the eager reference, ``torch.compile``, the kernel
backends, hypkern's fused losses, and the peers (geoopt, open_clip, Inf-CL) and bounds
(``matmul``, ``copy``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .cases import CURV, LOGIT_SCALE, MIN_RADIUS, OPS, Case


# ----------------------------------------------------------------------------- implementations

@dataclass
class Built:
    """An implementation ready to run: ``fn(*args)``, its (differentiable) ``args``, and how
    to turn its output into the standard one for the accuracy check (None: no check)."""
    fn: Callable
    args: list[torch.Tensor]
    to_standard: Callable | None = lambda out: out
    note: str = ""


def _kernel_backend_ok(name: str, device: str) -> tuple[bool, str]:
    from hypkern.kernels import registry
    return registry.available(name, torch.device(device).type)


def _geoopt_ambient(x: torch.Tensor) -> torch.Tensor:
    """geoopt's hyperboloid <x,x>_L = -k with k = 1/c, time coordinate first: (x_t, x)."""
    xt = torch.sqrt(1.0 / CURV + (x * x).sum(-1, keepdim=True))
    return torch.cat([xt, x], dim=-1)


#: geoopt's pairwise ops broadcast to an (N, M, D+1) tensor; skip above this many bytes.
GEOOPT_PAIRWISE_MAX_BYTES = 1 << 30


def _impl_names(kind: str, name: str, device: str) -> list[str]:
    cuda = device.startswith("cuda")
    names = ["reference", "compile"]
    if kind == "op":
        names += ["triton", "native"] if cuda else ["native"]
        if name in ("pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0"):
            names.append("geoopt")
        if OPS[name][1]:
            names.append("matmul")
        if name in ("exp_map0", "log_map0"):
            names.append("copy")
        return names
    # the fused backends of hypkern.losses that implement this loss (the one registry);
    # Triton only on CUDA here (never benchmark the interpreter)
    from hypkern.kernels import registry
    names += [n for n in registry.BACKENDS if n != "reference" and name in registry.BACKENDS[n].implements
              and (cuda or n != "triton")]
    if name != "entailment":
        names.append("matmul")
    if name == "clip_contrastive":
        names.append("open_clip")
        if cuda:
            names.append("inf_cl")
    return names


#: The implementation of each loss that the issue's "fused" targets are judged on.
FUSED_LOSS_IMPL = {"cpu": "chunked", "cuda": "triton"}


#: Implementations that build the B x B logits (or the N x M output) of a contrastive case.
MATERIALISING = ("reference", "compile", "open_clip", "matmul")


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def build_impl(impl: str, case: Case, inputs: list[torch.Tensor]) -> Built:
    """Raise ``_Skip`` when ``impl`` cannot run this case here (including: a materialised
    B x B contrastive whose fwd+bwd would need more than half the free memory)."""
    from hypkern.lorentz import ops
    from hypkern.lorentz import reference as R
    from hypkern.losses import reference as LR
    device = inputs[0].device.type
    if case.kind == "loss" and case.pairwise and impl in MATERIALISING:
        need = 6 * case.n * case.m * 4  # ~six fp32 B x B buffers alive in a materialised fwd+bwd
        if need > 0.5 * _available_bytes(device):
            raise _Skip(f"materialises B x B: ~{need / 2 ** 30:.0f} GiB > half the free memory")
    extra = (MIN_RADIUS,) if case.name == "half_aperture" else ()
    args = [t.detach().clone().requires_grad_(True) for t in inputs]

    if impl == "matmul":
        return Built(lambda x, y: x @ y.T, args, None, "bound: bare x @ y.T")
    if impl == "copy":
        # bound of an N x D -> N x D map: ``x * 1.0`` reads the input and writes a freshly
        # allocated output, and its backward does the same for the gradient (``clone`` would
        # pass the gradient through for free). On CPU the fresh output's page faults, not the
        # arithmetic, dominate at large N x D.
        return Built(lambda x: x * 1.0, args, None, "bound: x * 1.0")

    if case.kind == "op":
        if impl == "reference":
            f = getattr(ops, case.name)
            return Built(lambda *t: f(*t, CURV, *extra, backend="reference"), args)
        if impl == "compile":
            f = torch.compile(getattr(R, case.name))
            return Built(lambda *t: f(*t, CURV, *extra), args)
        if impl in ("triton", "native"):
            if impl == "triton" and device != "cuda":
                raise _Skip("the Triton kernels run on CUDA here (never benchmark the interpreter)")
            ok, why = _kernel_backend_ok(impl, device)
            if not ok:
                raise _Skip(why)
            f = getattr(ops, case.name)
            return Built(lambda *t: f(*t, CURV, *extra, backend=impl), args)
        if impl == "geoopt":
            return _build_geoopt(case, inputs)
        raise _Skip(f"no implementation {impl!r} for op {case.name}")

    # losses
    from hypkern import losses as L
    if impl == "compile":
        if case.name == "lorentz_contrastive":
            f = torch.compile(LR.lorentz_contrastive_loss)
            return Built(lambda a, b: f(a, b, LOGIT_SCALE, CURV), args)
        if case.name == "clip_contrastive":
            f = torch.compile(LR.clip_contrastive_loss)
            return Built(lambda a, b: f(a, b, LOGIT_SCALE), args)
        f = torch.compile(LR.entailment_loss)
        return Built(lambda t, i: f(t, i, CURV, MIN_RADIUS), args)
    from hypkern.kernels import registry
    if impl in registry.BACKENDS:
        # hypkern.losses as a user calls it, with backend= (reference: the materialised B x B).
        if case.name not in registry.BACKENDS[impl].implements:
            raise _Skip(f"backend {impl!r} does not implement {case.name}")
        if impl == "triton" and device != "cuda":
            raise _Skip("the Triton loss runs on CUDA here (never benchmark the interpreter)")
        ok, why = registry.available(impl, torch.device(device).type)
        if not ok:
            raise _Skip(why)
        if case.name == "lorentz_contrastive":
            return Built(lambda a, b: L.lorentz_contrastive_loss(a, b, LOGIT_SCALE, CURV, backend=impl), args)
        if case.name == "clip_contrastive":
            return Built(lambda a, b: L.clip_contrastive_loss(a, b, LOGIT_SCALE, backend=impl), args)
        return Built(lambda t, i: L.entailment_loss(t, i, CURV, MIN_RADIUS, backend=impl), args)
    if impl == "open_clip" and case.name == "clip_contrastive":
        try:
            from open_clip.loss import ClipLoss
        except Exception as exc:  # pragma: no cover - open_clip is a dependency
            raise _Skip(f"open_clip not importable: {exc}")
        loss = ClipLoss()
        import torch.nn.functional as F
        # ClipLoss takes normalised features: normalise inside, as hypkern's loss does.
        return Built(lambda a, b: loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1), LOGIT_SCALE),
                     args)
    if impl == "inf_cl" and case.name == "clip_contrastive":
        if device != "cuda":
            raise _Skip("Inf-CL runs on CUDA only")
        try:
            from inf_cl import cal_inf_loss
        except Exception as exc:
            raise _Skip(f"inf_cl not importable: {type(exc).__name__}: {exc}")
        import torch.nn.functional as F

        scale = torch.tensor(LOGIT_SCALE, device=inputs[0].device, dtype=torch.float32)

        def inf_cl(a, b):
            # cal_inf_loss(q, k, labels=None, scale=tensor) is one direction (q's rows against
            # all k, labels arange(B)); CLIP's symmetric loss is the mean of both directions.
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
            return 0.5 * (cal_inf_loss(a, b, scale=scale) + cal_inf_loss(b, a, scale=scale))
        return Built(inf_cl, args)
    raise _Skip(f"no implementation {impl!r} for loss {case.name}")


def _build_geoopt(case: Case, inputs: list[torch.Tensor]) -> Built:
    """geoopt's Lorentz model: ambient (D+1)-vectors, time first, <x,x>_L = -k, k = 1/c.

    Its ``dist(x, y, k) = sqrt(k) acosh(-<x,y>_L / k)`` equals ours with k = 1/c;
    ``expmap0(u, k)`` of the tangent vector ``u = (0, v)`` at its origin ``(sqrt(k), 0)`` has
    space part ``sinh(sqrt(c)|v|) v / (sqrt(c)|v|)`` = our ``exp_map0(v)``; ``logmap0(y, k)``
    has space part our ``log_map0``. Inputs are converted to its ambient form before timing
    (a geoopt user holds them that way); gradients are w.r.t. the ambient tensors."""
    try:
        from geoopt.manifolds.lorentz import math as gm
    except Exception as exc:
        raise _Skip(f"geoopt not importable ({type(exc).__name__}); pip install 'hypkern[bench]'")
    dev, dt = inputs[0].device, inputs[0].dtype
    k = torch.tensor(1.0 / CURV, device=dev, dtype=dt)
    name = case.name
    if name in ("pairwise_inner", "pairwise_dist"):
        need = case.n * case.m * (case.d + 1) * inputs[0].element_size()
        if need > GEOOPT_PAIRWISE_MAX_BYTES:
            raise _Skip(f"geoopt broadcasts to (N, M, D+1): {need / 2 ** 30:.1f} GiB > "
                        f"{GEOOPT_PAIRWISE_MAX_BYTES / 2 ** 30:.0f} GiB cap")
    if name == "exp_map0":
        u = torch.cat([torch.zeros_like(inputs[0][:, :1]), inputs[0]], dim=-1)
        args = [u.detach().clone().requires_grad_(True)]
        return Built(lambda a: gm.expmap0(a, k=k), args, lambda out: out[:, 1:])
    args = [_geoopt_ambient(t.to(torch.float64)).to(dt).detach().clone().requires_grad_(True)
            for t in inputs]
    if name == "log_map0":
        return Built(lambda a: gm.logmap0(a, k=k), args, lambda out: out[:, 1:])
    if name == "dist":
        return Built(lambda a, b: gm.dist(a, b, k=k), args)
    if name == "pairwise_dist":
        return Built(lambda a, b: gm.dist(a[:, None, :], b[None, :, :], k=k), args)
    if name == "pairwise_inner":
        # geoopt's inner has no curvature: the same <x,y>_L as ours for the same points.
        return Built(lambda a, b: gm.inner(a[:, None, :], b[None, :, :]), args)
    raise _Skip(f"geoopt has no {name}")


class _Skip(Exception):
    pass
