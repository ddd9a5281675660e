"""Top-K of float32 log-probabilities along the last dim, for the logit cache.

CUDA: torch.topk. CPU: golf/topk.c (golf.native) on torch's threads' worth of row blocks: at K=32, V=1024
0.33-0.51x the time of torch.topk and 0.40-0.61x that of the fallback (bench/cache_write.py's one-batch
breakdown; docs/performance.md); exact ties keep the lower id first. Without a compiler, or with GOLF_NATIVE=0
(golf.native): torch's top-K on integer keys (exact ties in torch's order)."""
import torch

from golf import native


def load_kernel(compiler: str | None = None):
    """The C kernel's topk_rows, or None (with one line on stderr saying why) when it cannot be built."""
    lib = native.load("topk.c", compiler)
    return lib and lib.topk_rows


def _native():
    lib = native.library("topk.c")
    return lib and lib.topk_rows


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
    native.run_blocks(kernel, [(logp[a].data_ptr(), b - a, v, k, out[a].data_ptr())
                               for a, b in native.row_blocks(n, threads)], "golf/topk.c")
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
