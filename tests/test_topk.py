"""golf/topk.py and its C kernel golf/topk.c: the logit cache's CPU top-K against a float64 sort.

Run: python -m pytest tests/test_topk.py -q
"""
import pytest
import torch

from golf import topk
from helpers import edge_rows


@pytest.fixture(scope="module")
def kernel():
    fn = topk.load_kernel()
    if fn is None:
        pytest.skip("no C compiler here: golf/topk.c cannot be built (the torch fallback is tested below)")
    return fn


def reference_ids(logp: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest by a float64 stable sort: exact ties in id order."""
    return torch.sort(-logp.double(), dim=-1, stable=True).indices[:, :k]


@pytest.mark.parametrize("v,k", [(1024, 32), (300, 32), (50, 32), (32, 32), (1000, 1), (7, 3), (1025, 32)])
def test_kernel_selects_the_float64_top_k_with_ties_in_id_order(kernel, v, k):
    logp = edge_rows(v, k, seed=v + k)
    assert torch.equal(topk.native_topk_ids(logp, k, kernel, threads=1), reference_ids(logp, k))


def test_kernel_row_blocks_on_threads_match_one_thread(kernel):
    logp = torch.cat([edge_rows(1024, 32, seed=s) for s in range(70)])  # 840 rows: blocks of 280 on 3 threads
    one = topk.native_topk_ids(logp, 32, kernel, threads=1)
    assert torch.equal(topk.native_topk_ids(logp, 32, kernel, threads=3), one)
    assert torch.equal(one, reference_ids(logp, 32))


def test_kernel_rejects_what_it_cannot_read(kernel):
    with pytest.raises(ValueError, match="top-33 of rows of 32"):
        topk.native_topk_ids(torch.zeros(2, 32), 33, kernel)
    with pytest.raises(ValueError, match="CPU float32"):
        topk.native_topk_ids(torch.zeros(2, 32, dtype=torch.float64), 4, kernel)  # the kernel reads 4-byte floats


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_topk_logprobs_values_and_ids_on_batches(backend, request, monkeypatch):
    kernel = request.getfixturevalue("kernel") if backend == "kernel" else None
    monkeypatch.setattr(topk, "_native", lambda: kernel)
    logp = edge_rows(300, 32).view(3, 4, 300)
    vals, idx = topk.topk_logprobs(logp, 32)
    ref = reference_ids(logp.view(12, 300), 32).view(3, 4, 32)
    assert torch.equal(vals, logp.gather(-1, ref))  # sorted descending, the float32 values themselves
    assert torch.equal(logp.gather(-1, idx), vals)  # the ids hold them (torch orders exact ties its own way)
    assert all(len(set(row.tolist())) == 32 for row in idx.view(12, 32))
    if backend == "kernel":
        assert torch.equal(idx, ref)
