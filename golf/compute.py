"""What a run cost in seconds and FLOPs, its teacher's training and its logit cache counted (DESIGN.md: arms are
compared at equal total compute). `run_cost(run)` takes a run as golf.runs reads it (a RunRecord: script,
config, world_size, train_end) and returns a `Cost`.

Rules (approximations said as such):
- Seconds are each job's own wall clock as it logged it: the run's train_end train_ms (in-budget teacher work,
  the n-gram counting or the EMA teacher's forward, is inside it), the teacher run's train_end train_ms, the
  cache manifest's build_seconds. They may come from different machines and world sizes; FLOPs do not.
- Tokens trained = steps x tokens per optimizer step. TRAIN_BATCH_TOKENS is the global batch, all ranks together
  (golf.data.local_tokens splits it over world_size x grad-accumulation micro-batches); the per-step count is
  taken from that split, so a batch that does not divide evenly counts what the loader really read.
- N = every parameter of the model (GPT.num_params): embeddings included, since the tied embedding is also the
  output head's matmul (the BigramHash table, a pure lookup, is counted too: a slight over-count). Training =
  6 N D, a forward alone = 2 N D. Attention's sequence-length term is ignored (an approximation: at these widths
  and 256-2048 tokens of context it is a minor share).
- DISTILL_TEACHER=cache: the cache folder LOGIT_CACHE's manifest gives cache_s (build_seconds) and the teacher's
  configuration. Building it ran the teacher over windows of `window` tokens advancing by `stride`, per shard
  (golf.cache_build.plan_windows: a window straddling two shards is run for each, a short last window is padded
  to full length), so tokens forwarded = that window count x window (about cached tokens x window / stride);
  teacher_flops adds 2 N_teacher x that. An n-gram cache (its teacher config is NGRAM_* settings, no model) has
  no matmuls, 0 FLOPs, and no teacher training (its counting is part of the build_seconds).
- A checkpoint teacher's training (cache and online arms): TEACHER_PATH is `<dir>/<name>.pt` and its run's metrics
  file `<dir>/<name>.jsonl` (run.sh's layout); teacher_train_s is its train_end train_ms, and teacher_flops adds
  6 N_teacher x its tokens trained. The checkpoint itself is never loaded: without the metrics file the cost is
  marked unknown.
- DISTILL_TEACHER=online: student_flops adds 2 N_teacher x tokens the teacher scored, and =ema 2 N_student x them
  (the EMA weights are the student's shape; their per-step update is elementwise, ignored). The teacher is asked
  only while the schedule has its term on (golf.objectives.DistillSchedule: from DISTILL_START_FRAC until
  DISTILL_STOP_FRAC of the run's progress, which is wall clock under a budget); the tokens it scored are taken as
  that fraction of the tokens trained: an approximation by fraction of steps (steps with the teacher on are
  slower, so under a wall-clock budget this slightly over-counts).
- DISTILL_TEACHER=ngram: counting only, 0 FLOPs, its time inside student_s.
- Seed-faithful arms cost what their teacher kind costs, except D3 (the online teacher is loaded and never
  called, golf.seed_faithful): no forward FLOPs; its teacher's training still counts (the run loads it).
- Each arm counts its teacher's training and its cache in full, even when other arms share them.
- A run without train_end (unfinished) costs nothing known: zeros, known False.
"""
import functools
import json
import os
from dataclasses import dataclass

# No torch at import time: golf.study imports this module and golf.results stays quick (golf/arms.py); what needs
# torch (the model, the data split) is imported where it is used.
from golf.arms import defects
from golf.config import Config
from golf.runs import cache_manifest, parse_run, teacher_metrics_path


@dataclass(frozen=True)
class Cost:
    student_s: float = 0.0  # the run's own training time
    teacher_train_s: float = 0.0  # training the checkpoint teacher it distils from (0: none, or in budget)
    cache_s: float = 0.0  # building the logit cache it reads (0: none)
    student_flops: float = 0.0  # 6 N D, plus an online or EMA teacher's forward
    teacher_flops: float = 0.0  # the teacher's training and the cache build's forward
    missing: tuple[str, ...] = ()  # what could not be found (then the totals are lower bounds)

    @property
    def known(self) -> bool:
        return not self.missing

    @property
    def total_s(self) -> float:
        return self.student_s + self.teacher_train_s + self.cache_s

    @property
    def total_flops(self) -> float:
        return self.student_flops + self.teacher_flops


def num_params(config: dict) -> int:
    """Every parameter of the GPT of this configuration (built on the meta device: no memory, no init)."""
    return _num_params(json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _num_params(config_json: str) -> int:
    import torch

    from golf.model import GPT

    with torch.device("meta"):
        return GPT(Config.from_dict(json.loads(config_json))).num_params()


def tokens_per_step(config: dict, world_size: int = 1) -> int:
    """Tokens one optimizer step trains on, all ranks and micro-batches together."""
    from golf.data import grad_accum_steps, local_tokens

    cfg = Config.from_dict(config)
    accum = grad_accum_steps(cfg, world_size)
    return world_size * accum * local_tokens(cfg.train_batch_tokens, cfg.train_seq_len, accum, world_size)


def _trained(run) -> tuple[float, float]:
    """(seconds, tokens trained) of a finished run."""
    return run.train_end["train_ms"] / 1000, run.train_end["step"] * tokens_per_step(run.config, run.world_size)


def _teacher_run(path: str) -> tuple[object, str | None]:
    """The finished run that trained checkpoint `path`, or (None, what is missing)."""
    metrics = teacher_metrics_path(path)
    if not os.path.isfile(metrics):
        return None, f"teacher training time of {path}: no metrics file {metrics}"
    run = parse_run(metrics)
    if not run.train_end:
        return None, f"teacher training time of {path}: {metrics} has no train_end (its training did not finish)"
    return run, None


def _forwarded_tokens(manifest: dict) -> int:
    """Tokens the teacher ran over to build the cache: per shard, the windows scoring its positions, each
    `window` long (golf.cache_build.plan_windows)."""
    from golf.cache_build import window_of

    window, stride = manifest["window"], manifest["stride"]
    total, lo = 0, 0
    for shard in manifest["shards"]:
        hi = lo + shard["num_tokens"]
        if hi > lo:
            total += (window_of(hi - 1, window, stride) - window_of(lo, window, stride) + 1) * window
        lo = hi
    return total


def _cache(folder: str) -> tuple[float, float, bool, list[str]]:
    """(build seconds, build FLOPs, whether its teacher is a trained checkpoint, what is missing) of a cache."""
    m = cache_manifest(folder) if folder else {}
    if not m:
        return 0.0, 0.0, True, [f"cache build of {folder!r}: no readable manifest.json there"]
    tcfg = (m.get("teacher") or {}).get("config") or {}
    # An n-gram cache's teacher config is its NGRAM_* settings alone (cache_logits.py); a checkpoint's is a whole
    # Config, which has an ngram_order field too. An n-gram: counts, no matmuls, no teacher training.
    checkpoint = not ("ngram_order" in tcfg and "model_dim" not in tcfg)
    flops = 2 * num_params(tcfg) * _forwarded_tokens(m) if checkpoint else 0.0
    if m.get("build_seconds") is None:
        return 0.0, flops, checkpoint, [f"cache build time of {folder}: its manifest has no build_seconds"]
    return float(m["build_seconds"]), flops, checkpoint, []


def run_cost(run) -> Cost:
    """What `run` (a golf.runs.RunRecord, or anything with its script, config, world_size, train_end) cost."""
    if not run.train_end:
        return Cost(missing=("the run has not finished",))
    cfg, kind = run.config, run.config.get("distill_teacher")
    student_s, tokens = _trained(run)
    n = num_params(cfg)
    student_flops, teacher_s, cache_s, teacher_flops, missing = 6 * n * tokens, 0.0, 0.0, 0.0, []
    if run.script != "distill.py" or kind == "ngram":  # student only (an n-gram's counting is in student_s)
        return Cost(student_s, student_flops=student_flops)
    # Tokens an in-step teacher scored: those of the steps its term is on (the module docstring).
    scored = tokens * max(0.0, min(cfg.get("distill_stop_frac", 1.0), 1.0) - cfg.get("distill_start_frac", 0.0))
    if kind == "ema":
        return Cost(student_s, student_flops=student_flops + 2 * n * scored)
    checkpoint_teacher = True
    if kind == "cache":
        cache_s, teacher_flops, checkpoint_teacher, missing = _cache(cfg.get("logit_cache", ""))
    if checkpoint_teacher:
        path = cfg.get("teacher_path", "")
        teacher, why = _teacher_run(path) if path else (None, "teacher training time: the run logged no TEACHER_PATH")
        if why:
            missing.append(why)
        else:
            teacher_s, teacher_tokens = _trained(teacher)
            n_teacher = num_params(teacher.config)
            teacher_flops += 6 * n_teacher * teacher_tokens
            if kind == "online" and "D3" not in defects(Config.from_dict(cfg)):  # D3: loaded, never called
                student_flops += 2 * n_teacher * scored
    return Cost(student_s, teacher_s, cache_s, student_flops, teacher_flops, tuple(missing))
