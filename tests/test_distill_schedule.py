"""The distillation schedule (DISTILL_START_FRAC, DISTILL_RAMP_FRAC, DISTILL_STOP_FRAC): the teacher term's weight
at hand-checked fractions of the run, counted on the LR warm-down's clocks (golf.optim.run_clocks); off, the
objective is the baseline's cross-entropy bitwise and the teacher is not asked; the training loop logs the
switches and its warm-up runs the term both on and off; bad settings are refused.

Run: python -m pytest tests/test_distill_schedule.py -q
"""
import math
import re

import pytest
import torch

from golf.config import Config, resolve_config
from golf.data import DistributedTokenLoader
from golf.errors import GolfError
from golf.objectives import CrossEntropyObjective, DistillObjective, DistillSchedule, distill_objective
from golf.optim import run_progress
from golf.train import train
from helpers import cpu_ctx, logger, make_config, random_teacher, run_inputs
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
