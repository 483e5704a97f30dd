"""Trainer benchmark: unlearning throughput of the tiny models, fused vs reference loss path,
and the largest global batch within a memory budget (CPU, every run in a fresh process)."""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time

import torch

from .runner import run_worker
from .tables import _fmt, _stamp
from .timing import proc_status_kb, _reset_hwm, _trim, machine_info


# ----------------------------------------------------------------------------- trainer

#: Extra memory (RSS high-water mark above the process after the model and data exist) a
#: trainer run may use in the "largest batch that fits" search.
TRAINER_MEMORY_BUDGET_GIB = 2.0
TRAINER_MODELS = {"tiny_meru": "hac", "tiny_clip": "ac"}
#: "fused": the defaults (hypkern.losses' fused backend, the fastest op backend);
#: "reference": backend="reference" everywhere (materialised B x B logits, eager ops).
TRAINER_PATHS = {"fused": None, "reference": "reference"}


def _trainer_worker(spec: dict) -> dict:
    """One unlearning run in this (fresh) process: per-step times and the RSS peak."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        from hypkern.models import tiny_clip, tiny_meru
        from hypkern.unlearning import unlearn
        from hypkern.data.demo import load_demo
    except Exception as exc:
        return {"status": f"error: the trainer is not available ({type(exc).__name__}: {exc})"}
    from hypkern.lorentz.ops import resolve_backend
    from hypkern import losses as L
    model = {"tiny_meru": tiny_meru, "tiny_clip": tiny_clip}[spec["model"]](0)
    data = load_demo("train")
    _trim()
    hwm_ok = _reset_hwm()
    base = proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    res = unlearn(model, [spec["concept"]], data, steps=spec["steps"], retain_batch_size=spec["retain"],
                  forget_batch_size=spec["forget"], micro_batch_size=spec.get("micro"),
                  backend=spec["backend"], eval=False, progress=False, log=lambda msg: None)
    wall = time.perf_counter() - t0
    peak = proc_status_kb("VmHWM") if hwm_ok else None
    times = [h["time_s"] for h in res.history]
    timed = times[1:] if len(times) > 1 else times  # the first step warms up
    dev = torch.device("cpu")
    return {"status": "ok", "method": res.method, "step_s": times,
            "median_step_s": statistics.median(timed), "wall_s": wall,
            "peak_mb": (peak - base) / 1024 if (peak is not None and base is not None) else None,
            "loss_backend": L.resolve_loss_backend(spec["backend"], dev),
            "op_backend": resolve_backend(spec["backend"], dev)}


def _run_trainer_subprocess(spec: dict, timeout: float) -> dict:
    res, failed = run_worker("benchmarks.harness.trainer:_trainer_worker", spec, timeout, capture_stderr=True)
    return {"status": failed} if failed else res


def trainer_benchmark(device: str = "cpu", quick: bool = False, log=print, threads: int | None = None,
                      timeout: float = 300.0) -> dict:
    """Unlearning throughput of the tiny models, fused vs reference loss path, and the largest
    global batch that fits in ``TRAINER_MEMORY_BUDGET_GIB`` (CPU; every run in a fresh process).

    Throughput: ``retain + forget`` samples per median step time (the first step, a warm-up,
    left out), one concept ("red circle") of the embedded demo set, no gradient caching. Peak
    memory: RSS high-water mark of the whole ``unlearn`` call above the process after the
    model and data exist. Largest batch: gradient caching (``micro_batch_size``) so that the
    encoders' activations do not grow with the batch, peaks measured at two global batches
    per path; the model ``peak(B) = a + b B`` (fused) / ``a + b B + q B^2`` (reference, ``a``
    and ``b`` taken from the fused path, which shares the encoders and data; ``q`` is the
    reference's excess at the larger batch over ``B^2``) is solved for the budget. Largest
    batches beyond the measured ones are extrapolations and marked so."""
    if device != "cpu":
        raise RuntimeError("the trainer benchmark runs on CPU (tiny models); GPU: benchmarks/gpu_suite.sh")
    try:
        import hypkern.unlearning as _u  # noqa: F401
        from hypkern.models import tiny_meru  # noqa: F401
        if not callable(getattr(_u, "unlearn", None)):
            raise ImportError("hypkern.unlearning.unlearn is missing")
    except Exception as exc:
        raise RuntimeError(f"the unlearning trainer is not available in this checkout: {exc}") from exc
    threads = threads or (1 if quick else torch.get_num_threads())
    t_start = time.time()
    machine = machine_info(device)
    machine["torch_threads"] = threads
    thr_b = (32, 16) if quick else (512, 256)
    steps = 2 if quick else 4
    rows = []
    for model, method in TRAINER_MODELS.items():
        for path, backend in TRAINER_PATHS.items():
            spec = {"model": model, "concept": "red circle", "backend": backend, "retain": thr_b[0],
                    "forget": thr_b[1], "steps": steps, "micro": None, "threads": threads}
            r = _run_trainer_subprocess(spec, timeout)
            row = {"test": "throughput", "model": model, "method": method, "path": path,
                   "batch": thr_b[0] + thr_b[1], "micro_batch": None, **r}
            if r.get("status") == "ok":
                row["samples_per_s"] = row["batch"] / r["median_step_s"]
            rows.append(row)
            log(f"[trainer] {model} {path:<9} batch {row['batch']}: "
                + (f"{row['samples_per_s']:.0f} samples/s, peak {_fmt(r.get('peak_mb'))} MiB"
                   if r.get("status") == "ok" else r.get("status", "")))
    # Largest batch that fits: MERU (HAC), gradient caching.
    micro = 32 if quick else 256
    sizes = [(64, 32), (256, 128)] if quick else [(1024, 512), (4096, 2048)]
    fit = {}
    for path, backend in TRAINER_PATHS.items():
        for (br, bf) in sizes:
            spec = {"model": "tiny_meru", "concept": "red circle", "backend": backend, "retain": br,
                    "forget": bf, "steps": 1, "micro": micro, "threads": threads}
            r = _run_trainer_subprocess(spec, timeout)
            row = {"test": "memory", "model": "tiny_meru", "method": "hac", "path": path, "batch": br + bf,
                   "micro_batch": micro, **r}
            if r.get("status") == "ok":
                row["samples_per_s"] = row["batch"] / r["median_step_s"]
                fit.setdefault(path, []).append((br + bf, r["peak_mb"]))
            rows.append(row)
            log(f"[trainer] memory tiny_meru {path:<9} batch {br + bf}: "
                + (f"peak {_fmt(r.get('peak_mb'))} MiB" if r.get("status") == "ok" else r.get("status", "")))
    max_batch = _max_batch(fit, TRAINER_MEMORY_BUDGET_GIB * 1024)
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["wall_s"] = round(time.time() - t_start, 1)
    return {"machine": machine, "rows": rows, "max_batch": max_batch,
            "settings": {"quick": quick, "budget_gib": TRAINER_MEMORY_BUDGET_GIB, "threads": threads,
                         "throughput_batch": list(thr_b), "steps": steps, "micro_batch": micro,
                         "suite": "quick" if quick else "full", "dtype": "float32"}}


def _max_batch(fit: dict, budget_mb: float) -> dict:
    """Largest global batch within ``budget_mb`` per path (see ``trainer_benchmark``)."""
    out = {}
    fused = sorted(fit.get("fused", []))
    if len(fused) < 2 or any(p is None for _, p in fused):
        return {"note": "not enough memory measurements"}
    (b1, p1), (b2, p2) = fused[0], fused[-1]
    slope = max((p2 - p1) / (b2 - b1), 1e-9)
    icpt = p1 - slope * b1
    measured_ok = [b for b, p in fused if p <= budget_mb]
    bmax = int((budget_mb - icpt) / slope)
    out["fused"] = {"model": f"{icpt:.1f} MiB + {slope * 1024:.2f} KiB x B", "max_batch": bmax,
                    "largest_measured_within_budget": max(measured_ok) if measured_ok else None,
                    "extrapolated": bmax > b2}
    ref = sorted(fit.get("reference", []))
    if len(ref) >= 1 and all(p is not None for _, p in ref):
        bq, pq = ref[-1]
        q = max((pq - (icpt + slope * bq)) / bq ** 2, 0.0)
        if q > 0:
            bmax_r = int((-slope + math.sqrt(slope ** 2 + 4 * q * (budget_mb - icpt))) / (2 * q))
        else:
            bmax_r = bmax
        measured_ok = [b for b, p in ref if p <= budget_mb]
        out["reference"] = {"model": f"{icpt:.1f} MiB + {slope * 1024:.2f} KiB x B + {q * 2 ** 20:.2f} B x B^2",
                            "max_batch": bmax_r,
                            "largest_measured_within_budget": max(measured_ok) if measured_ok else None,
                            "extrapolated": bmax_r > bq}
    return out


def trainer_markdown(res: dict) -> str:
    m, st = res["machine"], res["settings"]
    lines = ["# hypkern unlearning trainer throughput (CPU, tiny models)", "", _stamp(m, st), "",
             f"Embedded demo set (32x32 shapes), concept 'red circle'; fp32; {st['threads']} torch "
             f"thread(s). Throughput: batch {st['throughput_batch'][0]} retain + "
             f"{st['throughput_batch'][1]} forget per step, {st['steps']} steps, samples/s = batch / "
             "median step time (first step left out). Peak = RSS high-water mark of the whole "
             "`unlearn` call above the process after the model and data exist, each run in a fresh "
             "process. `fused` = default backends (fused loss, fastest ops); `reference` = "
             "`backend='reference'` (materialised B x B logits, eager ops).", "",
             "| test | model | method | path | loss / op backend | batch | micro-batch | step s | samples/s | peak MiB | status |",
             "|---|---|---|---|---|--:|--:|--:|--:|--:|---|"]
    for r in res["rows"]:
        lines.append("| " + " | ".join([
            r["test"], r["model"], r["method"], r["path"],
            f"{r.get('loss_backend', '')} / {r.get('op_backend', '')}", str(r["batch"]),
            _fmt(r.get("micro_batch")), _fmt(r.get("median_step_s")), _fmt(r.get("samples_per_s")),
            _fmt(r.get("peak_mb")), r.get("status", "")]) + " |")
    mb = res.get("max_batch", {})
    lines += ["", f"## Largest global batch within {st['budget_gib']} GiB (tiny MERU, HAC, "
              f"micro-batch {st['micro_batch']})", ""]
    if "note" in mb:
        lines.append(mb["note"])
    for path in ("fused", "reference"):
        if path in mb:
            e = mb[path]
            lines.append(f"- **{path}**: {e['max_batch']:,} samples"
                         + (" (extrapolated beyond the measured batches)" if e["extrapolated"] else " (within the measured range)")
                         + f"; peak model {e['model']}; largest measured batch within budget: "
                         f"{e['largest_measured_within_budget']}.")
    if "fused" in mb and "reference" in mb:
        lines.append(f"- fused / reference: {mb['fused']['max_batch'] / max(mb['reference']['max_batch'], 1):.1f}x larger batch.")
    return "\n".join(lines) + "\n"


def write_trainer_results(res: dict, out: str, stem: str) -> dict:
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, f"{stem}.{k}") for k in ("csv", "json", "md")}
    cols = ["test", "model", "method", "path", "loss_backend", "op_backend", "batch", "micro_batch",
            "median_step_s", "samples_per_s", "peak_mb", "status"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in res["rows"]:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    with open(paths["json"], "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(paths["md"], "w") as f:
        f.write(trainer_markdown(res))
    return paths

