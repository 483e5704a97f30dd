"""The public op API: argument checks with clear errors, backend choice, backends() report."""
import pytest
import torch

import hypkern
from hypkern.kernels import registry
from hypkern.lorentz import ops
from hypkern.lorentz import reference as R

X = torch.randn(4, 3)
Y = torch.randn(5, 3)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: hypkern.pairwise_dist(X[0], Y, 1.0), ValueError, r"x must be 2-D"),
    (lambda: hypkern.pairwise_dist(X, Y[:, :2], 1.0), ValueError, r"y must have D = 3"),
    (lambda: hypkern.dist(X, Y, 1.0), ValueError, r"y must have as many rows as x \(4\)"),
    (lambda: hypkern.oxy_angle(X, Y[:4].double(), 1.0), TypeError, r"share a dtype"),
    (lambda: hypkern.exp_map0(X.long(), 1.0), TypeError, r"v must be float16, bfloat16, float32 or float64"),
    (lambda: hypkern.exp_map0([[1.0]], 1.0), TypeError, r"v must be a torch.Tensor"),
    (lambda: hypkern.log_map0(X, 0.0), ValueError, r"curv must be finite and > 0, got 0.0"),
    (lambda: hypkern.log_map0(X, -1.0), ValueError, r"curv must be finite and > 0"),
    (lambda: hypkern.log_map0(X, float("nan")), ValueError, r"curv must be finite and > 0"),
    (lambda: hypkern.log_map0(X, torch.tensor(-2.0)), ValueError, r"curv must be finite and > 0, got -2.0"),
    (lambda: hypkern.log_map0(X, torch.ones(2)), ValueError, r"curv must be a float or a 0-dim tensor"),
    (lambda: hypkern.log_map0(X, "1"), TypeError, r"curv must be a float or a 0-dim tensor"),
    (lambda: hypkern.half_aperture(X, 1.0, min_radius=0.0), ValueError, r"min_radius must be finite and > 0"),
    (lambda: hypkern.half_aperture(torch.zeros(3, 0), 1.0), ValueError, r"D >= 1"),
    (lambda: hypkern.pairwise_inner(X, Y, 1.0, backend="cuDNN"), ValueError, r"backend must be one of"),
])
def test_bad_input_gets_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix devices")
@pytest.mark.cuda
def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="one device"):
        hypkern.pairwise_dist(X, Y.cuda(), 1.0)


def test_backends_report_has_reasons():
    report = hypkern.backends()
    assert set(report) == {"reference", "chunked", "triton", "native"}
    assert report["reference"].cpu and report["chunked"].cpu
    assert set(report["reference"].implements) == set(registry.ALL_OPS)
    assert "entailment" not in report["chunked"].implements
    for status in report.values():
        if not (status.cpu and status.cuda):
            assert status.reason, f"{status.name} is not usable everywhere but gives no reason"


def test_reference_backend_matches_reference_module_with_curv_grad():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 4, dtype=torch.float64)
    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = hypkern.oxy_angle(x, y, c, backend="reference")
    torch.testing.assert_close(out, R.oxy_angle(x, y, 0.5))
    out.sum().backward()
    assert c.grad is not None and torch.isfinite(c.grad)


def test_default_backend_on_cpu_is_native_when_built_else_reference():
    chosen = ops.resolve_backend(None, torch.device("cpu"))
    native_ok = hypkern.backends()["native"].cpu
    assert chosen == ("native" if native_ok else "reference")


def test_env_override(monkeypatch):
    monkeypatch.setenv("HYPKERN_BACKEND", "reference")
    assert ops.resolve_backend(None, torch.device("cpu")) == "reference"
    monkeypatch.setenv("HYPKERN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.resolve_backend(None, torch.device("cpu"))


def test_empty_inputs_return_empty():
    out = hypkern.pairwise_dist(torch.zeros(0, 3), Y, 1.0)
    assert out.shape == (0, 5)
    assert hypkern.exp_map0(torch.zeros(0, 3), 1.0).shape == (0, 3)


def test_float_and_tensor_curv_agree():
    a = hypkern.pairwise_dist(X, Y, 0.3, backend="reference")
    b = hypkern.pairwise_dist(X, Y, torch.tensor(0.3), backend="reference")
    torch.testing.assert_close(a, b)


def test_backends_command_prints_the_capability_table(capsys):
    from hypkern import cli
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in registry.BACKENDS:
        assert f"\n{name} " in "\n" + out, out
    assert "native CPU extension (hypkern._C): " in out and "native CUDA extension (hypkern._C_cuda): " in out
    assert "lorentz_contrastive=" in out and "entailment=" in out
