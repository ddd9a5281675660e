"""Micro-benchmark: the training losses alone, forward + backward, side by side: CE, hard and soft distillation.

    python bench/loss_cost.py [--n 4096] [--reps 60] [--against OLD/golf/losses.py] [--threads N]
                              [--clock wall|process] [--json FILE]

What a distillation step adds to a baseline step, without the model: the same float32 logits (N x V,
softcapped, as the student's forward returns them: its softcap runs in float32 under autocast too) go
through golf.losses.cross_entropy (the baseline), the hard loss (one teacher label per token) and the soft
loss (cached top-K at temperature T, renormalised tail), with the teacher's ids and values converted as
golf.distill.DistillObjective does (int16 -> int64, fp16 -> fp32).
With --against, the same three losses from another golf/losses.py run as arms ce_old, hard_old, soft_old
beside them (for a change to the losses; bench/losses_ab.py does the same on the whole step).
Each repetition runs every arm in rotated order on a fresh leaf copy of the logits (the copy is not timed).
The process is set up as every training process is (golf.dist.init_dist, so glibc keeps freed memory).
Last line: `loss_cost_ms ce=A hard=B soft=C` (medians; then ce_old=... with --against).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from tqdm import tqdm

import golf.losses
from _common import CLOCKS, load_losses, load_note, machine_line, median_ms, rotations, set_threads, spread, timed
from golf.atomic import atomic_write_text
from golf.dist import init_dist
from golf.errors import GolfError, cli_main


@cli_main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="tokens (rows): one demo-student micro-batch by default")
    ap.add_argument("--v", type=int, default=1024, help="vocabulary size")
    ap.add_argument("--k", type=int, default=32, help="cached top-K")
    ap.add_argument("--temperature", type=float, default=2.0, help="soft KL temperature")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher term")
    ap.add_argument("--reps", type=int, default=60, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed repetitions first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--clock", default="wall", choices=list(CLOCKS), help="as in bench/distill_step.py")
    ap.add_argument("--against", default="", help="also time the losses of this other golf/losses.py")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if not (args.n > 0 and 0 < args.k <= args.v and args.reps > 0 and args.temperature > 0):
        raise GolfError("need --n > 0, 0 < --k <= --v, --reps > 0 and --temperature > 0")
    set_threads(args.threads)
    ctx = init_dist()
    g = torch.Generator().manual_seed(0)
    z0 = (30 * torch.tanh(torch.randn(args.n, args.v, generator=g) * 0.1)).to(ctx.device)
    y = torch.randint(0, args.v, (args.n,), generator=g).to(ctx.device)
    vals, idx = torch.log_softmax(torch.randn(args.n, args.v, generator=g) * 3, -1).topk(args.k, -1)
    idx16, vals16 = idx.to(ctx.device, torch.int16), vals.to(ctx.device, torch.float16)  # as cached

    def teacher():
        return {"idx": idx16.long(), "vals": vals16.float()}

    def arms(mod, suffix=""):
        return {
            "ce" + suffix: lambda z: mod.cross_entropy(z, y),
            "hard" + suffix: lambda z: mod.distill_loss(z, y, alpha=args.alpha, mode="hard",
                                                        teacher_top1=idx16[:, 0].long())[0],
            "soft" + suffix: lambda z: mod.distill_loss(z, y, alpha=args.alpha, mode="soft",
                                                        temperature=args.temperature, **teacher())[0],
        }

    losses = arms(golf.losses) | (arms(load_losses(args.against), "_old") if args.against else {})
    names = list(losses)
    times = {name: [] for name in names}
    print(machine_line(ctx))
    for rep in tqdm(range(args.warmup + args.reps), desc="loss bench", disable=None):
        for name in rotations(names, rep):
            z = z0.clone().requires_grad_(True)
            t = timed(lambda: losses[name](z).backward(), ctx, args.clock)
            if rep >= args.warmup:
                times[name].append(t)
    print(machine_line(ctx) + f" clock={args.clock}")
    print(f"N={args.n} V={args.v} K={args.k} T={args.temperature} alpha={args.alpha}")
    for name in names:
        ce = "ce_old" if name.endswith("_old") else "ce"
        extra = median_ms(times[name]) - median_ms(times[ce])
        print(f"{name:8s} fwd+bwd {spread(times[name])}  over {ce} {extra:+.2f} ms")
    load_note(ctx)
    med = {name: median_ms(times[name]) for name in names}
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine_line(ctx), "clock": args.clock, "args": vars(args),
                                                 "median_ms": med, "times_ms": {k: [t * 1e3 for t in v] for k, v in
                                                                                times.items()}}, indent=1) + "\n")
    print("loss_cost_ms " + " ".join(f"{name}={med[name]:.2f}" for name in names))


if __name__ == "__main__":
    main()
