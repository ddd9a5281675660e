"""The teacher interface (golf/teachers.py): a teacher is one class plus its registry line. A stub teacher,
registered here only, runs through distill.py's own builder and the real training loop; the objective consumes
its signal exactly; signals keep their type when pinned or moved. A count teacher (a tiny exact bigram model,
`BigramCountTeacher`) gives CountDist signals: the objective's KL to them is the dense KL to the same
distribution, its CE is logged, and the settings a count teacher cannot serve are refused.

Run: python -m pytest tests/test_teachers.py -q
"""
import dataclasses
import json
import math
import re
import types

import numpy as np
import pytest
import torch

from golf import losses as golf_losses, teachers
from golf.config import resolve_config
from golf.data import DistributedTokenLoader
from golf.errors import GolfError
from golf.objectives import build_objective, distill_objective
from golf.shards import load_shard
from golf.signals import CountDist, Logits, TopK
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


class BigramCountTeacher(Teacher):
    """A count teacher small enough to check by hand: exact bigram counts of the train shards, interpolated with
    the add-one unigram u by Witten-Bell, p(w | a) = lam_a c(a, w) / c(a) + (1 - lam_a) u(w), lam_a = c(a) /
    (c(a) + d(a)) (0 for an unseen a). `form` says how it is emitted as a CountDist: "sparse" (each position's
    observed followers as ids, beta = 1 - lam), "rows" (the bigram row of the previous token as a shared row,
    rho = lam) or "mixed" (the row at rho = 1.5 lam, the excess 0.5 lam c(a, w) / c(a) taken back by negative
    sparse weights: another form of the same p). `dense(x)` is the same p as an N x V tensor, for reference."""

    name, where, track, gives_counts = "bigram-counts", "step", "record", True

    def __init__(self, files, vocab_size: int, form: str = "sparse"):
        tokens = np.concatenate([load_shard(f) for f in files]).astype(np.int64)
        v = self.vocab_size = vocab_size
        pairs = np.zeros((v, v), dtype=np.float64)
        np.add.at(pairs, (tokens[:-1], tokens[1:]), 1.0)
        total, distinct = pairs.sum(1), (pairs > 0).sum(1)
        self.lam = torch.from_numpy(np.where(total > 0, total / np.maximum(total + distinct, 1), 0.0))
        self.bigram = torch.from_numpy(pairs / np.maximum(total, 1)[:, None])  # rows of unseen tokens are 0
        self.unigram = torch.from_numpy((np.bincount(tokens, minlength=v) + 1.0) / (len(tokens) + v))
        self.width = int(distinct.max())
        self.form, self.fetches = form, 0

    @classmethod
    def from_config(cls, cfg, run):
        return cls(run.train_files, cfg.vocab_size)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        a = x.reshape(-1)
        return self.lam[a, None] * self.bigram[a] + (1 - self.lam[a, None]) * self.unigram

    def fetch(self, batch):
        self.fetches += 1
        a, y = batch.x.reshape(-1), batch.y.reshape(-1)
        n, v = a.shape[0], self.vocab_size
        lam = self.lam[a]
        target_logprob = self.dense(batch.x).gather(-1, y[:, None])[:, 0].log()
        if self.form == "sparse":
            weight, ids = (lam[:, None] * self.bigram[a]).topk(self.width, -1)  # every follower; the rest weight 0
            rows, row_of, rho = torch.zeros(0, v), torch.zeros(n, dtype=torch.long), torch.zeros(n)
        else:
            seen = self.bigram.sum(-1) > 0
            rows = torch.where(seen[:, None], self.bigram, 1.0 / v)  # every row sums to 1; unseen ones get rho 0
            row_of, rho = a, lam
            ids, weight = torch.zeros(n, 1, dtype=torch.long), torch.zeros(n, 1)
        beta = 1 - lam
        if self.form == "mixed":  # the row over-weighted by half, the excess taken back slot by slot
            weight, ids = (-0.5 * lam[:, None] * self.bigram[a]).topk(self.width, -1, largest=False)
            rho = 1.5 * lam
        return CountDist.padded(ids, weight.float(), rows.float(), row_of, rho.float(), self.unigram.float(),
                                beta.float(), target_logprob.float())


@pytest.mark.parametrize("form", ["sparse", "rows"])
def test_a_count_teachers_kl_is_the_dense_kl_of_its_distribution(tiny_dataset, tmp_path, monkeypatch, form):
    """The count teacher through distill.py's builder: the objective's KL (exact, never N x V) against the dense KL
    to the same p in float64, its gradient against the dense Logits path's, its CE logged as teacher_ce; then the
    real training loop logs teacher_ce beside the student's ce."""
    monkeypatch.setitem(teachers.TEACHERS, "bigram-counts", BigramCountTeacher)
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="bigram-counts", distill_alpha=0.5, distill_temp=1.0,
                      iterations=3, warmup_steps=1, train_log_every=1)
    files, val, luts = run_inputs(cfg)
    objective = build_objective(cfg, types.SimpleNamespace(train_files=files, ctx=cpu_ctx(), tokenizer_sha256=None))
    teacher = objective.teacher
    teacher.form = form
    assert objective.parts == ("ce", "kl", "teacher_ce")
    batch = DistributedTokenLoader(files, 0, 1).next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1)
    student = TrainState(cfg, cpu_ctx(), files, objective).model
    loss, parts = objective(student, batch)
    (grad,) = torch.autograd.grad(loss, student.tok_emb.weight)

    p = teacher.dense(batch.x)  # float64
    with torch.no_grad():
        logq = torch.log_softmax(student(batch.x).double().reshape(p.shape), -1)
    kl = torch.where(p > 0, p * (p.log() - logq), 0.0).sum(-1).mean()
    torch.testing.assert_close(parts["kl"].double(), kl, rtol=1e-5, atol=1e-6)
    teacher_ce = -p.gather(-1, batch.y.reshape(-1, 1)).log().mean()
    torch.testing.assert_close(parts["teacher_ce"].double(), teacher_ce, rtol=1e-6, atol=1e-6)
    # The same distribution as full logits (the online teacher's dense path) gives the same loss and gradient.
    dense = distill_objective(cfg, PeakedTeacher(cfg.vocab_size))
    dense.teacher.fetch = lambda b: Logits(p.float().log().view(*b.x.shape, -1))
    dense_loss, dense_parts = dense(student, batch)
    (dense_grad,) = torch.autograd.grad(dense_loss, student.tok_emb.weight)
    torch.testing.assert_close(loss, dense_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-4, atol=1e-7)

    train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=objective)
    text = open(f"{cfg.log_dir}/{cfg.run_id}.txt").read()
    lines = re.findall(r"^step:(\d)/3 train_loss:\S+ ce:(\S+) kl:(\S+) teacher_ce:(\S+) train_time:", text, re.M)
    assert [s for s, *_ in lines] == ["1", "2", "3"]
    assert all(2.0 < float(t) < 7.0 and float(k) > 0 for _, _, k, t in lines)
    records = [json.loads(r) for r in open(f"{cfg.log_dir}/{cfg.run_id}.jsonl")]
    assert [round(r["teacher_ce"], 4) for r in records if r["event"] == "train"] == [float(t) for *_, t in lines]


def test_a_count_teacher_in_mixed_form_is_the_same_distribution(tiny_dataset):
    """Negative sparse weights and one-hot rows: the same p as the sparse form, so the same KL and gradient."""
    files = tiny_dataset.train_files
    batch = DistributedTokenLoader(files, 0, 1).next_batch(256, 64, 1)
    z = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0)) * 2
    results = []
    for form in ("sparse", "mixed"):
        teacher = BigramCountTeacher(files, 1024, form)
        signal = teacher.fetch(batch)
        if form == "mixed":
            assert (signal.weight < 0).any()
        x = z.clone().requires_grad_(True)
        ce, kl, parts = golf_losses.distill_terms(x.view(4, 64, -1), batch.y, mode="soft",
                                                  **signal.loss_inputs(batch.y.shape))
        results.append((kl.detach(), torch.autograd.grad(kl, x)[0], parts["teacher_ce"]))
    (kl_a, g_a, t_a), (kl_b, g_b, t_b) = results
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_a, g_b, rtol=1e-4, atol=1e-8)
    assert t_a == t_b


@pytest.mark.parametrize("env, needle", [
    ({"DISTILL_TEMP": "2"}, "not with DISTILL_TEMP=2; set DISTILL_TEMP=1"),
    ({"DISTILL_TEMP": "1", "DISTILL_TARGET": "hard"}, "not with DISTILL_TARGET=hard; set DISTILL_TARGET=soft"),
    ({"DISTILL_TEMP": "1", "DISTILL_DRAWS": "4"}, "not with DISTILL_DRAWS=4; set DISTILL_DRAWS=0"),
])
def test_a_count_teacher_refuses_what_it_cannot_serve(tiny_dataset, monkeypatch, env, needle):
    """DISTILL_TEMP != 1 with a count teacher is refused (its exact KL is at T = 1; the default T = 2 too), before
    any work, with the setting that fixes it."""
    monkeypatch.setitem(teachers.TEACHERS, "bigram-counts", BigramCountTeacher)
    cfg = resolve_config(None, {"DISTILL_TEACHER": "bigram-counts", "DATA_PATH": tiny_dataset.data_path, **env})
    run = types.SimpleNamespace(train_files=tiny_dataset.train_files, ctx=cpu_ctx(), tokenizer_sha256=None)
    with pytest.raises(GolfError, match=re.escape(needle)):
        build_objective(cfg, run)


def test_overtaking_needs_a_teacher_that_gives_its_ce(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(teachers.TEACHERS, "peaked", PeakedTeacher)
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="peaked", distill_until_overtaken=5)
    run = types.SimpleNamespace(train_files=tiny_dataset.train_files, ctx=cpu_ctx(), tokenizer_sha256=None)
    with pytest.raises(GolfError, match="DISTILL_UNTIL_OVERTAKEN=5 needs the teacher's cross-entropy"):
        build_objective(cfg, run)


def test_a_count_teachers_entropy_is_computed_for_the_logged_steps_only(tiny_dataset, tmp_path, monkeypatch):
    """The loop tells the objective which steps it logs: the teacher's entropy (the KL's value) is computed for those
    (steps 1-10 and the last here, not 11), and every logged KL is a number."""
    monkeypatch.setitem(teachers.TEACHERS, "bigram-counts", BigramCountTeacher)
    calls = []
    entropy = golf_losses._count_entropy
    monkeypatch.setattr(golf_losses, "_count_entropy", lambda *a: calls.append(1) or entropy(*a))
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="bigram-counts", distill_temp=1.0, iterations=12,
                      warmup_steps=0, train_log_every=5)
    files, val, luts = run_inputs(cfg)
    objective = build_objective(cfg, types.SimpleNamespace(train_files=files, ctx=cpu_ctx(), tokenizer_sha256=None))
    train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=objective)
    assert len(calls) == 11
    records = [json.loads(r) for r in open(f"{cfg.log_dir}/{cfg.run_id}.jsonl") if '"train"' in r]
    assert [r["step"] for r in records] == list(range(1, 11)) + [12]
    assert all(math.isfinite(r["kl"]) and r["kl"] > 0 for r in records)
