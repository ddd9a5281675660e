"""The seed-faithful wrappers (golf/seed_faithful.py): which defects an arm may have; D1 divides exactly the KL term
and nothing else; D3 trains the baseline's objective with the teacher never called; D4 warms up without the
teacher and spends the study's share of the budget in the first timed step. D2's cursor is tested with the
alignment machinery in tests/test_distill.py.

Run: python -m pytest tests/test_seed_faithful.py -q
"""
import re
import types

import pytest
import torch

from golf import seed_faithful
from golf.config import Config
from golf.data import Batch
from golf.errors import GolfError
from golf.objectives import CrossEntropyObjective, distill_objective
from golf.signals import Logits, TopK
from golf.teachers import Teacher
from golf.train import train
from helpers import cpu_ctx, logger, make_config, run_inputs


def _batch_and_logits(n=64, v=256, k=16, seed=6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, n // 2, v, generator=g) * 2
    y = torch.randint(0, v, (2, n // 2), generator=g)
    vals, idx = torch.log_softmax(torch.randn(n, v, generator=g) * 3, -1).topk(k, dim=-1)
    batch = Batch(x=torch.zeros(2, n // 2, dtype=torch.long), y=y, segments=[], teacher=TopK(idx.short(), vals.half()))
    return batch, (lambda x: z)


def _wrap(cfg, objective, chosen, compiled=False):
    return seed_faithful.wrap_objective(cfg, objective, frozenset(chosen), compiled, CrossEntropyObjective)


@pytest.mark.parametrize("value,teacher,target,expected", [
    ("", "cache", "soft", set()), ("0", "online", "soft", set()),
    ("1", "cache", "soft", {"D1", "D2", "D4"}), ("all", "cache", "hard", {"D2", "D4"}),
    ("all", "online", "soft", {"D3", "D4"}), ("d1, D2", "cache", "soft", {"D1", "D2"}), ("D4", "online", "hard", {"D4"}),
])
def test_the_defects_an_arm_asks_for(value, teacher, target, expected):
    cfg = Config(distill_seed_faithful=value, distill_teacher=teacher, distill_target=target)
    assert seed_faithful.defects(cfg) == expected


@pytest.mark.parametrize("value,teacher,target,why", [
    ("D5", "cache", "soft", "D5 is not a defect"), ("D2", "online", "soft", "D2 needs DISTILL_TEACHER=cache"),
    ("D3", "cache", "soft", "D3 needs DISTILL_TEACHER=online"), ("D1", "cache", "hard", "D1 needs DISTILL_TARGET=soft"),
    ("D1,D3", "online", "soft", "D1 and D3 exclude each other"),
])
def test_a_combination_the_study_never_had_is_refused(value, teacher, target, why):
    with pytest.raises(GolfError, match=re.escape(why)):
        seed_faithful.defects(Config(distill_seed_faithful=value, distill_teacher=teacher, distill_target=target))


def test_d1_divides_the_kl_term_exactly_and_keeps_the_parts():
    cfg = Config(distill_alpha=0.1, distill_temp=2.0, train_seq_len=2048)
    batch, model = _batch_and_logits()
    plain = distill_objective(cfg, teacher=types.SimpleNamespace(name="cache", gives_counts=False))  # rows ride with the batch
    faithful = _wrap(cfg, plain, {"D1"})
    loss, parts = plain(model, batch)
    loss_sf, parts_sf = faithful(model, batch)
    assert torch.equal(parts["kl"], parts_sf["kl"]) and torch.equal(parts["ce"], parts_sf["ce"])
    ce, kl = parts["ce"].double().item(), parts["kl"].double().item()  # loss = (1 - a) CE + a T^2 KL (/ 2048)
    assert loss.item() == pytest.approx(0.9 * ce + 0.4 * kl, rel=1e-6)
    assert loss_sf.item() == pytest.approx(0.9 * ce + 0.4 * kl / 2048, rel=1e-6)
    assert faithful.parts == plain.parts and faithful.teacher is plain.teacher


class CountingTeacher(Teacher):
    name, where, track = "counting", "step", "non-record"

    def __init__(self):
        self.fetches = 0

    @classmethod
    def from_config(cls, cfg, run):
        return cls()

    def fetch(self, batch):
        self.fetches += 1
        return Logits(torch.zeros(*batch.x.shape, 1024))


def test_d3_trains_the_baseline_objective_and_never_calls_the_teacher():
    cfg = Config(distill_teacher="online", distill_alpha=0.5)
    teacher = CountingTeacher()
    batch, model = _batch_and_logits(v=1024)
    faithful = _wrap(cfg, distill_objective(cfg, teacher), {"D3"})
    loss, parts = faithful(model, batch)
    base_loss, _ = CrossEntropyObjective()(model, batch)
    assert torch.equal(loss, base_loss) and faithful.parts == ("ce",)
    assert faithful.teacher is teacher and teacher.fetches == 0  # held (its memory), never asked


def test_d4_warms_up_without_the_teacher_and_stalls_the_first_timed_step(tiny_dataset, tmp_path, monkeypatch):
    """The warm-up runs cross-entropy and fetches nothing; the first timed call waits the study's share of the
    budget (compile off), later calls do not; with compile on it waits nothing (the compile is the real cost)."""
    sleeps = []
    monkeypatch.setattr(seed_faithful.time, "sleep", sleeps.append)
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="online", max_wallclock_seconds=300.0,
                      iterations=3, warmup_steps=2)
    teacher = CountingTeacher()
    objective = _wrap(cfg, distill_objective(cfg, teacher), {"D4"})
    files, val, luts = run_inputs(cfg)
    train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=objective)
    assert teacher.fetches == 3 * cfg.micro_batches  # the timed steps only: none in the 2 warm-up steps
    assert sleeps == [pytest.approx(9.579 / 600 * 300)]
    compiled = _wrap(cfg, distill_objective(cfg, teacher), {"D4"}, compiled=True)
    assert compiled.stall_s == 0.0 and compiled.recompile  # compiled: the first timed step compiles instead
    resets = []
    monkeypatch.setattr(seed_faithful, "_drop_compiled_graphs", lambda: resets.append(1))
    batch, model = _batch_and_logits(v=1024)
    compiled(model, batch)
    compiled(model, batch)
    assert resets == [1] and len(sleeps) == 1


def test_the_log_line_names_the_defects_the_arm_has():
    line = seed_faithful.describe(Config(distill_seed_faithful="all", distill_target="soft"))
    assert "(D1)" in line and "(D2)" in line and "(D4)" in line and "(D3)" not in line
    line = seed_faithful.describe(Config(distill_seed_faithful="all", distill_target="soft", distill_teacher="online"))
    assert "(D3)" in line and "(D1)" not in line and "(D2)" not in line
