"""Muon and the schedules against hand-computed values (fact sheet section 4)."""
import pytest
import torch

from golf.config import PRESETS, Config
from golf.optim import Muon, lr_scale, muon_momentum, newton_schulz5


@pytest.mark.parametrize("shape", [(64, 64), (64, 192), (192, 64), (128, 512)])
def test_newton_schulz_singular_values_near_one(shape):
    torch.manual_seed(0)
    # A gradient-like matrix with singular values spread over 1.5 decades and a large overall scale.
    u, _, vh = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
    s0 = torch.logspace(0, -1.5, min(shape))
    g = 37.0 * u @ torch.diag(s0) @ vh
    s = torch.linalg.svdvals(newton_schulz5(g, 5))
    assert s.min() > 0.6 and s.max() < 1.25  # the quintic's known band (it trades exactness for speed)


def assert_close_to_bf16_update(got, expect, lr=0.1):
    # The update travels in bf16 (as in the study): a last-bit difference in the fp32 Newton-Schulz can flip
    # one bf16 rounding, i.e. lr * 2^-8 at most; nearly every entry must match exactly.
    diff = (got - expect).abs()
    assert diff.max() <= lr * 2 ** -8 and (diff < 1e-6).float().mean() > 0.99


def test_muon_step_by_hand():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 128))
    p0 = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.9, backend_steps=5, weight_decay=0.02)
    g1, g2 = torch.randn(64, 128), torch.randn(64, 128)
    p.grad = g1.clone()
    opt.step()
    buf = g1.clone()
    expect = p0 * (1 - 0.1 * 0.02) - 0.1 * newton_schulz5(g1 + 0.9 * buf, 5).to(torch.bfloat16).float()
    assert_close_to_bf16_update(p.detach(), expect)
    p.grad = g2.clone()
    opt.step()
    buf = 0.9 * buf + g2
    expect = expect * (1 - 0.1 * 0.02) - 0.1 * newton_schulz5(g2 + 0.9 * buf, 5).to(torch.bfloat16).float()
    assert_close_to_bf16_update(p.detach(), expect)


def test_muon_scales_tall_matrices():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(192, 64))
    opt = Muon([p], lr=1.0, momentum=0.0, backend_steps=5, weight_decay=0.0)
    g = torch.randn(192, 64)
    p.grad = g
    opt.step()
    expect = -(newton_schulz5(g, 5) * 3 ** 0.5).to(torch.bfloat16).float()
    assert_close_to_bf16_update(p.detach(), expect, lr=2.0)


def test_wallclock_warmdown_matches_the_study_log():
    cfg = Config()  # 600 s, WARMDOWN_ITERS=1600, 200,000 iterations
    # the study's soft alpha=0.1 run: first step took 9,579 ms -> "late_qat:enabled step:1 scale:0.0385"
    assert round(lr_scale(cfg, 1, 9579.0), 4) == 0.0385
    assert lr_scale(cfg, 1000, 100_000.0) == 1.0
    # 3,000 steps at 150 ms: 150,000 ms left of a 240,000 ms warm-down -> 0.625
    assert lr_scale(cfg, 3000, 450_000.0) == pytest.approx(0.625)
    assert lr_scale(cfg, 4000, 600_000.0) == 0.0


def test_iteration_warmdown_and_momentum():
    cfg = Config(**{**PRESETS["test"], "iterations": 100, "warmdown_iters": 20})
    assert lr_scale(cfg, 79, 0) == 1.0
    assert lr_scale(cfg, 80, 0) == pytest.approx(1.0)
    assert lr_scale(cfg, 90, 0) == pytest.approx(0.5)
    cfg = Config()
    assert muon_momentum(cfg, 0) == pytest.approx(0.85)
    assert muon_momentum(cfg, 250) == pytest.approx(0.90)
    assert muon_momentum(cfg, 10_000) == pytest.approx(0.95)
