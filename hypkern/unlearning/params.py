"""Which parameters an unlearning run trains (config fields ``trainable``, ``last_k``,
``train_scalars``).

* ``all``: every parameter except the scalars (logit scale, curvature, MERU's alphas).
* ``projections``: the towers' output projections (parameters outside the transformer blocks
  whose name contains ``proj``, e.g. MERU's ``visual_proj``/``textual_proj``, open_clip's
  ``visual.proj``/``text_projection``; not the input embeddings such as ``patch_embed.proj``)
  and the final layer norms (``norm``, ``ln_final``, ...).
* Parameters the model already keeps frozen (``requires_grad=False``, e.g. MERU's fixed
  position embedding) stay frozen.
* ``last_blocks``: the last ``last_k`` blocks of every block stack plus everything
  ``projections`` trains.

A model may override the heuristics by defining ``unlearn_parameter_groups() ->
{"scalars": [names], "projections": [names], "blocks": [[names per block], ...]}``.
Block stacks are found as ``nn.ModuleList``/``nn.Sequential`` containers whose children are all
of one class, composite (they have submodules) and hold parameters.
"""
from __future__ import annotations

from torch import nn

__all__ = ["select_trainable", "SCALAR_HINTS"]

#: Substrings of parameter names treated as scalars (frozen unless ``train_scalars``).
SCALAR_HINTS = ("logit_scale", "curv", "visual_alpha", "textual_alpha", "image_alpha", "text_alpha")
#: Last module-name components of final layer norms (outside the block stacks).
_FINAL_NORMS = ("norm", "ln_post", "ln_final", "final_norm", "post_layernorm", "fc_norm")


def _block_stacks(model: nn.Module) -> list[list[str]]:
    """Prefixes of the blocks of each stack (outermost stacks only), in order."""
    stacks: list[list[str]] = []
    taken: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            kids = list(mod.named_children())
            if kids and len({type(m) for _, m in kids}) == 1 \
                    and all(any(True for _ in m.children()) and any(True for _ in m.parameters())
                            for _, m in kids):
                stacks.append([f"{name}.{k}" if name else k for k, _ in kids])
                taken.append(name)
    return stacks


def _module_of(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else ""


def _is_scalar(name: str, p) -> bool:
    return p.numel() == 1 and any(h in name for h in SCALAR_HINTS)


def select_trainable(model: nn.Module, trainable: str = "all", last_k: int = 2,
                     train_scalars: bool = False) -> list[str]:
    """Set ``requires_grad`` per the config and return the trained parameter names (sorted as
    in ``named_parameters``). Raises ``ValueError`` if the choice selects nothing."""
    named = dict(model.named_parameters())
    groups = getattr(model, "unlearn_parameter_groups", None)
    if callable(groups):
        g = groups()
        scalars = set(g.get("scalars", []))
        projections = set(g.get("projections", []))
        blocks = [set(b) for b in g.get("blocks", [])]
        stacks = [blocks] if blocks else []
    else:
        scalars = {n for n, p in named.items() if _is_scalar(n, p)}
        block_prefixes = _block_stacks(model)
        in_block = lambda n: any(n.startswith(b + ".") for s in block_prefixes for b in s)  # noqa: E731
        projections = {n for n in named if not in_block(n) and n not in scalars and "embed" not in n
                       and ("proj" in n.lower() or _module_of(n) in _FINAL_NORMS)}
        stacks = [[{n for n in named if n.startswith(b + ".")} for b in s] for s in block_prefixes]
    # Parameters the model itself keeps frozen (e.g. MERU's fixed sin-cos position embedding)
    # stay frozen, unless the whole model came frozen (then everything is a candidate).
    if any(p.requires_grad for p in named.values()):
        frozen = {n for n, p in named.items() if not p.requires_grad}
    else:
        frozen = set()
    if trainable == "all":
        chosen = {n for n in named if n not in scalars}
    elif trainable == "projections":
        chosen = set(projections)
    elif trainable == "last_blocks":
        chosen = set(projections)
        for stack in stacks:
            for block in stack[-last_k:]:
                chosen |= block
    else:
        raise ValueError(f"trainable must be all, last_blocks or projections, got {trainable!r}")
    chosen -= frozen
    if train_scalars:
        chosen |= scalars - frozen
    if not chosen:
        raise ValueError(f"trainable={trainable!r} selects no parameter of {type(model).__name__}")
    for n, p in named.items():
        p.requires_grad_(n in chosen)
    return [n for n in named if n in chosen]
