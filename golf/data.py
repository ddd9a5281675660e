"""The training stream and the distributed loader, with the challenge's exact consumption semantics
(seed-factsheet 1.3), plus where every token came from.

- `TokenStream` reads the sorted train shards in order and wraps to the first forever.
- `DistributedTokenLoader.next_batch()`: every rank takes the same chunk of W * (local + 1) tokens from its
  own identical stream (the streams stay in lockstep); rank r keeps chunk[r*span : (r+1)*span]; x is the
  first `local` tokens of its span, y the same span shifted by one. The last token of each span is only a
  target.
- Each batch also reports `segments`: the (shard index, offset, length) pieces of the stream that its x
  tokens were read from, in order. Position j of the flattened x lies at that place in the stream, so the
  logit cache (whose row t holds the teacher's prediction for the token after stream position t) is looked
  up by the same coordinates: alignment holds by construction for any world size, batch, sequence length
  or accumulation.
"""
from dataclasses import dataclass

import numpy as np
import torch

from golf.config import Config
from golf.errors import GolfError
from golf.shards import load_shard

Segment = tuple[int, int, int]  # (shard index, offset in shard, length)


class TokenStream:
    def __init__(self, paths: list[str]):
        if not paths:
            raise GolfError("no train shards given to the token stream")
        self.paths = list(paths)
        self.shard = 0
        self.pos = 0
        self.tokens = load_shard(self.paths[0])

    def _advance(self):
        self.shard = (self.shard + 1) % len(self.paths)
        self.tokens = load_shard(self.paths[self.shard])
        self.pos = 0

    def take(self, n: int) -> tuple[np.ndarray, list[Segment]]:
        """The next n tokens (possibly spanning shards and the wrap-around) and where they came from."""
        parts, segments = [], []
        left = n
        while left > 0:
            avail = len(self.tokens) - self.pos
            if avail <= 0:
                self._advance()
                continue
            k = min(left, avail)
            parts.append(self.tokens[self.pos:self.pos + k])
            segments.append((self.shard, self.pos, k))
            self.pos += k
            left -= k
        return np.concatenate(parts), segments

    def state(self) -> dict:
        return {"shard": self.shard, "pos": self.pos}

    def load_state(self, state: dict):
        self.shard = state["shard"]
        self.tokens = load_shard(self.paths[self.shard])
        self.pos = state["pos"]


def slice_segments(segments: list[Segment], start: int, length: int) -> list[Segment]:
    """The pieces covering [start, start + length) of the stream that `segments` describe, in order."""
    out, seen = [], 0
    for shard, off, n in segments:
        lo, hi = max(start, seen), min(start + length, seen + n)
        if lo < hi:
            out.append((shard, off + lo - seen, hi - lo))
        seen += n
    return out


@dataclass
class Batch:
    x: torch.Tensor  # (rows, seq_len) int64 inputs
    y: torch.Tensor  # (rows, seq_len) int64 targets
    segments: list[Segment]  # where x.flatten() was read from
    teacher: object = None  # the teacher's golf.signals.Signal for this batch, when a loader-side teacher gave one


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    """The challenge's accumulation rule (8 // W, W must divide 8), generalised to MICRO_BATCHES; more ranks
    than micro-batches (W a multiple of it) means one micro-batch per rank."""
    if cfg.micro_batches % world_size == 0:
        return cfg.micro_batches // world_size
    if world_size % cfg.micro_batches == 0:
        return 1
    raise GolfError(f"MICRO_BATCHES={cfg.micro_batches} and the world size {world_size} do not divide each other; "
                    "use a process count that divides it (or a multiple of it) or change MICRO_BATCHES")


def local_tokens(global_tokens: int, seq_len: int, accum: int, world_size: int) -> int:
    """Input tokens per rank per micro-batch."""
    local = global_tokens // (world_size * accum)
    if local <= 0 or local % seq_len:
        raise GolfError(
            f"TRAIN_BATCH_TOKENS={global_tokens} over {world_size} rank(s) x {accum} micro-batch(es) gives "
            f"{local} tokens per micro-batch, not a positive multiple of TRAIN_SEQ_LEN={seq_len}; adjust them"
        )
    return local


def tokens_read_per_batch(global_tokens: int, seq_len: int, accum: int, world_size: int) -> int:
    """Stream tokens one `next_batch` takes, all ranks together: each rank's span is its inputs plus one last
    target. The loader consumes exactly this, so it is also what a cache must cover per micro-batch."""
    return world_size * (local_tokens(global_tokens, seq_len, accum, world_size) + 1)


class DistributedTokenLoader:
    def __init__(self, paths: list[str], rank: int, world_size: int, vocab_size: int | None = None):
        self.stream = TokenStream(paths)
        self.rank, self.world_size, self.vocab_size = rank, world_size, vocab_size

    def next_batch(self, global_tokens: int, seq_len: int, accum: int) -> Batch:
        local = local_tokens(global_tokens, seq_len, accum, self.world_size)
        span = local + 1
        chunk, segments = self.stream.take(tokens_read_per_batch(global_tokens, seq_len, accum, self.world_size))
        if self.vocab_size is not None and int(chunk.max()) >= self.vocab_size:
            self._refuse_id(chunk, segments)
        start = self.rank * span
        mine = torch.from_numpy(chunk[start:start + span].astype(np.int64))
        x = mine[:-1].reshape(-1, seq_len)
        y = mine[1:].reshape(-1, seq_len)
        return Batch(x, y, slice_segments(segments, start, local))

    def _refuse_id(self, chunk: np.ndarray, segments: list[Segment]):
        """Name the first id >= vocab_size and where it lies. Checked here, on the host (~0.1 ms a batch),
        because on the device it would be an index error mid-step, or a CUDA device-side assert."""
        pos = int(np.argmax(chunk >= self.vocab_size))
        bad = int(chunk[pos])
        for shard, off, n in segments:
            if pos < n:
                break
            pos -= n
        raise GolfError(f"{self.stream.paths[shard]}: token id {bad} at position {off + pos} is >= VOCAB_SIZE="
                        f"{self.vocab_size}: the shard was made with another tokenizer; check the shards with "
                        "prepare_data.py --check DIR --vocab-size N, fix VOCAB_SIZE or re-create them")

    def state(self) -> dict:
        return self.stream.state()

    def load_state(self, state: dict):
        self.stream.load_state(state)
