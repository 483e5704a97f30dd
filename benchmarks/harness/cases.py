"""What is benchmarked: the ops and losses, the sizes of each suite, one ``Case``, the
byte/FLOP cost model, the standard inputs and the float64 reference they are checked against."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


# ----------------------------------------------------------------------------- catalogue

#: op name -> (number of tensor inputs, pairwise?)
OPS = {
    "pairwise_inner": (2, True),
    "pairwise_dist": (2, True),
    "dist": (2, False),
    "exp_map0": (1, False),
    "log_map0": (1, False),
    "half_aperture": (1, False),
    "oxy_angle": (2, False),
}
#: loss name -> matmul-shaped?
LOSSES = {
    "lorentz_contrastive": True,
    "clip_contrastive": True,
    "entailment": False,
}
PASSES = ("fwd", "bwd", "fwd+bwd")
CURV = 0.5          # c: the geometry runs on curvature -0.5 (geoopt: k = 1/c = 2)
LOGIT_SCALE = 14.0  # s, about MERU's / CLIP's 1/0.07 initialisation
MIN_RADIUS = 0.1

#: Sizes per suite: size class (or a case's own name) -> list of (N, M, D) (M = N row-wise).
SIZES = {
    "quick": {
        "pairwise": [(64, 48, 16)],
        "rowwise": [(256, 256, 16)],
        "contrastive": [(64, 64, 16)],
        "entailment": [(256, 256, 16)],
    },
    "full": {
        "pairwise": [(512, 512, 128), (2048, 2048, 512)],
        "rowwise": [(4096, 4096, 128), (32768, 32768, 512)],
        # B = 8192, D = 512 is issue 8's CPU target size for the fused Lorentz loss
        "contrastive": [(1024, 1024, 512), (8192, 8192, 512)],
        "clip_contrastive": [(1024, 1024, 512), (4096, 4096, 512)],
        "entailment": [(4096, 4096, 128), (32768, 32768, 512)],
    },
    # On a GPU the sizes where launch overheads stop mattering.
    "gpu": {
        "pairwise": [(4096, 4096, 512), (16384, 16384, 512)],
        "rowwise": [(65536, 65536, 512), (1048576, 1048576, 512)],
        "contrastive": [(8192, 8192, 512), (65536, 65536, 512)],
        "entailment": [(65536, 65536, 512), (1048576, 1048576, 512)],
    },
}

CSV_COLUMNS = [
    "kind", "name", "impl", "pass", "n", "m", "d", "dtype", "device", "median_ms", "p25_ms",
    "p75_ms", "reps", "speedup_vs_ref", "gbps", "gflops", "peak_mb", "mem_vs_ref", "err",
    "status",
]


@dataclass(frozen=True)
class Case:
    """One benchmarked function: an op or a loss at one size."""
    kind: str  # "op" | "loss"
    name: str
    n: int
    m: int
    d: int

    @property
    def pairwise(self) -> bool:
        return OPS[self.name][1] if self.kind == "op" else LOSSES[self.name]

    @property
    def label(self) -> str:
        if self.kind == "op" and self.pairwise:
            return f"{self.n}x{self.m}x{self.d}"
        return f"{self.n}x{self.d}"


def _size_class(kind: str, name: str) -> str:
    if kind == "op":
        return "pairwise" if OPS[name][1] else "rowwise"
    return "entailment" if name == "entailment" else "contrastive"


# ----------------------------------------------------------------------------- cost model

def cost_model(kind: str, name: str, pass_: str, n: int, m: int, d: int, elem_bytes: int):
    """(bytes, FLOPs) of one call under the model in the module docstring."""
    e = elem_bytes
    if kind == "op":
        if name in ("pairwise_inner", "pairwise_dist"):
            fb, bb = e * ((n + m) * d + n * m), e * (n * m + 2 * (n + m) * d)
            ff = 2 * n * m * d + 2 * (n + m) * d
        elif name in ("dist", "oxy_angle"):
            fb, bb, ff = e * (2 * n * d + n), e * (n + 4 * n * d), 6 * n * d
        elif name in ("exp_map0", "log_map0"):
            fb, bb, ff = e * 2 * n * d, e * 3 * n * d, 3 * n * d
        elif name == "half_aperture":
            fb, bb, ff = e * (n * d + n), e * (n + 2 * n * d), 2 * n * d
        else:
            raise KeyError(name)
    else:
        if name in ("lorentz_contrastive", "clip_contrastive"):
            fb, bb, ff = e * (n + m) * d, e * 2 * (n + m) * d, 2 * n * m * d
        elif name == "entailment":
            fb, bb, ff = e * 2 * n * d, e * 4 * n * d, 8 * n * d
        else:
            raise KeyError(name)
    bf = 2 * ff
    return {"fwd": (fb, ff), "bwd": (bb, bf), "fwd+bwd": (fb + bb, ff + bf)}[pass_]


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Standard inputs (space parts / features): rows of norm about 2, like MERU's embeddings."""
    g = torch.Generator().manual_seed(seed)
    k = OPS[case.name][0] if case.kind == "op" else 2
    rows = [case.n] if k == 1 else [case.n, case.m if case.pairwise else case.n]
    scale = 2.0 / math.sqrt(case.d)
    return [(torch.randn(r, case.d, generator=g) * scale).to(device=device, dtype=dtype) for r in rows]


def _reference_f64(case: Case, inputs: list[torch.Tensor]) -> torch.Tensor:
    from hypkern.lorentz import reference as R
    from hypkern.losses import reference as LR
    xs = [t.detach().to(torch.float64) for t in inputs]
    if case.kind == "op":
        extra = (MIN_RADIUS,) if case.name == "half_aperture" else ()
        return getattr(R, case.name)(*xs, CURV, *extra)
    if case.name == "lorentz_contrastive":
        return LR.lorentz_contrastive_loss(xs[0], xs[1], LOGIT_SCALE, CURV)
    if case.name == "clip_contrastive":
        return LR.clip_contrastive_loss(xs[0], xs[1], LOGIT_SCALE)
    return LR.entailment_loss(xs[0], xs[1], CURV, MIN_RADIUS)


def _is_slow(case: Case) -> bool:
    """Cases whose float64 check and extra warm-up cost tens of seconds on a CPU: the
    contrastive losses above 4096 x 4096 (their correctness is checked at the smaller size)."""
    return case.kind == "loss" and case.pairwise and case.n * case.m > 4096 * 4096
