"""Benchmark: the cost of a distillation training step over a baseline step, side by side in one process.

    python bench/distill_step.py [--preset demo-student] [--teacher CKPT | --teacher-preset demo-teacher]
                                 [--arms baseline,soft,hard,online,sampled,ngram,ema,count,count_dense]
                                 [--draws 16] [--count-width 64]
                                 [--reps 100] [--warmup 5] [--seconds 0]
                                 [--threads N] [--clock wall|process] [--cache-dir DIR] [--json FILE]

Every arm is the same student (same preset, seed, data, batch) driven by the real training pieces:
golf.pipeline.BatchPipeline over golf.data.DistributedTokenLoader (teacher rows gathered in its prefetch
thread), the real objective under the run's autocast, backward over the micro-batches, grad clip, the Muon
and AdamW steps and the teacher's after-step update (golf.train.TrainState.advance, at progress 1.0 so every
distillation term is on; the final-weights EMA and logging, the same in every arm, left out).
- baseline: golf.objectives.CrossEntropyObjective (what train_gpt.py trains with: golf.losses.cross_entropy, the
  same CE that every distillation loss contains, so the comparison is fair);
- soft / hard: golf.objectives.DistillObjective + golf.teachers.CachedTeacher over a real cache that golf.cache_build wrote
  into a temp folder from the teacher (a random one of --teacher-preset's shape unless --teacher is given);
- online: DistillObjective with golf.teachers.OnlineTeacher, the teacher model run inside the step;
- sampled: soft targets from a cache of --draws draws per position (--encoding sampled-packed, built like the
  top-K cache, at DISTILL_TEMP), read as golf.teachers.Sampled rows;
- ngram: golf.teachers.NgramTeacher (NGRAM_* settings; NGRAM_PREPASS_TOKENS=0 here means the whole stream): its
  tables built in the first warm-up round with the clock running, as in a timed run, then queried and counted
  online each step; the build's seconds are printed;
- ema: golf.teachers.EmaTeacher, the student's own EMA (DISTILL_EMA_DECAY) run in the step and updated after it;
- count: a count teacher's signal (golf.signals.CountDist) of realistic widths made in the step from the batch
  (`SyntheticCountTeacher`: --count-width sparse entries, the bigram row of the previous token, a shared
  vector; its numbers are random, so the arm times the loss and making the signal, not a count model's query)
  and the objective's exact count KL at T = 1 (golf.losses, no N x V teacher tensor), as on the steps whose
  values are not logged (the teacher's entropy not computed; golf.objectives.DistillObjective.log_values);
- count_dense: the same distribution handed over as full log-probabilities (built N x V in the step, as a count
  teacher giving Logits must) and the dense KL at T = 1: what `count` replaces.
After --warmup untimed rounds, each of --reps rounds (or rounds until --seconds have passed) runs one step of
every arm in rotated order, so load drifts hit every arm alike. An arm's ratio is the median over rounds of
its step time over the baseline's in the same round (paired: the arms of a round run within about a second,
so the host's slow drifts cancel; on the shared 2-core VM its bootstrap 95% interval over 100 rounds is about
a third as wide as that of the ratio of the two medians, which is printed too). The JSON also holds the
warm-up's seconds (compiles included) and, on CUDA, each arm's peak memory over its timed steps. The last line
is `distill_step_ratio soft=X hard=Y online=Z sampled=S ngram=N ema=E count=C count_dense=D` (the paired ratios
over `baseline`, for the arms run).
"""
import dataclasses
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from tqdm import tqdm

from _common import (CLOCKS, bench_config, bootstrap_ci, build_temp_cache, load_note,
                     machine_line, make_teacher, max_rss_mib, median_ms, paired_ratio, rotations, set_threads, spread,
                     synthetic_count_dist, synthetic_count_rows, teacher_config, timed, train_files)
from golf.atomic import atomic_write_text
from golf.cache import CacheReader
from golf.codecs import ENCODINGS
from golf.config import Config
from golf.data import grad_accum_steps
from golf.dist import compile_enabled, init_dist, maybe_compile
from golf.errors import GolfError, cli_main
from golf.objectives import CrossEntropyObjective, distill_objective
from golf.teachers import CachedTeacher, EmaTeacher, Logits, NgramTeacher, OnlineTeacher, Teacher
from golf.train import TrainState

ARMS = ("baseline", "soft", "hard", "online", "sampled", "ngram", "ema", "count", "count_dense")
TEACHER_ARMS = ARMS[1:]


class SyntheticCountTeacher(Teacher):
    """A count teacher's signal, made in the step from the batch (bench/_common.synthetic_count_dist) over fixed
    stand-in bigram rows on the device; dense=True hands the same p over as Logits (N x V log-probs)."""

    name, where, track, gives_counts = "count", "step", "record", True

    def __init__(self, vocab_size: int, width: int, device, dense: bool = False):
        self.rows, self.width, self.dense = synthetic_count_rows(vocab_size, device), width, dense
        self.gives_counts = not dense

    @classmethod
    def from_config(cls, cfg, run):
        return cls(cfg.vocab_size, 64, run.ctx.device)

    def fetch(self, batch):
        x, y = batch.x.to(self.rows.device), batch.y.to(self.rows.device)
        signal = synthetic_count_dist(x, y, self.rows, self.width)
        return Logits(signal.dense_log_probs().view(*x.shape, -1)) if self.dense else signal


class Arm:
    """One student (golf.train.TrainState: model, optimizers, objective, teacher) and its batch pipeline; `step()`
    is the training loop's optimizer step (schedule, forward/backward over the micro-batches, clip, optimizers)."""

    def __init__(self, cfg: Config, ctx, files: list[str], objective):
        # as on the steps the training loop does not log (nearly all): a count teacher's KL value is not computed
        objective.log_values = False
        self.state = TrainState(cfg, ctx, files, objective)
        self.pipeline = self.state.pipeline()
        self.state.clock.start()  # as in the timed run: a teacher built on its first fetch builds in full

    def step(self):
        self.state.advance(self.pipeline, 1.0, 1.0)

    def close(self):
        self.pipeline.close()


def _options(p):
    p.add_argument("--arms", default="baseline,soft,hard,online", help=f"comma list from {', '.join(ARMS)}")
    p.add_argument("--draws", type=int, default=16, help="draws per position of the sampled arm's cache")
    p.add_argument("--count-width", type=int, default=64, help="sparse entries per position of the count arms")
    p.add_argument("--teacher", default="", help="teacher checkpoint (default: a random model of --teacher-preset)")
    p.add_argument("--teacher-preset", default="demo-teacher", help="shape of the random teacher")
    p.add_argument("--k", type=int, default=32, help="cached top-K")
    p.add_argument("--cache-shards", type=int, default=1, help="train shards to cache and train on (0 = all)")
    p.add_argument("--cache-dir", default="", help="existing cache for these shards (default: build one in a temp folder)")
    p.add_argument("--encoding", default="fp16", choices=ENCODINGS, help="encoding of the cache built here")
    p.add_argument("--reps", type=int, default=100, help="timed rounds (one step of every arm per round)")
    p.add_argument("--seconds", type=float, default=0, help="instead of --reps: timed rounds until this many seconds")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first (compile, allocator, caches)")
    p.add_argument("--max-total-seconds", type=float, default=0, help="also stop the timed rounds when the whole run "
                   "has taken this long (0 = no limit), so a slow compile shortens the measurement instead of killing it")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS), help="wall time, or CPU time of the process "
                   "(robust to other processes on the machine; CPU only, with OMP_WAIT_POLICY=PASSIVE)")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="2 warm-up and 3 timed rounds (smoke test)")


def arm_objective(cfg: Config, teacher, target: str):
    """The distillation objective of `cfg` with `target` and this teacher."""
    return distill_objective(dataclasses.replace(cfg, distill_target=target), teacher)


def ngram_teacher(cfg: Config, ctx, files: list[str]) -> NgramTeacher:
    """The n-gram teacher of cfg's NGRAM_* settings over `files`, its prepass the whole stream unless set."""
    ncfg = dataclasses.replace(cfg, distill_teacher="ngram", ngram_prepass_tokens=cfg.ngram_prepass_tokens or -1)
    return NgramTeacher.from_config(ncfg, SimpleNamespace(train_files=files, ctx=ctx))


def run_rounds(runs: dict, arms: list[str], args, ctx, t_run: float) -> dict:
    """--warmup untimed rounds, then timed rounds of one step per arm in rotated order; returns the step times,
    the warm-up's seconds (compiles included) and each arm's peak device memory over its timed steps (CUDA)."""
    times, peak = {name: [] for name in arms}, {name: 0 for name in arms}
    t0 = time.perf_counter()
    for rep in tqdm(range(args.warmup), desc="warm-up", disable=None):
        for name in rotations(arms, rep):
            runs[name].step()
    ctx.sync()
    warmup_s = time.perf_counter() - t0
    print(f"warm-up: {args.warmup} rounds in {warmup_s:.1f}s (compiles included), done at "
          f"{time.perf_counter() - t_run:.0f}s", flush=True)
    t_start, rep = time.perf_counter(), 0
    limit = args.max_total_seconds or float("inf")

    def more() -> bool:
        now = time.perf_counter()
        if rep > 0 and now - t_run >= limit:
            return False
        return rep < args.reps if not args.seconds else now - t_start < args.seconds

    cuda = ctx.device.type == "cuda"
    bar = tqdm(total=args.reps if not args.seconds else None, desc="timed rounds", disable=None)
    while more():
        for name in rotations(arms, rep):
            if cuda:  # outside the timed call: the peak of this arm's step alone
                torch.cuda.reset_peak_memory_stats(ctx.device)
            times[name].append(timed(runs[name].step, ctx, args.clock))
            if cuda:
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(ctx.device))
        rep += 1
        bar.update(1)
        if bar.disable and rep % 25 == 0:  # a sign of life in logs (tqdm is off there)
            print(f"timed rounds: {rep} at {time.perf_counter() - t_run:.0f}s", flush=True)
    bar.close()
    return {"times": times, "warmup_s": warmup_s, "peak_mib": {n: p / 2**20 if cuda else None for n, p in peak.items()}}


def make_arms(cfg: Config, ctx, files: list[str], arms: list[str], args, tmp: str) -> dict:
    """One Arm per name in `arms`: the top-K cache built into `tmp` (or --cache-dir's) for soft and hard, a cache
    of draws for sampled, the teacher (a checkpoint or a random --teacher-preset model) for online and for
    building the caches."""
    topk = [a for a in arms if a in ("soft", "hard")]
    compiled = compile_enabled(cfg.compile, ctx.device)
    teacher = tcfg = sha = None
    if "online" in arms or "sampled" in arms or (topk and not args.cache_dir):
        teacher, sha, tcfg = make_teacher(ctx, args.teacher, teacher_config(cfg, args.teacher_preset), cfg.vocab_size)
    print(f"student {cfg.num_layers}x{cfg.model_dim} batch {cfg.train_batch_tokens} seq {cfg.train_seq_len} "
          f"accum {grad_accum_steps(cfg, ctx.world_size)} compiled {compiled} | shards {len(files)} | alpha "
          f"{cfg.distill_alpha} T {cfg.distill_temp} tail {cfg.distill_tail} | teacher "
          + (f"{tcfg.num_layers}x{tcfg.model_dim} ({'checkpoint' if args.teacher else 'random'})" if tcfg else "-")
          + (f" | cache {args.cache_dir}" if args.cache_dir else ""))
    readers = {}
    for kind, wanted, encoding, k in (("topk", "soft" in arms or "hard" in arms, args.encoding, args.k),
                                      ("sampled", "sampled" in arms, "sampled-packed", args.draws)):
        if not wanted:
            continue
        cache_dir = args.cache_dir if kind == "topk" else ""
        if not cache_dir:
            cache_dir = os.path.join(tmp, f"cache-{kind}")
            stats = build_temp_cache(maybe_compile(teacher, cfg.compile, ctx.device), sha, tcfg, files, ctx,
                                     cache_dir, k, encoding, fixed_shape=compiled,
                                     temperature=cfg.distill_temp if kind == "sampled" else None)
            print(f"{kind} cache built: {stats['positions']} positions in {stats['seconds']:.1f}s "
                  f"({stats['tokens_per_s']:.0f} tokens/s)")
        readers[kind] = CacheReader(cache_dir, files, vocab_size=cfg.vocab_size)
    at_t1 = dataclasses.replace(cfg, distill_temp=1.0)
    makers = {
        "baseline": lambda: Arm(cfg, ctx, files, CrossEntropyObjective()),
        "soft": lambda: Arm(cfg, ctx, files, arm_objective(cfg, CachedTeacher(readers["topk"], "soft"), "soft")),
        "hard": lambda: Arm(cfg, ctx, files, arm_objective(cfg, CachedTeacher(readers["topk"], "hard"), "hard")),
        "online": lambda: Arm(cfg, ctx, files, arm_objective(
            cfg, OnlineTeacher(teacher, args.teacher or "random", sha, cfg.compile, ctx.device), "soft")),
        "sampled": lambda: Arm(cfg, ctx, files, arm_objective(cfg, CachedTeacher(readers["sampled"], "soft"), "soft")),
        "ngram": lambda: Arm(at_t1, ctx, files, arm_objective(at_t1, ngram_teacher(at_t1, ctx, files), "soft")),
        "ema": lambda: Arm(cfg, ctx, files, arm_objective(
            cfg, EmaTeacher(cfg.distill_ema_decay, cfg.compile, ctx.device), "soft")),
        # a count teacher's exact KL is at T = 1 (golf.objectives.check_teacher); its dense twin at T = 1 too
        "count": lambda: Arm(cfg, ctx, files, arm_objective(
            at_t1, SyntheticCountTeacher(cfg.vocab_size, args.count_width, ctx.device), "soft")),
        "count_dense": lambda: Arm(cfg, ctx, files, arm_objective(
            at_t1, SyntheticCountTeacher(cfg.vocab_size, args.count_width, ctx.device, dense=True), "soft")),
    }
    return {name: makers[name]() for name in arms}


def report(cfg: Config, ctx, arms: list[str], measured: dict, args) -> dict:
    """Print each arm's step time and ratios to the baseline; returns the JSON figures."""
    times, base = measured["times"], measured["times"]["baseline"]
    print(machine_line(ctx) + f" clock={args.clock}")  # the load during the run, not only before it
    figures = {"machine": machine_line(ctx), "clock": args.clock, "rounds": len(base), "config": cfg.to_dict(),
               "warmup_s": measured["warmup_s"], "max_rss_mib": max_rss_mib(), "arms": {}}
    for name in arms:
        ratio, paired = median_ms(times[name]) / median_ms(base), paired_ratio(times[name], base)
        lo, hi = bootstrap_ci(paired_ratio, times[name], base)
        peak = measured["peak_mib"][name]
        print(f"{name:9s} step {spread(times[name])}  paired ratio {paired:.3f} (95% {lo:.3f}-{hi:.3f}), "
              f"ratio of medians {ratio:.3f}" + (f", peak {peak:.0f} MiB" if peak is not None else ""))
        figures["arms"][name] = {"median_ms": median_ms(times[name]), "paired_ratio": paired, "paired_ci95": [lo, hi],
                                 "ratio_of_medians": ratio, "peak_mib": peak,
                                 "times_ms": [t * 1e3 for t in times[name]]}
    return figures


@cli_main
def main():
    t_run = time.perf_counter()
    cfg, args = bench_config(__doc__, _options)
    set_threads(args.threads)
    if args.quick:
        args.warmup, args.reps, args.seconds = 2, 3, 0
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms) or "baseline" not in arms:
        raise GolfError(f"--arms {args.arms!r}: a comma list from {', '.join(ARMS)} that includes baseline")
    if args.reps <= 0 and args.seconds <= 0:
        raise GolfError("need --reps > 0 or --seconds > 0")
    ctx = init_dist(cfg.device, cfg.dtype)
    if args.clock == "process" and ctx.device.type == "cuda":
        raise GolfError("--clock process measures CPU time only; use --clock wall on CUDA")
    files = train_files(cfg, args.cache_shards)
    print(machine_line(ctx))
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        runs = make_arms(cfg, ctx, files, arms, args, tmp)
        try:
            measured = run_rounds(runs, arms, args, ctx, t_run)
        finally:
            for run in runs.values():
                run.close()
    figures = report(cfg, ctx, arms, measured, args)
    if "ngram" in arms:
        ngram = runs["ngram"].state.teacher.model
        print(f"ngram build: {ngram.prepass} positions in {ngram.build_ms:.0f} ms "
              f"({ngram.prepass / max(ngram.build_ms, 1e-9) / 1e3:.2f} M tokens/s), counts "
              f"{ngram.counts.nbytes() / 2**20:.0f} MiB")
        figures["ngram_build"] = {"positions": ngram.prepass, "ms": ngram.build_ms, "count_bytes": ngram.counts.nbytes()}
    load_note(ctx)
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=1) + "\n")
    print("distill_step_ratio " + " ".join(f"{n}={figures['arms'][n]['paired_ratio']:.3f}"
                                           for n in TEACHER_ARMS if n in arms))


if __name__ == "__main__":
    main()
