"""The n-gram teacher (golf/ngram.py, DISTILL_TEACHER=ngram): its probabilities equal a float64 brute-force
interpolated Witten-Bell model (Python dicts, no hashing) for orders 2 to 5, with and without leave-one-out and
online counting; leave-one-out removes exactly the position's own occurrence; no validation token is counted;
every rank holds the same counts; hash collisions stay at the random-hash (birthday) rate; the build is in
train_time; distill.py trains with it (1 and 2 processes) and refuses bad settings before any step;
eval_bpb.py scores it and cache_logits.py caches it.

Run: python -m pytest tests/test_ngram.py -q
"""
import dataclasses
import json
import math
import re
import types
from collections import Counter

import numpy as np
import pytest
import torch

from golf import native
from golf.cache import CacheReader, cache_manifest_field
from golf.config import Config
from golf.data import DistributedTokenLoader
from golf.dist import Ctx
from golf.errors import GolfError
from golf.losses import distill_terms
from golf.ngram import CountModel, StreamNgram, TrainStream, bound_bytes
from golf.teachers import NgramTeacher
from golf.objectives import build_objective
from golf.shards import list_shards, load_shard, write_shard
from golf.train import train
from helpers import cpu_ctx, dataset_env, logger, make_config, run_inputs, run_script

SMALL_V = 7
SHARD_SIZES = (700, 411, 530)  # the batches below cross both shard boundaries and the wrap-around


pytestmark = pytest.mark.usefixtures("one_thread")


def use_backend(name: str, monkeypatch):
    """Queries run golf/count.c's kernels on the CPU where they build, the torch form elsewhere (CUDA, no compiler)."""
    if name == "torch":
        monkeypatch.setitem(native._libraries, "count.c", False)
    else:
        monkeypatch.delitem(native._libraries, "count.c", raising=False)
        if native.library("count.c") is None:
            pytest.skip("no C compiler here: golf/count.c cannot be built (the torch form is tested)")


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
                ngram_prepass_tokens=0, ngram_online=False, ngram_leave_one_out=True)
    return Config(**{**base, **kw})


def open_model(cfg: Config, files, ctx: Ctx | None = None) -> StreamNgram:
    return StreamNgram.open(cfg, types.SimpleNamespace(train_files=files, ctx=ctx or cpu_ctx()))


# ------------------------------------------------------------------------------------------------------------
# The float64 reference: raw counts in dicts keyed by the exact n-gram; continuation counts, counts-of-counts,
# discounts and the interpolation recomputed from them, written out plainly


def reference_discounts(a: dict, smoothing: str) -> list[float]:
    """[0, D1, D2, D3+] from the counts-of-counts of one order's model counts `a` (Chen & Goodman; x/0 read as 0,
    clamped to [0.1, i])."""
    n = [sum(1 for c in a.values() if c == i) for i in range(5)]
    y = n[1] / (n[1] + 2 * n[2]) if n[1] + 2 * n[2] else 0.0
    if smoothing == "kn":
        return [0.0] + [min(max(y, 0.1), 1.0)] * 3
    out = [0.0]
    for i in (1, 2, 3):
        ratio = n[i + 1] / n[i] if n[i] else 0.0
        out.append(min(max(i - (i + 1) * y * ratio, 0.1), float(i)))
    return out


class BruteForce:
    def __init__(self, stream: np.ndarray, order: int, v: int, smoothing: str = "mkn"):
        self.stream, self.order, self.v, self.smoothing = stream, order, v, smoothing
        self.raw = [Counter() for _ in range(order)]  # [k-1][k-gram tuple]

    def event(self, g: int):
        """(the n-1 tokens up to cyclic stream position g, the token after it)."""
        t, n = self.stream, len(self.stream)
        return tuple(int(t[(g - i) % n]) for i in range(self.order - 2, -1, -1)), int(t[(g + 1) % n])

    def add(self, g: int, sign: int = 1):
        ctx, w = self.event(g)
        for k in range(1, self.order + 1):
            gram = (ctx[len(ctx) - (k - 1):] if k > 1 else ()) + (w,)
            self.raw[k - 1][gram] += sign
            if self.raw[k - 1][gram] == 0:
                del self.raw[k - 1][gram]

    def model_counts(self, k: int) -> dict:
        """Order k's counts: raw at the top order (and for wb), else the number of distinct (k+1)-grams ending in it."""
        if self.smoothing == "wb" or k == self.order:
            return dict(self.raw[k - 1])
        return dict(Counter(gram[1:] for gram in self.raw[k]))

    def discounts(self) -> list:
        return [None if self.smoothing == "wb" else reference_discounts(self.model_counts(k), self.smoothing)
                for k in range(1, self.order + 1)]

    def probs(self, ctx: tuple, discounts: list | None = None) -> np.ndarray:
        """P(. | ctx), ctx holding the tokens available (a row's first positions have fewer than n-1); discounts
        those of the full counts (leave-one-out keeps them, golf/ngram.py)."""
        discounts = discounts or self.discounts()
        p = np.full(self.v, 1.0 / self.v)
        for k in range(1, min(self.order, len(ctx) + 1) + 1):
            h = ctx[len(ctx) - (k - 1):] if k > 1 else ()
            followers = {g[-1]: c for g, c in self.model_counts(k).items() if g[:-1] == h}
            if not followers:
                continue
            if self.smoothing == "wb":
                den, gnum = sum(followers.values()) + len(followers), len(followers)
                num = dict(followers)
            else:
                d = discounts[k - 1]
                den = sum(followers.values())
                gnum = sum(d[min(c, 3)] for c in followers.values())
                num = {w: c - d[min(c, 3)] for w, c in followers.items()}
            p = gnum / den * p
            for w, c in num.items():
                p[w] += c / den
        return p


def check_signal(signal, want: np.ndarray, y: np.ndarray, where: str):
    """A CountDist against reference distributions `want` (N, V): dense equal, sums to 1 both ways, the target's
    log-prob, entries grouped by position (ascending, every position has one)."""
    got = signal.dense().numpy()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-7, err_msg=where)
    n = len(y)
    entry_sum = torch.zeros(n, dtype=torch.float64).index_add_(0, signal.entry_row, signal.weight.double())
    total = (entry_sum + signal.rho.double() + signal.beta.double()).numpy()
    np.testing.assert_allclose(total, 1.0, atol=2e-6, err_msg=where)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=2e-6, err_msg=where)
    np.testing.assert_allclose(signal.target_logprob.double().numpy(), np.log(want[np.arange(len(y)), y]), rtol=2e-5,
                               atol=2e-6, err_msg=where)
    assert (signal.rows[-1] > 0).all()  # the order-1 model, shared by every position
    np.testing.assert_allclose(signal.rows.double().sum(1).numpy(), 1.0, atol=2e-6)
    assert (signal.entry_row.diff() >= 0).all() and torch.equal(signal.entry_row.unique(), torch.arange(n)), where


def check_batch(model: StreamNgram, brute: BruteForce, batch, counted: int):
    """model.signal(batch) against the reference, each counted position with its own event taken out (LOO) from
    every order, the contexts the tokens of its row."""
    signal = model.signal(batch)
    g = model.positions(batch).numpy()
    x = batch.x.numpy()
    seq = x.shape[1]
    discounts = brute.discounts()
    want = []
    for i in range(len(g)):
        r, j = divmod(i, seq)
        ctx = tuple(int(t) for t in x[r, max(0, j - (brute.order - 2)):j + 1])
        out = model.leave_one_out and g[i] < counted
        if out:
            brute.add(int(g[i]), -1)
        want.append(brute.probs(ctx, discounts))
        if out:
            brute.add(int(g[i]), +1)
    check_signal(signal, np.array(want), batch.y.reshape(-1).numpy(), f"positions {g[0]}..")
    return signal


def check_stream_signal(model: StreamNgram, brute: BruteForce, a: int, b: int):
    """stream_signal at [a, b) (the cache's rows: whole cyclic contexts) against the reference."""
    discounts = brute.discounts()
    want = []
    for g in range(a, b):
        out = model.leave_one_out and g < model.counted
        if out:
            brute.add(g, -1)
        want.append(brute.probs(brute.event(g)[0], discounts))
        if out:
            brute.add(g, +1)
    y = np.array([brute.event(g)[1] for g in range(a, b)])
    check_signal(model.stream_signal(a, b), np.array(want), y, f"stream [{a}, {b})")


@pytest.mark.parametrize("backend", ["golf/count.c", "torch"])
@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("smoothing", ["mkn", "kn", "wb"])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_probabilities_equal_a_brute_force_model(tmp_path, order, smoothing, leave_one_out, backend, monkeypatch):
    """Every order and smoothing, leave-one-out on and off, online counting (odd orders) and not: each batch's
    distribution equals the float64 dict model's, across the shard boundaries and the wrap-around (the loader
    reads 14 x 129 tokens of a 1641-token stream), and the stream's first and last positions with their
    cyclic contexts. Two rare tokens (3 occurrences, 1) make the leave-one-out rows that mix a bigram row with
    uniform (golf/ngram.py) appear. Both backends: golf/count.c and the torch form."""
    use_backend(backend, monkeypatch)
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V - 2, seed=order)
    tokens[[150, 420, 1300]], tokens[700] = SMALL_V - 2, SMALL_V - 1
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    prepass, online = 900, order % 2 == 1
    cfg = ngram_config(ngram_order=order, ngram_prepass_tokens=prepass, ngram_online=online,
                       ngram_leave_one_out=leave_one_out, ngram_smoothing=smoothing)
    model = open_model(cfg, files)
    model.build()
    brute = BruteForce(tokens, order, SMALL_V, smoothing)
    for g in range(prepass):
        brute.add(g)
    assert model.counts.distinct() == [len(r) for r in brute.raw]  # exact: one key per distinct n-gram
    loader = DistributedTokenLoader(files, 0, 1)
    mixed = 0
    for _ in range(14):
        batch = loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1)
        before = model.counted
        mixed += int((check_batch(model, brute, batch, before).row_of > SMALL_V).sum())
        for g in range(before, model.counted):
            brute.add(g)
        if online:  # counted up to the last position whose target the loader has read
            assert model.counted == max(prepass, min(model.read_upto - 1, len(tokens)))
        else:
            assert model.counted == prepass
    assert (mixed > 0) == leave_one_out
    check_stream_signal(model, brute, 0, 30)
    check_stream_signal(model, brute, len(tokens) - 30, len(tokens))
    assert int(model.counts.orders[0].raw.sum()) == model.counted


@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("smoothing", ["mkn", "kn", "wb"])
def test_the_c_query_is_the_torch_query_field_for_field(tmp_path, order, smoothing, monkeypatch):
    """golf/count.c's query (lookups among a context's followers, one pass per position) gives the torch form's
    CountDist bit for bit: over the whole stream with its cyclic contexts, each counted position left out (the
    contexts of the stream's first event are orphans: the stream's end is not counted), and on rows whose first
    positions lack the longer orders (`predict`)."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V - 2, seed=10 + order)
    tokens[[150, 420, 1300]], tokens[700] = SMALL_V - 2, SMALL_V - 1
    # the stream ends in the rare token after another predecessor: contexts across the wrap are counted nowhere
    tokens[-1], tokens[-2] = SMALL_V - 1, (tokens[699] + 1) % (SMALL_V - 2)
    cfg = ngram_config(ngram_order=order, ngram_prepass_tokens=900, ngram_online=False, ngram_smoothing=smoothing)
    model = open_model(cfg, write_split(tmp_path, tokens, SHARD_SIZES))
    model.build()
    assert order == 2 or any(len(o.orphans) > 1 for o in model.counts.orders[1:])  # beside the sentinel
    rows = torch.from_numpy(tokens[:6 * 50].reshape(6, 50))
    got = {}
    for backend in ("golf/count.c", "torch"):
        use_backend(backend, monkeypatch)
        got[backend] = (model.stream_signal(0, len(tokens)), model.predict(rows))
    (c_signal, c_logp), (t_signal, t_logp) = got.values()
    for field in dataclasses.fields(c_signal):
        assert torch.equal(getattr(c_signal, field.name), getattr(t_signal, field.name)), field.name
    assert torch.equal(c_logp, t_logp)


def test_kneser_ney_counts_and_discounts_by_hand():
    """The stream a b a b a c (cyclic) at order 2, every position counted: raw bigrams ab 2, ba 2, ac 1, ca 1;
    continuation unigram a 2 (b, c precede it), b 1, c 1; modified KN's D1..D3 from n1 = 2, n2 = 2 at order 2:
    Y = 1/3, D1 = 1 - 2/3 * 1 = 1/3, D2 = 2 - 0 (n3 = 0) = 2 (clamped to [0.1, 2])."""
    tokens = np.array([0, 1, 0, 1, 0, 2])
    model = CountModel(2, 3, "mkn", torch.device("cpu"))
    windows = torch.from_numpy(np.roll(tokens, 0)).view(-1, 1)
    model.add(windows, torch.from_numpy(np.roll(tokens, -1)))
    model.derive()
    o1, o2 = model.orders
    assert o2.keys[:-1].tolist() == [0 * 3 + 1, 0 * 3 + 2, 1 * 3 + 0, 2 * 3 + 0] and o2.raw[:-1].tolist() == [2, 1, 2, 1]
    assert o1.a[:-1].tolist() == [2, 1, 1]
    assert o2.discounts[1:3] == pytest.approx((1 / 3, 2.0))
    # P(b | a) = (2 - D2) / 3 + gamma(a) P1(b), gamma(a) = (D2 + D1) / 3; P1 from continuation counts 2, 1, 1
    d1_1, d1_2 = o1.discounts[1], o1.discounts[2]
    p1 = np.array([2 - d1_2, 1 - d1_1, 1 - d1_1]) / 4 + (d1_2 + 2 * d1_1) / 4 / 3
    want = (2 - 2.0) / 3 + (2.0 + 1 / 3) / 3 * p1[1]
    signal = model.query(torch.tensor([0, 1]), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, dtype=torch.bool))
    assert signal.dense()[0, 1].item() == pytest.approx(want, rel=1e-6)
    assert signal.target_logprob.item() == pytest.approx(math.log(want), rel=1e-6)


@pytest.mark.parametrize("smoothing", ["mkn", "kn", "wb"])
def test_the_exact_count_loss_on_the_real_model_equals_the_dense_kl(tmp_path, smoothing):
    """The count model's CountDist (negative rho on the uniform row, mixed rows with small negative entries,
    leave-one-out corrections at the target's slot) through distill_terms' count path: the KL's value and its
    gradient equal the dense float64 KL to CountDist.dense(), and teacher_ce is the mean of -log p[n, y_n]."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V, seed=2)
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    model = open_model(ngram_config(ngram_order=5, ngram_prepass_tokens=-1, ngram_smoothing=smoothing), files)
    model.build()
    batch = DistributedTokenLoader(files, 0, 1).next_batch(4 * 32, 32, 1)
    signal = model.signal(batch)
    p = signal.dense()
    z = torch.randn(4, 32, SMALL_V, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    z32 = z.float().requires_grad_()
    _, kl, parts = distill_terms(z32, batch.y, mode="soft", temperature=1.0, **signal.loss_inputs(batch.y.shape))
    kl.backward()
    zd = z.view(-1, SMALL_V).requires_grad_()
    logq = torch.log_softmax(zd, -1)
    want = (p * (p.clamp_min(1e-300).log() - logq)).sum(-1).mean()
    want.backward()
    assert kl.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(z32.grad.view(-1, SMALL_V).double().numpy(), zd.grad.numpy(), atol=2e-7)
    teacher_ce = -p.gather(1, batch.y.view(-1, 1)).log().mean().item()
    assert parts["teacher_ce"] == pytest.approx(teacher_ce, rel=1e-5)


def test_leave_one_out_removes_exactly_the_positions_own_occurrence(tmp_path):
    """With every position counted, a position's LOO distribution is that of the model counted on the stream
    minus that one event (continuation counts and counts-of-counts per context included, the discounts of the
    full counts), and differs from the memorised one; without LOO it is the memorised one."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V, seed=11)
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    batch = DistributedTokenLoader(files, 0, 1).next_batch(4 * 32, 32, 1)
    probs = {}
    for loo in (True, False):
        model = open_model(ngram_config(ngram_order=4, ngram_prepass_tokens=len(tokens), ngram_leave_one_out=loo), files)
        model.build()
        probs[loo] = model.signal(batch).dense().numpy()
    full = BruteForce(tokens, 4, SMALL_V)
    for g in range(len(tokens)):
        full.add(g)
    discounts = full.discounts()
    y = batch.y.reshape(-1).numpy()
    for i in (5, 40, 77, 127):  # positions whose full order-4 context lies in their row
        ctx = full.event(i)[0]
        minus_one = BruteForce(tokens, 4, SMALL_V)
        for g in range(len(tokens)):
            if g != i:
                minus_one.add(g)
        np.testing.assert_allclose(probs[True][i], minus_one.probs(ctx, discounts), rtol=2e-5, atol=2e-7)
        np.testing.assert_allclose(probs[False][i], full.probs(ctx), rtol=2e-5, atol=2e-7)
    # its own occurrence no longer supports its target (on average: with modified KN one position's can rise, a
    # count moving from the D3+ to the D2 discount)
    at_y = {loo: np.log(p[np.arange(len(y)), y]).mean() for loo, p in probs.items()}
    assert at_y[True] < at_y[False] - 0.05, at_y
    # NGRAM_PREPASS_TOKENS=-1 is the whole stream: the same model as its length spelt out
    model = open_model(ngram_config(ngram_order=4, ngram_prepass_tokens=-1), files)
    model.build()
    assert model.counted == len(tokens)
    np.testing.assert_array_equal(model.signal(batch).dense().numpy(), probs[True])


def test_the_memory_cap_counts_a_prefix_and_says_so(tmp_path, capsys, monkeypatch):
    """NGRAM_MAX_MB between the bound of the first 600 positions and that of 800: counted 200 at a time, the
    counts stop at 600 (the last chunk that fits), the stop is printed once, online counting adds nothing more,
    and the model is exactly the brute-force model of that prefix. A cap the device cannot hold is refused."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V, seed=4)
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    brute = BruteForce(tokens, 4, SMALL_V)
    bounds = {}
    for g in range(800):
        brute.add(g)
        if g + 1 in (600, 800):
            bounds[g + 1] = bound_bytes([len(r) for r in brute.raw], SMALL_V)
    assert bounds[600] < bounds[800]
    cap_mb = (bounds[600] + bounds[800]) / 2 / 2**20
    monkeypatch.setattr("golf.ngram._COUNT_CHUNK", 200)
    cfg = ngram_config(ngram_order=4, ngram_prepass_tokens=1000, ngram_online=True, ngram_max_mb=cap_mb)
    model = open_model(cfg, files)
    model.build()
    assert model.counted == 600 and model.capped
    assert model.counts.bound_bytes() <= cap_mb * 2**20 and model.counts.nbytes() <= model.counts.bound_bytes()
    printed = capsys.readouterr().out
    assert f"ngram:max_mb_reached NGRAM_MAX_MB={cap_mb:g} counted:[0,600) of [0,1000)" in printed
    reference = BruteForce(tokens, 4, SMALL_V)
    for g in range(600):
        reference.add(g)
    loader = DistributedTokenLoader(files, 0, 1)
    for _ in range(10):
        check_batch(model, reference, loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1), 600)
    assert model.counted == 600 and "max_mb_reached" not in capsys.readouterr().out
    monkeypatch.setattr("golf.ngram._available_bytes", lambda device: 1000)
    # 1000 positions, 4 orders: at most 4000 n-grams x 72 bytes + the rows' 4 x 29 x 7 bytes = 0.28 MiB
    with pytest.raises(GolfError, match=r"NGRAM_MAX_MB=1: the n-gram counts may need 0.3 MiB but cpu has 0.0 MiB free"):
        open_model(ngram_config(ngram_order=4, ngram_prepass_tokens=1000, ngram_max_mb=1.0), files)


def test_a_resumed_run_queries_its_first_batch_with_the_counts_the_run_had(tmp_path):
    """Online counting: a teacher resumed from the resumable state after 5 micro-batches (reset, then its first
    fetch builds, as the timed run does) gives the 6th micro-batch the signal the uninterrupted teacher gave it,
    and both go on counting the same positions."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V, seed=8)
    files = write_split(tmp_path, tokens, SHARD_SIZES)
    cfg = ngram_config(ngram_order=4, ngram_prepass_tokens=200, ngram_online=True, distill_teacher="ngram")
    run = types.SimpleNamespace(train_files=files, ctx=cpu_ctx())
    first = NgramTeacher.from_config(cfg, run)
    loader = DistributedTokenLoader(files, 0, 1)
    batches = [loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1) for _ in range(8)]
    first.reset()
    for batch in batches[:5]:
        first.fetch(batch)
    saved = first.resume_state()
    assert saved["counted"] == 5 * 129 - 1
    resumed = NgramTeacher.from_config(cfg, run)
    resumed.load_resume_state(saved)
    resumed.reset()
    for batch in batches[5:]:
        want, got = first.fetch(batch), resumed.fetch(batch)
        assert resumed.model.counted == first.model.counted
        for field in dataclasses.fields(want):
            assert torch.equal(getattr(got, field.name), getattr(want, field.name)), field.name
    with pytest.raises(GolfError, match="carries no n-gram teacher state"):
        resumed.load_resume_state(None)


def test_no_validation_token_is_ever_counted(tmp_path):
    """Token V-1 occurs only in the val shard: after counting the whole train stream (prepass and online, past
    the wrap-around) no n-gram holds it."""
    tokens = markov_tokens(sum(SHARD_SIZES), SMALL_V - 1, seed=3)
    files = write_split(tmp_path, tokens, SHARD_SIZES, val_tokens=np.full(500, SMALL_V - 1))
    cfg = ngram_config(ngram_order=3, ngram_prepass_tokens=600, ngram_online=True)
    model = open_model(cfg, files)
    model.build()
    loader = DistributedTokenLoader(files, 0, 1)
    for _ in range(20):
        model.signal(loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1))
    assert model.counted == len(tokens)
    for k, o in enumerate(model.counts.orders, start=1):  # no n-gram of any order holds it
        assert all(((o.keys[:-1] // SMALL_V ** i) % SMALL_V != SMALL_V - 1).all() for i in range(k))
    assert int(model.counts.orders[0].raw.sum()) == len(tokens)
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
            m.signal(loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, 1))
        a, b = models
        assert a.counted == b.counted == min((step + 1) * 2 * 65 - 1, len(tokens))
        assert all(torch.equal(s.keys, t.keys) and torch.equal(s.raw, t.raw) for s, t in zip(a.counts.orders, b.counts.orders))
    for g in range(len(tokens)):
        brute.add(g)
    for k, (o, want) in enumerate(zip(models[0].counts.orders, brute.raw), start=1):  # the exact counts are the stream's
        got = {tuple(key // SMALL_V ** i % SMALL_V for i in range(k - 1, -1, -1)): c
               for key, c in zip(o.keys[:-1].tolist(), o.raw[:-1].tolist())}
        assert got == dict(want), k


def test_the_build_is_counted_in_train_time(tiny_dataset, tmp_path):
    """A budget shorter than the build: the run stops after its first step, and train_time holds the build
    (the prepass of the whole stream), which the first timed fetch does after the clock started; the warm-up
    built only a micro-batch's worth."""
    total = TrainStream(tiny_dataset.train_files).total
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="ngram", distill_temp=1.0, ngram_prepass_tokens=total,
                      ngram_order=4, max_wallclock_seconds=1e-3, iterations=50, warmup_steps=2)
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
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r", "DISTILL_TEACHER": "ngram", "DISTILL_TEMP": 1, "ITERATIONS": 3,
           "TRAIN_LOG_EVERY": 1, "NGRAM_PREPASS_TOKENS": 30000}
    out = run_script(["distill.py"], env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distill:ngram order:3 smoothing:mkn max_mb:4096 prepass_tokens:30000 online:1" in out.stdout
    assert "distill:arm teacher:ngram target:soft" in out.stdout and "track:record" in out.stdout
    kl = [float(v) for v in re.findall(r"^step:\d+/3 .* kl:(\S+)", out.stdout, re.M)]
    assert len(kl) == 3 and all(math.isfinite(v) and v > 0 for v in kl), out.stdout[-2000:]


@pytest.mark.parametrize("env, expect", [
    ({"NGRAM_ORDER": 1}, "NGRAM_ORDER=1: use 2"),
    ({"NGRAM_PREPASS_TOKENS": 10**9}, "NGRAM_PREPASS_TOKENS=1000000000 is more than the"),
    ({"NGRAM_TABLE_BITS": 18}, "NGRAM_TABLE_BITS is gone"),
    ({"NGRAM_SMOOTHING": "katz"}, "NGRAM_SMOOTHING='katz': use mkn"),
    ({"NGRAM_ORDER": 7}, "NGRAM_ORDER=7 with VOCAB_SIZE=1024: an exact n-gram key needs"),
    ({"NGRAM_MAX_MB": 0}, "NGRAM_MAX_MB=0.0: use a positive number"),
    ({"NGRAM_ONLINE": 0}, "NGRAM_PREPASS_TOKENS=0 with NGRAM_ONLINE=0 counts nothing"),
])
def test_distill_refuses_bad_ngram_settings_before_any_step(tiny_dataset, tmp_path, env, expect):
    out = run_script(["distill.py"], {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r",
                                      "DISTILL_TEACHER": "ngram", "DISTILL_TEMP": 1, **env}, cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and expect in errors[0], out.stderr
    assert "step:" not in out.stdout
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_two_ranks_train_with_the_ngram_teacher(tiny_dataset, tmp_path):
    """torchrun, 2 processes (gloo, DDP): the n-gram teacher needs no communication (each rank counts the same
    stream, tests above), and the run trains and stops on the same step on both ranks."""
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "r", "DISTILL_TEACHER": "ngram", "DISTILL_TEMP": 1, "ITERATIONS": 4,
           "NGRAM_PREPASS_TOKENS": 5000, "NGRAM_ORDER": 4}
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


@pytest.mark.parametrize("preset", [None, "demo-student"])
def test_cache_logits_writes_the_ngram_teachers_rows(tiny_dataset, tmp_path, preset):
    """`cache_logits.py --teacher ngram:2 --out DIR` as the README writes it (no --k, no PRESET or the demo's):
    row t of a shard holds the top-32 of the reference distribution at stream position t, its own occurrence
    left out (every position counted), in the cache's fp16 encoding."""
    out = tmp_path / "cache"
    run = run_script(["cache_logits.py", "--teacher", "ngram:2", "--out", str(out), "--shards", "1"],
                     {**dataset_env(tiny_dataset), **({"PRESET": preset} if preset else {})}, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    reader = CacheReader(str(out), tiny_dataset.train_files)
    assert reader.num_shards == 1 and reader.spec.window == reader.spec.stride == 1 and reader.k == 32
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
        np.testing.assert_allclose(vals[i], np.sort(logp)[::-1][:32].astype(np.float16), rtol=1e-3)
        np.testing.assert_allclose(logp[idx[i].astype(np.int64)], np.sort(logp)[::-1][:32], rtol=1e-5)


def test_seed_faithful_refuses_the_ngram_teacher():
    """The study's defects are those of its cache and online teachers: an n-gram arm has none to reproduce (not
    even D4 through DISTILL_SEED_FAITHFUL=1), so asking for them is refused rather than half-applied."""
    from golf.arms import defects
    with pytest.raises(GolfError, match="DISTILL_TEACHER=ngram has none to reproduce"):
        defects(Config(distill_teacher="ngram", distill_seed_faithful="1"))
    assert defects(Config(distill_teacher="online", distill_seed_faithful="1")) == {"D3", "D4"}
