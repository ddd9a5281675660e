"""The study's defects, reproduced on purpose for the seed-faithful ablation arm (DISTILL_SEED_FAITHFUL=1) and
nowhere else: they wrap a correct teacher and a correct objective, whose code knows nothing of them.

- D1: the per-token KL divided by the sequence length again (the study divided its already per-token mean by
  2048, making the soft term 2048x too weak). Applies to soft targets.
- D2: cache rows read by a cursor that starts at the cache's first row, advances by the micro-batch size and
  is the same on every rank, blind to the tokens being trained on; it restarts at row 0 when the next
  micro-batch would run past the cache, and again before the timed run (the warm-up's rows are re-read).
"""
from golf.config import Config
from golf.data import Batch, Segment
from golf.teachers import CachedTeacher, Signal, Teacher, build_teacher as build_correct_teacher


class StudyCursorRows(Teacher):
    """D2 around a cached teacher: rows by the study's per-rank cursor instead of the batch's coordinates."""

    where, track = "loader", "non-record"

    def __init__(self, inner: CachedTeacher):
        self.inner, self.name = inner, inner.name
        self.total_rows = sum(inner.reader.num_tokens)
        self.cursor = 0

    @classmethod
    def from_config(cls, cfg, run):
        return cls(CachedTeacher.open(cfg, run))  # no coverage check: the cursor never leaves the cache

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

    @property
    def source(self):
        return self.inner.source

    @property
    def sha256(self):
        return self.inner.sha256

    def log_lines(self):
        return self.inner.log_lines()


class KLOverSeqLen:
    """D1 around a distillation objective: its teacher term divided by the sequence length before mixing."""

    def __init__(self, inner, seq_len: int):
        self.inner, self.seq_len = inner, seq_len
        self.parts, self.teacher = inner.parts, inner.teacher

    def __call__(self, model, batch: Batch):
        ce, term, parts = self.inner.terms(model, batch)
        return self.inner.mix(ce, term / self.seq_len), parts


def build_teacher(cfg: Config, run) -> Teacher:
    """The arm's teacher with D2 where it has cache rows to misalign (the online teacher is left as it is)."""
    if cfg.distill_teacher == "cache":
        return StudyCursorRows.from_config(cfg, run)
    return build_correct_teacher(cfg, run)


def wrap_objective(cfg: Config, objective):
    """The objective with D1 where it has a KL term."""
    return KLOverSeqLen(objective, cfg.train_seq_len) if cfg.distill_target == "soft" else objective


def describe(cfg: Config) -> str:
    """The log line that says which defects the arm reproduces."""
    defects = (["KL divided by TRAIN_SEQ_LEN (D1)"] if cfg.distill_target == "soft" else []) + (
        ["cache rows read by a per-rank cursor independent of the tokens (D2)"] if cfg.distill_teacher == "cache" else [])
    return "distill:SEED_FAITHFUL reproducing the study's defects on purpose: " + ", ".join(defects)
