"""The loader reproduces the challenge's consumption semantics, and the (shard, offset) segments it reports
point at exactly the tokens each rank trains on: the logit cache's alignment rests on this."""
import numpy as np
import pytest
import torch

from golf.data import DistributedTokenLoader, slice_segments
from golf.shards import write_shard

SHARD_SIZES = [1000, 333, 1500, 77]  # uneven, one shorter than a rank span, so boundaries are crossed


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    paths, arrays = [], []
    for i, n in enumerate(SHARD_SIZES):
        arr = rng.integers(0, 65536, size=n, dtype=np.uint16)
        p = str(root / f"x_train_{i:06d}.bin")
        write_shard(p, arr)
        paths.append(p)
        arrays.append(arr)
    return paths, arrays


def reference_batch(stream: np.ndarray, call: int, world: int, rank: int, local: int, seq_len: int):
    """The challenge's rule, written independently: call k consumes W*(local+1) tokens of the (wrapped)
    stream; rank r keeps its span; x = span[:-1], y = span[1:]."""
    span = local + 1
    start = call * world * span + rank * span
    idx = np.arange(start, start + span) % len(stream)
    mine = stream[idx].astype(np.int64)
    return mine[:-1].reshape(-1, seq_len), mine[1:].reshape(-1, seq_len), idx[:-1]


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("global_tokens,seq_len,accum", [(256, 32, 1), (512, 64, 2), (384, 16, 3), (2048, 128, 1)])
def test_loader_matches_stream_semantics_and_segments(shards, world, global_tokens, seq_len, accum):
    paths, arrays = shards
    stream = np.concatenate(arrays)
    starts = np.concatenate([[0], np.cumsum(SHARD_SIZES)[:-1]])
    local = global_tokens // (world * accum)
    if local % seq_len:
        pytest.skip("not a valid setting")
    loaders = [DistributedTokenLoader(paths, r, world) for r in range(world)]
    n_calls = 3 * len(stream) // (world * (local + 1)) + 2  # enough to wrap around the stream at least twice
    for call in range(n_calls):
        for rank, loader in enumerate(loaders):
            batch = loader.next_batch(global_tokens, seq_len, accum)
            x, y, pos = reference_batch(stream, call, world, rank, local, seq_len)
            assert torch.equal(batch.x, torch.from_numpy(x))
            assert torch.equal(batch.y, torch.from_numpy(y))
            # Expand the reported segments to one (shard, offset) per x token and compare with the truth.
            got = [(s, o + j) for s, o, n in batch.segments for j in range(n)]
            shard_of = np.searchsorted(starts, pos, side="right") - 1
            want = list(zip(shard_of.tolist(), (pos - starts[shard_of]).tolist()))
            assert got == want
            assert all(arrays[s][o] == t for (s, o), t in zip(got, x.flatten().tolist()))


def test_slice_segments():
    segs = [(0, 10, 5), (1, 0, 3), (2, 0, 4)]  # stream positions 0-4, 5-7, 8-11
    assert slice_segments(segs, 3, 6) == [(0, 13, 2), (1, 0, 3), (2, 0, 1)]
    assert slice_segments(segs, 5, 3) == [(1, 0, 3)]
    assert slice_segments(segs, 11, 1) == [(2, 3, 1)]


def test_loader_state_roundtrip(shards):
    paths, _ = shards
    a = DistributedTokenLoader(paths, 0, 1)
    for _ in range(5):
        a.next_batch(256, 32, 1)
    b = DistributedTokenLoader(paths, 0, 1)
    b.load_state(a.state())
    for _ in range(5):
        ba, bb = a.next_batch(256, 32, 1), b.next_batch(256, 32, 1)
        assert torch.equal(ba.x, bb.x) and ba.segments == bb.segments


def test_bad_batch_geometry_is_a_clear_error(shards):
    from golf.errors import GolfError
    loader = DistributedTokenLoader(shards[0], 0, 2)
    with pytest.raises(GolfError, match="TRAIN_SEQ_LEN"):
        loader.next_batch(100, 32, 1)
