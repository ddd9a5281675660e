"""The challenge's token shard format: read, write, validate, list, fingerprint.

A shard is a 1,024-byte header of 256 little-endian int32 (magic 20240520, version 1, token count,
then zeros) followed by the tokens as little-endian uint16. This is byte-compatible with the
challenge's `load_data_shard`, so its downloaded FineWeb shards and ours are interchangeable.
"""
import glob
import hashlib
import os

import numpy as np

from golf.atomic import atomic_path
from golf.config import data_hint
from golf.errors import GolfError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_SHARD_TOKENS = 2**31  # the challenge's writer refuses this many; the count must fit an int32
_FIX = "re-create it with prepare_data.py"


def write_shard(path, tokens) -> None:
    """Write `tokens` (1-D integers in [0, 2**16)) as a challenge shard, atomically."""
    path = os.fspath(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise GolfError(f"{path}: tokens must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    if len(arr) >= MAX_SHARD_TOKENS:
        raise GolfError(f"{path}: {len(arr)} tokens is too many for one shard (limit {MAX_SHARD_TOKENS - 1}); split it")
    # Check the range before casting: a silent wrap-around to uint16 would corrupt the data.
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise GolfError(f"{path}: token ids must lie in [0, 65536), got [{arr.min()}, {arr.max()}]; use a vocabulary of at most 65536")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(arr))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            np.ascontiguousarray(arr, dtype=TOKEN_DTYPE).tofile(f)


def _read_header_ints(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise GolfError(f"{path}: shard file not found; check DATA_PATH or run prepare_data.py")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise GolfError(f"{path}: only {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte shard header: not a challenge shard; {_FIX}")
    return np.frombuffer(raw, dtype="<i4")


def read_header(path) -> int:
    """Validate a shard's header and file size; return its token count."""
    path = os.fspath(path)
    header = _read_header_ints(path)
    magic, version, num_tokens = (int(v) for v in header[:3])
    if magic != SHARD_MAGIC:
        raise GolfError(f"{path}: bad magic {magic} (expected {SHARD_MAGIC}): not a challenge shard; {_FIX}")
    if version != SHARD_VERSION:
        raise GolfError(f"{path}: unsupported shard version {version} (expected {SHARD_VERSION}); {_FIX}")
    if num_tokens < 0:
        raise GolfError(f"{path}: negative token count {num_tokens} in header: corrupted shard; {_FIX}")
    size = os.path.getsize(path)
    expected = HEADER_BYTES + 2 * num_tokens
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise GolfError(f"{path}: file size {size} != {expected} (header says {num_tokens} tokens): file {what}; {_FIX}")
    return num_tokens


def load_shard(path) -> np.ndarray:
    """Validate a shard and return its tokens as a read-only uint16 memmap (nothing is read into memory yet)."""
    path = os.fspath(path)
    num_tokens = read_header(path)
    if num_tokens == 0:
        # mmap cannot map zero bytes; an empty read-only array behaves the same for every caller.
        empty = np.zeros(0, dtype=TOKEN_DTYPE)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def list_shards(data_path, split: str, source: str = "DATA_PATH", hint: str | None = None) -> list[str]:
    """Sorted paths of `*_{split}_*.bin` in the folder `data_path` (sorted order = stream order). An error names
    `source` (where the folder came from) and `hint` (what to do; default: golf.config.data_hint())."""
    data_path = os.fspath(data_path)
    if not os.path.isdir(data_path):
        raise GolfError(f"data folder {data_path} not found ({source}); {hint or data_hint()}")
    pattern = os.path.join(data_path, f"*_{split}_*.bin")
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise GolfError(f"no {split} shards match {pattern} ({source}); {hint or data_hint()}")
    return paths


def shard_problem(path, vocab_size: int | None = None, vocab_name: str = "vocab size",
                  chunk_tokens: int = 1 << 24) -> str | None:
    """What is wrong with one shard, as its error message (header, size and, with `vocab_size`, an id >=
    vocab_size, found by a vectorised max over the memmap read in chunks, so a 10**8-token shard needs little
    memory), or None. `vocab_name` names the vocabulary's source in the message ("VOCAB_SIZE" reads
    VOCAB_SIZE=1024)."""
    try:
        tokens = load_shard(path)
    except GolfError as e:
        return str(e)
    if vocab_size is None:
        return None
    for start in range(0, len(tokens), chunk_tokens):
        chunk = np.asarray(tokens[start : start + chunk_tokens])
        if chunk.max() >= vocab_size:
            pos = start + int(np.argmax(chunk >= vocab_size))
            size = f"{vocab_name}={vocab_size}" if vocab_name.isupper() else f"{vocab_name} {vocab_size}"
            return (f"{os.fspath(path)}: token id {int(tokens[pos])} at position {pos} is >= {size}: "
                    "the shard was made with another tokenizer; fix VOCAB_SIZE or re-create the shards with prepare_data.py")
    return None


def shard_fingerprint(path, edge_bytes: int = 1 << 20) -> str:
    """Hex sha256 of the header, the token count and the first and last `edge_bytes` of the body.

    Cheap (at most ~2 MiB read, even for a 200 MB shard) but catches re-tokenised, re-exported,
    truncated or re-ordered shards, which is what the logit cache needs to notice.
    """
    path = os.fspath(path)
    num_tokens = read_header(path)
    body = 2 * num_tokens
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(HEADER_BYTES))
        h.update(num_tokens.to_bytes(8, "little"))
        h.update(f.read(min(edge_bytes, body)))
        tail_start = min(body, max(edge_bytes, body - edge_bytes))  # never re-hash the head's bytes
        f.seek(HEADER_BYTES + tail_start)
        h.update(f.read(body - tail_start))
    return h.hexdigest()
