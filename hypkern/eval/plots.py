"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["plot_similarity", "plot_origin_distance", "plot_accuracy_rows"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _order(classnames: Sequence[str], forget: Sequence[str]) -> list[int]:
    """Forget classes first, then the retain classes, each in class order."""
    f = [i for i, c in enumerate(classnames) if c in forget]
    return f + [i for i in range(len(classnames)) if i not in f]


def plot_similarity(matrices: dict[str, list[list[float]]], classnames: Sequence[str],
                    forget: Sequence[str], path: str, title: str = "") -> str:
    """Side-by-side heat maps of class-level image-text similarity (rows: images of a class,
    columns: class texts), forget classes first and framed in red. ``matrices``: panel name ->
    (K, K) nested list (e.g. ``{"before": ..., "after": ...}``)."""
    plt = _plt()
    order = _order(classnames, forget)
    names = [classnames[i] for i in order]
    nf = sum(1 for c in classnames if c in forget)
    panels = list(matrices.items())
    vals = [v for _, m in panels for row in m for v in row if not math.isnan(v)]
    vmin, vmax = (min(vals), max(vals)) if vals else (0.0, 1.0)
    size = max(4.0, 0.28 * len(names) + 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (name, mat) in zip(axes[0], panels):
        m = [[mat[i][j] for j in order] for i in order]
        im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(name)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("class text")
        ax.set_ylabel("images of class")
        if nf:
            ax.add_patch(plt.Rectangle((-0.5, -0.5), nf, nf, fill=False, edgecolor="red", linewidth=2))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_origin_distance(series: dict[str, dict[str, float]], path: str, title: str = "",
                         highlight: Sequence[str] = (), ylabel: str = "distance to the origin") -> str:
    """Grouped bars: one group per key (concept or hierarchy level), one bar per series
    (e.g. before / after); ``highlight`` keys get a red label."""
    plt = _plt()
    names = list(dict.fromkeys(k for s in series.values() for k in s))
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(names) + 2), 3.6))
    for j, (label, values) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [values.get(k, math.nan) for k in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    for tick in ax.get_xticklabels():
        if tick.get_text() in highlight:
            tick.set_color("red")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_accuracy_rows(rows: Sequence[dict], path: str, title: str = "") -> str:
    """Forget and retain zero-shot accuracy before/after for each row of a results table
    (``row["name"]``, ``row["forget_before"]`` ... in percent), with chance + 5 marked."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * len(rows) + 3), 3.8), sharey=True)
    names = [r["name"] for r in rows]
    for ax, key in zip(axes, ("forget", "retain")):
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r[f"{key}_before"] for r in rows], 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [r[f"{key}_after"] for r in rows], 0.4, label="after")
        if key == "forget":
            for x, r in zip(xs, rows):
                ax.hlines(r["chance"] + 5, x - 0.45, x + 0.45, colors="red", linestyles="dashed")
        else:
            for x, r in zip(xs, rows):
                ax.hlines(0.9 * r["retain_before"], x - 0.45, x + 0.45, colors="red", linestyles="dashed")
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{key} accuracy (%)" + (" - target: below the red line" if key == "forget"
                                               else " - target: above the red line"), fontsize=9)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
