"""The teacher interface (golf/teachers.py): a teacher is one class plus its registry line. A stub teacher,
registered here only, runs through distill.py's own builder and the real training loop; the objective consumes
its signal exactly; signals keep their type when pinned or moved.

Run: python -m pytest tests/test_teachers.py -q
"""
import dataclasses
import types

import torch

from golf import teachers
from golf.config import resolve_config
from golf.data import DistributedTokenLoader
from golf.objectives import build_objective
from golf.signals import Logits, TopK
from golf.teachers import Teacher
from golf.train import TrainState, train
from helpers import cpu_ctx, logger, make_config, run_inputs


class PeakedTeacher(Teacher):
    """Logits that put most mass on token (x + 1) mod V: a teacher that is neither the cache nor a checkpoint."""

    name, where, track = "peaked", "step", "record"

    def __init__(self, vocab_size: int):
        self.vocab_size, self.bound, self.resets, self.fetches = vocab_size, [], 0, 0

    @classmethod
    def from_config(cls, cfg, run):
        return cls(cfg.vocab_size)

    def bind(self, state):
        self.bound.append(state)

    def reset(self):
        self.resets += 1

    def fetch(self, batch):
        self.fetches += 1
        return Logits(20.0 * torch.nn.functional.one_hot((batch.x + 1) % self.vocab_size, self.vocab_size).float())


def test_a_new_teacher_is_one_class_and_its_registry_line(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(teachers.TEACHERS, "peaked", PeakedTeacher)
    assert resolve_config(None, {"DISTILL_TEACHER": "peaked"}).distill_teacher == "peaked"  # the setting accepts it
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="peaked", distill_alpha=0.5, distill_temp=2.0,
                      iterations=3, warmup_steps=2, ema_enabled=True)
    files, val, luts = run_inputs(cfg)
    objective = build_objective(cfg, types.SimpleNamespace(train_files=files, ctx=cpu_ctx(), tokenizer_sha256=None))
    teacher = objective.teacher
    assert isinstance(teacher, PeakedTeacher)

    # Its signal reaches the loss exactly: KL(p_T || q_T) of its logits against a float64 reference.
    batch = DistributedTokenLoader(files, 0, 1).next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1)
    student = TrainState(cfg, cpu_ctx(), files, objective).model
    _, parts = objective(student, batch)
    with torch.no_grad():
        logq = torch.log_softmax(student(batch.x).double() / 2, -1)
    logp = torch.log_softmax(teacher.fetch(batch).logits.double() / 2, -1)
    # float32 dot products over N x V terms: ~1e-4 nats absolute (golf.losses._mean_kl)
    torch.testing.assert_close(parts["kl"].double(), (logp.exp() * (logp - logq)).sum(-1).mean(), rtol=1e-4, atol=2e-4)

    # The training loop binds it to its state, resets it before the warm-up and the timed run, and calls it in
    # the step (where = "step") once per micro-batch.
    teacher.bound, teacher.resets, teacher.fetches = [], 0, 0
    result = train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=objective)
    assert len(teacher.bound) == 1 and teacher.bound[0].step == result.step == 3
    assert teacher.bound[0].ema is not None  # what an EMA teacher would read
    assert teacher.resets == 2 and teacher.fetches == (2 + 3) * cfg.micro_batches


def test_signals_keep_their_type_and_fields_when_moved():
    s = TopK(torch.arange(6, dtype=torch.int16).view(3, 2), torch.zeros(3, 2, dtype=torch.float16))
    moved = s.apply(lambda t: t.to(torch.float32))
    assert type(moved) is TopK and moved.ids.dtype == torch.float32 and moved.logprobs.shape == (3, 2)
    assert s.ids.dtype == torch.int16  # the original is untouched
    inputs = s.loss_inputs(torch.Size([1, 3]))
    assert inputs["idx"].shape == (1, 3, 2) and inputs["idx"].dtype == torch.int64
    assert inputs["vals"].dtype == torch.float32
    assert [f.name for f in dataclasses.fields(moved)] == ["ids", "logprobs", "valid"] and moved.valid is None
