"""A count-based n-gram language model over the training stream, for the n-gram teacher (DISTILL_TEACHER=ngram,
golf.teachers.NgramTeacher, a thin wrapper: this module does not import golf.teachers, which registers it):
counted inside the timed budget, queried inside the step (record track).

Smoothing: interpolated Witten-Bell, down to a uniform floor,
    P_0(w) = 1 / V,   P_k(w | h) = (c(h, w) + d(h) P_{k-1}(w | h')) / (c(h) + d(h))   (P_k = P_{k-1} if c(h) = 0)
with h the last k-1 tokens, h' its last k-2, c(h) = sum_w c(h, w) and d(h) the number of distinct followers of
h. Chosen over Kneser-Ney because leave-one-out is exact and cheap: removing one occurrence of (h, w) changes
only c(h, w), c(h) and, if c(h, w) drops to 0, d(h), three scalars per position and order; Kneser-Ney's lower
orders hold continuation counts (and modified KN counts-of-counts) that one removal changes elsewhere. No
probability is 0: every order mixes in the one below, and the last one the uniform floor.

Tables (`NgramCounts`): one dense (rows, V) count table per order on the run's device. A context of k-1 tokens
is its exact mixed-radix id when V^(k-1) <= 2^NGRAM_TABLE_BITS (the unigram's one row, the bigram's V rows at
the default), else a bucket of a polynomial hash mod 2^31 - 1 (2^NGRAM_TABLE_BITS rows); contexts sharing a
bucket share its counts. Each row's c(h) and d(h) are kept beside the table; a query gathers each position's
row per order (n x V int32, a few row gathers per order for a micro-batch) and mixes it into the order below.
Cells are int32, or int64 when the run could count 2^31 positions. Cost per order and hashed bucket count:
V x 4 bytes (4 KiB at V = 1024): 256 MiB per hashed order at 2^16 buckets.

The stream: the train shards in order, cyclic, exactly as the loader reads them (golf.data.TokenStream).
Position g is the event (the tokens up to stream position g as context, the token at g + 1 as target); the
loader's x at g has that target as its y. Counting reads the stream from the shards, with cyclic contexts; a
query reads its contexts from the batch's rows, so the first k-2 positions of a row have no order-k context
and are predicted by the orders they have (0.1% of positions at TRAIN_SEQ_LEN=2048, order 3; the cost of
not fetching tokens from before the row).

What is counted: the stream's positions [0, F). The first fetch of the timed run counts [0,
NGRAM_PREPASS_TOKENS) (the "prepass"; `reset` drops the tables before the timed run and the first fetch
after it builds them inside the first timed step, after the Clock started, so the cost is in train_time); with
NGRAM_ONLINE=1 each fetch, after computing its signal, advances F to the end of the stream the loader has read
for the micro-batch (every rank's span: a position is counted once its target has been read), so the next
micro-batch sees them. F never passes the stream's end: after the loader wraps, every position is counted
once. Every rank reads the same shards and counts the same positions, so all ranks hold the same counts
without any communication. Validation shards are never opened.

A resumed run (CHECKPOINT_EVERY) rebuilds the same counts: its first fetch counts every position before the
loader's restored place, as the interrupted run had (unless its loader had wrapped: then all were counted).

Leave-one-out (NGRAM_LEAVE_ONE_OUT=1): a queried position g < F was counted, so its own (h, w) occurrence is
taken out of every order (its cell, c(h), and d(h) if the cell drops to 0) before its distribution is
computed: the teacher predicts the token from the rest of the data, not from its own memorised count. With 0
it is not (an ablation).
"""
import dataclasses
import time
import types

import numpy as np
import torch

from golf.config import Config
from golf.data import Batch, grad_accum_steps, local_tokens, tokens_read_per_batch
from golf.errors import GolfError
from golf.shards import load_shard, read_header

_HASH_PRIME = (1 << 31) - 1  # contexts hash to a polynomial mod this prime: every product stays below 2^62
_HASH_BASE = 1_000_003
_COUNT_CHUNK = 1 << 20  # positions counted per pass: bounds the build's temporary memory
_QUERY_BUFFERS = 3  # (n, V) 4-byte buffers a query holds at once: p, an order's gathered counts, their float copy


def table_rows(k: int, vocab_size: int, table_bits: int) -> int:
    """Rows of the order-k table: every context of k-1 tokens exactly, or the hash buckets when that is more."""
    exact = vocab_size ** (k - 1)
    return exact if exact <= 1 << table_bits else 1 << table_bits


def table_bytes(order: int, vocab_size: int, table_bits: int, wide: bool) -> int:
    return sum(table_rows(k, vocab_size, table_bits) for k in range(1, order + 1)) * vocab_size * (8 if wide else 4)


def context_rows(windows: torch.Tensor, order: int, vocab_size: int, table_bits: int) -> list[torch.Tensor]:
    """Each order's table row for contexts `windows` (..., order-1), int64, the last column the most recent token:
    row 0 for the unigram, then the exact id or the hash bucket of the last k-1 tokens (see `table_rows`)."""
    v = vocab_size
    exact = torch.zeros(windows.shape[:-1], dtype=torch.int64, device=windows.device)
    hashed = torch.zeros_like(exact)
    out = [exact.clone()]
    for k in range(2, order + 1):
        tok = windows[..., order - k]  # the token k-2 places before the current one
        exact = exact + tok * v ** (k - 2)
        hashed = (hashed * _HASH_BASE + tok + 1) % _HASH_PRIME
        rows = table_rows(k, v, table_bits)
        out.append(exact if rows == v ** (k - 1) else hashed & (rows - 1))
    return out


class NgramCounts:
    """Count tables of orders 1..`order` over `vocab_size` tokens on `device`, and the Witten-Bell query.

    Besides each (rows, V) table, every row's total c(h) and distinct-follower count d(h) are kept up to date
    by `add`, so a query reads them as scalars instead of reducing each gathered (n, V) row: per order it makes
    two passes over (n, V) (the gather, a fused scale and multiply-add); the unigram, whose row is shared, one."""

    def __init__(self, order: int, vocab_size: int, table_bits: int, device, wide: bool = False):
        self.order, self.vocab_size, self.table_bits, self.device = order, vocab_size, table_bits, device
        dtype = torch.int64 if wide else torch.int32
        self.rows = [table_rows(k, vocab_size, table_bits) for k in range(1, order + 1)]
        self.tables = [torch.zeros(r, vocab_size, dtype=dtype, device=device) for r in self.rows]
        self.totals = [torch.zeros(r, dtype=torch.int64, device=device) for r in self.rows]
        self.distinct = [torch.zeros(r, dtype=torch.int64, device=device) for r in self.rows]

    def context_rows(self, windows: torch.Tensor) -> list[torch.Tensor]:
        return context_rows(windows, self.order, self.vocab_size, self.table_bits)

    def add(self, windows: torch.Tensor, targets: torch.Tensor):
        """Count the events (context `windows` (m, order-1), next token `targets` (m,)) in every order."""
        v = self.vocab_size
        for table, totals, distinct, rows in zip(self.tables, self.totals, self.distinct, self.context_rows(windows)):
            # Sorted rather than torch.unique, whose data-dependent size would make a CUDA step wait for the
            # device: a cell gains a follower if it was 0 before and this is its first event here.
            cells = (rows * v + targets).sort().values
            flat = table.view(-1)
            new = (flat[cells] == 0) & torch.cat([cells.new_ones(1, dtype=torch.bool), cells[1:] != cells[:-1]])
            flat.index_put_((cells,), torch.ones_like(cells, dtype=flat.dtype), accumulate=True)
            totals.index_add_(0, rows, torch.ones_like(rows))
            distinct.index_add_(0, cells // v, new.long())

    def log_probs(self, windows: torch.Tensor, available: torch.Tensor, targets: torch.Tensor,
                  leave_out: torch.Tensor) -> torch.Tensor:
        """float32 (m, V) log-probabilities of the next token after contexts `windows` (m, order-1).

        available (m, order) bool: whether position i has an order-k context (column k-1; a row's first
        positions lack the longer ones). leave_out (m,) bool: the event (context, targets[i]) is taken out of
        every order's counts first (position i was counted): its cell, the row's total, and the row's distinct
        count if that cell drops to 0.

        Per order, with a = 1 / (c(h) + d(h)) and b = d(h) a where the context has counts (else a = 0, b = 1):
        p <- b p + a c(h, .), c(h, .) the gathered row, with a left-out position's own cell one less."""
        m, v = windows.shape[0], self.vocab_size
        p = torch.full((m, v), 1.0 / v, dtype=torch.float32, device=self.device)
        out = leave_out.long()
        at_targets = torch.arange(m, device=self.device) * v + targets
        for k, (table, totals, distinct, rows) in enumerate(zip(self.tables, self.totals, self.distinct,
                                                                 self.context_rows(windows))):
            own = table.view(-1)[rows * v + targets].long() - out  # the cell after leaving out
            total = totals[rows] - out
            kinds = distinct[rows] - (out * (own == 0))
            use = (total > 0) & available[:, k]
            a = torch.where(use, 1.0 / (total + kinds).clamp_min(1), 0.0).float()
            b = torch.where(use, kinds * a, 1.0).float()
            p_target = p.view(-1)[at_targets]
            # The unigram's one row is broadcast, not gathered: every position has the same context.
            p.mul_(b[:, None]).addcmul_(table if k == 0 else table[rows], a[:, None])
            # A left-out position's target cell is recomputed from its own count (subtracting a afterwards would
            # cancel catastrophically in float32 where b p is much smaller than a).
            p.view(-1)[at_targets] = torch.where(leave_out, b * p_target + a * own, p.view(-1)[at_targets])
        return p.log_()


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
    """The n-gram model of the training stream as a run uses it: built (tables, prepass) by `build`, queried for
    a batch by `log_probs` (which then counts what the loader has read, with NGRAM_ONLINE), dropped by `reset`.
    golf.teachers.NgramTeacher is the teacher around it."""

    def __init__(self, cfg: Config, stream: TrainStream, device: torch.device, rank: int, world_size: int):
        self.order, self.vocab_size, self.table_bits = cfg.ngram_order, cfg.vocab_size, cfg.ngram_table_bits
        self.online, self.leave_one_out = cfg.ngram_online, cfg.ngram_leave_one_out
        self.prepass = stream.total if cfg.ngram_prepass_tokens < 0 else cfg.ngram_prepass_tokens  # -1: all of it
        self.stream, self.device, self.rank = stream, device, rank
        accum = grad_accum_steps(cfg, world_size)
        self.chunk = tokens_read_per_batch(cfg.train_batch_tokens, cfg.train_seq_len, accum, world_size)
        self.span = self.chunk // world_size  # a rank's inputs plus its last target
        # Past 2^31 countable positions one cell could overflow int32 (the unigram's most frequent token first).
        self.wide = (stream.total if self.online else self.prepass) >= 1 << 31
        self.counts: NgramCounts | None = None
        self.counted = 0  # positions [0, counted) of the stream are in the counts
        self.read_upto = 0  # unwrapped stream position the loader has read up to (all ranks' spans)
        self.build_ms = 0.0  # the last build's time (tables allocated, prepass counted)

    @classmethod
    def open(cls, cfg: Config, run) -> "StreamNgram":
        """The model for the run (golf.runner.Run), refusing a prepass past the train data or tables that do
        not fit the device's free memory."""
        if not cfg.ngram_prepass_tokens and not cfg.ngram_online:
            raise GolfError("NGRAM_PREPASS_TOKENS=0 with NGRAM_ONLINE=0 counts nothing (the teacher would be uniform); "
                            "set NGRAM_PREPASS_TOKENS=N or NGRAM_ONLINE=1")
        stream = TrainStream(run.train_files)
        if cfg.ngram_prepass_tokens > stream.total:
            raise GolfError(f"NGRAM_PREPASS_TOKENS={cfg.ngram_prepass_tokens} is more than the {stream.total} tokens of "
                            f"the {len(stream.paths)} train shards; set NGRAM_PREPASS_TOKENS<={stream.total}")
        model = cls(cfg, stream, run.ctx.device, run.ctx.rank, run.ctx.world_size)
        local = local_tokens(cfg.train_batch_tokens, cfg.train_seq_len, grad_accum_steps(cfg, run.ctx.world_size),
                             run.ctx.world_size)
        tables = model.table_bytes
        need = tables + _QUERY_BUFFERS * 4 * local * cfg.vocab_size
        have = _available_bytes(run.ctx.device)
        if need > have:
            raise GolfError(f"NGRAM_ORDER={cfg.ngram_order} NGRAM_TABLE_BITS={cfg.ngram_table_bits}: the n-gram tables "
                            f"({tables / 2**20:.0f} MiB) and a micro-batch's query ({(need - tables) / 2**20:.0f} MiB) "
                            f"need more than the {have / 2**20:.0f} MiB free on {run.ctx.device}; lower "
                            "NGRAM_TABLE_BITS or NGRAM_ORDER")
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
    def table_bytes(self) -> int:
        return table_bytes(self.order, self.vocab_size, self.table_bits, self.wide)

    def reset(self):
        """Drop the tables: the next `build` starts from the stream's start."""
        self.counts, self.counted, self.read_upto = None, 0, 0

    def _events(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(contexts (b-a, order-1), targets (b-a,)) of the stream positions [a, b), cyclic, on the device."""
        n = self.order
        tokens = torch.from_numpy(self.stream.read(a - (n - 2), b + 1))
        if self.device.type == "cuda":  # pinned and asynchronous: the step does not wait for the device here
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        return tokens[:-1].unfold(0, n - 1, 1), tokens[n - 1:]

    def _count(self, upto: int):
        """Count the positions [self.counted, upto) of the stream."""
        for a in range(self.counted, upto, _COUNT_CHUNK):
            self.counts.add(*self._events(a, min(a + _COUNT_CHUNK, upto)))
        self.counted = max(self.counted, upto)

    def stream_log_probs(self, a: int, b: int) -> torch.Tensor:
        """float32 (b-a, V) log-probabilities at the stream positions [a, b) with their whole (cyclic) contexts,
        each counted position's own event left out as in training (the logit cache of the n-gram teacher)."""
        windows, targets = self._events(a, b)
        leave_out = (torch.arange(a, b, device=self.device) < self.counted) & self.leave_one_out
        available = torch.ones(b - a, self.order, dtype=torch.bool, device=self.device)
        return self.counts.log_probs(windows, available, targets, leave_out)

    def build(self, warm_up: bool = False):
        """Allocate the tables and count the prepass. warm_up: count only one micro-batch's worth (the compile
        warm-up runs the query on the same code; the timed run builds the real tables)."""
        t0 = time.perf_counter()
        self.counts = NgramCounts(self.order, self.vocab_size, self.table_bits, self.device, self.wide)
        self._count(min(self.prepass, self.chunk) if warm_up else self.prepass)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.build_ms = 1000 * (time.perf_counter() - t0)

    def positions(self, batch: Batch) -> torch.Tensor:
        """The stream position of every entry of batch.x.flatten(), on the device (made there: no copy)."""
        return torch.cat([torch.arange(n, device=self.device) + self.stream.position(s, off)
                          for s, off, n in batch.segments])

    def _query(self, x: torch.Tensor, y: torch.Tensor, leave_out: torch.Tensor) -> torch.Tensor:
        """float32 (rows, seq, V) log-probabilities after each position of the rows `x`, with contexts from the row
        (truncated at its start); `leave_out` (rows * seq,) bool: positions whose event (context, y) is taken out."""
        rows, seq = x.shape
        n = self.order
        windows = torch.nn.functional.pad(x, (n - 2, 0)).unfold(1, n - 1, 1).reshape(-1, n - 1)
        # Order k needs k-1 tokens of the row: position j of a row has them from j = k-2 on.
        j = torch.arange(seq, device=self.device)
        available = (j[:, None] >= torch.arange(n, device=self.device)[None, :] - 1).expand(rows, seq, n).reshape(-1, n)
        return self.counts.log_probs(windows, available, y.reshape(-1), leave_out).view(rows, seq, self.vocab_size)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities after every position of the rows `x` (any tokens: nothing is left out), e.g. to score
        the validation set."""
        x = x.to(self.device)
        return self._query(x, torch.zeros_like(x), torch.zeros(x.numel(), dtype=torch.bool, device=self.device))

    def log_probs(self, batch: Batch) -> torch.Tensor:
        """float32 (rows, seq, V) log-probabilities of every position of `batch` (built tables required), each
        counted position's own event left out (NGRAM_LEAVE_ONE_OUT); then, with NGRAM_ONLINE, the micro-batch's
        stream is counted."""
        leave_out = (self.positions(batch) < self.counted) & self.leave_one_out
        logp = self._query(batch.x.to(self.device), batch.y.to(self.device), leave_out)
        if self.online:
            self._advance(self.stream.position(*batch.segments[0][:2]))
        return logp

    def _advance(self, first: int):
        """Count what the loader has read for this micro-batch (every rank's span), given where this rank's
        inputs start: the chunk starts `rank` spans earlier, at the first such stream position not yet read."""
        total = self.stream.total
        start = (first - self.rank * self.span) % total
        start = self.read_upto + (start - self.read_upto) % total
        self.read_upto = start + self.chunk
        self._count(min(self.read_upto - 1, total))

    def log_line(self) -> str:
        return (f"distill:ngram order:{self.order} table_bits:{self.table_bits} tables:{self.table_bytes / 2**20:.0f}MiB "
                f"prepass_tokens:{self.prepass} online:{int(self.online)} leave_one_out:{int(self.leave_one_out)} "
                f"smoothing:witten-bell train_tokens:{self.stream.total}")


class NgramLM(torch.nn.Module):
    """A built `StreamNgram` as a language model for golf.eval: tokens (rows, seq) -> log-probabilities, which
    golf.eval's cross-entropy takes as logits (they are normalised). No parameters."""

    def __init__(self, ngram: StreamNgram):
        super().__init__()
        self.ngram = ngram

    def forward(self, x):
        return self.ngram.predict(x)
