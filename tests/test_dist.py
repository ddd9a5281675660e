"""Process setup on a machine without CUDA: the CUDA branches of golf/dist.py that can be reached here."""
import pytest
import torch

from golf.dist import compile_enabled, init_dist
from golf.errors import GolfError


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_refused():
    with pytest.raises(GolfError, match="DEVICE=cuda but no CUDA device is visible"):
        init_dist("cuda", "fp32")


def test_the_compile_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [compile_enabled(s, cuda) for s in ("auto", "1", "0")] == [True, True, False]
    assert [compile_enabled(s, cpu) for s in ("auto", "1", "0")] == [False, True, False]  # a CPU compile costs 20+ s
