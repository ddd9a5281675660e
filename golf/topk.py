"""Top-K of float32 log-probabilities along the last dim, for the logit cache.

CUDA: torch.topk. CPU: golf/topk.c, built with the system C compiler on first use into a per-user cache and
called through ctypes (which releases the GIL) on torch's threads' worth of row blocks: at K=32, V=1024
0.33-0.51x the time of torch.topk and 0.40-0.61x that of the fallback (bench/cache_write.py's one-batch
breakdown; docs/performance.md); exact ties keep the lower id first. Without a compiler, or with
GOLF_NATIVE_TOPK=0 (or any false spelling the settings take): torch's top-K on integer keys (exact ties in
torch's order)."""
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

SOURCE = Path(__file__).with_name("topk.c")
MIN_ROWS_PER_THREAD = 256  # below this a thread hand-off costs more than it saves

_kernel = None  # ctypes function, False once building failed, None before the first call
_pool = None


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "distill-golf"


def compile_flags() -> list[str]:
    # AVX2 when torch found it at run time; the library's name hashes the flags, so machines sharing a home
    # folder never load each other's builds.
    vector = ["-mavx2"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else []
    return ["-O3", *vector, "-shared", "-fPIC"]


def build(compiler: str | None = None) -> Path:
    """Compile golf/topk.c unless this source, compiler and flags were built before; returns the library.
    The library appears atomically (golf.atomic), so ranks that build at once each load a whole file."""
    cc = shutil.which(compiler or os.environ.get("CC", "cc"))
    if cc is None:
        raise OSError(f"no C compiler {compiler or os.environ.get('CC', 'cc')!r} on PATH")
    flags = compile_flags()
    tag = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    lib = cache_dir() / f"topk-{tag}.so"
    if not lib.exists():
        with atomic_path(lib) as tmp:
            done = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise OSError(f"{cc} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    return lib


def load_kernel(compiler: str | None = None):
    """The C kernel's topk_rows, or None (with one line on stderr saying why) when it cannot be built."""
    try:
        fn = ctypes.CDLL(str(build(compiler))).topk_rows
    except (OSError, subprocess.SubprocessError, GolfError) as e:
        print(f"note: golf/topk.c not built ({e}); the logit cache uses torch's slower CPU top-K", file=sys.stderr)
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _native():
    global _kernel
    if _kernel is None:
        raw = os.environ.get("GOLF_NATIVE_TOPK", "1")
        wanted = parse_bool(raw)
        if wanted is None:
            raise GolfError(f"GOLF_NATIVE_TOPK={raw!r} is not a valid bool (use {BOOL_SPELLINGS}); fix or unset it")
        _kernel = (wanted and load_kernel()) or False
    return _kernel or None


def cpu_backend() -> str:
    """What topk_logprobs runs on CPU in this process."""
    return "golf/topk.c" if _native() else "torch.topk on integer keys"


def native_topk_ids(logp: torch.Tensor, k: int, kernel, threads: int | None = None) -> torch.Tensor:
    """(N, V) float32 log-probs -> (N, K) int64 ids of each row's K largest, largest first, by the C kernel."""
    n, v = logp.shape
    if not 1 <= k <= v or logp.dtype != torch.float32 or logp.is_cuda:
        raise ValueError(f"top-{k} of rows of {v} {logp.dtype} on {logp.device}: needs 1 <= K <= V, CPU float32")
    logp = logp.contiguous()
    out = torch.empty(n, k, dtype=torch.int64)
    threads = max(1, min(threads or torch.get_num_threads(), n // MIN_ROWS_PER_THREAD))
    step = -(-n // threads)
    blocks = [(logp[a:a + step].data_ptr(), min(step, n - a), v, k, out[a:a + step].data_ptr())
              for a in range(0, n, step)]
    others = []
    if len(blocks) > 1:
        global _pool
        if _pool is None:  # threads start on demand, up to one per core
            _pool = ThreadPoolExecutor(os.cpu_count(), thread_name_prefix="golf-topk")
        others = [_pool.submit(kernel, *b) for b in blocks[1:]]
    codes = [kernel(*blocks[0])] + [f.result() for f in others]  # this thread takes a block too
    if any(codes):
        raise MemoryError("golf/topk.c: out of memory")
    return out


def torch_topk_ids(logp: torch.Tensor, k: int) -> torch.Tensor:
    """torch's CPU top-K on the float32 bits without the sign (smaller key = larger log-prob, -inf last):
    0.77-0.87x the time of the float32 top-K."""
    return (logp.view(torch.int32) & 0x7FFFFFFF).topk(k, dim=-1, largest=False, sorted=True).indices


def topk_logprobs(logp: torch.Tensor, k: int):
    """(values, ids) of the k largest float32 log-probabilities (all <= 0) along the last dim, sorted
    descending; the values are gathered from logp."""
    if logp.is_cuda:
        return logp.topk(k, dim=-1, sorted=True)
    kernel = _native()
    if kernel is None:
        idx = torch_topk_ids(logp, k)
    else:
        idx = native_topk_ids(logp.reshape(-1, logp.shape[-1]), k, kernel).view(*logp.shape[:-1], k)
    return logp.gather(-1, idx), idx
