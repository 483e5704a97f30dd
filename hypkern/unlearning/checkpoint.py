"""Atomic checkpoints of an unlearning run (rank 0 writes, every rank reads).

Layout under ``<out_dir>/checkpoints/``::

    ckpt-00000040/trainable.safetensors   the trained parameters (others never change)
    ckpt-00000040/optimizer.safetensors   optimiser state tensors, keys "<param name>/<state key>"
    ckpt-00000040/rng.safetensors         torch CPU (and CUDA) RNG state as uint8 tensors
    ckpt-00000040/state.json              step, config, history, param groups, scaler, fingerprint
    latest.json                           {"step": 40, "dir": "ckpt-00000040"}

A checkpoint directory is written under a temporary name, fsynced, then renamed; ``latest.json``
is replaced (``os.replace``) only after that, so a kill at any moment leaves the previous
checkpoint intact and pointed to. Nothing is unpickled on load (safetensors + JSON).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "model_fingerprint",
           "atomic_write_text"]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def model_fingerprint(model: torch.nn.Module) -> list[float]:
    """A cheap fingerprint of the *original* weights (sum and sum of squares, float64), checked
    on resume so a run does not continue from a different starting model."""
    s = torch.zeros((), dtype=torch.float64)
    q = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            d = p.detach().to("cpu", torch.float64)
            s += d.sum()
            q += (d * d).sum()
    return [float(s), float(q)]


def _optimizer_to_flat(opt: torch.optim.Optimizer, names: list[str]) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, extras = {}, {}
    for idx, st in sd["state"].items():
        name = names[int(idx)]
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}/{k}"] = v.detach().to("cpu").contiguous()
            else:
                extras[f"{name}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"extras": extras, "param_groups": groups}


def _optimizer_from_flat(opt: torch.optim.Optimizer, names: list[str], tensors: dict, meta: dict) -> None:
    index = {n: i for i, n in enumerate(names)}
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        name, k = key.rsplit("/", 1)
        state.setdefault(index[name], {})[k] = v
    for key, v in meta["extras"].items():
        name, k = key.rsplit("/", 1)
        state.setdefault(index[name], {})[k] = v
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(root: str, step: int, model: torch.nn.Module, trainable: list[str],
                    opt: torch.optim.Optimizer, state: dict[str, Any], keep: int = 1) -> str:
    """Write checkpoint ``step`` (the number of completed steps) atomically; prune old ones."""
    os.makedirs(root, exist_ok=True)
    name = f"ckpt-{step:08d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".{name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    params = dict(model.named_parameters())
    save_file({n: params[n].detach().to("cpu").contiguous() for n in trainable},
              os.path.join(tmp, "trainable.safetensors"))
    opt_tensors, opt_meta = _optimizer_to_flat(opt, trainable)
    save_file(opt_tensors, os.path.join(tmp, "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, os.path.join(tmp, "rng.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as fh:
        json.dump({**state, "step": step, "trainable": trainable, "optimizer": opt_meta}, fh)
    for f in os.listdir(tmp):
        _fsync_file(os.path.join(tmp, f))
    _fsync_dir(tmp)
    if os.path.exists(final):  # a checkpoint never pointed to (a kill before latest.json moved)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_text(os.path.join(root, "latest.json"), json.dumps({"step": step, "dir": name}))
    ckpts = sorted(d for d in os.listdir(root) if d.startswith("ckpt-"))
    for old in ckpts[:-keep]:
        if old != name:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def latest_checkpoint(root: str) -> str | None:
    """The directory ``latest.json`` points to, or None."""
    ptr = os.path.join(root, "latest.json")
    if not os.path.isfile(ptr):
        return None
    with open(ptr, encoding="utf-8") as fh:
        d = json.load(fh)
    path = os.path.join(root, d["dir"])
    return path if os.path.isdir(path) else None


def load_checkpoint(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Load parameters, optimiser state and RNG state from ``path``; returns ``state.json``."""
    with open(os.path.join(path, "state.json"), encoding="utf-8") as fh:
        state = json.load(fh)
    params = dict(model.named_parameters())
    saved = load_file(os.path.join(path, "trainable.safetensors"))
    missing = [n for n in state["trainable"] if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {path} has parameters the model lacks: {missing[:5]}")
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    opt_tensors = load_file(os.path.join(path, "optimizer.safetensors"))
    dev = next(iter(params.values())).device
    opt_tensors = {k: (v if k.endswith("/step") else v.to(dev)) for k, v in opt_tensors.items()}
    _optimizer_from_flat(opt, state["trainable"], opt_tensors, state["optimizer"])
    rng = load_file(os.path.join(path, "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return state
