"""Micro-benchmark: a count teacher's exact KL alone, forward + backward, beside the dense KL to the same
distribution and the baseline's cross-entropy.

    python bench/count_kl.py [--n 4096] [--v 1024] [--width 64] [--alpha 0.5] [--reps 40] [--threads N]
                             [--clock wall|process] [--json FILE]

The same float32 logits (N x V, softcapped as the student's) go through
- ce: golf.losses.cross_entropy (the baseline's loss);
- count: golf.losses.distill_terms with a CountDist's count_* inputs (golf.signals.CountDist: --width sparse
  entries, the bigram row of the previous token, a shared vector; bench/_common.synthetic_count_dist), mixed
  (1 - a) CE + a KL at T = 1: one node for both, no N x V teacher tensor; as on a step whose values are not
  logged (the teacher's entropy not computed: count_entropy=False, golf.objectives);
- count_logged: the same with the KL's value exact (the teacher's entropy computed), as on a logged step;
- dense: the same p handed over as full log-probabilities (teacher_logits, as a count teacher giving Logits
  does today: the online teacher's exact full-vocabulary KL), mixed the same way; building the log-probs is
  the teacher's cost and not timed here.
Each repetition runs every arm in rotated order on a fresh leaf copy of the logits (the copy is not timed); the
KL values of count_logged and dense are checked to agree. Last line: `count_kl_ratio count=A count_logged=B
dense=C` (median fwd+bwd over ce's).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from tqdm import tqdm

from _common import (CLOCKS, load_note, machine_line, median_ms, rotations, set_threads, spread,
                     synthetic_count_dist, synthetic_count_rows, timed)
from golf.atomic import atomic_write_text
from golf.dist import init_dist
from golf.errors import GolfError, cli_main
from golf.losses import cross_entropy, distill_terms, mix


@cli_main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="tokens (rows): one demo-student micro-batch by default")
    ap.add_argument("--v", type=int, default=1024, help="vocabulary size")
    ap.add_argument("--width", type=int, default=64, help="sparse entries per position")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher term")
    ap.add_argument("--reps", type=int, default=40, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--clock", default="wall", choices=list(CLOCKS), help="as in bench/distill_step.py")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if not (args.n > 0 and 0 < args.width <= args.v and args.reps > 0):
        raise GolfError("need --n > 0, 0 < --width <= --v and --reps > 0")
    set_threads(args.threads)
    ctx = init_dist()
    g = torch.Generator().manual_seed(0)
    z0 = (30 * torch.tanh(torch.randn(args.n, args.v, generator=g) * 0.1)).to(ctx.device)
    x = torch.randint(0, args.v, (args.n,), generator=g).to(ctx.device)
    y = torch.randint(0, args.v, (args.n,), generator=g).to(ctx.device)
    signal = synthetic_count_dist(x, y, synthetic_count_rows(args.v, ctx.device), args.width)
    count_inputs = signal.loss_inputs(y.shape)
    dense_logp = signal.dense_log_probs()

    def mixed(z, **teacher):
        ce, kl, parts = distill_terms(z, y, mode="soft", temperature=1.0, **teacher)
        return mix(ce, kl, alpha=args.alpha, mode="soft"), parts["kl"]

    losses = {"ce": lambda z: (cross_entropy(z, y), None),
              "count": lambda z: mixed(z, count_entropy=False, **count_inputs),
              "count_logged": lambda z: mixed(z, **count_inputs),
              "dense": lambda z: mixed(z, teacher_logits=dense_logp)}
    names = list(losses)
    times, kl = {name: [] for name in names}, {}
    print(machine_line(ctx))
    for rep in tqdm(range(args.warmup + args.reps), desc="count kl bench", disable=None):
        for name in rotations(names, rep):
            z = z0.clone().requires_grad_(True)

            def step():
                loss, kl[name] = losses[name](z)
                loss.backward()

            t = timed(step, ctx, args.clock)
            if rep >= args.warmup:
                times[name].append(t)
    rel = abs(kl["count_logged"].item() - kl["dense"].item()) / kl["dense"].item()
    print(machine_line(ctx) + f" clock={args.clock}")
    print(f"N={args.n} V={args.v} W={args.width} alpha={args.alpha} kl count {kl['count_logged'].item():.6f} dense "
          f"{kl['dense'].item():.6f} rel_diff {rel:.1e}")
    if rel > 1e-4:
        raise GolfError(f"the count KL and the dense KL disagree (rel {rel:.1e}): golf/losses.py is wrong")
    for name in names:
        print(f"{name:6s} fwd+bwd {spread(times[name])}  over ce {median_ms(times[name]) / median_ms(times['ce']):.2f}x")
    load_note(ctx)
    med = {name: median_ms(times[name]) for name in names}
    ratio = {name: med[name] / med["ce"] for name in names[1:]}
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine_line(ctx), "clock": args.clock, "args": vars(args),
                                                 "median_ms": med, "ratio_to_ce": ratio,
                                                 "times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()}},
                                                indent=1) + "\n")
    print("count_kl_ratio " + " ".join(f"{name}={ratio[name]:.3f}" for name in names[1:]))


if __name__ == "__main__":
    main()
