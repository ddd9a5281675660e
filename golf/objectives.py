"""Training objectives: the baseline's cross-entropy, and distillation mixing it with a teacher's signal.

`build_objective(cfg, run)` is what distill.py trains with: the teacher DISTILL_TEACHER names (golf/teachers.py)
and the target DISTILL_TARGET (soft: KL to the teacher's distribution at DISTILL_TEMP; hard: the teacher's
top-1 as a label), mixed with cross-entropy by DISTILL_ALPHA, weighted over the run by its `DistillSchedule`.
With DISTILL_DRAWS = N, `SamplingTeacher` turns the teacher's distribution into N draws per position (sampled
targets). The seed-faithful arm wraps both in the study's defects (golf/seed_faithful.py); nothing else here
knows of them.

An objective is called as `objective(model, batch, progress)` (golf.train.TrainState passes the run's progress
fraction, golf.optim.run_progress) and returns (loss, parts), `parts` holding a tensor for each of its `parts`.
"""
import numpy as np
import torch

from golf import seed_faithful
from golf.arms import describe_arm
from golf.config import Config
from golf.data import Batch
from golf.dist import compile_enabled
from golf.errors import GolfError
from golf.losses import cross_entropy, distill_terms, mix, sample_targets
from golf.signals import CountDist, Logits, Sampled
from golf.teachers import Teacher, TeacherWrapper, build_teacher


class CrossEntropyObjective:
    """The baseline: mean next-token cross-entropy (the same implementation the distillation losses use, so
    step-time comparisons between arms are fair)."""

    parts = ("ce",)
    schedule = None  # no teacher term to schedule

    def __init__(self, teacher=None):
        self.teacher = teacher  # held, never asked (the seed-faithful D3 arm keeps its idle teacher here)

    def __call__(self, model, batch: Batch, progress: float = 0.0):
        loss = cross_entropy(model(batch.x), batch.y)
        return loss, {"ce": loss.detach()}


class DistillSchedule:
    """The teacher term's weight as a function of the run's progress p (golf.optim.run_progress, the LR
    warm-down's clock): off (0) before DISTILL_START_FRAC and from DISTILL_STOP_FRAC on (never, when that is 1),
    rising linearly from 0 to DISTILL_ALPHA over DISTILL_RAMP_FRAC after the start, DISTILL_ALPHA after that.
    config.validate has checked 0 <= start < stop <= 1 and 0 <= ramp <= stop - start."""

    def __init__(self, alpha: float, start: float, ramp: float, stop: float):
        self.alpha, self.start, self.ramp, self.stop = alpha, start, ramp, stop

    def on(self, progress: float) -> bool:
        """Whether the term is computed at all (while ramping up from its start it is, at a weight from 0)."""
        return self.start <= progress and (self.stop >= 1 or progress < self.stop)

    def weight(self, progress: float) -> float:
        """DISTILL_ALPHA itself once fully on (so an arm without a schedule mixes exactly as before it existed)."""
        if not self.on(progress):
            return 0.0
        if self.ramp > 0 and progress < self.start + self.ramp:
            return self.alpha * (progress - self.start) / self.ramp
        return self.alpha

    def warmup_progress(self) -> tuple[float, ...]:
        """Progress values the compile warm-up cycles through so it runs every kind of step the run will: on first
        (the teacher's graph), then off where the schedule has an off phase."""
        off = (0.0,) if self.start > 0 else (self.stop,) if self.stop < 1 else ()
        return (self.start,) + off


class DistillObjective:
    """(1-a) CE + a w * teacher term (w = T^2 for soft, 1 for hard), per-token means, a from the schedule; the
    teacher's signal comes with the batch (teachers that run in the loader) or is fetched here, inside the step.
    While the schedule has the term off, the loss is the baseline's cross-entropy, computed as
    CrossEntropyObjective does, the teacher not asked, and the term's part is logged as 0 (a loader-side
    teacher's rows are still read by the prefetch thread, which runs ahead of the step's progress)."""

    def __init__(self, teacher: Teacher, target: str, temperature: float, tail: str, schedule: DistillSchedule):
        self.teacher, self.target, self.temperature, self.tail = teacher, target, temperature, tail
        self.schedule = schedule
        self.parts = ("ce", "kl") if target == "soft" else ("ce", "hard_ce")

    def terms(self, model, batch: Batch):
        """(ce, teacher term, parts) of the batch, unmixed."""
        logits = model(batch.x)
        signal = batch.teacher if batch.teacher is not None else self.teacher.fetch(batch)
        return distill_terms(logits, batch.y, mode=self.target, temperature=self.temperature, tail=self.tail,
                             **signal.loss_inputs(batch.y.shape))

    def mix(self, ce, term, progress: float):
        return mix(ce, term, alpha=self.schedule.weight(progress), mode=self.target, temperature=self.temperature)

    def __call__(self, model, batch: Batch, progress: float = 0.0):
        if not self.schedule.on(progress):
            loss = cross_entropy(model(batch.x), batch.y)
            return loss, {"ce": loss.detach(), self.parts[1]: torch.zeros_like(loss.detach())}
        ce, term, parts = self.terms(model, batch)
        return self.mix(ce, term, progress), parts


class SamplingTeacher(TeacherWrapper):
    """Any teacher that gives a distribution (a Logits or CountDist signal), its signal replaced by DISTILL_DRAWS draws from
    softmax(logits / DISTILL_TEMP) per position: a Sampled signal (golf.losses.sample_targets), drawn where the
    teacher runs (in the step for the online teacher, in the prefetch thread for a loader-side one).

    The draws of a micro-batch come from a generator seeded by (SEED, where the batch starts in the token stream),
    not from the global RNG: the same run draws the same targets with or without the compile warm-up (which reads
    the stream's first batches again) and after a resume, and the ranks, which read different positions, draw
    independently (the global RNG is seeded alike on every rank). A position read again after the stream wraps
    is drawn again with the same generator state (the same targets where the teacher's logits are the same, as a
    cache of draws would give).
    """

    def __init__(self, inner: Teacher, draws: int, temperature: float, seed: int):
        super().__init__(inner)
        self.draws, self.temperature, self.seed = draws, temperature, seed
        self.generators: dict[torch.device, torch.Generator] = {}

    @classmethod
    def from_config(cls, cfg, run):
        return cls(build_teacher(cfg, run), cfg.distill_draws, cfg.distill_temp, cfg.seed)

    def generator(self, batch: Batch, device: torch.device) -> torch.Generator:
        """The device's generator, seeded for this batch."""
        shard, offset, _ = batch.segments[0]
        g = self.generators.setdefault(device, torch.Generator(device))
        return g.manual_seed(int(np.random.SeedSequence([self.seed, shard, offset]).generate_state(1, np.uint64)[0]))

    def fetch(self, batch):
        signal = self.inner.fetch(batch)
        if isinstance(signal, CountDist):  # a count teacher's distribution, made dense to draw from (N x V, as before)
            signal = Logits(signal.dense_log_probs())
        if not isinstance(signal, Logits):
            raise GolfError(f"DISTILL_DRAWS samples a teacher's distribution, but teacher {self.name} gives "
                            f"{type(signal).__name__}, not Logits; set DISTILL_DRAWS=0")
        logits = signal.logits
        ids, counts = sample_targets(logits, self.draws, self.temperature, self.generator(batch, logits.device))
        return Sampled(ids, counts)


def distill_objective(cfg: Config, teacher: Teacher) -> DistillObjective:
    schedule = DistillSchedule(cfg.distill_alpha, cfg.distill_start_frac, cfg.distill_ramp_frac, cfg.distill_stop_frac)
    return DistillObjective(teacher, cfg.distill_target, cfg.distill_temp, cfg.distill_tail, schedule)


def build_objective(cfg: Config, run) -> DistillObjective:
    """The distillation objective of the arm `cfg` describes, its teacher built for `run`; the seed-faithful
    arms' defects wrapped around both."""
    chosen = seed_faithful.defects(cfg)
    if not chosen:  # DISTILL_DRAWS has no seed-faithful arm (golf.config refuses it)
        teacher = SamplingTeacher.from_config(cfg, run) if cfg.distill_draws else build_teacher(cfg, run)
        return distill_objective(cfg, teacher)
    teacher = seed_faithful.build_teacher(cfg, run, chosen, build_teacher)
    compiled = compile_enabled(cfg.compile, run.ctx.device)
    return seed_faithful.wrap_objective(cfg, distill_objective(cfg, teacher), chosen, compiled, CrossEntropyObjective)


def arm_line(cfg: Config, teacher: Teacher) -> str:
    """The one line that states the arm at the start of a distillation run."""
    d = describe_arm(cfg)
    return (f"distill:arm teacher:{d['teacher']} target:{d['target']} alpha:{d['alpha']} temp:{d['temp'] or '-'} "
            f"tail:{d['tail'] or '-'} draws:{cfg.distill_draws or '-'} track:{teacher.track} "
            f"teacher_sha256:{teacher.sha256[:16] or '-'} source:{d['source']} seed_faithful:{d['seed_faithful'] or '-'} "
            f"start:{d['start']:g} ramp:{d['ramp']:g} stop:{d['stop']:g}")
