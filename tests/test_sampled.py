"""Sampled targets (Anshumann et al. 2025): the loss against float64 brute force, the draws and the gradient
unbiased (their mean over many seeds converges to the exact soft KL's, within a bound derived from N and the
seed count), padding and masked rows inert, and DISTILL_DRAWS end to end (config, online teacher, distill.py).

Run: python -m pytest tests/test_sampled.py -q
"""
import dataclasses
import re
import types

import pytest
import torch

from golf.config import resolve_config
from golf.data import DistributedTokenLoader
from golf.errors import GolfError
from golf.log import Logger
from golf.losses import MAX_DRAWS, distill_loss, distill_terms, full_kl, sample_targets
from golf.model import GPT
from golf.objectives import SamplingTeacher, build_objective
from golf.signals import Sampled
from golf.teachers import OnlineTeacher
from golf.train import train
from helpers import cpu_ctx, dataset_env, make_config, run_inputs, run_script
from test_losses import DEVICES, assert_close_rel, value_and_grad

# Sigmas of the convergence bounds: a correct estimator fails one coordinate of a few thousand at 6 sigma with
# probability ~1e-5; a biased one (e.g. counts not normalised, or tempered twice) misses by tens of sigmas.
SIGMAS = 6.0


pytestmark = pytest.mark.usefixtures("one_thread")


def dense(ids, counts, v):
    """(n, V) float64 empirical distribution counts / N from (ids, counts) rows (repeated ids accumulate)."""
    c = counts.double()
    return torch.zeros(ids.shape[0], v, dtype=torch.float64).scatter_add(-1, ids.long(), c) / c.sum(-1, keepdim=True)


def ref_sampled_kl(z, p_hat, temperature):
    """Mean over rows of KL(p_hat || softmax(z / T)) by definition, 0 log 0 = 0 (float64)."""
    logq = torch.log_softmax(z / temperature, -1)
    return torch.where(p_hat > 0, p_hat * (torch.log(p_hat) - logq), torch.zeros_like(p_hat)).sum(-1).mean()


def hand_rows():
    """Two rows of V = 7 with padding (count 0) both at a repeated id and at an id that was never drawn."""
    ids = torch.tensor([[4, 1, 6, 6, 0], [2, 2, 5, 3, 3]])
    counts = torch.tensor([[3, 9, 4, 0, 0], [0, 1, 10, 5, 0]])
    return ids, counts


# ---- the loss ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0])  # T = 1, 2 and any other T take different student paths
def test_sampled_loss_matches_brute_force_on_hand_built_rows(temperature, device):
    ids, counts = hand_rows()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 7, generator=g) * 3
    y = torch.tensor([3, 0])
    p_hat = dense(ids, counts, 7)
    torch.testing.assert_close(p_hat[0], torch.tensor([0, 9, 0, 0, 3, 0, 4], dtype=torch.float64) / 16)
    a = 0.3

    def ours(x):
        return distill_loss(x, y.to(x.device), alpha=a, mode="soft", temperature=temperature,
                            sample_ids=ids.to(x.device), sample_counts=counts.to(x.device))

    def ref(x):
        ce = torch.nn.functional.cross_entropy(x, y)
        return (1 - a) * ce + a * temperature**2 * ref_sampled_kl(x, p_hat, temperature)

    val, grad = value_and_grad(ours, z, device)
    ref_val, ref_grad = value_and_grad(ref, z.double())
    assert val.item() == pytest.approx(ref_val.item(), rel=1e-6)
    assert_close_rel(grad, ref_grad, 1e-6)
    parts = ours(z)[1]
    assert parts["kl"].item() == pytest.approx(ref_sampled_kl(z.double(), p_hat, temperature).item(), rel=1e-6)
    # The gradient is the sampled cross-entropy's: (1/T) (q_T - p_hat) per row, a mean over rows.
    _, g_kl = value_and_grad(lambda x: distill_terms(x, y, mode="soft", temperature=temperature, sample_ids=ids,
                                                     sample_counts=counts)[1], z)
    expect = (torch.softmax(z.double() / temperature, -1) - p_hat) / (temperature * 2)
    assert_close_rel(g_kl, expect, 1e-6)


def test_padding_and_masked_rows_contribute_nothing():
    ids, counts = hand_rows()
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(3, 7, generator=g), torch.tensor([1, 2, 3])
    kw = dict(mode="soft", temperature=2.0)
    base = distill_terms(z[:2], y[:2], sample_ids=ids, sample_counts=counts, **kw)[1]
    # Wider padding with other arbitrary ids: the same value and gradient.
    wide_ids = torch.cat([ids, torch.tensor([[6, 5, 0], [0, 0, 1]])], -1)
    wide_counts = torch.cat([counts, torch.zeros(2, 3, dtype=counts.dtype)], -1)
    v_wide, g_wide = value_and_grad(lambda x: distill_terms(x, y[:2], sample_ids=wide_ids, sample_counts=wide_counts,
                                                            **kw)[1], z[:2])
    v_base, g_base = value_and_grad(lambda x: distill_terms(x, y[:2], sample_ids=ids, sample_counts=counts, **kw)[1],
                                    z[:2])
    torch.testing.assert_close(v_wide, base)
    torch.testing.assert_close(g_wide, g_base)
    # A third row masked out (garbage ids, no draws at all): no term, no gradient, the others unchanged.
    ids3 = torch.cat([ids, torch.tensor([[6, 6, 6, 6, 6]])])
    counts3 = torch.cat([counts, torch.zeros(1, 5, dtype=counts.dtype)])
    valid = torch.tensor([True, True, False])
    val, grad = value_and_grad(lambda x: distill_terms(x, y, sample_ids=ids3, sample_counts=counts3,
                                                       teacher_valid=valid, **kw)[1], z)
    torch.testing.assert_close(val, base)
    torch.testing.assert_close(grad[:2], g_base)
    assert grad[2].abs().max() == 0
    ce = distill_terms(z, y, sample_ids=ids3, sample_counts=counts3, teacher_valid=valid, **kw)[0]
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(z, y))  # CE covers every row


def test_sampled_targets_are_soft_only():
    ids, counts = hand_rows()
    with pytest.raises(ValueError, match="soft targets"):
        distill_terms(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long), mode="hard", sample_ids=ids,
                      sample_counts=counts)
    with pytest.raises(ValueError, match="draws"):
        sample_targets(torch.zeros(2, 7), MAX_DRAWS + 1, 1.0)


# ---- the draws and unbiasedness -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_sample_targets_layout_and_reproducibility(device):
    t = (torch.randn(64, 40, generator=torch.Generator().manual_seed(2)) * 3).to(device)
    ids, counts = sample_targets(t.bfloat16(), 16, 2.0, torch.Generator(device).manual_seed(5))
    assert ids.shape == counts.shape == (64, 16) and ids.dtype == torch.long
    assert (counts.sum(-1) == 16).all() and (ids[:, 1:] >= ids[:, :-1]).all()  # sorted, all draws counted
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    assert ((counts > 0) == first).all()  # each distinct id counted once, at its first occurrence
    again = sample_targets(t.bfloat16(), 16, 2.0, torch.Generator(device).manual_seed(5))
    assert torch.equal(again[0], ids) and torch.equal(again[1], counts)
    assert not torch.equal(sample_targets(t, 16, 2.0, torch.Generator(device).manual_seed(6))[0], ids)


@pytest.mark.parametrize("draws", [1, 16])
def test_mean_of_the_sampled_targets_is_the_tempered_teacher(draws):
    """Each row of counts / N has mean p_T and variance p (1 - p) / N per coordinate: the mean over S seeds is
    within SIGMAS * sqrt(p (1 - p) / (N S)) of p_T, for every coordinate."""
    v, temperature, seeds = 30, 2.0, 400
    t = torch.randn(4, v, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 4
    p = torch.softmax(t / temperature, -1)
    total = torch.zeros(4, v, dtype=torch.float64)
    for s in range(seeds):
        ids, counts = sample_targets(t.float(), draws, temperature, torch.Generator().manual_seed(s))
        total += dense(ids, counts, v)
    mean = total / seeds
    bound = SIGMAS * (p * (1 - p) / (draws * seeds)).sqrt() + 1e-6
    assert ((mean - p).abs() <= bound).all(), ((mean - p).abs() / bound).max()
    # Not vacuous: tempering matters far beyond the bound (the T = 1 distribution is not what was drawn).
    assert ((mean - torch.softmax(t, -1)).abs() > bound).any()


def test_mean_sampled_gradient_is_the_full_kd_gradient_for_logits_and_parameters():
    """The sampled KL's gradient is linear in counts / N, so its mean over S seeds converges to the exact soft
    KL's. For the student logits, row i's gradient is (q_T - p_hat) / (T n); for a linear student z = x W, the
    gradient of W[a, v] is sum_i x_ia (q_T - p_hat)_iv / (T n), whose variance over draws is
    sum_i x_ia^2 p_iv (1 - p_iv) / (N (T n)^2) (rows drawn independently; the covariance terms -p_v p_w / N
    only enter across columns). The mean over S seeds must be within SIGMAS of the float64 full-KD gradient."""
    n, d, v, draws, temperature, seeds = 8, 5, 24, 16, 2.0, 300
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w0 = torch.randn(d, v, generator=g, dtype=torch.float64)
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, v, (n,), generator=g)
    p = torch.softmax(t / temperature, -1)

    def grads(term, dtype=torch.float32):
        w = w0.to(dtype).clone().requires_grad_(True)
        z = x.to(dtype) @ w
        z.retain_grad()
        term(z).backward()
        return z.grad.double(), w.grad.double()

    def full_kd(z):  # the float64 brute-force reference: exact KL(p_T || q_T), mean over rows
        return (p * (p.log() - torch.log_softmax(z / temperature, -1))).sum(-1).mean()

    ref_z, ref_w = grads(full_kd, torch.float64)
    assert_close_rel(grads(lambda z: full_kl(z, t.float(), temperature))[1], ref_w, 1e-5)  # the training loss'

    sum_z, sum_w, single = torch.zeros(n, v, dtype=torch.float64), torch.zeros(d, v, dtype=torch.float64), None
    for s in range(seeds):
        ids, counts = sample_targets(t.float(), draws, temperature, torch.Generator().manual_seed(s))
        gz, gw = grads(lambda z: distill_terms(z, y, mode="soft", temperature=temperature, sample_ids=ids,
                                               sample_counts=counts)[1])
        sum_z, sum_w, single = sum_z + gz, sum_w + gw, gw if single is None else single
    scale = 1.0 / (temperature * n)
    var_z = p * (1 - p) / draws * scale**2
    var_w = (x**2).T @ (p * (1 - p)) / draws * scale**2
    for mean, ref, var in ((sum_z / seeds, ref_z, var_z), (sum_w / seeds, ref_w, var_w)):
        bound = SIGMAS * (var / seeds).sqrt() + 1e-7
        assert ((mean - ref).abs() <= bound).all(), ((mean - ref).abs() / bound).max()
    # Not vacuous: one draw's gradient is off by many times the bound of the mean.
    assert ((single - ref_w).abs() > SIGMAS * (var_w / seeds).sqrt()).any()


# ---- DISTILL_DRAWS ---------------------------------------------------------------------------------------------------


def test_distill_draws_is_validated():
    assert resolve_config(env={"DISTILL_DRAWS": "16", "DISTILL_TEACHER": "online"}).distill_draws == 16
    assert resolve_config(env={}).distill_draws == 0
    for env, expect in (({"DISTILL_DRAWS": "-1"}, "use 0"), ({"DISTILL_DRAWS": str(MAX_DRAWS + 1)}, "use 0"),
                        ({"DISTILL_DRAWS": "8", "DISTILL_TEACHER": "online", "DISTILL_TARGET": "hard"},
                         "DISTILL_TARGET=hard"),
                        ({"DISTILL_DRAWS": "8", "DISTILL_TEACHER": "cache"}, "DISTILL_TEACHER=cache"),
                        ({"DISTILL_DRAWS": "8", "DISTILL_TEACHER": "online", "DISTILL_SEED_FAITHFUL": "D3"},
                         "DISTILL_SEED_FAITHFUL")):
        with pytest.raises(GolfError, match=expect):
            resolve_config(env=env)


def draws_config(ds, tmp, teacher_ckpt, **overrides):
    return make_config(ds, tmp, distill_teacher="online", teacher_path=teacher_ckpt, distill_draws=16,
                       distill_alpha=0.5, distill_temp=2.0, **overrides)


def draws_objective(cfg):
    files, _, _ = run_inputs(cfg)
    return build_objective(cfg, types.SimpleNamespace(train_files=files, ctx=cpu_ctx(), tokenizer_sha256=None))


def test_online_teacher_with_draws_gives_sampled_signals_seeded_by_position(tiny_dataset, tmp_path, teacher_ckpt):
    cfg = draws_config(tiny_dataset, str(tmp_path), teacher_ckpt)
    objective = draws_objective(cfg)
    teacher = objective.teacher
    assert isinstance(teacher, SamplingTeacher) and isinstance(teacher.inner, OnlineTeacher)
    assert (teacher.name, teacher.where, teacher.source) == ("online", "step", teacher_ckpt)
    loader = DistributedTokenLoader(tiny_dataset.train_files, 0, 1)
    b1, b2 = loader.next_batch(256, 64, 1), loader.next_batch(256, 64, 1)
    s1 = teacher.fetch(b1)
    assert isinstance(s1, Sampled) and s1.ids.shape == (256, 16) and (s1.counts.sum(-1) == 16).all()
    assert torch.equal(teacher.fetch(b1).ids, s1.ids)  # the same batch position: the same draws
    assert not torch.equal(teacher.fetch(b2).ids, s1.ids)
    other_seed = draws_objective(dataclasses.replace(cfg, seed=cfg.seed + 1)).teacher
    assert not torch.equal(other_seed.fetch(b1).ids, s1.ids)
    # The objective trains on them: the soft loss on the Sampled signal, mixed as every soft loss.
    student = GPT(cfg)
    loss, parts = objective(student, b1)
    ce, kl, _ = distill_terms(student(b1.x), b1.y, mode="soft", temperature=2.0, **s1.loss_inputs(b1.y.shape))
    torch.testing.assert_close(loss, 0.5 * ce + 0.5 * 4.0 * kl)
    assert parts["kl"] > 0


def test_draws_do_not_depend_on_the_warm_up(tiny_dataset, tmp_path, teacher_ckpt):
    """The compile warm-up reads the stream's first batches and is then undone; the draws, seeded by position,
    are undone with it: the timed run is the same with or without it."""
    models = []
    for warm in (2, 0):
        cfg = draws_config(tiny_dataset, str(tmp_path / str(warm)), teacher_ckpt, warmup_steps=warm, iterations=3,
                           ema_enabled=False)
        files, val, luts = run_inputs(cfg)
        result = train(cfg, cpu_ctx(), Logger(cfg.log_dir, cfg.run_id), files, val, luts,
                       objective=draws_objective(cfg))
        models.append(result.model.state_dict())
    for k, va in models[0].items():
        assert torch.equal(va, models[1][k]), k


def test_distill_script_trains_on_draws(tiny_dataset, tmp_path, teacher_ckpt):
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "ITERATIONS": 4, "WARMUP_STEPS": 1, "DTYPE": "fp32",
           "TRAIN_LOG_EVERY": 1, "RUN_ID": "r", "DISTILL_TEACHER": "online", "TEACHER_PATH": teacher_ckpt,
           "DISTILL_DRAWS": 16}
    out = run_script(["distill.py"], env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^distill:arm teacher:online target:soft .* draws:16 ", out.stdout, re.M)
    kls = [float(k) for k in re.findall(r"^step:\d+/4 train_loss:\S+ ce:\S+ kl:(\S+)", out.stdout, re.M)]
    assert len(kls) == 4 and all(k > 0 for k in kls)
    assert (tmp_path / "checkpoints" / "r.int6.ptz").exists()
