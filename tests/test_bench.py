"""The benchmark harness (benchmarks/harness) works (tiny CPU runs write well-formed tables with
finite positive numbers) and its FLOP/byte model matches hand-computed cases. No timing assertions."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the harness lives in benchmarks/ of the checkout, not in the package;
    sys.path.append(ROOT)  # appended: an installed hypkern (the GPU suite tests one) still comes first

from benchmarks.harness import cases, cli, impls, runner, tables, timing, trainer  # noqa: E402


# ----------------------------------------------------------------------------- cost model

def test_cost_model_pairwise_dist_by_hand():
    # N=2, M=3, D=4, fp32: fwd reads (2+3)*4 floats, writes 2*3: 26 floats = 104 bytes.
    b, f = cases.cost_model("op", "pairwise_dist", "fwd", 2, 3, 4, 4)
    assert b == 4 * (20 + 6) and f == 2 * 2 * 3 * 4 + 2 * 5 * 4
    # bwd: reads grad (6) + inputs (20), writes two grads (20): 46 floats; FLOPs twice the fwd.
    b, f = cases.cost_model("op", "pairwise_dist", "bwd", 2, 3, 4, 4)
    assert b == 4 * 46 and f == 2 * (48 + 40)
    b, f = cases.cost_model("op", "pairwise_dist", "fwd+bwd", 2, 3, 4, 4)
    assert b == 4 * (26 + 46) and f == 3 * 88


@pytest.mark.parametrize("name,fwd_bytes,fwd_flops", [
    ("dist", 2 * (2 * 10 * 8 + 10), 6 * 10 * 8),          # two inputs in, N out; 3 dots
    ("oxy_angle", 2 * (2 * 10 * 8 + 10), 6 * 10 * 8),
    ("exp_map0", 2 * (2 * 10 * 8), 3 * 10 * 8),           # in and out N x D; |v|^2 + scale
    ("log_map0", 2 * (2 * 10 * 8), 3 * 10 * 8),
    ("half_aperture", 2 * (10 * 8 + 10), 2 * 10 * 8),     # N x D in, N out; |x|^2
])
def test_cost_model_rowwise_by_hand(name, fwd_bytes, fwd_flops):
    # N=10, D=8, bf16 (2 bytes)
    assert cases.cost_model("op", name, "fwd", 10, 10, 8, 2) == (fwd_bytes, fwd_flops)


def test_cost_model_losses_by_hand():
    # contrastive B=4, D=3: model FLOPs 2 B^2 D fwd, 6 B^2 D fwd+bwd; bytes 2BD in (fwd), 4BD (bwd)
    assert cases.cost_model("loss", "lorentz_contrastive", "fwd", 4, 4, 3, 4) == (4 * 24, 96)
    assert cases.cost_model("loss", "clip_contrastive", "fwd+bwd", 4, 4, 3, 4) == (4 * (24 + 48), 288)
    assert cases.cost_model("loss", "entailment", "fwd", 4, 4, 3, 4) == (4 * 24, 8 * 12)


def test_time_callable_counts_and_orders():
    calls = []
    t = timing.time_callable(lambda: calls.append(1), min_reps=4, max_reps=4, min_time=0.0, warmup_time=0.0)
    assert t["reps"] == 4 and len(calls) == 5  # one warm-up
    assert 0 <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]
    # setup runs before every call, untimed, and its value is passed in
    seen = []
    timing.time_callable(lambda s: seen.append(s), setup=lambda: "x", min_reps=2, max_reps=2, min_time=0.0,
                         warmup_time=0.0)
    assert seen == ["x"] * 3


# ----------------------------------------------------------------------------- implementations

@pytest.mark.parametrize("name", ["dist", "pairwise_dist", "pairwise_inner", "exp_map0", "log_map0"])
def test_geoopt_peer_matches_the_reference(name):
    pytest.importorskip("geoopt")
    case = cases.Case("op", name, 5, 4, 6)
    inputs = cases.make_inputs(case, torch.float64, "cpu")
    built = impls.build_impl("geoopt", case, inputs)
    err = runner._error(case, built, inputs)
    assert err is not None and err < 1e-6, f"geoopt {name} disagrees with the reference (curvature mapping?)"


def test_open_clip_peer_matches_the_reference():
    pytest.importorskip("open_clip")
    case = cases.Case("loss", "clip_contrastive", 8, 8, 5)
    inputs = cases.make_inputs(case, torch.float64, "cpu")
    built = impls.build_impl("open_clip", case, inputs)
    assert runner._error(case, built, inputs) < 1e-6


def test_native_op_rows_run_where_native_is_usable():
    from hypkern.kernels import registry
    ok, why = registry.available("native", "cpu")
    if not ok:
        pytest.skip(f"native backend not usable here: {why}")
    rows = runner.run_group("op", "dist", "native", [(8, 8, 4)], "float32", "cpu", runner.TIMING["quick"])
    assert [r["status"] for r in rows] == ["ok"] * 3, rows[0]["status"]
    assert rows[0]["err"] < 1e-5


def test_unavailable_backend_is_skipped_not_faked():
    rows = runner.run_group("op", "dist", "triton", [(8, 8, 4)], "float32", "cpu",
                            runner.TIMING["quick"])
    assert len(rows) == 3 and all(r["status"].startswith("skipped") for r in rows)


# ----------------------------------------------------------------------------- end to end

def _check_rows(rows, expect_impls):
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["impl"] for r in ok} >= set(expect_impls)
    for r in ok:
        for col in ("median_ms", "gbps", "gflops"):
            assert math.isfinite(float(r[col])) and float(r[col]) > 0, (r["impl"], col, r[col])
        assert float(r["err"]) < 1e-3 if r["err"] not in ("", None) else r["impl"] == "matmul"
        if r["impl"] == "reference":
            assert float(r["speedup_vs_ref"]) == pytest.approx(1.0)
        if r["pass"] == "fwd+bwd" and r["peak_mb"] not in ("", None):
            assert float(r["peak_mb"]) >= 0


def test_quick_run_writes_tables(tmp_path):
    res = runner.run_benchmarks("quick", "cpu", only=["dist", "entailment"], log=lambda *_: None,
                                sizes={"rowwise": [(64, 64, 8)], "entailment": [(64, 64, 8)]})
    paths = tables.write_results(res, str(tmp_path), "ops_cpu_test", "test")
    with open(paths["csv"]) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == cases.CSV_COLUMNS
        rows = list(reader)
    _check_rows(rows, {"reference", "geoopt", "native"})
    assert {r["pass"] for r in rows} == set(cases.PASSES)
    md = open(paths["md"]).read()
    assert "Machine:" in md and "Load average" in md
    assert "## op `dist`" in md and "## loss `entailment`" in md and "| size | impl |" in md
    data = json.load(open(paths["json"]))
    assert data["machine"]["torch"] == torch.__version__ and "date_utc" in data["machine"]
    assert data["ceilings"]["copy_gbps"] > 0
    if "png" in paths:
        assert os.path.getsize(paths["png"]) > 1000


def test_cli_quick_in_subprocess_workers(tmp_path):
    """`hypkern bench ops --quick` through the CLI with isolated workers (the full run's path)."""
    cmd = [sys.executable, "-c", "import sys; from hypkern.cli import main; sys.exit(main(sys.argv[1:]))",
           "bench", "ops", "--quick", "--device", "cpu", "--only", "half_aperture",
           "--impls", "reference", "--out", str(tmp_path), "--group-timeout", "120", "--no-plot"]
    # the CLI runs a quick suite in-process; the isolated workers are exercised just below
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "ops_cpu_quick.csv")))
    _check_rows(rows, {"reference"})
    res = runner.run_benchmarks("quick", "cpu", only=["half_aperture"], impls=["reference"], isolate=True,
                                log=lambda *_: None, sizes={"rowwise": [(32, 32, 4)]})
    fb = [r for r in res["rows"] if r["pass"] == "fwd+bwd"]
    assert fb and fb[0]["status"] == "ok", fb
    if os.path.exists("/proc/self/clear_refs"):
        assert fb[0]["peak_mb"] is not None and fb[0]["peak_mb"] >= 0


def test_run_worker_returns_the_result_or_a_status():
    """The one subprocess runner (op groups, trainer runs, bench_losses_cpu's children)."""
    assert runner.run_worker("json:dumps", {"a": [1, 2]}) == ('{"a": [1, 2]}', None)
    res, status = runner.run_worker("json:loads", {"a": 1}, capture_stderr=True)
    assert res is None and status.startswith("error: worker exited 1: TypeError"), status
    res, status = runner.run_worker("time:sleep", 60, timeout=1)
    assert res is None and status == "timeout: worker exceeded 1 s"


def test_losses_script_child_runs_through_the_shared_runner():
    from benchmarks import bench_losses_cpu
    r = bench_losses_cpu._spawn("chunked", 64, 8, 1, 1)
    assert r["backend"] == "chunked" and r["B"] == 64 and r["threads"] == 1
    assert r["seconds"] > 0 and r["peak_bytes"] >= 0 and math.isfinite(r["loss"])


def test_targets_are_evaluated_from_rows():
    rows = []
    for impl, ms, mb in (("reference", 100.0, 1000.0), ("chunked", 50.0, 20.0)):
        rows.append(dict(kind="loss", name="lorentz_contrastive", impl=impl, n=8192, m=8192, d=512,
                         status="ok", median_ms=ms, peak_mb=mb, **{"pass": "fwd+bwd"}))
    for impl, ms in (("native", 12.0), ("matmul", 10.0)):
        rows.append(dict(kind="op", name="pairwise_dist", impl=impl, n=64, m=64, d=8, status="ok",
                         median_ms=ms, **{"pass": "fwd"}))
    out = tables.evaluate_targets({"rows": rows, "settings": {"device": "cpu"}})
    by = {t["target"].split(" (")[0]: t for t in out}
    assert by["fused Lorentz contrastive fwd+bwd peak memory <= 5% of reference"]["met"] is True
    assert by["fused Lorentz contrastive fwd+bwd time <= 0.7x reference"]["met"] is True
    assert by["native pairwise_dist fwd <= 1.25x bare matmul"]["met"] is True
    assert by["native pairwise_dist fwd+bwd <= 1.25x bare matmul"]["met"] is None  # not measured


def test_max_batch_model():
    # fused: 100 MiB + 1 MiB per 1024 samples; reference adds q B^2
    fused = [(1024, 101.0), (4096, 104.0)]
    ref = [(1024, 101.0 + 1024 ** 2 * 1e-5), (4096, 104.0 + 4096 ** 2 * 1e-5)]
    out = trainer._max_batch({"fused": fused, "reference": ref}, 200.0)
    assert out["fused"]["max_batch"] == pytest.approx(100 * 1024, rel=1e-3)
    b = out["reference"]["max_batch"]
    assert 100.0 + b / 1024 + 1e-5 * b * b == pytest.approx(200.0, rel=1e-3)
    assert out["reference"]["extrapolated"] is False and out["fused"]["extrapolated"] is True


def test_gpu_suite_dry_run_and_refusal_without_gpu(tmp_path):
    """The GPU suite's Python parts import and render here; without a GPU the real run
    stops at once with a clear message and a non-zero status."""
    script = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", script, str(tmp_path / "dry"), "--dry-run"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dry run OK" in proc.stdout
    assert (tmp_path / "dry" / "gpu_summary_DRYRUN.md").exists()
    if torch.cuda.is_available():
        return
    proc = subprocess.run(["bash", script, str(tmp_path / "real")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode in (2, 3) and "FATAL" in proc.stdout + proc.stderr


def test_cli_parses_what_to_run():
    import argparse
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    cli.register(sub)
    assert p.parse_args(["bench"]).what == []
    assert p.parse_args(["bench", "ops", "trainer", "--quick"]).what == ["ops", "trainer"]
    assert cli.main(["nonsense", "--quick"]) == 2


# ----------------------------------------------------------------------------- `hypkern bench`

def test_hypkern_bench_finds_the_harness_of_a_checkout(tmp_path, monkeypatch, capsys):
    """Outside the checkout: through the checkout this hypkern is imported from, or
    $HYPKERN_BENCH_DIR; inside it: walking up from the current directory. The harness parses
    the arguments (its --help is what `hypkern bench --help` prints)."""
    from hypkern import bench as entry
    from hypkern.cli import main
    cmd = [sys.executable, "-c", "import sys; from hypkern.cli import main; sys.exit(main(sys.argv[1:]))",
           "bench", "--help"]
    env = {k: v for k, v in os.environ.items() if k != "HYPKERN_BENCH_DIR"}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: hypkern bench" in proc.stdout and "--group-timeout" in proc.stdout

    bench_dir = os.path.realpath(os.path.join(ROOT, "benchmarks"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYPKERN_BENCH_DIR", bench_dir)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "ops", "--help"])
    assert exc.value.code == 0 and "usage: hypkern bench" in capsys.readouterr().out
    assert main(["bench", "nonsense", "--quick"]) == 2
    assert "choose ops, trainer or all" in capsys.readouterr().err

    elsewhere = str(tmp_path / "site-packages" / "hypkern" / "bench.py")  # not in a checkout
    for start in (ROOT, os.path.join(ROOT, "docs"), bench_dir):
        assert str(entry.find_benchmarks(environ={}, cwd=start, package_file=elsewhere)) == bench_dir
    for given in (ROOT, bench_dir):  # the checkout or its benchmarks/ folder
        got = entry.find_benchmarks(environ={"HYPKERN_BENCH_DIR": given}, cwd=tmp_path, package_file=elsewhere)
        assert str(got) == bench_dir


def test_hypkern_bench_without_a_checkout_exits_2(tmp_path, monkeypatch, capsys):
    from hypkern import bench as entry
    from hypkern.cli import main
    monkeypatch.chdir(tmp_path)
    # $HYPKERN_BENCH_DIR pointing nowhere is an error, not a hint (nothing else is tried)
    monkeypatch.setenv("HYPKERN_BENCH_DIR", str(tmp_path / "nowhere"))
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "HYPKERN_BENCH_DIR" in err and "nowhere" in err and "source checkout" in err
    # no checkout above the current directory, and this hypkern installed outside one
    monkeypatch.delenv("HYPKERN_BENCH_DIR")
    monkeypatch.setattr(entry, "__file__", str(tmp_path / "site-packages" / "hypkern" / "bench.py"))
    with pytest.raises(entry.HarnessNotFound):
        entry.find_benchmarks()
    assert main(["bench", "ops", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "hypkern bench runs the harness in benchmarks/ of a source checkout: git clone" in err
    assert "&& cd hypkern && hypkern bench" in err


def test_benchmarks_stay_out_of_the_wheel():
    """The wheel's packages are hypkern* only: the harness never ships."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from setuptools import find_packages
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        found = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
    pkgs = find_packages(ROOT, include=found.get("include", ["*"]), exclude=found.get("exclude", ()))
    assert "hypkern" in pkgs and "hypkern.lorentz" in pkgs
    assert not [p for p in pkgs if not p.startswith("hypkern")], pkgs
