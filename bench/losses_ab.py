"""Benchmark: two versions of golf/losses.py side by side in one process, on the real distillation step.

    python bench/losses_ab.py --against OLD/golf/losses.py [--preset demo-student] [--reps 30] [--threads N]
                              [--clock wall|process]

For checking that a change to the losses made training faster, not only the loss alone: separate runs of
bench/distill_step.py on a shared machine differ by more than a few percent, while arms alternating in one
process see the same load. Arms (rotated every round, as in bench/distill_step.py, whose Arm they use):
baseline and cached-soft students with the old losses, and the same with the current ones. Before each step
the loss functions that golf.objectives calls are pointed at that arm's version; everything else
(objectives, pipeline, cache, optimizer) is the real code. The last line is
`losses_ab soft_old=A soft_new=B base_new=C soft_new_over_old=D`: each soft arm over its own baseline, then
the new baseline and the new soft arm over their old counterparts (below 1 = the change made them faster), each
the median over rounds of the two arms' ratio in that round (paired, as in bench/distill_step.py).
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm

import golf.losses
import golf.objectives
from _common import (CLOCKS, bench_config, build_temp_cache, load_losses, load_note, machine_line, make_teacher,
                     paired_ratio, rotations, set_threads, spread, teacher_config, timed, train_files)
from distill_step import Arm
from golf.cache import CacheReader
from golf.dist import init_dist
from golf.errors import GolfError, cli_main
from golf.objectives import CrossEntropyObjective
from golf.teachers import CachedTeacher


class SoftObjective:
    """The cached soft arm of golf.objectives.DistillObjective, computed by the `distill_loss` of the losses module
    `_use` selected (older modules have no `distill_terms`), so both versions run the same objective."""

    parts, losses = ("ce", "kl"), golf.losses

    def __init__(self, cfg, teacher):
        self.cfg, self.teacher = cfg, teacher

    def __call__(self, model, batch, progress: float = 1.0):  # no schedule: the term is always on
        c = self.cfg
        return SoftObjective.losses.distill_loss(model(batch.x), batch.y, alpha=c.distill_alpha, mode="soft",
                                                 temperature=c.distill_temp, tail=c.distill_tail,
                                                 **batch.teacher.loss_inputs(batch.y.shape))


def _use(mod):
    """Point the loss functions the objectives call at module `mod`."""
    golf.objectives.cross_entropy = mod.cross_entropy
    SoftObjective.losses = mod


def _options(p):
    p.add_argument("--against", required=True, help="the other (older) golf/losses.py")
    p.add_argument("--teacher-preset", default="demo-teacher", help="shape of the random teacher of the cache")
    p.add_argument("--reps", type=int, default=30, help="timed rounds (one step of every arm per round)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS), help="as in bench/distill_step.py")
    p.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed rounds (smoke test)")


@cli_main
def main():
    cfg, args = bench_config(__doc__, _options)
    set_threads(args.threads)
    if args.quick:
        args.warmup, args.reps = 1, 2
    if args.reps <= 0:
        raise GolfError("need --reps > 0")
    old, new = load_losses(args.against), golf.losses
    ctx = init_dist(cfg.device, cfg.dtype)
    if args.clock == "process" and ctx.device.type == "cuda":
        raise GolfError("--clock process measures CPU time only; use --clock wall on CUDA")
    files = train_files(cfg, 1)
    teacher, sha, tcfg = make_teacher(ctx, "", teacher_config(cfg, args.teacher_preset), cfg.vocab_size)
    print(machine_line(ctx))
    print(f"student {cfg.num_layers}x{cfg.model_dim} batch {cfg.train_batch_tokens} | soft alpha {cfg.distill_alpha} "
          f"T {cfg.distill_temp} tail {cfg.distill_tail} | old losses {args.against}")
    with tempfile.TemporaryDirectory(prefix="bench_ab_") as tmp:
        build_temp_cache(teacher, sha, tcfg, files, ctx, os.path.join(tmp, "cache"))
        reader = CacheReader(os.path.join(tmp, "cache"), files)
        runs = {}
        for tag, mod in (("old", old), ("new", new)):
            runs[f"base_{tag}"] = (mod, Arm(cfg, ctx, files, CrossEntropyObjective()))
            runs[f"soft_{tag}"] = (mod, Arm(cfg, ctx, files, SoftObjective(cfg, CachedTeacher(reader, "soft"))))
        names = list(runs)

        def step(name):
            mod, arm = runs[name]
            _use(mod)
            arm.step()

        times = {name: [] for name in names}
        try:
            for rep in range(args.warmup):
                for name in rotations(names, rep):
                    step(name)
            for rep in tqdm(range(args.reps), desc="timed rounds", disable=None):
                for name in rotations(names, rep):
                    times[name].append(timed(lambda: step(name), ctx, args.clock))
        finally:
            _use(new)
            for _, arm in runs.values():
                arm.close()
    print(machine_line(ctx) + f" clock={args.clock}")
    for name in names:
        print(f"{name:9s} step {spread(times[name])}")
    load_note(ctx)
    pairs = {"soft_old": ("soft_old", "base_old"), "soft_new": ("soft_new", "base_new"),
             "base_new": ("base_new", "base_old"), "soft_new_over_old": ("soft_new", "soft_old")}
    print("losses_ab " + " ".join(f"{key}={paired_ratio(times[a], times[b]):.3f}" for key, (a, b) in pairs.items()))


if __name__ == "__main__":
    main()
