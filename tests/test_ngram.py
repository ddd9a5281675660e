"""The n-gram teacher (golf/ngram.py, DISTILL_TEACHER=ngram): its probabilities equal a float64 brute-force
interpolated Witten-Bell model (Python dicts, no hashing) for orders 2 to 5, with and without leave-one-out and
online counting; leave-one-out removes exactly the position's own occurrence; no validation token is counted;
every rank holds the same counts; hash collisions stay at the random-hash (birthday) rate; the build is in
train_time; distill.py trains with it (1 and 2 processes) and refuses bad settings before any step;
eval_bpb.py scores it and cache_logits.py caches it.

Run: python -m pytest tests/test_ngram.py -q
"""
import json
import math
import re
import types
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from golf.cache import CacheReader, cache_manifest_field
from golf.config import Config
from golf.data import DistributedTokenLoader
from golf.dist import Ctx
from golf.errors import GolfError
from golf.ngram import StreamNgram, TrainStream, context_rows, table_rows
from golf.objectives import build_objective
from golf.shards import list_shards, load_shard, write_shard
from golf.train import train
from helpers import cpu_ctx, dataset_env, logger, make_config, run_inputs, run_script

SMALL_V = 7
SHARD_SIZES = (700, 411, 530)  # the batches below cross both shard boundaries and the wrap-around


pytestmark = pytest.mark.usefixtures("one_thread")


def markov_tokens(n: int, v: int, seed: int) -> np.ndarray:
    """Tokens with structure (a random second-order Markov chain with peaked transitions), so counts repeat."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(v, 0.3), size=(v, v))
    out = [0, 1]
    for _ in range(n - 2):
        out.append(int(rng.choice(v, p=trans[out[-2], out[-1]])))
    return np.array(out, dtype=np.int64)


def write_split(folder, tokens: np.ndarray, sizes, val_tokens=None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.cumsum((0,) + tuple(sizes))
    for i in range(len(sizes)):
        write_shard(folder / f"t_train_{i:06d}.bin", tokens[bounds[i]:bounds[i + 1]])
    write_shard(folder / "t_val_000000.bin", tokens[:100] if val_tokens is None else val_tokens)
    return list_shards(str(folder), "train")


def ngram_config(**kw) -> Config:
    base = dict(vocab_size=SMALL_V, train_batch_tokens=4 * 32, train_seq_len=32, micro_batches=1, ngram_order=3,
                ngram_table_bits=12, ngram_prepass_tokens=0, ngram_online=False, ngram_leave_one_out=True)
    return Config(**{**base, **kw})


def open_model(cfg: Config, files, ctx: Ctx | None = None) -> StreamNgram:
    return StreamNgram.open(cfg, types.SimpleNamespace(train_files=files, ctx=ctx or cpu_ctx()))


# ------------------------------------------------------------------------------------------------------------
# The float64 reference: counts in dicts keyed by the exact context, the Witten-Bell recursion written out


class BruteForce:
    def __init__(self, stream: np.ndarray, order: int, v: int):
        self.stream, self.order, self.v = stream, order, v
        self.counts = [defaultdict(Counter) for _ in range(order)]  # [k-1][context of k-1 tokens][next token]

    def event(self, g: int):
        """(the n-1 tokens up to cyclic stream position g, the token after it)."""
        t, n = self.stream, len(self.stream)
        return tuple(int(t[(g - i) % n]) for i in range(self.order - 2, -1, -1)), int(t[(g + 1) % n])

    def add(self, g: int, sign: int = 1):
        ctx, w = self.event(g)
        for k in range(1, self.order + 1):
            self.counts[k - 1][ctx[len(ctx) - (k - 1):] if k > 1 else ()][w] += sign

    def probs(self, ctx: tuple) -> np.ndarray:
        """P(. | ctx), ctx holding the tokens available (a row's first positions have fewer than n-1)."""
        p = np.full(self.v, 1.0 / self.v)
        for k in range(1, min(self.order, len(ctx) + 1) + 1):
            row = self.counts[k - 1].get(ctx[len(ctx) - (k - 1):] if k > 1 else ())
            c = np.zeros(self.v)
            for w, m in (row or {}).items():
                c[w] = m
            total, distinct = c.sum(), (c > 0).sum()
            if total > 0:
                p = (c + distinct * p) / (total + distinct)
        return p


def check_batch(model: StreamNgram, brute: BruteForce, batch, counted: int):
    """model.log_probs(batch) against the reference, each counted position with its own event taken out (LOO)."""
    got = model.log_probs(batch).double().exp().reshape(-1, model.vocab_size).numpy()
    g = model.positions(batch).numpy()
    x = batch.x.numpy()
    seq = x.shape[1]
    for i in range(len(g)):
        r, j = divmod(i, seq)
        ctx = tuple(int(t) for t in x[r, max(0, j - (brute.order - 2)):j + 1])
        out = model.leave_one_out and g[i] < counted
        if out:
            brute.add(int(g[i]), -1)
        want = brute.probs(ctx)
        if out:
            brute.add(int(g[i]), +1)
        np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=0, err_msg=f"position {g[i]}")
        assert abs(got[i].sum() - 1) < 1e-5


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("online", [False, True])
def test_probabilities_equal_a_brute_force_witten_bell_model(tmp_path, order, leave_one_out, online):
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V, seed=order)
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    prepass = 900
    cfg = ngram_config(ngram_order=order, ngram_prepass_tokens=prepass, ngram_online=online,
                       ngram_leave_one_out=leave_one_out)
    model = open_model(cfg, files)
    model.build()
    assert model.counts.rows == [SMALL_V ** k for k in range(order)]  # every context exact: no hashing here
    brute = BruteForce(tokens, order, SMALL_V)
    for g in range(prepass):
        brute.add(g)
    loader = DistributedTokenLoader(files, 0, 1)
    for _ in range(14):  # 14 x 129 tokens: past the end of the 1641-token stream, so it wraps
        batch = loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1)
        before = model.counted
        check_batch(model, brute, batch, before)
        for g in range(before, model.counted):
            brute.add(g)
        if online:  # counted up to the last position whose target the loader has read
            assert model.counted == max(prepass, min(model.read_upto - 1, len(tokens)))
        else:
            assert model.counted == prepass
    assert model.counts.tables[0].sum() == model.counted


def test_hashed_contexts_without_collisions_equal_the_brute_force_model(tiny_dataset, tmp_path):
    """V = 1024, order 5: orders 3 to 5 are hashed at 16 bits. On a corpus where no two contexts share a bucket
    the hashed tables are exact, so they equal the dict model: the first 300-token slice of real text without
    a collision (~250 distinct contexts per order share a bucket with probability ~0.4, the birthday rate)."""
    shard = np.asarray(load_shard(tiny_dataset.train_files[0]), dtype=np.int64)
    for start in range(0, len(shard) - 300, 300):
        tokens = shard[start:start + 300]
        brute = BruteForce(tokens, 5, 1024)
        windows = torch.from_numpy(np.stack([brute.event(g)[0] for g in range(300)]))
        if all(len(set(rows.tolist())) == len({c[5 - k:] for c in map(tuple, windows.tolist())})
               for k, rows in enumerate(context_rows(windows, 5, 1024, 16)[2:], start=3)):
            break
    assert [table_rows(k, 1024, 16) for k in (3, 4, 5)] == [1 << 16] * 3
    files = write_split(tmp_path, tokens, (200, 100))
    cfg = ngram_config(vocab_size=1024, ngram_order=5, ngram_table_bits=16, ngram_prepass_tokens=300)
    model = open_model(cfg, files)
    model.build()
    for g in range(300):
        brute.add(g)
    batch = DistributedTokenLoader(files, 0, 1).next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1)
    check_batch(model, brute, batch, 300)


def test_leave_one_out_removes_exactly_the_positions_own_occurrence(tmp_path):
    """With every position counted, a position's LOO distribution is that of the model counted on the stream
    minus that one event, and differs from the memorised one; without LOO it is the memorised one."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V, seed=11)
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    batch = DistributedTokenLoader(files, 0, 1).next_batch(4 * 32, 32, 1)
    probs = {}
    for loo in (True, False):
        model = open_model(ngram_config(ngram_order=4, ngram_prepass_tokens=len(tokens), ngram_leave_one_out=loo), files)
        model.build()
        probs[loo] = model.log_probs(batch).double().exp().reshape(-1, SMALL_V).numpy()
    full = BruteForce(tokens, 4, SMALL_V)
    for g in range(len(tokens)):
        full.add(g)
    y = batch.y.reshape(-1).numpy()
    for i in (5, 40, 77, 127):  # positions whose full order-4 context lies in their row
        ctx = full.event(i)[0]
        minus_one = BruteForce(tokens, 4, SMALL_V)
        for g in range(len(tokens)):
            if g != i:
                minus_one.add(g)
        np.testing.assert_allclose(probs[True][i], minus_one.probs(ctx), rtol=2e-6)
        np.testing.assert_allclose(probs[False][i], full.probs(ctx), rtol=2e-6)
        assert probs[True][i][y[i]] < probs[False][i][y[i]]  # its own occurrence no longer supports its target
    # NGRAM_PREPASS_TOKENS=-1 is the whole stream: the same model as its length spelt out
    model = open_model(ngram_config(ngram_order=4, ngram_prepass_tokens=-1), files)
    model.build()
    assert model.counted == len(tokens)
    np.testing.assert_array_equal(model.log_probs(batch).double().exp().reshape(-1, SMALL_V).numpy(), probs[True])


def test_no_validation_token_is_ever_counted(tmp_path):
    """Token V-1 occurs only in the val shard: after counting the whole train stream (prepass and online, past
    the wrap-around) no table holds it."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V - 1, seed=3)
    files = write_split(tmp_path, tokens, SHARD_SIZES, val_tokens=np.full(500, SMALL_V - 1))
    cfg = ngram_config(ngram_order=3, ngram_prepass_tokens=600, ngram_online=True)
    model = open_model(cfg, files)
    model.build()
    loader = DistributedTokenLoader(files, 0, 1)
    for _ in range(20):
        model.log_probs(loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1))
    assert model.counted == len(tokens)
    for table in model.counts.tables:
        assert table[:, SMALL_V - 1].sum() == 0
    assert model.counts.tables[0].sum() == len(tokens)
    assert all("_val_" not in p for p in model.stream.paths)


def test_every_rank_holds_the_same_counts(tmp_path):
    """Two ranks (each its own loader and model, no process group: counting needs no communication) count the
    same positions, every micro-batch, and they are the stream's prefix the loader has read."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V, seed=5)
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    cfg = ngram_config(train_batch_tokens=2 * 2 * 32, micro_batches=2, ngram_order=4, ngram_prepass_tokens=100,
                       ngram_online=True)
    ctxs = [Ctx(r, r, 2, torch.device("cpu"), None) for r in (0, 1)]
    models = [open_model(cfg, files, c) for c in ctxs]
    loaders = [DistributedTokenLoader(files, r, 2) for r in (0, 1)]
    for m in models:
        m.build()
    brute = BruteForce(tokens, 4, SMALL_V)
    for step in range(15):
        for m, loader in zip(models, loaders):
            m.log_probs(loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1))
        a, b = models
        assert a.counted == b.counted == min((step + 1) * 2 * 65 - 1, len(tokens))
        assert all(torch.equal(s, t) for s, t in zip(a.counts.tables, b.counts.tables))
    for g in range(len(tokens)):
        brute.add(g)
    for k, table in enumerate(models[0].counts.tables):  # the exact tables hold the stream's counts
        want = torch.zeros_like(table)
        for ctx, row in brute.counts[k].items():
            r = sum(t * SMALL_V ** i for i, t in enumerate(reversed(ctx)))
            for w, m in row.items():
                want[r, w] = m
        assert torch.equal(table, want), k


@pytest.mark.parametrize("bits", [20, 16])
def test_hash_collisions_stay_at_the_random_hash_rate(tiny_dataset, bits):
    """V = 1024, orders 3 to 5. At the default NGRAM_TABLE_BITS=20 order 3 is exact (V^2 = 2^20 rows) and orders
    4 and 5 are hashed; at 16 all three are. The fraction of distinct contexts that share their bucket with
    another is 0 for an exact order and otherwise within 10% (+0.2 points) of a uniformly random hash's,
    1 - (1 - 1/M)^(D-1) for D contexts in M buckets (the birthday bound; below D/M). The tiny dataset's ~60k
    tokens give D = 17k to 46k: ~2-4% collide at 2^20, 21-51% at 2^16 (measured on the 737k-token demo
    corpus at 2^16: 59%, 98%, 99.8% for orders 3 to 5)."""
    stream = TrainStream(tiny_dataset.train_files)
    windows = torch.from_numpy(stream.read(-3, stream.total)).unfold(0, 4, 1)
    report = []
    for k, rows in enumerate(context_rows(windows, 5, 1024, bits)[2:], start=3):
        exact = sum(windows[:, 4 - i].long() * 1024 ** (i - 1) for i in range(1, k))
        ctx, first = np.unique(exact.numpy(), return_index=True)
        _, per_bucket = np.unique(rows.numpy()[first], return_counts=True)
        colliding = per_bucket[per_bucket > 1].sum() / len(ctx)
        m = table_rows(k, 1024, bits)
        expected = 0.0 if m == 1024 ** (k - 1) else 1 - (1 - 1 / m) ** (len(ctx) - 1)
        report.append((k, len(ctx), round(float(colliding), 4), round(expected, 4)))
        assert colliding <= 1.1 * expected + 0.002, report
    print(report)


def test_the_build_is_counted_in_train_time(tiny_dataset, tmp_path):
    """A budget shorter than the build: the run stops after its first step, and train_time holds the build
    (the prepass of the whole stream), which the first timed fetch does after the clock started; the warm-up
    built only a micro-batch's worth."""
    total = TrainStream(tiny_dataset.train_files).total
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="ngram", ngram_prepass_tokens=total,
                      ngram_order=4, ngram_table_bits=14, max_wallclock_seconds=1e-3, iterations=50, warmup_steps=2)
    files, val, luts = run_inputs(cfg)
    objective = build_objective(cfg, types.SimpleNamespace(train_files=files, ctx=cpu_ctx(), tokenizer_sha256=None))
    model = objective.teacher.model
    builds = []
    build = model.build
    model.build = lambda warm_up=False: (build(warm_up), builds.append((warm_up, model.counted, model.build_ms)))
    result = train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=objective)
    assert [(w, c) for w, c, _ in builds] == [(True, cfg.train_batch_tokens + 1), (False, total)]
    assert result.step == 1
    assert result.train_ms >= builds[-1][2] > 0


def test_distill_script_trains_with_the_ngram_teacher(tiny_dataset, tmp_path):
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r", "DISTILL_TEACHER": "ngram", "ITERATIONS": 3,
           "TRAIN_LOG_EVERY": 1, "NGRAM_PREPASS_TOKENS": 30000, "NGRAM_TABLE_BITS": 14}
    out = run_script(["distill.py"], env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distill:ngram order:3 table_bits:14 tables:68MiB prepass_tokens:30000 online:1" in out.stdout
    assert "distill:arm teacher:ngram target:soft" in out.stdout and "track:record" in out.stdout
    kl = [float(v) for v in re.findall(r"^step:\d+/3 .* kl:(\S+)", out.stdout, re.M)]
    assert len(kl) == 3 and all(math.isfinite(v) and v > 0 for v in kl), out.stdout[-2000:]


@pytest.mark.parametrize("env, expect", [
    ({"NGRAM_ORDER": 1}, "NGRAM_ORDER=1: use 2"),
    ({"NGRAM_PREPASS_TOKENS": 10**9}, "NGRAM_PREPASS_TOKENS=1000000000 is more than the"),
    ({"NGRAM_TABLE_BITS": 40, "NGRAM_ORDER": 4}, "need more than the"),
    ({"NGRAM_ONLINE": 0}, "NGRAM_PREPASS_TOKENS=0 with NGRAM_ONLINE=0 counts nothing"),
])
def test_distill_refuses_bad_ngram_settings_before_any_step(tiny_dataset, tmp_path, env, expect):
    out = run_script(["distill.py"], {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r",
                                      "DISTILL_TEACHER": "ngram", **env}, cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and expect in errors[0], out.stderr
    assert "step:" not in out.stdout
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_two_ranks_train_with_the_ngram_teacher(tiny_dataset, tmp_path):
    """torchrun, 2 processes (gloo, DDP): the n-gram teacher needs no communication (each rank counts the same
    stream, tests above), and the run trains and stops on the same step on both ranks."""
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r", "DISTILL_TEACHER": "ngram", "ITERATIONS": 4,
           "NGRAM_PREPASS_TOKENS": 5000, "NGRAM_TABLE_BITS": 12, "NGRAM_ORDER": 4}
    out = run_script(["distill.py"], env, cwd=str(tmp_path), nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rank:0 stopped_at_step:4" in out.stdout and "rank:1 stopped_at_step:4" in out.stdout, out.stdout[-2000:]
    assert "distill:arm teacher:ngram" in out.stdout


def test_eval_bpb_scores_the_ngram_model_alone(tiny_dataset, tmp_path):
    """`eval_bpb.py --teacher ngram:2` counts the train shards (never val) and its val_loss is the mean NLL of
    the float64 reference over the val targets (at order 2 every position has its whole context)."""
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "VAL_MAX_TOKENS": 512, "VAL_BATCH_SIZE": 512}
    out = run_script(["eval_bpb.py", "--teacher", "ngram:2", "--json", "--out", "score-ngram2/score.json"], env,
                     cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "score-ngram2" / "score.json").read_text()) == res  # what golf.results lists
    stream = TrainStream(tiny_dataset.train_files)
    brute = BruteForce(stream.read(0, stream.total), 2, 1024)
    for g in range(stream.total):
        brute.add(g)
    val = np.concatenate([np.asarray(load_shard(p), dtype=np.int64) for p in tiny_dataset.val_files])[:513]
    nll = [-math.log(brute.probs((int(val[i]),))[val[i + 1]]) for i in range(512)]
    assert res["weights"] == "ngram:2" and res["val_tokens"] == 512
    assert abs(res["val_loss"] - np.mean(nll)) < 1e-5, (res["val_loss"], np.mean(nll))
    refused = run_script(["eval_bpb.py", "--teacher", "ngram:1"], env, cwd=str(tmp_path))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: --teacher ngram:1: use ngram:ORDER with ORDER >= 2, e.g. ngram:3"]


def test_cache_logits_writes_the_ngram_teachers_rows(tiny_dataset, tmp_path):
    """`cache_logits.py --teacher ngram:2`: row t of a shard holds the top-K of the reference distribution at
    stream position t, its own occurrence left out (every position counted), in the cache's fp16 encoding."""
    out = tmp_path / "cache"
    run = run_script(["cache_logits.py", "--teacher", "ngram:2", "--out", str(out), "--k", "4", "--shards", "1"],
                     {**dataset_env(tiny_dataset), "PRESET": "test"}, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    reader = CacheReader(str(out), tiny_dataset.train_files)
    assert reader.num_shards == 1 and reader.spec.window == reader.spec.stride == 1
    assert cache_manifest_field(str(out), "build_seconds") > 0  # counting and writing, for golf.compute
    idx, vals = reader.gather([(0, 100, 30)])
    stream = TrainStream(tiny_dataset.train_files)
    brute = BruteForce(stream.read(0, stream.total), 2, 1024)
    for g in range(stream.total):
        brute.add(g)
    for i, g in enumerate(range(100, 130)):
        brute.add(g, -1)
        logp = np.log(brute.probs(brute.event(g)[0]))
        brute.add(g, +1)
        np.testing.assert_allclose(vals[i], np.sort(logp)[::-1][:4].astype(np.float16), rtol=1e-3)
        np.testing.assert_allclose(logp[idx[i].astype(np.int64)], np.sort(logp)[::-1][:4], rtol=1e-5)


def test_seed_faithful_refuses_the_ngram_teacher():
    """The study's defects are those of its cache and online teachers: an n-gram arm has none to reproduce (not
    even D4 through DISTILL_SEED_FAITHFUL=1), so asking for them is refused rather than half-applied."""
    from golf.arms import defects
    with pytest.raises(GolfError, match="DISTILL_TEACHER=ngram has none to reproduce"):
        defects(Config(distill_teacher="ngram", distill_seed_faithful="1"))
    assert defects(Config(distill_teacher="online", distill_seed_faithful="1")) == {"D3", "D4"}
