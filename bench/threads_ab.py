"""Benchmark: OpenMP thread settings side by side on a short fixed-step demo training (the student of
`./run.sh demo`), alternated A/B/C... in every round so that the load of other jobs falls on all alike.

    python bench/threads_ab.py [--rounds 4] [--steps 30] [--data data/datasets/demo_sp1024]
        [--variants default,OMP_WAIT_POLICY=PASSIVE,OMP_NUM_THREADS=1]

Each run: `PRESET=demo-student ITERATIONS=steps MAX_WALLCLOCK_SECONDS=0 python train_gpt.py` with the variant's
environment (a variant is a comma-free list of NAME=VALUE joined by '+', or "default": the caller's environment
without OMP_WAIT_POLICY and OMP_NUM_THREADS). Steps/s = steps / the run's timed training (train_end's train_ms).
Per round each variant's ratio to the first; last line `threads_ab <variant>=<median ratio> ...`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(variant: str, steps: int, data: str, tok: str, work: str, i: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "PRESET")}
    if variant != "default":
        env.update(kv.split("=", 1) for kv in variant.split("+"))
    env.update(PRESET="demo-student", ITERATIONS=str(steps), MAX_WALLCLOCK_SECONDS="0", VAL_LOSS_EVERY="0",
               WARMDOWN_ITERS=str(steps // 3), VAL_MAX_TOKENS="8192", RUN_ID=f"ab{i}", LOG_DIR=work,
               CHECKPOINT_PATH=os.path.join(work, f"ab{i}.pt"), DATA_PATH=data, TOKENIZER_PATH=tok,
               PYTHONPATH=REPO)
    subprocess.run([sys.executable, os.path.join(REPO, "train_gpt.py")], env=env, cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(work, f"ab{i}.jsonl")) as f:
        end = next(e for e in map(json.loads, f) if e.get("event") == "train_end")
    return end["step"] / (end["train_ms"] / 1000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data", default="data/datasets/demo_sp1024")
    ap.add_argument("--tokenizer", default="data/tokenizers/demo_1024_bpe.model")
    ap.add_argument("--variants", default="default,OMP_WAIT_POLICY=PASSIVE,OMP_NUM_THREADS=1")
    args = ap.parse_args()
    variants = args.variants.split(",")
    data, tok = os.path.abspath(args.data), os.path.abspath(args.tokenizer)
    ratios = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as work:
        i = 0
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate who goes first
            rate = {}
            for v in order:
                rate[v] = run(v, args.steps, data, tok, work, i)
                i += 1
            for v in variants:
                ratios[v].append(rate[v] / rate[variants[0]])
            print(f"round {r + 1} " + " ".join(f"{v}:{rate[v]:.2f}steps/s({rate[v] / rate[variants[0]]:.2f}x)"
                                               for v in variants), flush=True)
    print("threads_ab " + " ".join(f"{v}={statistics.median(x):.2f}" for v, x in ratios.items()))


if __name__ == "__main__":
    main()
