"""The demo-model cache under concurrency: two processes asking for the same entry at once
both get a complete model (one trains, the other waits on the lock and loads it); writes are
atomic (no half-written entry is ever visible)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CODE = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from hypkern.eval.pretrain import PretrainConfig, demo_model
    cfg = PretrainConfig(steps=4, batch_size=16, n_per_class=4, patch_size=8)
    m = demo_model("clip", 0, config=cfg, cache_dir=sys.argv[1], progress=False, log=lambda s: print(s, flush=True))
    print("OK", sum(p.numel() for p in m.parameters()))
""")


def test_two_processes_share_the_cache_safely(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", CODE, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "OK" in out, out
    text = "\n".join(o for o, _ in outs)
    assert text.count("cached it in") == 1, text           # one process trained and wrote it
    assert text.count("loaded pretrained tiny CLIP") == 1, text  # the other waited and loaded it
    entries = os.listdir(tmp_path / "demo_models")
    assert not [e for e in entries if ".tmp." in e or ".old." in e], entries  # nothing half-written left
