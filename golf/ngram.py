"""A count-based n-gram language model over the training stream, for the n-gram teacher (DISTILL_TEACHER=ngram,
golf.teachers.NgramTeacher, a thin wrapper that imports this module; the signal it returns is a
golf.signals.CountDist):
counted inside the timed budget, queried inside the step (record track).

Exact contexts (`CountModel`). Per order k = 1..ORDER, the distinct k-grams that occurred are kept as sorted
int64 keys (the k tokens in base V, the next token least significant) with their counts, built with
torch.unique on the device and looked up with torch.searchsorted; the contexts (k-gram keys // V) are a
sorted array beside them with their totals. A context never counted is found missing, so its order is skipped
(the model backs off); nothing is shared between contexts. Keys are exact while V^ORDER < 2^63 (ORDER 6 at
V = 1024 is 60 bits); a larger V^ORDER is refused (`StreamNgram.open`): no fingerprints, no false matches.
Memory grows with the distinct n-grams: at most `BYTES_PER_NGRAM` bytes each (keys, counts, discounted
numerators, last tokens, and the context arrays, a context having at least one n-gram), plus the (V + 1 + B, V) float32
shared rows. NGRAM_MAX_MB caps that bound: counting stops at the last chunk (2^20 positions in the build, a
micro-batch online) whose counts fit, so the model is always that of a prefix [0, counted) of the stream; the
stop is printed once (`ngram:max_mb_reached`) and no later position is counted.

Smoothing (NGRAM_SMOOTHING, Chen & Goodman 1998), interpolated down to the uniform P_0 = 1/V, for a context
h (k-1 tokens) with counts a(h, w):
    P_k(w | h) = num(a(h, w)) / den(h) + gamma(h) P_{k-1}(w | h'),   gamma(h) = gnum(h) / den(h),
and P_k = P_{k-1} where den(h) = 0 (context unseen, or missing from the row, see below).
  mkn (default): num(a) = a - D(a), D(a) = D1, D2, D3+ for a = 1, 2, >= 3 (0 for a = 0), den = sum_w a,
       gnum = D1 N1(h) + D2 N2(h) + D3 N3+(h). The discounts of each order from its counts-of-counts n1..n4:
       Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3 = 3 - 4Y n4/n3 (x/0 read as 0), clamped
       to [0.1, i] (only tiny data leaves the formula's range; 0.1 keeps gamma > 0 so every prob is > 0).
  kn:  one D = n1 / (n1 + 2 n2) per order (clamped to [0.1, 1]) for every count; gnum = D * followers(h).
  wb:  Witten-Bell: num(a) = a, den = sum_w a + followers(h), gnum = followers(h).
mkn and kn use continuation counts below the top order: a_k(x) for k < ORDER is the number of distinct
(k+1)-grams ending in x (the top order, and every order of wb, uses the raw counts).

Leave-one-out (NGRAM_LEAVE_ONE_OUT=1) is exact: a counted position's own occurrence is removed from every
quantity its prediction uses. At order k it lowers a(h, y) by delta_k: 1 for a raw count, and for a
continuation count 1 only if the (k+1)-gram of the position's whole stream context had raw count 1 (the
position was its only occurrence); den, the followers and N1/N2/N3+ of h follow from a(h, y) and a(h, y) -
delta_k. The discounts D stay those of the full counts (docs/decisions.md: one occurrence moves n1..n4 by at
most one in ~10^5, and per-position discounts would change every order's numerators at every position).

The distribution as a golf.signals.CountDist (p = sparse + rho * rows[row_of] + beta * rows[-1]), never N x V:
  sparse, ragged: per position, first its target's entry (the leave-one-out corrections of every order at the
    target), then one entry per follower of its order-3 context (ORDER >= 3), ascending by id, carrying the
    numerators of orders 3..ORDER (a longer context's followers follow its order-3 suffix too: each k-gram's
    place among them is precomputed, `suffix_slot`). The entries per position are read on the host from the
    batch's tokens and a host copy of the order-3 follower counts (`_entries`), so the query's shapes need no
    read from the device; a position that lacks the order (a row's first, or its only occurrence left out)
    keeps its entries at weight 0. Per position 1 + 22 entries on average over the demo stream at 737k
    tokens, against 223 for a width padded to the most followers of any order-3 context.
  rows[prev]: the bigram's discounted part num_2(a(prev, .)) normalised, shared by every position after the
    token prev (rho = its weight there); rows[V]: uniform; rows[V + 1 + b]: for a bigram b = (prev, y) counted
    once whose removal changes the unigram's gamma, that bigram row mixed with uniform in the ratio the
    removal makes (only there does the uniform need its own weight beside both shared parts).
  rows[-1]: the order-1 model P_1 of the full counts (continuation unigram mixed with uniform), beta its weight.

A query searches each order's keys once (the k-grams ending at each place of the micro-batch's tokens): a
position's order-k context is the (k-1)-gram ending at it, so its index comes from the order below's search
(`context_of`), except the contexts of the first counted event (the stream's start, whose context is the
stream's end) while the end is not counted (`orphans`, at most one per order).
On the CPU the query is golf/count.c's (golf.native; the `_native` methods): the same lookups, each k-gram searched
among its context's followers rather than all of the order's keys, then one pass per position for the weights
and one for the sparse part, with the torch form's float32 arithmetic, so the CountDist is the same bit for bit
(tests/test_ngram.py); 0.2x the torch form's time at order 5 on the demo (docs/performance.md). The torch form
runs on CUDA, and on a CPU without a C compiler or with GOLF_NATIVE=0.

The stream: the train shards in order, cyclic, exactly as the loader reads them (golf.data.TokenStream).
Position g is the event (the tokens up to stream position g as context, the token at g + 1 as target); the
loader's x at g has that target as its y. Counting reads the stream from the shards, with cyclic contexts; a
query reads the micro-batch's tokens from the shards too (on the host: the tokens the loader read, and the
ORDER-2 before them), but uses only the contexts inside each row, so the first k-2 positions of a row have no
order-k context and are predicted by the orders they have (1 position in 2048 at TRAIN_SEQ_LEN=2048, order 3;
what the student sees of the row is all the teacher uses). Leave-one-out uses the whole stream context.

What is counted: the stream's positions [0, F). The first fetch of the timed run counts [0,
NGRAM_PREPASS_TOKENS) (the "prepass"; `reset` drops the counts before the timed run and the first fetch after
it builds them inside the first timed step, after the Clock started, so the cost is in train_time); with
NGRAM_ONLINE=1 each fetch, after computing its signal, advances F to the end of the stream the loader has read
for the micro-batch (every rank's span: a position is counted once its target has been read), so the next
micro-batch sees them. F never passes the stream's end: after the loader wraps, every position is counted
once. Every rank reads the same shards and counts the same positions, so all ranks hold the same counts
without any communication. Validation shards are never opened.

Device work: the build (and each online merge) runs torch.unique and reads sizes on the host, so it waits for
the device once per chunk (and copies the order-3 follower counts to the host); a query is searchsorted/gather
work whose shapes come from the host's tokens, with no read from the device.

A resumed run (CHECKPOINT_EVERY) sees exactly the counts the interrupted run had: the teacher's resumable
state carries (counted, read_upto), and the first build after the resume counts [0, counted).
"""
import ctypes
import dataclasses
import functools
import os
import time
import types

import numpy as np
import torch

from golf import native
from golf.config import Config
from golf.data import Batch, grad_accum_steps, tokens_read_per_batch
from golf.errors import GolfError
from golf.shards import load_shard, read_header
from golf.signals import CountDist

SMOOTHINGS = ("mkn", "kn", "wb")
_SENTINEL = torch.iinfo(torch.int64).max  # ends every sorted key array: a lookup never runs past it
_COUNT_CHUNK = 1 << 20  # positions counted per merge in the build: bounds its temporary memory
# Bytes per distinct n-gram, an upper bound: key, raw count, model count, last token, slot among its order-3
# suffix's followers (int64), numerator (float32) = 44; at most one context per n-gram: key, total, first
# follower, follower count (int64), gnum (float32) = 36; its index as a context of the order above (int64) = 8.
BYTES_PER_NGRAM = 88
_MIN_DISCOUNT = 0.1


def bound_bytes(distinct: list[int], vocab_size: int) -> int:
    """The memory bound NGRAM_MAX_MB caps: BYTES_PER_NGRAM per distinct n-gram of each order, plus the shared
    float32 rows (at most 4V + 2: the V bigram rows, uniform, at most 3 leave-one-out rows per token, as only a
    token with at most 3 distinct predecessors (mkn; 1 for kn, 1 occurrence for wb) has them, and the order-1
    model)."""
    return BYTES_PER_NGRAM * sum(distinct) + 4 * (4 * vocab_size + 2) * vocab_size


def check_settings(cfg: Config):
    """The NGRAM_* settings on their own (NgramTeacher.check_settings calls this); those that depend on the run (key width,
    data, memory) are checked by StreamNgram.open."""
    if "NGRAM_TABLE_BITS" in os.environ:
        raise GolfError("NGRAM_TABLE_BITS is gone: the n-gram counts are keyed by the exact context now; unset it "
                        "(NGRAM_MAX_MB caps their memory)")
    if cfg.ngram_smoothing not in SMOOTHINGS:
        raise GolfError(f"NGRAM_SMOOTHING={cfg.ngram_smoothing!r}: use mkn (modified Kneser-Ney), kn (Kneser-Ney) "
                        "or wb (Witten-Bell)")
    if cfg.ngram_max_mb <= 0:
        raise GolfError(f"NGRAM_MAX_MB={cfg.ngram_max_mb}: use a positive number of MiB for the n-gram counts")


def context_and_gram_keys(windows: torch.Tensor, targets: torch.Tensor, order: int, vocab_size: int):
    """Per order k = 1..order: (context keys, k-gram keys), int64 (m,), for contexts `windows` (m, order-1), the
    last column the most recent token: the context is the last k-1 tokens in base V (0 for k = 1), the k-gram
    that context then the target."""
    h = torch.zeros_like(targets)
    out = []
    for k in range(1, order + 1):
        if k > 1:
            h = h + windows[:, order - k] * vocab_size ** (k - 2)
        out.append((h, h * vocab_size + targets))
    return out


def _find(sorted_keys: torch.Tensor, keys: torch.Tensor):
    """(found, index) of `keys` in a sentinel-ended sorted array (index valid, its entry any, where not found)."""
    i = torch.searchsorted(sorted_keys, keys)
    return sorted_keys.index_select(0, i) == keys, i


def _tables(orders: list, name: str):
    """The addresses of each order's table `name` as a C array for golf/count.c (NULL where an order has none)."""
    return (ctypes.c_void_p * len(orders))(*(None if getattr(o, name) is None else getattr(o, name).data_ptr()
                                             for o in orders))


def _discounts(a: torch.Tensor, smoothing: str) -> list[float]:
    """[0, D1, D2, D3+] of one order from its counts-of-counts (module docstring)."""
    n1, n2, n3, n4 = (float((a == i).sum()) for i in (1, 2, 3, 4))

    def div(x, y):
        return x / y if y else 0.0
    y = div(n1, n1 + 2 * n2)
    if smoothing == "kn":
        return [0.0] + [min(max(y, _MIN_DISCOUNT), 1.0)] * 3
    d = [1 - 2 * y * div(n2, n1), 2 - 3 * y * div(n3, n2), 3 - 4 * y * div(n4, n3)]
    return [0.0] + [min(max(x, _MIN_DISCOUNT), i + 1.0) for i, x in enumerate(d)]


@dataclasses.dataclass
class _Order:
    """One order's counts: sorted distinct k-gram keys with their raw and model counts and numerators, and the
    sorted distinct contexts with den, gnum, first follower and follower count (all ended by a sentinel)."""
    keys: torch.Tensor
    raw: torch.Tensor
    a: torch.Tensor = None
    num: torch.Tensor = None
    last_token: torch.Tensor = None  # each k-gram's last token (keys % V)
    ctx: torch.Tensor = None
    den: torch.Tensor = None
    gnum: torch.Tensor = None
    start: torch.Tensor = None
    followers: torch.Tensor = None
    dtab: torch.Tensor = None  # [0, D1, D2, D3+] (mkn, kn)
    discounts: tuple = ()
    context_of: torch.Tensor = None  # order >= 2: each (k-1)-gram's index among these contexts (else the sentinel's)
    orphans: torch.Tensor = None  # order >= 2: the contexts that are no (k-1)-gram (at most one: see _derive_maps)
    orphan_index: torch.Tensor = None  # their indices among the contexts
    suffix_slot: torch.Tensor = None  # order >= 4: each k-gram's place among the followers of its order-3 suffix


@dataclasses.dataclass
class _Terms:
    """One order's quantities at a batch of positions (see CountModel._terms)."""
    ctx_index: torch.Tensor
    den: torch.Tensor
    gnum: torch.Tensor
    den_out: torch.Tensor  # after leaving the occurrence out
    gnum_change: torch.Tensor  # gnum after minus gnum before
    num: torch.Tensor  # num(a(h, y))
    num_out: torch.Tensor  # num(a(h, y) - delta)
    delta: torch.Tensor

    def select(self, mask: torch.Tensor) -> "_Terms":
        return _Terms(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))


class CountModel:
    """Exact n-gram counts of orders 1..`order` over `vocab_size` tokens on `device`, smoothed by `smoothing`
    (module docstring). `add` merges events; `derive` (after the adds) makes what a query reads; `query` gives a
    batch's distributions as a golf.signals.CountDist."""

    def __init__(self, order: int, vocab_size: int, smoothing: str, device):
        self.order, self.vocab_size, self.smoothing, self.device = order, vocab_size, smoothing, device
        empty = torch.full((1,), _SENTINEL, dtype=torch.int64, device=device)
        self.orders = [_Order(empty, torch.zeros(1, dtype=torch.int64, device=device)) for _ in range(order)]
        self.derive()

    def distinct(self) -> list[int]:
        """Distinct k-grams per order k = 1..order."""
        return [len(o.keys) - 1 for o in self.orders]

    def bound_bytes(self) -> int:
        return bound_bytes(self.distinct(), self.vocab_size)

    def nbytes(self) -> int:
        """Bytes the tensors hold now (each storage once)."""
        seen = {}
        for t in [self.rows, self.bigram_keys] + [
                x for o in self.orders for x in dataclasses.astuple(o) if isinstance(x, torch.Tensor)]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    def add(self, windows: torch.Tensor, targets: torch.Tensor):
        """Merge the events (contexts `windows` (m, order-1), next tokens `targets` (m,)) into every order's raw
        counts (derive afterwards)."""
        for o, (_, keys) in zip(self.orders, context_and_gram_keys(windows, targets, self.order, self.vocab_size)):
            merged, inverse = torch.unique(torch.cat([o.keys[:-1], keys]), return_inverse=True)
            raw = torch.zeros(len(merged) + 1, dtype=torch.int64, device=self.device)
            raw.index_add_(0, inverse, torch.cat([o.raw[:-1], torch.ones_like(keys)]))
            o.keys, o.raw = torch.cat([merged, o.keys[-1:]]), raw

    def _num(self, o: _Order, a: torch.Tensor) -> torch.Tensor:
        if self.smoothing == "wb":
            return a.double()
        return a.double() - o.dtab.index_select(0, a.clamp(max=3))

    def derive(self):
        """Model counts, discounts, numerators, context arrays and the shared parts from the raw counts."""
        v, dev = self.vocab_size, self.device
        for k, o in enumerate(self.orders, start=1):
            if self.smoothing == "wb" or k == self.order:
                o.a = o.raw
            else:  # continuation counts: distinct (k+1)-grams ending in each k-gram
                longer = self.orders[k].keys[:-1]
                o.a = torch.zeros_like(o.raw).index_add_(0, torch.searchsorted(o.keys, longer % v ** k),
                                                         torch.ones_like(longer))
            real = o.a[:-1]
            o.discounts = tuple(_discounts(real, self.smoothing)) if self.smoothing != "wb" else ()
            o.dtab = torch.tensor(o.discounts or [0.0] * 4, dtype=torch.float64, device=dev)
            o.num = self._num(o, o.a).float()
            o.last_token = o.keys % v
            ctx, inverse, followers = torch.unique_consecutive(o.keys[:-1] // v, return_inverse=True,
                                                               return_counts=True)
            total = torch.zeros(len(ctx), dtype=torch.int64, device=dev).index_add_(0, inverse, real)
            if self.smoothing == "wb":
                den, gnum = total + followers, followers.double()
            else:
                den = total
                gnum = torch.zeros(len(ctx), dtype=torch.float64, device=dev)
                gnum.index_add_(0, inverse, o.dtab.index_select(0, real.clamp(max=3)))
            zero = torch.zeros(1, dtype=torch.int64, device=dev)
            o.ctx = torch.cat([ctx, o.keys[-1:]])
            o.den = torch.cat([den, zero])
            o.gnum = torch.cat([gnum.float(), zero.float()])
            o.start = torch.cat([torch.cumsum(followers, 0) - followers, zero + len(real)])
            o.followers = torch.cat([followers, zero])
        self._derive_maps()
        self._derive_shared()

    def _derive_maps(self):
        """What lets a query find every order from one search per order (`query`): each order's contexts by the
        (k-1)-gram index of the order below, and each k-gram's slot in the sparse part (k >= 4: its last token's
        place among the followers of its order-3 suffix); and, on the host, the order-3 contexts' follower counts
        that size the sparse part (`_entries`)."""
        v = self.vocab_size
        for k in range(2, self.order + 1):
            o, below = self.orders[k - 1], self.orders[k - 2].keys
            # The (k-1)-gram ending at position g is counted with the event g - 1: every context is a (k-1)-gram
            # but those of the first counted event (the stream's start, its context the stream's end) while the
            # end is not counted. Those few "orphans" are found apart.
            j = torch.searchsorted(below, o.ctx)
            found = below[j] == o.ctx  # the sentinels too
            index = torch.arange(len(o.ctx), device=o.ctx.device)
            o.context_of = torch.full_like(below, len(o.ctx) - 1)
            o.context_of[j[found]] = index[found]
            o.orphans = torch.cat([o.ctx[~found], o.ctx[-1:]])
            o.orphan_index = torch.cat([index[~found], index[-1:]])
        if self.order >= 3:
            o3 = self.orders[2]
            # an order-3 gram's slot is its place among its context's followers; a longer gram's, its suffix's
            grams = len(o3.keys) - 1
            slot = torch.arange(grams + 1, device=o3.keys.device)
            slot[:-1] -= torch.repeat_interleave(o3.start[:-1], o3.followers[:-1], output_size=grams)
            for k in range(4, self.order + 1):
                o, below = self.orders[k - 1], self.orders[k - 2]
                o.suffix_slot = slot = slot[torch.searchsorted(below.keys, o.keys % v ** (k - 1))]  # sentinel's: any
            # a host copy only on CUDA (derive already waits for the device); on CPU the same memory
            self.host_followers3 = (o3.ctx.cpu().numpy(), o3.followers.cpu().numpy())

    def _terms(self, k: int, ci: torch.Tensor, found: torch.Tensor, gi: torch.Tensor, delta: torch.Tensor) -> _Terms:
        """Order k's quantities at positions whose context has index `ci` among the order's contexts (the
        sentinel's where unseen: den = 0) and whose k-gram has index `gi` among its keys where `found`, `delta`
        (m,) occurrences of it left out (module docstring)."""
        o = self.orders[k - 1]
        den, gnum = o.den.index_select(0, ci), o.gnum.index_select(0, ci)
        a = torch.where(found, o.a.index_select(0, gi), 0)
        a_out = a - delta
        if self.smoothing == "wb":
            lost = ((a > 0) & (a_out == 0)).long()
            den_out, change = den - delta - lost, -lost.float()
        else:
            den_out = den - delta
            change = (o.dtab.index_select(0, a_out.clamp(max=3)) - o.dtab.index_select(0, a.clamp(max=3))).float()
        return _Terms(ci, den, gnum, den_out, change, self._num(o, a).float(), self._num(o, a_out).float(), delta)

    def _terms_of(self, k: int, h: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> _Terms:
        """_terms for contexts `h` and targets `y` (m,) given as keys."""
        o = self.orders[k - 1]
        seen, ci = _find(o.ctx, h)
        found, gi = _find(o.keys, h * self.vocab_size + y)
        return self._terms(k, torch.where(seen, ci, len(o.ctx) - 1), found, gi, delta)

    def _derive_shared(self):
        """shared = P_1 of the full counts; rows = [bigram numerators by previous token (uniform where unseen),
        uniform, the leave-one-out rows of singleton bigrams that change the unigram's gamma]."""
        v, dev = self.vocab_size, self.device
        uniform = torch.full((v,), 1.0 / v, dtype=torch.float64, device=dev)
        o1, o2 = self.orders[0], self.orders[1]
        p1 = uniform.clone()
        if o1.den[0] > 0:
            p1 = (o1.gnum[0].double() / o1.den[0]) * uniform
            p1[o1.keys[:-1]] += o1.num[:-1].double() / o1.den[0]
        bigram = uniform.repeat(v, 1)
        prev, w = o2.keys[:-1] // v, o2.keys[:-1] % v
        kept = o2.den - o2.gnum.double()  # the numerators' sum per context
        ci = torch.searchsorted(o2.ctx, prev)
        bigram[o2.ctx[:-1][kept[:-1] > 0]] = 0.0
        ok = kept[ci] > 0
        bigram[prev[ok], w[ok]] = o2.num[:-1][ok].double() / kept[ci[ok]]
        # Leave-one-out rows: bigrams counted once (delta 1 at orders 1 and 2, see `query`).
        once = o2.keys[:-1][o2.raw[:-1] == 1]
        ones = torch.ones_like(once)
        t1 = self._terms_of(1, torch.zeros_like(once), once % v, ones)
        t2 = self._terms_of(2, once // v, once % v, ones)
        need = (t1.gnum_change != 0) & (t1.den_out > 0) & (t2.den_out > 0)
        t1, t2, once = t1.select(need), t2.select(need), once[need]
        a_part = (t2.den - t2.gnum.double()) / t2.den_out
        u_part = ((t2.gnum.double() + t2.gnum_change.double()) / t2.den_out) * t1.gnum_change.double() / t1.den_out
        mixed = (a_part[:, None] * bigram[once // v] + u_part[:, None] * uniform) / (a_part + u_part)[:, None]
        self.bigram_keys = torch.cat([once, torch.full((1,), _SENTINEL, dtype=torch.int64, device=dev)])
        self.rows = torch.cat([bigram, uniform[None], mixed, p1[None]]).float()
        self.max_followers = [int(o.followers.max()) for o in self.orders]  # of any context, per order (logged)

    def _entries(self, seq: torch.Tensor) -> torch.Tensor:
        """Host int64 (m,): the sparse part's entries per position of the host token sequence `seq` (as `query`'s):
        the target's, and one per follower of the order-3 context (ORDER >= 3); at least what the query fills
        (a position without that order, or whose only occurrence is left out, leaves its followers' entries 0).
        Read on the host from the tokens, so the query's shapes need no read from the device."""
        m = len(seq) - (self.order - 1)
        if self.order < 3:
            return torch.ones(m, dtype=torch.int64)
        tokens = seq.numpy()
        n, (ctx, followers) = self.order, self.host_followers3
        keys = tokens[n - 3:n - 3 + m] * self.vocab_size + tokens[n - 2:n - 2 + m]
        i = np.searchsorted(ctx, keys)
        return torch.from_numpy(1 + np.where(ctx[i] == keys, followers[i], 0))

    def query(self, seq: torch.Tensor, available: torch.Tensor, leave_out: torch.Tensor) -> CountDist:
        """The distributions at m positions as a golf.signals.CountDist. seq: host int64 (m + order - 1,) tokens,
        position i's context seq[i : i + order - 1] (its whole stream context when it is left out) and its target
        seq[i + order - 1]. available (m, order) bool: whether position i has an order-k context (column k-1; a
        row's first positions lack the longer ones). leave_out (m,) bool: position i was counted and its own
        occurrence is taken out (module docstring). No host read of the device: the sparse part's size comes from
        the host tokens (`_entries`)."""
        n, v, dev = self.order, self.vocab_size, self.device
        m = len(seq) - (n - 1)
        kernels = native.library("count.c") if dev.type == "cpu" else None  # golf/count.c: the same CountDist
        if kernels:  # the device is the host: the entries per position from the lookups' order-3 contexts
            lookups = self._lookups_native(kernels, seq, m, leave_out)
            entries = (1 + self.orders[2].followers.index_select(0, lookups[0][2, 1:]) if n >= 3
                       else torch.ones(m, dtype=torch.int64))
            size = int(entries.sum())
        else:
            entries = self._entries(seq)
            size = int(entries.sum())
            seq, entries = _to_device(seq, dev), _to_device(entries, dev)
            lookups = self._lookups(seq, m, leave_out)
        y, prev = seq[n - 1:], seq[n - 2:n - 2 + m]
        bigram = torch.searchsorted(self.bigram_keys, prev * v + y)  # the leave-one-out row of (prev, y), if any
        if kernels:
            p_target, correction, spans, row_of, rho, beta = self._weights_native(kernels, lookups, available, prev,
                                                                                  bigram)
            ids, weight, entry_row = self._fill_native(kernels, entries, size, y, correction, spans)
        else:
            p_target, correction, spans, row_of, rho, beta = self._weights(lookups, available, prev, bigram)
            ids, weight, entry_row = self._fill(entries, size, y, correction, spans)
        return CountDist(ids=ids, weight=weight, entry_row=entry_row, rows=self.rows, row_of=row_of, rho=rho,
                         beta=beta, target_logprob=p_target.log())

    def _lookups(self, seq, m: int, leave_out):
        """Per order k, at the m positions: (context index, k-gram found, k-gram index, occurrences left out), (m,)
        each. One search per order: the k-grams ending at the m + 1 places s = 0..m, the tokens seq[s + n - 2]
        (place 0 ends position 0's context): the k-gram ending at place s + 1 is position s's order-k gram, the
        one ending at place s its order-(k+1) context, whose index among the contexts comes from the search of
        the order below (context_of), or the orphans."""
        n, v, dev = self.order, self.vocab_size, seq.device
        out = leave_out.long()
        windows = torch.nn.functional.pad(seq, (1, 0)).unfold(0, n, 1)  # (m + 1, n): seq[s - 1 : s + n - 1]
        key, keys, grams = torch.zeros(m + 1, dtype=torch.int64, device=dev), [], []
        for k in range(1, n + 1):
            key = key + windows[:, n - k] * v ** (k - 1)  # place 0 of the top order reads the pad: never used
            keys.append(key)
            grams.append(_find(self.orders[k - 1].keys, key))
        lookups = []
        for k in range(1, n + 1):
            o = self.orders[k - 1]
            if k == 1:  # the empty context: index 0 (the sentinel's when nothing is counted)
                ci = torch.zeros(m, dtype=torch.int64, device=dev)
            else:
                found_below, below = grams[k - 2]
                orphan, j = _find(o.orphans, keys[k - 2][:-1])
                ci = torch.where(found_below[:-1], o.context_of.index_select(0, below[:-1]),
                                 torch.where(orphan, o.orphan_index.index_select(0, j), len(o.ctx) - 1))
            if self.smoothing == "wb" or k == n:
                delta = out
            else:  # a continuation count drops only if the whole-context (k+1)-gram was counted once
                found_above, above = grams[k]
                delta = out * (found_above[1:] & (self.orders[k].raw.index_select(0, above[1:]) == 1))
            lookups.append((ci, grams[k - 1][0][1:], grams[k - 1][1][1:], delta))
        return lookups

    def _lookups_native(self, kernels, seq, m: int, leave_out):
        """`_lookups` by golf/count.c's count_lookups (CPU), by place: (ci, found, index, delta) as (order, m + 1)
        tensors, position i in column i + 1, for `_weights_native`. From place 1 on, a k-gram is searched among
        the followers of its context (a few cache lines), not all the order's keys; the same lookups, and the same
        k-gram index where found (the sentinel's where not: it is read only where found)."""
        n = self.order
        keys, index, ci, delta = (torch.zeros(n, m + 1, dtype=torch.int64) for _ in range(4))
        found = torch.zeros(n, m + 1, dtype=torch.bool)

        def sizes(name):
            return torch.tensor([0 if getattr(o, name) is None else len(getattr(o, name)) for o in self.orders])
        n_keys, n_ctx, n_orphans = sizes("keys"), sizes("ctx"), sizes("orphans")
        seq, leave_out = seq.contiguous(), leave_out.contiguous()
        tables = functools.partial(_tables, self.orders)
        kernels.count_lookups(m, n, self.vocab_size, int(self.smoothing == "wb"), seq.data_ptr(), leave_out.data_ptr(),
                              tables("keys"), n_keys.data_ptr(), tables("raw"), n_ctx.data_ptr(), tables("start"),
                              tables("followers"), tables("context_of"), tables("orphans"), n_orphans.data_ptr(),
                              tables("orphan_index"), keys.data_ptr(), found.data_ptr(), index.data_ptr(),
                              ci.data_ptr(), delta.data_ptr())
        return ci, found, index, delta

    def _weights(self, lookups, available, prev, bigram):
        """The per-position part of `query` from its lookups: (p_target, the target entry's weight `correction`,
        spans, row_of, rho, beta). spans: per order k >= 3 (rows of (ORDER - 2, m) tensors) and position, where
        its context's followers start among the k-grams, how many of them it fills (its followers, which are
        among order 3's: the minimum only guards that), and the weight of their numerators."""
        n, v, m = self.order, self.vocab_size, len(prev)
        terms = [self._terms(k, *lookup) for k, lookup in enumerate(lookups, start=1)]
        use = [available[:, k - 1] & (t.den_out > 0) for k, t in enumerate(terms, start=1)]
        # g[k-1]: the weight of order k's own part, the product of the gammas of the orders above it
        g, above = [None] * n, torch.ones(m, dtype=torch.float32, device=prev.device)
        for k in range(n, 0, -1):
            t = terms[k - 1]
            g[k - 1] = above
            gamma = (t.gnum + t.gnum_change) / t.den_out.clamp_min(1)
            above = above * torch.where(use[k - 1], gamma, 1.0)
        p_target = above / v
        for k in range(1, n + 1):
            t = terms[k - 1]
            p_target = p_target + torch.where(use[k - 1], g[k - 1] * t.num_out / t.den_out.clamp_min(1), 0.0)
        correction = torch.zeros(m, dtype=torch.float32, device=prev.device)
        for k in range(1, n + 1):
            t = terms[k - 1]
            correction += torch.where(use[k - 1], g[k - 1] * (t.num_out - t.num) / t.den_out.clamp_min(1), 0.0)
        per_order, limit = [], None
        for k in range(3, n + 1):
            o, t = self.orders[k - 1], terms[k - 1]
            count = o.followers.index_select(0, t.ctx_index) * use[k - 1]
            limit = count if k == 3 else torch.minimum(count, limit)
            per_order.append((o.start.index_select(0, t.ctx_index), limit,
                              g[k - 1] / t.den_out.clamp_min(1) * use[k - 1]))
        spans = tuple(torch.stack(x) for x in zip(*per_order)) if per_order else None

        # The shared parts: the bigram row (or its leave-one-out mix with uniform), P_1, and uniform.
        t1, t2 = terms[0], terms[1]
        rho2 = torch.where(use[1], g[1] * (t2.den - t2.gnum) / t2.den_out.clamp_min(1), 0.0)
        beta = torch.where(use[0], g[0] * t1.den / t1.den_out.clamp_min(1), 0.0)
        rest = torch.where(use[0], g[0] * t1.gnum_change / t1.den_out.clamp_min(1), g[0])  # uniform's own weight
        mixed = (rho2 != 0) & (rest != 0)
        row_of = torch.where(mixed, v + 1 + bigram, torch.where(rho2 != 0, prev, v))
        rho = torch.where(rho2 != 0, rho2 + torch.where(mixed, rest, 0.0), rest)
        return p_target, correction, spans, row_of, rho, beta

    def _weights_native(self, kernels, lookups, available, prev, bigram):
        """`_weights` by golf/count.c's count_terms (CPU) from `_lookups_native`'s lookups: one pass over the
        positions, the same float32 arithmetic."""
        n, m = self.order, len(prev)
        ci, found, gi, delta = lookups
        p_target, correction, rho, beta = (torch.empty(m, dtype=torch.float32) for _ in range(4))
        row_of = torch.empty(m, dtype=torch.int64)
        spans = (torch.empty(n - 2, m, dtype=torch.int64), torch.empty(n - 2, m, dtype=torch.int64),
                 torch.empty(n - 2, m, dtype=torch.float32)) if n >= 3 else None

        prev, bigram, available = prev.contiguous(), bigram.contiguous(), available.contiguous()
        code = kernels.count_terms(
            m, n, self.vocab_size, int(self.smoothing == "wb"), *(_tables(self.orders, name) for name in (
                "den", "gnum", "a", "followers", "start", "dtab")), ci.data_ptr(), found.data_ptr(),
            gi.data_ptr(), delta.data_ptr(), available.data_ptr(), prev.data_ptr(), bigram.data_ptr(),
            p_target.data_ptr(), correction.data_ptr(), *((t.data_ptr() for t in spans) if spans else (0, 0, 0)),
            row_of.data_ptr(), rho.data_ptr(), beta.data_ptr())
        if code:
            raise RuntimeError("golf/count.c count_terms: a count left out exceeds the count (broken n-gram tables)")
        return p_target, correction, spans, row_of, rho, beta

    def _fill(self, entries, size: int, y, correction, spans):
        """The sparse part (ids, weight, entry_row) of `query`: per position its target's entry (id y, weight
        `correction`: the leave-one-out corrections of every order), then one entry per follower of its order-3
        context in ascending id, which carries order 3's numerator and every longer order's (the longer contexts'
        followers are among them: each at its precomputed slot, suffix_slot). spans: per order k >= 3, per
        position (first follower among the k-grams, followers filled, weight of the numerators)."""
        dev = entries.device
        entry_row = torch.repeat_interleave(entries, output_size=size)
        first = torch.cumsum(entries, 0) - entries  # the target's entry
        first_e = first.index_select(0, entry_row)
        slot = torch.arange(size, device=dev) - first_e - 1  # -1: the target's entry
        follower = slot >= 0
        weight = torch.zeros(size, dtype=torch.float32, device=dev)
        ids = None
        # On the entries, masks multiply (torch.where and masked_fill are ~6x slower on the CPU) and gathers are
        # index_select (several times faster than indexing with a tensor); a masked-out entry reads any valid
        # index and adds 0.
        for k, (start, limit, scale) in enumerate(zip(*spans) if spans else (), start=3):
            o = self.orders[k - 1]
            real = follower & (slot < limit.index_select(0, entry_row))
            at = (start.index_select(0, entry_row) + slot).clamp_(0, len(o.keys) - 1)
            part = o.num.index_select(0, at).mul_(scale.index_select(0, entry_row)).mul_(real)
            if k == 3:
                ids, weight = o.last_token.index_select(0, at), part
            else:
                weight.index_add_(0, (first_e + 1 + o.suffix_slot.index_select(0, at)).clamp_(0, size - 1), part)
        if ids is None:
            ids = y  # one entry per position
        else:
            ids[first] = y
        weight[first] = correction
        return ids, weight, entry_row

    def _fill_native(self, kernels, entries, size: int, y, correction, spans):
        """`_fill` by golf/count.c's count_fill (CPU): one pass over the positions, the same float32 arithmetic."""
        m = len(entries)
        ids, entry_row = (torch.empty(size, dtype=torch.int64) for _ in range(2))
        weight = torch.empty(size, dtype=torch.float32)
        first = torch.cumsum(entries, 0) - entries
        start, limit, scale = spans if spans else (torch.zeros(0),) * 3
        orders = self.orders[2:]  # order 3 has no suffix slots: its followers' places are the slots
        last3 = self.orders[2].last_token if orders else y
        y, correction = y.contiguous(), correction.contiguous()
        code = kernels.count_fill(m, len(orders), first.data_ptr(), entries.data_ptr(), y.data_ptr(),
                                  correction.data_ptr(), start.data_ptr(), limit.data_ptr(), scale.data_ptr(),
                                  last3.data_ptr(), len(last3) - 1, _tables(orders, "num"),
                                  _tables(orders, "suffix_slot"), ids.data_ptr(), weight.data_ptr(),
                                  entry_row.data_ptr())
        if code:
            raise RuntimeError("golf/count.c count_fill: a longer order's follower is not among its order-3 "
                               "context's (broken n-gram tables)")
        return ids, weight, entry_row

def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device: on CUDA pinned and asynchronous (the step does not wait for the device)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host


class TrainStream:
    """The train shards as the loader's cyclic stream, addressed by linear position (for counting)."""

    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        self.sizes = [read_header(p) for p in self.paths]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.total = int(self.starts[-1])
        self._shards: dict[int, np.ndarray] = {}

    def position(self, shard: int, offset: int) -> int:
        return int(self.starts[shard]) + offset

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens at the cyclic positions [a, b) (a may be negative, b past the end), int64."""
        parts, g = [], a
        while g < b:
            w = g % self.total
            s = int(np.searchsorted(self.starts, w, side="right")) - 1
            n = min(b - g, int(self.starts[s + 1]) - w)
            if s not in self._shards:
                self._shards[s] = load_shard(self.paths[s])
            off = w - int(self.starts[s])
            parts.append(np.asarray(self._shards[s][off:off + n], dtype=np.int64))
            g += n
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _available_bytes(device: torch.device) -> int:
    """Free device memory: CUDA's free bytes, or the kernel's MemAvailable (free plus reclaimable cache)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


class StreamNgram:
    """The n-gram model of the training stream as a run uses it: built (prepass) by `build`, queried for a batch
    by `signal` (which then counts what the loader has read, with NGRAM_ONLINE), dropped by `reset`.
    golf.teachers.NgramTeacher is the teacher around it."""

    def __init__(self, cfg: Config, stream: TrainStream, device: torch.device, rank: int, world_size: int):
        self.order, self.vocab_size, self.smoothing = cfg.ngram_order, cfg.vocab_size, cfg.ngram_smoothing
        self.max_bytes = int(cfg.ngram_max_mb * 2**20)
        self.online, self.leave_one_out = cfg.ngram_online, cfg.ngram_leave_one_out
        self.prepass = stream.total if cfg.ngram_prepass_tokens < 0 else cfg.ngram_prepass_tokens  # -1: all of it
        self.stream, self.device, self.rank = stream, device, rank
        accum = grad_accum_steps(cfg, world_size)
        self.chunk = tokens_read_per_batch(cfg.train_batch_tokens, cfg.train_seq_len, accum, world_size)
        self.span = self.chunk // world_size  # a rank's inputs plus its last target
        self.counts: CountModel | None = None
        self.counted = 0  # positions [0, counted) of the stream are in the counts
        self.read_upto = 0  # unwrapped stream position the loader has read up to (all ranks' spans)
        self.capped = False  # NGRAM_MAX_MB was reached: nothing more is counted
        self.resumed: dict | None = None  # (counted, read_upto) of an interrupted run, for the next build
        self.build_ms = 0.0  # the last build's time (prepass counted)

    @classmethod
    def open(cls, cfg: Config, run) -> "StreamNgram":
        """The model for the run (golf.runner.Run), refusing an order whose keys would not fit int64, a prepass
        past the train data or a memory cap the device does not have free."""
        if not cfg.ngram_prepass_tokens and not cfg.ngram_online:
            raise GolfError("NGRAM_PREPASS_TOKENS=0 with NGRAM_ONLINE=0 counts nothing (the teacher would be uniform); "
                            "set NGRAM_PREPASS_TOKENS=N or NGRAM_ONLINE=1")
        if cfg.vocab_size ** cfg.ngram_order >= 1 << 63:
            raise GolfError(f"NGRAM_ORDER={cfg.ngram_order} with VOCAB_SIZE={cfg.vocab_size}: an exact n-gram key needs "
                            f"VOCAB_SIZE^ORDER < 2^63; lower NGRAM_ORDER")
        stream = TrainStream(run.train_files)
        if cfg.ngram_prepass_tokens > stream.total:
            raise GolfError(f"NGRAM_PREPASS_TOKENS={cfg.ngram_prepass_tokens} is more than the {stream.total} tokens of "
                            f"the {len(stream.paths)} train shards; set NGRAM_PREPASS_TOKENS<={stream.total}")
        model = cls(cfg, stream, run.ctx.device, run.ctx.rank, run.ctx.world_size)
        # The counts never exceed the bound of every countable position being a new n-gram of every order.
        need = min(model.max_bytes, bound_bytes([model.countable] * cfg.ngram_order, cfg.vocab_size))
        have = _available_bytes(run.ctx.device)
        if need > have:
            raise GolfError(f"NGRAM_MAX_MB={cfg.ngram_max_mb:g}: the n-gram counts may need {need / 2**20:.1f} MiB but "
                            f"{run.ctx.device} has {have / 2**20:.1f} MiB free; lower NGRAM_MAX_MB (counting stops "
                            "at a prefix of the stream once it is reached)")
        return model

    @classmethod
    def counted_on_train(cls, cfg: Config, spec: str, train_files: list[str], ctx) -> "StreamNgram":
        """The model `spec` ("ngram:ORDER") names, built outside a training run (eval_bpb.py, cache_logits.py):
        counted on the first NGRAM_PREPASS_TOKENS train tokens (0: all of them), nothing counted online."""
        kind, _, order = spec.partition(":")
        if kind != "ngram" or not order.isdigit() or int(order) < 2:
            raise GolfError(f"--teacher {spec}: use ngram:ORDER with ORDER >= 2, e.g. ngram:3")
        cfg = dataclasses.replace(cfg, ngram_order=int(order), ngram_online=False,
                                  ngram_prepass_tokens=cfg.ngram_prepass_tokens or -1)  # 0 here: all of them
        model = cls.open(cfg, types.SimpleNamespace(train_files=train_files, ctx=ctx))
        model.build()
        return model

    @property
    def countable(self) -> int:
        return self.stream.total if self.online else self.prepass

    def reset(self):
        """Drop the counts: the next `build` starts from the stream's start (or a resumed run's place)."""
        self.counts, self.counted, self.read_upto, self.capped = None, 0, 0, False

    def resume_state(self) -> dict:
        return {"counted": self.counted, "read_upto": self.read_upto}

    def _events(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(contexts (b-a, order-1), targets (b-a,)) of the stream positions [a, b), cyclic, on the device."""
        n = self.order
        tokens = _to_device(self._tokens(a, b), self.device)
        return tokens[:-1].unfold(0, n - 1, 1), tokens[n - 1:]

    def _count(self, upto: int, step: int | None = None):
        """Count the positions [self.counted, upto) of the stream, `step` at a time, stopping for good at the
        last step whose counts fit NGRAM_MAX_MB."""
        if self.capped or upto <= self.counted:
            return
        step = step or _COUNT_CHUNK
        for a in range(self.counted, upto, step):
            b = min(a + step, upto)
            before = [(o.keys, o.raw) for o in self.counts.orders]
            self.counts.add(*self._events(a, b))
            if self.counts.bound_bytes() > self.max_bytes:
                for o, (keys, raw) in zip(self.counts.orders, before):
                    o.keys, o.raw = keys, raw
                self.capped = True
                if self.rank == 0:
                    print(f"ngram:max_mb_reached NGRAM_MAX_MB={self.max_bytes / 2**20:g} counted:[0,{self.counted}) "
                          f"of [0,{upto}) distinct:{','.join(map(str, self.counts.distinct()))}: no later position "
                          "is counted", flush=True)
                break
            self.counted = b
        self.counts.derive()

    def build(self, warm_up: bool = False):
        """Count the prepass (a resumed run: what the interrupted run had counted). warm_up: count only one
        micro-batch's worth (the compile warm-up runs the query on the same code; the timed run builds the
        real counts)."""
        t0 = time.perf_counter()
        self.counts = CountModel(self.order, self.vocab_size, self.smoothing, self.device)
        upto = min(self.prepass, self.chunk) if warm_up else self.prepass
        if self.resumed is not None and not warm_up:
            upto, self.read_upto = max(upto, self.resumed["counted"]), self.resumed["read_upto"]
            self.resumed = None
        self._count(upto)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.build_ms = 1000 * (time.perf_counter() - t0)

    def positions(self, batch: Batch) -> torch.Tensor:
        """The stream position of every entry of batch.x.flatten(), on the device (made there: no copy)."""
        return torch.cat([torch.arange(n, device=self.device) + self.stream.position(s, off)
                          for s, off, n in batch.segments])

    def _available(self, rows: int, seq: int) -> torch.Tensor:
        """(rows * seq, order) bool: order k needs k-1 tokens of the row, which position j has from j = k-2 on."""
        j = torch.arange(seq, device=self.device)
        n = self.order
        return (j[:, None] >= torch.arange(n, device=self.device)[None, :] - 1).expand(rows, seq, n).reshape(-1, n)

    def _tokens(self, a: int, b: int) -> torch.Tensor:
        """Host int64 tokens of the stream positions [a - (order - 2), b + 1), cyclic: the contexts and targets of
        the positions [a, b) (a query's `seq`)."""
        return torch.from_numpy(self.stream.read(a - (self.order - 2), b + 1))

    def stream_signal(self, a: int, b: int):
        """The CountDist at the stream positions [a, b) with their whole (cyclic) contexts, each counted
        position's own event left out as in training (the logit cache of the n-gram teacher)."""
        leave_out = (torch.arange(a, b, device=self.device) < self.counted) & self.leave_one_out
        available = torch.ones(b - a, self.order, dtype=torch.bool, device=self.device)
        return self.counts.query(self._tokens(a, b), available, leave_out)

    def stream_log_probs(self, a: int, b: int) -> torch.Tensor:
        """float32 (b-a, V) log-probabilities of `stream_signal` (dense: for the logit cache's top-K)."""
        return self.stream_signal(a, b).dense_log_probs()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (rows, seq, V) log-probabilities after every position of the rows `x` (any tokens: nothing is
        left out; contexts from the row), e.g. to score the validation set."""
        rows, seq = x.shape
        n = self.order
        # the rows one after another: a context reaching into the row before is not available (_available), the
        # targets (the next token, a pad after the last) are not read when nothing is left out
        tokens = torch.nn.functional.pad(x.reshape(-1).cpu(), (n - 2, 1))
        nothing = torch.zeros(x.numel(), dtype=torch.bool, device=self.device)
        signal = self.counts.query(tokens, self._available(rows, seq), nothing)
        return signal.dense_log_probs().view(rows, seq, self.vocab_size)

    def signal(self, batch: Batch):
        """The CountDist of every position of `batch` (built counts required), each counted position's own event
        left out (NGRAM_LEAVE_ONE_OUT) with its whole stream context; then, with NGRAM_ONLINE, the micro-batch's
        stream is counted."""
        g = self.positions(batch)
        rows, seq = batch.x.shape
        # The micro-batch is one contiguous piece of the stream: its tokens, whole contexts (the ORDER-2 tokens
        # before it) and targets are read from the shards on the host, a few KB, as the loader read them.
        first = self.stream.position(*batch.segments[0][:2])
        leave_out = (g < self.counted) & self.leave_one_out
        signal = self.counts.query(self._tokens(first, first + rows * seq), self._available(rows, seq), leave_out)
        if self.online:
            self._advance(first)
        return signal

    def _advance(self, first: int):
        """Count what the loader has read for this micro-batch (every rank's span), given where this rank's
        inputs start: the chunk starts `rank` spans earlier, at the first such stream position not yet read."""
        total = self.stream.total
        start = (first - self.rank * self.span) % total
        start = self.read_upto + (start - self.read_upto) % total
        self.read_upto = start + self.chunk
        self._count(min(self.read_upto - 1, total), step=self.chunk)

    def log_line(self) -> str:
        return (f"distill:ngram order:{self.order} smoothing:{self.smoothing} max_mb:{self.max_bytes / 2**20:g} "
                f"prepass_tokens:{self.prepass} online:{int(self.online)} leave_one_out:{int(self.leave_one_out)} "
                f"train_tokens:{self.stream.total}")

    def counts_line(self) -> str:
        """What was counted (after a build): distinct n-grams per order, bytes, build time."""
        c = self.counts
        return (f"ngram:counts counted:{self.counted} distinct:{','.join(map(str, c.distinct()))} "
                f"bytes:{c.nbytes()} bound_bytes:{c.bound_bytes()} max_followers:{','.join(map(str, c.max_followers))} "
                f"build_ms:{self.build_ms:.0f}")


class NgramLM(torch.nn.Module):
    """A built `StreamNgram` as a language model for golf.eval: tokens (rows, seq) -> log-probabilities, which
    golf.eval's cross-entropy takes as logits (they are normalised). No parameters."""

    def __init__(self, ngram: StreamNgram):
        super().__init__()
        self.ngram = ngram

    def forward(self, x):
        return self.ngram.predict(x)
