"""Distillation: cached teacher rows aligned with the tokens each rank trains on (1 and 2 processes), the online
teacher really in the student's gradient, the warm-up restore with the distillation path, and distill.py's
refusals of a cache that does not fit the run.

Run: python -m pytest tests/test_distill.py -q
This file is also the worker of the 2-process alignment runs: `torchrun tests/test_distill.py OUT DATA TOK CACHE`.
"""
import dataclasses
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

from golf.cache import CacheSpec, CacheWriter
from golf.checkpoint import checkpoint_sha256
from golf.config import Config
from golf.data import DistributedTokenLoader
from golf.dist import Ctx, cleanup, init_dist
from golf.objectives import CrossEntropyObjective, DistillObjective, build_objective, distill_objective
from golf.log import Logger
from golf.shards import load_shard, write_shard
from golf.signals import Top1, TopK
from golf.teachers import OnlineTeacher
from golf.train import train
from helpers import (cpu_ctx, dataset_env, make_config, random_teacher, run_inputs, run_script, side_by_side,
                     synthetic_cache)

# Small train shards of random tokens, so a few steps cross every shard boundary and the wrap-around.
POS_SIZES = (1000, 613, 1501)
K = 4
# (TRAIN_BATCH_TOKENS, TRAIN_SEQ_LEN, MICRO_BATCHES, ITERATIONS): each reads more than the whole stream, and
# gives whole sequences per micro-batch for 1 and 2 processes (accumulation 2/1, 4/2, 6/3).
SETTINGS = [
    dict(train_batch_tokens=512, train_seq_len=64, micro_batches=2, iterations=8),
    dict(train_batch_tokens=1536, train_seq_len=32, micro_batches=4, iterations=3, distill_target="hard"),
    dict(train_batch_tokens=576, train_seq_len=48, micro_batches=6, iterations=7),
]
SEED_FAITHFUL = dict(train_batch_tokens=512, train_seq_len=64, micro_batches=2, iterations=13, distill_seed_faithful="D1,D2")
# The study's cursor cycles over its cache of 4,096 x 2,048 rows, not over the whole cache: a cycle of 640 here.
SEED_FAITHFUL_CYCLE = dict(SEED_FAITHFUL, seed_faithful_rows=10, seed_faithful_row_len=64)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------------------
# A cache whose rows say where they are


def write_position_cache(out: str, files: list[str]):
    """Row t of shard s: idx = [the true next token, s, t // 1024, t % 1024], vals = [-1, -2, -3, -4]. So the
    hard label is the target y, and every row decodes to its own stream position."""
    tokens = [load_shard(p).astype(np.int64) for p in files]
    stream = np.concatenate(tokens)
    starts = np.cumsum([0] + [len(t) for t in tokens])
    spec = CacheSpec(k=K, vocab_size=1024, encoding="fp16", teacher_sha256="0" * 64, teacher_config={},
                     window=64, stride=64)
    w = CacheWriter(out, files, spec)
    for s, n in enumerate(len(t) for t in tokens):
        t = np.arange(n)
        nxt = stream[(starts[s] + t + 1) % len(stream)]  # the stream wraps: the last row predicts the first token
        idx = np.stack([nxt, np.full(n, s), t // 1024, t % 1024], axis=1)
        vals = np.broadcast_to(-np.arange(1, K + 1, dtype=np.float32), (n, K))
        w.write_shard(s, idx, vals)
    assert w.finalize() == []
    return stream, starts


def decode_positions(teacher: TopK, starts) -> np.ndarray:
    idx = teacher.ids.long().numpy()
    np.testing.assert_array_equal(teacher.logprobs.float().numpy(), np.broadcast_to(-np.arange(1.0, K + 1), idx.shape))
    return starts[idx[:, 1]] + idx[:, 2] * 1024 + idx[:, 3]


@pytest.fixture(scope="module")
def pos_data(tiny_dataset, tmp_path_factory):
    """Train shards of POS_SIZES random tokens (val and tokenizer from the tiny dataset) and their position cache."""
    root = tmp_path_factory.mktemp("pos_data")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i, n in enumerate(POS_SIZES):
        files.append(str(data / f"pos_train_{i:06d}.bin"))
        write_shard(files[-1], rng.integers(0, 1024, n))
    for p in tiny_dataset.val_files:
        os.symlink(p, data / os.path.basename(p))
    stream, starts = write_position_cache(str(root / "cache"), files)
    return types.SimpleNamespace(data_path=str(data), tokenizer_path=tiny_dataset.tokenizer_path, files=files,
                                 cache=str(root / "cache"), stream=stream, starts=starts, root=str(root))


# ------------------------------------------------------------------------------------------------------------
# Driving the real training loop and recording what each micro-batch got


class Recorder:
    """A distillation objective, plus a copy of what each micro-batch delivered to it (as on the device)."""

    def __init__(self, inner):
        self.inner = inner
        self.parts, self.teacher, self.schedule = inner.parts, inner.teacher, inner.schedule
        self.calls = []

    def __call__(self, model, batch, progress=0.0):
        teacher = batch.teacher.apply(lambda t: t.cpu().clone()) if batch.teacher is not None else None
        self.calls.append((batch.x.cpu().clone(), batch.y.cpu().clone(), teacher))
        return self.inner(model, batch, progress)


def recorded_train(cfg: Config, ctx: Ctx, cache: str):
    """train() with the cached teacher of `cache`, built as distill.py builds it (seed-faithful wrapper included);
    returns (TrainResult, recorded calls)."""
    files, val, luts = run_inputs(cfg)
    cfg = dataclasses.replace(cfg, logit_cache=cache, distill_teacher="cache")
    run = types.SimpleNamespace(train_files=files, ctx=ctx, tokenizer_sha256=None)
    rec = Recorder(build_objective(cfg, run))
    result = train(cfg, ctx, Logger(cfg.log_dir, cfg.run_id, enabled=ctx.is_master), files, val, luts, objective=rec)
    return result, rec.calls


def pos_config(pos, tmp: str, **overrides) -> Config:
    return make_config(pos, tmp, warmup_steps=2, ema_enabled=False, **overrides)


def micro_batch_shape(cfg: Config, world: int) -> tuple[int, int]:
    """(micro-batches per step per rank, tokens per micro-batch per rank)."""
    accum = cfg.micro_batches // world
    return accum, cfg.train_batch_tokens // (world * accum)


def token_positions(k: int, world: int, rank: int, local: int, total: int) -> np.ndarray:
    """The challenge's loader rule, from scratch: call k of rank r reads x from stream positions
    k*W*(local+1) + r*(local+1) + [0, local), the stream wrapping after `total` tokens."""
    return (k * world * (local + 1) + rank * (local + 1) + np.arange(local)) % total


def check_alignment(calls, cfg: Config, world: int, rank: int, pos):
    """Every recorded micro-batch, warm-up included: x, y and the teacher rows are those of the loader rule."""
    accum, local = micro_batch_shape(cfg, world)
    calls_k = list(range(cfg.warmup_steps * accum)) + list(range(cfg.iterations * accum))
    assert len(calls) == len(calls_k)
    total = len(pos.stream)
    assert cfg.iterations * accum * world * (local + 1) > total  # the run crosses every boundary and wraps
    saw_end = False
    for k, (x, y, teacher) in zip(calls_k, calls):
        p = token_positions(k, world, rank, local, total)
        assert x.shape == (local // cfg.train_seq_len, cfg.train_seq_len)
        np.testing.assert_array_equal(x.flatten().numpy(), pos.stream[p])
        np.testing.assert_array_equal(y.flatten().numpy(), pos.stream[(p + 1) % total])
        if cfg.distill_target == "soft":
            np.testing.assert_array_equal(decode_positions(teacher, pos.starts), p)
            np.testing.assert_array_equal(teacher.ids[:, 0].long(), y.flatten())
        else:
            assert isinstance(teacher, Top1)  # column 0 alone
            np.testing.assert_array_equal(teacher.ids.long(), y.flatten())  # the hard label is y
        # The stream's last row is masked (its teacher row is not about the token after the wrap), only it.
        at_end = p == total - 1
        saw_end |= bool(at_end.any())
        if at_end.any():
            np.testing.assert_array_equal(~teacher.valid.numpy(), at_end)
        else:
            assert teacher.valid is None
    assert saw_end or cfg.iterations * accum * world * (local + 1) < 2 * total


def check_seed_faithful(calls, cfg: Config, world: int, rank: int, pos):
    """The ablation arm's rows: a cursor from row 0 (again after the warm-up), advancing by the micro-batch
    size and restarting at 0 when the next micro-batch would run past the study's cache (its rows, or the whole
    cache if smaller); blind to rank and tokens."""
    accum, local = micro_batch_shape(cfg, world)
    cycle = min(len(pos.stream), cfg.seed_faithful_rows * cfg.seed_faithful_row_len)
    expected = []
    for n_calls in (cfg.warmup_steps * accum, cfg.iterations * accum):
        cursor = 0
        for _ in range(n_calls):
            if cursor + local > cycle:
                cursor = 0
            expected.append(cursor + np.arange(local))
            cursor += local
    assert len(calls) == len(expected)
    assert any(e[0] == 0 for e in expected[cfg.warmup_steps * accum + 1:])  # the cursor did wrap
    for (_, _, teacher), rows in zip(calls, expected):
        np.testing.assert_array_equal(decode_positions(teacher, pos.starts), rows)
    if rank == 1:  # the study's defect D2: rank 1 never gets the rows of its own tokens
        calls_k = list(range(cfg.warmup_steps * accum)) + list(range(cfg.iterations * accum))
        for k, (x, _, teacher) in zip(calls_k, calls):
            p = token_positions(k, world, rank, local, len(pos.stream))
            np.testing.assert_array_equal(x.flatten().numpy(), pos.stream[p])
            assert not np.array_equal(decode_positions(teacher, pos.starts), p)


def test_cached_rows_are_the_tokens_rows_one_process(pos_data, tmp_path):
    for i, s in enumerate(SETTINGS):
        cfg = pos_config(pos_data, str(tmp_path / str(i)), **s)
        _, calls = recorded_train(cfg, cpu_ctx(), pos_data.cache)
        check_alignment(calls, cfg, 1, 0, pos_data)
    for name, s in (("sf", SEED_FAITHFUL), ("sf_cycle", SEED_FAITHFUL_CYCLE)):
        cfg = pos_config(pos_data, str(tmp_path / name), **s)
        _, calls = recorded_train(cfg, cpu_ctx(), pos_data.cache)
        check_seed_faithful(calls, cfg, 1, 0, pos_data)


@pytest.mark.slow
def test_cached_rows_are_the_tokens_rows_two_processes(pos_data, tmp_path):
    """Under torchrun (gloo, DDP): each rank's teacher rows are those of its own tokens; the seed-faithful
    cursor gives every rank the same rows, which for rank 1 are not its tokens' rows."""
    out = run_script(["tests/test_distill.py", str(tmp_path), pos_data.data_path, pos_data.tokenizer_path,
                      pos_data.cache], {}, cwd=str(tmp_path), nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    for i, s in enumerate(SETTINGS):
        cfg = pos_config(pos_data, "", **s)
        for rank in (0, 1):
            check_alignment(torch.load(tmp_path / f"calls{i}_rank{rank}.pt", weights_only=False), cfg, 2, rank, pos_data)
    cfg = pos_config(pos_data, "", **SEED_FAITHFUL)
    for rank in (0, 1):
        check_seed_faithful(torch.load(tmp_path / f"calls_sf_rank{rank}.pt", weights_only=False), cfg, 2, rank, pos_data)


def _worker(out: str, data_path: str, tokenizer_path: str, cache: str):
    """torchrun side of the 2-process test: run every setting and save each rank's recorded calls."""
    torch.set_num_threads(1)
    ctx = init_dist("cpu", "fp32")
    pos = types.SimpleNamespace(data_path=data_path, tokenizer_path=tokenizer_path)
    try:
        for name, s in [(str(i), s) for i, s in enumerate(SETTINGS)] + [("_sf", SEED_FAITHFUL)]:
            cfg = pos_config(pos, os.path.join(out, f"run{name}"), **s)
            _, calls = recorded_train(cfg, ctx, cache)
            torch.save(calls, os.path.join(out, f"calls{name}_rank{ctx.rank}.pt"))
    finally:
        cleanup()


# ------------------------------------------------------------------------------------------------------------
# The warm-up runs the distillation path, then restores everything (the seed-faithful cursor included)


@pytest.mark.parametrize("seed_faithful", ["", "D1,D2"])
def test_warmup_with_distillation_then_restore(pos_data, tmp_path, seed_faithful):
    s = dict(train_batch_tokens=512, train_seq_len=64, micro_batches=2, iterations=4, ema_enabled=True,
             distill_seed_faithful=seed_faithful)
    a, calls_a = recorded_train(make_config(pos_data, str(tmp_path / "a"), warmup_steps=4, **s), cpu_ctx(),
                                pos_data.cache)
    b, calls_b = recorded_train(make_config(pos_data, str(tmp_path / "b"), warmup_steps=0, **s), cpu_ctx(),
                                pos_data.cache)
    # The warm-up called the distillation objective with teacher rows, on batches the real run reads again.
    assert len(calls_a) == (4 + 4) * 2 and len(calls_b) == 4 * 2
    assert all(isinstance(t, TopK) for _, _, t in calls_a)
    for (xa, _, ta), (xb, _, tb) in zip(calls_a[8:], calls_b):
        assert torch.equal(xa, xb) and torch.equal(ta.ids, tb.ids)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    # Not vacuous: the warm-up read rows past the first ones, and the timed run starts again from row 0.
    assert decode_positions(calls_a[8][2], pos_data.starts)[0] == 0
    assert decode_positions(calls_a[2][2], pos_data.starts)[0] != 0


# ------------------------------------------------------------------------------------------------------------
# The online teacher is in the gradient


def online_objective(cfg: Config, model) -> DistillObjective:
    return distill_objective(cfg, OnlineTeacher(model, "", "", "0", torch.device("cpu")))


def _grads(objective, model, batch):
    model.zero_grad(set_to_none=True)
    objective(model, batch)[0].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("soft", [True, False])
def test_online_teacher_is_in_the_loss_and_gradient(tiny_dataset, tmp_path, soft):
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="online", distill_target="soft" if soft else "hard",
                      distill_alpha=0.4, distill_temp=2.0)
    batch = DistributedTokenLoader(tiny_dataset.train_files, 0, 1).next_batch(256, 64, 1)
    student = random_teacher(cfg, 0).train().requires_grad_(True)
    t1, t2 = random_teacher(cfg, 1), random_teacher(cfg, 2)

    # The loss equals a float64 reference computed from the teacher's own logits.
    loss, parts = online_objective(cfg, t1)(student, batch)
    with torch.no_grad():
        z, tz = student(batch.x).double().flatten(0, 1), t1(batch.x).double().flatten(0, 1)
    y, a, T = batch.y.flatten(), cfg.distill_alpha, cfg.distill_temp
    ce = torch.nn.functional.cross_entropy(z, y)
    if soft:
        logp, logq = torch.log_softmax(tz / T, -1), torch.log_softmax(z / T, -1)
        ref = (1 - a) * ce + a * T**2 * (logp.exp() * (logp - logq)).sum(-1).mean()
    else:
        ref = (1 - a) * ce + a * torch.nn.functional.cross_entropy(z, tz.argmax(-1))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["ce"].double(), ce, rtol=1e-5, atol=1e-6)

    # Two teachers give two gradients; and both differ from cross-entropy alone.
    g1 = _grads(online_objective(cfg, t1), student, batch)
    g2 = _grads(online_objective(cfg, t2), student, batch)
    g0 = _grads(online_objective(dataclasses.replace(cfg, distill_alpha=0.0), t1), student, batch)
    g_ce = _grads(CrossEntropyObjective(), student, batch)
    torch.testing.assert_close(g0, g_ce)  # alpha = 0 is exactly cross-entropy
    for g in (g1, g2):
        assert (g - g_ce).norm() > 1e-3 * g_ce.norm()
    assert (g1 - g2).norm() > 1e-3 * g_ce.norm()


def _step1(stdout: str) -> dict:
    m = re.search(r"^step:1/\d+ (train_loss:\S+.*?) train_time", stdout, re.M)
    assert m, stdout[-2000:]
    return dict(kv.split(":") for kv in m.group(1).split())


@pytest.mark.slow
def test_distill_script_online_teacher_changes_step_one(tiny_dataset, tmp_path, teacher_ckpt):
    """The study's D3: its online arm never ran the teacher, so its loss was the baseline's. Here the first
    step's cross-entropy part equals the baseline's loss (same init, same batch) and the total does not."""
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "ITERATIONS": 1, "WARMUP_STEPS": 0, "DTYPE": "fp32",
           "TRAIN_LOG_EVERY": 1, "RUN_ID": "r"}
    (tmp_path / "base").mkdir()
    (tmp_path / "online").mkdir()
    base, online = side_by_side(
        lambda: run_script(["train_gpt.py"], env, cwd=str(tmp_path / "base")),
        lambda: run_script(["distill.py"], {**env, "DISTILL_TEACHER": "online", "TEACHER_PATH": teacher_ckpt,
                                            "DISTILL_ALPHA": 0.5}, cwd=str(tmp_path / "online")))
    assert base.returncode == 0, base.stderr[-3000:]
    assert online.returncode == 0, online.stderr[-3000:]
    assert "distill:arm teacher:online target:soft" in online.stdout
    b, o = _step1(base.stdout), _step1(online.stdout)
    assert o["ce"] == b["train_loss"] == b["ce"]
    assert abs(float(o["train_loss"]) - float(b["train_loss"])) > 1e-2, (o, b)
    assert float(o["kl"]) > 1e-2


# ------------------------------------------------------------------------------------------------------------
# distill.py refuses a cache that does not fit the run


@pytest.fixture(scope="module")
def caches(tiny_dataset, tmp_path_factory, teacher_ckpt, teacher_cache):
    root = tmp_path_factory.mktemp("caches")
    files = tiny_dataset.train_files
    return types.SimpleNamespace(
        other_teacher=teacher_cache,  # teacher_sha256 bbbb..., not teacher_ckpt's
        vocab=synthetic_cache(str(root / "vocab"), files, vocab_size=2048),
        first_shard=synthetic_cache(str(root / "first"), files[:1], teacher_sha256=checkpoint_sha256(teacher_ckpt)),
    )


# TRAIN_BATCH_TOKENS=4096 reads 4097 tokens per step: 5 steps need 20485, one tiny shard holds 20000.
PAST_CACHE = {"ITERATIONS": 5, "TRAIN_BATCH_TOKENS": 4096, "WARMUP_STEPS": 1}


@pytest.mark.parametrize("case", ["unset", "missing", "other_teacher", "vocab", "past_cache"])
def test_distill_refuses_a_cache_that_does_not_fit(tiny_dataset, tmp_path, teacher_ckpt, caches, case):
    env, expect = {
        "unset": ({}, "DISTILL_TEACHER=cache needs LOGIT_CACHE"),
        "missing": ({"LOGIT_CACHE": str(tmp_path / "nope")}, "not found"),
        "other_teacher": ({"LOGIT_CACHE": caches.other_teacher, "TEACHER_PATH": teacher_ckpt}, "teacher_sha256 bbbb"),
        "vocab": ({"LOGIT_CACHE": caches.vocab}, "vocab_size 2048 in the cache != 1024"),
        "past_cache": ({"LOGIT_CACHE": caches.first_shard, "TEACHER_PATH": teacher_ckpt, **PAST_CACHE},
                       "ITERATIONS=5 would read 20485 train tokens"),
    }[case]
    out = run_script(["distill.py"], {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r", **env},
                     cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and expect in errors[0], out.stderr
    assert "step:" not in out.stdout  # refused before any step, warm-up included
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_distill_cache_coverage_counts_every_ranks_extra_token(tiny_dataset, tmp_path, teacher_ckpt, caches):
    """Two ranks with one micro-batch each read 4096 + 2 tokens per step (each rank's span has its own last
    target): 5 steps need 20490 tokens, not the single-process 20485."""
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r", "LOGIT_CACHE": caches.first_shard,
           "TEACHER_PATH": teacher_ckpt, **PAST_CACHE}
    out = run_script(["distill.py"], env, cwd=str(tmp_path), nproc=2)
    assert out.returncode != 0
    assert "ITERATIONS=5 would read 20490 train tokens" in out.stdout + out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_distill_restrict_to_cache_trains_on_the_cached_shards(tiny_dataset, tmp_path, teacher_ckpt, caches):
    """The run that `past_cache` refuses trains with --restrict-to-cache (the stream wraps inside shard 0),
    and the cache's teacher matches TEACHER_PATH."""
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r", "LOGIT_CACHE": caches.first_shard,
           "TEACHER_PATH": teacher_ckpt, **PAST_CACHE}
    out = run_script(["distill.py", "--restrict-to-cache"], env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distill:restrict_to_cache train_shards:1" in out.stdout
    assert re.search(r"^step:5/5 train_loss:\S+ ce:\S+ kl:\S+", out.stdout, re.M)
    assert (tmp_path / "checkpoints" / "r.int6.ptz").exists()


if __name__ == "__main__":
    _worker(*sys.argv[1:5])
