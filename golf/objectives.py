"""Training objectives: the baseline's cross-entropy, and distillation mixing it with a teacher's signal.

`build_objective(cfg, run)` is what distill.py trains with: the teacher DISTILL_TEACHER names (golf/teachers.py)
and the target DISTILL_TARGET (soft: KL to the teacher's distribution at DISTILL_TEMP; hard: the teacher's
top-1 as a label), mixed with cross-entropy by DISTILL_ALPHA. The seed-faithful arm wraps both in the study's
defects (golf/seed_faithful.py); nothing else here knows of them.
"""
from golf import seed_faithful
from golf.arms import describe_arm
from golf.config import Config
from golf.data import Batch
from golf.dist import compile_enabled
from golf.losses import cross_entropy, distill_terms, mix
from golf.teachers import Teacher, build_teacher


class CrossEntropyObjective:
    """The baseline: mean next-token cross-entropy (the same implementation the distillation losses use, so
    step-time comparisons between arms are fair)."""

    parts = ("ce",)

    def __init__(self, teacher=None):
        self.teacher = teacher  # held, never asked (the seed-faithful D3 arm keeps its idle teacher here)

    def __call__(self, model, batch: Batch):
        loss = cross_entropy(model(batch.x), batch.y)
        return loss, {"ce": loss.detach()}


class DistillObjective:
    """(1-a) CE + a w * teacher term (w = T^2 for soft, 1 for hard), per-token means; the teacher's signal comes
    with the batch (teachers that run in the loader) or is fetched here, inside the step."""

    def __init__(self, teacher: Teacher, target: str, alpha: float, temperature: float, tail: str):
        self.teacher, self.target, self.alpha, self.temperature, self.tail = teacher, target, alpha, temperature, tail
        self.parts = ("ce", "kl") if target == "soft" else ("ce", "hard_ce")

    def terms(self, model, batch: Batch):
        """(ce, teacher term, parts) of the batch, unmixed."""
        logits = model(batch.x)
        signal = batch.teacher if batch.teacher is not None else self.teacher.fetch(batch)
        return distill_terms(logits, batch.y, mode=self.target, temperature=self.temperature, tail=self.tail,
                             **signal.loss_inputs(batch.y.shape))

    def mix(self, ce, term):
        return mix(ce, term, alpha=self.alpha, mode=self.target, temperature=self.temperature)

    def __call__(self, model, batch: Batch):
        ce, term, parts = self.terms(model, batch)
        return self.mix(ce, term), parts


def distill_objective(cfg: Config, teacher: Teacher) -> DistillObjective:
    return DistillObjective(teacher, cfg.distill_target, cfg.distill_alpha, cfg.distill_temp, cfg.distill_tail)


def build_objective(cfg: Config, run) -> DistillObjective:
    """The distillation objective of the arm `cfg` describes, its teacher built for `run`; the seed-faithful
    arms' defects wrapped around both."""
    chosen = seed_faithful.defects(cfg)
    if not chosen:
        return distill_objective(cfg, build_teacher(cfg, run))
    teacher = seed_faithful.build_teacher(cfg, run, chosen, build_teacher)
    compiled = compile_enabled(cfg.compile, run.ctx.device)
    return seed_faithful.wrap_objective(cfg, distill_objective(cfg, teacher), chosen, compiled, CrossEntropyObjective)


def arm_line(cfg: Config, teacher: Teacher) -> str:
    """The one line that states the arm at the start of a distillation run."""
    d = describe_arm(cfg)
    return (f"distill:arm teacher:{d['teacher']} target:{d['target']} alpha:{d['alpha']} temp:{d['temp'] or '-'} "
            f"tail:{d['tail'] or '-'} track:{teacher.track} teacher_sha256:{teacher.sha256[:16] or '-'} "
            f"source:{d['source']} seed_faithful:{d['seed_faithful'] or '-'}")
