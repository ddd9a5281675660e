#!/usr/bin/env bash
# Refactor identity check: every arm kind for a few steps on the demo data, one thread, fixed seed, no wall
# clock; prints a digest of every number a refactor must not change: each loss and val_bpb line, the sha256
# of each int6 artifact and of each cache data file, and a hash of each checkpoint's weights (checkpoints
# themselves also hold the config, whose fields may grow).
#
#   bench/identity.sh REPO WORKDIR > digest.txt     # REPO: the checkout whose scripts run (e.g. a worktree of
#                                                   # the commit before the refactor); WORKDIR: scratch, reused
#   diff <(bench/identity.sh OLD_REPO /tmp/a) <(bench/identity.sh . /tmp/b)   # empty = no number changed
#
# Uses the study's own variables (DISTILL_CACHED, DISTILL_SOFT, DISTILL_SEED_FAITHFUL), which every version
# reads; IDENTITY_EXTRA_ARMS=1 adds the same arms spelt with DISTILL_TEACHER / DISTILL_TARGET (newer code
# only), whose lines must equal those of the study's spelling. ~4 minutes on 2 cores.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bench/identity.sh REPO WORKDIR" >&2; exit 2; }
REPO=$(cd "$1" && pwd)
mkdir -p "$2"
W=$(cd "$2" && pwd)
PY=${PYTHON:-python}
export PYTHONPATH="$REPO" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$W"
[ -d data/datasets/demo_sp1024 ] || "$PY" "$REPO/prepare_data.py" --demo > /dev/null

COMMON="PRESET=demo-student MAX_WALLCLOCK_SECONDS=0 ITERATIONS=8 WARMDOWN_ITERS=4 WARMUP_STEPS=2 VAL_LOSS_EVERY=4
        TRAIN_LOG_EVERY=1 VAL_MAX_TOKENS=8192 SEED=1337"
T=runs/teacher/teacher.pt
run() {  # NAME SCRIPT SETTINGS...
  local name=$1 script=$2; shift 2
  env $COMMON "$@" RUN_ID="$name" LOG_DIR="runs/$name" CHECKPOINT_PATH="runs/$name/$name.pt" \
    "$PY" "$REPO/$script" > "runs/$name.console" 2>&1 || { echo "$name FAILED"; tail -5 "runs/$name.console"; }
}
digest_run() {  # NAME: the numeric lines and the hashes of what the run wrote
  local name=$1
  grep -E '^(step:|final_|late_qat|warmup_step|stopping_early)' "runs/$name/$name.txt" | sed "s/train_time:[0-9]*ms step_avg:[0-9.]*ms//; s/eval_time:[0-9]*ms//" | sed "s/^/$name /"
  [ -f "runs/$name/$name.int6.ptz" ] && echo "$name artifact $(sha256sum < "runs/$name/$name.int6.ptz" | cut -c1-16)"
  echo "$name weights $("$PY" -c '
import hashlib, sys, torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["model"]
h = hashlib.sha256()
for k, v in sd.items():
    h.update(k.encode()); h.update(v.detach().reshape(-1).view(torch.uint8).numpy().tobytes())
print(h.hexdigest()[:16])' "runs/$name/$name.pt")"
}

rm -rf runs
mkdir -p runs
env $COMMON PRESET=demo-teacher CHECKPOINT_EVERY=0 ITERATIONS=6 RUN_ID=teacher LOG_DIR=runs/teacher CHECKPOINT_PATH=$T \
  "$PY" "$REPO/train_teacher.py" > runs/teacher.console 2>&1 || { echo "teacher FAILED"; tail -5 runs/teacher.console; }
digest_run teacher
for enc in fp16 packed; do
  PRESET=demo-student "$PY" "$REPO/cache_logits.py" --teacher $T --out runs/cache-$enc --k 32 --shards 1 --encoding $enc \
    > runs/cache-$enc.console 2>&1 || { echo "cache-$enc FAILED"; tail -5 runs/cache-$enc.console; }
  for f in runs/cache-$enc/*.npy; do echo "cache-$enc $(basename "$f") $(sha256sum < "$f" | cut -c1-16)"; done
done

C="LOGIT_CACHE=runs/cache-fp16 TEACHER_PATH=$T RESTRICT_TO_CACHE=1"
run baseline train_gpt.py
run soft-renorm distill.py DISTILL_CACHED=1 DISTILL_SOFT=1 DISTILL_TEMP=2 DISTILL_ALPHA=0.5 $C
run soft-bucket distill.py DISTILL_CACHED=1 DISTILL_SOFT=1 DISTILL_TEMP=2 DISTILL_ALPHA=0.5 DISTILL_TAIL=bucket $C
run soft-packed distill.py DISTILL_CACHED=1 DISTILL_SOFT=1 DISTILL_TEMP=2 DISTILL_ALPHA=0.5 LOGIT_CACHE=runs/cache-packed \
  TEACHER_PATH=$T RESTRICT_TO_CACHE=1
run hard distill.py DISTILL_CACHED=1 DISTILL_SOFT=0 DISTILL_ALPHA=0.3 $C
run online distill.py DISTILL_CACHED=0 DISTILL_SOFT=1 DISTILL_TEMP=2 DISTILL_ALPHA=0.5 TEACHER_PATH=$T
run online-hard distill.py DISTILL_CACHED=0 DISTILL_SOFT=0 DISTILL_ALPHA=0.3 TEACHER_PATH=$T
run faithful-soft distill.py DISTILL_SEED_FAITHFUL=1 DISTILL_CACHED=1 DISTILL_SOFT=1 DISTILL_TEMP=2 DISTILL_ALPHA=0.5 $C
run faithful-hard distill.py DISTILL_SEED_FAITHFUL=1 DISTILL_CACHED=1 DISTILL_SOFT=0 DISTILL_ALPHA=0.5 $C
ARMS=(baseline soft-renorm soft-bucket soft-packed hard online online-hard faithful-soft faithful-hard)
if [ "${IDENTITY_EXTRA_ARMS:-0}" = 1 ]; then
  run soft-renorm-new distill.py DISTILL_TEACHER=cache DISTILL_TARGET=soft DISTILL_TEMP=2 DISTILL_ALPHA=0.5 $C
  run hard-new distill.py DISTILL_TEACHER=cache DISTILL_TARGET=hard DISTILL_ALPHA=0.3 $C
  run online-new distill.py DISTILL_TEACHER=online DISTILL_TARGET=soft DISTILL_TEMP=2 DISTILL_ALPHA=0.5 TEACHER_PATH=$T
  ARMS+=(soft-renorm-new hard-new online-new)
fi
for a in "${ARMS[@]}"; do digest_run "$a"; done
