"""The unlearning training loop: large batches by gradient caching, mixed precision,
data parallelism, atomic checkpoints and exact resumption.

One step (``t`` = the step index, 0-based):

1. ``StepSampler(t)`` gives the global retain and forget indices; this rank takes its
   contiguous slice of each (``B / world`` rows) and fetches them (the only host work).
2. Embeddings of this rank's rows. *Plain* (``micro_batch_size=None``): encode with grad.
   *Gradient caching* (``micro_batch_size=m``): encode in chunks of ``m`` without grad and
   make the embeddings leaves ``E`` with ``requires_grad``.
3. ``L_r = unlearning_loss(E)``: this rank's share of the global loss (the exact sharded
   contrastive loss: local rows against every rank's texts, so each rank does ``1/world`` of
   the loss work; every other term row-wise over local rows, divided by global counts).
   Backward. Caching: ``G = ∂L/∂E`` for the local rows (the collectives' backward sums over
   ranks), then re-encode each chunk with grad and backprop ``G`` through it —
   ``Σ_chunks (∂e/∂θ)ᵀ G``, the same update as the plain large batch with only ``m`` rows of
   activations alive at a time. (Encoders run in eval mode — no dropout — so the re-encode
   reproduces the first pass.)
4. Sum parameter gradients over ranks (exactly ``∂L/∂θ`` of the global batch), unscale
   (fp16), clip the global norm, optimiser step, MERU's scalar clamps.

No host sync inside a step after the first: argument checks that read tensor values run on
the first step of a run only (``UnlearnConfig.check_values="every_step"`` runs them on every
step), and the logged values (loss terms, gradient norm) stay on the device until the metrics
are flushed every ``log_every`` steps, at checkpoints and at the end, in one transfer. (fp16
training keeps the ``GradScaler``'s one inf check per step; callbacks receive float records,
which costs one transfer per step only when callbacks are given.)

Because sampling is a pure function of ``(seed, t)``, the learning rate a function of ``t``, and
the checkpoint holds the parameters and optimiser state bit-exactly, a run resumed from the
checkpoint after step ``t`` continues exactly as the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from typing import Callable, Sequence

import torch

from . import checkpoint as ckpt
from .config import ConfigError, UnlearnConfig
from .data import ForgetRetain, StepSampler, fetch_batch
from ..checks import value_checks
from .dist import all_reduce_grads, broadcast_module, default_device, local_slice, rank_world
from .objectives import StepEmbeddings, unlearning_loss
from .params import select_trainable

__all__ = ["Trainer", "lr_at", "build_optimizer"]


def lr_at(cfg: UnlearnConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup over ``warmup_steps``, then
    constant / cosine / linear decay from ``lr`` to ``min_lr_ratio · lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    lo = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "cosine":
        f = lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))
    else:
        f = lo + (1 - lo) * (1 - p)
    return cfg.lr * f


def build_optimizer(cfg: UnlearnConfig, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=False)


def _autocast(cfg: UnlearnConfig, device: torch.device):
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _chunks(n: int, m: int | None):
    m = m or max(n, 1)
    return [slice(s, min(n, s + m)) for s in range(0, n, m)]


class Trainer:
    """Runs the unlearning steps on ``model`` in place (see the module docstring)."""

    def __init__(self, model, dataset, split: ForgetRetain, concepts: list[str], cfg: UnlearnConfig,
                 method: str, frozen=None, callbacks: Sequence[Callable] = (), log=None,
                 forget_accuracy: Callable[[], float | None] | None = None):
        self.model, self.dataset, self.split, self.concepts = model, dataset, split, concepts
        self.forget_accuracy = forget_accuracy  # for stop_forget_acc: called on rank 0
        self.cfg, self.method, self.frozen = cfg, method, frozen
        self.callbacks = list(callbacks or ())
        self.rank, self.world = rank_world()
        self.log = log or (lambda msg: print(msg, file=sys.stderr) if self.rank == 0 else None)
        if cfg.parallel == "none" and self.world > 1:
            raise ConfigError("unlearn config field 'parallel': 'none' but torch.distributed runs "
                              f"{self.world} processes")
        if cfg.parallel == "ddp" and self.world == 1 and not (torch.distributed.is_available()
                                                               and torch.distributed.is_initialized()):
            self.log("parallel='ddp' without torch.distributed initialised: running on one process")
        for name, b in (("retain_batch_size", cfg.retain_batch_size), ("forget_batch_size", cfg.forget_batch_size)):
            if b % self.world:
                raise ConfigError(f"unlearn config field '{name}': {b} is not divisible by the "
                                  f"world size {self.world} (it is the global batch)")
        self.device = torch.device(cfg.device) if cfg.device else default_device()
        self.geometry = model.geometry
        self.backends = cfg.check_backend(self.geometry, self.device.type, self.world)  # before step 0
        self.sampler = StepSampler(split, cfg.retain_batch_size, cfg.forget_batch_size, cfg.seed, concepts)
        self.root = os.path.join(cfg.out_dir, "checkpoints") if cfg.out_dir else None
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl") if cfg.out_dir else None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ one step's gradients
    def _encode(self, model, images, tokens, grad: bool):
        outs_i, outs_t = [], []
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            for sl in _chunks(images.shape[0], self.cfg.micro_batch_size):
                with _autocast(self.cfg, self.device):
                    outs_i.append(model.encode_image(images[sl]).float())
                    outs_t.append(model.encode_text(tokens[sl]).float())
        return torch.cat(outs_i), torch.cat(outs_t)

    def _frozen_norms(self, images, tokens, nr):
        if self.frozen is None:
            return (None,) * 4
        img, txt = self._encode(self.frozen, images, tokens, grad=False)
        img_n, txt_n = img.norm(dim=-1), txt.norm(dim=-1)
        return img_n[:nr], txt_n[:nr], img_n[nr:], txt_n[nr:]

    def _fetch(self, step: int):
        """This rank's rows of step ``step``: ``(images, tokens, n_retain_local)`` on the device."""
        r_idx, f_idx, _ = self.sampler(step)
        r_loc = r_idx[local_slice(len(r_idx), self.rank, self.world)]
        f_loc = f_idx[local_slice(len(f_idx), self.rank, self.world)]
        images, tokens = fetch_batch(self.dataset, r_loc + f_loc, self.model, self.device)
        return images, tokens, len(r_loc)

    def _step_grads(self, step: int, batch, scaler) -> dict:
        """Gradients of this rank's share of the step loss (see the module docstring); the
        logged terms of the global batch as device tensors."""
        cfg = self.cfg
        images, tokens, nr = batch
        norms = self._frozen_norms(images, tokens, nr)
        curv = self.model.curv
        loss_kw = dict(geometry=self.geometry, method=self.method, cfg=cfg, logit_scale=self.model.logit_scale,
                       curv=curv, seed=cfg.seed, step=step, distributed=self.world > 1)
        if cfg.micro_batch_size is None:
            img, txt = self._encode(self.model, images, tokens, grad=True)
            emb = StepEmbeddings(img[:nr], txt[:nr], img[nr:], txt[nr:], *norms)
            loss, terms = unlearning_loss(emb, **loss_kw)
            scaler.scale(loss).backward()
            return terms
        # Gradient caching.
        img, txt = self._encode(self.model, images, tokens, grad=False)
        leaves = [t.detach().requires_grad_(True) for t in (img[:nr], txt[:nr], img[nr:], txt[nr:])]
        emb = StepEmbeddings(*leaves, *norms)
        loss, terms = unlearning_loss(emb, **loss_kw)
        scaler.scale(loss).backward()
        g = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        g_img = torch.cat([g[0], g[2]])
        g_txt = torch.cat([g[1], g[3]])
        del leaves, emb, loss, g
        for sl in _chunks(images.shape[0], cfg.micro_batch_size):
            with _autocast(cfg, self.device):
                e_img = self.model.encode_image(images[sl]).float()
                e_txt = self.model.encode_text(tokens[sl]).float()
            torch.autograd.backward([e_img, e_txt], [g_img[sl], g_txt[sl]])
        return terms

    def _train_step(self, step: int, batch, lr: float, opt, params, scaler):
        """One optimiser step on ``batch``; ``(terms, grad_norm)`` as device tensors. No host
        sync here once the value checks are off (fp16's GradScaler aside)."""
        cfg = self.cfg
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        terms = self._step_grads(step, batch, scaler)
        all_reduce_grads(params)
        scaler.unscale_(opt)
        grads = [p.grad for p in params if p.grad is not None]
        if cfg.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            gnorm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads \
                else torch.zeros((), device=self.device)
        scaler.step(opt)
        scaler.update()
        if hasattr(self.model, "clamp_parameters_"):
            self.model.clamp_parameters_()
        return terms, gnorm.detach()

    def _should_stop(self, done: int) -> bool:
        """``stop_forget_acc``: every ``stop_check_every`` steps rank 0 measures the zero-shot
        forget accuracy; at or below the target the run stops (every rank, by a broadcast)."""
        cfg = self.cfg
        if cfg.stop_forget_acc is None or self.forget_accuracy is None or done % cfg.stop_check_every \
                or done == cfg.steps:
            return False
        acc = self.forget_accuracy() if self.rank == 0 else None
        stop = acc is not None and acc <= cfg.stop_forget_acc
        if self.world > 1:
            flag = torch.tensor([1 if stop else 0], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop and self.rank == 0:
            self.log(f"stop: zero-shot forget accuracy {100 * acc:.1f} % <= {100 * cfg.stop_forget_acc:.1f} % "
                     f"after step {done} of {cfg.steps}")
        return stop

    def _flush(self, pending: list[dict], bar) -> None:
        """Bring the pending records' device values to the host in one transfer, append them
        to the history and the metrics file, update the progress bar."""
        if not pending:
            return
        slots = [(i, k) for i, r in enumerate(pending) for k, v in r.items() if isinstance(v, torch.Tensor)]
        if slots:
            values = torch.stack([pending[i][k].reshape(()).float() for i, k in slots]).tolist()
            for (i, k), v in zip(slots, values):
                pending[i][k] = v
        self.history.extend(pending)
        self._write_metrics(pending, "a")
        if bar is not None:
            last = pending[-1]
            bar.set_postfix({k: f"{last[k]:.3g}" for k in ("total", "align", "positive", "entail_cal", "norm_reg")
                             if k in last})
        pending.clear()

    # ------------------------------------------------------------------ the loop
    def _state(self, scaler, fingerprint) -> dict:
        return {"config": self.cfg.to_dict(), "method": self.method, "concepts": self.concepts,
                "history": self.history, "scaler": scaler.state_dict(), "world_size": self.world,
                "fingerprint": fingerprint}

    def _check_resume(self, state: dict, fingerprint) -> None:
        saved = state["config"]
        now = self.cfg.to_dict()
        diff = [k for k in now if k not in UnlearnConfig.RESUME_FREE and saved.get(k) != now[k]]
        if diff:
            raise ConfigError("cannot resume: the checkpoint was written with different settings for "
                              + ", ".join(f"'{k}' ({saved.get(k)!r} -> {now[k]!r})" for k in diff))
        if state["concepts"] != self.concepts or state["method"] != self.method:
            raise ConfigError(f"cannot resume: the checkpoint unlearns {state['concepts']} with "
                              f"{state['method']}, this run {self.concepts} with {self.method}")
        if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6) for a, b in zip(state["fingerprint"], fingerprint)):
            raise ConfigError("cannot resume: the model passed is not the original model the checkpoint "
                              "started from (pass the same --model / weights as the first run)")

    def _write_metrics(self, records: list[dict], mode: str) -> None:
        if self.metrics_path is None or self.rank != 0:
            return
        text = "".join(json.dumps(r) + "\n" for r in records)
        if mode == "w":
            ckpt.atomic_write_text(self.metrics_path, text)
        else:
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(text)

    def run(self) -> list[dict]:
        cfg, model = self.cfg, self.model
        torch.manual_seed(cfg.seed)
        model.to(self.device)
        model.eval()  # deterministic encoders: no dropout (exact gradient caching and resume)
        if self.frozen is not None:
            self.frozen.to(self.device).eval().requires_grad_(False)
        broadcast_module(model)
        fingerprint = ckpt.model_fingerprint(self.frozen if self.frozen is not None else model)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            names = select_trainable(model, cfg.trainable, cfg.last_k, cfg.train_scalars)
            return self._run(model, names, fingerprint)
        finally:  # leave the model's requires_grad flags as they were
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])

    def _run(self, model, names, fingerprint) -> list[dict]:
        cfg = self.cfg
        named = dict(model.named_parameters())
        params = [named[n] for n in names]
        opt = build_optimizer(cfg, params)
        scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        start = 0
        if cfg.out_dir and self.rank == 0:
            os.makedirs(cfg.out_dir, exist_ok=True)
            if self.root and os.path.isdir(self.root):  # leftovers of a killed write
                for d in os.listdir(self.root):
                    if d.startswith(".ckpt-") and ".tmp." in d:
                        shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)
        if cfg.resume:
            path = ckpt.latest_checkpoint(self.root)
            if path is None:
                raise ConfigError(f"unlearn config field 'resume': there is no checkpoint in {self.root} to "
                                  "resume from (a run writes its first one after checkpoint_every steps); "
                                  "drop --resume / resume=True to start a new run there")
            else:
                state = ckpt.load_checkpoint(path, model, opt)
                self._check_resume(state, fingerprint)
                if state["trainable"] != names:
                    raise ConfigError("cannot resume: the checkpoint trains different parameters")
                scaler.load_state_dict(state["scaler"]) if state["scaler"] else None
                self.history = [r for r in state["history"] if r["step"] <= state["step"]]
                start = int(state["step"])
                self.log(f"resume: continuing from {path} (step {start} of {cfg.steps})")
        if self.rank == 0 and self.metrics_path is not None:
            self._write_metrics(self.history, "w")
        n_trained = sum(p.numel() for p in params)
        if self.rank == 0 and start == 0:
            self.log(f"unlearn: {self.method.upper()} on {type(model).__name__} ({self.geometry}), "
                     f"concepts={self.concepts}, {n_trained:,} trained parameters "
                     f"({cfg.trainable}), {cfg.steps} steps, batch {cfg.retain_batch_size} retain + "
                     f"{cfg.forget_batch_size} forget, world {self.world}")
        bar = None
        if cfg.progress and self.rank == 0 and start < cfg.steps:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.steps, initial=start, desc=f"unlearn[{self.method}]", dynamic_ncols=True,
                       file=sys.stderr)
        pending: list[dict] = []  # this run's records not yet on the host (values on the device)
        try:
            for step in range(start, cfg.steps):
                t0 = time.perf_counter()
                lr = lr_at(cfg, step)
                batch = self._fetch(step)
                checks = contextlib.nullcontext() if (step == start or cfg.check_values == "every_step") \
                    else value_checks(False)
                with checks:
                    terms, gnorm = self._train_step(step, batch, lr, opt, params, scaler)
                done = step + 1
                pending.append({"step": done, "lr": lr, "grad_norm": gnorm, **terms,
                                "time_s": round(time.perf_counter() - t0, 4)})
                stop = self._should_stop(done)
                save = self.root and self.rank == 0 and (
                    done == cfg.steps or stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0))
                if done % cfg.log_every == 0 or done == cfg.steps or save or self.callbacks:
                    self._flush(pending, bar)
                if bar is not None:
                    bar.update(1)
                if save:
                    ckpt.save_checkpoint(self.root, done, model, names, opt, self._state(scaler, fingerprint),
                                         keep=cfg.keep_checkpoints)
                for cb in self.callbacks:
                    cb(done, self.history[-1])
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()
        return self.history
