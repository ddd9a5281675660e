"""Process setup: torchrun or plain python, CUDA (NCCL) or CPU (gloo), one code path."""
import contextlib
import ctypes
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from golf.errors import GolfError


@dataclass
class Ctx:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16 autocast where configured, else a no-op context."""
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def compile_enabled(compile_setting: str, device: torch.device) -> bool:
    """The one rule for torch.compile (COMPILE): on for CUDA under auto, always with 1, never with 0. On CPU a
    cold compile costs 20+ s for a few percent (docs), hence off by default there."""
    return compile_setting == "1" or (compile_setting == "auto" and device.type == "cuda")


def maybe_compile(module, compile_setting: str, device: torch.device):
    """`module` compiled with static shapes when `compile_enabled`, else `module` itself.

    GOLF_COMPILE_BACKEND (default inductor) picks torch.compile's backend, for tests: which graphs are compiled,
    and when, is Dynamo's decision and the same under `aot_eager`, which skips inductor's C++ code generation
    (tens of seconds per graph on a small CPU)."""
    if not compile_enabled(compile_setting, device):
        return module
    return torch.compile(module, dynamic=False, backend=os.environ.get("GOLF_COMPILE_BACKEND", "inductor"))


class CompileWatch:
    """Counts torch.compile compilations while open: every Dynamo graph (a first compile or a recompile after a
    guard failed) and every backward graph compiled lazily at its first backward, through Dynamo's compile-start
    callbacks. Reading `count` costs nothing, so the training loop compares it around each timed step and logs
    any compile that lands inside the budget (the study's defect D4) instead of silently paying for it."""

    def __init__(self):
        from torch._dynamo.callback import callback_handler  # imported here: only compiled runs pay for dynamo

        self.count, self.ids = 0, []
        self._handler = callback_handler
        self._handler.register_start_callback(self._on_start)

    def _on_start(self, args=None):
        self.count += 1
        self.ids.append(str(getattr(args, "compile_id", "?")))

    def since(self, count: int) -> list[str]:
        """The compile ids started after `count` compiles had been seen."""
        return self.ids[count:]

    def close(self):
        self._handler.remove_start_callback(self._on_start)


def init_dist(device: str = "auto", dtype: str = "auto") -> Ctx:
    """Read torchrun's environment (or default to one process), pick the device and start the process group."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise GolfError("DEVICE=cuda but no CUDA device is visible; use DEVICE=cpu or auto")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
        keep_freed_memory()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" or cpu_has_bf16() else "fp32"
    return Ctx(rank, local_rank, world, dev, torch.bfloat16 if dtype == "bf16" else None)


def cpu_has_bf16() -> bool:
    """True if this CPU has native bf16 matmul instructions (AVX512-BF16 or AMX): there bf16 autocast trains
    ~2x faster at the same quality; without them it would be much slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MB for reuse instead of handing them back to the kernel.

    A CPU training step allocates and frees the same large tensors every step (an N x V float32 softmax is
    16 MB at 4,096 tokens x 1,024). By default glibc serves blocks above a moving threshold with a fresh mmap
    and trims its heap when the top is free, so each step page-faults and zeroes that memory again: on the
    demo student this cost as much as the loss's arithmetic (docs/performance.md). Fixing both thresholds
    keeps such blocks in the heap, as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment would.
    Returns False (and changes nothing) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def cleanup():
    """Tear the process group down together: without a barrier, a rank that exits first can make a slower one
    abort inside gloo's teardown (SIGABRT seen with 8 CPU ranks after a finished run). Bounded, so a rank whose
    peers died on an error does not wait for them."""
    if dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a peer is gone: nothing left to synchronise with
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                dist.barrier()
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce when distributed; a no-op otherwise."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def any_rank(flag: bool, device) -> bool:
    """True on every rank if `flag` is true on any rank (so all ranks take the same branch)."""
    t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
    return bool(all_reduce(t, dist.ReduceOp.MAX).item())
