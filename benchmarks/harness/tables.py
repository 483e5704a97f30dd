"""Result tables: CSV, JSON, Markdown (stamped with the machine and the load), the plot, and
issue 8's CPU targets evaluated from the rows."""
from __future__ import annotations

import csv
import json
import math
import os

from . import __doc__ as _HOW_MEASURED
from .cases import CSV_COLUMNS, LOSSES, OPS, Case
from .impls import FUSED_LOSS_IMPL


# ----------------------------------------------------------------------------- targets

def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and r["status"] == "ok":
            return r
    return None


def _largest(rows, kind, name):
    sizes = sorted({(r["n"] * r["m"] * r["d"], r["n"], r["m"], r["d"]) for r in rows
                    if r["kind"] == kind and r["name"] == name})
    return sizes[-1][1:] if sizes else None


def evaluate_targets(result: dict) -> list[dict]:
    """Issue 8's CPU targets against these rows (GPU targets: benchmarks/gpu_suite.py).
    Each item: target, measured, met (True/False/None = not measurable here), margin."""
    rows = result["rows"]
    out = []

    def add(target, measured, met, margin, note=""):
        out.append({"target": target, "measured": measured, "met": met, "margin": margin, "note": note})

    # 1. fused Lorentz contrastive at B=8192, D=512 (or the largest size run).
    size = (8192, 8192, 512) if _find(rows, kind="loss", name="lorentz_contrastive", n=8192) else \
        _largest(rows, "loss", "lorentz_contrastive")
    if size:
        n, m, d = size
        key = dict(kind="loss", name="lorentz_contrastive", n=n, m=m, d=d, **{"pass": "fwd+bwd"})
        fused_impl = FUSED_LOSS_IMPL.get(result["settings"]["device"].split(":")[0], "chunked")
        ref, fused = _find(rows, impl="reference", **key), _find(rows, impl=fused_impl, **key)
        at = f" (B={n}, D={d})" + ("" if n == 8192 else " — not the target size")
        if ref and fused and ref.get("peak_mb") and fused.get("peak_mb") is not None:
            ratio = fused["peak_mb"] / ref["peak_mb"]
            add("fused Lorentz contrastive fwd+bwd peak memory <= 5% of reference" + at,
                f"{fused['peak_mb']:.1f} MiB vs {ref['peak_mb']:.1f} MiB = {100 * ratio:.2f}%",
                ratio <= 0.05, f"{100 * (0.05 - ratio):+.2f} pts")
        else:
            add("fused Lorentz contrastive fwd+bwd peak memory <= 5% of reference" + at, "n/a", None, "",
                "no fused or reference row with memory")
        if ref and fused:
            ratio = fused["median_ms"] / ref["median_ms"]
            add("fused Lorentz contrastive fwd+bwd time <= 0.7x reference" + at,
                f"{fused['median_ms']:.1f} ms vs {ref['median_ms']:.1f} ms = {ratio:.2f}x",
                ratio <= 0.7, f"{ratio / 0.7:.2f}x of the allowed time")
        else:
            add("fused Lorentz contrastive fwd+bwd time <= 0.7x reference" + at, "n/a", None, "",
                "missing rows")
    # 2. native pairwise_dist vs a bare matmul at the largest size.
    size = _largest(rows, "op", "pairwise_dist")
    if size:
        n, m, d = size
        for p in ("fwd", "fwd+bwd"):
            key = dict(kind="op", name="pairwise_dist", n=n, m=m, d=d, **{"pass": p})
            nat, mm = _find(rows, impl="native", **key), _find(rows, impl="matmul", **key)
            tgt = f"native pairwise_dist {p} <= 1.25x bare matmul ({n}x{m}x{d})"
            if nat and mm:
                ratio = nat["median_ms"] / mm["median_ms"]
                add(tgt, f"{nat['median_ms']:.2f} ms vs {mm['median_ms']:.2f} ms = {ratio:.2f}x",
                    ratio <= 1.25, f"{ratio / 1.25:.2f}x of the allowed time")
            else:
                add(tgt, "n/a", None, "", "native backend not usable here" if not nat else "no matmul row")
    # 3. maps / angles >= 3x the eager reference (native on CPU).
    for name in ("exp_map0", "log_map0", "half_aperture", "oxy_angle"):
        size = _largest(rows, "op", name)
        if not size:
            continue
        n, m, d = size
        for p in ("fwd", "fwd+bwd"):
            r = _find(rows, kind="op", name=name, impl="native", n=n, m=m, d=d, **{"pass": p})
            bound = _find(rows, kind="op", name=name, impl="copy", n=n, m=m, d=d, **{"pass": p})
            tgt = f"native {name} {p} >= 3x eager reference ({n}x{d})"
            if r and r.get("speedup_vs_ref"):
                s = r["speedup_vs_ref"]
                note = ""
                if bound and bound.get("speedup_vs_ref"):
                    note = (f"; the bound `x * 1.0` (read, write a fresh N x D; same in backward) is "
                            f"{bound['speedup_vs_ref']:.2f}x the reference, native takes "
                            f"{r['median_ms'] / bound['median_ms']:.2f}x its time")
                add(tgt, f"{s:.2f}x", s >= 3.0, f"{s / 3.0:.2f}x of the target speedup" + note)
            else:
                add(tgt, "n/a", None, "", "native backend not usable here")
    return out


# ----------------------------------------------------------------------------- output

def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _stamp(machine: dict, settings: dict) -> str:
    load = machine.get("load_avg_1_5_15")
    cores = machine.get("cores")
    busy = load and cores and load[0] > 0.5 * cores
    s = (f"Machine: {machine['cpu']}, {cores} cores ({machine['torch_threads']} torch threads)"
         + (f", GPU {machine['gpu']} ({machine['gpu_memory_gib']} GiB), CUDA {machine['cuda']}"
            if machine.get("gpu") else "")
         + f"; torch {machine['torch']}, triton {machine.get('triton')}, Python {machine['python']}; "
         f"commit {machine['git_commit']}; {machine['date_utc']}.  \n"
         f"Load average (1/5/15 min) at start {load}, at end {machine.get('load_avg_end')}"
         + (" — **the machine was busy (other processes), timings are noisy**" if busy else "")
         + f"; suite `{settings['suite']}`, dtype {settings['dtype']}, wall {machine.get('wall_s')} s.")
    return s


def markdown_table(result: dict, title: str = "Kernel benchmarks") -> str:
    rows, machine, ceil = result["rows"], result["machine"], result["ceilings"]
    lines = [f"# {title}", "", _stamp(machine, result["settings"]), ""]
    lines.append("Ceilings measured in this run: copy "
                 f"{ceil['copy_gbps']:.1f} GB/s (read+write, {ceil['copy_bytes'] >> 20} MiB), "
                 + ", ".join(f"{k[7:-7]} matmul {v:.3g} TFLOP/s (n={ceil[k[:-7] + '_n']})"
                             for k, v in ceil.items() if k.startswith("matmul_") and k.endswith("_tflops"))
                 + ".")
    lines += ["", "Times are medians in ms; `speedup` = eager reference time / this time (same pass);",
              "GB/s and GFLOP/s follow the cost model in `benchmarks/harness` (fwd+bwd pass); `%copy` ",
              "is that GB/s as a share of the measured copy rate, `%mm` the GFLOP/s as a share of the ",
              "measured matmul rate; `peak MiB` is the fwd+bwd call's peak memory above its inputs, ",
              "`mem/ref` its ratio to the reference's; `err` = max |out - ref64| / max(1, |ref64|).", ""]
    targets = evaluate_targets(result) if result["settings"]["device"] == "cpu" else []
    if targets:
        lines += ["## Targets (issue 8, CPU)", ""]
        if result["settings"]["suite"] == "quick":
            lines += ["*Quick suite: tiny sizes, so these verdicts mean nothing; run the full suite.*", ""]
        lines += ["| target | measured | met | margin |", "|---|---|---|---|"]
        for t in targets:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {t['measured']} | {met} | {t['margin'] or t['note']} |")
        lines.append("")
    copy_gbps = ceil.get("copy_gbps")
    mm_tf = next((v for k, v in ceil.items() if k.endswith("_tflops") and result["settings"]["dtype"] in k),
                 None) or next((v for k, v in ceil.items() if k.endswith("_tflops")), None)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["name"]), []).append(r)
    for (kind, name), rs in groups.items():
        case_pairwise = OPS[name][1] if kind == "op" else LOSSES[name]
        lines += [f"## {kind} `{name}`", "",
                  "| size | impl | fwd | bwd | fwd+bwd | speedup fwd | speedup f+b | GB/s | GFLOP/s | "
                  + ("%mm" if case_pairwise else "%copy") + " | peak MiB | mem/ref | err |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        by = {}
        for r in rs:
            by.setdefault((r["n"], r["m"], r["d"], r["impl"]), {})[r["pass"]] = r
        skipped = []
        for (n, m, d, impl), ps in by.items():
            label = Case(kind, name, n, m, d).label
            fb = ps.get("fwd+bwd", {})
            if fb.get("status") != "ok":
                skipped.append(f"{label} `{impl}`: {fb.get('status')}")
                continue
            share = None
            if case_pairwise and mm_tf and fb.get("gflops"):
                share = 100 * fb["gflops"] / (mm_tf * 1e3)
            elif not case_pairwise and copy_gbps and fb.get("gbps"):
                share = 100 * fb["gbps"] / copy_gbps
            lines.append("| " + " | ".join([
                label, impl, _fmt(ps["fwd"].get("median_ms")), _fmt(ps["bwd"].get("median_ms")),
                _fmt(fb.get("median_ms")), _fmt(ps["fwd"].get("speedup_vs_ref"), 2),
                _fmt(fb.get("speedup_vs_ref"), 2), _fmt(fb.get("gbps")), _fmt(fb.get("gflops")),
                _fmt(share, 2), _fmt(fb.get("peak_mb")), _fmt(fb.get("mem_vs_ref"), 2),
                _fmt(fb.get("err"), 2)]) + " |")
        if skipped:
            lines += ["", "Not run: " + "; ".join(skipped)]
        lines.append("")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})


IMPL_COLORS = {"reference": "tab:blue", "compile": "tab:cyan", "native": "tab:orange", "triton": "tab:red",
               "chunked": "tab:green", "geoopt": "tab:purple", "open_clip": "tab:brown", "inf_cl": "tab:pink",
               "matmul": "tab:gray", "copy": "tab:olive"}


def plot(result: dict, path: str) -> bool:
    """One panel per op/loss: fwd+bwd median time vs size, one line per implementation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    rows = [r for r in result["rows"] if r["status"] == "ok" and r["pass"] == "fwd+bwd"]
    cases = list(dict.fromkeys((r["kind"], r["name"]) for r in rows))
    if not cases:
        return False
    cols = min(4, len(cases))
    nrows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (kind, name) in zip(axes.flat, cases):
        rs = [r for r in rows if r["kind"] == kind and r["name"] == name]
        labels = list(dict.fromkeys(Case(kind, name, r["n"], r["m"], r["d"]).label for r in rs))
        for impl in dict.fromkeys(r["impl"] for r in rs):
            pts = [(labels.index(Case(kind, name, r["n"], r["m"], r["d"]).label), r["median_ms"])
                   for r in rs if r["impl"] == impl]
            xs, ys = zip(*sorted(pts))
            bound = impl in ("matmul", "copy")
            ax.plot(xs, ys, marker="x" if bound else "o", linestyle="--" if bound else "-",
                    label=impl, color=IMPL_COLORS.get(impl, "black"))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{name} (fwd+bwd)", fontsize=9)
        ax.set_ylabel("ms (median)", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(f"hypkern bench — {m['cpu']} x{m['cores']}, torch {m['torch']}, {m['date_utc']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(result: dict, out_dir: str, stem: str, title: str, make_plot: bool = True) -> dict:
    """``stem``.csv / .json / .md (and .png) in ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("csv", "json", "md", "png")}
    write_csv(result["rows"], paths["csv"])
    result = {**result, "targets": evaluate_targets(result), "cost_model": _HOW_MEASURED}
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(result, title) + "\n")
    if not (make_plot and plot(result, paths["png"])):
        paths.pop("png")
    return paths
