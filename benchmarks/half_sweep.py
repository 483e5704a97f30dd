#!/usr/bin/env python
"""Non-finite values over hard inputs, per op, dtype and backend (the half-precision contract).

    python benchmarks/half_sweep.py [--rows 100000] [--out benchmarks/results/half_sweep.md]

Rows (output entries for the pairwise ops): norms log-uniform in [1e-6, 1e4] and exact zeros; second inputs equal to the first,
nearly collinear (relative perturbation 1e-3), antipodal, or fresh; c in {0.1, 1, 10} as a
0-dim tensor in the input dtype that requires grad; logit scale in [1, 100] (tensor, grad);
random upstream gradients. Per op, dtype and backend (every backend that runs the op on
the CPU; Triton only under TRITON_INTERPRET=1, with --triton-rows rows): the number of
non-finite forward values where the float64 reference on the same rounded inputs is finite
and inside the dtype's range, and of non-finite gradient entries (inputs, curvature, logit
scale). The contract says both are 0.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

OPS = ("pairwise_inner", "pairwise_dist", "dist", "exp_map0", "log_map0", "half_aperture", "oxy_angle",
       "lorentz_contrastive_loss", "clip_contrastive_loss", "entailment_loss", "entailment_calibration_loss")
REGISTRY_OP = {"lorentz_contrastive_loss": "lorentz_contrastive", "clip_contrastive_loss": "clip_contrastive",
               "entailment_loss": "entailment", "entailment_calibration_loss": "entailment"}
PAIRWISE = ("pairwise_inner", "pairwise_dist")
UNARY = ("exp_map0", "log_map0", "half_aperture")
LOSSES = ("lorentz_contrastive_loss", "clip_contrastive_loss", "entailment_loss", "entailment_calibration_loss")


def hard_rows(n, d, g):
    dirs = torch.randn(n, d, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    norms = torch.exp(math.log(1e-6) + (math.log(1e4) - math.log(1e-6)) * torch.rand(n, 1, generator=g,
                                                                                       dtype=torch.float64))
    x = dirs * norms
    x[torch.rand(n, generator=g) < 0.05] = 0.0
    kind = torch.randint(0, 4, (n,), generator=g)
    fresh = torch.randn(n, d, generator=g, dtype=torch.float64) * norms.flip(0)
    y = torch.where((kind == 0)[:, None], x, fresh)
    y = torch.where((kind == 1)[:, None], x * (1 + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)), y)
    y = torch.where((kind == 2)[:, None], -x, y)
    return x, y


def _call(op, backend, x, y, c, s):
    import hypkern
    from hypkern import losses as HL
    from hypkern.lorentz import reference as R
    from hypkern.losses import reference as LR
    kw = {} if backend is None else {"backend": backend}
    if op in PAIRWISE or op in ("dist", "oxy_angle"):
        return getattr(R, op)(x, y, c) if backend is None else getattr(hypkern, op)(x, y, c, **kw)
    if op in UNARY:
        return getattr(R, op)(x, c) if backend is None else getattr(hypkern, op)(x, c, **kw)
    if op == "lorentz_contrastive_loss":
        return (LR if backend is None else HL).lorentz_contrastive_loss(x, y, s, c, **kw)
    if op == "clip_contrastive_loss":
        return (LR if backend is None else HL).clip_contrastive_loss(x, y, s, **kw)
    if backend is None:
        sign, margin = (1.0, 0.0) if op == "entailment_loss" else (-1.0, 0.1)
        return LR.entailment_rows(x, y, c, 0.1, sign, margin).mean()
    if op == "entailment_loss":
        return HL.entailment_loss(x, y, c, **kw)
    return HL.entailment_calibration_loss(x, y, c, 0.1, **kw)


def run_case(op, backend, dtype, rows, d, seed):
    g = torch.Generator().manual_seed(seed)
    bad_fwd = bad_grad = total = 0
    fmax = torch.finfo(dtype).max
    batch = 200 if op in PAIRWISE else 1000 if op in LOSSES else rows // 3 + 1  # >= 3 batches: every c
    done = 0
    while done < rows:  # rows of the row-wise ops and losses, output entries (N x M) of the pairwise ones
        n = batch if op in PAIRWISE else min(batch, rows - done)
        x64, y64 = hard_rows(n, d, g)
        cval = (0.1, 1.0, 10.0)[(done // (batch * (batch if op in PAIRWISE else 1))) % 3]
        sval = float(torch.empty(()).uniform_(1.0, 100.0, generator=g))
        x, y = x64.to(dtype).requires_grad_(True), y64.to(dtype).requires_grad_(True)
        c = torch.tensor(cval, dtype=dtype, requires_grad=True)
        s = torch.tensor(sval, dtype=dtype, requires_grad=True)
        out = _call(op, backend, x, y, c, s)
        with torch.no_grad():
            ref = _call(op, None, x.detach().double(), y.detach().double(), c.detach().double(),
                        s.detach().double())
        ok = torch.isfinite(ref) & (ref.abs() <= fmax)
        bad_fwd += int((~torch.isfinite(out.detach()) & ok).sum())
        gout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype) if out.ndim else None
        wrt = [x, c] if op in UNARY else [x, c, s] if op in LOSSES[:2] else [x, y, c]
        if op in LOSSES[:2]:
            wrt = [x, y, c, s] if op == "lorentz_contrastive_loss" else [x, y, s]
        grads = torch.autograd.grad(out, wrt, gout, allow_unused=True)
        bad_grad += sum(int((~torch.isfinite(gr)).sum()) for gr in grads if gr is not None)
        total += out.numel()
        done += n * n if op in PAIRWISE else n
    return bad_fwd, bad_grad, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--triton-rows", type=int, default=3000)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from hypkern.kernels import registry
    lines = ["| op | dtype | backend | rows | non-finite forward | non-finite gradient entries |",
             "|---|---|---|---:|---:|---:|"]
    worst = 0
    for op in a.ops.split(","):
        rop = REGISTRY_OP.get(op, op)
        for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
            for backend in registry.BACKENDS:
                if rop not in registry.BACKENDS[backend].implements or not registry.available(backend, "cpu")[0]:
                    continue
                rows = a.triton_rows if backend == "triton" else a.rows
                bf, bg, _ = run_case(op, backend, dtype, rows, a.d, seed=1)
                worst = max(worst, bf + bg)
                line = f"| {op} | {str(dtype)[6:]} | {backend} | {rows} | {bf} | {bg} |"
                print(line, flush=True)
                lines.append(line)
    md = ("Half-precision and NaN contract sweep (`benchmarks/half_sweep.py`, CPU). Hard rows: norms "
          "log-uniform in [1e-6, 1e4] and zeros; equal, nearly collinear, antipodal or fresh partners; "
          "c in {0.1, 1, 10} in the input dtype with grad; s in [1, 100]. Forward counts exclude entries whose "
          "float64 value is itself outside the dtype's range.\n\n" + "\n".join(lines) + "\n")
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write(md)
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
