"""Tokenizer loading and byte accounting: python -m pytest tests/test_tokenizer.py -q"""
import hashlib
import os

import numpy as np
import pytest
import torch

from golf.errors import GolfError
from golf.shards import load_shard
from golf.tokenizer import build_byte_luts, count_bytes, file_sha256, load_tokenizer, luts_to_torch
from helpers import CHALLENGE_TOKENIZER, needs_challenge_tokenizer

BOS = 1


def lut_bytes_of_doc(ids, luts) -> float:
    """Bytes the challenge credits to one document scored as [BOS] + ids."""
    seq = torch.tensor([BOS] + list(ids))
    return count_bytes(seq[:-1], seq[1:], luts).sum().item()


def test_load_tokenizer_errors(tmp_path, tiny_dataset):
    with pytest.raises(GolfError, match="not found.*TOKENIZER_PATH"):
        load_tokenizer(tmp_path / "missing.model", 1024)
    (tmp_path / "junk.model").write_bytes(b"not a protobuf")
    with pytest.raises(GolfError, match="not a readable SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model", 1024)
    with pytest.raises(GolfError, match="has 1024 pieces but VOCAB_SIZE=2048; set VOCAB_SIZE=1024"):
        load_tokenizer(tiny_dataset.tokenizer_path, 2048)
    assert load_tokenizer(tiny_dataset.tokenizer_path, 1024).vocab_size() == 1024


def test_demo_luts_count_decoded_bytes_per_document(tiny_dataset):
    """With byte fallback, the LUT count over [BOS]+ids is exactly the UTF-8 size of the decoded text."""
    sp = load_tokenizer(tiny_dataset.tokenizer_path, 1024)
    assert sum(sp.is_byte(i) for i in range(1024)) == 256
    luts = luts_to_torch(build_byte_luts(sp, 1024), "cpu")
    docs = tiny_dataset.val_docs + tiny_dataset.train_docs[:10]
    for doc in docs:
        ids = sp.encode(doc)
        assert lut_bytes_of_doc(ids, luts) == len(sp.decode(ids).encode("utf-8"))
    # A leading "▁" right after BOS is not a byte (BOS is a boundary), but after a normal piece it is one.
    space_a = sp.piece_to_id("▁a")
    assert lut_bytes_of_doc([space_a], luts) == 1
    assert lut_bytes_of_doc([space_a, space_a], luts) == 1 + 2


def test_val_shard_stream_bytes(tiny_dataset):
    """Scoring the val shards as one stream (the way evaluation does) credits the bytes of all val docs."""
    sp = load_tokenizer(tiny_dataset.tokenizer_path, 1024)
    stream = torch.from_numpy(np.concatenate([np.asarray(load_shard(p), dtype=np.int64) for p in tiny_dataset.val_files]))
    total = count_bytes(stream[:-1], stream[1:], build_byte_luts(sp, 1024)).sum().item()
    expected = sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in tiny_dataset.val_docs)
    assert total == expected  # stream[0] is a BOS (never a target), every later BOS counts 0


@needs_challenge_tokenizer
def test_challenge_tokenizer_luts():
    sp = load_tokenizer(CHALLENGE_TOKENIZER, 1024)
    base_bytes, has_leading_space, is_boundary = build_byte_luts(sp, 1024)
    assert base_bytes.dtype == np.int16 and base_bytes.shape == has_leading_space.shape == is_boundary.shape == (1024,)
    assert not any(sp.is_byte(i) for i in range(1024))  # published with byte_fallback off
    assert sp.id_to_piece(3) == "<unk>" and base_bytes[3] == 0 and is_boundary[3]
    assert is_boundary[:4].all() and not is_boundary[4:].any() and (base_bytes[:4] == 0).all()
    world = sp.piece_to_id("▁world")
    assert base_bytes[world] == 5 and has_leading_space[world]
    luts = luts_to_torch((base_bytes, has_leading_space, is_boundary), "cpu")
    text = "Hello world, this is 2026."
    ids = sp.encode(text)
    assert [sp.id_to_piece(i) for i in ids] == ["H", "ell", "o", "▁world", ",", "▁this", "▁is", "▁", "2", "0", "2", "6", "."]
    assert lut_bytes_of_doc(ids, luts) == len(text.encode("utf-8")) == 26
    # Characters outside the vocabulary become <unk>: 0 bytes, and a boundary, so the "▁" after it is 0 too.
    ids = sp.encode("naïve 日本語 🙂")
    assert [sp.id_to_piece(i) for i in ids] == ["n", "a", "<unk>", "ve", "▁", "<unk>", "▁", "<unk>"]
    assert lut_bytes_of_doc(ids, luts) == 1 + 1 + 0 + 2 + 1 + 0 + 0 + 0


def test_luts_pad_to_model_vocab(tiny_dataset):
    """A model vocab larger than the tokenizer's: the extra ids are 0-byte boundaries, like unused ids."""
    sp = load_tokenizer(tiny_dataset.tokenizer_path, 1024)
    base_bytes, has_leading_space, is_boundary = build_byte_luts(sp, 1100)
    assert base_bytes.shape == (1100,)
    assert (base_bytes[1024:] == 0).all() and is_boundary[1024:].all() and not has_leading_space[1024:].any()


def test_count_bytes_elementwise_matches_python_loop(tiny_dataset):
    sp = load_tokenizer(tiny_dataset.tokenizer_path, 1024)
    luts = build_byte_luts(sp, 1024)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1024, (4, 33), generator=g)
    ids[:, ::7] = BOS
    prev, tgt = ids[:, :-1], ids[:, 1:]
    got = count_bytes(prev, tgt, luts_to_torch(luts, "cpu"))
    assert got.dtype == torch.float64 and got.shape == tgt.shape
    for (r, c), value in np.ndenumerate(got.numpy()):
        p, y = int(prev[r, c]), int(tgt[r, c])
        piece = sp.id_to_piece(y)
        if sp.is_control(y) or sp.is_unknown(y):
            expected = 0
        elif sp.is_byte(y):
            expected = 1
        else:
            expected = len(piece.removeprefix("▁").encode("utf-8")) + (piece.startswith("▁") and not sp.is_control(p))
        assert value == expected, (p, y, piece)
    torch.testing.assert_close(count_bytes(prev.to(torch.int32), tgt.to(torch.int32), luts), got)  # numpy tables, int32 ids


def test_file_sha256_streams(tmp_path):
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", block_bytes=999) == hashlib.sha256(data).hexdigest()
