"""The seed-faithful wrappers (golf/seed_faithful.py): D1 divides exactly the KL term and nothing else, and
wraps only soft targets. D2's cursor is tested with the alignment machinery in tests/test_distill.py.

Run: python -m pytest tests/test_seed_faithful.py -q
"""
import types

import pytest
import torch

from golf import seed_faithful
from golf.config import Config
from golf.data import Batch
from golf.objectives import distill_objective
from golf.teachers import TopK


def _batch_and_logits(n=64, v=256, k=16, seed=6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, n // 2, v, generator=g) * 2
    y = torch.randint(0, v, (2, n // 2), generator=g)
    vals, idx = torch.log_softmax(torch.randn(n, v, generator=g) * 3, -1).topk(k, dim=-1)
    batch = Batch(x=torch.zeros(2, n // 2, dtype=torch.long), y=y, segments=[], teacher=TopK(idx.short(), vals.half()))
    return batch, (lambda x: z)


def test_d1_divides_the_kl_term_exactly_and_keeps_the_parts():
    cfg = Config(distill_alpha=0.1, distill_temp=2.0, train_seq_len=2048)
    batch, model = _batch_and_logits()
    plain = distill_objective(cfg, teacher=None)
    faithful = seed_faithful.wrap_objective(cfg, plain)
    loss, parts = plain(model, batch)
    loss_sf, parts_sf = faithful(model, batch)
    assert torch.equal(parts["kl"], parts_sf["kl"]) and torch.equal(parts["ce"], parts_sf["ce"])
    ce, kl = parts["ce"].double().item(), parts["kl"].double().item()  # loss = (1 - a) CE + a T^2 KL (/ 2048)
    assert loss.item() == pytest.approx(0.9 * ce + 0.4 * kl, rel=1e-6)
    assert loss_sf.item() == pytest.approx(0.9 * ce + 0.4 * kl / 2048, rel=1e-6)
    assert faithful.parts == plain.parts and faithful.teacher is plain.teacher


def test_d1_leaves_a_hard_target_alone():
    cfg = Config(distill_target="hard")
    plain = distill_objective(cfg, teacher=None)
    assert seed_faithful.wrap_objective(cfg, plain) is plain


def test_the_log_line_names_the_defects_the_arm_has():
    soft_cache = seed_faithful.describe(Config(distill_target="soft", distill_teacher="cache"))
    hard_cache = seed_faithful.describe(Config(distill_target="hard", distill_teacher="cache"))
    assert "(D1)" in soft_cache and "(D2)" in soft_cache
    assert "(D1)" not in hard_cache and "(D2)" in hard_cache
    assert "(D2)" not in seed_faithful.describe(types.SimpleNamespace(distill_target="soft", distill_teacher="online"))
