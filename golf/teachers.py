"""Teachers: where each position's distillation signal comes from.

Every teacher implements `Teacher`: built from the config by `from_config` (all refusals happen there, before
the logs open), given the training state by `bind` (a teacher built from the student itself takes its weights
there), `reset` at the start of the warm-up and again of the timed run, `fetch(batch)` returning a typed
`Signal` aligned to the batch's positions, and `after_step(state)` after every timed optimizer step (the EMA
teacher updates its weights there); a teacher with state of its own hands it to resumable checkpoints
(`resume_state` / `load_resume_state`). Where `fetch` runs is the teacher's `where`: "loader" (in the
prefetch thread, on host data, moved to the device with the batch) or "step" (inside the training step, on
the device, under autocast). `track` says whether its whole cost is inside the timed budget ("record") or
was partly paid before it, e.g. a teacher trained for hours ("non-record").

A new teacher is one class here (or in its own module) plus its line in `TEACHERS`; DISTILL_TEACHER picks it
(`check_teachers` refuses a name not there, and runs each teacher's `check_settings` on its own settings).
The objective (golf/objectives.py) consumes the signal without knowing where it came from.
"""
import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from golf.cache import CacheReader
from golf.checkpoint import checkpoint_sha256, load_teacher
from golf.config import Config, check_choice, owner_check
from golf.data import Batch, Segment, grad_accum_steps, tokens_read_per_batch
from golf.dist import maybe_compile
from golf.errors import GolfError
from golf.ngram import StreamNgram
from golf.optim import warmup_plan

# ----------------------------------------------------------------------------------------------------------
# Signals: what a teacher says about the positions of one batch (rows in the order of batch.x.flatten())


@dataclass
class Signal(ABC):
    """Base of the signals; every field is a tensor whose first dimension runs over the batch's positions."""

    def apply(self, fn) -> "Signal":
        """The same signal with `fn` applied to every tensor (pinning, moving to the device)."""
        return dataclasses.replace(self, **{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                                            for f in dataclasses.fields(self)})

    @abstractmethod
    def loss_inputs(self, shape: torch.Size) -> dict:
        """The teacher keywords of golf.losses.distill_terms, widened and shaped like the targets `shape`."""


def _valid_input(valid, shape) -> dict:
    return {} if valid is None else {"teacher_valid": valid.view(shape)}


@dataclass
class TopK(Signal):
    """The teacher's top-K ids and log-probabilities at T = 1, sorted descending (compact dtypes: int16 /
    float16 from a cache, widened on the device)."""

    ids: torch.Tensor  # (n, K)
    logprobs: torch.Tensor  # (n, K)
    valid: torch.Tensor | None = None  # bool (n,): False where the row is not about the student's target

    def loss_inputs(self, shape):
        k = self.ids.shape[-1]
        return {"idx": self.ids.long().view(*shape, k), "vals": self.logprobs.float().view(*shape, k),
                **_valid_input(self.valid, shape)}


@dataclass
class Top1(Signal):
    """The teacher's most likely next token (a hard label)."""

    ids: torch.Tensor  # (n,)
    valid: torch.Tensor | None = None  # as TopK's

    def loss_inputs(self, shape):
        return {"teacher_top1": self.ids.long().view(shape), **_valid_input(self.valid, shape)}


@dataclass
class Sampled(Signal):
    """N draws with replacement from the teacher's distribution at the distillation temperature, as each row's
    distinct ids and how many of the N draws each got (Anshumann et al. 2025): counts / N is an unbiased
    estimate of the tempered distribution. Rows are ragged, so they come padded to the batch's widest row;
    a padding entry has count 0 (its id is arbitrary and contributes nothing)."""

    ids: torch.Tensor  # (n, M) distinct sampled ids
    counts: torch.Tensor  # (n, M) draws per id, summing to N over a row (0 on padding)
    valid: torch.Tensor | None = None  # as TopK's

    def loss_inputs(self, shape):
        m = self.ids.shape[-1]
        return {"sample_ids": self.ids.long().view(*shape, m), "sample_counts": self.counts.float().view(*shape, m),
                **_valid_input(self.valid, shape)}


@dataclass
class Logits(Signal):
    """The teacher's full-vocabulary logits (an online teacher)."""

    logits: torch.Tensor  # (..., V) shaped like the batch

    def loss_inputs(self, shape):
        return {"teacher_logits": self.logits}


# ----------------------------------------------------------------------------------------------------------
# The interface


class Teacher(ABC):
    name: str  # its DISTILL_TEACHER value
    where: str  # "loader" | "step": where fetch runs
    track: str  # "record" (whole cost inside the budget) | "non-record"

    @classmethod
    def check_settings(cls, cfg: Config) -> None:
        """Refuse a bad value of the teacher's own settings with a GolfError, from the configuration alone. Run
        for every registered teacher, whichever the run uses (eval_bpb.py and cache_logits.py read the n-gram's
        settings too), by golf.config.validate, so before any work starts (default: nothing to check)."""

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Config, run) -> "Teacher":
        """Build it for the run (golf.runner.Run), refusing bad input with a GolfError; may restrict the run's
        train shards. Called before the logs open."""

    def bind(self, state) -> None:
        """Called once the training state (golf.train.TrainState) exists, before the warm-up."""

    def reset(self) -> None:
        """Back to the start of the stream: before the warm-up and again before the timed run."""

    def after_step(self, state) -> None:
        """Called by TrainState.advance after every timed optimizer step (inside the step's time), not in the
        warm-up."""

    def resume_state(self) -> dict | None:
        """What a resumable checkpoint must carry for the run to continue exactly (None: nothing; a loader-side
        teacher's position rides with the loader's)."""
        return None

    def load_resume_state(self, saved: dict | None) -> None:
        """Take back `resume_state` from a resumable checkpoint (after `bind`)."""
        if saved is not None:
            raise GolfError(f"the resumable checkpoint carries the state of a DISTILL_TEACHER={saved['teacher']} "
                            f"teacher, not of {self.name}; resume with the run's own settings")

    @abstractmethod
    def fetch(self, batch: Batch) -> Signal:
        """The signal for every position of `batch`."""

    @property
    def source(self) -> str:
        """Where it comes from (a cache folder, a checkpoint), for the arm line."""
        return "-"

    @property
    def sha256(self) -> str:
        """The teacher checkpoint's sha256 ('' when there is none)."""
        return ""

    def log_lines(self) -> list[str]:
        """Lines the run logs about it once the logs are open."""
        return []


class TeacherWrapper(Teacher):
    """A teacher that changes what another (`inner`) says and is otherwise that teacher: its name, place, track,
    source, hooks and resumable state (sampled targets drawn from it; the seed-faithful D2 cursor)."""

    def __init__(self, inner: Teacher):
        self.inner = inner
        self.name, self.where, self.track = inner.name, inner.where, inner.track

    def bind(self, state):
        self.inner.bind(state)

    def reset(self):
        self.inner.reset()

    def after_step(self, state):
        self.inner.after_step(state)

    def resume_state(self):
        return self.inner.resume_state()

    def load_resume_state(self, saved):
        self.inner.load_resume_state(saved)

    @property
    def source(self):
        return self.inner.source

    @property
    def sha256(self):
        return self.inner.sha256

    def log_lines(self):
        return self.inner.log_lines()


# ----------------------------------------------------------------------------------------------------------
# Teachers prepared before the run (non-record track)


class CachedTeacher(Teacher):
    """Rows of a logit cache (cache_logits.py), looked up by the stream coordinates the loader read the batch's
    tokens from; runs in the prefetch thread. Soft: TopK, int16 ids and float16 log-probs (12.6 MB per 48x2048
    micro-batch at K = 32, half of int64 / float32); from a sampled cache Sampled, int16 ids and uint8 counts
    padded to the batch's widest row. Hard: Top1, decoding column 0 of the ids alone (a sampled cache's most
    drawn id, ties by the lower id: the mode of the N draws, an estimate of the teacher's top-1)."""

    name, where, track = "cache", "loader", "non-record"

    def __init__(self, reader: CacheReader, target: str, restricted: bool = False, stream_shards: int | None = None):
        self.reader, self.target, self.restricted = reader, target, restricted
        self.id_dtype = np.int16 if reader.spec.vocab_size <= 1 << 15 else np.int32
        # The stream's last row predicts a token past the data (or the next, untrained shard's first), while the
        # student's target there is the first token of the stream after the loader wraps: its teacher term is
        # masked. (shard, row), or None when the stream ends past the cache (the run stops before it).
        last = (stream_shards or reader.num_shards) - 1
        self.stream_end = (last, reader.num_tokens[last] - 1) if last < reader.num_shards else None

    @classmethod
    def open(cls, cfg: Config, run) -> "CachedTeacher":
        """The cache reader, checked against the run's shards, vocabulary and teacher (no coverage check)."""
        if not cfg.logit_cache:
            raise GolfError("DISTILL_TEACHER=cache needs LOGIT_CACHE=DIR (a cache from cache_logits.py), or set "
                            "DISTILL_TEACHER=online with TEACHER_PATH for an online teacher")
        teacher_sha = checkpoint_sha256(cfg.teacher_path) if cfg.teacher_path else None
        reader = CacheReader(cfg.logit_cache, run.train_files, vocab_size=cfg.vocab_size, teacher_sha256=teacher_sha)
        spec = reader.spec
        if spec.sampled and cfg.distill_target == "soft" and cfg.distill_temp != spec.temperature:
            raise GolfError(f"{cfg.logit_cache} holds draws at temperature {spec.temperature} but DISTILL_TEMP={cfg.distill_temp}: "
                            f"the sampled loss estimates the KL at the cache's temperature; set DISTILL_TEMP={spec.temperature} "
                            f"or make a cache with cache_logits.py --encoding sampled --temperature {cfg.distill_temp}")
        if spec.sampled and cfg.distill_tail == "bucket":
            raise GolfError(f"DISTILL_TAIL=bucket needs the tail mass of a top-K cache but {cfg.logit_cache} holds sampled "
                            "draws (no tail: the draws cover the whole vocabulary); unset DISTILL_TAIL or use a top-K cache")
        if cfg.restrict_to_cache:
            run.train_files = run.train_files[: reader.num_shards]
        return cls(reader, cfg.distill_target, restricted=cfg.restrict_to_cache, stream_shards=len(run.train_files))

    @classmethod
    def from_config(cls, cfg, run):
        teacher = cls.open(cfg, run)
        teacher.check_coverage(cfg, run)
        return teacher

    def check_coverage(self, cfg: Config, run):
        """Refuse a run whose loader would read past the cached shards (it would stop mid-run)."""
        reader = self.reader
        if reader.num_shards >= len(run.train_files):
            return
        cached_tokens, w = sum(reader.num_tokens), run.ctx.world_size
        accum = grad_accum_steps(cfg, w)
        per_step = accum * tokens_read_per_batch(cfg.train_batch_tokens, cfg.train_seq_len, accum, w)
        need, steps = max(cfg.iterations, len(warmup_plan(cfg))) * per_step, cached_tokens // per_step
        if need > cached_tokens:
            raise GolfError(
                f"ITERATIONS={cfg.iterations} would read {need} train tokens but {cfg.logit_cache} caches only the first "
                f"{reader.num_shards} of {len(run.train_files)} shards ({cached_tokens} tokens, {steps} steps); set "
                f"ITERATIONS<={steps}, cache more shards, or pass --restrict-to-cache")

    def _valid(self, segments: list[Segment], n: int) -> torch.Tensor | None:
        """False at the stream's last row (see __init__), None when the batch does not hold it (nearly always)."""
        valid, pos = None, 0
        for shard, offset, length in segments:
            if self.stream_end is not None and shard == self.stream_end[0] and offset <= self.stream_end[1] < offset + length:
                valid = torch.ones(n, dtype=torch.bool) if valid is None else valid
                valid[pos + self.stream_end[1] - offset] = False
            pos += length
        return valid

    def rows(self, segments: list[Segment], n: int) -> Signal:
        """The signal of the `n` rows at `segments`."""
        valid = self._valid(segments, n)
        if self.target == "hard":
            top1 = self.reader.gather_ids(segments, np.empty((n, 1), dtype=self.id_dtype))
            return Top1(torch.from_numpy(top1[:, 0]), valid)
        if self.reader.spec.sampled:
            ids, counts = self.reader.gather_sampled(segments, self.id_dtype, np.uint8)
            return Sampled(torch.from_numpy(ids), torch.from_numpy(counts), valid)
        idx = np.empty((n, self.reader.k), dtype=self.id_dtype)
        vals = np.empty((n, self.reader.k), dtype=np.float16)
        self.reader.gather(segments, idx, vals)
        return TopK(torch.from_numpy(idx), torch.from_numpy(vals), valid)

    def fetch(self, batch):
        return self.rows(batch.segments, batch.x.numel())

    @property
    def source(self):
        return self.reader.dir

    @property
    def sha256(self):
        return self.reader.spec.teacher_sha256

    def log_lines(self):
        return [f"distill:restrict_to_cache train_shards:{self.reader.num_shards}"] if self.restricted else []


class OnlineTeacher(Teacher):
    """A teacher checkpoint run inside the student's step (exact full-vocabulary signal)."""

    name, where, track = "online", "step", "non-record"

    def __init__(self, model, path: str, sha256: str, compile_setting: str, device: torch.device):
        self.model, self.path, self._sha256 = model, path, sha256
        self.forward = maybe_compile(model, compile_setting, device)

    @classmethod
    def from_config(cls, cfg, run):
        if not cfg.teacher_path:
            raise GolfError("DISTILL_TEACHER=online needs TEACHER_PATH=CKPT")
        model, sha, _ = load_teacher(cfg.teacher_path, run.ctx, cfg.vocab_size, run.tokenizer_sha256)
        return cls(model, cfg.teacher_path, sha, cfg.compile, run.ctx.device)

    def fetch(self, batch):
        with torch.no_grad():
            return Logits(self.forward(batch.x))

    @property
    def source(self):
        return self.path

    @property
    def sha256(self):
        return self._sha256

    def log_lines(self):
        c = self.model.cfg
        return [f"distill:teacher loaded, {self.model.num_params()} params, {c.num_layers}x{c.model_dim}"]


# ----------------------------------------------------------------------------------------------------------
# Teachers built inside the timed run (record track)


class NgramTeacher(Teacher):
    """A count-based n-gram model of the training stream (golf/ngram.py: smoothing, tables, leave-one-out),
    built by the first fetch after `reset`: in the timed run that is inside the first timed step, so the build
    is in train_time; in the warm-up (the clock not started) a one-micro-batch table exercises the query."""

    name, where, track = "ngram", "step", "record"

    def __init__(self, model: StreamNgram):
        self.model, self.clock = model, None

    @classmethod
    def check_settings(cls, cfg):
        if cfg.ngram_order < 2:
            raise GolfError(f"NGRAM_ORDER={cfg.ngram_order}: use 2 (bigram) or more")
        if not 1 <= cfg.ngram_table_bits <= 40:
            raise GolfError(f"NGRAM_TABLE_BITS={cfg.ngram_table_bits}: use 1 to 40 (log2 of the hashed contexts per "
                            "order)")
        if cfg.ngram_prepass_tokens < -1:
            raise GolfError(f"NGRAM_PREPASS_TOKENS={cfg.ngram_prepass_tokens}: use 0 (none), a number of train tokens "
                            "or -1 (all of them)")

    @classmethod
    def from_config(cls, cfg, run):
        return cls(StreamNgram.open(cfg, run))

    def bind(self, state):
        self.clock = state.clock

    def reset(self):
        self.model.reset()

    def fetch(self, batch):
        if self.model.counts is None:
            self.model.build(warm_up=self.clock is not None and self.clock.t0 is None)
        with torch.no_grad():
            return Logits(self.model.log_probs(batch))

    @property
    def source(self):
        return f"ngram:{self.model.order}"

    def log_lines(self):
        return [self.model.log_line()]


class EmaTeacher(Teacher):
    """The student's own weights, averaged: an exponential moving average (DISTILL_EMA_DECAY per step) of the
    live weights, updated after every timed optimizer step from step 0 on, so that a teacher switched on late
    (DISTILL_START_FRAC) is already the average of the run so far; before its start it costs that update alone.
    It runs inside the step (its whole cost in the budget) as a separate copy of the student's GPT (same config
    and dtype policy, eval mode) that takes no gradient, compiled as the student is (COMPILE).

    The average is kept in fp32: a float32 parameter of the copy is its own average, updated in place; one
    stored in a lower dtype (the embeddings under the bf16 dtype policy) has an fp32 average copied into it after
    each update, as rounding every update to bf16 would lose a (1 - decay) share of a step's change. The
    average starts from the student's initial weights (bound before the warm-up, which takes no `after_step`)."""

    name, where, track = "ema", "step", "record"

    def __init__(self, decay: float, compile_setting: str, device: torch.device):
        self.decay, self.compile_setting, self.device = decay, compile_setting, device

    @classmethod
    def check_settings(cls, cfg):
        if not 0 <= cfg.distill_ema_decay < 1:
            raise GolfError(f"DISTILL_EMA_DECAY={cfg.distill_ema_decay}: use a decay per step in [0, 1)")

    @classmethod
    def from_config(cls, cfg, run):
        return cls(cfg.distill_ema_decay, cfg.compile, run.ctx.device)  # the decay is checked by check_settings

    def bind(self, state):
        self.live = list(state.model.parameters())
        self.model = copy.deepcopy(state.model).eval().requires_grad_(False)  # eval: fake-quant never applies
        copies = list(self.model.parameters())
        self.average = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in copies]
        self.rounded = [(p.detach(), a) for p, a in zip(copies, self.average) if p.dtype != torch.float32]
        self.forward = maybe_compile(self.model, self.compile_setting, self.device)

    def after_step(self, state):
        with torch.no_grad():  # average <- decay * average + (1 - decay) * w, one fused op over all tensors
            torch._foreach_lerp_(self.average, [p.detach().float() for p in self.live], 1 - self.decay)
            for p, a in self.rounded:
                p.copy_(a)

    def fetch(self, batch):
        with torch.no_grad():
            return Logits(self.forward(batch.x))

    def resume_state(self):
        return {"teacher": self.name, "average": [a.clone() for a in self.average]}

    def load_resume_state(self, saved):
        if saved is None or saved["teacher"] != self.name:
            raise GolfError("the resumable checkpoint carries no EMA teacher (its run had another DISTILL_TEACHER): "
                            "its weights cannot continue exactly; resume with the run's own settings")
        with torch.no_grad():
            for a, s in zip(self.average, saved["average"]):
                a.copy_(s)
            for p, a in self.rounded:
                p.copy_(a)

    @property
    def source(self):
        return f"student-ema:{self.decay:g}"

    def log_lines(self):
        return [f"distill:teacher the student's EMA, decay {self.decay:g} per step from step 0"]


TEACHERS: dict[str, type[Teacher]] = {t.name: t for t in (CachedTeacher, OnlineTeacher, NgramTeacher, EmaTeacher)}


@owner_check("distill_teacher")
def check_teachers(cfg: Config) -> None:
    """DISTILL_TEACHER names a registered teacher, and every teacher's own settings are valid."""
    check_choice("DISTILL_TEACHER", cfg.distill_teacher, TEACHERS)
    for teacher in TEACHERS.values():
        teacher.check_settings(cfg)


def build_teacher(cfg: Config, run) -> Teacher:
    """The teacher DISTILL_TEACHER names, built for the run."""
    return TEACHERS[cfg.distill_teacher].from_config(cfg, run)
