"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from hypkern.unlearning import ConfigError, unlearn
from hypkern.unlearning.toy import toy_model, toy_pairs

torch.set_num_threads(1)

CONFIG = dict(steps=7, lr=1e-3, retain_batch_size=12, forget_batch_size=6, checkpoint_every=2,
              progress=False, eval=False, seed=4, micro_batch_size=6)

#: The child run: SIGKILLs itself right after step 5 (checkpoint at step 4 is the last one).
CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from hypkern.unlearning import unlearn
    from hypkern.unlearning.toy import toy_model, toy_pairs
    cfg = {config}
    def kill(step, record):
        if step == 5:
            os.kill(os.getpid(), signal.SIGKILL)
    unlearn(toy_model("lorentz", seed=0), ["dog", "cat"], toy_pairs(6, seed=0), out_dir=sys.argv[1],
            callbacks=[kill], **cfg)
    print("not killed")
""")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    # the child runs one thread; so must both halves here (a thread count another test left
    # behind changes the rounding of the reductions, not the maths)
    torch.set_num_threads(1)
    out = tmp_path / "run"
    # the child must import the very hypkern this process runs (installed or source tree), so
    # both halves of the run use the same kernels
    import hypkern
    root = os.path.dirname(os.path.dirname(os.path.abspath(hypkern.__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path, before PYTHONPATH
    proc = subprocess.run([sys.executable, "-c", CHILD.format(config=repr(CONFIG)), str(out)], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 4  # killed after step 5, before the step-6 checkpoint
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # steps 1..5 were logged before the kill

    resumed = unlearn(toy_model("lorentz", seed=0), ["dog", "cat"], toy_pairs(6, seed=0), out_dir=str(out),
                      resume=True, **CONFIG)
    straight = unlearn(toy_model("lorentz", seed=0), ["dog", "cat"], toy_pairs(6, seed=0), **CONFIG)
    start = toy_model("lorentz", seed=0)
    assert [r["step"] for r in resumed.history] == list(range(1, 8))
    for a, b in zip(resumed.history, straight.history):
        assert a["total"] == pytest.approx(b["total"], rel=1e-6, abs=1e-7)
    moved = 0.0
    for (name, p), q, s in zip(resumed.model.named_parameters(), straight.model.parameters(), start.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")
        moved = max(moved, float((q - s).detach().abs().max()))
    assert moved > 1e-4
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # the log was rewritten from the checkpoint, no duplicates
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 7


def test_resume_refuses_other_settings_or_model(tmp_path):
    out = str(tmp_path / "run")
    cfg = {**CONFIG, "steps": 2, "micro_batch_size": None}
    unlearn(toy_model("lorentz", seed=0), ["dog"], toy_pairs(4, seed=0), out_dir=out, **cfg)
    with pytest.raises(ConfigError, match="'alpha'"):
        unlearn(toy_model("lorentz", seed=0), ["dog"], toy_pairs(4, seed=0), out_dir=out, resume=True,
                **{**cfg, "alpha": 0.3})
    with pytest.raises(ConfigError, match="original model"):
        unlearn(toy_model("lorentz", seed=1), ["dog"], toy_pairs(4, seed=0), out_dir=out, resume=True, **cfg)
    # A leftover temporary directory of a killed checkpoint write is ignored and cleaned up.
    junk = tmp_path / "run" / "checkpoints" / ".ckpt-00000009.tmp.12345"
    junk.mkdir()
    res = unlearn(toy_model("lorentz", seed=0), ["dog"], toy_pairs(4, seed=0), out_dir=out, resume=True, **cfg)
    assert len(res.history) == 2 and not junk.exists()
