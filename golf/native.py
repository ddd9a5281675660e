"""The project's C kernels for the CPU (golf/topk.c: the logit cache's top-K; golf/count.c: the count teacher's
sparse part and loss), built with the system C compiler on first use into a per-user cache and called through
ctypes, which releases the GIL. Each kernel has a torch form beside it, which CUDA runs, and the CPU runs
without a compiler or with GOLF_NATIVE=0 (or any false spelling the settings take); tests hold the two to the
same float64 references."""
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from golf.atomic import atomic_path
from golf.errors import BOOL_SPELLINGS, GolfError, parse_bool

MIN_ROWS_PER_THREAD = 256  # below this a thread hand-off costs more than it saves

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
# Each C source's functions and their argument types (each returns int: 0, or an error code).
SIGNATURES = {
    "topk.c": {"topk_rows": [_P, _I, _I, _I, _P]},
    "count.c": {"count_lookups": [_I, _I, _I, ctypes.c_int] + [_P] * 17,
                "count_terms": [_I, _I, _I, ctypes.c_int] + [_P] * 21,
                "count_fill": [_I, _I] + [_P] * 8 + [_I] + [_P] * 5,
                "count_dots": [_I, _I, _P, ctypes.c_int, _P, _I] + [_P] * 2 + [_I] + [_P] * 3 + [_I, _P, _P],
                "count_grad": [_I, _I, _P, _P, _F, _P, _P, _I] + [_P] * 2 + [_I] + [_P] * 3
                + [_I, ctypes.c_int, _P, _P]},
}
FALLBACKS = {"topk.c": "the logit cache uses torch's slower CPU top-K",
             "count.c": "the count teacher's query and loss use their slower torch forms"}

_libraries: dict[str, object] = {}  # source name -> ctypes library, or False once building it failed
_pool = None


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "distill-golf"


def compile_flags() -> list[str]:
    # AVX2 when torch found it at run time; the library's name hashes the flags, so machines sharing a home
    # folder never load each other's builds. No contraction into fused multiply-adds: a kernel's float32
    # arithmetic is then the torch form's, operation for operation.
    vector = ["-mavx2"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else []
    return ["-O3", *vector, "-ffp-contract=off", "-shared", "-fPIC"]


def build(source: Path, compiler: str | None = None) -> Path:
    """Compile `source` unless this source, compiler and flags were built before; returns the library.
    The library appears atomically (golf.atomic), so ranks that build at once each load a whole file."""
    cc = shutil.which(compiler or os.environ.get("CC", "cc"))
    if cc is None:
        raise OSError(f"no C compiler {compiler or os.environ.get('CC', 'cc')!r} on PATH")
    flags = compile_flags()
    tag = hashlib.sha256(source.read_bytes() + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    lib = cache_dir() / f"{source.stem}-{tag}.so"
    if not lib.exists():
        with atomic_path(lib) as tmp:
            done = subprocess.run([cc, *flags, "-o", tmp, str(source)], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise OSError(f"{cc} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    return lib


def load(name: str, compiler: str | None = None, source: Path | None = None):
    """The library built from golf/`name` (or `source`) with its functions' argument types set (SIGNATURES), or
    None with one line on stderr saying why and what runs instead."""
    source = source or Path(__file__).with_name(name)
    try:
        lib = ctypes.CDLL(str(build(source, compiler)))
        for function, argtypes in SIGNATURES[name].items():
            fn = getattr(lib, function)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
    except (OSError, AttributeError, subprocess.SubprocessError, GolfError) as e:
        print(f"note: golf/{name} not built ({e}); {FALLBACKS[name]}", file=sys.stderr)
        return None
    return lib


def enabled() -> bool:
    """GOLF_NATIVE (default on): whether the CPU may use the C kernels."""
    raw = os.environ.get("GOLF_NATIVE", "1")
    wanted = parse_bool(raw)
    if wanted is None:
        raise GolfError(f"GOLF_NATIVE={raw!r} is not a valid bool (use {BOOL_SPELLINGS}); fix or unset it")
    return wanted


def library(name: str):
    """`load`'s library of golf/`name`, built once per process; None where GOLF_NATIVE is off or building failed."""
    if name not in _libraries:
        _libraries[name] = (enabled() and load(name)) or False
    return _libraries[name] or None


def row_blocks(rows: int, threads: int | None = None) -> list[tuple[int, int]]:
    """[start, end) row ranges, one per thread: torch's thread count unless `threads`, each at least
    MIN_ROWS_PER_THREAD rows."""
    threads = max(1, min(threads or torch.get_num_threads(), rows // MIN_ROWS_PER_THREAD))
    step = -(-rows // threads) if rows else 1
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def run_blocks(fn, args_per_block: list[tuple], name: str):
    """fn(*args) for each block, the first on this thread and the others on a shared pool; a non-zero return
    is taken as out of memory."""
    others = []
    if len(args_per_block) > 1:
        global _pool
        if _pool is None:  # threads start on demand, up to one per core
            _pool = ThreadPoolExecutor(os.cpu_count(), thread_name_prefix="golf-native")
        others = [_pool.submit(fn, *args) for args in args_per_block[1:]]
    codes = [fn(*args_per_block[0])] + [f.result() for f in others] if args_per_block else []
    if any(codes):
        raise MemoryError(f"{name}: out of memory")
