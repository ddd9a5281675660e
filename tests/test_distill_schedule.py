"""The distillation schedule (DISTILL_START_FRAC, DISTILL_RAMP_FRAC, DISTILL_STOP_FRAC): the teacher term's weight
at hand-checked fractions of the run, counted on the LR warm-down's clocks (golf.optim.run_clocks); off, the
objective is the baseline's cross-entropy bitwise and the teacher is not asked; the training loop logs the
switches and its warm-up runs the term both on and off; bad settings are refused. DISTILL_UNTIL_OVERTAKEN: the rule
by hand, in the loop (logged, the teacher no longer asked, resumable), and under torchrun with 2 ranks whose
teachers differ (both switch off at the same step, the one the all-reduced rule gives).

Run: python -m pytest tests/test_distill_schedule.py -q
"""
import json
import math
import os
import re

import pytest
import torch

from golf.config import Config, resolve_config
from golf.data import DistributedTokenLoader
from golf.errors import GolfError
from golf.objectives import CrossEntropyObjective, DistillObjective, DistillSchedule, Overtaking, distill_objective
from golf.optim import run_progress
from golf.signals import CountDist
from golf.teachers import Teacher
from golf.train import train
from helpers import REPO, cpu_ctx, dataset_env, logger, make_config, random_teacher, run_inputs, run_script
from test_teachers import PeakedTeacher


def test_progress_is_counted_on_the_warmdowns_clocks():
    iters = Config(iterations=20, max_wallclock_seconds=0.0)
    assert [run_progress(iters, s, 1e9) for s in (0, 7, 19, 20)] == [0.0, 0.35, 0.95, 1.0]  # no budget: steps
    study = Config(iterations=200_000, max_wallclock_seconds=600.0)
    assert run_progress(study, 5, 420_000.0) == 0.7  # a budget: the wall clock, the nearer end here
    assert run_progress(study, 5, 700_000.0) == 1.0
    both = Config(iterations=10, max_wallclock_seconds=100.0)
    assert run_progress(both, 5, 1_000.0) == 0.5  # whichever clock runs out first
    assert run_progress(both, 1, 80_000.0) == 0.8


def test_weights_at_hand_checked_fractions():
    s = DistillSchedule(alpha=0.5, start=0.2, ramp=0.4, stop=0.9)
    expected = {0.0: 0.0, 0.1: 0.0, 0.2: 0.0, 0.3: 0.125, 0.4: 0.25, 0.5: 0.375, 0.6: 0.5, 0.8: 0.5, 0.9: 0.0, 1.0: 0.0}
    for p, w in expected.items():
        assert s.weight(p) == pytest.approx(w, abs=1e-12), p
    assert [s.on(p) for p in (0.19, 0.2, 0.89, 0.9)] == [False, True, True, False]  # on from the start, ramp at 0
    at_once = DistillSchedule(alpha=0.3, start=0.7, ramp=0.0, stop=1.0)
    assert [at_once.weight(p) for p in (0.0, 0.69, 0.7, 0.99, 1.0)] == [0.0, 0.0, 0.3, 0.3, 0.3]  # on to the end
    default = DistillSchedule(alpha=0.1, start=0.0, ramp=0.0, stop=1.0)
    assert all(default.weight(p) == 0.1 for p in (0.0, 0.5, 1.0))  # DISTILL_ALPHA itself: mixing as before


@pytest.mark.parametrize("clock", ["iterations", "wallclock"])
def test_weight_over_a_run_on_either_clock(clock):
    """Start 0.5, ramp 0.25, alpha 0.4 over a 20-step run (iterations) or a 10 s budget at 0.5 s a step."""
    if clock == "iterations":
        cfg = Config(iterations=20, max_wallclock_seconds=0.0)
        at = [(s, 0.0) for s in (0, 9, 10, 12, 15, 19)]
    else:
        cfg = Config(iterations=200_000, max_wallclock_seconds=10.0)
        at = [(s, 500.0 * s) for s in (0, 9, 10, 12, 15, 19)]
    s = DistillSchedule(alpha=0.4, start=0.5, ramp=0.25, stop=1.0)
    weights = [s.weight(run_progress(cfg, step, ms)) for step, ms in at]
    assert weights == pytest.approx([0.0, 0.0, 0.0, 0.4 * 0.1 / 0.25, 0.4, 0.4], abs=1e-12)


@pytest.mark.parametrize("env, needle", [
    ({"DISTILL_START_FRAC": "1"}, "DISTILL_START_FRAC=1.0"),
    ({"DISTILL_START_FRAC": "-0.1"}, "DISTILL_START_FRAC=-0.1"),
    ({"DISTILL_START_FRAC": "nan"}, "DISTILL_START_FRAC=nan"),
    ({"DISTILL_START_FRAC": "0.5", "DISTILL_STOP_FRAC": "0.5"}, "DISTILL_STOP_FRAC=0.5"),
    ({"DISTILL_STOP_FRAC": "1.5"}, "DISTILL_STOP_FRAC=1.5"),
    ({"DISTILL_RAMP_FRAC": "-0.1"}, "DISTILL_RAMP_FRAC=-0.1"),
    ({"DISTILL_START_FRAC": "0.7", "DISTILL_RAMP_FRAC": "0.4"}, "DISTILL_RAMP_FRAC=0.4"),
    ({"DISTILL_START_FRAC": "0.5", "DISTILL_SEED_FAITHFUL": "D4"}, "no distillation schedule"),
])
def test_bad_schedules_are_refused(env, needle):
    with pytest.raises(GolfError, match=re.escape(needle)):
        resolve_config(None, env)


def test_a_ramp_may_last_to_the_stop():
    cfg = resolve_config(None, {"DISTILL_START_FRAC": "0.6", "DISTILL_RAMP_FRAC": "0.4"})
    assert (cfg.distill_start_frac, cfg.distill_ramp_frac, cfg.distill_stop_frac) == (0.6, 0.4, 1.0)


def test_off_is_the_baselines_loss_bitwise_and_asks_no_teacher(tiny_dataset, tmp_path):
    cfg = make_config(tiny_dataset, str(tmp_path), distill_alpha=0.4, distill_temp=2.0, distill_start_frac=0.5,
                      distill_ramp_frac=0.25)
    teacher = PeakedTeacher(cfg.vocab_size)
    objective = distill_objective(cfg, teacher)
    batch = DistributedTokenLoader(tiny_dataset.train_files, 0, 1).next_batch(256, 64, 1)
    student = random_teacher(cfg, 0).train().requires_grad_(True)
    loss, parts = objective(student, batch, 0.49)
    base, base_parts = CrossEntropyObjective()(student, batch, 0.49)
    assert torch.equal(loss, base) and torch.equal(parts["ce"], base_parts["ce"]) and parts["kl"].item() == 0.0
    assert teacher.fetches == 0
    # on, mid-ramp: (1 - a) CE + a T^2 KL with a = 0.4 * 0.1 / 0.25
    loss, parts = objective(student, batch, 0.6)
    a = 0.4 * 0.1 / 0.25
    torch.testing.assert_close(loss, (1 - a) * parts["ce"] + a * 4.0 * parts["kl"])
    assert teacher.fetches == 1 and parts["kl"].item() > 0


class Recording(DistillObjective):
    """The objective, noting the progress of each call and how often the teacher had been asked before it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = []

    def __call__(self, model, batch, progress=0.0):
        self.calls.append((progress, self.teacher.fetches))
        return super().__call__(model, batch, progress)


@pytest.mark.parametrize("start, stop, fetch_steps, lines", [
    (0.5, 1.0, (3, 4), ["distill:on step:3 frac:0.5000"]),
    (0.0, 0.5, (1, 2), ["distill:on step:1 frac:0.0000", "distill:off step:3 frac:0.5000"]),
])
def test_the_loop_switches_logs_and_warms_up_both_ways(tiny_dataset, tmp_path, start, stop, fetch_steps, lines):
    torch.set_num_threads(1)
    cfg = make_config(tiny_dataset, str(tmp_path), iterations=4, warmup_steps=2, distill_start_frac=start,
                      distill_stop_frac=stop, train_log_every=1)
    teacher = PeakedTeacher(cfg.vocab_size)
    objective = Recording(teacher, cfg.distill_target, cfg.distill_temp, cfg.distill_tail,
                          distill_objective(cfg, teacher).schedule)
    files, val, luts = run_inputs(cfg)
    train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=objective)
    warmup, timed = objective.calls[:2], objective.calls[2:]
    # The warm-up runs the term on (the teacher's graph) and then off; every timed step gets its own progress.
    assert [p for p, _ in warmup] == [start, 0.0 if start > 0 else stop]
    assert [p for p, _ in timed] == [0.0, 0.25, 0.5, 0.75]
    fetched = [i + 1 for i, ((_, before), (_, after)) in enumerate(zip(timed, timed[1:] + [(None, teacher.fetches)]))
               if after > before]
    assert tuple(fetched) == fetch_steps
    text = open(f"{cfg.log_dir}/{cfg.run_id}.txt").read()
    assert re.findall(r"^distill:\S+ step:\d+ frac:\S+$", text, re.M) == lines
    assert math.isclose(float(re.search(r"^step:1/4 .* kl:(\S+)", text, re.M).group(1)), 0.0) == (start > 0)


# ---- DISTILL_UNTIL_OVERTAKEN ----------------------------------------------------------------------------------------


class TargetTeacher(Teacher):
    """A count teacher that puts `mass` on the true next token and spreads the rest uniformly: its CE is known,
    -log(mass + (1 - mass) / V), the same on every batch (mass 0: the uniform teacher, log V)."""

    name, where, track, gives_counts = "target", "step", "record", True

    def __init__(self, vocab_size: int, mass: float):
        self.vocab_size, self.mass, self.fetch_steps, self.state = vocab_size, mass, [], None

    @classmethod
    def from_config(cls, cfg, run):
        return cls(cfg.vocab_size, 0.0)

    def bind(self, state):
        self.state = state

    @property
    def ce(self) -> float:
        return -math.log(self.mass + (1 - self.mass) / self.vocab_size)

    def fetch(self, batch):
        self.fetch_steps.append(self.state.step + 1)
        y = batch.y.reshape(-1)
        n, v = y.shape[0], self.vocab_size
        full = torch.full((n,), 1.0)
        return CountDist.padded(y[:, None], full[:, None] * self.mass, torch.zeros(0, v),
                                torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.full((v,), 1.0 / v),
                                full * (1 - self.mass), full * -self.ce)


def test_overtaking_rule_by_hand():
    """EMA with time constant N = 3 from the first gap; N steps in a row below 0 (the worst rank's) switch off."""
    rule = Overtaking(3)
    gaps = [float(rule.observe(torch.tensor(ce), torch.tensor(5.0))) for ce in (6.0, 5.0, 2.0, 6.5)]
    assert gaps == pytest.approx([1.0, 1.0 - 1 / 3, (2 / 3) + (-3.0 - 2 / 3) / 3, -0.5556 + (1.5 + 0.5556) / 3],
                                 abs=1e-4)
    decisions = [rule.decide(w, step) for step, w in enumerate([-0.1, -0.2, 0.05, -0.1, -0.1, -0.3, -0.4], start=1)]
    assert decisions == [False, False, False, False, False, True, False]  # the count restarts after step 3
    assert rule.off_step == 6
    schedule = DistillSchedule(0.5, 0.0, 0.0, 1.0, rule)
    assert not schedule.on(0.1) and schedule.weight(0.1) == 0.0
    saved = rule.state_dict()
    again = Overtaking(3)
    again.load_state_dict(saved, torch.device("cpu"))
    assert again.state_dict() == saved


@pytest.mark.parametrize("env, needle", [
    ({"DISTILL_UNTIL_OVERTAKEN": "-1"}, "DISTILL_UNTIL_OVERTAKEN=-1: use 0"),
    ({"DISTILL_UNTIL_OVERTAKEN": "4", "DISTILL_TARGET": "hard"}, "DISTILL_UNTIL_OVERTAKEN=4 compares"),
])
def test_bad_overtaking_settings_are_refused(env, needle):
    with pytest.raises(GolfError, match=re.escape(needle)):
        resolve_config(None, env)


def test_the_loop_switches_off_once_overtaken_and_asks_the_teacher_no_more(tiny_dataset, tmp_path):
    """A uniform count teacher (CE log V = 6.93, where the student starts): the student overtakes it within a few
    steps; the switch is logged at the step the rule gives from the logged gaps, the teacher is not asked after it,
    the term is logged as 0, and the running gap and teacher_ce are in the train lines and metrics."""
    torch.set_num_threads(1)
    cfg = make_config(tiny_dataset, str(tmp_path), iterations=16, warmup_steps=0, train_log_every=1,
                      distill_alpha=0.2, distill_temp=1.0, distill_until_overtaken=2)
    teacher = TargetTeacher(cfg.vocab_size, 0.0)
    files, val, luts = run_inputs(cfg)
    train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=distill_objective(cfg, teacher))
    text = open(f"{cfg.log_dir}/{cfg.run_id}.txt").read()
    off = int(re.search(r"^distill:overtaken step:(\d+) running_gap:(\S+) ", text, re.M).group(1))
    assert re.search(rf"^distill:off step:{off + 1} frac:", text, re.M)
    assert teacher.fetch_steps == list(range(1, off + 1))
    records = [json.loads(r) for r in open(f"{cfg.log_dir}/{cfg.run_id}.jsonl") if '"train"' in r]
    assert len(records) == 16 and all(r["teacher_ce"] == pytest.approx(teacher.ce, abs=1e-4) for r in records[:off])
    assert all(r["kl"] == 0 and r["teacher_ce"] == 0 and "running_gap" not in r for r in records[off:])
    # The rule recomputed from the logged per-step CEs (one rank: its gap is the worst).
    rule, gaps = Overtaking(2), []
    for r in records[:off]:
        gaps.append(float(rule.observe(torch.tensor(r["ce"]), torch.tensor(teacher.ce))))
        if rule.decide(gaps[-1], r["step"]):
            break
    assert rule.off_step == off and 1 < off < 16
    assert [r["running_gap"] for r in records[:off]] == pytest.approx(gaps, abs=1e-4)
    assert re.search(rf"^step:{off}/16 train_loss:\S+ ce:\S+ kl:\S+ teacher_ce:\S+ running_gap:-", text, re.M)


_TWO_RANKS = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
from golf.config import Config, PRESETS
from golf.dist import init_dist
from golf.log import Logger
from golf.objectives import distill_objective
from golf.train import train
from helpers import run_inputs
from test_distill_schedule import TargetTeacher

torch.set_num_threads(1)
cfg = Config(**{{**PRESETS["test"], **json.loads(os.environ["CFG"])}})
ctx = init_dist("cpu", "fp32")
teacher = TargetTeacher(cfg.vocab_size, [0.0, {mass}][ctx.rank])  # rank 1's teacher is better: it is overtaken later
objective = distill_objective(cfg, teacher)
rule, gaps = objective.schedule.overtaking, []
observe = rule.observe
rule.observe = lambda ce, t: gaps.append(float(observe(ce, t))) or rule.gap
files, val, luts = run_inputs(cfg)
train(cfg, ctx, Logger(cfg.log_dir, cfg.run_id, enabled=ctx.is_master), files, val, luts, objective=objective)
print("RESULT " + json.dumps({{"rank": ctx.rank, "off_step": rule.off_step, "gaps": gaps, "fetch_steps": teacher.fetch_steps}}), flush=True)
"""


def test_two_ranks_switch_off_at_the_same_step(tiny_dataset, tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo): rank 0's teacher is uniform, rank 1's is better, so rank 1's own
    gap stays above 0 longer. Both ranks switch off at the step the rule gives from the largest of their gaps, which
    is later than rank 0 alone would have switched: the decision is the all-reduced one, on both."""
    mass = 0.0005  # rank 1's teacher CE: 6.52 nats, against 6.93 for rank 0's (log V)
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS.format(tests=os.path.join(REPO, "tests"), mass=mass))
    cfg = {**{k: str(v) for k, v in dataset_env(tiny_dataset).items()}, "micro_batches": 2, "iterations": 40,
           "warmup_steps": 0, "train_log_every": 1, "distill_alpha": 0.2, "distill_temp": 1.0,
           "distill_until_overtaken": 2, "log_dir": str(tmp_path / "logs"), "run_id": "two",
           "checkpoint_path": str(tmp_path / "two.pt")}
    cfg = {k.lower(): v for k, v in cfg.items()}
    out = run_script([str(script)], {"CFG": json.dumps(cfg)}, cwd=str(tmp_path), timeout=600, nproc=2)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = {r["rank"]: r for r in (json.loads(x) for x in re.findall(r"RESULT (.*)", out.stdout))}
    assert set(results) == {0, 1}
    off = results[0]["off_step"]
    assert off is not None and results[1]["off_step"] == off
    assert results[0]["fetch_steps"] == results[1]["fetch_steps"] == list(range(1, off + 1))
    # The rule from both ranks' gaps: off at the first step ending 2 in a row with the larger gap below 0.
    worst = [max(a, b) for a, b in zip(results[0]["gaps"], results[1]["gaps"])]
    rule = Overtaking(2)
    assert next(step for step, w in enumerate(worst, start=1) if rule.decide(w, step)) == off
    alone = Overtaking(2)
    rank0_alone = next((step for step, w in enumerate(results[0]["gaps"], start=1) if alone.decide(w, step)), None)
    assert rank0_alone is not None and rank0_alone < off
    text = open(tmp_path / "logs" / "two.txt").read()
    assert re.search(rf"^distill:overtaken step:{off} ", text, re.M) and re.search(rf"^distill:off step:{off + 1} ", text, re.M)


def test_a_resumed_run_keeps_the_overtaking_rule_s_state(tiny_dataset, tmp_path, monkeypatch):
    """The running gap and the count ride in the resumable checkpoint: resumed from step 2 (gap started, term still
    on), the run switches off at the uninterrupted run's step, its train lines equal from the resume on."""
    import copy

    import golf.train
    from golf.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    saved = {}

    def keep_step_2(path, payload):
        if payload.get("kind") == "resume" and payload["step"] == 2:
            saved.update(copy.deepcopy(payload))
        save_checkpoint(path, payload)

    monkeypatch.setattr(golf.train, "save_checkpoint", keep_step_2)
    runs = {}
    for name in ("full", "again"):
        cfg = make_config(tiny_dataset, str(tmp_path / name), iterations=16, warmup_steps=0, train_log_every=1,
                          distill_alpha=0.2, distill_temp=1.0, distill_until_overtaken=2, checkpoint_every=1)
        files, val, luts = run_inputs(cfg)
        train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=distill_objective(cfg, TargetTeacher(1024, 0.0)),
              resume=dict(saved) if name == "again" else None)
        text = open(f"{cfg.log_dir}/{cfg.run_id}.txt").read()
        runs[name] = (int(re.search(r"^distill:overtaken step:(\d+) ", text, re.M).group(1)),
                      re.findall(r"^(step:\d+/16 train_loss:.*) train_time", text, re.M))
    assert saved["overtaking"]["gap"] is not None and saved["overtaking"]["off_step"] is None
    (off, full_lines), (off_again, lines) = runs["full"], runs["again"]
    assert off_again == off > 2
    assert lines == full_lines[2:]  # losses, the teacher's CE and the running gap (the train times differ)
