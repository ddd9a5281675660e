#!/usr/bin/env bash
# One-GPU performance check at full scale, in under 8 minutes (H100 / H200):
#   1. synthetic train shard (4,194,304 random tokens) and a synthetic fp16 top-32 cache of it;
#   2. the student preset (seq 2048, 786,432 tokens per step, MICRO_BATCHES=8 = 8 accumulated micro-batches on one
#      GPU, compiled, bf16): baseline and cached-soft distillation steps alternating for GPU_CHECK_SECONDS
#      (default 180, ~90 s each) after a compile warm-up, via bench/distill_step.py: step times and their ratio;
#   3. cache write throughput of the teacher preset (105M, random weights, compiled) against its forward pass
#      alone, via bench/cache_write.py, in the time left of the budget (GPU_CHECK_BUDGET, default 470 s);
#   4. OUTDIR/gpu_check.json (all figures, device, versions) and one `gpu_check ...` summary line.
# Each stage also leaves its log and JSON in OUTDIR. Data and cache go to a scratch folder (GPU_CHECK_WORK,
# default a new temp folder, deleted at the end), never into OUTDIR.
#
#   bench/gpu_check.sh OUTDIR              # on the GPU machine
#   bench/gpu_check.sh --dry-run OUTDIR    # the same stages with the test preset, a few seconds each (CPU check);
#                                          # GPU_CHECK_TINY=1 does the same
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ "${GPU_CHECK_TINY:-0}" == "1" ]]; then DRY=1; fi
if [[ $# -ne 1 ]]; then
    echo "usage: bench/gpu_check.sh [--dry-run] OUTDIR" >&2
    exit 2
fi
OUT=$1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET=${GPU_CHECK_BUDGET:-470}

if [[ $DRY == 1 ]]; then
    STUDENT=test; TEACHER=test; TOKENS=20000; TIMED=${GPU_CHECK_SECONDS:-3}; WARMUP=1
else
    STUDENT=student; TEACHER=teacher; TOKENS=4194304; TIMED=${GPU_CHECK_SECONDS:-180}; WARMUP=3
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "error: no CUDA device visible to torch; run on the GPU machine, or use --dry-run" >&2
        exit 2
    fi
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}
mkdir -p "$WORK"
cleanup() { if [[ -z "${GPU_CHECK_WORK:-}" ]]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT
DATA=$WORK/data
# The scripts read the data and tokenizer paths from the environment like every training script; nothing here
# loads a tokenizer, and a PRESET from the caller's shell must not leak in.
unset PRESET
export DATA_PATH=$DATA VOCAB_SIZE=1024
cd "$REPO"

{
    echo "gpu_check start $(date -u +%FT%TZ) dry_run=$DRY repo=$REPO"
    "$PY" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())'
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
} | tee "$OUT/env.log"

"$PY" bench/gpu_check.py data "$DATA" --tokens "$TOKENS" | tee "$OUT/data.log"
"$PY" bench/gpu_check.py cache "$DATA" "$WORK/cache" --k 32 | tee -a "$OUT/data.log"

# Leave ~100 s of the budget for the cache-write stage and the summary (but give this stage at least 60 s).
left=$((BUDGET - SECONDS - 100))
if [[ $left -lt 60 ]]; then left=60; fi
echo "distill_step: timed ${TIMED}s, stage limit ${left}s"
timeout "$left" "$PY" -u bench/distill_step.py --preset "$STUDENT" --arms baseline,soft --cache-dir "$WORK/cache" \
    --cache-shards 1 --warmup "$WARMUP" --seconds "$TIMED" --max-total-seconds $((left - 15)) \
    --json "$OUT/distill_step.json" 2>&1 \
    | tee "$OUT/distill_step.log" || echo "distill_step failed or timed out (see $OUT/distill_step.log)"

left=$((BUDGET - SECONDS - 10))
echo "cache_write: stage limit ${left}s"
if [[ $left -gt 20 ]]; then
    timeout "$left" "$PY" -u bench/cache_write.py --preset "$TEACHER" --shards 1 --reps 1 --tmp "$WORK" \
        --json "$OUT/cache_write.json" 2>&1 | tee "$OUT/cache_write.log" \
        || echo "cache_write failed or timed out (see $OUT/cache_write.log)"
fi

"$PY" bench/gpu_check.py summary "$OUT" | tee "$OUT/summary.log"
echo "gpu_check done in ${SECONDS}s"
