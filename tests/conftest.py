"""Shared test fixtures: inputs (fresh random and hard), tolerances, and the float64 oracle.

Every kernel test compares against ``hypkern.lorentz.reference`` run in float64 on the same
inputs, forward and every gradient (curvature included), never against the kernel itself.
"""
from __future__ import annotations

import os

import pytest
import torch

from hypkern.lorentz import reference as R

#: Absolute/relative tolerances per input dtype for comparing a kernel to the float64 oracle
#: on well-conditioned inputs (values and gradients of order one).
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-4, rtol=2e-4),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=1e-1, rtol=8e-2),
}

#: The ops, their tensor inputs and their extra arguments (shared by every kernel test).
OPS = {
    "pairwise_inner": dict(inputs=2, rowwise=False),
    "pairwise_dist": dict(inputs=2, rowwise=False),
    "dist": dict(inputs=2, rowwise=True),
    "exp_map0": dict(inputs=1, rowwise=True),
    "log_map0": dict(inputs=1, rowwise=True),
    "half_aperture": dict(inputs=1, rowwise=True),
    "oxy_angle": dict(inputs=2, rowwise=True),
}


def make_inputs(op: str, n: int, d: int, dtype=torch.float32, device="cpu", m: int | None = None,
                scale: float = 0.5, seed: int = 0):
    """Fresh random, well-conditioned inputs for ``op``: points with norms of order one."""
    g = torch.Generator().manual_seed(seed)
    spec = OPS[op]
    rows = [n] if spec["inputs"] == 1 else [n, n if spec["rowwise"] else (m or n)]
    out = []
    for r in rows:
        t = torch.randn(r, d, generator=g, dtype=torch.float64) * scale
        out.append(t.to(dtype=dtype, device=device))
    return out


def hard_inputs(op: str, d: int = 8, dtype=torch.float32, device="cpu"):
    """Inputs that break naive formulas: equal points, zero vectors, tiny and huge norms."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, d, generator=g, dtype=torch.float64)
    unit = base / base.norm(dim=-1, keepdim=True)
    norms = torch.tensor([0.0, 1e-6, 1e-3, 1.0, 1e2, 1e4], dtype=torch.float64)[:, None]
    x = unit * norms
    if OPS[op]["inputs"] == 1:
        return [x.to(dtype=dtype, device=device)]
    # y: equal to x, then x's neighbour, the origin, a far point...
    y = torch.cat([x[:2], torch.zeros(1, d, dtype=torch.float64), x[3:4] * (1 + 1e-6),
                   -x[4:5], x[5:6] * 0.5])
    return [x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)]


def oracle(op: str, inputs, curv: float, min_radius: float = 0.1, grad_out=None):
    """float64 reference value and gradients (inputs..., curv) for ``op``."""
    xs = [t.detach().to(torch.float64).requires_grad_(True) for t in inputs]
    c = torch.tensor(float(curv), dtype=torch.float64, requires_grad=True)
    extra = (min_radius,) if op == "half_aperture" else ()
    out = getattr(R, op)(*xs, c, *extra)
    if grad_out is None:  # seeded: results must not depend on which tests ran before
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1234), dtype=out.dtype)
    grads = torch.autograd.grad(out, xs + [c], grad_out.to(torch.float64))
    return out.detach(), grads, grad_out


def assert_close_to_oracle(actual, expected, dtype, what: str = "", scale_atol: float = 1.0):
    tol = TOLERANCES[dtype]
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    torch.testing.assert_close(actual, expected, atol=tol["atol"] * scale_atol, rtol=tol["rtol"],
                               msg=lambda m: f"{what}: {m}")


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


# ----------------------------------------------------------------------------- CI guard
# CI sets HYPKERN_REQUIRE=triton,native,distributed: a test carrying one of those markers
# that is skipped then FAILS, and a required part with no test that ran fails the session.
# A green run therefore proves the Triton interpreter, the native build and the distributed
# tests really ran.

def registry_backends(op: str) -> list:
    """``pytest.param(name)`` for every backend of the registry that implements ``op``, with
    its marker (``triton``, skipped without CUDA or the interpreter; ``native``)."""
    from hypkern.kernels import registry
    triton_ok = torch.cuda.is_available() or triton_interpreter_on()
    out = []
    for name, b in registry.BACKENDS.items():
        if op not in b.implements:
            continue
        marks = []
        if name == "triton":
            marks = [pytest.mark.triton, pytest.mark.skipif(not triton_ok, reason="needs CUDA or TRITON_INTERPRET=1")]
        elif name == "native":
            marks = [pytest.mark.native]
        out.append(pytest.param(name, marks=marks))
    return out


def backend_device(backend: str) -> str:
    """Where a test runs ``backend``: CUDA for Triton when there is a GPU, else the CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _required_parts(config) -> set[str]:
    return {p.strip() for p in os.environ.get("HYPKERN_REQUIRE", "").split(",") if p.strip()}


_ran_by_part: dict[str, int] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    required = _required_parts(item.config)
    names = {m.name for m in item.iter_markers()}
    parts = names & required
    if not parts or "cuda" in names:  # GPU-only tests may skip on machines without one
        return
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"HYPKERN_REQUIRE={','.join(sorted(required))}: this {'/'.join(sorted(parts))} "
                           f"test must run here but was skipped: {reason}")
    elif report.when == "call" and report.passed:
        for p in parts:
            _ran_by_part[p] = _ran_by_part.get(p, 0) + 1


def pytest_sessionfinish(session, exitstatus):
    required = _required_parts(session.config)
    if not required or session.config.option.collectonly:
        return
    missing = sorted(p for p in required if not _ran_by_part.get(p))
    if missing:
        print(f"\nHYPKERN_REQUIRE: no passing test for {', '.join(missing)}: that part did not run.")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
