"""``UnlearnConfig``: every weight, margin, schedule and run setting of an unlearning run.

One dataclass, validated on construction (a bad field name or value raises ``ConfigError``
naming the field), loadable from YAML or JSON (``UnlearnConfig.from_file``) and mergeable with
keyword overrides (``UnlearnConfig.from_any(file_or_dict, **overrides)``). The defaults are the
ones documented in ``docs/readme_unlearn.md``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

__all__ = ["UnlearnConfig", "ConfigError", "METHODS", "TRAINABLE", "OPTIMIZERS", "SCHEDULES",
           "PRECISIONS", "POSITIVE_BOUNDS", "PARALLEL", "CHECK_VALUES"]

METHODS = ("auto", "ac", "hac")
TRAINABLE = ("all", "last_blocks", "projections")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "bf16", "fp16")
POSITIVE_BOUNDS = ("hinge", "softplus")
PARALLEL = ("auto", "none", "ddp")
CHECK_VALUES = ("first_step", "every_step")


class ConfigError(ValueError):
    """An unlearning config field has an unknown name or an invalid value."""


@dataclass
class UnlearnConfig:
    """Settings of one unlearning run (see ``docs/readme_unlearn.md`` for the maths).

    Objective (DESIGN.md §3), total loss per step::

        L = CE_w(retain ∪ forget→mismatched; weights 1 / alpha)      # retain alignment + neg. cal.
          + beta  * P(img_f, txt_f)                                   # positive calibration
          + gamma * mean relu(aper(txt_f) - angle(txt_f, img_f) + m)  # entailment calibration (HAC)
          + retain_entail_weight * mean relu(angle(txt_r, img_r) - aper(txt_r))   # (HAC)
          + delta * mean (|x| - |x_frozen|)^2                         # norm regularisation (HAC)

    with ``P = mean cos`` for CLIP and, on MERU, ``mean relu(t - d_L)`` (``hinge``, target ``t``)
    or ``mean softplus(s * (-d_L))`` (``softplus``, ``s`` the detached logit scale).
    """

    # --- method and objective weights -------------------------------------------------
    method: str = "auto"              # auto (hac for lorentz, ac for euclidean) | ac | hac
    alpha: float = 1.0                # negative calibration weight in the contrastive mean
    beta: float = 1.0                 # positive calibration weight
    positive_bound: str = "hinge"     # MERU only: hinge | softplus
    positive_target: float | None = None  # hinge target distance; None = mean mismatched-pair
    #                                       distance of the current retain batch (detached)
    gamma: float = 1.0                # entailment calibration weight (HAC)
    gamma_margin: float = 0.1         # m, radians: how far outside the cone the image must go
    delta: float = 1.0                # norm regularisation weight (HAC)
    retain_entail_weight: float = 0.2  # MERU's entailment loss on retain pairs (HAC)
    min_radius: float = 0.1           # K of the entailment cone half-aperture
    norm_reg_on: str = "all"          # all | retain: which embeddings the norm term anchors

    # --- what trains ------------------------------------------------------------------
    trainable: str = "all"            # all | last_blocks | projections
    last_k: int = 2                   # with trainable=last_blocks: last k blocks per tower
    train_scalars: bool = False       # also train logit scale, curvature, MERU's alphas

    # --- optimisation -----------------------------------------------------------------
    optimizer: str = "adamw"          # adamw | adam | sgd
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.98)        # adam(w)
    momentum: float = 0.9             # sgd
    schedule: str = "cosine"          # constant | cosine | linear (decay to min_lr_ratio * lr)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    steps: int = 100
    grad_clip: float | None = 1.0     # max global grad norm; None = off

    # --- batches, precision, parallelism ----------------------------------------------
    retain_batch_size: int = 64       # global (all ranks together)
    forget_batch_size: int = 32       # global, balanced across concepts
    micro_batch_size: int | None = None  # per-rank encoder chunk for gradient caching; None = off
    precision: str = "fp32"           # fp32 | bf16 | fp16 (encoders; geometry is always fp32)
    parallel: str = "auto"            # auto (ddp when torch.distributed is initialised) | none | ddp
    device: str | None = None         # None = cuda:LOCAL_RANK if available, else cpu
    backend: str | None = None        # kernel backend (or comma list) for every op and loss; None = default
    check_values: str = "first_step"  # first_step | every_step: argument checks that read tensor values
    seed: int = 0

    # --- bookkeeping ------------------------------------------------------------------
    out_dir: str | None = None        # checkpoints, metrics.jsonl, summary; None = none written
    checkpoint_every: int = 50        # steps between checkpoints (needs out_dir); 0 = only at end
    keep_checkpoints: int = 1         # how many checkpoints to keep
    resume: bool = False              # continue from out_dir's latest checkpoint
    log_every: int = 10               # steps between metrics flushes (one host transfer) / progress postfix
    progress: bool = True             # tqdm progress bar (rank 0)
    eval: bool = True                 # before/after zero-shot accuracy
    eval_batch_size: int = 128
    eval_max_per_class: int | None = 200  # cap on images per class for the zero-shot eval
    stop_forget_acc: float | None = None  # stop once zero-shot forget accuracy <= this (0..1); None = run all steps
    stop_check_every: int = 10        # steps between those checks (each is a zero-shot evaluation)

    # ------------------------------------------------------------------------------------
    def __post_init__(self):
        self.validate()

    def validate(self) -> "UnlearnConfig":
        def bad(name, why):
            raise ConfigError(f"unlearn config field '{name}': {why} (got {getattr(self, name)!r})")

        def choice(name, options):
            if getattr(self, name) not in options:
                bad(name, f"must be one of {', '.join(map(str, options))}")

        def number(name, lo=None, lo_open=False, integer=False, optional=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                bad(name, "must be a number" + (" or null" if optional else ""))
            if integer and int(v) != v:
                bad(name, "must be an integer")
            if not math.isfinite(v):
                bad(name, "must be finite")
            if lo is not None and (v <= lo if lo_open else v < lo):
                bad(name, f"must be {'>' if lo_open else '>='} {lo}")
            if integer:
                setattr(self, name, int(v))

        choice("method", METHODS)
        choice("positive_bound", POSITIVE_BOUNDS)
        choice("norm_reg_on", ("all", "retain"))
        choice("trainable", TRAINABLE)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("precision", PRECISIONS)
        if self.parallel == "fsdp":
            bad("parallel", "'fsdp' is not offered: the trainer shards the loss work over ranks (ddp) and "
                "the models it targets fit on one device; use 'ddp' or 'none'")
        choice("parallel", PARALLEL)
        choice("check_values", CHECK_VALUES)
        for name in ("alpha", "beta", "gamma", "gamma_margin", "delta", "retain_entail_weight",
                     "weight_decay", "momentum", "min_lr_ratio"):
            number(name, lo=0.0)
        number("min_radius", lo=0.0, lo_open=True)
        number("positive_target", lo=0.0, optional=True)
        number("lr", lo=0.0, lo_open=True)
        number("grad_clip", lo=0.0, lo_open=True, optional=True)
        number("last_k", lo=1, integer=True)
        number("warmup_steps", lo=0, integer=True)
        number("steps", lo=1, integer=True)
        number("retain_batch_size", lo=1, integer=True)
        number("forget_batch_size", lo=1, integer=True)
        number("micro_batch_size", lo=1, integer=True, optional=True)
        number("checkpoint_every", lo=0, integer=True)
        number("keep_checkpoints", lo=1, integer=True)
        number("log_every", lo=1, integer=True)
        number("eval_batch_size", lo=1, integer=True)
        number("eval_max_per_class", lo=1, integer=True, optional=True)
        number("stop_forget_acc", lo=0.0, optional=True)
        number("stop_check_every", lo=1, integer=True)
        if self.stop_forget_acc is not None and self.stop_forget_acc > 1:
            bad("stop_forget_acc", "must be a share in [0, 1] (0.05 = 5 %)")
        number("seed", lo=0, integer=True)
        if self.min_lr_ratio > 1:
            bad("min_lr_ratio", "must be <= 1")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            bad("betas", "must be two numbers in [0, 1)")
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("train_scalars", "resume", "progress", "eval"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")
        for name in ("device", "backend", "out_dir"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                bad(name, "must be a string or null")
        if self.backend is not None:
            from ..kernels import registry
            try:
                registry.parse_backend(self.backend)
            except (TypeError, ValueError) as exc:
                bad("backend", str(exc))
        if self.resume and not self.out_dir:
            bad("resume", "resume=True needs out_dir (where the checkpoints are)")
        return self

    # --- construction -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "UnlearnConfig":
        """Build from a mapping; unknown keys raise ``ConfigError`` naming them."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"unlearn config must be a mapping of field -> value, got {type(values).__name__}")
        known = set(cls.field_names())
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            import difflib
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), sorted(known), n=1)
                hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise ConfigError(f"unknown unlearn config field(s): {', '.join(hints)}; "
                              f"valid fields: {', '.join(sorted(known))}")
        return cls(**dict(values))

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "UnlearnConfig":
        """Load a ``.yaml``/``.yml`` or ``.json`` file (a flat mapping of fields); ``overrides``
        win over the file."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ConfigError(f"unlearn config file not found: {path}")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if path.endswith((".yaml", ".yml")):
            import yaml
            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise ConfigError(f"unlearn config file {path}{where}: not valid YAML: {problem}") from None
        elif path.endswith(".json"):
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"unlearn config file {path} (line {exc.lineno}, column {exc.colno}): "
                                  f"not valid JSON: {exc.msg}") from None
        else:
            raise ConfigError(f"unlearn config file must end in .yaml, .yml or .json: {path}")
        if isinstance(values, Mapping) and "unlearn" in values and isinstance(values["unlearn"], Mapping):
            values = values["unlearn"]  # allow a top-level `unlearn:` section
        try:  # the file's own values are checked even where an override replaces them
            cls.from_dict(dict(values))
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {path})") from None
        return cls.from_dict({**dict(values), **overrides})

    @classmethod
    def from_any(cls, config=None, **overrides) -> "UnlearnConfig":
        """``config`` may be None, an ``UnlearnConfig``, a mapping or a file path."""
        if config is None:
            return cls.from_dict(overrides)
        if isinstance(config, UnlearnConfig):
            return cls.from_dict({**config.to_dict(), **overrides})
        if isinstance(config, Mapping):
            return cls.from_dict({**dict(config), **overrides})
        if isinstance(config, (str, os.PathLike)):
            return cls.from_file(config, **overrides)
        raise ConfigError(f"config must be a path, a mapping or an UnlearnConfig, got {type(config).__name__}")

    def replace(self, **changes) -> "UnlearnConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def resolved_method(self, geometry: str) -> str:
        """``auto`` -> ``hac`` for Lorentz models, ``ac`` for Euclidean ones; ``hac`` on a
        Euclidean model is an error."""
        from ..geometry import geometry_of
        geom = geometry_of(geometry)
        if self.method == "auto":
            return geom.default_method
        if self.method == "hac" and not geom.has_cones:
            raise ConfigError("unlearn config field 'method': 'hac' needs a Lorentz (MERU) model; "
                              f"this model's geometry is {geometry!r}, use 'ac'")
        return self.method

    #: Fields that may differ between a run and its resumption (they do not change the maths).
    RESUME_FREE = ("resume", "progress", "log_every", "checkpoint_every", "keep_checkpoints",
                   "out_dir", "eval", "eval_batch_size", "eval_max_per_class", "device", "check_values",
                   "stop_forget_acc", "stop_check_every")

    def check_backend(self, geometry: str, device_type: str, world: int = 1) -> dict[str, str]:
        """Resolve the backend of every op and loss a run on ``geometry`` needs, now (before
        step 0): ``{op: backend}``, or a ``ConfigError`` naming the field and what can run.
        On several ranks the contrastive loss must be a fused one (the sharded loss)."""
        from ..geometry import geometry_of
        from ..kernels import registry
        geom = geometry_of(geometry)
        try:
            chosen = registry.check_backend_for(geom.run_ops, self.backend, device_type)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"unlearn config field 'backend': {exc}") from None
        loss = geom.contrastive_op
        if world > 1 and chosen[loss] == "reference":
            raise ConfigError(f"unlearn config field 'backend': {self.backend!r} runs {loss} on 'reference', "
                              f"which needs every row on one process; with {world} ranks the sharded loss "
                              "runs on a fused backend (chunked or triton), e.g. backend='chunked'")
        return chosen
