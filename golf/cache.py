"""The logit cache: the teacher's top-K log-probabilities (or N draws from it) for every train token, stored once,
read by every student.

Layout of a cache folder (one per teacher, shard set and K), for each train shard `NAME.bin`:
- encoding "fp16":   `NAME.idx.npy` (uint16 [num_tokens, K]) and `NAME.val.npy` (float16 [num_tokens, K]);
- encoding "packed": `NAME.pk.npy`  (uint8 [num_tokens, 5*ceil(K/4) + K], 72 bytes per token at K=32);
- encoding "sampled" (format version 2; K is the draws N, the manifest adds the `temperature`):
  `NAME.lengths.npy` (uint8 [num_tokens, 1]), `NAME.entries.npy` (uint8 [entries, 3]) and `NAME.offsets.npy`
  (int64 [ceil(num_tokens / 256) + 1, 1]), ragged rows of distinct ids and draw counts (golf/codecs.py);
- encoding "sampled-packed" (format version 2, as "sampled"): `NAME.draws.npy` (uint8 [num_tokens,
  5*ceil(N/4)]), the N sorted draws in 10-bit ids, 20 bytes per token at N=16;
- `NAME.done`: a small JSON sidecar, written only after the data files are whole (see "Completion" below);
- `manifest.json`: format version, K, vocab size, encoding, value kind, teacher sha256 and config, the
  teacher's window and stride, and per shard its name, token count, fingerprint and `complete` flag.
Every `.npy` is a plain numpy file: `numpy.load(path, mmap_mode="r")` opens it.

Row semantics: row t of a shard holds the teacher's top-K for the token that FOLLOWS stream position t (the
student's target y at input position t): log-probabilities at temperature 1 (log_softmax over the full
vocabulary), sorted descending, with their token ids. A sampled cache's row t holds N draws with replacement
from softmax(logits / temperature) at the same position, as distinct ids and counts (golf.cache_build). The top-K mass is sum(exp(values)), so the rest of the
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

Encodings (`fp16`, `packed`, `sampled`, `sampled-packed`) are codecs in golf/codecs.py, which also describes the packed rows' layout
and error bounds and the sampled rows' layout; this module stores whatever files a codec declares and never
branches on its name. A ragged codec's entries are written in row order: appended to the entries file, whose
.npy header gets the final count at commit (numpy pads a header so that it keeps its size whatever the first
dimension), while the offsets fill in as rows arrive; so every file stays a plain .npy.
"""
import contextlib
import glob
import io
import json
import os
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np

from golf.atomic import atomic_write_text, create_temp, fsync_dir, human_bytes, require_free_disk
from golf.codecs import CODECS, ENCODINGS, Codec, FileLayout
from golf.errors import GolfError
from golf.shards import read_header, shard_fingerprint

# 1: top-K rows (fp16, packed), unchanged since it was fixed; 2: ragged rows (sampled). A cache's version is
# its codec's `format_version`.
FORMAT_VERSIONS = (1, 2)
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
    # The temperature the draws of a sampled cache were taken at (None for a top-K cache, and then left out of
    # the key: top-K manifests are those of before it existed).
    temperature: float | None = None

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise GolfError(f"logit cache encoding {self.encoding!r} is unknown; use one of {', '.join(ENCODINGS)}")
        max_vocab = self.codec.max_vocab
        if not 1 <= self.vocab_size <= max_vocab:
            raise GolfError(f"logit cache encoding {self.encoding} needs 1 <= vocab_size <= {max_vocab}, got {self.vocab_size}; use encoding fp16 or a smaller vocabulary")
        if self.sampled:
            max_draws = self.codec.max_draws
            if not 1 <= self.k <= max_draws:
                raise GolfError(f"logit cache draws N={self.k} must lie in [1, {max_draws}] (a count is one byte); choose another --draws")
            if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < float("inf")):
                raise GolfError(f"logit cache temperature {self.temperature} must be a positive number; set --temperature (it must equal the students' DISTILL_TEMP)")
        else:
            if not 1 <= self.k <= self.vocab_size:
                raise GolfError(f"logit cache K={self.k} must lie in [1, vocab_size={self.vocab_size}]; choose another top-K")
            if self.temperature is not None:
                raise GolfError(f"logit cache encoding {self.encoding} stores log-probabilities at T = 1, not draws at a temperature; drop --temperature or use --encoding sampled")
        if not 1 <= self.stride <= self.window:
            raise GolfError(f"teacher window {self.window} and stride {self.stride} need 1 <= stride <= window, or some positions get no teacher output")

    @property
    def codec(self) -> Codec:
        return CODECS[self.encoding]

    @property
    def sampled(self) -> bool:
        """Whether rows are draws (K = the draws N) rather than a top-K."""
        return self.codec.value_kind == "draw_counts"

    def key(self) -> dict:
        """Everything a reader must match: the spec, the format version, the value kind and the codec's
        parameters (JSON round-tripped, so tuples and lists compare equal)."""
        d = {"version": self.codec.format_version, "value_kind": self.codec.value_kind, **asdict(self),
             _params_field(self.codec.format_version): self.codec.params}
        if self.temperature is None:
            del d["temperature"]
        return json.loads(json.dumps(d, sort_keys=True))

    def files(self, stem: str) -> list[FileLayout]:
        """(file name, dtype, columns) of the per-row data files of shard `stem` (num_tokens rows each)."""
        return self.codec.files(stem, self.k)

    def layouts(self, stem: str, num_tokens: int, entries: int | None = None) -> list[tuple[str, np.dtype, tuple]]:
        """(file name, dtype, shape) of every data file of a shard of `num_tokens` rows: the per-row files, then a
        ragged codec's offsets and entries files (`entries` rows; None: the most there can be, K per row)."""
        out = [(name, dt, (num_tokens, cols)) for name, dt, cols in self.files(stem)]
        codec = self.codec
        if codec.ragged:
            out.append((codec.offsets_file(stem), np.dtype(np.int64), (-(-num_tokens // codec.block) + 1, 1)))
            name, dt, cols = codec.entries_file(stem, self.k)
            out.append((name, dt, (num_tokens * self.k if entries is None else entries, cols)))
        return out

    def file_names(self, stem: str) -> list[str]:
        return [name for name, _, _ in self.layouts(stem, 0)]

    def shard_bytes(self, num_tokens: int) -> int:
        """Disk bytes of one shard's data files (an upper bound: headers counted generously, a ragged codec's
        rows at their widest)."""
        return sum(int(np.prod(shape)) * dt.itemsize + _HEADER_SLACK for _, dt, shape in self.layouts("shard", num_tokens))

    @classmethod
    def from_key(cls, key: dict) -> "CacheSpec":
        return cls(**{f.name: key[f.name] for f in fields(cls)})


REQUIRED_FIELDS = [f.name for f in fields(CacheSpec) if f.default is MISSING]


# The manifest holds the spec's key with the teacher's fields nested under "teacher"; the codec's parameters sit
# under "packed" in format version 1 (the one codec with parameters when it was fixed), under "codec_params" after.
def _params_field(version) -> str:
    return "packed" if version == 1 else "codec_params"


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
    for name in [f.name for f in fields(CacheSpec)] + ["version", "value_kind", _params_field(m.get("version"))]:
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


_CHECK_ROWS = 1 << 22  # rows per chunk when a reader checks a ragged shard's row lengths (a multiple of any block)


def _shard_problem(folder: str, spec: CacheSpec, shard: "_Shard") -> tuple[str, str] | None:
    """(path, what is wrong) for the first bad data file of `shard`, or None when all are whole. A ragged codec's
    entries file must hold as many rows as its offsets say."""
    codec = spec.codec
    layouts = spec.layouts(shard.stem, shard.num_tokens, entries=0)
    fixed = layouts[:-1] if codec.ragged else layouts
    for name, dt, shape in fixed:
        path = os.path.join(folder, name)
        problem = _npy_problem(path, dt, shape)
        if problem:
            return path, problem
    if not codec.ragged:
        return None
    off_path = os.path.join(folder, codec.offsets_file(shard.stem))
    offsets = np.load(off_path, mmap_mode="r")[:, 0]
    entries = int(offsets[-1])
    if offsets[0] != 0 or entries < 0 or entries > shard.num_tokens * spec.k:
        return off_path, f"offsets run from {offsets[0]} to {entries}, outside [0, {shard.num_tokens * spec.k}]"
    name, dt, shape = layouts[-1]
    path = os.path.join(folder, name)
    problem = _npy_problem(path, dt, (entries, shape[1]))
    if problem:
        return path, f"{problem} (its offsets file says {entries} entries)"
    return None


def _ragged_rows_problem(folder: str, spec: CacheSpec, shard: "_Shard") -> tuple[str, str] | None:
    """(path, what is wrong) when a whole ragged shard's offsets disagree with its row lengths in some block, or a
    row's length is not in [1, K]; reads the per-row files (1 byte per row for the sampled codec)."""
    codec = spec.codec
    off_path = os.path.join(folder, codec.offsets_file(shard.stem))
    offsets = np.load(off_path, mmap_mode="r")[:, 0]
    names = [name for name, _, _ in spec.files(shard.stem)]
    per_row = [np.load(os.path.join(folder, name), mmap_mode="r") for name in names]
    for a in range(0, shard.num_tokens, _CHECK_ROWS):
        lengths = codec.row_lengths([m[a:a + _CHECK_ROWS] for m in per_row])
        b = a // codec.block
        blocks = np.add.reduceat(lengths, np.arange(0, len(lengths), codec.block))
        if lengths.min() < 1 or lengths.max() > spec.k or (np.diff(offsets[b:b + len(blocks) + 1]) != blocks).any():
            return off_path, f"offsets disagree with the row lengths in {names[0]} (rows {a}..{a + len(lengths)})"
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
        return _shard_problem(self.dir, self.spec, s) is None

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
        names = self.spec.file_names(s.stem)
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
            names += self.spec.file_names(s.stem) + [f"{s.stem}.done"]
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


class _Entries:
    """A ragged codec's entries file being written: entries appended in row order after an .npy header that
    `finish` rewrites with the final count (numpy pads a header so its size does not depend on that count)."""

    def __init__(self, path: str, dtype: np.dtype, cols: int):
        self.path, self.dtype, self.cols, self.rows = path, dtype, cols, 0
        self.f = open(path, "wb")
        self.header = self._header()
        self.f.write(self.header)

    def _header(self) -> bytes:
        h = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.rows, self.cols)}
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, h)
        return buf.getvalue()

    def append(self, entries: np.ndarray):
        self.f.write(np.ascontiguousarray(entries, dtype=self.dtype).tobytes())
        self.rows += len(entries)

    def finish(self):
        header = self._header()
        if len(header) != len(self.header):
            raise RuntimeError(f"{self.path}: the .npy header changed size ({len(self.header)} -> {len(header)} bytes)")
        self.f.seek(0)
        self.f.write(header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.close()

    def close(self):
        self.f.close()


class ShardWriter:
    """Fills one shard's temp files chunk by chunk (rows in any order, each exactly once; in row order for a
    ragged codec, whose entries are appended), then commits them.

    Use as a context manager: leaving it without `commit()` (an exception) deletes the temp files.
    """

    def __init__(self, writer: CacheWriter, i: int):
        self.writer, self.i = writer, i
        self.shard = writer.shards[i]
        self.spec = writer.spec
        self.codec = self.spec.codec
        self.num_rows = self.shard.num_tokens
        self._spans: list[tuple[int, int]] = []
        self._temps: list[tuple[str, str]] = []  # (final path, temp path)
        self._maps: list[np.memmap] = []  # the per-row files, then a ragged codec's offsets
        self._entries: _Entries | None = None
        self.committed = False
        try:
            layouts = self.spec.layouts(self.shard.stem, self.num_rows)
            for n, (name, dt, shape) in enumerate(layouts):
                tmp = create_temp(writer._path(name))
                self._temps.append((writer._path(name), tmp))
                if self.codec.ragged and n == len(layouts) - 1:
                    self._entries = _Entries(tmp, dt, shape[1])
                else:
                    self._maps.append(np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape))
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
        self.codec.check_rows(idx, vals)
        if self.codec.ragged and row_start != (end := self._spans[-1][1] if self._spans else 0):
            raise ValueError(f"shard {self.shard.name}: a ragged encoding's rows come in order; got row {row_start}, expected {end}")
        rows = slice(row_start, row_start + m)
        arrays = self.codec.encode(idx, vals)
        for mm, data in zip(self._maps, arrays[:len(self.spec.files(self.shard.stem))]):
            mm[rows] = data
        if self.codec.ragged:
            self._offsets(row_start, self.codec.row_lengths(arrays[:-1]))
            self._entries.append(arrays[-1])
        self._spans.append((row_start, row_start + m))

    def _offsets(self, row_start: int, lengths: np.ndarray):
        """Record the first entry of every block that starts among these rows (the entries so far come before)."""
        block = self.codec.block
        first = -(-row_start // block) * block  # the first block start at or after row_start
        starts = np.arange(first, row_start + len(lengths), block)
        before = np.concatenate([[0], np.cumsum(lengths)])
        self._maps[-1][starts // block, 0] = self._entries.rows + before[starts - row_start]

    def commit(self):
        """Make the shard durable and mark it complete (see the module docstring for the order of steps)."""
        end = 0
        for a, b in sorted(self._spans):
            if a != end:
                raise ValueError(f"shard {self.shard.name}: rows [{min(a, end)}, {max(a, end)}) written {'twice' if a < end else 'never'}")
            end = b
        if end != self.num_rows:
            raise ValueError(f"shard {self.shard.name}: rows [{end}, {self.num_rows}) never written")
        if self._entries is not None:
            self._maps[-1][-1, 0] = self._entries.rows  # the offsets end with the number of entries
            self._entries.finish()
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
        if self._entries is not None:
            self._entries.close()
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
        if m.get("version") not in FORMAT_VERSIONS:
            raise GolfError(f"{path}: cache format version {m.get('version')}, this code reads {', '.join(map(str, FORMAT_VERSIONS))}; rebuild it with this cache_logits.py")
        key = _key_of_manifest(m)
        missing = [name for name in REQUIRED_FIELDS if key[name] is None]
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
            bad = _shard_problem(d, self.spec, s)
            if bad:
                raise GolfError(f"{bad[0]}: {bad[1]}; {redo}")
            bad = self.spec.codec.ragged and _ragged_rows_problem(d, self.spec, s)
            if bad:  # whole files that disagree: the writer counts the shard complete until its sidecar goes
                raise GolfError(f"{bad[0]}: {bad[1]}; delete {os.path.join(d, s.stem)}.done and {redo}")
            self._maps.append([np.load(os.path.join(d, name), mmap_mode="r") for name in self.spec.file_names(s.stem)])

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
        """(rows of the data files, destination slice) for each segment, after checking it. For a ragged codec:
        the per-row files' rows, then the rows' entries (one contiguous slice of the entries file)."""
        if sum(length for _, _, length in segments) != n:
            raise ValueError(f"segments hold {sum(length for _, _, length in segments)} rows, the outputs {n}")
        codec, per_row = self.spec.codec, len(self.spec.files(""))
        pos = 0
        for shard, offset, length in segments:
            if not 0 <= shard < self.num_shards:
                raise GolfError(f"the run reached train shard {shard} but logit cache {self.dir} covers only {self.num_shards} shards; cache more shards with cache_logits.py or set RESTRICT_TO_CACHE=1")
            if not 0 <= offset <= offset + length <= self.shards[shard].num_tokens:
                raise ValueError(f"rows [{offset}, {offset + length}) outside shard {self.shards[shard].name} ({self.shards[shard].num_tokens} rows)")
            maps = self._maps[shard]
            arrays = [m[offset:offset + length] for m in maps[:per_row]]
            if codec.ragged:  # the entries of rows [offset, offset + length): from their block's first entry on
                b = offset // codec.block * codec.block
                first = int(maps[per_row][offset // codec.block, 0])
                first += int(codec.row_lengths([m[b:offset] for m in maps[:per_row]]).sum())
                arrays.append(maps[per_row + 1][first:first + int(codec.row_lengths(arrays).sum())])
            yield arrays, slice(pos, pos + length)
            pos += length

    def _expect(self, sampled: bool, what: str):
        """Refuse a read that assumes the other kind of rows (a top-K read of a sampled cache or the reverse)."""
        if self.spec.sampled != sampled:
            has = "sampled draws" if self.spec.sampled else "top-K log-probabilities"
            raise GolfError(f"logit cache {self.dir} holds {has} (encoding {self.spec.encoding}) but {what} needs "
                            f"{'sampled draws' if sampled else 'top-K log-probabilities'}; point LOGIT_CACHE at a cache made "
                            f"with cache_logits.py --encoding {'sampled or sampled-packed' if sampled else 'fp16 or packed'}")

    def gather(self, segments, out_idx: np.ndarray | None = None, out_vals: np.ndarray | None = None):
        """Rows for `segments` = [(shard_index, offset, length), ...], concatenated in order (a top-K cache).

        Returns (ids int64 [n, K], log-probs float32 [n, K]); pass `out_idx`/`out_vals` (e.g. numpy views of
        pinned tensors, any integer/float dtype that holds the values) to fill them instead of allocating.
        """
        self._expect(False, "reading top-K rows")
        n = sum(length for _, _, length in segments)
        out_idx = np.empty((n, self.k), dtype=np.int64) if out_idx is None else out_idx
        out_vals = np.empty((n, self.k), dtype=np.float32) if out_vals is None else out_vals
        if out_idx.shape != (n, self.k) or out_vals.shape != (n, self.k):
            raise ValueError(f"outputs have shapes {out_idx.shape} and {out_vals.shape}, expected ({n}, {self.k})")
        for arrays, dst in self._rows(segments, n):
            self.spec.codec.decode(arrays, self.k, out_idx[dst], out_vals[dst])
        return out_idx, out_vals

    def width(self, segments) -> int:
        """The most entries a row of `segments` has (for a ragged codec; K, the most there can be, for the others)."""
        if not self.spec.codec.ragged:
            return self.k
        codec, per_row = self.spec.codec, len(self.spec.files(""))
        return max((int(codec.row_lengths(arrays[:per_row]).max()) for arrays, _ in
                    self._rows(segments, sum(n for _, _, n in segments)) if len(arrays[0])), default=0)

    def gather_sampled(self, segments, id_dtype=np.int64, count_dtype=np.uint8):
        """Rows for `segments` of a sampled cache, concatenated in order: (distinct ids [n, M], draw counts [n, M]),
        M the widest row's distinct ids, the most drawn first, padding with id 0 and count 0 (golf.teachers.Sampled)."""
        self._expect(True, "reading sampled rows")
        n = sum(length for _, _, length in segments)
        m = self.width(segments)
        ids, counts = np.empty((n, m), dtype=id_dtype), np.empty((n, m), dtype=count_dtype)
        for arrays, dst in self._rows(segments, n):
            self.spec.codec.decode(arrays, self.k, ids[dst], counts[dst])
        widest = int((counts > 0).sum(axis=1).max(initial=0))
        if widest < m:  # a fixed-width codec's rows were decoded N wide
            ids, counts = np.ascontiguousarray(ids[:, :widest]), np.ascontiguousarray(counts[:, :widest])
        return ids, counts

    def gather_ids(self, segments, out_idx: np.ndarray) -> np.ndarray:
        """Only the first out_idx.shape[1] ids of the rows for `segments` (the teacher's top-1 for a hard label; a
        sampled cache's most drawn id, with -1 past the end of a shorter row), decoded without touching the
        values."""
        if not 1 <= out_idx.shape[1] <= self.k:
            raise ValueError(f"asked for {out_idx.shape[1]} id columns of a top-{self.k} cache")
        for arrays, dst in self._rows(segments, out_idx.shape[0]):
            self.spec.codec.decode_ids(arrays, self.k, out_idx[dst])
        return out_idx
