#!/usr/bin/env bash
# One-device readiness check: on one GPU, in under 10 minutes (--quick: under 4), everything the 8xH100 run
# needs is run once at the real configuration and measured. Stages, in order:
#   env          torch, CUDA, cuDNN, GPUs, driver, whether FlashAttention-3 (flash_attn_interface) imports;
#   data         a synthetic train shard, val shard and fp16 top-32 cache of it, and a small real-text dataset
#                with its tokenizer (from the demo corpus that ships with Python), in a scratch folder;
#   attention    the student's micro-batch (48 x 2048) forward/backward with FA3 and with SDPA (FA3 absent: said,
#                and SDPA alone), their agreement and peak memory, then the compile time of that step (not --quick);
#   steps        step times of every arm kind (baseline, cached soft, cached hard, online teacher) at the real
#                student config on one device, MICRO_BATCHES=8 accumulated micro-batches standing in for 8 ranks,
#                compiled, each paired with the baseline in the same round (bench/distill_step.py): ratios, peak
#                memory per arm, the warm-up's seconds (compiles of every arm included);
#   count        the count teacher (order-5 modified Kneser-Ney over the real-text dataset): its tables built
#                inside the first timed round, then its step with the exact count KL against the baseline in
#                the same rounds (bench/distill_step.py --arms baseline,ngram): the build's ms and bytes, the ratio;
#   cache_read   the cache read rate from local disk, warm and cold (page cache dropped), fp16 and packed, as a
#                fraction of a student step (bench/cache_read.py);
#   train        train_gpt.py itself, end to end: the real student for a few steps on a small real-text dataset
#                (demo corpus), WARMUP_STEPS=1 with late QAT switching on mid-run, then the int6 artifact and
#                its scores; fails if any compile landed inside a timed step;
#   eval         standard and sliding-window eval (golf.eval) of the synthetic val shard, projected to FineWeb's
#                62M val targets (one rank's share of the 8-GPU batch per call);
#   cache_write  the teacher preset's cache-writing throughput over its forward pass (bench/cache_write.py; not
#                --quick), in the time left.
# Every stage runs under its own time limit and whatever happens to it, the next one runs; each leaves
# OUTDIR/<stage>.log (and .json). Then OUTDIR/gpu_check.json (every status and figure) and OUTDIR/summary.md
# (the page for docs/performance.md), and the last line `gpu_check mode=... stages_ok=N/M ...`. Exit status 1
# if any stage did not finish ok, 2 on bad usage.
#
#   bench/gpu_check.sh OUTDIR               # on the GPU machine (~9 min)
#   bench/gpu_check.sh --quick OUTDIR       # fewer, shorter, eager (COMPILE=0) measurements (~4 min)
#   bench/gpu_check.sh --dry-run [OUTDIR]   # CPU: print the plan, then run every stage with the test preset (~1 min
#                                           # idle; OUTDIR defaults to a new temp folder, named on the first line)
#
# The dry run's limits were set on an idle 2-core CPU; it first measures how much slower this machine runs now
# (`bench/gpu_check.py slowdown`: a fixed single-thread workload against that machine's time) and multiplies
# every limit and the budget by it, and a stage that still runs past its limit (load can change mid-run) is
# killed only at 3x the limit + 30 s: finishing in between, it is reported `slow`, which does not fail the check.
# GPU_CHECK_SLOWDOWN=F sets the factor instead of measuring it.
#
# GPU_CHECK_WORK=DIR keeps the scratch data there (default: a temp folder, deleted at the end);
# GPU_CHECK_SECONDS sets the timed part of the steps stage; GPU_CHECK_BUDGET the total seconds;
# GPU_CHECK_FAIL=stage[,stage] makes those stages fail at once (to see the report of a partial check).
set -uo pipefail

usage() { echo "error: ${1:+$1; }usage: bench/gpu_check.sh [--quick] OUTDIR | --dry-run [--quick] [OUTDIR]" >&2; exit 2; }
DRY=0; QUICK=0; OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) usage "unknown option $1" ;;
        *) [[ -z "$OUT" ]] || usage "one OUTDIR only"; OUT=$1 ;;
    esac
    shift
done
[[ "${GPU_CHECK_TINY:-0}" == 1 ]] && DRY=1
[[ -n "$OUT" || $DRY == 1 ]] || usage
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
SLOW=1  # the dry run's slowdown factor (a full run's limits are the GPU lease's and never scale)
scaled() { awk -v s="$1" -v f="$SLOW" 'BEGIN { x = s * f; printf "%d", (x == int(x)) ? x : int(x) + 1 }'; }

# Sizes. The real ones: the student and teacher presets, a 4M-token shard (each step reads 786k tokens, so the
# stream wraps; the cache covers it all), a 1M-token val shard (sliding eval = 16k windows of 2048).
if [[ $DRY == 1 ]]; then
    MODE=dry-run; STUDENT=test; TEACHER=test; TOKENS=20000; VAL_TOKENS=8192; TIMED=${GPU_CHECK_SECONDS:-2}; TRAIN_STEPS=6
    WARMUP=1; ATTN_STEPS=2; READ="--quick"; VAL_BATCH=""; EAGER=""
    SLOW=${GPU_CHECK_SLOWDOWN:-$(PYTHONPATH="$REPO" "$PY" "$REPO/bench/gpu_check.py" slowdown)} || usage "could not measure the CPU's speed (bench/gpu_check.py slowdown)"
    BUDGET=${GPU_CHECK_BUDGET:-$(scaled 150)}
    # The compile-time code path with the aot_eager backend: inductor's C++ build would take ~30 s on a small CPU.
    ATTN_COMPILE="GOLF_COMPILE_BACKEND=aot_eager "; ATTN_FLAG=" --compile"
else
    MODE=full; STUDENT=student; TEACHER=teacher; TOKENS=4194304; VAL_TOKENS=1048577; TIMED=${GPU_CHECK_SECONDS:-90}
    TRAIN_STEPS=12
    WARMUP=2; ATTN_STEPS=5; READ="--reps 10 --step-reps 3"; VAL_BATCH="VAL_BATCH_SIZE=65536 "; EAGER=""
    ATTN_COMPILE=""; ATTN_FLAG=" --compile"
    BUDGET=${GPU_CHECK_BUDGET:-560}
    if [[ $QUICK == 1 ]]; then  # eager (COMPILE=0): the compiles alone would take most of 4 minutes
        MODE=quick; TOKENS=2097152; VAL_TOKENS=262145; TIMED=${GPU_CHECK_SECONDS:-20}; WARMUP=1; ATTN_STEPS=3
        READ="--reps 5 --step-reps 2"; BUDGET=${GPU_CHECK_BUDGET:-225}; EAGER="COMPILE=0 "; ATTN_FLAG=""
    fi
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "error: no CUDA device visible to torch; run on the GPU machine, or use --dry-run" >&2
        exit 2
    fi
fi
if [[ $DRY == 1 && $QUICK == 1 ]]; then MODE=dry-run-quick; ATTN_FLAG=""; fi

if [[ -z "$OUT" ]]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2; fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}
mkdir -p "$WORK"
cleanup() { if [[ -z "${GPU_CHECK_WORK:-}" ]]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT
DATA=$WORK/data
TEXT=$WORK/text
# Every script reads data paths and presets from the environment; a PRESET from the caller's shell must not
# leak in, and nothing here loads a tokenizer.
unset PRESET
export DATA_PATH=$DATA VOCAB_SIZE=1024 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || exit 2
rm -f "$OUT/stages.tsv"

ACTION=plan
stage() {  # NAME LIMIT_S COMMAND: print it (plan) or run it under its limit, teed to OUTDIR/NAME.log, status recorded
    local name=$1 limit=$(scaled "$2") cmd=$3 t0=$SECONDS rc status kill_at
    if [[ $ACTION == plan ]]; then printf '  %-12s <=%4ss  %s\n' "$name" "$limit" "$cmd"; return 0; fi
    local left=$((BUDGET - SECONDS - 10))  # 10 s for the report
    [[ $DRY == 1 || $limit -le $left ]] || limit=$left  # a dry run holds no lease: its budget is a guide
    kill_at=$limit
    [[ $DRY == 1 ]] && kill_at=$((3 * limit + 30))  # past its limit a dry-run stage is slow, not failed
    echo "=== $name (limit ${limit}s): $cmd"
    if [[ ",${GPU_CHECK_FAIL:-}," == *",$name,"* ]]; then
        echo "GPU_CHECK_FAIL: $name made to fail" | tee "$OUT/$name.log"; rc=1
    elif [[ $DRY == 0 && $limit -lt 5 ]]; then
        echo "no time left in the ${BUDGET}s budget" | tee "$OUT/$name.log"; rc=-1
    else
        timeout --kill-after=10 "$kill_at" bash -c "$cmd" 2>&1 | tee "$OUT/$name.log"
        rc=${PIPESTATUS[0]}
    fi
    case $rc in 0) status=ok; [[ $((SECONDS - t0)) -le $limit ]] || status=slow ;; -1) status=skipped ;; 124|137) status=timeout ;; *) status=failed ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" $((SECONDS - t0)) "$rc" "$limit" "$cmd" >> "$OUT/stages.tsv"
    echo "=== $name: $status in $((SECONDS - t0))s"
}

stages() {
    local p="$PY -u"
    stage env 60 "$p bench/gpu_check.py env $OUT/env.json"
    stage data 120 "$p bench/gpu_check.py data $DATA --tokens $TOKENS --val-tokens $VAL_TOKENS --text $TEXT && $p bench/gpu_check.py cache $DATA $WORK/cache --k 32"
    stage attention 150 "${ATTN_COMPILE}PRESET=$STUDENT $p bench/gpu_check.py attention $OUT/attention.json --steps $ATTN_STEPS$ATTN_FLAG"
    stage steps $((TIMED + 200)) "$EAGER$p bench/distill_step.py --preset $STUDENT --teacher-preset $TEACHER --arms baseline,soft,hard,online --cache-dir $WORK/cache --warmup $WARMUP --seconds $TIMED --max-total-seconds $((TIMED + 170)) --json $OUT/steps.json"
    stage count $((TIMED + 120)) "${EAGER}NGRAM_ORDER=5 DATA_PATH=$TEXT/datasets/gpucheck_sp1024 $p bench/distill_step.py --preset $STUDENT --arms baseline,ngram --cache-shards 0 --warmup $WARMUP --seconds $((TIMED / 2 + 1)) --max-total-seconds $((TIMED / 2 + 100)) --json $OUT/count.json"
    stage train 180 "${EAGER}PRESET=$STUDENT DATA_PATH=$TEXT/datasets/gpucheck_sp1024 TOKENIZER_PATH=$TEXT/tokenizers/gpucheck_1024_bpe.model ITERATIONS=$TRAIN_STEPS WARMDOWN_ITERS=$TRAIN_STEPS QAT_THRESHOLD=0.5 WARMUP_STEPS=1 MAX_WALLCLOCK_SECONDS=0 VAL_LOSS_EVERY=0 TRAIN_LOG_EVERY=1 RUN_ID=train LOG_DIR=$OUT/train CHECKPOINT_PATH=$WORK/train/train.pt $p train_gpt.py && $p bench/gpu_check.py train-report $OUT/train $OUT/train.json"
    stage eval 120 "${EAGER}PRESET=$STUDENT VAL_MAX_TOKENS=0 $VAL_BATCH$p bench/gpu_check.py eval $DATA $OUT/eval.json"
    stage cache_read 120 "$EAGER$p bench/cache_read.py --preset $STUDENT --cache-dir $WORK/cache --no-distortion $READ --tmp $WORK --json $OUT/cache_read.json"
    [[ $QUICK == 1 ]] || stage cache_write 120 "$p bench/cache_write.py --preset $TEACHER --shards 1 --reps 1 --tmp $WORK --json $OUT/cache_write.json"
}

echo "gpu_check $MODE: $(date -u +%FT%TZ), repo $REPO, budget ${BUDGET}s, out $OUT, scratch $WORK"
[[ $DRY == 0 ]] || echo "slowdown ${SLOW}x against the idle 2-core CPU the dry run's limits were set on: every limit scaled by it"
echo "plan (stage, time limit, command):"
stages
ACTION=run
stages
if ! "$PY" bench/gpu_check.py summary "$OUT" --mode "$MODE"; then
    # The report itself could not be written (e.g. torch does not import): leave the statuses as JSON anyway.
    if [[ ! -s "$OUT/gpu_check.json" ]]; then
        "$PY" -c 'import json, sys; rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
json.dump({"mode": sys.argv[2], "stages": {r[0]: {"status": r[1], "seconds": int(r[2])} for r in rows}},
          open(sys.argv[3], "w"), indent=1)' "$OUT/stages.tsv" "$MODE" "$OUT/gpu_check.json" \
          || echo "error: no report written; the stage logs are in $OUT" >&2
    fi
    echo "gpu_check done in ${SECONDS}s: some stages did not finish ok (see $OUT/summary.md and the logs)"
    exit 1
fi
echo "gpu_check done in ${SECONDS}s: $OUT/summary.md"
