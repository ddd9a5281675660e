"""Validation loss and bits per byte (seed-factsheet sections 1.4, 1.5 and 5): one implementation for every
script. Sums are float64 and all-reduced, so any world size gives the same number."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from golf.dist import Ctx, all_reduce
from golf.errors import GolfError
from golf.shards import list_shards, load_shard
from golf.tokenizer import ByteLuts, count_bytes

LN2 = math.log(2)


def load_val_tokens(data_path: str, seq_len: int, max_targets: int = 0, vocab_size: int | None = None) -> torch.Tensor:
    """All val shards concatenated, truncated to ((N-1)//L)*L + 1 tokens (whole sequences of targets).
    `max_targets` > 0 keeps only the first that many targets (rounded down to whole sequences).
    With `vocab_size`, every id must be below it (else the embedding lookup would fail mid-evaluation)."""
    parts = []
    for path in list_shards(data_path, "val"):
        tokens = np.asarray(load_shard(path))
        if vocab_size is not None and len(tokens) and int(tokens.max()) >= vocab_size:
            pos = int(np.argmax(tokens >= vocab_size))
            raise GolfError(f"{path}: token id {int(tokens[pos])} at position {pos} is >= VOCAB_SIZE={vocab_size}: "
                            "the shards were made with another tokenizer; fix VOCAB_SIZE/TOKENIZER_PATH or re-create "
                            "the shards with prepare_data.py")
        parts.append(tokens)
    tokens = np.concatenate(parts)
    n_targets = ((len(tokens) - 1) // seq_len) * seq_len
    if n_targets <= 0:
        raise GolfError(f"the val shards in {data_path} hold {len(tokens)} tokens, fewer than one sequence of "
                        f"TRAIN_SEQ_LEN={seq_len} + 1; use more validation text or a shorter TRAIN_SEQ_LEN")
    if max_targets > 0:
        n_targets = min(n_targets, max(max_targets // seq_len, 1) * seq_len)
    return torch.from_numpy(tokens[: n_targets + 1].astype(np.int64))


def _finish(sums: torch.Tensor) -> tuple[float, float]:
    """sums = [nll, tokens, bytes] (float64, already reduced) -> (mean loss in nats, bits per byte)."""
    nll, ntok, nbytes = sums.tolist()
    return nll / ntok, nll / LN2 / nbytes


def _forward(model, x, ctx: Ctx):
    with ctx.autocast():
        return model(x)


@torch.no_grad()
def eval_val(model, val_tokens: torch.Tensor, luts: ByteLuts, seq_len: int, batch_tokens: int, ctx: Ctx,
             progress: bool = False) -> tuple[float, float]:
    """Non-overlapping seq_len windows, contiguous ranges per rank; returns (val_loss, val_bpb)."""
    was_training = model.training
    model.eval()
    n_seqs = (len(val_tokens) - 1) // seq_len
    lo, hi = n_seqs * ctx.rank // ctx.world_size, n_seqs * (ctx.rank + 1) // ctx.world_size
    batch_seqs = max(batch_tokens // (seq_len * ctx.world_size), 1)
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    for s in tqdm(range(lo, hi, batch_seqs), desc="val", disable=None if progress and ctx.is_master else True, leave=False):
        e = min(s + batch_seqs, hi)
        chunk = val_tokens[s * seq_len: e * seq_len + 1].to(ctx.device, non_blocking=True)
        x, y = chunk[:-1].view(-1, seq_len), chunk[1:].view(-1, seq_len)
        logits = _forward(model, x, ctx)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        sums += torch.stack([nll.double(), torch.tensor(y.numel(), dtype=torch.float64, device=ctx.device),
                             count_bytes(x, y, luts).sum()])
    all_reduce(sums)
    model.train(was_training)
    return _finish(sums)


def sliding_windows(n_targets: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(window start, window length, first scored offset) for the sliding evaluation.

    Window 0 scores its whole length; every later window starts `stride` after the previous one and scores
    only the targets the previous windows did not, i.e. its last `stride` positions, so every target is
    scored exactly once with at least seq_len - stride tokens of context (the study's version re-scores
    the final 64 targets in each trailing partial window, a ~3e-5 relative quirk we do not copy).
    """
    windows = [(0, min(seq_len, n_targets), 0)]
    scored = windows[0][1]
    ws = stride
    while scored < n_targets:
        wlen = min(seq_len, n_targets - ws)
        windows.append((ws, wlen, scored - ws))
        scored = ws + wlen
        ws += stride
    return windows


@torch.no_grad()
def eval_sliding(model, val_tokens: torch.Tensor, luts: ByteLuts, seq_len: int, stride: int, batch_seqs: int,
                 ctx: Ctx, progress: bool = False) -> tuple[float, float]:
    """Sliding-window (val_loss, val_bpb): each target scored once with >= seq_len - stride context.
    Windows are zero-padded to seq_len (causal attention makes the padding invisible to scored positions,
    and a fixed shape keeps one compiled graph and the RoPE tables of training)."""
    was_training = model.training
    model.eval()
    n_targets = len(val_tokens) - 1
    windows = sliding_windows(n_targets, seq_len, stride)
    lo, hi = len(windows) * ctx.rank // ctx.world_size, len(windows) * (ctx.rank + 1) // ctx.world_size
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    tokens = val_tokens.to(ctx.device)
    for b in tqdm(range(lo, hi, batch_seqs), desc="sliding", disable=None if progress and ctx.is_master else True, leave=False):
        batch = windows[b:min(b + batch_seqs, hi)]
        x = torch.zeros(len(batch), seq_len, dtype=torch.int64, device=ctx.device)
        y = torch.zeros_like(x)
        mask = torch.zeros(len(batch), seq_len, dtype=torch.bool, device=ctx.device)
        for i, (ws, wlen, first) in enumerate(batch):
            x[i, :wlen] = tokens[ws:ws + wlen]
            y[i, :wlen] = tokens[ws + 1:ws + wlen + 1]
            mask[i, first:wlen] = True
        logits = _forward(model, x, ctx)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        sums += torch.stack([nll[mask].double().sum(), mask.sum().double(), count_bytes(x, y, luts)[mask].sum()])
    all_reduce(sums)
    model.train(was_training)
    return _finish(sums)


def unigram_bpb(train_files: list[str], val_tokens: torch.Tensor, luts: ByteLuts, vocab_size: int) -> float:
    """Bits per byte of a unigram model (add-one smoothed train token frequencies) on the val targets: the
    floor any trained model must clear by a wide margin."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for p in train_files:
        counts += np.bincount(np.asarray(load_shard(p)), minlength=vocab_size)[:vocab_size]
    logp = torch.from_numpy(np.log(counts / counts.sum()))
    x, y = val_tokens[:-1], val_tokens[1:]
    nll = -logp[y].sum().item()
    return nll / LN2 / count_bytes(x, y, luts).sum().item()
