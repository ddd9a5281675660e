"""The logit cache: the teacher's top-K log-probabilities for every train token, stored once, read by every student.

Layout of a cache folder (one per teacher, shard set and K), for each train shard `NAME.bin`:
- encoding "fp16":   `NAME.idx.npy` (uint16 [num_tokens, K]) and `NAME.val.npy` (float16 [num_tokens, K]);
- encoding "packed": `NAME.pk.npy`  (uint8 [num_tokens, 5*ceil(K/4) + K], 72 bytes per token at K=32);
- `NAME.done`: a small JSON sidecar, written only after the data files are whole (see "Completion" below);
- `manifest.json`: format version, K, vocab size, encoding, value kind, teacher sha256 and config, the
  teacher's window and stride, and per shard its name, token count, fingerprint and `complete` flag.
Every `.npy` is a plain numpy file: `numpy.load(path, mmap_mode="r")` opens it.

Row semantics: row t of a shard holds the teacher's top-K for the token that FOLLOWS stream position t (the
student's target y at input position t): log-probabilities at temperature 1 (log_softmax over the full
vocabulary), sorted descending, with their token ids. The top-K mass is sum(exp(values)), so the rest of the
vocabulary carries 1 - sum(exp(values)) (clamp at 0: fp16 rounding can push the sum a hair above 1). The
stream's last row predicts a token past the data; when the student's loader wraps, its target there is the
stream's first token, so that one row's teacher term is masked (golf.teachers.CachedTeacher, docs/decisions.md).
The manifest also records `teacher_context` (golf.cache_build.teacher_context): how many tokens the teacher saw
when it scored a position, mean and minimum over the cached stream.

Completion and crashes (single process or several torchrun ranks writing different shards):
1. A shard is written into temporary files `.FILE.<random>.tmp` (memory-mapped .npy files, filled in chunks).
2. `commit()` flushes and fsyncs them, renames them to their final names, fsyncs the folder, then writes the
   sidecar `NAME.done` atomically (temp + fsync + rename) and fsyncs the folder again.
3. A shard counts as complete exactly when its sidecar matches (shard identity and cache spec) AND every data
   file has the right npy header and byte size. `pending()` uses that test, never the manifest.
4. The manifest is a view of that state, rewritten atomically after each commit and by `finalize()`.
A `kill -9` before step 2's sidecar rename leaves no sidecar (and maybe some renamed data files): the shard is
pending and is redone from scratch. After it, the shard is complete whatever happens next. So at most the
shards being written are lost. Re-opening a shard deletes its sidecar first, so old and new files can never
mix. Leftover temp files are ignored and deleted when their shard is re-opened or by `finalize()`.
Several ranks rewriting the manifest concurrently can leave it one commit behind; call `finalize()` on one
rank after a barrier (when nobody writes any more) to make it exact. A reader trusts only a manifest that
says complete AND files that check out, so a lagging manifest can only make it refuse, never read garbage.

Encodings (`fp16`, `packed`, ...) are codecs in golf/codecs.py, which also describes the packed rows' layout and
error bounds; this module stores whatever files a codec declares and never branches on its name.
"""
import contextlib
import glob
import json
import os
from dataclasses import asdict, dataclass, fields

import numpy as np

from golf.atomic import atomic_write_text, create_temp, fsync_dir, human_bytes, require_free_disk
from golf.codecs import CODECS, ENCODINGS, Codec, FileLayout
from golf.errors import GolfError
from golf.shards import read_header, shard_fingerprint

FORMAT_VERSION = 1
VALUE_KIND = "logprob_T1"
MANIFEST = "manifest.json"

_REDO = "rerun cache_logits.py with the same settings and --out {dir} to finish it"
_NEW_OUT = "use a new --out or delete {dir}"
_DISK_FIX = "free some space, use a smaller K or the packed encoding, or another --out"
_HEADER_SLACK = 1024  # an upper bound on an .npy header, for the disk-space estimate


# ----------------------------------------------------------------------------------------------------------
# Spec, manifest and file checks


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; two runs may share a cache folder only if their specs are equal."""

    k: int
    vocab_size: int
    encoding: str  # a name in golf.codecs.CODECS
    teacher_sha256: str  # of the teacher checkpoint file
    teacher_config: dict  # the teacher's model configuration (JSON-serialisable)
    window: int  # the teacher's context length when it scored the stream
    stride: int  # how far consecutive teacher windows advance

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise GolfError(f"logit cache encoding {self.encoding!r} is unknown; use one of {', '.join(ENCODINGS)}")
        max_vocab = self.codec.max_vocab
        if not 1 <= self.vocab_size <= max_vocab:
            raise GolfError(f"logit cache encoding {self.encoding} needs 1 <= vocab_size <= {max_vocab}, got {self.vocab_size}; use encoding fp16 or a smaller vocabulary")
        if not 1 <= self.k <= self.vocab_size:
            raise GolfError(f"logit cache K={self.k} must lie in [1, vocab_size={self.vocab_size}]; choose another top-K")
        if not 1 <= self.stride <= self.window:
            raise GolfError(f"teacher window {self.window} and stride {self.stride} need 1 <= stride <= window, or some positions get no teacher output")

    @property
    def codec(self) -> Codec:
        return CODECS[self.encoding]

    def key(self) -> dict:
        """Everything a reader must match: the spec, the format version, the value kind and the codec's
        parameters (JSON round-tripped, so tuples and lists compare equal)."""
        d = {"version": FORMAT_VERSION, "value_kind": VALUE_KIND, **asdict(self), _CODEC_PARAMS: self.codec.params}
        return json.loads(json.dumps(d, sort_keys=True))

    def files(self, stem: str) -> list[FileLayout]:
        """(file name, dtype, columns) of the data files of shard `stem`."""
        return self.codec.files(stem, self.k)

    def shard_bytes(self, num_tokens: int) -> int:
        """Disk bytes of one shard's data files (an upper bound: headers counted generously)."""
        return sum(num_tokens * cols * dt.itemsize + _HEADER_SLACK for _, dt, cols in self.files("shard"))

    @classmethod
    def from_key(cls, key: dict) -> "CacheSpec":
        return cls(**{f.name: key[f.name] for f in fields(cls)})


# The manifest holds the spec's key with the teacher's fields nested under "teacher"; the codec's parameters sit
# under "packed" (the one codec with parameters when format version 1 was fixed).
_CODEC_PARAMS = "packed"
_NESTED = {"teacher_sha256": ("teacher", "sha256"), "teacher_config": ("teacher", "config")}


def _manifest_of_key(key: dict) -> dict:
    m = {}
    for name, value in key.items():
        outer, inner = _NESTED.get(name, (name, None))
        if inner is None:
            m[name] = value
        else:
            m.setdefault(outer, {})[inner] = value
    return m


def _key_of_manifest(m: dict) -> dict:
    """The manifest's fields in the shape of `CacheSpec.key()` (missing ones None)."""
    key = {}
    for name in [f.name for f in fields(CacheSpec)] + ["version", "value_kind", _CODEC_PARAMS]:
        outer, inner = _NESTED.get(name, (name, None))
        if inner is None:
            key[name] = m.get(name)
        else:
            key[name] = m[outer].get(inner) if isinstance(m.get(outer), dict) else None
    return key


@dataclass(frozen=True)
class _Shard:
    name: str  # the shard's file name, e.g. fineweb_train_000000.bin
    num_tokens: int
    fingerprint: str

    @property
    def stem(self) -> str:
        return self.name[:-4] if self.name.endswith(".bin") else self.name


def _describe_shards(shard_paths) -> list[_Shard]:
    return [_Shard(os.path.basename(os.fspath(p)), read_header(p), shard_fingerprint(p)) for p in shard_paths]


def _spec_diff(cached: dict, wanted: dict) -> str:
    """'field cached != wanted, ...' for every field that differs, or '' if none does."""
    diffs = []
    for key in sorted(set(cached) | set(wanted)):
        a, b = cached.get(key), wanted.get(key)
        if a != b:
            if key == "teacher_config" and isinstance(a, dict) and isinstance(b, dict):
                keys = sorted(x for x in set(a) | set(b) if a.get(x) != b.get(x))
                diffs.append(f"teacher_config differs in {', '.join(keys)}")
                continue
            if key == "teacher_sha256":
                a, b = str(a)[:12], str(b)[:12]
            diffs.append(f"{key} {a} != {b}")
    return ", ".join(diffs)


def _shard_diff(cached: list[dict], wanted: list[_Shard]) -> str:
    """Why the first len(min) shards differ, or '' if they agree."""
    for i, (c, w) in enumerate(zip(cached, wanted)):
        if c.get("name") != w.name:
            return f"shard {i} is {c.get('name')} in the cache but {w.name} in this run"
        if c.get("num_tokens") != w.num_tokens:
            return f"shard {w.name} has {w.num_tokens} tokens but the cache was made for {c.get('num_tokens')}"
        if c.get("fingerprint") != w.fingerprint:
            return f"shard {w.name} changed since the cache was made (fingerprint differs)"
    return ""


def _npy_problem(path: str, dtype: np.dtype, shape: tuple) -> str | None:
    """None if `path` is a whole C-order .npy of this dtype and shape, else what is wrong with it."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            got_shape, fortran, got_dtype = read_header(f)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError) as e:
        return f"not a valid .npy file ({e})"
    if got_dtype != dtype or tuple(got_shape) != tuple(shape) or fortran:
        return f"holds {got_dtype} {tuple(got_shape)}, expected {dtype} {tuple(shape)}"
    size, want = os.path.getsize(path), offset + int(np.prod(shape)) * dtype.itemsize
    if size != want:
        return f"truncated ({size} bytes, expected {want})" if size < want else f"has {size - want} trailing bytes"
    return None


def _reserve(path: str):
    """Allocate a sparse file's blocks now: a full disk then fails here with a clear error, not later with
    SIGBUS when the kernel writes back the memory map."""
    if not hasattr(os, "posix_fallocate"):  # not on macOS; the disk-space check still guards it there
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        raise GolfError(f"{path}: cannot allocate {human_bytes(os.fstat(fd).st_size)} ({e.strerror}); free disk space or use another --out") from None
    finally:
        os.close(fd)


def _remove(path: str):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# ----------------------------------------------------------------------------------------------------------
# Writer


class CacheWriter:
    """Create or resume the cache in `out_dir` for the train shards `shard_paths` (in stream order).

    Resuming with another spec or other shards is refused. Typical use, on every rank:

        w = CacheWriter(out, shards, spec); w.check_disk_space()
        mine = w.pending()[rank::world]
        barrier()  # every rank must split the same list: none may commit before all have called pending()
        for i in mine:
            with w.open_shard(i) as sw:
                for start, idx, vals in chunks: sw.write(start, idx, vals)
                sw.commit()
        barrier(); if rank == 0: w.finalize()
    """

    def __init__(self, out_dir, shard_paths, spec: CacheSpec, info: dict | None = None):
        self.dir = os.fspath(out_dir)
        self.spec = spec
        self.info = info or {}  # figures the manifest reports beside the spec (not matched by readers)
        self.shards = _describe_shards(shard_paths)
        self.manifest_path = os.path.join(self.dir, MANIFEST)
        if os.path.exists(self.dir) and not os.path.isdir(self.dir):
            raise GolfError(f"logit cache folder {self.dir} is a file; {_NEW_OUT.format(dir=self.dir)}")
        if os.path.exists(self.manifest_path):
            m = _load_manifest(self.manifest_path, fix=_NEW_OUT.format(dir=self.dir))
            why = _spec_diff(_key_of_manifest(m), spec.key())
            if not why:
                cached = m.get("shards", [])
                why = _shard_diff(cached, self.shards)
                if not why and len(cached) != len(self.shards):
                    why = f"the cache covers {len(cached)} shards but this run gives {len(self.shards)}"
            if why:
                raise GolfError(f"logit cache {self.dir} was made for something else: {why}; {_NEW_OUT.format(dir=self.dir)}")
        os.makedirs(self.dir, exist_ok=True)
        # Also repairs a manifest that lags its sidecars after a kill.
        self._write_manifest()

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _done_record(self, i: int) -> dict:
        return json.loads(json.dumps({"shard": asdict(self.shards[i]), "spec": self.spec.key()}))

    def is_complete(self, i: int) -> bool:
        """Whether shard i's sidecar matches and its data files are whole."""
        s = self.shards[i]
        try:
            with open(self._path(f"{s.stem}.done")) as f:
                if json.load(f) != self._done_record(i):
                    return False
        except (OSError, ValueError):
            return False
        return all(_npy_problem(self._path(name), dt, (s.num_tokens, cols)) is None for name, dt, cols in self.spec.files(s.stem))

    def pending(self) -> list[int]:
        """Indices of the shards that still need writing (missing, partial or stale)."""
        return [i for i in range(self.num_shards) if not self.is_complete(i)]

    def bytes_needed(self) -> int:
        """Disk bytes the pending shards will take (their old files are deleted before rewriting)."""
        return sum(self.spec.shard_bytes(self.shards[i].num_tokens) for i in self.pending())

    def check_disk_space(self):
        """Refuse to start if the pending shards would not fit on the cache's disk."""
        require_free_disk(self.dir, self.bytes_needed(), "the logit cache", _DISK_FIX)

    def open_shard(self, i: int) -> "ShardWriter":
        """Start (re)writing shard i; its old sidecar, data files and temp files are deleted first."""
        s = self.shards[i]
        names = [name for name, _, _ in self.spec.files(s.stem)]
        _remove(self._path(f"{s.stem}.done"))  # first: from here on the shard is pending, whatever else happens
        self._remove_temps(names + [f"{s.stem}.done"])
        for name in names:
            _remove(self._path(name))
        return ShardWriter(self, i)

    def write_shard(self, i: int, idx: np.ndarray, vals: np.ndarray):
        """Write all rows of shard i at once and mark it complete."""
        with self.open_shard(i) as sw:
            sw.write(0, idx, vals)
            sw.commit()

    def finalize(self) -> list[int]:
        """Delete leftover temp files and rewrite the manifest from the files; return the still-pending shards.

        Call it when no other process writes to this cache (after a barrier under torchrun).
        """
        names = [MANIFEST]
        for s in self.shards:
            names += [name for name, _, _ in self.spec.files(s.stem)] + [f"{s.stem}.done"]
        self._remove_temps(names)
        return self._write_manifest()

    def _remove_temps(self, names: list[str]):
        # Temp names are `.NAME.<random>.tmp`, both ours and atomic_path's.
        for name in names:
            for tmp in glob.glob(os.path.join(glob.escape(self.dir), f".{glob.escape(name)}.*.tmp")):
                _remove(tmp)

    def _write_manifest(self) -> list[int]:
        pending, spec = self.pending(), self.spec
        m = {"format": "golf-logit-cache", **_manifest_of_key(spec.key()), **self.info,
             "shards": [asdict(s) | {"complete": i not in pending} for i, s in enumerate(self.shards)]}
        atomic_write_text(self.manifest_path, json.dumps(m, indent=1) + "\n")
        return pending


class ShardWriter:
    """Fills one shard's temp files chunk by chunk (rows in any order, each exactly once), then commits them.

    Use as a context manager: leaving it without `commit()` (an exception) deletes the temp files.
    """

    def __init__(self, writer: CacheWriter, i: int):
        self.writer, self.i = writer, i
        self.shard = writer.shards[i]
        self.spec = writer.spec
        self.num_rows = self.shard.num_tokens
        self._spans: list[tuple[int, int]] = []
        self._temps: list[tuple[str, str]] = []  # (final path, temp path)
        self._maps: list[np.memmap] = []
        self.committed = False
        try:
            for name, dt, cols in self.spec.files(self.shard.stem):
                tmp = create_temp(writer._path(name))
                self._temps.append((writer._path(name), tmp))
                self._maps.append(np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=(self.num_rows, cols)))
                _reserve(tmp)
        except BaseException:
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()

    def write(self, row_start: int, idx: np.ndarray, vals: np.ndarray):
        """Store rows [row_start, row_start + len(idx)): top-K ids [m, K] and sorted-descending log-probs [m, K]."""
        idx, vals = np.asarray(idx), np.asarray(vals)
        m, k = len(idx), self.spec.k
        if idx.shape != (m, k) or vals.shape != (m, k):
            raise ValueError(f"chunk shapes idx {idx.shape} vals {vals.shape}, expected ({m}, {k})")
        if not 0 <= row_start <= row_start + m <= self.num_rows:
            raise ValueError(f"rows [{row_start}, {row_start + m}) outside shard {self.shard.name} of {self.num_rows} rows")
        if m == 0:
            return
        if idx.min() < 0 or idx.max() >= self.spec.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.spec.vocab_size}), got [{idx.min()}, {idx.max()}]")
        # A teacher bug must not reach the student; -inf in particular would make its KL NaN (0 * -inf).
        if not (np.isfinite(vals).all() and (vals[:, :-1] >= vals[:, 1:]).all()):
            raise ValueError("values must be finite log-probabilities sorted descending along K")
        rows = slice(row_start, row_start + m)
        for mm, data in zip(self._maps, self.spec.codec.encode(idx, vals)):
            mm[rows] = data
        self._spans.append((row_start, row_start + m))

    def commit(self):
        """Make the shard durable and mark it complete (see the module docstring for the order of steps)."""
        end = 0
        for a, b in sorted(self._spans):
            if a != end:
                raise ValueError(f"shard {self.shard.name}: rows [{min(a, end)}, {max(a, end)}) written {'twice' if a < end else 'never'}")
            end = b
        if end != self.num_rows:
            raise ValueError(f"shard {self.shard.name}: rows [{end}, {self.num_rows}) never written")
        for mm, (_, tmp) in zip(self._maps, self._temps):
            mm.flush()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        self._maps = []
        for final, tmp in self._temps:
            os.replace(tmp, final)
        fsync_dir(self.writer.dir)
        s = self.shard
        atomic_write_text(self.writer._path(f"{s.stem}.done"), json.dumps(self.writer._done_record(self.i)) + "\n")
        fsync_dir(self.writer.dir)
        self.committed = True
        self.writer._write_manifest()

    def abort(self):
        """Delete the temp files (the shard stays pending)."""
        self._maps = []
        for _, tmp in self._temps:
            _remove(tmp)
        self._temps = []


# ----------------------------------------------------------------------------------------------------------
# Reader


def _load_manifest(path: str, fix: str) -> dict:
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise GolfError(f"{path}: unreadable or corrupt manifest ({type(e).__name__}); {fix}") from None
    if not isinstance(m, dict) or m.get("format") != "golf-logit-cache" or not isinstance(m.get("shards"), list):
        raise GolfError(f"{path}: not a logit-cache manifest; {fix}")
    return m


def cache_manifest_field(cache_dir: str, name: str):
    """One field of a cache's manifest (a figure it reports, e.g. build_seconds), or None when the manifest or
    the field is missing."""
    try:
        return _load_manifest(os.path.join(cache_dir, MANIFEST), fix="").get(name)
    except GolfError:
        return None


class CacheReader:
    """Read-only, memory-mapped view of a finished cache, checked against the run's train shards.

    `shard_paths` are the run's train shards in stream order; the cache must have been made for the same
    shards in the same order, possibly fewer (a prefix: `num_shards` tells how many are cached) or more.
    `k`, `vocab_size`, `teacher_sha256`, when given, must match the cache too.
    """

    def __init__(self, cache_dir, shard_paths, *, k: int | None = None, vocab_size: int | None = None, teacher_sha256: str | None = None):
        self.dir = d = os.fspath(cache_dir)
        redo = _REDO.format(dir=d)
        if not os.path.isdir(d):
            raise GolfError(f"logit cache folder {d} not found; make it with cache_logits.py --out {d} (or fix LOGIT_CACHE)")
        path = os.path.join(d, MANIFEST)
        if not os.path.isfile(path):
            raise GolfError(f"{path} not found: {d} is not a logit cache or its writer never started; run cache_logits.py --out {d}")
        m = _load_manifest(path, fix=f"delete {d} and run cache_logits.py --out {d} again")
        if m.get("version") != FORMAT_VERSION:
            raise GolfError(f"{path}: cache format version {m.get('version')}, this code reads {FORMAT_VERSION}; rebuild it with this cache_logits.py")
        key = _key_of_manifest(m)
        missing = [f.name for f in fields(CacheSpec) if key[f.name] is None]
        if missing:
            raise GolfError(f"{path}: manifest lacks field '{missing[0]}'; delete {d} and run cache_logits.py --out {d} again")
        self.spec = CacheSpec.from_key(key)
        self.manifest = m
        why = _spec_diff(key, self.spec.key())  # version, value kind, codec parameters
        for key, want in (("k", k), ("vocab_size", vocab_size), ("teacher_sha256", teacher_sha256)):
            got = getattr(self.spec, key)
            if want is not None and got != want:
                why = why or f"{key} {str(got)[:12]} in the cache != {str(want)[:12]} in this run"
        if why:
            raise GolfError(f"logit cache {d} does not fit this run: {why}; point LOGIT_CACHE at a matching cache or rebuild one with cache_logits.py")

        shards = _describe_shards(list(shard_paths)[: len(m["shards"])])
        why = _shard_diff(m["shards"], shards)
        if why:
            raise GolfError(f"logit cache {d} was made for other train shards: {why}; rebuild it with cache_logits.py for these shards")
        self.shards = shards
        self.k = self.spec.k
        self._maps = []
        for s, entry in zip(self.shards, m["shards"]):
            if not entry.get("complete"):
                raise GolfError(f"{path}: shard {s.name} is not complete (cache_logits.py was interrupted); {redo}")
            maps = []
            for name, dt, cols in self.spec.files(s.stem):
                fpath = os.path.join(d, name)
                problem = _npy_problem(fpath, dt, (s.num_tokens, cols))
                if problem:
                    raise GolfError(f"{fpath}: {problem}; {redo}")
                maps.append(np.load(fpath, mmap_mode="r"))
            self._maps.append(maps)

    @property
    def num_shards(self) -> int:
        """How many of the run's train shards (from the first) the cache covers."""
        return len(self.shards)

    @property
    def num_tokens(self) -> list[int]:
        """Rows (= tokens) of each covered shard."""
        return [s.num_tokens for s in self.shards]

    def covered_shards(self) -> list[str]:
        """File names of the covered train shards, in stream order."""
        return [s.name for s in self.shards]

    def _rows(self, segments, n: int):
        """(rows of the data files, destination slice) for each segment, after checking it."""
        if sum(length for _, _, length in segments) != n:
            raise ValueError(f"segments hold {sum(length for _, _, length in segments)} rows, the outputs {n}")
        pos = 0
        for shard, offset, length in segments:
            if not 0 <= shard < self.num_shards:
                raise GolfError(f"the run reached train shard {shard} but logit cache {self.dir} covers only {self.num_shards} shards; cache more shards with cache_logits.py or set RESTRICT_TO_CACHE=1")
            if not 0 <= offset <= offset + length <= self.shards[shard].num_tokens:
                raise ValueError(f"rows [{offset}, {offset + length}) outside shard {self.shards[shard].name} ({self.shards[shard].num_tokens} rows)")
            yield [m[offset:offset + length] for m in self._maps[shard]], slice(pos, pos + length)
            pos += length

    def gather(self, segments, out_idx: np.ndarray | None = None, out_vals: np.ndarray | None = None):
        """Rows for `segments` = [(shard_index, offset, length), ...], concatenated in order.

        Returns (ids int64 [n, K], log-probs float32 [n, K]); pass `out_idx`/`out_vals` (e.g. numpy views of
        pinned tensors, any integer/float dtype that holds the values) to fill them instead of allocating.
        """
        n = sum(length for _, _, length in segments)
        out_idx = np.empty((n, self.k), dtype=np.int64) if out_idx is None else out_idx
        out_vals = np.empty((n, self.k), dtype=np.float32) if out_vals is None else out_vals
        if out_idx.shape != (n, self.k) or out_vals.shape != (n, self.k):
            raise ValueError(f"outputs have shapes {out_idx.shape} and {out_vals.shape}, expected ({n}, {self.k})")
        for arrays, dst in self._rows(segments, n):
            self.spec.codec.decode(arrays, self.k, out_idx[dst], out_vals[dst])
        return out_idx, out_vals

    def gather_ids(self, segments, out_idx: np.ndarray) -> np.ndarray:
        """Only the first out_idx.shape[1] ids of the rows for `segments` (the teacher's top-1 for a hard label),
        decoded without touching the values."""
        if not 1 <= out_idx.shape[1] <= self.k:
            raise ValueError(f"asked for {out_idx.shape[1]} id columns of a top-{self.k} cache")
        for arrays, dst in self._rows(segments, out_idx.shape[0]):
            self.spec.codec.decode_ids(arrays, self.k, out_idx[dst])
        return out_idx
