"""Cache encodings: how one shard's rows become the data files of a logit cache. A row is either the teacher's
top-K (ids + log-probabilities; fp16, packed) or its N draws at a temperature (distinct ids + draw counts;
sampled, a ragged encoding: rows hold as many entries as they have distinct ids).

A codec is one class here plus its line in `CODECS`; storage (golf/cache.py: writer, reader, manifest,
resume, atomic commits) only calls the interface of `Codec` (and of `RaggedCodec` for ragged rows) and never
branches on an encoding's name.

Packed encoding (vocab <= 1024, at most 72 bytes per token at K=32). Row layout:
- bytes [0, 5*ceil(K/4)): the K token ids, 10 bits each, little-endian, four ids per 5 bytes (zero-padded);
- 1 byte, "mass": the log-odds of the tail against the top-K, l = log((1 - m) / m) with m = sum(exp(v)),
  on the grid l = MASS_LO + q * MASS_STEP (q in 0..255, MASS_LO = -16, MASS_STEP = 3/32, so l in [-16, 7.9]);
- K-1 bytes, "gaps": d_k = v_0 - v_k for k = 1..K-1 on the grid d = q * GAP_STEP (GAP_STEP = 1/16 nat, so
  d in [0, 15.94]; larger gaps, i.e. p_k / p_0 < 1.2e-7, are clamped to 15.94).
Decoding rebuilds v_k = log(m) - logsumexp(-d) - d_k, so the top-K mass and the tail bucket 1 - m are kept to
within 4.7% relative, each value to within 3/64 + 1/16 = 0.11 nat, and the ids exactly. Every gap within range
is off by at most 1/32 nat, so the top-K renormalised distribution has KL(p || p_packed) <= (1/16)^2 / 8 =
4.9e-4 nats for every token (Hoeffding's lemma). Measured means: 1.0e-4 for top-32 of logits ~ N(0, 3^2) over
1024 tokens, 1.5e-4 for N(0, 1), 5e-5 with one boosted logit (tests/test_cache.py); an fp16 cache is ~1e-7
from exact. Gaps, not absolute values, because the KL only sees differences; log-odds of the mass, not v_0,
because an 8-bit v_0 would move a tail of 1e-3 by more than itself.
"""
from abc import ABC, abstractmethod

import numpy as np

# Packed quantisation grids (recorded in the manifest; a reader refuses a cache made with other grids).
INDEX_BITS = 10
GAP_STEP = 1.0 / 16
MASS_LO = -16.0
MASS_STEP = 3.0 / 32
PACKED_GRIDS = {"index_bits": INDEX_BITS, "gap_step": GAP_STEP, "mass_lo": MASS_LO, "mass_step": MASS_STEP}
_GAP = (np.arange(256) * GAP_STEP).astype(np.float32)  # gap byte -> d
_EXP_NEG_GAP = np.exp(-_GAP)

FileLayout = tuple[str, np.dtype, int]  # (file name, dtype, columns) of one data file of a shard


class Codec(ABC):
    """One cache encoding. Rows are a shard's top-K: ids [n, K] and sorted-descending log-probs [n, K] (the
    value kind "logprob_T1"), or what `value_kind` says instead."""

    name: str
    max_vocab: int  # ids must be below this
    params: dict | None = None  # quantisation parameters the manifest records and a reader must match
    value_kind = "logprob_T1"  # what a row's values are (recorded in the manifest; a reader must match it)
    format_version = 1  # the cache format version its caches are written with (golf.cache.FORMAT_VERSIONS)
    ragged = False  # True: a `RaggedCodec` (rows of varying width)

    def check_rows(self, idx: np.ndarray, vals: np.ndarray):
        """Raise ValueError unless `vals` are finite log-probabilities sorted descending along K: a teacher bug
        must not reach the student; -inf in particular would make its KL NaN (0 * -inf)."""
        if not (np.isfinite(vals).all() and (vals[:, :-1] >= vals[:, 1:]).all()):
            raise ValueError("values must be finite log-probabilities sorted descending along K")

    @abstractmethod
    def files(self, stem: str, k: int) -> list[FileLayout]:
        """The data files of shard `stem`, each a 2-D .npy of num_tokens rows."""

    def row_bytes(self, k: int) -> int:
        """Bytes per token over all data files."""
        return sum(cols * dt.itemsize for _, dt, cols in self.files("", k))

    @abstractmethod
    def encode(self, idx: np.ndarray, vals: np.ndarray) -> list[np.ndarray]:
        """Rows -> one array per data file, in `files` order."""

    @abstractmethod
    def decode(self, arrays: list[np.ndarray], k: int, out_idx: np.ndarray, out_vals: np.ndarray):
        """The stored rows (one array per data file) -> ids and log-probs written into `out_*` (any integer /
        float dtype that holds them)."""

    @abstractmethod
    def decode_ids(self, arrays: list[np.ndarray], k: int, out_idx: np.ndarray):
        """Only the first out_idx.shape[1] ids of each row (a hard label needs column 0 alone)."""


class Fp16Codec(Codec):
    """uint16 ids and float16 log-probs: 4 bytes per entry, ~1e-7 nats from exact."""

    name, max_vocab = "fp16", 1 << 16

    def files(self, stem, k):
        return [(f"{stem}.idx.npy", np.dtype(np.uint16), k), (f"{stem}.val.npy", np.dtype(np.float16), k)]

    def encode(self, idx, vals):
        return [idx, vals]  # the writer's memory maps cast on assignment

    def decode(self, arrays, k, out_idx, out_vals):
        np.copyto(out_idx, arrays[0], casting="same_kind")
        np.copyto(out_vals, arrays[1], casting="same_kind")

    def decode_ids(self, arrays, k, out_idx):
        np.copyto(out_idx, arrays[0][:, : out_idx.shape[1]], casting="same_kind")


def _id_bytes(k: int) -> int:
    """Bytes of K 10-bit ids, padded to whole groups of four ids (5 bytes each)."""
    return 5 * -(-k // 4)


def packed_row_bytes(k: int) -> int:
    """Bytes per token of the packed encoding: 10-bit ids (4 per 5 bytes) + 1 mass byte + K-1 gap bytes."""
    return _id_bytes(k) + k


def _pack_ids(idx: np.ndarray) -> np.ndarray:
    """ids [n, k] (< 1024) -> uint8 [n, 5*ceil(k/4)]: id j of a group of four occupies bits [10j, 10j + 10) of 5
    little-endian bytes, so its low bits land in byte j and its high bits in byte j + 1 (zero-padded)."""
    n, k = idx.shape
    nb = _id_bytes(k)
    ids = np.zeros((n, nb // 5 * 4), dtype=np.uint16)
    ids[:, :k] = idx
    ids = ids.reshape(n, -1, 4)
    groups = np.zeros((n, nb // 5, 5), dtype=np.uint8)
    for j in range(4):  # one column at a time: ~3x faster than broadcasting
        groups[..., j] |= (ids[..., j] << 2 * j) & 0xFF
        groups[..., j + 1] |= ids[..., j] >> (8 - 2 * j)
    return groups.reshape(n, nb)


def _unpack_ids(id_bytes: np.ndarray, k: int) -> np.ndarray:
    """uint8 [n, 5*ceil(k/4)] -> the first k ids, uint16 [n, k]."""
    n = id_bytes.shape[0]
    b = id_bytes.reshape(n, -1, 5).astype(np.uint16)
    ids = np.empty((n, b.shape[1], 4), dtype=np.uint16)
    for j in range(4):  # id j = bits [2j, 2j + 10) of bytes j, j + 1; in place, one column at a time is fastest
        x = b[..., j + 1] << 8
        x |= b[..., j]
        x >>= 2 * j
        x &= 0x3FF
        ids[..., j] = x
    return ids.reshape(n, -1)[:, :k]


def encode_packed(idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Pack top-K ids (< 1024) and sorted-descending log-probs [n, K] into uint8 [n, packed_row_bytes(K)]."""
    idx = np.asarray(idx)
    n, k = idx.shape
    v = np.asarray(vals, dtype=np.float32)
    if v.shape != (n, k):
        raise ValueError(f"idx {idx.shape} and vals {v.shape} must have the same shape")
    if n and (idx.min() < 0 or idx.max() >= 1 << INDEX_BITS):
        raise ValueError(f"packed ids must lie in [0, {1 << INDEX_BITS}), got [{idx.min()}, {idx.max()}]")
    out = np.empty((n, packed_row_bytes(k)), dtype=np.uint8)
    nb = _id_bytes(k)
    out[:, :nb] = _pack_ids(idx)

    # Mass byte: log-odds of the tail against the top-K mass m. float32 is enough because
    # log(m) = v_0 + log1p(sum_k>0 exp(-d_k)) has no cancellation, even for m = 1 - 1e-7.
    gaps = v[:, :1] - v[:, 1:]
    log_m = np.minimum(v[:, 0] + np.log1p(np.exp(-gaps).sum(axis=1)), 0)
    with np.errstate(divide="ignore"):  # m == 1 exactly gives log(0) = -inf, which the clip maps to MASS_LO
        odds = np.log(-np.expm1(log_m)) - log_m
    out[:, nb] = np.clip(np.rint((odds - MASS_LO) / MASS_STEP), 0, 255)
    out[:, nb + 1 :] = np.clip(np.rint(gaps * np.float32(1 / GAP_STEP)), 0, 255)
    return out


def decode_packed(packed: np.ndarray, k: int, out_idx: np.ndarray | None = None, out_vals: np.ndarray | None = None):
    """Inverse of `encode_packed`: (ids [n, K] int64, log-probs [n, K] float32), optionally written into `out_*`."""
    packed = np.asarray(packed)
    n = packed.shape[0]
    if packed.shape != (n, packed_row_bytes(k)):
        raise ValueError(f"packed rows have shape {packed.shape}, expected (n, {packed_row_bytes(k)}) for K={k}")
    out_idx = np.empty((n, k), dtype=np.int64) if out_idx is None else out_idx
    out_vals = np.empty((n, k), dtype=np.float32) if out_vals is None else out_vals
    nb = _id_bytes(k)
    out_idx[...] = _unpack_ids(packed[:, :nb], k)

    # v_k = log(m) - log(sum_j exp(-d_j)) - d_k with d_0 = 0 (so the sum is >= 1); tables replace exp and *.
    q = packed[:, nb + 1 :]
    odds = packed[:, nb].astype(np.float32) * np.float32(MASS_STEP) + np.float32(MASS_LO)
    log_m = -np.logaddexp(np.float32(0), odds)  # m = 1 / (1 + exp(odds))
    v0 = log_m - np.log1p(np.take(_EXP_NEG_GAP, q).sum(axis=1))
    out_vals[:, 0] = v0
    np.subtract(v0[:, None], np.take(_GAP, q), out=out_vals[:, 1:])
    return out_idx, out_vals


class PackedCodec(Codec):
    """10-bit ids, a mass byte and K-1 gap bytes (the module docstring): 72 bytes per token at K=32."""

    name, max_vocab, params = "packed", 1 << INDEX_BITS, PACKED_GRIDS

    def files(self, stem, k):
        return [(f"{stem}.pk.npy", np.dtype(np.uint8), packed_row_bytes(k))]

    def encode(self, idx, vals):
        return [encode_packed(idx, vals)]

    def decode(self, arrays, k, out_idx, out_vals):
        decode_packed(arrays[0], k, out_idx, out_vals)

    def decode_ids(self, arrays, k, out_idx):
        c = out_idx.shape[1]
        out_idx[...] = _unpack_ids(arrays[0][:, : _id_bytes(c)], c)


class RaggedCodec(Codec):
    """A codec whose rows hold a varying number of entries (at most K). Besides the per-row files of `files`,
    a shard has an entries file (`entries_file`, one row per entry, the rows' entries back to back in row
    order) and an offsets file (`offsets_file`: int64 [ceil(n / block) + 1, 1], the index of the first entry
    of every `block` rows, then the number of entries). `encode` returns the per-row arrays followed by the
    entries; `decode`/`decode_ids` get the per-row slices of the rows read followed by their entries."""

    ragged = True
    block: int  # rows per offset

    @abstractmethod
    def entries_file(self, stem: str, k: int) -> FileLayout:
        """(file name, dtype, columns) of the entries file of shard `stem`."""

    def offsets_file(self, stem: str) -> str:
        return f"{stem}.offsets.npy"

    @abstractmethod
    def row_lengths(self, per_row: list[np.ndarray]) -> np.ndarray:
        """Entries of each row, int64 [n], from the per-row arrays of those rows."""


class DrawCodec(Codec):
    """Rows of N draws with replacement from the teacher at a temperature (K = N). Input and output rows are the
    `golf.teachers.Sampled` form: ids [n, W] and counts [n, W] with the distinct ids first and count 0 on padding
    (an arbitrary id on input; id 0 from `decode`, -1 from `decode_ids`); a row's counts sum to N. Output rows
    are canonical: most drawn first, ties by the lower id, so column 0 is the most drawn id (what a hard label
    of a sampled cache is)."""

    value_kind, format_version = "draw_counts", 2
    max_draws = 255  # a count (and a ragged row's length) fits one byte

    def mean_row_bytes(self, k: int, mean_distinct: float) -> float:
        """Bytes per position of rows of `k` draws with `mean_distinct` distinct ids on average."""
        return float(self.row_bytes(k))

    def check_rows(self, idx, vals):
        counts = np.asarray(vals)
        n, k = counts.shape
        if not (np.issubdtype(counts.dtype, np.integer) or (np.isfinite(counts).all() and (counts == np.rint(counts)).all())):
            raise ValueError("draw counts must be whole numbers")
        if n and (counts.min() < 0 or (counts.sum(axis=1) != k).any()):
            raise ValueError(f"draw counts must be >= 0 and sum to the draws N={k} in every row")
        if k > 1:
            ids = np.where(counts > 0, idx, -1 - np.arange(k))  # padding never collides
            s = np.sort(ids, axis=1)
            if (s[:, 1:] == s[:, :-1]).any():
                raise ValueError("a row's sampled ids must be distinct")


def _canonical(idx: np.ndarray, counts: np.ndarray, max_vocab: int):
    """Rows in the Sampled form -> the same rows in the canonical order (count descending, then id), padding last:
    what makes the stored bytes a function of each row's multiset."""
    k = idx.shape[1]
    key = np.where(counts > 0, (k - counts) * max_vocab + idx, (k + 1) * max_vocab)
    order = np.argsort(key, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(counts, order, 1)


def _put_rows(lengths, ids, counts, out_idx, out_vals):
    """Entries (ids, counts) of rows with these lengths, back to back -> the padded Sampled form in `out_*`."""
    if lengths.size and lengths.max() > out_idx.shape[1]:
        raise ValueError(f"a row has {lengths.max()} distinct ids, the outputs only {out_idx.shape[1]} columns")
    filled = np.arange(out_idx.shape[1]) < lengths[:, None]  # row-major: the entries back to back
    out_idx[...] = 0
    out_vals[...] = 0
    out_idx[filled] = ids
    out_vals[filled] = counts


def _put_first_ids(lengths, ids, out_idx):
    """The first out_idx.shape[1] ids of each row, -1 past the end of a shorter row."""
    width = int(lengths.max(initial=0))
    rows = np.full((len(lengths), max(width, out_idx.shape[1])), -1, dtype=np.int64)
    rows[np.arange(rows.shape[1]) < lengths[:, None]] = ids
    out_idx[...] = rows[:, :out_idx.shape[1]]


class SampledCodec(RaggedCodec, DrawCodec):
    """Draws as each row's distinct ids and their counts, for any vocabulary up to 2^16: ~3 bytes per distinct id.

    Layout of a shard of n rows with E entries in all (sum over rows of the distinct ids):
    - `NAME.lengths.npy` uint8 [n, 1]: distinct ids of each row (1..N, N <= 255);
    - `NAME.entries.npy` uint8 [E, 3]: per entry its id as a little-endian uint16 (2 bytes) and its draw count
      (1 byte), the entries of a row back to back in the canonical order, rows in order;
    - `NAME.offsets.npy` int64 [ceil(n / 256) + 1, 1]: the first entry of every block of 256 rows, then E.
    So 3 bytes per distinct id plus 1 + 8/256 bytes per row. The length byte makes a row's entries findable
    without scanning the counts (a span's start is its block's offset plus at most 255 lengths) and lets a
    reader check every block against the offsets; per-row int64 offsets would cost 8 bytes per row. A
    contiguous span of rows is one contiguous read of the entries file."""

    name, max_vocab, block = "sampled", 1 << 16, 256
    params = {"block": 256, "entry": "uint16 id, uint8 count"}

    def files(self, stem, k):
        return [(f"{stem}.lengths.npy", np.dtype(np.uint8), 1)]

    def entries_file(self, stem, k):
        return (f"{stem}.entries.npy", np.dtype(np.uint8), 3)

    def row_bytes(self, k):
        """At most: every row with K distinct ids, plus the offsets' 8 / block bytes rounded up to one."""
        return 1 + 3 * k + 1

    def row_lengths(self, per_row):
        return per_row[0][:, 0].astype(np.int64)

    def mean_row_bytes(self, k, mean_distinct):
        return 1 + 3 * mean_distinct + 8 / self.block  # length byte, entries, the block's offset

    def encode(self, idx, vals):
        idx, counts = _canonical(np.asarray(idx).astype(np.int64), np.asarray(vals).astype(np.int64), self.max_vocab)
        keep = counts > 0  # row-major: the entries of a row back to back, rows in order
        ids, c = idx[keep], counts[keep]
        entries = np.empty((len(ids), 3), dtype=np.uint8)
        entries[:, 0], entries[:, 1], entries[:, 2] = ids & 0xFF, ids >> 8, c
        return [keep.sum(axis=1).astype(np.uint8)[:, None], entries]

    @staticmethod
    def _ids(entries):
        return entries[:, 0].astype(np.int64) | entries[:, 1].astype(np.int64) << 8

    def decode(self, arrays, k, out_idx, out_vals):
        _put_rows(self.row_lengths(arrays[:1]), self._ids(arrays[1]), arrays[1][:, 2], out_idx, out_vals)

    def decode_ids(self, arrays, k, out_idx):
        _put_first_ids(self.row_lengths(arrays[:1]), self._ids(arrays[1]), out_idx)


class SampledPackedCodec(DrawCodec):
    """Draws as the row's N draws themselves in 10-bit ids four to 5 bytes (the packed encoding's id layout),
    grouped by id in the canonical order (the most drawn id's draws first, ties by the lower id): 5 * ceil(N / 4)
    bytes per row whatever the number of distinct ids, so 20 bytes at N = 16. Vocab <= 1024. Cheaper than
    `sampled` whenever a row has more than (5N/4 - 1) / 3 distinct ids on average, as at T = 2 (near N distinct
    ids); fixed-width rows, so no offsets. Decoding counts the runs of equal ids, already in canonical order."""

    name, max_vocab, params = "sampled-packed", 1 << INDEX_BITS, {"index_bits": INDEX_BITS, "row": "draws grouped, canonical"}

    def files(self, stem, k):
        return [(f"{stem}.draws.npy", np.dtype(np.uint8), _id_bytes(k))]

    def encode(self, idx, vals):
        idx, counts = _canonical(np.asarray(idx).astype(np.int64), np.asarray(vals).astype(np.int64), self.max_vocab)
        n, k = idx.shape
        return [_pack_ids(np.repeat(idx.ravel(), counts.ravel()).reshape(n, k))]  # a row's counts sum to N = K

    @staticmethod
    def _entries(packed, k):
        """Grouped draws -> (lengths [n], ids, counts) of the rows' runs, back to back (canonical already)."""
        draws = _unpack_ids(packed, k)
        n = len(draws)
        start = np.ones((n, k), dtype=bool)
        start[:, 1:] = draws[:, 1:] != draws[:, :-1]
        first = np.flatnonzero(start)  # column 0 always starts a run, so a row's last run ends where the next begins
        return start.sum(axis=1), draws.ravel()[first], np.diff(first, append=n * k)

    def decode(self, arrays, k, out_idx, out_vals):
        _put_rows(*self._entries(arrays[0], k), out_idx, out_vals)

    def decode_ids(self, arrays, k, out_idx):
        lengths, ids, _ = self._entries(arrays[0], k)
        _put_first_ids(lengths, ids, out_idx)


CODECS: dict[str, Codec] = {c.name: c for c in (Fp16Codec(), PackedCodec(), SampledCodec(), SampledPackedCodec())}
ENCODINGS = tuple(CODECS)
