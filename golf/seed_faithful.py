"""The study's defects (seed-factsheet 7.1), reproduced on purpose for the seed-faithful ablation arms
(DISTILL_SEED_FAITHFUL) and nowhere else: they wrap a correct teacher and a correct objective, whose code knows
nothing of them. Each is switchable on its own (`DISTILL_SEED_FAITHFUL=D1,D2,D4`; `1` or `all`: every defect the
arm's teacher and target can have, i.e. the study's own combinations: D1 (soft only), D2 and D4 for a cache;
D3 and D4 for an online teacher).

- D1: the per-token KL divided by the sequence length again (the study divided its already per-token mean by
  2048, so the soft term was 2048x too weak). Soft targets only.
- D2: cache rows read by the study's cursor: it starts at the cache's first row, advances by the micro-batch
  size, is the same on every rank and blind to the tokens being trained on, and restarts at row 0 when the next
  micro-batch would run past the study's cache (SEED_FAITHFUL_ROWS rows of SEED_FAITHFUL_ROW_LEN tokens, 4,096 x
  2,048 as the study's: a cycle of 85 micro-batches there), and again before the timed run. Cached teachers only.
- D3: the online teacher is loaded onto the device (its memory held) and never called: the loss is
  cross-entropy alone, the baseline's. Online teachers only, and no D1 with it (there is no KL term).
- D4: the compile warm-up runs the baseline's objective without the teacher, so the first timed step meets the
  distillation graph for the first time: with compile on, its compile lands inside the budget, and the
  wall-clock warm-down rule, which estimates the step time as elapsed / steps, sees a huge first step; at the
  study's scale that put the LR scale below QAT_THRESHOLD at step 1 (0.0385), so fake-int6 QAT ran for the whole
  run. Our losses run outside the compiled model, so only an online teacher's graph is new in step 1; with compile
  on, D4 therefore drops every compiled graph at the first timed step, which compiles them again inside the
  budget. With compile off (the CPU demo) nothing is compiled, so the first timed step instead waits the study's
  share of the budget (9,579 ms of 600 s, i.e. 1.6% of MAX_WALLCLOCK_SECONDS): the lost time and the first-step
  estimate are reproduced, the compile itself is not. Whether QAT then starts at step 1 depends on the run's
  warm-down length: the study's 1,600 steps did, the demo's 60 do not.
"""
import time

import torch

from golf.arms import defects
from golf.config import Config
from golf.data import Batch, Segment
from golf.signals import Signal
from golf.teachers import CachedTeacher, Teacher, TeacherWrapper

# The study's step 1 of the soft alpha 0.1 run (compile inside the budget), as a share of its 600 s budget.
STUDY_FIRST_STEP_SHARE = 9.579 / 600


class StudyCursorRows(TeacherWrapper):
    """D2 around a cached teacher: rows by the study's cursor instead of the batch's stream coordinates."""

    def __init__(self, inner: CachedTeacher, cycle_rows: int):
        super().__init__(inner)
        self.total_rows = min(sum(inner.reader.num_tokens), cycle_rows)
        self.cursor = 0

    @classmethod
    def from_config(cls, cfg, run):
        # No coverage check: the cursor never leaves the cache.
        return cls(CachedTeacher.open(cfg, run), cfg.seed_faithful_rows * cfg.seed_faithful_row_len)

    def reset(self):
        self.cursor = 0

    def _cursor_segments(self, n: int) -> list[Segment]:
        if self.cursor + n > self.total_rows:
            self.cursor = 0
        segments, start, left = [], self.cursor, n
        for shard, rows in enumerate(self.inner.reader.num_tokens):
            if start < rows and left > 0:
                k = min(rows - start, left)
                segments.append((shard, start, k))
                left -= k
                start = 0
            else:
                start -= rows
        self.cursor += n
        return segments

    def fetch(self, batch: Batch) -> Signal:
        n = batch.x.numel()
        return self.inner.rows(self._cursor_segments(n), n)


class KLOverSeqLen:
    """D1 around a distillation objective: its teacher term divided by the sequence length before mixing."""

    def __init__(self, inner, seq_len: int):
        self.inner, self.seq_len = inner, seq_len
        self.parts, self.teacher, self.schedule = inner.parts, inner.teacher, inner.schedule

    def __call__(self, model, batch: Batch, progress: float = 0.0):
        ce, term, parts = self.inner.terms(model, batch)  # the term is always on: golf.arms refuses a schedule here
        return self.inner.mix(ce, term / self.seq_len, progress), parts


def _drop_compiled_graphs():
    """torch._dynamo.reset(), keeping the compile observers (golf.dist.CompileWatch) that it would drop too."""
    from torch._dynamo.callback import callback_handler

    starts, ends = list(callback_handler.start_callbacks), list(callback_handler.end_callbacks)
    torch._dynamo.reset()
    for cb in starts:
        if cb not in callback_handler.start_callbacks:
            callback_handler.register_start_callback(cb)
    for cb in ends:
        if cb not in callback_handler.end_callbacks:
            callback_handler.register_end_callback(cb)


class WarmupWithoutTeacher:
    """D4 around an objective: the warm-up runs the baseline's objective (`warmup_objective`, which golf.train's
    warm-up uses instead of the objective), so an online teacher is first compiled in timed step 1. Our losses run
    outside the compiled model, so a cached arm's graph would not change there as the study's (loss inside the
    compiled forward) did: with compile on, the first timed call therefore drops every compiled graph, which the
    step then compiles again inside the budget; with compile off it waits `stall_s` (the module docstring)."""

    def __init__(self, inner, stall_s: float, warmup_objective, recompile: bool = False):
        self.inner, self.stall_s, self.recompile, self.first = inner, stall_s, recompile, True
        self.parts, self.teacher, self.schedule = inner.parts, inner.teacher, inner.schedule
        self.warmup_objective = warmup_objective

    def __call__(self, model, batch: Batch, progress: float = 0.0):
        if self.first:
            self.first = False
            if self.recompile:
                _drop_compiled_graphs()
            else:
                time.sleep(self.stall_s)
        return self.inner(model, batch, progress)


def build_teacher(cfg: Config, run, chosen: frozenset, build_correct) -> Teacher:
    """The arm's teacher, with D2 if chosen (`build_correct` builds the plain one)."""
    return StudyCursorRows.from_config(cfg, run) if "D2" in chosen else build_correct(cfg, run)


def wrap_objective(cfg: Config, objective, chosen: frozenset, compiled: bool, cross_entropy_objective):
    """The objective with D3, D1 and D4 applied as chosen; `cross_entropy_objective(teacher)` makes the baseline's
    objective (golf.objectives.CrossEntropyObjective, passed in: that module imports this one)."""
    if "D3" in chosen:
        objective = cross_entropy_objective(objective.teacher)
    if "D1" in chosen:
        objective = KLOverSeqLen(objective, cfg.train_seq_len)
    if "D4" in chosen:
        stall = 0.0 if compiled else STUDY_FIRST_STEP_SHARE * max(cfg.max_wallclock_seconds, 0.0)
        objective = WarmupWithoutTeacher(objective, stall, cross_entropy_objective(None), recompile=compiled)
    return objective


_WHAT = {"D1": "KL divided by TRAIN_SEQ_LEN (D1)",
         "D2": "cache rows read by the study's per-rank cursor, independent of the tokens (D2)",
         "D3": "online teacher loaded and never called (D3)",
         "D4": "warm-up without the teacher, the distillation graph first met in timed step 1 (D4)"}


def describe(cfg: Config) -> str:
    """The log line that says which defects the arm reproduces."""
    return ("distill:SEED_FAITHFUL reproducing the study's defects on purpose: "
            + ", ".join(_WHAT[d] for d in sorted(defects(cfg))))
