"""Cache codecs: the packed encoding's documented bit layout and error bounds, every top-K codec's interface
(roundtrip, bytes per row, decoding the first id columns alone), and the sampled codec's ragged rows against a
brute-force multiset count.

Run: python -m pytest tests/test_codecs.py -q
"""
import numpy as np
import pytest

from collections import Counter

from golf.codecs import CODECS, GAP_STEP, MASS_LO, MASS_STEP, SampledCodec, decode_packed, encode_packed, packed_row_bytes


def topk_logprobs(logits, k):
    """Top-k log_softmax in float64, sorted descending (what the teacher stores)."""
    lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    idx = np.argsort(-lp, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(lp, idx, axis=1)


def kl_renormalised(a, b):
    """Per-row KL(p_a || p_b) between the top-K distributions renormalised over the K entries (float64)."""
    la = a - np.logaddexp.reduce(a, axis=1, keepdims=True)
    lb = b - np.logaddexp.reduce(b, axis=1, keepdims=True)
    return (np.exp(la) * (la - lb)).sum(axis=1)


def test_packed_ids_follow_the_documented_bit_layout():
    rng = np.random.default_rng(1)
    for k in (32, 5, 1):
        idx = rng.integers(0, 1024, (50, k))
        idx[0] = 1023
        idx[1] = 0
        packed = encode_packed(idx, np.zeros((50, k)) - np.arange(k))
        assert packed.dtype == np.uint8 and packed.shape == (50, packed_row_bytes(k))
        for row in range(50):  # brute force: a little-endian bit stream of 10-bit ids
            stream = int.from_bytes(packed[row, : 5 * -(-k // 4)].tobytes(), "little")
            assert [(stream >> (10 * j)) & 1023 for j in range(k)] == list(idx[row])
        np.testing.assert_array_equal(decode_packed(packed, k)[0], idx)
    assert packed_row_bytes(32) == 72


@pytest.mark.parametrize("case", ["N(0,3^2)", "peaked", "flat"])
def test_packed_distortion_is_small(case):
    rng = np.random.default_rng(2)
    n = 3000
    logits = rng.normal(0, {"N(0,3^2)": 3.0, "peaked": 3.0, "flat": 1.0}[case], (n, 1024))
    if case == "peaked":
        logits[np.arange(n), rng.integers(0, 1024, n)] += rng.uniform(5, 25, n)
    idx, v = topk_logprobs(logits, 32)
    v16 = v.astype(np.float16).astype(np.float64)  # what the fp16 cache holds
    got_idx, got = decode_packed(encode_packed(idx, v.astype(np.float32)), 32)
    np.testing.assert_array_equal(got_idx, idx)
    kl = kl_renormalised(v16, got.astype(np.float64))
    assert kl.mean() <= 1e-3
    # Every gap is within 1/32 nat of the truth, so Hoeffding's lemma bounds each row: (1/16)^2 / 8.
    kl_exact = kl_renormalised(v, got.astype(np.float64))
    assert kl_exact.max() <= GAP_STEP**2 / 8 + 1e-6
    gaps, got_gaps = v[:, :1] - v, (got[:, :1] - got).astype(np.float64)
    gap_ok = gaps < 255 * GAP_STEP  # larger gaps (p_k / p_0 < 1.2e-7) are clamped to the last step
    assert np.abs(gaps - got_gaps)[gap_ok].max() <= GAP_STEP / 2 + 1e-5
    assert (got_gaps[~gap_ok] == np.float32(255 * GAP_STEP)).all()
    assert case != "peaked" or (~gap_ok).mean() > 0.1  # the peaked case does exercise the clamp

    # The top-K mass m (so the tail bucket 1 - m) keeps its log-odds log((1 - m) / m) within half a step;
    # a tail below 1.1e-7 of m is clamped to that.
    def log_odds(x):
        log_m = np.logaddexp.reduce(x, axis=1)
        return np.log(-np.expm1(log_m)) - log_m

    odds, got_odds = log_odds(v), log_odds(got.astype(np.float64))
    odds_ok = odds > MASS_LO
    assert np.abs(odds - got_odds)[odds_ok].max() <= MASS_STEP / 2 + 1e-3
    np.testing.assert_allclose(got_odds[~odds_ok], MASS_LO, atol=1e-3)
    # Hence each value is off by at most half a mass step plus a gap step (via v_0 and via d_k).
    assert np.abs(v - got)[odds_ok[:, None] & gap_ok].max() <= MASS_STEP / 2 + GAP_STEP


def test_packed_extremes_stay_finite():
    idx = np.tile(np.arange(4), (3, 1))
    vals = np.array([[0.0, -30, -40, -50], [-1e-9, -25, -26, -27], [-6.9, -6.91, -6.92, -6.93]])
    got = decode_packed(encode_packed(idx, vals), 4)[1]
    assert np.isfinite(got).all() and (got <= 0).all() and (np.diff(got, axis=1) <= 0).all()
    np.testing.assert_allclose(got[:2, 0], vals[:2, 0], atol=1e-6)  # m ~ 1: top-1 ~ 0 is kept
    np.testing.assert_allclose(got[2], vals[2], atol=MASS_STEP / 2 + GAP_STEP)  # a 99.6% tail


def _rows(n=40, k=32, seed=3):
    rng = np.random.default_rng(seed)
    return topk_logprobs(rng.normal(0, 3.0, (n, 1024)), k)


@pytest.mark.parametrize("name", [name for name, codec in CODECS.items() if codec.value_kind == "logprob_T1"])
def test_every_codec_roundtrips_into_its_declared_files(name):
    codec, k = CODECS[name], 32
    idx, vals = _rows(k=k)
    arrays = codec.encode(idx, vals.astype(np.float32))
    layout = codec.files("s", k)
    assert len(arrays) == len(layout)
    stored = []
    for arr, (_, dtype, cols) in zip(arrays, layout):  # what a memory-mapped file of that layout holds
        out = np.empty((len(idx), cols), dtype=dtype)
        out[...] = arr
        stored.append(out)
    assert codec.row_bytes(k) == sum(a.shape[1] * a.dtype.itemsize for a in stored)
    got_idx, got_vals = np.empty((len(idx), k), np.int16), np.empty((len(idx), k), np.float16)
    codec.decode(stored, k, got_idx, got_vals)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_allclose(got_vals.astype(np.float64), vals, atol=MASS_STEP / 2 + GAP_STEP)
    for c in (1, 3, 5, k):  # the first c ids alone equal the first c columns of the full decode
        ids = np.full((len(idx), c), -1, dtype=np.int64)
        codec.decode_ids(stored, k, ids)
        np.testing.assert_array_equal(ids, got_idx[:, :c])


# ----------------------------------------------------------------------------------------------------------
# The sampled codec (ragged rows of distinct ids and draw counts)


def draw_rows(n, draws, vocab, seed=0):
    """Random draws [n, N] from rows of varied peakedness, and their brute-force Counters."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, rng.uniform(0.1, 6, (n, 1)), (n, vocab))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    draws_ = np.stack([rng.choice(vocab, draws, p=row) for row in p])
    return draws_, [Counter(row.tolist()) for row in draws_]


def padded(counters, draws, shuffle_seed=None):
    """The Sampled form of the Counters: distinct ids and counts [n, N], padding (id 0, count 0) last; the
    entries in a random order when shuffle_seed is given (encode must canonicalise)."""
    rng = np.random.default_rng(shuffle_seed)
    ids, counts = np.zeros((len(counters), draws), np.int64), np.zeros((len(counters), draws), np.int64)
    for r, c in enumerate(counters):
        items = list(c.items())
        if shuffle_seed is not None:
            rng.shuffle(items)
        for j, (i, m) in enumerate(items):
            ids[r, j], counts[r, j] = i, m
    return ids, counts


def canonical(counter):
    """Most drawn first, ties by the lower id."""
    return sorted(counter.items(), key=lambda e: (-e[1], e[0]))


@pytest.mark.parametrize("name,draws,vocab", [("sampled", 1, 50), ("sampled", 16, 1024), ("sampled", 50, 1024),
                                              ("sampled", 255, 40000), ("sampled", 255, 3), ("sampled-packed", 1, 50),
                                              ("sampled-packed", 16, 1024), ("sampled-packed", 50, 1024),
                                              ("sampled-packed", 255, 3), ("sampled-packed", 7, 1024)])
def test_sampled_rows_roundtrip_as_multisets_in_the_documented_bytes(name, draws, vocab):
    codec = CODECS[name]
    _, counters = draw_rows(60, draws, vocab, seed=draws)
    stored = codec.encode(*padded(counters, draws, shuffle_seed=1))
    if name == "sampled":
        lengths, entries = stored
        assert lengths.dtype == entries.dtype == np.uint8 and entries.shape[1] == 3
        assert lengths[:, 0].tolist() == [len(c) for c in counters]
        # brute force: per entry its id as a little-endian uint16, then its count; rows back to back, canonical
        want = b"".join(i.to_bytes(2, "little") + m.to_bytes(1, "little") for c in counters for i, m in canonical(c))
        assert entries.tobytes() == want
    else:
        (packed,) = stored
        assert packed.dtype == np.uint8 and packed.shape == (60, 5 * -(-draws // 4))
        for row, c in zip(packed, counters):  # brute force: the grouped draws, canonical, as a 10-bit little-endian stream
            stream = int.from_bytes(row.tobytes(), "little")
            assert [(stream >> (10 * j)) & 1023 for j in range(draws)] == [i for i, m in canonical(c) for _ in range(m)]
            assert stream >> (10 * draws) == 0  # zero padding
    width = max(len(c) for c in counters) + 2
    ids, counts = np.full((60, width), 7, np.int32), np.full((60, width), 7, np.uint8)
    codec.decode(stored, draws, ids, counts)
    for r, c in enumerate(counters):
        k = len(c)
        assert list(zip(ids[r, :k].tolist(), counts[r, :k].tolist())) == canonical(c)
        assert (ids[r, k:] == 0).all() and (counts[r, k:] == 0).all()  # padding
        assert counts[r].sum() == draws
    for c in (1, 2, width):
        first = np.zeros((60, c), np.int32)
        codec.decode_ids(stored, draws, first)
        for r, cnt in enumerate(counters):
            want_ids = [i for i, _ in canonical(cnt)][:c]
            assert first[r].tolist() == want_ids + [-1] * (c - len(want_ids))


@pytest.mark.parametrize("name", ["sampled", "sampled-packed"])
def test_sampled_encoding_is_canonical_and_decode_refuses_narrow_outputs(name):
    codec = CODECS[name]
    _, counters = draw_rows(30, 16, 100, seed=5)
    a = codec.encode(*padded(counters, 16))
    b = codec.encode(*padded(counters, 16, shuffle_seed=3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    width = max(len(c) for c in counters)
    with pytest.raises(ValueError, match="distinct ids"):
        codec.decode(a, 16, np.zeros((30, width - 1), np.int64), np.zeros((30, width - 1), np.uint8))


@pytest.mark.parametrize("bad,message", [
    (lambda ids, counts: (ids, counts + (np.arange(counts.shape[1]) == 0)), "sum to the draws"),
    (lambda ids, counts: (ids, np.where(np.arange(counts.shape[1]) < 2, counts - 1, counts)), "sum to the draws"),
    (lambda ids, counts: (np.where(np.arange(ids.shape[1]) == 1, ids[:, :1], ids), counts), "distinct"),
    (lambda ids, counts: (ids, counts + 0.5), "whole numbers"),
])
@pytest.mark.parametrize("name", ["sampled", "sampled-packed"])
def test_sampled_rows_are_checked(bad, message, name):
    _, counters = draw_rows(20, 8, 4, seed=2)  # 8 draws from 4 ids: rows of 2+ distinct ids, so column 1 is an entry
    ids, counts = padded(counters, 8)
    ids[:, 1] = np.where(counts[:, 1] > 0, ids[:, 1], 3 - ids[:, 0] % 4)
    CODECS[name].check_rows(ids, counts)
    with pytest.raises(ValueError, match=message):
        CODECS[name].check_rows(*bad(ids, counts.astype(np.float64)))


def test_sampled_row_bytes():
    assert isinstance(CODECS["sampled"], SampledCodec) and CODECS["sampled"].row_bytes(16) == 1 + 3 * 16 + 1  # widest
    assert CODECS["sampled-packed"].row_bytes(16) == 20 and CODECS["sampled-packed"].row_bytes(50) == 65
