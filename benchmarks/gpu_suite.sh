#!/usr/bin/env bash
# hypkern GPU suite: one NVIDIA GPU, no network, under 8 minutes on one H200.
#
#   benchmarks/gpu_suite.sh OUTDIR            # the suite; full logs and results in OUTDIR
#   benchmarks/gpu_suite.sh OUTDIR --dry-run  # no GPU: check the script and its Python parts
#
# Steps (each under `timeout`, each cut to what is left of a 470 s deadline; a step that fails
# or times out is recorded in OUTDIR/steps.tsv and the suite goes on; the exit status is
# non-zero if any step failed):
#   env       nvidia-smi, versions                          -> env.log
#   build     pip install --no-build-isolation --no-deps --no-index . (CUDA extension forced,
#             TORCH_CUDA_ARCH_LIST = this GPU only)          -> build.log
#   tests     pytest -m "cuda or triton or native" (Triton and CUDA vs the float64 reference,
#             fp32/fp16/bf16; HYPKERN_REQUIRE=triton,native: a skip is a failure) -> tests.log
#   ceilings  device-to-device copy GB/s, bf16 and fp32 matmul TFLOP/s  -> ceilings.json
#   ops       every op and loss, every backend + peers, bf16  -> ops_gpu_bf16.{md,csv,json,png}
#   losses    fused contrastive fwd+bwd, bf16, B = 65536 and 1,048,576   -> losses_gpu.json
#   report    one table: each kernel's share of its ceiling  -> gpu_summary.md (printed)
#   ranks     (2+ GPUs) trainer rank scaling, W ranks vs 1 rank on B/W -> trainer_ranks_cuda.md
#   ops_fp32  the ops again in fp32, only if time is left    -> ops_gpu_fp32.*
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--dry-run]" >&2; exit 64; }
[ $# -ge 1 ] || usage
OUT=$1
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
SUITE_PY="$REPO/benchmarks/gpu_suite.py"
exec > >(tee -a "$OUT/suite.log") 2>&1

START=$(date +%s)
DEADLINE=$((START + ${HYPKERN_SUITE_SECONDS:-470}))
FAILED=0
printf 'step\tstatus\tseconds\tlog\n' > "$OUT/steps.tsv"

# step NAME BUDGET_S CMD...: run CMD under timeout (cut to the deadline), log to OUT/NAME.log
step() {
    local name=$1 budget=$2; shift 2
    local now left t0 rc status
    now=$(date +%s); left=$((DEADLINE - now - 15))
    if [ "$left" -lt 10 ]; then
        echo "== $name: SKIPPED (no time left before the deadline)"
        printf '%s\tskipped (deadline)\t0\t-\n' "$name" >> "$OUT/steps.tsv"
        FAILED=1; return 1
    fi
    [ "$budget" -gt "$left" ] && budget=$left
    echo "== $name (timeout ${budget}s): $*"
    t0=$(date +%s)
    timeout -k 10 "$budget" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT after ${budget}s" ;;
        *) status="FAILED rc=$rc" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$name.log" >> "$OUT/steps.tsv"
    tail -n 15 "$OUT/$name.log"
    echo "== $name: $status ($(( $(date +%s) - t0 )) s)"
    [ $rc -eq 0 ] || FAILED=1
    return $rc
}

if [ $DRY -eq 1 ]; then
    echo "== dry run (no GPU needed): shell syntax, Python parts"
    bash -n "${BASH_SOURCE[0]}" || { echo "FATAL: shell syntax"; exit 1; }
    command -v timeout >/dev/null || { echo "FATAL: coreutils timeout missing"; exit 1; }
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m py_compile "$SUITE_PY" || exit 1
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$SUITE_PY" dry-run "$OUT" || exit 1
    echo "dry run OK"
    exit 0
fi

# ---------------------------------------------------------------- fail loudly without a GPU
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "FATAL: no NVIDIA GPU here (nvidia-smi missing or failing). This suite needs one GPU;" >&2
    echo "       use '$0 OUTDIR --dry-run' to check it on a machine without one." >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "FATAL: nvidia-smi sees a GPU but torch.cuda.is_available() is False (CPU-only torch?)" >&2
    exit 2
fi

step env 20 bash -c "nvidia-smi; $PY -c 'import torch, triton, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__)'; nproc; free -g"

# ---------------------------------------------------------------- build (CUDA extension forced)
CAP=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')")
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
cd "$REPO"
step build 150 env HYPKERN_BUILD_CUDA=1 HYPKERN_BUILD_CPU=1 TORCH_CUDA_ARCH_LIST="$CAP" \
    MAX_JOBS="$(nproc)" "$PY" -m pip install --no-build-isolation --no-deps --no-index -v . || true
# Python steps run outside the checkout so that the installed package (with the extension
# just built) is imported, never the source tree.
RUN="$OUT/_run"; mkdir -p "$RUN"; cd "$RUN"
if ! "$PY" -c "import hypkern, sys; sys.exit(0 if 'site-packages' in hypkern.__file__ else 1)" 2>/dev/null; then
    echo "WARNING: the install failed; using the source tree (Triton and reference only, no native)"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    FAILED=1
fi
"$PY" "$SUITE_PY" check "$OUT" || { echo "FATAL: the GPU check failed"; exit 3; }

# ---------------------------------------------------------------- tests, ceilings, benchmarks
step tests 90 env HYPKERN_REQUIRE=triton,native "$PY" -m pytest -q -rs -p no:cacheprovider \
    -m "cuda or triton or native" --rootdir "$REPO" -c "$REPO/pyproject.toml" "$REPO/tests" || true
step ceilings 20 "$PY" "$SUITE_PY" ceilings "$OUT" || true
step ops 90 "$PY" "$SUITE_PY" ops "$OUT" --dtype bfloat16 --deadline 60 || true
step losses 90 "$PY" "$SUITE_PY" losses "$OUT" --repeats 2 || true
step report 10 "$PY" "$SUITE_PY" report "$OUT" || true
# rank scaling of the unlearning trainer (multi-GPU machines only): W ranks on the global
# batch vs one rank on B/W, rows per rank's contrastive kernel -> trainer_ranks_cuda.md
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$NGPU" -ge 2 ]; then
    step ranks 90 env PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$REPO/benchmarks/compare_trainer.py" \
        --ranks-only "$NGPU" --device cuda --steps 6 --retain $((64 * NGPU)) --forget $((32 * NGPU)) --out "$OUT" || true
fi
if [ $(( DEADLINE - $(date +%s) )) -gt 60 ]; then
    step ops_fp32 45 "$PY" "$SUITE_PY" ops "$OUT" --dtype float32 --deadline 30 || true
    "$PY" "$SUITE_PY" report "$OUT" > "$OUT/report_final.log" 2>&1 || true
fi

echo
echo "== steps"; column -t -s $'\t' "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
[ -f "$OUT/gpu_summary.md" ] && cat "$OUT/gpu_summary.md"
echo "== total $(( $(date +%s) - START )) s; logs and results in $OUT"
exit $FAILED
