"""Shard format: python -m pytest tests/test_shards.py -q"""
import os

import numpy as np
import pytest

from golf.errors import GolfError
from golf.shards import list_shards, load_shard, read_header, shard_fingerprint, shard_problem, write_shard


def reference_load(path):
    """The challenge's own reader (load_data_shard), re-typed independently of golf.shards."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1
    n = int(header[2])
    assert os.path.getsize(path) == 256 * 4 + n * 2
    return header, np.fromfile(path, dtype="<u2", count=n, offset=256 * 4)


def test_roundtrip_matches_challenge_reader(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 2**16, size=12_345, dtype=np.int64)
    tokens[:2] = (0, 2**16 - 1)  # both ends of the uint16 range survive
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, tokens)
    header, ref = reference_load(path)
    assert header[2] == len(tokens) and not header[3:].any()
    np.testing.assert_array_equal(ref, tokens)
    assert read_header(path) == len(tokens)
    loaded = load_shard(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, tokens)
    with pytest.raises(ValueError):
        loaded[0] = 1  # read-only: nobody can corrupt a shard through the view


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", [])
    assert read_header(tmp_path / "e.bin") == 0
    assert len(load_shard(tmp_path / "e.bin")) == 0


@pytest.mark.parametrize(
    "tokens, message",
    [
        (np.array([1, 2**16]), "65536"),
        (np.array([-1, 5]), "65536"),
        (np.array([1.0, 2.0]), "integer"),
        (np.zeros((2, 3), dtype=np.int64), "1-D"),
        # 2**31 tokens without allocating them: a zero-stride view
        (np.broadcast_to(np.zeros(1, dtype=np.uint16), (2**31,)), "too many"),
    ],
)
def test_write_refuses_bad_tokens(tmp_path, tokens, message):
    path = tmp_path / "bad.bin"
    with pytest.raises(GolfError, match=message):
        write_shard(path, tokens)
    assert os.listdir(tmp_path) == []  # nothing written, no temp file left behind


def _corrupt(path, kind):
    raw = bytearray(open(path, "rb").read())
    if kind == "magic":
        raw[0:4] = (123).to_bytes(4, "little")
    elif kind == "version":
        raw[4:8] = (7).to_bytes(4, "little")
    elif kind == "truncated":
        raw = raw[:-2]
    elif kind == "trailing":
        raw += b"\0\0"
    elif kind == "short_header":
        raw = raw[:1000]
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("magic", "bad magic 123 \\(expected 20240520\\)"),
        ("version", "version 7"),
        ("truncated", "file size 1222 != 1224.*truncated"),
        ("trailing", "file size 1226 != 1224.*trailing"),
        ("short_header", "shorter than the 1024-byte shard header"),
    ],
)
def test_corrupted_shard_is_refused_naming_the_file(tmp_path, kind, message):
    path = tmp_path / "x_val_000000.bin"
    write_shard(path, np.arange(100))
    _corrupt(path, kind)
    for fn in (read_header, load_shard, shard_fingerprint):
        with pytest.raises(GolfError, match=message) as e:
            fn(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert shard_problem(path, 1024) == str(e.value)


def test_missing_shard(tmp_path):
    with pytest.raises(GolfError, match="not found"):
        read_header(tmp_path / "nope.bin")


@pytest.mark.parametrize("bad_pos", [0, 999, 1000, 1999, 2498])
def test_shard_problem_finds_first_id_over_vocab(tmp_path, bad_pos):
    good, bad = tmp_path / "a.bin", tmp_path / "b.bin"
    write_shard(good, np.arange(1500) % 1024)
    tokens = np.arange(2500) % 1024
    tokens[bad_pos] = 1024
    tokens[-1] = 5000  # a later bad id must not be the one reported
    write_shard(bad, tokens)
    assert shard_problem(good, vocab_size=1024, chunk_tokens=1000) is None
    # the chunk size puts bad_pos on and around chunk edges
    assert shard_problem(bad, vocab_size=1024, chunk_tokens=1000).startswith(
        f"{bad}: token id 1024 at position {bad_pos} is >= vocab size 1024")
    assert f"token id 1024 at position {bad_pos} is >= VOCAB_SIZE=1024" in shard_problem(bad, 1024, "VOCAB_SIZE", 1000)


def test_list_shards(tmp_path):
    for name in ["d_train_000001.bin", "d_train_000000.bin", "d_train_000010.bin", "d_val_000000.bin", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in list_shards(tmp_path, "train")] == ["d_train_000000.bin", "d_train_000001.bin", "d_train_000010.bin"]
    assert [os.path.basename(p) for p in list_shards(tmp_path, "val")] == ["d_val_000000.bin"]
    with pytest.raises(GolfError, match=r"no test shards match .*\*_test_\*\.bin.*prepare_data\.py --demo"):
        list_shards(tmp_path, "test")
    with pytest.raises(GolfError, match="not found.*prepare_data.py --demo"):
        list_shards(tmp_path / "missing", "train")


def test_fingerprint_covers_exactly_head_and_tail(tmp_path):
    """Brute force over every token: a change is seen iff it lies in the first or last `edge` bytes."""
    edge, n = 64, 75  # body 150 bytes: head [0, 64), tail [86, 150), middle [64, 86) not hashed
    base = np.arange(n) + 100
    path = tmp_path / "f.bin"
    write_shard(path, base)
    ref = shard_fingerprint(path, edge_bytes=edge)
    assert ref == shard_fingerprint(path, edge_bytes=edge)
    for i in range(n):
        changed = base.copy()
        changed[i] += 1
        write_shard(path, changed)
        seen = shard_fingerprint(path, edge_bytes=edge) != ref
        assert seen == (2 * i < edge or 2 * i >= 2 * n - edge), i
    write_shard(path, base[:-1])  # a shorter shard differs even if its bytes were all hashed before
    assert shard_fingerprint(path, edge_bytes=edge) != ref
    write_shard(path, base[:20])  # body smaller than one edge: all of it is hashed, once
    small = shard_fingerprint(path, edge_bytes=edge)
    write_shard(path, np.r_[base[:19], 0])
    assert shard_fingerprint(path, edge_bytes=edge) != small
