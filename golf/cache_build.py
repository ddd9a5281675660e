"""Computing the logit cache: the teacher slides over the train stream and stores, for every position, its
top-K log-probabilities for the next token, or N draws from its distribution at a temperature (storage format in
golf/cache.py).

Window layout, a function of the stream position only (so any subset of shards, any rank split and any
resume computes identical rows): window 0 covers positions [0, L) and scores all of them; window k >= 1
starts at k*S and scores its last S positions [k*S + L - S, k*S + L). So position p sees p + 1 tokens of
context in the first window and L - S + 1 + ((p - L) mod S) after it: between L - S + 1 and L, L - (S - 1) / 2
on average (`teacher_context`, recorded in the manifest). S = L (the default) costs one forward per token and
gives 1 to L tokens of context, L/2 + 1/2 on average; S = L/2 doubles the teacher's work for at least L/2 + 1
everywhere after the first window. The student's rows do not line up with the teacher's windows: its sequences
start wherever the loader's spans put them (each rank's span carries one extra target token, so the phase
shifts by one token per rank and micro-batch), so its context at a position differs from the teacher's,
whatever S. The stream is the sorted train shards concatenated (no wrap: a position's output only depends on
the tokens up to it).

Draws (a sampled cache) are counter-based: draw j at offset t of shard s is the inverse CDF of
softmax(logits / T) at a uniform that hashes (the teacher's sha256, s, t, j) (`draw_uniforms`), so a row's draws
depend on its logits and that key alone: not on batches, windows per forward, ranks or resumes. Draws at N are
the first N of draws at any larger N.
"""
import queue
import threading
import time

import numpy as np
import torch
from tqdm import tqdm

from golf.cache import CacheReader, CacheWriter
from golf.dist import Ctx
from golf.shards import load_shard
from golf.topk import topk_logprobs


class StreamView:
    """Random access to the concatenated train shards by global position."""

    def __init__(self, paths: list[str]):
        self.shards = [load_shard(p) for p in paths]
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)
        self.total = int(self.starts[-1])

    def read(self, lo: int, hi: int) -> np.ndarray:
        out = []
        i = int(np.searchsorted(self.starts, lo, side="right") - 1)
        while lo < hi:
            end = min(hi, int(self.starts[i + 1]))
            out.append(self.shards[i][lo - self.starts[i]: end - self.starts[i]])
            lo, i = end, i + 1
        return np.concatenate(out) if out else np.empty(0, dtype=np.uint16)


def window_of(p: int, window: int, stride: int) -> int:
    """Index of the window that scores stream position p."""
    return 0 if p < window else (p - window) // stride + 1


def window_span(k: int, window: int, stride: int, total: int) -> tuple[int, int, int]:
    """(input start, input end, first scored position) of window k, clipped to the stream."""
    ws = k * stride
    first = 0 if k == 0 else ws + window - stride
    return ws, min(ws + window, total), first


def plan_windows(lo: int, hi: int, window: int, stride: int, total: int):
    """Windows scoring positions [lo, hi): yields (input start, input end, score from, score to)."""
    if lo >= hi:  # an empty shard needs no teacher forward
        return
    for k in range(window_of(lo, window, stride), window_of(hi - 1, window, stride) + 1):
        ws, we, first = window_span(k, window, stride, total)
        yield ws, we, max(first, lo), min(we, hi)


def teacher_context(total: int, window: int, stride: int) -> dict:
    """Tokens of context the teacher had when it scored each of the first `total` stream positions (see the module
    docstring): {"mean", "min", "min_after_first_window"}, in closed form (a full-scale stream has billions)."""
    if total <= 0:
        return {"mean": 0.0, "min": 0, "min_after_first_window": None}
    first = min(window, total)
    s = first * (first + 1) // 2  # position p < L sees p + 1 tokens
    rest, low = total - first, window - stride + 1

    def run_sum(q: int) -> int:  # contexts low, low + 1, ..., low + q - 1
        return q * low + q * (q - 1) // 2

    s += (rest // stride) * run_sum(stride) + run_sum(rest % stride)
    return {"mean": s / total, "min": 1, "min_after_first_window": low if rest > 0 else None}


def default_batch_windows(window: int, device: torch.device) -> int:
    """Windows per teacher forward (cache_logits.py and the benchmarks): ~64k tokens on CUDA; ~4k on CPU, where
    the batch's activations stay in cache: 1.5-1.7x the forward tokens/s of 64k-token batches for the 4x256
    demo teacher (bench/cache_write.py --batch-windows 256 against the default) and ~1 GB less memory."""
    tokens = 65536 if device.type == "cuda" else 4096
    return max(1, tokens // window)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 of int64 tensors of uint32 values, in 16-bit halves (no int64 overflow)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x):
    """murmur3's 32-bit finaliser (a bijection with full avalanche) on int64 tensors (or ints) of uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B) if isinstance(x, torch.Tensor) else (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35) if isinstance(x, torch.Tensor) else (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def draw_key(teacher_sha256: str, shard_index: int) -> int:
    """The 32-bit hash of (teacher, shard) that every draw of the shard's rows starts from."""
    sha = bytes.fromhex(teacher_sha256[:16].ljust(16, "0"))
    h = 0
    for word in (int.from_bytes(sha[:4], "little"), int.from_bytes(sha[4:], "little"), shard_index):
        h = _mix32(h ^ (word & _MASK32))
    return h


def draw_uniforms(key: int, offsets: torch.Tensor, draws: int) -> torch.Tensor:
    """Uniforms in [0, 1) float64 (..., N) for the rows at shard offsets `offsets` (...): 53 bits per draw, from
    two hashes of (key, offset, 2j) and (key, offset, 2j + 1)."""
    row = _mix32((offsets.long() & _MASK32) ^ key)
    words = torch.arange(2 * draws, device=offsets.device)
    h = _mix32(_mix32(row[..., None] ^ words) ^ words)  # twice: adjacent counters differ in one low bit
    hi, lo = h[..., 0::2] >> 5, h[..., 1::2] >> 6  # 27 + 26 bits
    return (hi * (1 << 26) + lo).double() * 2.0**-53


_SAMPLE_ELEMENTS = 1 << 25  # float64 probabilities per chunk of rows (256 MB)


def sample_rows(logits: torch.Tensor, offsets: torch.Tensor, draws: int, temperature: float, key: int):
    """N draws from softmax(logits / T) per row (..., V), keyed by the rows' shard offsets (...), as the Sampled
    rows (ids (..., N), counts uint8 (..., N)): distinct ids, most drawn first (ties by lower id), padding
    (id 0, count 0) last. Ids are int16 unless the vocabulary has ids >= 2**15. Inverse CDF in float64."""
    v = logits.shape[-1]
    flat, off = logits.reshape(-1, v), offsets.reshape(-1)
    ids = torch.empty(len(flat), draws, dtype=torch.int64, device=logits.device)
    step = max(1, _SAMPLE_ELEMENTS // v)
    for a in range(0, len(flat), step):
        cdf = torch.softmax(flat[a:a + step].double() / temperature, dim=-1).cumsum_(-1)
        u = draw_uniforms(key, off[a:a + step], draws) * cdf[:, -1:]
        ids[a:a + step] = torch.searchsorted(cdf, u, right=True).clamp_(max=v - 1)
    # Distinct ids and their counts: sort, number the runs, count each run.
    ids = ids.sort(-1).values
    run = torch.cat([torch.zeros_like(ids[:, :1]), (ids[:, 1:] != ids[:, :-1]).long()], -1).cumsum(-1)
    counts = torch.zeros_like(ids).scatter_add_(-1, run, torch.ones_like(ids))
    distinct = torch.zeros_like(ids).scatter_(-1, run, ids)
    order = torch.where(counts > 0, (draws - counts) * v + distinct, (draws + 1) * v).sort(dim=-1, stable=True).indices
    distinct, counts = distinct.gather(-1, order), counts.gather(-1, order)
    shape = (*logits.shape[:-1], draws)
    return (distinct.to(torch.int16 if v <= 1 << 15 else torch.int32).view(shape), counts.to(torch.uint8).view(shape))


@torch.no_grad()
def teacher_samples(model, x: torch.Tensor, offsets: torch.Tensor, draws: int, temperature: float, key: int, ctx: Ctx):
    """x (B, L), its positions' shard offsets (B, L) -> the Sampled rows (ids (B, L, N), counts (B, L, N)) of
    N draws per position from the teacher at `temperature` (`sample_rows`), on the device."""
    with ctx.autocast():
        logits = model(x)
    return sample_rows(logits, offsets, draws, temperature, key)


def teacher_rows(spec, shard_index: int):
    """What a cache of `spec` stores of the teacher's windows of shard `shard_index`:
    fn(model, x (B, L), offsets (B, L), ctx) -> (ids, values) (B, L, K) on the device."""
    if spec.sampled:
        key = draw_key(spec.teacher_sha256, shard_index)
        return lambda model, x, offsets, ctx: teacher_samples(model, x, offsets, spec.k, spec.temperature, key, ctx)
    return lambda model, x, offsets, ctx: teacher_topk(model, x, spec.k, ctx)


@torch.no_grad()
def teacher_topk(model, x: torch.Tensor, k: int, ctx: Ctx):
    """x (B, L) -> (top-K ids (B, L, K), log-probs fp16 (B, L, K)) on the device, sorted descending.

    Ids are int16 (half the device-to-host traffic of int32) unless the vocabulary has ids >= 2**15."""
    with ctx.autocast():
        logits = model(x)
    vals, idx = topk_logprobs(torch.log_softmax(logits, dim=-1, dtype=torch.float32), k)
    return idx.to(torch.int16 if logits.shape[-1] <= 1 << 15 else torch.int32), vals.to(torch.float16)


def _batches(plan, batch_windows: int):
    """Group consecutive windows of the same shape (length, scored slice) into batches."""
    batch, sig = [], None
    for ws, we, a, b in plan:
        s = (we - ws, a - ws, b - ws)
        if batch and (s != sig or len(batch) == batch_windows):
            yield batch
            batch = []
        batch.append((ws, we, a, b))
        sig = s
    if batch:
        yield batch


def compute_shard(model, stream: StreamView, shard_index: int, window: int, stride: int, rows_of, ctx: Ctx,
                  batch_windows: int, sink, fixed_shape: bool = False):
    """Run the teacher over the windows that score shard `shard_index`; `rows_of` (`teacher_rows`) makes the rows
    from them; `sink(row_start, idx, vals, done, n)` gets the rows in order (host tensors, valid once the CUDA
    event `done` has completed; n = rows).
    Device work for batch i+1 is queued before batch i's rows are handed over, so the device-to-host copy
    and the disk write overlap the next forward pass. `fixed_shape` pads every batch to
    (batch_windows, window), so a compiled teacher sees one shape (else each shard's last, smaller batch
    recompiles it)."""
    lo, hi = int(stream.starts[shard_index]), int(stream.starts[shard_index + 1])
    pending = None
    for batch in _batches(plan_windows(lo, hi, window, stride, stream.total), batch_windows):
        ws0, we0, a0, b0 = batch[0]
        length = we0 - ws0
        x = torch.from_numpy(np.stack([stream.read(ws, we) for ws, we, _, _ in batch]).astype(np.int64))
        x = x.to(ctx.device, non_blocking=True)
        # Only the stream's last window is short: padding it to the teacher's length is invisible (causal).
        # Padded windows (fixed_shape) are computed and dropped.
        pad_rows = batch_windows - len(batch) if fixed_shape else 0
        if length < window or pad_rows:
            x = torch.nn.functional.pad(x, (0, window - length, 0, pad_rows))
        starts = torch.tensor([ws - lo for ws, _, _, _ in batch] + [0] * pad_rows, device=ctx.device)
        idx, vals = rows_of(model, x, starts[:, None] + torch.arange(window, device=ctx.device), ctx)
        rows = (slice(0, len(batch)), slice(a0 - ws0, b0 - ws0))
        idx, vals = idx[rows].flatten(0, 1), vals[rows].flatten(0, 1)
        if ctx.device.type == "cuda":
            idx, vals = idx.to("cpu", non_blocking=True), vals.to("cpu", non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            done = None
        if pending is not None:
            sink(*pending)
        pending = (a0 - lo, idx, vals, done, len(batch) * (b0 - a0))
    if pending is not None:
        sink(*pending)


class AsyncShardSink:
    """Writes computed rows into a ShardWriter from a background thread (a bounded queue keeps memory flat)."""

    def __init__(self, shard_writer, bar=None):
        self.sw, self.bar = shard_writer, bar
        self.q = queue.Queue(maxsize=4)
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue
            try:
                row, idx, vals, done, n = item
                if done is not None:
                    done.synchronize()
                self.sw.write(row, idx.numpy(), vals.numpy())
                if self.bar is not None:
                    self.bar.update(n)
            except BaseException as e:  # surfaced in close()
                self.error = e

    def __call__(self, row, idx, vals, done, n):
        if self.error is not None:
            raise self.error
        self.q.put((row, idx, vals, done, n))

    def close(self):
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def build_cache(model, writer: CacheWriter, shard_paths: list[str], pending: list[int], ctx: Ctx,
                batch_windows: int, fixed_shape: bool = False) -> dict:
    """Compute this rank's share (pending[rank::world]) of the pending shards; returns throughput figures.
    Every rank must pass the same `pending` list (computed before any rank starts writing).
    `fixed_shape`: see compute_shard (for a compiled teacher)."""
    spec = writer.spec
    stream = StreamView(shard_paths)
    mine = pending[ctx.rank::ctx.world_size]
    positions = sum(len(stream.shards[i]) for i in mine)
    t0 = time.perf_counter()
    with tqdm(total=positions, unit="tok", unit_scale=True, desc=f"cache[rank {ctx.rank}]", disable=None,
              position=ctx.rank) as bar:
        for i in mine:
            with writer.open_shard(i) as sw:
                sink = AsyncShardSink(sw, bar)
                try:
                    compute_shard(model, stream, i, spec.window, spec.stride, teacher_rows(spec, i), ctx,
                                  batch_windows, sink, fixed_shape)
                finally:
                    sink.close()
                sw.commit()
    ctx.sync()
    seconds = time.perf_counter() - t0
    return {"shards": len(mine), "positions": positions, "seconds": seconds,
            "tokens_per_s": positions / seconds if seconds > 0 else float("nan")}


@torch.no_grad()
def build_ngram_cache(ngram, writer: CacheWriter, pending: list[int], ctx: Ctx, chunk: int = 1 << 14) -> dict:
    """The n-gram teacher's rows (golf.ngram.StreamNgram, built) for this rank's share of the pending shards,
    `chunk` positions at a time: each position's whole context, its own occurrence left out as in training.
    The shards are a prefix of the stream the n-gram counted, so their positions are its positions."""
    spec = writer.spec
    mine = pending[ctx.rank::ctx.world_size]
    starts = ngram.stream.starts
    positions = sum(int(starts[i + 1] - starts[i]) for i in mine)
    id_dtype = torch.int16 if spec.vocab_size <= 1 << 15 else torch.int32
    t0 = time.perf_counter()
    for i in mine:
        lo, hi = int(starts[i]), int(starts[i + 1])
        with writer.open_shard(i) as sw:
            for a in range(lo, hi, chunk):
                vals, idx = topk_logprobs(ngram.stream_log_probs(a, min(a + chunk, hi)), spec.k)
                sw.write(a - lo, idx.to(id_dtype).cpu().numpy(), vals.to(torch.float16).cpu().numpy())
            sw.commit()
    seconds = time.perf_counter() - t0
    return {"shards": len(mine), "positions": positions, "seconds": seconds,
            "tokens_per_s": positions / seconds if seconds > 0 else float("nan")}


@torch.no_grad()
def verify_cache(model, cache_dir: str, shard_paths: list[str], n: int, ctx: Ctx, seed: int = 0,
                 tie: float = 1e-2) -> dict:
    """Recompute `n` cached rows (uniform over positions) with the teacher, one window at a time.

    Returns the largest |cached - recomputed| top-K log-prob (0 where the recomputation is bit-exact, up to
    the packed encoding's error otherwise) and the number of rows whose ids are not a top-K of the
    recomputed distribution: an id at rank j is accepted if its recomputed log-prob is within `tie` of the
    recomputed j-th largest one (so swaps between near-equal values are ties, not errors). For a sampled cache:
    the number of rows whose draws differ from the recomputed ones ("draw_mismatches"; a draw can only move
    where a uniform falls within the forward's float noise of a CDF step)."""
    reader = CacheReader(cache_dir, shard_paths)
    spec = reader.spec
    stream = StreamView(shard_paths[:reader.num_shards])
    rng = np.random.default_rng(seed)
    worst, id_mismatch = 0.0, 0
    for _ in tqdm(range(n), desc="verify", disable=None):
        p = int(rng.integers(stream.total))
        shard = int(np.searchsorted(stream.starts, p, side="right") - 1)
        ws, we, _ = window_span(window_of(p, spec.window, spec.stride), spec.window, spec.stride, stream.total)
        x = torch.from_numpy(stream.read(ws, we).astype(np.int64))[None].to(ctx.device)
        x = torch.nn.functional.pad(x, (0, spec.window - (we - ws)))  # the shape the builder ran
        with ctx.autocast():
            logits = model(x)
        offset = p - int(stream.starts[shard])
        if spec.sampled:
            ids, counts = sample_rows(logits[0, p - ws], torch.tensor(offset, device=ctx.device), spec.k,
                                      spec.temperature, draw_key(spec.teacher_sha256, shard))
            c_ids, c_counts = reader.gather_sampled([(shard, offset, 1)])
            m = c_ids.shape[1]
            id_mismatch += not (np.array_equal(ids[:m].cpu().numpy(), c_ids[0]) and
                                np.array_equal(counts[:m].cpu().numpy(), c_counts[0]) and not counts[m:].any())
            continue
        logp = torch.log_softmax(logits[0, p - ws].float(), dim=-1)
        vals = logp.topk(spec.k, sorted=True).values.cpu().numpy()
        logp = logp.cpu().numpy()
        c_idx, c_vals = reader.gather([(shard, offset, 1)])
        worst = max(worst, float(np.abs(c_vals[0] - vals.astype(np.float16)).max()))
        if len(set(c_idx[0].tolist())) < spec.k or np.abs(logp[c_idx[0]] - vals).max() > tie:
            id_mismatch += 1
    if spec.sampled:
        return {"rows": n, "draw_mismatches": id_mismatch}
    return {"rows": n, "max_abs_logprob_diff": worst, "id_mismatches": id_mismatch}
