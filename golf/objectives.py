"""Training objectives: the baseline's cross-entropy, and distillation mixing it with a teacher's signal.

`build_objective(cfg, run)` is what distill.py trains with: the teacher DISTILL_TEACHER names (golf/teachers.py)
and the target DISTILL_TARGET (soft: KL to the teacher's distribution at DISTILL_TEMP; hard: the teacher's
top-1 as a label), mixed with cross-entropy by DISTILL_ALPHA, weighted over the run by its `DistillSchedule`
(with a count teacher, also switched off for good once the student has overtaken it: `Overtaking`, the settings
a count teacher cannot serve refused by `check_teacher`). With DISTILL_DRAWS = N, `SamplingTeacher` turns the teacher's distribution into N draws per position (sampled
targets). The seed-faithful arm wraps both in the study's defects (golf/seed_faithful.py); nothing else here
knows of them.

An objective is called as `objective(model, batch, progress)` (golf.train.TrainState passes the run's progress
fraction, golf.optim.run_progress) and returns (loss, parts), `parts` holding a tensor for each of its `parts`.
"""
import numpy as np
import torch

from golf import seed_faithful
from golf.arms import describe_arm
from golf.config import Config, owner_check
from golf.data import Batch
from golf.dist import compile_enabled
from golf.errors import GolfError
from golf.losses import cross_entropy, distill_terms, mix, sample_targets
from golf.signals import Logits, Sampled
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


class Overtaking:
    """DISTILL_UNTIL_OVERTAKEN=N: the teacher term switches off for good once the student has overtaken its
    teacher. A count teacher can only help while the student is behind it (at FineWeb scale the student ends far
    below any count model), and both cross-entropies are at hand in every step: the student's on the batch ("ce")
    and the teacher's (-log p of the same targets, "teacher_ce").

    The rule, decided identically on every rank: after each timed step with the term on, each rank updates its
    running gap g, an EMA with time constant N steps (g <- g + (d - g) / N, starting at the first d) of
    d = student CE - teacher CE, the step's mean over the rank's micro-batches; the training loop all-reduces the
    largest g over the ranks with its stop flags (golf.train); a step where that largest g is below 0 (the student
    ahead on every rank) counts, any other resets the count; after N counted steps in a row the term is off from
    the next step to the end of the run (the teacher is not asked again, so nothing could switch it back on).
    N sets both the smoothing and the patience: the gap's noise from batch to batch is averaged over about N
    steps, and then has to stay below 0 for N more."""

    def __init__(self, patience: int):
        self.patience = patience
        self.gap: torch.Tensor | None = None  # this rank's running gap (a device scalar, not synced)
        self.below = 0  # steps in a row with every rank's gap below 0
        self.off_step: int | None = None  # the last step with the term on, once overtaken
        self.worst_gap: float | None = None  # the last step's largest running gap over the ranks (logged), if on

    def observe(self, ce: torch.Tensor, teacher_ce: torch.Tensor) -> torch.Tensor:
        """Update this rank's running gap with one step's mean CEs; returns it (no device sync)."""
        d = (ce - teacher_ce).double()
        self.gap = d if self.gap is None else self.gap + (d - self.gap) / self.patience
        return self.gap

    def decide(self, worst_gap: float | None, step: int) -> bool:
        """Count the step whose largest gap over the ranks is `worst_gap` (None: the term was off, nothing
        observed); True when the term goes off now."""
        self.worst_gap = worst_gap
        if worst_gap is None:
            return False
        self.below = self.below + 1 if worst_gap < 0 else 0
        if self.below >= self.patience and self.off_step is None:
            self.off_step = step
            return True
        return False

    def state_dict(self) -> dict:
        return {"gap": None if self.gap is None else self.gap.item(), "below": self.below, "off_step": self.off_step,
                "worst_gap": self.worst_gap}

    def load_state_dict(self, s: dict, device):
        self.gap = None if s["gap"] is None else torch.tensor(s["gap"], dtype=torch.float64, device=device)
        self.below, self.off_step, self.worst_gap = s["below"], s["off_step"], s["worst_gap"]


class DistillSchedule:
    """The teacher term's weight as a function of the run's progress p (golf.optim.run_progress, the LR
    warm-down's clock): off (0) before DISTILL_START_FRAC and from DISTILL_STOP_FRAC on (never, when that is 1),
    rising linearly from 0 to DISTILL_ALPHA over DISTILL_RAMP_FRAC after the start, DISTILL_ALPHA after that; and,
    with DISTILL_UNTIL_OVERTAKEN (`overtaking`), off for good once the student has overtaken its teacher.
    config.validate has checked 0 <= start < stop <= 1 and 0 <= ramp <= stop - start."""

    def __init__(self, alpha: float, start: float, ramp: float, stop: float, overtaking: Overtaking | None = None):
        self.alpha, self.start, self.ramp, self.stop = alpha, start, ramp, stop
        self.overtaking = overtaking

    def on(self, progress: float) -> bool:
        """Whether the term is computed at all (while ramping up from its start it is, at a weight from 0)."""
        if self.overtaking is not None and self.overtaking.off_step is not None:
            return False
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
        (the teacher's graph), then off where the schedule has an off phase at a known progress (the term off after
        an overtaking runs the student's compiled forward as the on steps do: nothing new to compile)."""
        off = (0.0,) if self.start > 0 else (self.stop,) if self.stop < 1 else ()
        return (self.start,) + off


class DistillObjective:
    """(1-a) CE + a w * teacher term (w = T^2 for soft, 1 for hard), per-token means, a from the schedule; the
    teacher's signal comes with the batch (teachers that run in the loader) or is fetched here, inside the step.
    While the schedule has the term off, the loss is the baseline's cross-entropy, computed as
    CrossEntropyObjective does, the teacher not asked, and the term's part is logged as 0 (a loader-side
    teacher's rows are still read by the prefetch thread, which runs ahead of the step's progress).

    `log_values`: whether the values of the coming step will be logged (the training loop says so before each
    step; True outside it). A count teacher's KL value needs its entropy H(p), as costly as the soft term itself
    and a constant of the student, so on the other steps it is not computed (golf.losses, count_entropy=False): the term
    is then the soft cross-entropy H(p, q) = KL + H(p), with the KL's gradient, and its "kl" part NaN."""

    log_values = True

    def __init__(self, teacher: Teacher, target: str, temperature: float, tail: str, schedule: DistillSchedule):
        self.teacher, self.target, self.temperature, self.tail = teacher, target, temperature, tail
        self.schedule = schedule
        # A count teacher's signal carries its log-prob of each target: its CE is logged beside the student's.
        self.parts = ("ce", "kl") if target == "soft" else ("ce", "hard_ce")
        if teacher.gives_counts:
            self.parts += ("teacher_ce",)

    def terms(self, model, batch: Batch):
        """(ce, teacher term, parts) of the batch, unmixed."""
        logits = model(batch.x)
        signal = batch.teacher if batch.teacher is not None else self.teacher.fetch(batch)
        return distill_terms(logits, batch.y, mode=self.target, temperature=self.temperature, tail=self.tail,
                             count_entropy=self.log_values, **signal.loss_inputs(batch.y.shape))

    def mix(self, ce, term, progress: float):
        return mix(ce, term, alpha=self.schedule.weight(progress), mode=self.target, temperature=self.temperature)

    def __call__(self, model, batch: Batch, progress: float = 0.0):
        if not self.schedule.on(progress):
            loss = cross_entropy(model(batch.x), batch.y)
            return loss, {"ce": loss.detach(), **{k: torch.zeros_like(loss.detach()) for k in self.parts[1:]}}
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
        if not isinstance(signal, Logits):
            raise GolfError(f"DISTILL_DRAWS samples a teacher's distribution, but teacher {self.name} gives "
                            f"{type(signal).__name__}, not Logits; set DISTILL_DRAWS=0")
        logits = signal.logits
        ids, counts = sample_targets(logits, self.draws, self.temperature, self.generator(batch, logits.device))
        return Sampled(ids, counts)


@owner_check("distill_until_overtaken")
def check_settings(cfg: Config):
    """The settings this module owns, checked by golf.config.validate before any work starts (registered there;
    golf.choices imports this module)."""
    if cfg.distill_until_overtaken < 0:
        raise GolfError(f"DISTILL_UNTIL_OVERTAKEN={cfg.distill_until_overtaken}: use 0 (off) or N >= 1 steps (the "
                        "running CE's time constant and how long the student must stay ahead)")
    if cfg.distill_until_overtaken and cfg.distill_target == "hard":
        raise GolfError(f"DISTILL_UNTIL_OVERTAKEN={cfg.distill_until_overtaken} compares the student with a count "
                        "teacher's soft distribution (DISTILL_TARGET=soft); set DISTILL_UNTIL_OVERTAKEN=0")


def check_teacher(cfg: Config, teacher: Teacher):
    """Refuse settings the built teacher cannot serve. A count teacher (golf.signals.CountDist) gives the exact
    KL at T = 1 only: its p^(1/T), renormalised, has no sparse + shared form (so its KL would cost the dense
    N x V one again), and a defined variant would be a different target under the same name."""
    name = f"DISTILL_TEACHER={teacher.name}"
    if teacher.gives_counts:
        target = f"DISTILL_TARGET={cfg.distill_target}; set DISTILL_TARGET=soft"
        for bad, what in ((cfg.distill_target != "soft", target),
                          (cfg.distill_temp != 1.0, f"DISTILL_TEMP={cfg.distill_temp:g}; set DISTILL_TEMP=1"),
                          (cfg.distill_draws > 0, f"DISTILL_DRAWS={cfg.distill_draws}; set DISTILL_DRAWS=0")):
            if bad:
                raise GolfError(f"{name} is a count teacher, distilled by its exact soft KL at T = 1, not with {what}")
    elif cfg.distill_until_overtaken:
        raise GolfError(f"DISTILL_UNTIL_OVERTAKEN={cfg.distill_until_overtaken} needs the teacher's cross-entropy on "
                        f"the targets, which a count teacher's signal carries and {name}'s does not; set "
                        "DISTILL_UNTIL_OVERTAKEN=0")


def distill_objective(cfg: Config, teacher: Teacher) -> DistillObjective:
    check_teacher(cfg, teacher)
    overtaking = Overtaking(cfg.distill_until_overtaken) if cfg.distill_until_overtaken else None
    schedule = DistillSchedule(cfg.distill_alpha, cfg.distill_start_frac, cfg.distill_ramp_frac, cfg.distill_stop_frac,
                               overtaking)
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
            f"start:{d['start']:g} ramp:{d['ramp']:g} stop:{d['stop']:g}"
            + (f" until_overtaken:{d['until_overtaken']}" if d["until_overtaken"] else ""))
