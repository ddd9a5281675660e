"""SentencePiece loading and the challenge's bits-per-byte accounting.

The score is bits per *byte* of text, so every target token is credited with a byte count from
three lookup tables (fact sheet 1.5). Building them exactly as the challenge does is the scoring
rule, not a detail: e.g. the published FineWeb tokenizer has no byte-fallback pieces, so characters
it cannot encode become `<unk>`, which counts 0 bytes.
"""
from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import sentencepiece as spm

if TYPE_CHECKING:
    import torch  # imported lazily below: prepare_data.py needs this module but not torch's ~1.5 s import

from golf.config import data_hint
from golf.errors import GolfError


class ByteLuts(NamedTuple):
    """Per-token-id tables (numpy from build_byte_luts, torch from luts_to_torch)."""

    base_bytes: np.ndarray | torch.Tensor  # int16: UTF-8 bytes of the piece without its leading "▁"
    has_leading_space: np.ndarray | torch.Tensor  # bool: piece starts with "▁" (one more byte unless after a boundary)
    is_boundary: np.ndarray | torch.Tensor  # bool: control/unknown/unused ids (BOS, EOS, pad, unk)


def load_tokenizer(path, vocab_size: int) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model and check it has exactly `vocab_size` pieces."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GolfError(f"tokenizer {path} not found (TOKENIZER_PATH); {data_hint()}")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(path)
    except (OSError, RuntimeError) as e:
        raise GolfError(f"tokenizer {path} is not a readable SentencePiece model ({e}); fix TOKENIZER_PATH") from None
    if sp.vocab_size() != vocab_size:
        raise GolfError(
            f"tokenizer {path} has {sp.vocab_size()} pieces but VOCAB_SIZE={vocab_size}; "
            f"set VOCAB_SIZE={sp.vocab_size()} or point TOKENIZER_PATH at a {vocab_size}-piece tokenizer"
        )
    return sp


def build_byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteLuts:
    """The challenge's byte tables (its `build_sentencepiece_luts`), as numpy arrays of size max(sp vocab, vocab_size)."""
    sp_vocab = int(sp.vocab_size())
    size = max(sp_vocab, vocab_size)
    base_bytes = np.zeros(size, dtype=np.int16)
    has_leading_space = np.zeros(size, dtype=np.bool_)
    is_boundary = np.ones(size, dtype=np.bool_)  # ids past the tokenizer's vocab stay 0-byte boundaries
    for i in range(sp_vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):
            base_bytes[i] = 1  # one raw byte, e.g. <0xE2>
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("▁"):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return ByteLuts(base_bytes, has_leading_space, is_boundary)


def luts_to_torch(luts: ByteLuts, device) -> ByteLuts:
    """Move the tables to `device` once, so per-batch byte counting stays on that device."""
    import torch

    return ByteLuts(*(torch.as_tensor(t, device=device) for t in luts))


def count_bytes(prev_ids: torch.Tensor, tgt_ids: torch.Tensor, luts: ByteLuts) -> torch.Tensor:
    """Bytes credited to each target (float64, same shape): base_bytes[y] + (leading space of y unless p is a boundary).

    `prev_ids` are the tokens right before the targets (the model's inputs at the same positions).
    Numpy tables are accepted but are copied every call; pass luts_to_torch's output in loops.
    """
    import torch

    base_bytes, has_leading_space, is_boundary = (torch.as_tensor(t, device=tgt_ids.device) for t in luts)
    prev, tgt = prev_ids.long(), tgt_ids.long()
    return base_bytes[tgt].to(torch.float64) + (has_leading_space[tgt] & ~is_boundary[prev]).to(torch.float64)


def file_sha256(path, block_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (the tokenizer's identity in checkpoints and manifests)."""
    h = hashlib.sha256()
    with open(os.fspath(path), "rb") as f:
        while block := f.read(block_bytes):
            h.update(block)
    return h.hexdigest()
