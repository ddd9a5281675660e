"""The cache builder (golf/cache_build.py) and cache_logits.py: window layout, cached rows against an
independent recomputation of the teacher, kill -9 and resume, refusals, disk space, torchrun.

Run: python -m pytest tests/test_cache_build.py -q
"""
import contextlib
import io
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import types
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from golf.cache import CacheReader, CacheSpec, CacheWriter
from golf.cache_build import (build_cache, draw_key, draw_uniforms, plan_windows, sample_rows, teacher_context,
                              teacher_topk, verify_cache)
from golf.checkpoint import load_teacher, save_checkpoint
from golf.codecs import CODECS
from golf.config import PRESETS, Config
from golf.errors import GolfError
from golf.model import GPT
from golf.signals import Sampled, Top1, TopK
from golf.teachers import CachedTeacher
from golf.shards import load_shard, write_shard
from helpers import REPO, cpu_ctx, edge_rows, run_script

K = 8
CONTENT_SIZES = (37, 100, 5, 64, 201)  # not multiples of any window or stride; one shard shorter than a stride
SCRIPT_SIZES = (750, 666, 850, 600, 777, 700, 825, 650)  # many shards: time to kill between two
# Script runs: a small stride and one window per forward make each shard take ~0.1-0.4 s on CPU.
SCRIPT_ARGS = ["--k", "16", "--window", "32", "--stride", "8", "--batch-windows", "2"]
SAMPLED_ARGS = ["--encoding", "sampled", "--draws", "12", "--temperature", "1.5", *SCRIPT_ARGS[2:]]


def write_stream(folder, sizes, vocab=1024, seed=0) -> list[str]:
    """Random-token train shards in `folder` (sorted name order = stream order)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, n in enumerate(sizes):
        paths.append(os.path.join(folder, f"rand_train_{i:06d}.bin"))
        write_shard(paths[-1], rng.integers(0, vocab, n))
    return paths


def random_teacher(path, seed: int, seq_len: int = 32, vocab: int = 1024) -> GPT:
    """A `test`-preset GPT with random weights saved as a checkpoint. The init zeroes the output projections
    and the bigram table and makes the logits nearly uniform; the added noise makes every path (attention
    over the context included) matter and the top-K well separated."""
    cfg = Config(**{**PRESETS["test"], "train_seq_len": seq_len, "vocab_size": vocab})
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_checkpoint(str(path), {"config": cfg.to_dict(), "model": model.state_dict(), "kind": "final"})
    return model.eval()


def dir_bytes(folder) -> dict:
    """Every file of a cache folder: {name: contents}; the manifest without `build_seconds`, the one figure that
    is a measurement (cache_logits.py's time) rather than a function of the teacher and data."""
    out = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}
    if "manifest.json" in out:
        manifest = json.loads(out["manifest.json"])
        assert manifest.pop("build_seconds", 0) >= 0
        out["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return out


@contextlib.contextmanager
def one_thread():
    """Bitwise-reproducible CPU kernels, identical to the scripts run with OMP_NUM_THREADS=1. Also much faster
    for these tiny shapes on a busy machine, where two threads wait for each other at every op."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ----------------------------------------------------------------------------------------------------------
# Window layout


@pytest.mark.parametrize("window,stride,total", [(8, 8, 50), (8, 3, 50), (8, 1, 23), (16, 5, 16), (16, 7, 9), (5, 4, 101)])
def test_plan_windows_scores_every_position_once_with_enough_context(window, stride, total):
    """Brute force over every shard range [lo, hi): each position is scored exactly once, by a window whose
    input it lies in, with >= window - stride tokens of context before it except in window 0, and by the
    same window whatever the range (so shards, ranks and resumes agree)."""
    owner = {}
    for lo, hi in [(0, total)] + [(lo, hi) for lo in range(total) for hi in range(lo, total + 1)]:
        scored = []
        for ws, we, a, b in plan_windows(lo, hi, window, stride, total):
            assert 0 <= ws and we <= total and 0 < we - ws <= window
            assert we - ws == window or we == total  # only the stream's last window is short
            assert ws % stride == 0 and ws <= a < b <= we
            for p in range(a, b):
                assert ws == 0 or p - ws >= window - stride, (ws, p)
                assert owner.setdefault(p, (ws, we)) == (ws, we), p
            scored += range(a, b)
        assert scored == list(range(lo, hi)), (lo, hi)
    assert sorted(owner) == list(range(total))


def test_plan_windows_final_short_window_and_documented_spans():
    assert list(plan_windows(0, 20, 8, 8, 20)) == [(0, 8, 0, 8), (8, 16, 8, 16), (16, 20, 16, 20)]
    # stride 3: window 0 scores [0, 8), window k >= 1 its last 3 positions [3k + 5, 3k + 8)
    assert list(plan_windows(6, 14, 8, 3, 13)) == [(0, 8, 6, 8), (3, 11, 8, 11), (6, 13, 11, 13)]
    assert list(plan_windows(7, 7, 8, 3, 13)) == []


# ----------------------------------------------------------------------------------------------------------
# Cached rows against an independent recomputation


def expected_window(p: int, window: int, stride: int) -> int:
    """The documented layout, searched by brute force: window 0 scores [0, L), window k [kS + L - S, kS + L)."""
    for k in range(p + 2):
        a = 0 if k == 0 else k * stride + window - stride
        if a <= p < k * stride + window:
            return k
    raise AssertionError(p)


def reference(model: GPT, tokens: np.ndarray, ws: int, we: int):
    """Log-probabilities of the model on exactly the input tokens[ws:we] (one window, unpadded, no batch),
    and their top-K values per position."""
    x = torch.from_numpy(tokens[ws:we].astype(np.int64))[None]
    with torch.no_grad():
        lp = torch.log_softmax(model(x)[0].double(), dim=-1)
    return lp.numpy(), lp.topk(K, dim=-1).values.numpy()


def fp16_tol(v):
    """fp16 round-to-nearest (half an ulp <= |v| 2^-11) plus the noise of fp32 forwards of other shapes."""
    return np.abs(v) * 2.0**-11 + 1e-4


DRAWS, TEMP, SHA = 32, 2.0, "3a" * 32  # a sampled cache's


def build(tmp, model, paths, window, stride, vocab, encoding="fp16", batch_windows=4, fixed_shape=False):
    sampled = CODECS[encoding].value_kind == "draw_counts"
    spec = CacheSpec(k=DRAWS if sampled else K, vocab_size=vocab, encoding=encoding, teacher_sha256=SHA if sampled else "0" * 64,
                     teacher_config=model.cfg.to_dict(), window=window, stride=stride, temperature=TEMP if sampled else None)
    out = os.path.join(tmp, f"cache_{encoding}")
    writer = CacheWriter(out, paths, spec)
    stats = build_cache(model, writer, paths, writer.pending(), cpu_ctx(), batch_windows, fixed_shape)
    assert writer.finalize() == [] and stats["positions"] == sum(CONTENT_SIZES)
    return CacheReader(out, paths)


@pytest.mark.parametrize("encoding", ["fp16", "sampled", "sampled-packed"])
@pytest.mark.parametrize("window,stride,vocab,batch_windows,fixed_shape", [
    (32, 32, 1024, 64, False),
    (32, 12, 1024, 3, False),
    (24, 7, 1024, 5, True),  # every batch padded to one shape, as for a compiled teacher
    (24, 24, 40000, 4, False),  # ids >= 2**15 do not fit the int16 the device side uses for small vocabs
])
def test_cached_rows_equal_the_teacher_recomputed_on_each_window(tmp_path, window, stride, vocab, batch_windows, fixed_shape, encoding):
    if vocab > CODECS[encoding].max_vocab:
        pytest.skip(f"{encoding} holds vocabularies up to {CODECS[encoding].max_vocab}")
    paths = write_stream(tmp_path / "data", CONTENT_SIZES)
    model = random_teacher(tmp_path / "teacher.pt", seed=1, seq_len=window, vocab=vocab)
    reader = build(str(tmp_path), model, paths, window, stride, vocab, encoding, batch_windows=batch_windows, fixed_shape=fixed_shape)
    tokens = np.concatenate([np.asarray(load_shard(p)) for p in paths])
    if encoding != "fp16":
        check_sampled_rows(reader, model, tokens, window, stride, vocab)
        return
    idx, vals = reader.gather([(i, 0, n) for i, n in enumerate(CONTENT_SIZES)])
    assert idx.shape == (len(tokens), K)

    total, checked, shifted_differs = len(tokens), 0, []
    for k in sorted({expected_window(p, window, stride) for p in range(total)}):
        ws, we = k * stride, min(k * stride + window, total)
        lp, top = reference(model, tokens, ws, we)
        ps = [p for p in range(ws, we) if expected_window(p, window, stride) == k]
        for p in ps:
            ref = top[p - ws]
            tol = fp16_tol(ref)
            assert (np.abs(vals[p] - ref) <= tol).all(), (p, vals[p] - ref)
            # ids: each cached id holds the reference's value at its rank (so ids are equal up to ties)
            assert len(set(idx[p])) == K and (np.abs(lp[p - ws][idx[p]] - ref) <= 1e-4).all(), p
            # the row is position p's prediction, not its neighbours' (the teacher depends on the context)
            for q in (p - 1, p + 1):
                if ws <= q < we:
                    assert (np.abs(vals[p] - top[q - ws]) > tol).any(), (p, q)
            checked += 1
        if ws > 0:  # the same positions scored from a window starting one token later differ
            top1 = reference(model, tokens, ws + 1, we)[1]
            shifted_differs += [(np.abs(vals[p] - top1[p - ws - 1]) > fp16_tol(vals[p])).any() for p in ps if p > ws]
    assert checked == total
    assert np.mean(shifted_differs) > 0.9, np.mean(shifted_differs)  # so a one-token layout shift would show
    if vocab > 1 << 15:
        assert (idx >= 1 << 15).any()


def multiset(ids, counts) -> dict:
    return {int(i): int(c) for i, c in zip(ids, counts) if c}


def check_sampled_rows(reader, model, tokens, window, stride, vocab):
    """Each cached row is the draws of its own position: `sample_rows` on the reference log-probs of the window
    that scores it (log-probs are logits: softmax(log p / T) = softmax(logits / T)), keyed by its shard and
    offset. The cache's float32 forward over a batch differs from the float64 reference by ~1e-6, so a draw
    whose uniform lies that close to a CDF step may land on the neighbouring id: at most one draw per row, in
    at most 1% of the rows. The rows from the neighbouring positions' distributions under the same key differ
    (so a one-token shift of the logits would show)."""
    starts = np.concatenate([[0], np.cumsum(CONTENT_SIZES)])
    ids, counts = reader.gather_sampled([(i, 0, n) for i, n in enumerate(CONTENT_SIZES)])
    assert ids.shape[0] == len(tokens) and (counts.astype(int).sum(1) == DRAWS).all()
    assert ids.dtype == np.int64 and (vocab <= 1 << 15 or (ids >= 1 << 15).any())
    total, off_by_one, shifted_differs = len(tokens), [], []

    def draws(logp_row, p):
        shard = int(np.searchsorted(starts, p, side="right") - 1)
        got = sample_rows(torch.from_numpy(logp_row), torch.tensor(p - starts[shard]), DRAWS, TEMP, draw_key(SHA, shard))
        return multiset(*(t.numpy() for t in got))

    for k in sorted({expected_window(p, window, stride) for p in range(total)}):
        ws, we = k * stride, min(k * stride + window, total)
        lp, _ = reference(model, tokens, ws, we)
        for p in [p for p in range(ws, we) if expected_window(p, window, stride) == k]:
            want, got = draws(lp[p - ws], p), multiset(ids[p], counts[p])
            if got != want:
                off_by_one.append(sum(abs(got.get(i, 0) - want.get(i, 0)) for i in set(got) | set(want)))
            shifted_differs += [draws(lp[q - ws], p) != got for q in (p - 1, p + 1) if ws <= q < we]
    assert len(off_by_one) <= total // 100 and all(d == 2 for d in off_by_one), off_by_one
    assert np.mean(shifted_differs) > 0.9, np.mean(shifted_differs)


# ----------------------------------------------------------------------------------------------------------
# Draws (a sampled cache)


def draw_frequencies(logits, temperature, rows=4000, draws=16, key=12345):
    """Every row the same logits: the mean over rows of counts / N per id, and the total draws."""
    ids, counts = sample_rows(logits.expand(rows, -1), torch.arange(rows), draws, temperature, key)
    freq = torch.zeros(logits.shape[-1], dtype=torch.float64).index_add_(0, ids.long().flatten(), counts.double().flatten())
    return freq / (rows * draws), rows * draws


def test_draws_follow_the_tempered_teacher_distribution():
    """Pearson's chi-square of 64,000 draws against softmax(logits / T), 49 degrees of freedom: mean 49, sd 9.9;
    the bound 49 + 6 sd is passed by chance with probability < 1e-5, and the seed is fixed. The same draws are
    far from the untempered distribution (chi-square in the thousands), and every id's frequency is within
    5 binomial standard deviations of its probability."""
    torch.manual_seed(0)
    logits = torch.randn(50, dtype=torch.float64) * 2.5
    for temperature in (1.0, 2.0, 0.5):
        freq, n = draw_frequencies(logits, temperature)
        p = torch.softmax(logits / temperature, -1)
        chi2 = float((n * (freq - p) ** 2 / p).sum())
        assert chi2 < 49 + 6 * 9.9, (temperature, chi2)
        assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1 / n).all()
        other = torch.softmax(logits / (2.0 if temperature != 2.0 else 1.0), -1)
        assert float((n * (freq - other) ** 2 / other).sum()) > 1000
    # an id of probability 0 (logit -inf) is never drawn, nor one below the float64 CDF's resolution
    logits[:10] = -float("inf")
    logits[10] = -800.0
    freq, _ = draw_frequencies(logits, 1.0)
    assert (freq[:11] == 0).all()


def test_draw_uniforms_are_uniform_and_depend_only_on_their_key():
    u = draw_uniforms(7, torch.arange(20000), 8)
    assert u.shape == (20000, 8) and u.dtype == torch.float64 and 0 <= u.min() and u.max() < 1
    ks = (u.flatten().sort().values - (torch.arange(160000) + 0.5) / 160000).abs().max()
    assert ks < 1.95 / 160000 ** 0.5  # Kolmogorov-Smirnov at the 0.1% level
    for lag in (1, 8):  # neither neighbouring draws nor neighbouring rows are correlated
        flat = u.flatten() - 0.5
        assert abs(float((flat[lag:] * flat[:-lag]).mean()) * 12) < 4 / 160000 ** 0.5
    # a row's uniforms are a function of (key, offset, draw) alone
    torch.testing.assert_close(draw_uniforms(7, torch.tensor([[5, 19999]]), 8)[0], u[[5, 19999]], rtol=0, atol=0)
    assert torch.equal(draw_uniforms(7, torch.arange(10), 3), u[:10, :3])  # fewer draws: the first ones
    assert not torch.isclose(draw_uniforms(8, torch.arange(10), 8), u[:10]).any()  # another key: other draws
    assert draw_key("ab" * 32, 0) != draw_key("ab" * 32, 1) != draw_key("ac" * 32, 1)


def test_sampled_rows_are_the_same_whatever_the_batching_and_nest_in_n():
    torch.manual_seed(1)
    logits = torch.randn(6, 40, 300) * 3
    offsets = torch.arange(240).view(6, 40) * 3 + 11
    ids, counts = sample_rows(logits, offsets, 24, 2.0, draw_key("5" * 64, 3))
    assert ids.dtype == torch.int16 and counts.dtype == torch.uint8 and ids.shape == (6, 40, 24)
    for rows in (slice(0, 1), slice(2, 6)):  # another batch: the same rows
        again = sample_rows(logits[rows], offsets[rows], 24, 2.0, draw_key("5" * 64, 3))
        assert torch.equal(again[0], ids[rows]) and torch.equal(again[1], counts[rows])
    assert (counts.sum(-1) == 24).all()
    # canonical: most drawn first, ties by lower id, padding (0, 0) last
    for r_ids, r_counts in zip(ids.view(-1, 24).tolist(), counts.view(-1, 24).tolist()):
        m = sum(c > 0 for c in r_counts)
        assert r_counts[m:] == [0] * (24 - m) and r_ids[m:] == [0] * (24 - m)
        entries = list(zip(r_ids[:m], r_counts[:m]))
        assert entries == sorted(entries, key=lambda e: (-e[1], e[0])) and len(set(r_ids[:m])) == m
    # N = 8 draws are the first 8 of the 24: each id's count at 8 is at most its count at 24
    few = sample_rows(logits, offsets, 8, 2.0, draw_key("5" * 64, 3))
    for a, b in zip(zip(few[0].view(-1, 8), few[1].view(-1, 8)), zip(ids.view(-1, 24), counts.view(-1, 24))):
        small, big = multiset(*(t.numpy() for t in a)), multiset(*(t.numpy() for t in b))
        assert all(big.get(i, 0) >= c for i, c in small.items())
    other = sample_rows(logits, offsets, 24, 2.0, draw_key("5" * 64, 4))  # another shard's key
    assert not torch.equal(other[0], ids)


def test_teacher_topk_selects_the_float64_top_k_on_edge_rows():
    """teacher_topk's dtypes and values on the rows tests/test_topk.py checks golf/topk.py with, against float64."""
    logits = edge_rows(300, K)  # log-probs are valid logits: their log-softmax is themselves
    idx, vals = teacher_topk(lambda x: logits[None], torch.zeros(1, len(logits), dtype=torch.int64), K, cpu_ctx())
    assert idx.dtype == torch.int16 and vals.dtype == torch.float16
    idx, vals = idx[0].long(), vals[0]
    logp = torch.log_softmax(logits.double(), -1)
    ref = logp.topk(K, -1).values
    assert torch.equal(vals, ref.to(torch.float16))  # the top-K values, sorted descending
    assert torch.equal(logp.gather(-1, idx).to(torch.float16), vals)  # ids hold them (equal up to ties)
    assert all(len(set(row.tolist())) == K for row in idx)


def test_packed_cache_holds_the_fp16_cache_rows(tmp_path):
    paths = write_stream(tmp_path / "data", CONTENT_SIZES)
    model = random_teacher(tmp_path / "teacher.pt", seed=2)
    segments = [(i, 0, n) for i, n in enumerate(CONTENT_SIZES)]
    fp16 = build(str(tmp_path), model, paths, 32, 12, 1024).gather(segments)
    packed = build(str(tmp_path), model, paths, 32, 12, 1024, encoding="packed").gather(segments)
    np.testing.assert_array_equal(packed[0], fp16[0])
    assert np.abs(packed[1] - fp16[1]).max() <= 0.11  # the packed encoding's documented bound


# ----------------------------------------------------------------------------------------------------------
# cache_logits.py: resume, refusals, disk space, torchrun, --verify


class ScriptRuns:
    """One train stream, one random teacher and one uninterrupted cache_logits.py run (in-process) with `settings`."""

    def __init__(self, root: Path, ds, settings=SCRIPT_ARGS):
        self.root, self.settings = root, settings
        self.data = root / "data"
        self.paths = write_stream(self.data, SCRIPT_SIZES)
        self.teacher = root / "teacher.pt"
        random_teacher(self.teacher, seed=3)
        self.tokenizer = ds.tokenizer_path
        self.ref = root / "ref"
        with one_thread():
            code, self.ref_stdout, err = self.main(self.ref, "--verify", "25")
        assert code == 0, err

    def with_settings(self, settings) -> "ScriptRuns":
        """The same stream, teacher and reference run, other cache_logits.py settings for `main`."""
        runs = ScriptRuns.__new__(ScriptRuns)
        runs.__dict__.update(self.__dict__, settings=settings)
        return runs

    def env(self, data=None) -> dict:
        # fp32: DTYPE=auto picks bf16 autocast on CPUs with bf16 instructions; the checks here use fp32
        return {"DATA_PATH": str(data or self.data), "TOKENIZER_PATH": self.tokenizer, "DTYPE": "fp32"}

    def args(self, out, *extra, teacher=None) -> list[str]:
        return ["cache_logits.py", "--teacher", str(teacher or self.teacher), "--out", str(out), *self.settings, *extra]

    def main(self, out, *extra, teacher=None, data=None, debug=False, unset=()):
        """Run cache_logits.main() in this process (without the variables in `unset`); returns (exit code, stdout,
        stderr)."""
        script = runpy.run_path(os.path.join(REPO, "cache_logits.py"))
        stdout, stderr = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as mp:
            for name in ("PRESET", "RANK", "WORLD_SIZE", "LOCAL_RANK", "DEBUG", "DEVICE"):
                mp.delenv(name, raising=False)
            for name, value in self.env(data).items():
                mp.setenv(name, value)
            for name in unset:
                mp.delenv(name)
            if debug:
                mp.setenv("DEBUG", "1")
            mp.setattr(sys, "argv", self.args(out, *extra, teacher=teacher))
            code = 0
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    script["main"]()
                except SystemExit as e:
                    code = e.code
        return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def cli(tiny_dataset, tmp_path_factory):
    return ScriptRuns(tmp_path_factory.mktemp("cache_script"), tiny_dataset)


@pytest.fixture(scope="module")
def sampled_cli(tiny_dataset, tmp_path_factory):
    return ScriptRuns(tmp_path_factory.mktemp("cache_script_sampled"), tiny_dataset, SAMPLED_ARGS)


def shard_stem(path) -> str:
    return os.path.basename(path)[: -len(".bin")]


def test_verify_reports_an_exact_cache_and_catches_a_wrong_one(cli, tmp_path):
    line = re.search(r"verify rows:25 max_abs_logprob_diff:(\S+) id_mismatches:(\d+)", cli.ref_stdout)
    assert line and float(line[1]) == 0.0 and line[2] == "0", cli.ref_stdout
    assert json.loads(cli.ref_stdout.strip().splitlines()[-1]) == {"rows": 25, "max_abs_logprob_diff": 0.0, "id_mismatches": 0}
    # verify has teeth: right values under the wrong ids, then values off by 0.25
    bad = tmp_path / "bad"
    shutil.copytree(cli.ref, bad)
    for path in cli.paths:
        ids = np.load(bad / f"{shard_stem(path)}.idx.npy", mmap_mode="r+")
        ids[:] = np.roll(np.asarray(ids), 1, axis=1)
        ids.flush()
    model = load_teacher(str(cli.teacher), cpu_ctx(), 1024)[0]
    assert verify_cache(model, str(bad), cli.paths, 10, cpu_ctx())["id_mismatches"] == 10
    shutil.rmtree(bad)
    shutil.copytree(cli.ref, bad)
    for path in cli.paths:
        v = np.load(bad / f"{shard_stem(path)}.val.npy", mmap_mode="r+")
        v -= np.float16(0.25)
        v.flush()
    r = verify_cache(model, str(bad), cli.paths, 10, cpu_ctx())
    assert r["id_mismatches"] == 0 and 0.24 < r["max_abs_logprob_diff"] < 0.26


@pytest.mark.slow
@pytest.mark.parametrize("runs", ["cli", "sampled_cli"])
def test_kill_9_then_rerun_is_byte_identical_and_redoes_only_unfinished_shards(runs, request, tmp_path):
    cli = request.getfixturevalue(runs)
    out = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **cli.env()}
    env.pop("PRESET", None)
    args = cli.args(out)
    cmd = [sys.executable, os.path.join(REPO, args[0]), *args[1:]]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def done():
        return sorted(f for f in os.listdir(out) if f.endswith(".done")) if out.is_dir() else []

    deadline = time.monotonic() + 120
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    finished = done()
    assert 1 <= len(finished) < len(SCRIPT_SIZES), finished  # killed midway
    kept = {}
    for name in finished:
        stem = name[: -len(".done")]
        for f in [name] + [f.name for f in out.glob(f"{stem}.*.npy")]:
            st = os.stat(out / f)
            kept[f] = (st.st_ino, st.st_mtime_ns)

    rerun = run_script(args, cli.env(), cwd=str(tmp_path))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    left = len(SCRIPT_SIZES) - len(finished)
    assert f"pending_shards:{left} " in rerun.stdout and f"shards_written:{left} " in rerun.stdout, rerun.stdout
    for f, ident in kept.items():  # finished shards were not rewritten
        st = os.stat(out / f)
        assert (st.st_ino, st.st_mtime_ns) == ident, f
    assert dir_bytes(out) == dir_bytes(cli.ref)  # no temp file left, every file byte-identical


def test_data_paths_default_to_the_teachers_own(cli, tmp_path):
    """Without DATA_PATH / TOKENIZER_PATH, cache_logits.py reads the data and tokenizer saved in the teacher's
    checkpoint (as eval_bpb.py does) and writes the same rows as with them set."""
    ckpt = torch.load(cli.teacher, weights_only=True)
    ckpt["config"].update(data_path=str(cli.data), tokenizer_path=cli.tokenizer)
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(str(teacher), ckpt)
    out = tmp_path / "cache"
    code, _, err = cli.main(out, "--shards", "2", teacher=teacher, unset=("DATA_PATH", "TOKENIZER_PATH"))
    assert code == 0, err
    for path in cli.paths[:2]:
        for name in (f"{shard_stem(path)}.idx.npy", f"{shard_stem(path)}.val.npy"):
            assert (out / name).read_bytes() == (cli.ref / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("runs", ["cli", "sampled_cli"])
def test_two_processes_write_the_same_bytes_as_one(runs, request, tmp_path):
    cli = request.getfixturevalue(runs)
    out = tmp_path / "cache"
    r = run_script(cli.args(out), cli.env(), cwd=str(tmp_path), nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"shards_written:{len(SCRIPT_SIZES) // 2} " in r.stdout, r.stdout  # rank 0 wrote half of them
    assert dir_bytes(out) == dir_bytes(cli.ref)


def _refused(cli, out, before, **kw):
    code, _, err = cli.main(out, *kw.pop("extra", ()), **kw)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert dir_bytes(out) == before
    return err


@pytest.mark.parametrize("extra,message", [
    (["--k", "12"], "k 16 != 12"),
    (["--stride", "16"], "stride 8 != 16"),
    (["--encoding", "packed"], "encoding fp16 != packed"),
])
def test_rerun_with_other_settings_is_refused_and_changes_nothing(cli, tmp_path, extra, message):
    out = tmp_path / "cache"
    shutil.copytree(cli.ref, out)
    err = _refused(cli, out, dir_bytes(out), extra=extra)  # argparse: the last --k/--stride wins
    assert "made for something else" in err and message in err


def test_rerun_with_another_teacher_or_changed_shard_is_refused(cli, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(cli.ref, out)
    before = dir_bytes(out)
    other = tmp_path / "other.pt"
    random_teacher(other, seed=4)
    assert "teacher_sha256" in _refused(cli, out, before, teacher=other)
    data = tmp_path / "data"
    shutil.copytree(cli.data, data)
    changed = data / os.path.basename(cli.paths[2])
    tokens = np.array(load_shard(changed))
    write_shard(changed, tokens[::-1])  # same length, other tokens
    assert "changed since the cache was made" in _refused(cli, out, before, data=data)


def test_not_enough_disk_is_refused_before_anything_is_written(cli, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 1000))
    out = tmp_path / "new" / "cache"
    # uint16 ids + float16 values, K = 16, and at most 1 kB of .npy header per file (two files per shard)
    need = sum(SCRIPT_SIZES) * 16 * (2 + 2) + len(SCRIPT_SIZES) * 2 * 1024
    with pytest.raises(GolfError, match=rf"the logit cache: {need / 1e3:.2f} kB needed in .*cache, only 1.00 kB free; .*--encoding packed"):
        cli.main(out, debug=True)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("total,window,stride", [(1, 4, 4), (10, 4, 4), (37, 8, 3), (100, 16, 16), (101, 16, 8),
                                                 (7, 16, 8), (5000, 64, 32)])
def test_teacher_context_matches_the_windows(total, window, stride):
    """The closed form the manifest records equals the context of every position under plan_windows."""
    ctx = np.zeros(total, dtype=np.int64)
    for ws, _, a, b in plan_windows(0, total, window, stride, total):
        ctx[a:b] = np.arange(a, b) - ws + 1
    got = teacher_context(total, window, stride)
    assert got["mean"] == pytest.approx(ctx.mean(), rel=1e-12) and got["min"] == ctx.min() == 1
    assert got["min_after_first_window"] == (ctx[window:].min() if total > window else None)


# ----------------------------------------------------------------------------------------------------------
# cache_logits.py --encoding sampled, and a CachedTeacher reading the cache


def test_sampled_script_run_verifies_and_records_draws_and_temperature(sampled_cli):
    assert "verify rows:25 draw_mismatches:0" in sampled_cli.ref_stdout, sampled_cli.ref_stdout
    m = json.loads((sampled_cli.ref / "manifest.json").read_text())
    assert (m["encoding"], m["k"], m["temperature"], m["version"], m["value_kind"]) == ("sampled", 12, 1.5, 2, "draw_counts")
    r = CacheReader(sampled_cli.ref, sampled_cli.paths)
    ids, counts = r.gather_sampled([(i, 0, n) for i, n in enumerate(SCRIPT_SIZES)])
    assert (counts.astype(int).sum(1) == 12).all() and 1 < ids.shape[1] <= 12


def test_sampled_temperature_defaults_to_distill_temp(sampled_cli, tmp_path):
    out = tmp_path / "cache"
    runs = sampled_cli.with_settings([a for a in SAMPLED_ARGS if a not in ("--temperature", "1.5")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_TEMP", "3.0")
        code, _, err = runs.main(out, "--shards", "1")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["temperature"] == 3.0


@pytest.mark.parametrize("extra,message", [
    (["--draws", "0"], r"draws N=0 must lie in \[1, 255\]"),
    (["--draws", "256"], "draws N=256"),
    (["--temperature", "0"], "temperature 0.0 must be a positive number"),
    (["--temperature", "-2"], "temperature -2.0"),
    (["--k", "4"], "--encoding sampled takes --draws N"),
    (["--encoding", "fp16"], "--draws is for --encoding sampled"),
])
def test_sampled_script_refuses_bad_settings_before_writing(sampled_cli, tmp_path, extra, message):
    out = tmp_path / "cache"
    code, _, err = sampled_cli.main(out, *extra)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(message, err), err
    assert not out.exists()


def test_top_k_script_refuses_a_temperature(cli, tmp_path):
    code, _, err = cli.main(tmp_path / "cache", "--temperature", "2")
    assert code == 2 and "encoding fp16 stores log-probabilities at T = 1" in err and not (tmp_path / "cache").exists()


def cached_teacher(runs, target="soft", **settings):
    cfg = Config(**{**PRESETS["test"], "logit_cache": str(runs.ref), "teacher_path": str(runs.teacher),
                    "distill_target": target, "distill_temp": 1.5, **settings})
    return CachedTeacher.from_config(cfg, types.SimpleNamespace(train_files=list(runs.paths), ctx=cpu_ctx()))


def test_cached_teacher_reads_sampled_rows_as_sampled_signals(sampled_cli):
    teacher = cached_teacher(sampled_cli)
    reader = teacher.reader
    last = len(SCRIPT_SIZES) - 1
    segments = [(0, 3, 40), (last, SCRIPT_SIZES[last] - 5, 5), (0, 0, 2)]  # across the stream's end and wrap
    signal = teacher.rows(segments, 47)
    assert isinstance(signal, Sampled) and signal.ids.dtype == torch.int16 and signal.counts.dtype == torch.uint8
    ids, counts = reader.gather_sampled(segments)
    width = max(int((c > 0).sum()) for c in counts)
    assert signal.ids.shape == (47, width)  # padded to the batch's widest row
    np.testing.assert_array_equal(signal.ids.numpy(), ids[:, :width])
    np.testing.assert_array_equal(signal.counts.numpy(), counts[:, :width])
    assert (signal.counts.int().sum(1) == 12).all()
    assert signal.valid.tolist() == [True] * 44 + [False] + [True] * 2  # the stream's last row is masked
    inputs = signal.loss_inputs(torch.Size([1, 47]))
    assert inputs["sample_ids"].shape == inputs["sample_counts"].shape == (1, 47, width)

    hard = cached_teacher(sampled_cli, target="hard", distill_temp=9.0)  # a hard label ignores the temperature
    top1 = hard.rows(segments, 47)
    assert isinstance(top1, Top1)
    np.testing.assert_array_equal(top1.ids.numpy(), ids[:, 0])  # the most drawn id
    most = [max(multiset(i, c).items(), key=lambda e: (e[1], -e[0]))[0] for i, c in zip(ids, counts)]
    assert top1.ids.tolist() == most


@pytest.mark.parametrize("settings,message", [
    (dict(distill_temp=2.0), r"holds draws at temperature 1\.5 but DISTILL_TEMP=2\.0.*set DISTILL_TEMP=1\.5 or make a cache"),
    (dict(distill_tail="bucket"), "DISTILL_TAIL=bucket needs the tail mass of a top-K cache"),
])
def test_cached_teacher_refuses_a_sampled_cache_it_cannot_use(sampled_cli, settings, message):
    with pytest.raises(GolfError, match=message):
        cached_teacher(sampled_cli, **settings)


def test_top_k_reads_of_a_sampled_cache_are_refused(sampled_cli, cli):
    with pytest.raises(GolfError, match="holds sampled draws"):
        CacheReader(sampled_cli.ref, sampled_cli.paths).gather([(0, 0, 3)])
    assert isinstance(cached_teacher(cli).rows([(0, 0, 3)], 3), TopK)  # a top-K cache: TopK as before


def test_sampled_packed_script_run_holds_the_same_draws(sampled_cli, tmp_path):
    out = tmp_path / "cache"
    runs = sampled_cli.with_settings(["--encoding", "sampled-packed", *SAMPLED_ARGS[2:]])
    code, stdout, err = runs.main(out, "--verify", "10")
    assert code == 0 and "verify rows:10 draw_mismatches:0" in stdout, err
    segments = [(i, 0, n) for i, n in enumerate(SCRIPT_SIZES)]
    for a, b in zip(CacheReader(out, sampled_cli.paths).gather_sampled(segments),
                    CacheReader(sampled_cli.ref, sampled_cli.paths).gather_sampled(segments)):
        np.testing.assert_array_equal(a, b)  # same key, teacher and temperature: the same draws
