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


# ------------------------------------------------------------------ sharded loss work per rank

def _probe_worker(rank: int, world: int, port: int, jobs: list) -> None:
    """One rank: unlearn with a probe on the chunked contrastive kernel (rows and columns
    of every call) and a callback that keeps the first step's summed gradients."""
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for geometry, config, out_path in jobs:
            torch.save(_probed_run(geometry, config), f"{out_path}.rank{rank}")
    finally:
        tdist.destroy_process_group()


def _probed_run(geometry: str, config: dict) -> dict:
    from hypkern.kernels import chunked
    calls, grads = [], {}
    real = chunked.contrastive_fwd

    def probe(kind, x, y, *args):
        calls.append((int(x.shape[0]), int(y.shape[0])))
        return real(kind, x, y, *args)

    model = toy_model(geometry, seed=0)

    def keep_grads(done, record):
        if done == 1:
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    chunked.contrastive_fwd = probe
    try:
        res = unlearn(model, ["dog"], toy_pairs(8, seed=0), callbacks=[keep_grads], **config)
    finally:
        chunked.contrastive_fwd = real
    return {"calls": calls, "grads": grads, "history": res.history}


@pytest.mark.distributed
def test_two_ranks_each_compute_half_the_rows_with_equal_loss_and_gradients(tmp_path):
    """Each rank's contrastive kernel sees B/W image rows against all B texts; the logged loss
    terms and every parameter gradient of a step equal the one-process run on the whole batch."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = {**BASE, "steps": 2, "backend": "native,chunked", "train_scalars": True}
    jobs = [(g, {**cfg, **extra}, str(tmp_path / g)) for g, extra in CASES.items()]
    mp.spawn(_probe_worker, args=(2, _free_port(), jobs), nprocs=2, join=True)
    rows = cfg["retain_batch_size"] + cfg["forget_batch_size"]
    for geometry, config, out in jobs:
        single = _probed_run(geometry, {**config, "parallel": "auto"})
        assert single["calls"] == [(rows, rows)] * config["steps"], single["calls"]
        for rank in range(2):
            got = torch.load(f"{out}.rank{rank}", weights_only=True)
            assert got["calls"] == [(rows // 2, rows)] * config["steps"], (geometry, rank, got["calls"])
            for a, b in zip(got["history"], single["history"]):
                for k in ("total", "align", "retain_ce", "forget_ce", "positive", "entail_cal", "retain_entail",
                          "norm_reg", "grad_norm"):
                    if k in b:
                        assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (geometry, rank, k, a[k], b[k])
            assert set(got["grads"]) == set(single["grads"]) and single["grads"]
            for n, g in single["grads"].items():  # fp32: the sums run in another order
                scale = max(1e-3, float(g.abs().max()))
                torch.testing.assert_close(got["grads"][n], g, atol=2e-5 * scale, rtol=1e-3,
                                           msg=lambda m: f"{geometry} rank {rank} d/d{n}: {m}")
        assert "logit_scale" in single["grads"] and (geometry != "lorentz" or "curv" in single["grads"])
