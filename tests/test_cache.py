"""Logit cache storage: roundtrip, crash/resume, refusal of mismatches, disk space, packed encoding.

Run: python -m pytest tests/test_cache.py -q
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import golf.cache as cache
from golf.cache import CacheReader, CacheSpec, CacheWriter
from golf.codecs import GAP_STEP, MASS_STEP, PACKED_GRIDS, decode_packed, encode_packed, packed_row_bytes
from golf.data import DistributedTokenLoader
from golf.errors import GolfError
from golf.shards import load_shard, shard_fingerprint, write_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (50, 37, 64)  # token counts of the three test shards
K, V = 4, 1024


def make_shards(folder, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i, n in enumerate(sizes):
        path = os.path.join(folder, f"fineweb_train_{i:06d}.bin")
        write_shard(path, rng.integers(0, V, n))
        paths.append(path)
    return paths


def spec(**kw):
    base = dict(k=K, vocab_size=V, encoding="fp16", teacher_sha256="a" * 64, teacher_config={"num_layers": 2, "model_dim": 64}, window=128, stride=64)
    return CacheSpec(**(base | kw))


def rows(shard, n, k=K):
    """Rows that identify their own (shard, position): ids and sorted-descending log-probs."""
    t = np.arange(n)[:, None]
    j = np.arange(k)[None, :]
    idx = (t + 1000 * shard + 257 * j) % V
    vals = -(0.5 + 0.01 * t + shard) - 0.75 * j - 0.001 * j * t
    return idx, vals.astype(np.float32)


def write_all(out, paths, sp=None):
    w = CacheWriter(out, paths, sp or spec())
    for i in w.pending():
        w.write_shard(i, *rows(i, SIZES[i], w.spec.k))
    assert w.finalize() == []
    return w


def dir_bytes(folder):
    """Every file of a folder: {name: contents}."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.fixture
def shards(tmp_path):
    return make_shards(tmp_path / "data")


# ------------------------------------------------------------------------------------------------------
# Roundtrip


def test_roundtrip_files_manifest_and_gather_across_shard_boundary(tmp_path, shards):
    out = tmp_path / "cache"
    write_all(out, shards)

    # Plain numpy files, memory-mappable, in the documented dtypes and shapes.
    for i, n in enumerate(SIZES):
        stem = f"fineweb_train_{i:06d}"
        idx = np.load(out / f"{stem}.idx.npy", mmap_mode="r")
        vals = np.load(out / f"{stem}.val.npy", mmap_mode="r")
        want_idx, want_vals = rows(i, n)
        assert idx.dtype == np.uint16 and vals.dtype == np.float16 and idx.shape == vals.shape == (n, K)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(vals, want_vals.astype(np.float16))

    m = json.loads((out / "manifest.json").read_text())
    assert (m["version"], m["k"], m["vocab_size"], m["encoding"], m["value_kind"]) == (1, K, V, "fp16", "logprob_T1")
    assert m["teacher"] == {"sha256": "a" * 64, "config": {"num_layers": 2, "model_dim": 64}}
    assert (m["window"], m["stride"]) == (128, 64)
    assert [(s["name"], s["num_tokens"], s["fingerprint"], s["complete"]) for s in m["shards"]] == [
        (os.path.basename(p), n, shard_fingerprint(p), True) for p, n in zip(shards, SIZES)
    ]

    r = CacheReader(out, shards, k=K, vocab_size=V, teacher_sha256="a" * 64)
    assert r.num_shards == 3 and r.num_tokens == list(SIZES)
    assert r.covered_shards() == [os.path.basename(p) for p in shards]
    segments = [(0, 45, 5), (1, 0, 37), (2, 0, 3), (0, 7, 2)]
    want = [rows(s, SIZES[s]) for s in range(3)]
    want_idx = np.concatenate([want[s][0][o : o + n] for s, o, n in segments])
    want_vals = np.concatenate([want[s][1][o : o + n] for s, o, n in segments]).astype(np.float16).astype(np.float32)
    idx, vals = r.gather(segments)
    assert idx.dtype == np.int64 and vals.dtype == np.float32
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(vals, want_vals)

    # Preallocated outputs (e.g. views of pinned tensors) of other dtypes are filled in place.
    out_idx, out_vals = np.full((47, K), -1, np.int32), np.zeros((47, K), np.float32)
    got = r.gather(segments, out_idx=out_idx, out_vals=out_vals)
    assert got[0] is out_idx and got[1] is out_vals
    np.testing.assert_array_equal(out_idx, want_idx)
    np.testing.assert_array_equal(out_vals, want_vals)
    with pytest.raises(ValueError):
        r.gather([(1, 30, 8)])  # past the end of shard 1


def test_chunked_writes_in_any_order_equal_one_write_and_gaps_are_refused(tmp_path, shards):
    whole = tmp_path / "whole"
    write_all(whole, shards)
    out = tmp_path / "chunks"
    w = CacheWriter(out, shards, spec())
    for i, n in enumerate(SIZES):
        idx, vals = rows(i, n)
        with w.open_shard(i) as sw:
            for a, b in [(20, n), (0, 7), (7, 20)]:  # out of order, uneven chunks
                sw.write(a, idx[a:b], vals[a:b])
            sw.commit()
    w.finalize()
    assert dir_bytes(out) == dir_bytes(whole)

    with w.open_shard(2) as sw:  # re-opening a complete shard deletes it first: it is pending from here on
        assert not [f for f in os.listdir(out) if f.startswith("fineweb_train_000002.")]
        assert w.pending() == [2]

    idx, vals = rows(0, SIZES[0])
    for spans, what in [([(0, 20), (25, 50)], "never"), ([(0, 30), (20, 50)], "twice")]:
        with w.open_shard(0) as sw:
            for a, b in spans:
                sw.write(a, idx[a:b], vals[a:b])
            with pytest.raises(ValueError, match=what):
                sw.commit()
    assert w.pending() == [0, 2]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # the aborted writers left nothing


def test_rows_looked_up_by_loader_segments_are_the_targets(tmp_path, shards):
    """An oracle teacher whose top-1 is the true next token: every rank's gathered top-1 equals its y,
    across shard boundaries and the stream's wrap-around."""
    stream = np.concatenate([load_shard(p) for p in shards]).astype(np.int64)
    next_token = np.roll(stream, -1)  # the last shard's last row predicts the wrapped-around first token
    w = CacheWriter(tmp_path / "cache", shards, spec())
    start = 0
    for i, n in enumerate(SIZES):
        top = next_token[start : start + n, None]
        w.write_shard(i, (top + np.arange(K)) % V, np.tile(-np.arange(1.0, K + 1), (n, 1)))
        start += n
    r = CacheReader(tmp_path / "cache", shards)
    for world in (1, 2, 3):
        loaders = [DistributedTokenLoader(shards, rank, world) for rank in range(world)]
        for _ in range(2 * sum(SIZES) // (world * 17) + 2):  # two passes over the stream
            for loader in loaders:
                batch = loader.next_batch(global_tokens=world * 16, seq_len=8, accum=1)
                idx, _ = r.gather(batch.segments)
                np.testing.assert_array_equal(idx[:, 0], batch.y.flatten().numpy())


@pytest.mark.parametrize(
    "bad",
    [
        lambda idx, vals: (idx, vals[:, ::-1]),  # ascending
        lambda idx, vals: (idx, np.where(np.arange(K) == 2, np.nan, vals)),
        lambda idx, vals: (idx, np.where(np.arange(K) == K - 1, -np.inf, vals)),
        lambda idx, vals: (idx + V, vals),  # id out of the vocabulary
        lambda idx, vals: (idx[:, :2], vals[:, :2]),  # wrong K
    ],
)
def test_write_refuses_bad_rows(tmp_path, shards, bad):
    w = CacheWriter(tmp_path / "cache", shards, spec())
    with w.open_shard(1) as sw, pytest.raises(ValueError):
        sw.write(0, *bad(*rows(1, SIZES[1])))


# ------------------------------------------------------------------------------------------------------
# Crashes and resume


def test_resume_after_crash_mid_shard_is_byte_identical(tmp_path, shards):
    clean = tmp_path / "clean"
    write_all(clean, shards)

    out = tmp_path / "cache"
    w = CacheWriter(out, shards, spec())
    w.write_shard(0, *rows(0, SIZES[0]))
    idx, vals = rows(1, SIZES[1])

    def teacher_chunks():
        yield 0, idx[:20], vals[:20]
        raise RuntimeError("teacher crashed")

    sw = w.open_shard(1)  # no `with`: nothing cleans up, as after kill -9
    with pytest.raises(RuntimeError):
        for start, i, v in teacher_chunks():
            sw.write(start, i, v)
    del sw
    temps = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert len(temps) == 2  # the half-written idx and val of shard 1

    m = json.loads((out / "manifest.json").read_text())
    assert [s["complete"] for s in m["shards"]] == [True, False, False]
    with pytest.raises(GolfError, match=r"fineweb_train_000001\.bin is not complete.*rerun cache_logits\.py"):
        CacheReader(out, shards)

    w2 = CacheWriter(out, shards, spec())  # the resumed run
    assert w2.pending() == [1, 2]
    for i in w2.pending():
        w2.write_shard(i, *rows(i, SIZES[i]))
    assert w2.finalize() == []
    assert dir_bytes(out) == dir_bytes(clean)


def test_crash_between_the_renames_of_a_commit_leaves_the_shard_pending(tmp_path, shards, monkeypatch):
    clean = tmp_path / "clean"
    write_all(clean, shards)
    out = tmp_path / "cache"
    write_all(out, shards)

    w = CacheWriter(out, shards, spec())
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the idx file is in place, the val file not yet
            raise KeyboardInterrupt
        real_replace(src, dst)

    idx, vals = rows(1, SIZES[1])
    monkeypatch.setattr(cache.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt), w.open_shard(1) as sw:
        sw.write(0, (idx + 1) % V, vals)  # different content, so a mix of old and new files would show
        sw.commit()
    monkeypatch.setattr(cache.os, "replace", real_replace)

    assert CacheWriter(out, shards, spec()).pending() == [1]
    with pytest.raises(GolfError, match="not complete"):
        CacheReader(out, shards)
    w.write_shard(1, idx, vals)
    w.finalize()
    assert dir_bytes(out) == dir_bytes(clean)


_KILLED_WRITER = """
import sys
import numpy as np
sys.path.insert(0, {repo!r})
from golf.cache import CacheSpec, CacheWriter
w = CacheWriter({out!r}, {shards!r}, CacheSpec(**{spec!r}))
w.write_shard(0, np.zeros(({n0}, {k}), np.uint16), np.zeros(({n0}, {k}), np.float32))
sw = w.open_shard(1)
sw.write(0, np.zeros((5, {k}), np.uint16), np.zeros((5, {k}), np.float32))
print("ready", flush=True)
sys.stdin.read()
"""


def test_kill_9_mid_shard_loses_only_that_shard(tmp_path, shards):
    out = str(tmp_path / "cache")
    sp = spec()
    src = _KILLED_WRITER.format(repo=REPO, out=out, shards=shards, spec=vars(sp), n0=SIZES[0], k=K)
    proc = subprocess.Popen([sys.executable, "-c", src], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert any(f.endswith(".tmp") for f in os.listdir(out))
    w = CacheWriter(out, shards, sp)
    assert w.pending() == [1, 2]
    for i in w.pending():
        w.write_shard(i, *rows(i, SIZES[i]))
    assert w.finalize() == []
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    idx, vals = CacheReader(out, shards).gather([(0, 48, 2), (1, 0, 3)])
    np.testing.assert_array_equal(idx, np.concatenate([np.zeros((2, K)), rows(1, 3)[0]]))


def test_lost_manifest_is_rebuilt_from_matching_files_only(tmp_path, shards):
    out = tmp_path / "cache"
    write_all(out, shards)
    os.remove(out / "manifest.json")
    assert CacheWriter(out, shards, spec(teacher_sha256="b" * 64)).pending() == [0, 1, 2]  # other teacher's files
    os.remove(out / "manifest.json")
    assert CacheWriter(out, shards, spec()).pending() == []  # its own files are adopted
    CacheReader(out, shards, teacher_sha256="a" * 64)


def test_finalize_removes_only_our_leftover_temp_files(tmp_path, shards):
    out = tmp_path / "cache"
    w = write_all(out, shards)
    ours = [".fineweb_train_000000.idx.npy.k2j_x9.tmp", ".fineweb_train_000002.done.abc.tmp", ".manifest.json.q1.tmp"]
    others = [".fineweb_train_000000.idx.npy.keep", ".notes.txt.a.tmp", "fineweb_train_000009.val.npy"]
    for name in ours + others:
        (out / name).write_bytes(b"x")
    assert w.finalize() == []
    assert sorted(f for f in os.listdir(out) if f in ours + others) == sorted(others)


def test_concurrent_writers_on_one_cache(tmp_path, shards):
    """Two ranks: one constructing its writer must not disturb the other's open shard."""
    out = tmp_path / "cache"
    a = CacheWriter(out, shards, spec())
    sw = a.open_shard(0)
    sw.write(0, *rows(0, SIZES[0]))
    b = CacheWriter(out, shards, spec())  # rank 1 starts late
    b.write_shard(1, *rows(1, SIZES[1]))
    sw.commit()
    b.write_shard(2, *rows(2, SIZES[2]))
    assert a.finalize() == []
    clean = tmp_path / "clean"
    write_all(clean, shards)
    assert dir_bytes(out) == dir_bytes(clean)


def test_stale_sidecar_with_truncated_data_is_pending_and_rewritten(tmp_path, shards):
    out = tmp_path / "cache"
    write_all(out, shards)
    val = out / "fineweb_train_000002.val.npy"
    with open(val, "r+b") as f:
        f.truncate(os.path.getsize(val) - 2)
    w = CacheWriter(out, shards, spec())
    assert w.pending() == [2]
    assert json.loads((out / "manifest.json").read_text())["shards"][2]["complete"] is False
    with pytest.raises(GolfError, match="not complete"):
        CacheReader(out, shards)


# ------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(teacher_sha256="b" * 64), "teacher_sha256 aaaaaaaaaaaa != bbbbbbbbbbbb"),
        (dict(k=8), "k 4 != 8"),
        (dict(encoding="packed"), "encoding fp16 != packed"),
        (dict(window=256), "window 128 != 256"),
        (dict(teacher_config={"num_layers": 3, "model_dim": 64}), "teacher_config differs in num_layers"),
    ],
)
def test_writer_refuses_a_different_spec(tmp_path, shards, change, message):
    out = tmp_path / "cache"
    write_all(out, shards)
    before = dir_bytes(out)
    with pytest.raises(GolfError, match=f"{message}.*use a new --out or delete"):
        CacheWriter(out, shards, spec(**change))
    assert dir_bytes(out) == before  # nothing was touched


def test_writer_and_reader_refuse_changed_shards(tmp_path, shards):
    out = tmp_path / "cache"
    write_all(out, shards)
    with pytest.raises(GolfError, match="covers 3 shards but this run gives 2"):
        CacheWriter(out, shards[:2], spec())

    write_shard(shards[1], np.arange(SIZES[1]) % V)  # same name and length, other tokens
    for make in (lambda: CacheWriter(out, shards, spec()), lambda: CacheReader(out, shards)):
        with pytest.raises(GolfError, match=r"fineweb_train_000001\.bin changed since the cache was made"):
            make()

    write_shard(shards[1], np.arange(SIZES[1] + 1) % V)
    with pytest.raises(GolfError, match=r"has 38 tokens but the cache was made for 37"):
        CacheReader(out, shards)

    other = make_shards(tmp_path / "other", sizes=(50,), seed=0)
    os.rename(other[0], other[0].replace("000000", "000009"))
    with pytest.raises(GolfError, match="shard 0 is fineweb_train_000000.bin in the cache but fineweb_train_000009.bin"):
        CacheReader(out, [other[0].replace("000000", "000009")])


def test_reader_checks_expectations(tmp_path, shards):
    out = tmp_path / "cache"
    write_all(out, shards)
    for kw, message in [(dict(k=8), "k 4 in the cache != 8"), (dict(vocab_size=512), "vocab_size 1024 in the cache != 512"),
                        (dict(teacher_sha256="c" * 64), "teacher_sha256 aaaaaaaaaaaa in the cache != cccccccccccc")]:
        with pytest.raises(GolfError, match=message):
            CacheReader(out, shards, **kw)


def test_reader_covers_a_prefix_of_the_train_shards(tmp_path):
    paths = make_shards(tmp_path / "data", sizes=SIZES + (20,))
    out = tmp_path / "cache"
    write_all(out, paths[:3])
    r = CacheReader(out, paths)  # the run has one more shard than the cache
    assert r.num_shards == 3
    with pytest.raises(GolfError, match="reached train shard 3 .* covers only 3 shards"):
        r.gather([(2, 60, 4), (3, 0, 4)])
    r = CacheReader(out, paths[:2])  # the run uses fewer shards: only those are read
    assert r.num_shards == 2
    np.testing.assert_array_equal(r.gather([(1, 36, 1)])[0], rows(1, SIZES[1])[0][36:])


def test_reader_refuses_missing_corrupt_and_truncated_files(tmp_path, shards):
    out = tmp_path / "cache"
    with pytest.raises(GolfError, match="not found; make it with cache_logits.py"):
        CacheReader(out, shards)
    os.makedirs(out)
    with pytest.raises(GolfError, match=r"manifest\.json not found"):
        CacheReader(out, shards)

    write_all(out, shards)
    idx_path = out / "fineweb_train_000001.idx.npy"
    data = idx_path.read_bytes()
    idx_path.write_bytes(data[:-10])
    with pytest.raises(GolfError, match=r"fineweb_train_000001\.idx\.npy: truncated .*rerun cache_logits\.py"):
        CacheReader(out, shards)
    idx_path.write_bytes(data + b"\0\0")
    with pytest.raises(GolfError, match="trailing bytes"):
        CacheReader(out, shards)
    idx_path.write_bytes(b"garbage")
    with pytest.raises(GolfError, match=r"idx\.npy: not a valid \.npy file"):
        CacheReader(out, shards)
    os.remove(idx_path)
    with pytest.raises(GolfError, match=r"idx\.npy: missing"):
        CacheReader(out, shards)

    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:-20])
    with pytest.raises(GolfError, match=r"manifest\.json: unreadable or corrupt manifest"):
        CacheReader(out, shards)
    before = manifest.read_bytes()
    with pytest.raises(GolfError, match="corrupt manifest.*use a new --out or delete"):
        CacheWriter(out, shards, spec())
    assert manifest.read_bytes() == before


def test_disk_space_check(tmp_path, shards, monkeypatch):
    out = tmp_path / "cache"
    w = CacheWriter(out, shards, spec())
    need = w.bytes_needed()
    data = sum(n * K * 4 for n in SIZES)  # uint16 + float16 per entry
    assert data < need <= data + 6 * 1024
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, need - 1))
    with pytest.raises(GolfError, match=rf"the logit cache: {need / 1e3:.2f} kB needed in .*cache, only {(need - 1) / 1e3:.2f} kB free"):
        w.check_disk_space()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, need))
    w.check_disk_space()

    w.write_shard(1, *rows(1, SIZES[1]))
    assert w.bytes_needed() == need - SIZES[1] * K * 4 - 2 * 1024
    actual = sum(os.path.getsize(out / f"fineweb_train_000001.{e}.npy") for e in ("idx", "val"))
    assert SIZES[1] * K * 4 < actual <= SIZES[1] * K * 4 + 2 * 1024


# ------------------------------------------------------------------------------------------------------
# Packed encoding in storage (the codec itself: tests/test_codecs.py)


def test_packed_cache_reads_back_decoded(tmp_path, shards):
    out = tmp_path / "cache"
    write_all(out, shards, spec(encoding="packed"))
    pk = np.load(out / "fineweb_train_000000.pk.npy", mmap_mode="r")
    assert pk.dtype == np.uint8 and pk.shape == (SIZES[0], packed_row_bytes(K))
    assert not (out / "fineweb_train_000000.idx.npy").exists()
    assert json.loads((out / "manifest.json").read_text())["packed"] == PACKED_GRIDS

    r = CacheReader(out, shards)
    segments = [(0, 40, 10), (1, 0, 37), (2, 0, 1)]
    idx, vals = r.gather(segments)
    want = [decode_packed(encode_packed(*rows(s, SIZES[s])), K) for s in range(3)]
    np.testing.assert_array_equal(idx, np.concatenate([want[s][0][o : o + n] for s, o, n in segments]))
    np.testing.assert_array_equal(vals, np.concatenate([want[s][1][o : o + n] for s, o, n in segments]))
    exact = np.concatenate([rows(s, SIZES[s])[1][o : o + n] for s, o, n in segments])
    np.testing.assert_allclose(vals, exact, atol=MASS_STEP / 2 + GAP_STEP)


def test_packed_needs_a_small_vocabulary():
    with pytest.raises(GolfError, match="packed needs 1 <= vocab_size <= 1024"):
        spec(encoding="packed", vocab_size=2048)
    with pytest.raises(GolfError, match="K=2000 must lie in"):
        spec(k=2000)


@pytest.mark.parametrize("encoding", ["fp16", "packed"])
def test_gather_ids_reads_the_first_columns_alone(tmp_path, shards, encoding):
    """What a hard label reads: the first ids of the rows, equal to those of the full gather, across shards."""
    out = tmp_path / "cache"
    write_all(out, shards, spec(encoding=encoding))
    r = CacheReader(out, shards)
    segments = [(0, SIZES[0] - 5, 5), (1, 0, SIZES[1]), (2, 3, 4)]
    idx, _ = r.gather(segments)
    for c in (1, 2, K):
        ids = r.gather_ids(segments, np.full((len(idx), c), -1, dtype=np.int16))
        np.testing.assert_array_equal(ids, idx[:, :c])
    with pytest.raises(ValueError, match="asked for"):
        r.gather_ids(segments, np.empty((len(idx), K + 1), dtype=np.int16))


# ------------------------------------------------------------------------------------------------------
# Sampled encoding in storage: ragged rows (the codec itself: tests/test_codecs.py)

BIG = (700, 37, 530)  # several offset blocks of 256 rows, a shard shorter than one
N = 16


def sampled_spec(**kw):
    return spec(**({"encoding": "sampled", "k": N, "temperature": 2.0} | kw))


def sampled_rows(shard, n, draws=N):
    """Rows of draws that identify their own (shard, position): (distinct ids, counts) [n, N], padding last, and
    each row's multiset {id: count}. Row widths vary from 1 to min(N, 6)."""
    rng = np.random.default_rng(100 + shard)
    ids, counts, sets = np.zeros((n, draws), np.int64), np.zeros((n, draws), np.int64), []
    for t in range(n):
        width = 1 + (t * 7 + shard) % min(draws, 6)
        row = {(t + 1000 * shard + 97 * j) % V: 1 for j in range(width)}
        for extra in rng.choice(list(row), draws - width):
            row[int(extra)] += 1
        sets.append(row)
        for j, (i, c) in enumerate(row.items()):
            ids[t, j], counts[t, j] = i, c
    return ids, counts, sets


def write_sampled(out, paths, sizes=BIG, encoding="sampled"):
    """The pending shards of a sampled cache of `sampled_rows`, in chunks that cross the offset blocks."""
    w = CacheWriter(out, paths, sampled_spec(encoding=encoding))
    for i in w.pending():
        ids, counts, _ = sampled_rows(i, sizes[i], w.spec.k)
        with w.open_shard(i) as sw:
            for a, b in [(0, 1), (1, 255), (255, 300), (300, sizes[i])]:
                if a < sizes[i]:
                    sw.write(a, ids[a:b], counts[a:b])
            sw.commit()
    assert w.finalize() == []
    return w


@pytest.fixture
def big(tmp_path):
    return make_shards(tmp_path / "big", sizes=BIG)


def as_sets(ids, counts):
    return [{int(i): int(c) for i, c in zip(r_ids, r_counts) if c} for r_ids, r_counts in zip(ids, counts)]


def test_sampled_cache_files_manifest_and_reads_across_shards_and_blocks(tmp_path, big):
    out = tmp_path / "cache"
    write_sampled(out, big)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["version"], m["k"], m["encoding"], m["value_kind"], m["temperature"]) == (2, N, "sampled", "draw_counts", 2.0)
    assert m["codec_params"] == {"block": 256, "entry": "uint16 id, uint8 count"} and "packed" not in m
    sets = [sampled_rows(s, n)[2] for s, n in enumerate(BIG)]
    for s, n in enumerate(BIG):  # the documented files: lengths, offsets of every 256 rows, 3-byte entries
        stem = out / f"fineweb_train_{s:06d}"
        lengths = np.load(f"{stem}.lengths.npy")
        offsets = np.load(f"{stem}.offsets.npy")
        entries = np.load(f"{stem}.entries.npy")
        assert lengths.dtype == np.uint8 and lengths[:, 0].tolist() == [len(r) for r in sets[s]]
        assert offsets.dtype == np.int64 and offsets[:, 0].tolist() == [sum(len(r) for r in sets[s][:b]) for b in list(range(0, n, 256)) + [n]]
        assert entries.dtype == np.uint8 and entries.shape == (sum(len(r) for r in sets[s]), 3)

    r = CacheReader(out, big)
    segments = [(0, 250, 300), (0, 690, 10), (1, 0, 37), (2, 0, 3), (2, 511, 19), (0, 7, 2)]
    ids, counts = r.gather_sampled(segments, np.int16, np.uint8)
    want = [row for s, o, n in segments for row in sets[s][o:o + n]]
    assert ids.dtype == np.int16 and counts.dtype == np.uint8
    assert ids.shape[1] == max(len(row) for row in want) == r.width(segments)
    assert as_sets(ids, counts) == want
    assert (counts.sum(1) == N).all()
    for lo in range(0, 700, 37):  # every span start within a block, one row at a time
        assert as_sets(*r.gather_sampled([(0, lo, 1)])) == sets[0][lo:lo + 1]
    top = r.gather_ids(segments, np.empty((len(want), 1), np.int32))[:, 0]
    assert top.tolist() == [min(row, key=lambda i: (-row[i], i)) for row in want]  # the most drawn, ties by lower id


def test_sampled_packed_cache_reads_the_same_rows(tmp_path, big):
    write_sampled(tmp_path / "ragged", big)
    write_sampled(tmp_path / "packed", big, encoding="sampled-packed")
    draws = np.load(tmp_path / "packed" / "fineweb_train_000000.draws.npy", mmap_mode="r")
    assert draws.dtype == np.uint8 and draws.shape == (BIG[0], 20)  # 5 * ceil(16 / 4) bytes per row
    m = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert (m["version"], m["encoding"], m["value_kind"], m["codec_params"]) == (2, "sampled-packed", "draw_counts", {"index_bits": 10, "row": "draws grouped, canonical"})
    a, b = CacheReader(tmp_path / "ragged", big), CacheReader(tmp_path / "packed", big)
    segments = [(0, 250, 300), (1, 0, 37), (2, 0, 3), (2, 511, 19)]
    for x, y in zip(a.gather_sampled(segments, np.int16), b.gather_sampled(segments, np.int16)):
        assert x.dtype == y.dtype and x.flags.c_contiguous and y.flags.c_contiguous
        np.testing.assert_array_equal(x, y)  # canonical rows, trimmed to the widest
    n = sum(s[2] for s in segments)
    np.testing.assert_array_equal(a.gather_ids(segments, np.empty((n, 3), np.int32)), b.gather_ids(segments, np.empty((n, 3), np.int32)))


def test_sampled_cache_refuses_top_k_reads_and_the_reverse(tmp_path, big, shards):
    write_sampled(tmp_path / "sampled", big)
    with pytest.raises(GolfError, match=r"holds sampled draws \(encoding sampled\) but reading top-K rows needs top-K log-probabilities; .*--encoding fp16 or packed"):
        CacheReader(tmp_path / "sampled", big).gather([(0, 0, 4)])
    write_all(tmp_path / "fp16", shards)
    with pytest.raises(GolfError, match=r"holds top-K log-probabilities \(encoding fp16\) but reading sampled rows needs sampled draws; .*--encoding sampled or sampled-packed"):
        CacheReader(tmp_path / "fp16", shards).gather_sampled([(0, 0, 4)])


def test_sampled_rows_must_come_in_order_and_be_draws(tmp_path, big):
    w = CacheWriter(tmp_path / "cache", big, sampled_spec())
    ids, counts, _ = sampled_rows(1, BIG[1])
    with w.open_shard(1) as sw:
        sw.write(0, ids[:10], counts[:10])
        with pytest.raises(ValueError, match="rows come in order"):
            sw.write(20, ids[20:], counts[20:])
        with pytest.raises(ValueError, match="sum to the draws"):
            sw.write(10, ids[10:], counts[10:] * 2)
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith(".tmp")]


def test_sampled_spec_refusals():
    for kw, message in [(dict(k=0), r"draws N=0 must lie in \[1, 255\]"), (dict(k=256), "draws N=256"),
                        (dict(temperature=0.0), "temperature 0.0 must be a positive number"),
                        (dict(temperature=None), "temperature None"), (dict(temperature=-1), "temperature -1"),
                        (dict(temperature=float("inf")), "temperature inf")]:
        with pytest.raises(GolfError, match=message):
            sampled_spec(**kw)
    with pytest.raises(GolfError, match="encoding fp16 stores log-probabilities at T = 1"):
        spec(temperature=2.0)
    sampled_spec(k=255, vocab_size=1 << 16)


def test_sampled_resume_after_kill_mid_shard_is_byte_identical(tmp_path, big):
    clean = tmp_path / "clean"
    write_sampled(clean, big)
    out = str(tmp_path / "cache")
    src = _KILLED_SAMPLED.format(repo=REPO, out=out, shards=big, spec=vars(sampled_spec()))
    proc = subprocess.Popen([sys.executable, "-c", src], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len([f for f in os.listdir(out) if f.endswith(".tmp")]) == 3  # lengths, offsets, entries of shard 1
    w = CacheWriter(out, big, sampled_spec())
    assert w.pending() == [1, 2]
    write_sampled(out, big)
    assert dir_bytes(out) == dir_bytes(clean)


_KILLED_SAMPLED = """
import sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {repo!r} + "/tests")
from golf.cache import CacheSpec, CacheWriter
from test_cache import sampled_rows
w = CacheWriter({out!r}, {shards!r}, CacheSpec(**{spec!r}))
w.write_shard(0, *sampled_rows(0, 700)[:2])
sw = w.open_shard(1)
sw.write(0, *[a[:5] for a in sampled_rows(1, 37)[:2]])
print("ready", flush=True)
sys.stdin.read()
"""


def test_sampled_reader_refuses_truncated_entries_and_offsets_that_disagree(tmp_path, big):
    out = tmp_path / "cache"
    write_sampled(out, big)
    entries = out / "fineweb_train_000002.entries.npy"
    data = entries.read_bytes()
    entries.write_bytes(data[:-3])
    with pytest.raises(GolfError, match=r"fineweb_train_000002\.entries\.npy: truncated .*offsets file says \d+ entries.*rerun cache_logits\.py"):
        CacheReader(out, big)
    assert CacheWriter(out, big, sampled_spec()).pending() == [2]  # a rerun redoes it
    entries.write_bytes(data)

    offsets_path = out / "fineweb_train_000000.offsets.npy"
    offsets = np.load(offsets_path, mmap_mode="r+")
    offsets[1] += 1  # block 0 one entry longer, block 1 one shorter: sizes still agree
    offsets.flush()
    del offsets
    with pytest.raises(GolfError, match=r"fineweb_train_000000\.offsets\.npy: offsets disagree with the row lengths.*delete .*fineweb_train_000000\.done and rerun"):
        CacheReader(out, big)


def test_sampled_disk_estimate_bounds_the_files(tmp_path, big):
    w = CacheWriter(tmp_path / "cache", big, sampled_spec())
    need = w.bytes_needed()
    assert need == sum(n * (1 + 3 * N) + 8 * (-(-n // 256) + 1) for n in BIG) + 3 * 3 * 1024
    write_sampled(tmp_path / "cache", big)
    assert sum(f.stat().st_size for f in (tmp_path / "cache").glob("*.npy")) < need


@pytest.mark.parametrize("encoding", ["sampled", "sampled-packed"])
def test_sampled_rows_looked_up_by_loader_segments_are_the_targets(tmp_path, big, encoding):
    """An oracle sampled cache whose most drawn id is the true next token: every rank's most drawn id and first
    sampled id equal its y, across shard boundaries, offset blocks and the stream's wrap-around."""
    stream = np.concatenate([load_shard(p) for p in big]).astype(np.int64)
    next_token = np.roll(stream, -1)
    w = CacheWriter(tmp_path / "cache", big, sampled_spec(encoding=encoding))
    start = 0
    for i, n in enumerate(BIG):
        ids = np.zeros((n, N), np.int64)
        counts = np.zeros((n, N), np.int64)
        ids[:, 0], ids[:, 1] = next_token[start:start + n], (next_token[start:start + n] + 1) % V
        counts[:, 0], counts[:, 1] = N - 3, 3
        w.write_shard(i, ids, counts)
        start += n
    r = CacheReader(tmp_path / "cache", big)
    for world in (1, 2, 3):
        loaders = [DistributedTokenLoader(big, rank, world) for rank in range(world)]
        for _ in range(2 * sum(BIG) // (world * 129) + 2):  # two passes over the stream
            for loader in loaders:
                batch = loader.next_batch(global_tokens=world * 128, seq_len=32, accum=1)
                y = batch.y.flatten().numpy()
                ids, counts = r.gather_sampled(batch.segments)
                np.testing.assert_array_equal(ids[:, 0], y)
                np.testing.assert_array_equal(counts[:, :2], np.tile([N - 3, 3], (len(y), 1)))
                np.testing.assert_array_equal(r.gather_ids(batch.segments, np.empty((len(y), 1), np.int64))[:, 0], y)
