"""The distributed contrastive loss (2 gloo processes on 127.0.0.1) equals the single-process
loss on the concatenated batch, value and every gradient (features, logit scale, curvature)."""
from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(kind: str, case: str):
    """The global batch (same on every rank) and each rank's row ranges."""
    g = torch.Generator().manual_seed(3)
    if case == "diag":
        n, m = 10, 10
        rows, cols = [(0, 5), (5, 10)], [(0, 5), (5, 10)]
        targets = weights = None
    else:  # uneven split, other positives, weights, N != M
        n, m = 9, 7
        rows, cols = [(0, 4), (4, 9)], [(0, 5), (5, 7)]
        targets = torch.randint(0, m, (n,), generator=g)
        weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        weights[2] = 0.0
    image = torch.randn(n, 6, generator=g, dtype=torch.float64) * 0.6
    text = torch.randn(m, 6, generator=g, dtype=torch.float64) * 0.6
    return image, text, targets, weights, rows, cols


def _loss(kind, image, text, s, c, targets, weights, **kw):
    import hypkern.losses as L
    if kind == "lorentz":
        return L.lorentz_contrastive_loss(image, text, s, c, targets, weights, **kw)
    return L.clip_contrastive_loss(image, text, s, targets, weights, **kw)


def _worker(rank: int, port: int, out_dir: str):
    try:
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
        for kind in ("lorentz", "cosine"):
            for case in ("diag", "targets"):
                for scale in (True, False):
                    _check(rank, kind, case, scale, "chunked")
        if os.environ.get("TRITON_INTERPRET") == "1":  # the Triton kernels behind the same hooks
            _check(rank, "lorentz", "targets", True, "triton")
            _check(rank, "cosine", "diag", False, "triton")
        open(os.path.join(out_dir, f"ok{rank}"), "w").close()
    except Exception:  # report to the parent, which fails the test
        with open(os.path.join(out_dir, f"err{rank}"), "w") as f:
            f.write(traceback.format_exc())
    finally:  # a process that exits with gloo's threads alive aborts and hides the error
        if dist.is_initialized():
            dist.destroy_process_group()


def _check(rank, kind, case, grad_world_scale, backend):
    image, text, targets, weights, rows, cols = _batch(kind, case)
    # Single process: the whole batch.
    x = image.clone().requires_grad_(True)
    y = text.clone().requires_grad_(True)
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    full = _loss(kind, x, y, s, c, targets, weights, backend="chunked")
    wrt = [x, y, s] + ([c] if kind == "lorentz" else [])
    ref_grads = torch.autograd.grad(full, wrt)
    # This rank's rows.
    (r0, r1), (c0, c1) = rows[rank], cols[rank]
    xl = image[r0:r1].clone().requires_grad_(True)
    yl = text[c0:c1].clone().requires_grad_(True)
    sl = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    cl = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    tl = None if targets is None else targets[r0:r1]
    wl = None if weights is None else weights[r0:r1]
    loss = _loss(kind, xl, yl, sl, cl, tl, wl, backend=backend, distributed=True, blocks=(3, 4),
                 grad_world_scale=grad_world_scale)
    loss.backward()
    what = f"{backend}/{kind}/{case}/scale={grad_world_scale}"
    torch.testing.assert_close(loss.detach(), full.detach(), atol=1e-12, rtol=1e-12, msg=lambda m: f"{what} loss: {m}")
    k = WORLD if grad_world_scale else 1
    torch.testing.assert_close(xl.grad / k, ref_grads[0][r0:r1], atol=1e-12, rtol=1e-10,
                               msg=lambda m: f"{what} d image: {m}")
    torch.testing.assert_close(yl.grad / k, ref_grads[1][c0:c1], atol=1e-12, rtol=1e-10,
                               msg=lambda m: f"{what} d text: {m}")
    # Replicated scalars: DDP averages (scaled convention) or the caller sums.
    for got, want, name in ((sl, ref_grads[2], "logit_scale"),) + (((cl, ref_grads[3], "curv"),) if kind == "lorentz" else ()):
        gsum = got.grad.clone()
        dist.all_reduce(gsum)
        torch.testing.assert_close(gsum / k, want, atol=1e-12, rtol=1e-10, msg=lambda m: f"{what} d {name}: {m}")


@pytest.mark.distributed
def test_distributed_loss_matches_single_process(tmp_path):
    port = _free_port()
    try:
        mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    finally:  # whatever happened, show what each rank reported
        errors = [p.read_text() for p in sorted(tmp_path.glob("err*"))]
        if errors:
            print("\n".join(errors))
    assert not errors, "\n".join(errors)
    assert sorted(p.name for p in tmp_path.glob("ok*")) == [f"ok{r}" for r in range(WORLD)]


@pytest.mark.distributed
def test_gather_with_grad_single_process_is_identity():
    from hypkern.distributed import gather_with_grad
    t = torch.randn(3, 2)
    assert gather_with_grad(t) is t
