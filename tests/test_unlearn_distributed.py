"""Two gloo processes on 127.0.0.1 end with the same weights as one process with the same
global batch (contrastive terms over the gathered batch, summed gradients)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from hypkern.unlearning import unlearn
from hypkern.unlearning.toy import distributed_worker, toy_model, toy_pairs

torch.set_num_threads(1)

BASE = dict(steps=3, lr=0.3, optimizer="sgd", momentum=0.0, grad_clip=None, schedule="constant",
            retain_batch_size=12, forget_batch_size=6, progress=False, eval=False, seed=2, parallel="ddp")
CASES = {
    "lorentz": dict(micro_batch_size=2),  # HAC, gradient caching inside each rank
    "euclidean": dict(),                  # AC, plain encode with gather-with-grad
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_match_one_process(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = [(g, {**BASE, **extra}, str(tmp_path / f"{g}.safetensors")) for g, extra in CASES.items()]
    # One spawn for both cases: process start-up dominates the cost.
    mp.spawn(distributed_worker, args=(2, _free_port(), jobs), nprocs=2, join=True)
    for geometry, config, out in jobs:
        two = load_file(out)
        single = unlearn(toy_model(geometry, seed=0), ["dog"], toy_pairs(8, seed=0),
                         **{**config, "parallel": "auto"}).model.state_dict()
        start = toy_model(geometry, seed=0).state_dict()
        assert set(two) == set(single)
        moved = 0.0
        for name, w in single.items():
            torch.testing.assert_close(two[name], w, atol=2e-5, rtol=1e-4, msg=lambda m: f"{geometry} {name}: {m}")
            if w.is_floating_point():
                moved = max(moved, float((w - start[name]).abs().max()))
        assert moved > 1e-3, f"{geometry}: the runs did not train"
