"""Computing the logit cache: the teacher slides over the train stream and stores, for every position, its
top-K log-probabilities for the next token (storage format in golf/cache.py).

Window layout, a function of the stream position only (so any subset of shards, any rank split and any
resume computes identical rows): window 0 covers positions [0, L) and scores all of them; window k >= 1
starts at k*S and scores its last S positions [k*S + L - S, k*S + L). So every position after the first
window is scored with at least L - S tokens of context; S = L (the default) gives the contexts a student row
sees, S = L/2 doubles the teacher's work for at least L/2 context everywhere. The stream is the sorted train
shards concatenated (no wrap: a position's output only depends on the tokens up to it).
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
    for k in range(window_of(lo, window, stride), window_of(hi - 1, window, stride) + 1):
        ws, we, first = window_span(k, window, stride, total)
        yield ws, we, max(first, lo), min(we, hi)


@torch.no_grad()
def teacher_topk(model, x: torch.Tensor, k: int, ctx: Ctx):
    """x (B, L) -> (top-K ids int16 (B, L, K), log-probs fp16 (B, L, K)) on the device, sorted descending."""
    with ctx.autocast():
        logits = model(x)
    vals, idx = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1, sorted=True)
    return idx.to(torch.int16), vals.to(torch.float16)


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


def compute_shard(model, stream: StreamView, shard_index: int, window: int, stride: int, k: int, ctx: Ctx,
                  batch_windows: int, sink):
    """Run the teacher over the windows that score shard `shard_index`; `sink(row_start, idx, vals)` gets
    numpy rows in order. Device work for batch i+1 is queued before batch i's rows are handed over, so the
    device-to-host copy and the disk write overlap the next forward pass."""
    lo, hi = int(stream.starts[shard_index]), int(stream.starts[shard_index + 1])
    pending = None
    for batch in _batches(plan_windows(lo, hi, window, stride, stream.total), batch_windows):
        ws0, we0, a0, b0 = batch[0]
        length = we0 - ws0
        x = torch.from_numpy(np.stack([stream.read(ws, we) for ws, we, _, _ in batch]).astype(np.int64))
        x = x.to(ctx.device, non_blocking=True)
        if length < window:  # only the stream's last window: pad to the teacher's length (causal: invisible)
            x = torch.nn.functional.pad(x, (0, window - length))
        idx, vals = teacher_topk(model, x, k, ctx)
        idx, vals = idx[:, a0 - ws0: b0 - ws0].flatten(0, 1), vals[:, a0 - ws0: b0 - ws0].flatten(0, 1)
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
                batch_windows: int) -> dict:
    """Compute this rank's share (pending[rank::world]) of the pending shards; returns throughput figures.
    Every rank must pass the same `pending` list (computed before any rank starts writing)."""
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
                    compute_shard(model, stream, i, spec.window, spec.stride, spec.k, ctx, batch_windows, sink)
                finally:
                    sink.close()
                sw.commit()
    ctx.sync()
    seconds = time.perf_counter() - t0
    return {"shards": len(mine), "positions": positions, "seconds": seconds,
            "tokens_per_s": positions / seconds if seconds > 0 else float("nan")}


@torch.no_grad()
def verify_cache(model, cache_dir: str, shard_paths: list[str], n: int, ctx: Ctx, seed: int = 0) -> dict:
    """Recompute `n` random cached rows from the teacher; returns the largest log-prob difference and how
    many rows have the same ids (up to ties: ids may differ only where values are equal to fp16 rounding)."""
    reader = CacheReader(cache_dir, shard_paths)
    spec = reader.spec
    stream = StreamView(shard_paths[:reader.num_shards])
    rng = np.random.default_rng(seed)
    worst, id_mismatch = 0.0, 0
    for _ in tqdm(range(n), desc="verify", disable=None):
        shard = int(rng.integers(reader.num_shards))
        row = int(rng.integers(reader.num_tokens[shard]))
        p = int(stream.starts[shard]) + row
        ws, we, _ = window_span(window_of(p, spec.window, spec.stride), spec.window, spec.stride, stream.total)
        x = torch.from_numpy(stream.read(ws, we).astype(np.int64))[None].to(ctx.device)
        if we - ws < spec.window:
            x = torch.nn.functional.pad(x, (0, spec.window - (we - ws)))
        idx, vals = teacher_topk(model, x, spec.k, ctx)
        idx, vals = idx[0, p - ws].long().cpu().numpy(), vals[0, p - ws].float().cpu().numpy()
        c_idx, c_vals = reader.gather([(shard, row, 1)])
        worst = max(worst, float(np.abs(c_vals[0] - vals).max()))
        if not np.array_equal(c_idx[0], idx):
            # a swap between (near-)equal values is a tie, not an error
            diff = c_idx[0] != idx
            if np.abs(c_vals[0][diff] - vals[diff]).max() > 1e-2:
                id_mismatch += 1
    return {"rows": n, "max_abs_logprob_diff": worst, "id_mismatches": id_mismatch}
