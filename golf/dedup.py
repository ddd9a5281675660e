"""Keep validation text out of the training text: drop every validation document that shares a long token
span with the training documents, and measure that overlap.

A span is `n` consecutive tokens inside one document (a span across a document boundary is not shared text).
The unit is the dataset's own tokens because the leakage that matters is what the model sees; the default
`DEDUP_TOKENS = 32` (about 86 bytes, ~13 words of the demo corpus) is the scale of GPT-3's 13-word
contamination check. What shorter shared spans remain are phrases ("the absolute value of the second
operand"), doctest lines, numbers and fragments of generated boilerplate that differ in a name: their overlap is
reported too, never used to drop documents (measured on the demo corpus: docs/decisions.md).

Spans are compared by a 64-bit hash (numpy, vectorised over a document): with ~10^6 train and ~10^5 val
spans a false match has a probability of ~1e-8 per build, and it could only drop one document too many.
"""
import numpy as np

DEDUP_TOKENS = 32
_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 2**64)
_powers = {"base": np.ones(1, dtype=np.uint64), "inv": np.ones(1, dtype=np.uint64)}  # grown on demand


def _power_table(name: str, length: int) -> np.ndarray:
    """[1, b, b^2, ...] modulo 2**64 (numpy's uint64 arithmetic wraps), at least `length` long."""
    table = _powers[name]
    if len(table) < length:
        factor = np.full(max(length, 2 * len(table)), _BASE if name == "base" else _BASE_INV, dtype=np.uint64)
        factor[0] = 1
        table = _powers[name] = np.cumprod(factor)
    return table[:length]


def span_hashes(ids, n: int) -> np.ndarray:
    """uint64 hash of every window of `n` consecutive ids (len(ids) - n + 1 of them; none if shorter).

    A polynomial hash sum_j (id[i+j] + 1) * b^-j modulo 2**64, from one prefix sum (a few passes over `ids`
    whatever `n` is), then mixed."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    w = (np.asarray(ids, dtype=np.uint64) + np.uint64(1)) * _power_table("inv", len(ids))
    prefix = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(w, dtype=np.uint64)])
    h = (prefix[n:] - prefix[:m]) * _power_table("base", m)  # window i, rescaled to start at b^0
    h ^= h >> np.uint64(29)  # spread the high bits' information over the low ones
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(32))


class SpanIndex:
    """The set of n-token spans of some documents, queried for membership."""

    def __init__(self, docs_ids, n: int):
        self.n = n
        parts = [span_hashes(ids, n) for ids in docs_ids]
        # sorted for searchsorted; duplicates are harmless (np.unique took 0.76 s, np.sort 0.01 s on 736k spans, numpy 2.4)
        self.hashes = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Boolean mask: which of `hashes` are spans of the indexed documents."""
        if not len(self.hashes):
            return np.zeros(len(hashes), dtype=bool)
        pos = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        return self.hashes[pos] == hashes

    def shared(self, ids) -> tuple[int, int]:
        """(spans of `ids` that occur in the index, spans of `ids`)."""
        h = span_hashes(ids, self.n)
        return int(self.contains(h).sum()), len(h)


def overlap(index: SpanIndex, docs_ids) -> float:
    """Share of the n-token spans of `docs_ids` that occur in the index (0.0 when there are none)."""
    counts = [index.shared(ids) for ids in docs_ids]
    total = sum(t for _, t in counts)
    return sum(s for s, _ in counts) / total if total else 0.0


def dedup_val(train_ids, val_ids, n: int = DEDUP_TOKENS, report_n=(13, 8)) -> tuple[list[bool], dict]:
    """Which validation documents to keep (those sharing no `n`-token span with any train document) and a
    report: documents and tokens before and after, and the span overlap before and after for `n` and for each
    length in `report_n`."""
    index = SpanIndex(train_ids, n)
    keep = [index.shared(ids)[0] == 0 for ids in val_ids]
    kept = [ids for ids, k in zip(val_ids, keep) if k]
    report = dict(span_tokens=n, val_docs=[len(val_ids), len(kept)],
                  val_tokens=[sum(len(ids) for ids in val_ids), sum(len(ids) for ids in kept)], overlap={})
    for m in dict.fromkeys((n, *report_n)):
        idx = index if m == n else SpanIndex(train_ids, m)
        report["overlap"][str(m)] = [overlap(idx, val_ids), overlap(idx, kept)]
    return keep, report


def report_line(report: dict) -> str:
    """The one line prepare_data.py prints about the deduplication."""
    (d0, d1), (t0, t1) = report["val_docs"], report["val_tokens"]
    spans = ", ".join(f"{m}-token {a:.2%} -> {b:.2%}" for m, (a, b) in report["overlap"].items())
    return (f"dedup: val docs {d0} -> {d1} (text tokens {t0:,} -> {t1:,}), dropped those sharing a "
            f"{report['span_tokens']}-token span with train; val span overlap with train: {spans}")
