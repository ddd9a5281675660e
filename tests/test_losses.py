"""Losses against float64 dense references written from the definitions.

Run: python -m pytest tests/test_losses.py -q
"""
import pytest
import torch
import torch.nn.functional as F

import golf.losses
from golf import native
from golf.losses import cross_entropy, distill_loss, distill_terms, full_kl, topk_kl
from golf.signals import CountDist

# The in-place kernels of the top-K path are also checked on a GPU when there is one (the reference stays on CPU).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["one block", "many blocks"])
def row_blocks(request, monkeypatch):
    """The N x V passes run over row blocks on CPU: also check them with many blocks and a partial last one."""
    if request.param == "many blocks":
        monkeypatch.setattr(golf.losses, "_BLOCK_FLOATS", 3100)  # 3 rows of 1024, 6 of 512, 12 of 256


@pytest.fixture(params=["golf/count.c", "torch"])
def count_backend(request, monkeypatch):
    """The count loss runs golf/count.c's kernels on the CPU where they build and its torch form elsewhere (CUDA, no
    compiler): check both."""
    if request.param == "torch":
        monkeypatch.setitem(native._libraries, "count.c", False)
    elif native.library("count.c") is None:
        pytest.skip("no C compiler here: golf/count.c cannot be built (the torch form is tested)")
    return request.param


# ---- float64 dense references: full N x V distributions, KL by definition ------------------------------------------


def _kl(p, q):
    """Mean over rows of sum p (log p - log q), with 0 log 0 = 0 (dense float64 probabilities)."""
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return terms.sum(-1).mean()


def _temper(probs, temperature):
    w = probs ** (1.0 / temperature)
    return w / w.sum(-1, keepdim=True)


def ref_renorm(z, idx, vals, temperature):
    """Teacher: its top-K renormalised after tempering, as a dense V-vector; student: full-vocab softmax(z/T)."""
    p = torch.zeros_like(z).scatter(-1, idx, _temper(vals.exp(), temperature))
    return _kl(p, torch.softmax(z / temperature, -1))


def ref_bucket(z, idx, vals, temperature):
    """Both sides coarse-grained at T=1 to [top-K, rest of vocab], then tempered."""
    in_topk = torch.zeros_like(z, dtype=torch.bool).scatter(-1, idx, True)
    q = torch.softmax(z, -1)
    q_coarse = torch.cat([q.gather(-1, idx), (q * ~in_topk).sum(-1, keepdim=True)], -1)
    p_top = vals.exp()
    p_coarse = torch.cat([p_top, (1 - p_top.sum(-1, keepdim=True)).clamp_min(0)], -1)
    return _kl(_temper(p_coarse, temperature), _temper(q_coarse, temperature))


def ref_full(z, t, temperature):
    return _kl(torch.softmax(t / temperature, -1), torch.softmax(z / temperature, -1))


def ref_ce(z, y):
    return -torch.log_softmax(z, -1).gather(-1, y[:, None]).mean()


REFS = {"renorm": ref_renorm, "bucket": ref_bucket}


def make_case(n, v, k, seed=0, student_scale=2.0, teacher_scale=3.0):
    """Student logits z, targets y, teacher logits t and its real top-K log-probs (vals, sorted) with indices."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g) * student_scale
    t = torch.randn(n, v, generator=g) * teacher_scale
    y = torch.randint(0, v, (n,), generator=g)
    vals, idx = torch.log_softmax(t, -1).topk(k, dim=-1)
    return z, y, t, idx, vals


def value_and_grad(fn, z, device="cpu"):
    """fn(z) and d fn / dz for a fresh leaf copy of z on `device`, both returned on the CPU."""
    z = z.detach().to(device, copy=True).requires_grad_(True)
    out = fn(z)
    out = out[0] if isinstance(out, tuple) else out
    (grad,) = torch.autograd.grad(out, z)
    return out.detach().cpu(), grad.cpu()


def assert_close_rel(actual, expected, rtol):
    """Max abs difference relative to the reference's max abs value (gradients have tiny entries)."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.1e}"


# ---- top-K KL -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,v,k", [(64, 1024, 32), (16, 40, 5)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_topk_kl_value_and_grad_match_dense_reference(n, v, k, temperature, tail, device, row_blocks):
    z, _, _, idx, vals = make_case(n, v, k)
    d_idx, d_vals = idx.to(device), vals.to(device)
    val, grad = value_and_grad(lambda x: topk_kl(x, d_idx, d_vals, temperature, tail), z, device)
    ref_val, ref_grad = value_and_grad(lambda x: REFS[tail](x, idx, vals.double(), temperature), z.double())
    assert val.dtype == torch.float32 and val.item() > 0.1
    assert val.item() == pytest.approx(ref_val.item(), rel=1e-5)
    assert_close_rel(grad, ref_grad, 1e-5)


def test_renorm_equals_study_scatter_method():
    """The study: scatter the K values into an N x V tensor of -100, softmax(t/T), kl_div(..., 'batchmean')."""
    z, _, _, idx, vals = make_case(64, 1024, 32, seed=1)
    vals = vals.half()  # as stored in the cache
    for temperature in (1.0, 2.0):

        def study(x):
            t_full = torch.full_like(x, -100.0).scatter(-1, idx, vals.float())
            p = F.softmax(t_full / temperature, -1)
            return F.kl_div(F.log_softmax(x / temperature, -1), p, reduction="batchmean")

        ours, g_ours = value_and_grad(lambda x: topk_kl(x, idx, vals, temperature), z)
        theirs, g_theirs = value_and_grad(study, z)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
        assert_close_rel(g_ours, g_theirs, 1e-5)


@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_k_equal_v_is_the_full_kl(tail):
    z, _, t, idx, vals = make_case(32, 64, 64, seed=2)
    # bucket only at T=1: with K=V the teacher's rest is float32 rounding noise (~1e-7), which r^(1/T) amplifies
    for temperature in (1.0, 2.0) if tail == "renorm" else (1.0,):
        full, g_full = value_and_grad(lambda x: full_kl(x, t, temperature), z)
        top, g_top = value_and_grad(lambda x: topk_kl(x, idx, vals, temperature, tail), z)
        assert top.item() == pytest.approx(full.item(), rel=1e-5)
        assert_close_rel(g_top, g_full, 1e-5)


def test_bucket_is_zero_when_the_student_is_the_teacher():
    """Same coarse-graining + tempering on both sides: no penalty at the teacher itself, at any T (renorm has one)."""
    _, _, t, idx, vals = make_case(32, 256, 16, seed=3)
    for temperature in (1.0, 2.0, 4.0):
        kl, grad = value_and_grad(lambda x: topk_kl(x, idx, vals, temperature, "bucket"), t)
        assert abs(kl.item()) < 1e-6 and grad.abs().max().item() < 1e-6
        assert topk_kl(t, idx, vals, temperature, "renorm").item() > 0.01


def test_bucket_confident_student_keeps_its_tiny_tail_exact():
    """Tail mass ~1e-19: 1 - sum(q_k) would round to 0 in float32, the exact tail sum does not."""
    n, v, k = 16, 512, 8
    _, _, _, idx, vals = make_case(n, v, k, seed=4)
    z = torch.full((n, v), -22.0).scatter(-1, idx, 22.0)  # all the student's mass on the teacher's top-K
    for temperature in (1.0, 2.0):
        val, grad = value_and_grad(lambda x: topk_kl(x, idx, vals, temperature, "bucket"), z)
        ref_val, ref_grad = value_and_grad(lambda x: ref_bucket(x, idx, vals.double(), temperature), z.double())
        assert val.item() == pytest.approx(ref_val.item(), rel=1e-5)
        assert_close_rel(grad, ref_grad, 1e-4)
        # descent must raise the tail logits (the teacher has tail mass, the student none)
        in_topk = torch.zeros(n, v, dtype=torch.bool).scatter(-1, idx, True)
        assert (grad[~in_topk] <= 0).all()


@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_one_hot_teacher_at_t1_is_cross_entropy(tail):
    z, _, _, idx, _ = make_case(32, 128, 8, seed=5)
    y = idx[:, 0]
    ce, g_ce = value_and_grad(lambda x: F.cross_entropy(x, y), z)
    cases = [(idx[:, :1], torch.zeros(32, 1)), (idx, torch.tensor([0.0] + [-1e4] * 7).expand(32, 8))]
    cases.append((idx, torch.tensor([0.0] + [float("-inf")] * 7).expand(32, 8).half()))
    for t_idx, t_vals in cases:

        def loss(x):
            return distill_loss(x, y, alpha=1.0, mode="soft", temperature=1.0, tail=tail, idx=t_idx, vals=t_vals)

        val, grad = value_and_grad(loss, z)
        assert val.item() == pytest.approx(ce.item(), rel=1e-5)
        assert_close_rel(grad, g_ce, 1e-5)


# ---- distill_loss, cross-entropy, online teacher --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0])  # renorm: T = 2 and any other T take different paths
@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_soft_cached_distill_loss_matches_reference(temperature, tail, device, row_blocks):
    z, y, _, idx, vals = make_case(64, 1024, 32, seed=7)
    a = 0.3

    def ours(x):
        t_kw = dict(temperature=temperature, tail=tail, idx=idx.to(x.device), vals=vals.to(x.device))
        return distill_loss(x, y.to(x.device), alpha=a, mode="soft", **t_kw)

    def ref(x):
        return (1 - a) * ref_ce(x, y) + a * temperature**2 * REFS[tail](x, idx, vals.double(), temperature)

    val, grad = value_and_grad(ours, z, device)
    ref_val, ref_grad = value_and_grad(ref, z.double())
    assert val.item() == pytest.approx(ref_val.item(), rel=1e-5)
    assert_close_rel(grad, ref_grad, 1e-5)
    _, parts = ours(z)
    assert set(parts) == {"ce", "kl"} and not parts["kl"].requires_grad
    assert parts["ce"].item() == pytest.approx(ref_ce(z.double(), y).item(), rel=1e-5)
    assert parts["kl"].item() == pytest.approx(REFS[tail](z.double(), idx, vals.double(), temperature).item(), rel=1e-5)


def test_hard_distill_loss_matches_reference_for_every_teacher_source_and_device(row_blocks):
    z, y, t, idx, vals = make_case(64, 512, 8, seed=8)
    y[:8] = idx[:8, 0]  # label and teacher top-1 coincide on some rows: both terms must still count
    a = 0.5

    def ref(x):
        return (1 - a) * ref_ce(x, y) + a * ref_ce(x, idx[:, 0])

    ref_val, ref_grad = value_and_grad(ref, z.double())
    sources = [dict(teacher_top1=idx[:, 0]), dict(idx=idx, vals=vals), dict(teacher_logits=t)]
    for src, device in [(src, device) for src in sources for device in DEVICES]:
        src = {key: x.to(device) for key, x in src.items()}
        val, grad = value_and_grad(lambda x: distill_loss(x, y.to(device), alpha=a, mode="hard", **src), z, device)
        assert val.item() == pytest.approx(ref_val.item(), rel=1e-5), src.keys()
        assert_close_rel(grad, ref_grad, 1e-5)
    _, parts = distill_loss(z, y, alpha=a, mode="hard", teacher_top1=idx[:, 0])
    assert parts["hard_ce"].item() == pytest.approx(ref_ce(z.double(), idx[:, 0]).item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_kl_and_online_soft_loss_match_reference(temperature):
    z, y, t, _, _ = make_case(48, 1024, 1, seed=9)
    val, grad = value_and_grad(lambda x: full_kl(x, t, temperature), z)
    ref_val, ref_grad = value_and_grad(lambda x: ref_full(x, t.double(), temperature), z.double())
    assert val.item() == pytest.approx(ref_val.item(), rel=1e-5)
    assert_close_rel(grad, ref_grad, 1e-5)

    a = 0.4
    val, grad = value_and_grad(
        lambda x: distill_loss(x, y, alpha=a, mode="soft", temperature=temperature, teacher_logits=t), z
    )
    ref_val, ref_grad = value_and_grad(
        lambda x: (1 - a) * ref_ce(x, y) + a * temperature**2 * ref_full(x, t.double(), temperature), z.double()
    )
    assert val.item() == pytest.approx(ref_val.item(), rel=1e-5)
    assert_close_rel(grad, ref_grad, 1e-5)


def test_cross_entropy_matches_reference_and_flattens_leading_dims(row_blocks):
    z, y, _, idx, vals = make_case(64, 256, 8, seed=10)
    val, grad = value_and_grad(lambda x: cross_entropy(x, y), z)
    ref_val, ref_grad = value_and_grad(lambda x: ref_ce(x, y), z.double())
    assert val.item() == pytest.approx(ref_val.item(), rel=1e-6)
    assert_close_rel(grad, ref_grad, 1e-5)
    # (B, T, V) logits: the same per-token means as the flat (N, V) view, not a per-sequence sum (cf. D1)
    assert cross_entropy(z.view(4, 16, 256), y.view(4, 16)).item() == pytest.approx(val.item(), rel=1e-6)
    flat = topk_kl(z, idx, vals, 2.0, "bucket")
    assert topk_kl(z.view(4, 16, 256), idx.view(4, 16, 8), vals.view(4, 16, 8), 2.0, "bucket").item() == pytest.approx(
        flat.item(), rel=1e-6
    )


@pytest.mark.parametrize("temperature", [2.0, 3.0])  # bf16 logits are scaled exactly by 1/2, not by 1/3
@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_bf16_logits_compute_in_float32(tail, temperature, row_blocks):
    z, y, _, idx, vals = make_case(64, 1024, 32, seed=11)
    zb = z.bfloat16()

    def loss(x):
        return distill_loss(x, y, alpha=0.5, mode="soft", temperature=temperature, tail=tail, idx=idx, vals=vals.half())

    val_b, grad_b = value_and_grad(loss, zb)
    val_f, grad_f = value_and_grad(loss, zb.float())  # the same values in float32
    val_0, _ = value_and_grad(loss, z)
    assert val_b.dtype == torch.float32 and grad_b.dtype == torch.bfloat16
    assert val_b.item() == pytest.approx(val_f.item(), rel=1e-6)
    assert_close_rel(grad_b.float(), grad_f, 1e-2)  # bf16 rounding of the gradient itself
    assert val_b.item() == pytest.approx(val_0.item(), rel=1e-2)


def test_second_backward_through_the_same_graph_is_refused():
    """The backward reuses the forward's buffer in place; autograd must catch a second use, not return garbage."""
    z, y, _, _, _ = make_case(8, 64, 1, seed=12)
    z.requires_grad_(True)
    loss = cross_entropy(z, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_bad_arguments_are_refused():
    z, y, t, idx, vals = make_case(8, 64, 4, seed=13)
    with pytest.raises(ValueError, match="tail"):
        topk_kl(z, idx, vals, 1.0, tail="full")
    with pytest.raises(ValueError, match="temperature"):
        topk_kl(z, idx, vals, 0.0)
    with pytest.raises(ValueError, match="mode"):
        distill_loss(z, y, alpha=0.5, mode="medium", teacher_logits=t)
    with pytest.raises(ValueError, match="soft distillation needs"):
        distill_loss(z, y, alpha=0.5, mode="soft", teacher_top1=idx[:, 0])


@pytest.mark.parametrize("mode,tail", [("soft", "renorm"), ("soft", "bucket"), ("hard", "renorm")])
def test_teacher_valid_masks_only_the_teacher_term(mode, tail):
    """A masked row (the stream's last cached row after a wrap) drops out of the teacher term, value and gradient,
    exactly as if it were absent; the CE still covers every row."""
    z, y, _, idx, vals = make_case(48, 128, 8, seed=9)
    valid = torch.ones(48, dtype=torch.bool)
    valid[[5, 40]] = False
    kw = dict(mode=mode, temperature=2.0, tail=tail, idx=idx, vals=vals)

    def term(x, mask):
        return distill_terms(x, y, teacher_valid=mask, **kw)[1]

    def ce(x):
        return distill_terms(x, y, teacher_valid=valid, **kw)[0]

    val, grad = value_and_grad(lambda x: term(x, valid), z)
    kept = valid.nonzero().squeeze(1)
    ref, ref_grad = value_and_grad(lambda x: distill_terms(x, y[kept], mode=mode, temperature=2.0, tail=tail,
                                                           idx=idx[kept], vals=vals[kept])[1], z[kept])
    torch.testing.assert_close(val, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad[kept], ref_grad, rtol=1e-4, atol=1e-7)
    assert grad[~valid].abs().max() == 0  # no teacher gradient on a masked row
    torch.testing.assert_close(ce(z), distill_terms(z, y, **kw)[0])  # CE unmasked
    assert not torch.equal(val, value_and_grad(lambda x: term(x, None), z)[0])  # the mask did something


def test_full_kl_value_is_accurate_for_a_large_batch():
    """The KL is a small difference of two N x entropy sums: its value must still match float64 to ~1e-6 nats for
    an online-sized batch (two float32 dot products were ~1e-3 off, a uniform teacher logged a negative KL)."""
    g = torch.Generator().manual_seed(11)
    z = torch.randn(4096, 1024, generator=g) * 0.05
    for t in (torch.zeros(4096, 1024), torch.randn(4096, 1024, generator=g) * 0.05):
        ref = (torch.log_softmax(t.double(), -1).exp() * (torch.log_softmax(t.double(), -1)
                                                          - torch.log_softmax(z.double(), -1))).sum(-1).mean()
        got = full_kl(z, t, 1.0)
        assert abs(got.double().item() - ref.item()) < 2e-6, (got.item(), ref.item())


# ---- count teachers: sparse + shared rows + shared vector, exact KL at T = 1 ----------------------------------------


def make_count_case(n, v, w, r, seed=0, negative=True, rows_part=True, shared_part=True):
    """A random count teacher's p (golf.signals.CountDist fields, float64): ragged rows of 0..w entries (some ids
    repeated within a row, whose weights add; some padding entries of weight 0), negative entry weights (taking
    back part of a shared part's mass at a token: p >= 0 stays), `r` rows with zeros and the shared row last,
    some positions without a row part (rho = 0)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.rand(r, v, generator=g, dtype=torch.float64) ** 3
    rows *= torch.rand(r, v, generator=g, dtype=torch.float64) < 0.6  # zero entries
    shared = torch.rand(1, v, generator=g, dtype=torch.float64) + 0.05
    rows = torch.cat([rows, shared])
    rows /= rows.sum(-1, keepdim=True)
    row_of = torch.randint(0, r, (n,), generator=g)
    rho = torch.rand(n, generator=g, dtype=torch.float64) * (torch.rand(n, generator=g) < 0.8) * rows_part
    beta = (torch.rand(n, generator=g, dtype=torch.float64) + 0.1) * shared_part
    ids, weight, entry_row = [], [], []
    for i in range(n):
        real = int(torch.randint(0, w + 1, (), generator=g))
        row_ids = torch.randperm(v, generator=g)[:real]
        row_w = torch.rand(real, generator=g, dtype=torch.float64) * 0.5
        if real > 1 and torch.rand(1, generator=g) < 0.3:  # a repeated id: its entries add
            row_ids, row_w = torch.cat([row_ids, row_ids[:1]]), torch.cat([row_w, row_w[:1] * 0.5])
        if real and torch.rand(1, generator=g) < 0.3:  # padding: weight 0, any id
            row_ids, row_w = torch.cat([row_ids, row_ids[-1:]]), torch.cat([row_w, torch.zeros(1, dtype=torch.float64)])
        if negative and real > 0 and torch.rand(1, generator=g) < 0.5:  # a leave-one-out correction at one id
            j = row_ids[0]
            shared_mass = rho[i] * rows[row_of[i], j] + beta[i] * rows[-1, j]
            row_ids, row_w = torch.cat([row_ids, row_ids[:1]]), torch.cat([row_w, (-0.7 * shared_mass).view(1)])
        ids.append(row_ids), weight.append(row_w), entry_row.append(torch.full((len(row_ids),), i))
    ids, weight, entry_row = torch.cat(ids), torch.cat(weight), torch.cat(entry_row)
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, entry_row, weight) + rho + beta
    weight, rho, beta = weight / total[entry_row], rho / total, beta / total
    return dict(ids=ids, weight=weight, entry_row=entry_row, rows=rows, row_of=row_of, rho=rho, beta=beta)


def dense_count_p(ids, weight, entry_row, rows, row_of, rho, beta):
    """The count teacher's p as an N x V float64 tensor, entry by entry (the reference the loss never builds)."""
    n, v = row_of.shape[0], rows.shape[1]
    p = torch.zeros(n, v, dtype=torch.float64)
    for i, j, x in zip(entry_row.tolist(), ids.tolist(), weight.tolist()):
        p[i, j] += x
    for i in range(n):
        p[i] += beta[i] * rows[-1] + rho[i] * rows[row_of[i]]
    return p


def count_signal(case, target_logprob=None):
    """The case as the float32 golf.signals.CountDist a teacher gives."""
    f32 = {k: t.float() if t.is_floating_point() else t for k, t in case.items()}
    n = case["row_of"].shape[0]
    return CountDist(**f32, target_logprob=torch.zeros(n) if target_logprob is None else target_logprob.float())


@pytest.mark.parametrize("parts", ["all", "no rows", "no shared", "positive only"])
def test_count_kl_value_and_grad_match_dense_reference(parts, row_blocks, count_backend):
    n, v, w, r = 40, 96, 7, 5
    kw = dict(negative=parts != "positive only", rows_part=parts != "no rows", shared_part=parts != "no shared")
    case = make_count_case(n, v, w, r, seed=3, **kw)
    if parts == "no rows":
        case["rows"] = case["rows"][-1:]  # the shared row alone: no row part at all
        case["row_of"] = torch.zeros_like(case["row_of"])
    p = dense_count_p(**case)
    assert p.min() >= 0 and torch.allclose(p.sum(-1), torch.ones(n, dtype=torch.float64))
    assert (case["weight"] < 0).any() == kw["negative"]
    z = torch.randn(n, v, generator=torch.Generator().manual_seed(4)) * 3.0
    val, grad = value_and_grad(lambda x: golf.losses.count_kl(x, count_signal(case)), z)
    ref, ref_grad = value_and_grad(lambda x: _kl(p, torch.softmax(x, -1)), z.double())
    assert val.dtype == torch.float32 and ref.item() > 0.1
    assert val.item() == pytest.approx(ref.item(), rel=1e-5)
    assert_close_rel(grad, ref_grad, 1e-5)


def test_count_terms_are_ce_and_kl_from_one_node_with_the_teachers_ce(count_backend):
    """distill_terms with count_* inputs shaped like the batch: CE, KL and their mixed gradient against float64, the
    teacher's CE from its target log-probs, and teacher_valid masking the KL (and teacher CE) only."""
    b, s, v, w, r = 3, 16, 64, 5, 4
    n = b * s
    case = make_count_case(n, v, w, r, seed=5)
    p = dense_count_p(**case)
    g = torch.Generator().manual_seed(6)
    z = torch.randn(b, s, v, generator=g) * 2.0
    y = torch.randint(0, v, (b, s), generator=g)
    valid = torch.rand(b, s, generator=g) > 0.2
    target_logprob = p.gather(-1, y.reshape(n, 1))[:, 0].log()
    inputs = count_signal(case, target_logprob).loss_inputs(y.shape)
    alpha = 0.3

    def ours(x):
        ce, kl, parts = distill_terms(x, y, mode="soft", temperature=1.0, teacher_valid=valid, **inputs)
        return (1 - alpha) * ce + alpha * kl, ce, kl, parts

    def ref(x):
        x = x.reshape(n, v)
        logq = torch.log_softmax(x, -1)
        ce = -logq.gather(-1, y.reshape(n, 1)).mean()
        m = valid.reshape(n)
        kl = _kl(p[m], logq[m].exp())
        return (1 - alpha) * ce + alpha * kl, ce, kl

    (loss, ce, kl, parts), grad = ours(z.requires_grad_(True)), None
    (grad,) = torch.autograd.grad(loss, z)
    zd = z.detach().double().requires_grad_(True)
    ref_loss, ref_ce, ref_kl = ref(zd)
    (ref_grad,) = torch.autograd.grad(ref_loss, zd)
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-6) and kl.item() == pytest.approx(ref_kl.item(), rel=1e-5)
    assert_close_rel(grad, ref_grad, 1e-5)
    m = valid.reshape(n)
    assert parts["teacher_ce"].item() == pytest.approx(-target_logprob[m].mean().item(), rel=1e-6)
    assert set(parts) == {"ce", "kl", "teacher_ce"}


def test_count_teacher_equal_to_the_student_has_zero_kl(count_backend):
    """KL(p || p) = 0: a student whose softmax is the teacher's p (log p as logits, softcap-sized) gets no KL and no
    KL gradient (the exact entropy cancels the soft cross-entropy)."""
    case = make_count_case(32, 128, 6, 3, seed=8)
    p = dense_count_p(**case)
    z = p.clamp_min(1e-12).log().float()
    val, grad = value_and_grad(lambda x: golf.losses.count_kl(x, count_signal(case)), z)
    assert abs(val.item()) < 1e-5 and grad.abs().max().item() < 1e-6


def test_count_teacher_refuses_a_temperature_and_a_hard_target():
    inputs = count_signal(make_count_case(4, 16, 3, 2, seed=1)).loss_inputs((4,))
    z, y = torch.randn(4, 16), torch.randint(0, 16, (4,))
    with pytest.raises(ValueError, match="T = 1 only"):
        distill_terms(z, y, mode="soft", temperature=2.0, **inputs)
    with pytest.raises(ValueError, match="no label"):
        distill_terms(z, y, mode="hard", **inputs)


def test_count_term_without_the_entropy_is_the_soft_ce_with_the_same_gradient(row_blocks, count_backend):
    """count_entropy=False (a step whose values are not logged): the term is H(p, q) = KL + H(p) against float64, its
    gradient the KL's, and the logged KL is NaN (not computed), never a wrong number."""
    n, v = 24, 80
    case = make_count_case(n, v, 5, 3, seed=12)
    p = dense_count_p(**case)
    z = torch.randn(n, v, generator=torch.Generator().manual_seed(13)) * 2
    y = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(14))
    inputs = count_signal(case).loss_inputs(y.shape)
    terms = {}
    for entropy in (True, False):
        x = z.clone().requires_grad_(True)
        _, term, parts = distill_terms(x, y, mode="soft", count_entropy=entropy, **inputs)
        terms[entropy] = (term.detach(), torch.autograd.grad(term, x)[0], parts["kl"])
    soft_ce = -(p * torch.log_softmax(z.double(), -1)).sum(-1).mean()
    entropy_p = -torch.where(p > 0, p * p.log(), 0.0).sum(-1).mean()
    assert terms[False][0].item() == pytest.approx(soft_ce.item(), rel=1e-6)
    assert terms[True][0].item() == pytest.approx((soft_ce - entropy_p).item(), rel=1e-5)
    assert terms[True][2].item() == terms[True][0].item() and terms[False][2].isnan()
    torch.testing.assert_close(terms[False][1], terms[True][1], rtol=0, atol=0)


def test_count_kl_is_exact_where_the_teachers_columns_underflow_in_the_student(count_backend):
    """Logits without a softcap: the student puts its mass 120 nats away from every column the teacher names, so
    their q underflow float32 and the log-normaliser falls back to max z - log max q (golf.losses._log_normaliser)."""
    n, v, w = 16, 64, 4
    g = torch.Generator().manual_seed(21)
    ids = torch.stack([torch.randperm(v, generator=g)[:w] for _ in range(n)])
    weight = torch.rand(n, w, generator=g, dtype=torch.float64) + 0.1
    case = dict(ids=ids.reshape(-1), weight=(weight / weight.sum(-1, keepdim=True)).reshape(-1),
                entry_row=torch.arange(n).repeat_interleave(w), rows=torch.full((1, v), 1.0 / v, dtype=torch.float64),
                row_of=torch.zeros(n, dtype=torch.long), rho=torch.zeros(n, dtype=torch.float64),
                beta=torch.zeros(n, dtype=torch.float64))
    p = dense_count_p(**case)
    z = torch.where(p > 0, -60.0, 60.0) + torch.randn(n, v, generator=g)
    assert torch.softmax(z, -1)[p > 0].max() == 0  # underflowed in float32
    val, grad = value_and_grad(lambda x: golf.losses.count_kl(x, count_signal(case)), z)
    ref, ref_grad = value_and_grad(lambda x: _kl(p, torch.softmax(x, -1)), z.double())
    assert ref.item() > 100
    assert val.item() == pytest.approx(ref.item(), rel=1e-6)
    assert_close_rel(grad, ref_grad, 1e-5)


def test_count_loss_on_bf16_logits_returns_the_float32_gradient_rounded_once(count_backend):
    """The student's logits in bf16 (CUDA and AMX CPUs train in it): value and gradient against float64 on the same
    logits, the gradient in bf16 within a rounding of the float32 one, and the two backends within one such
    rounding of each other (golf/count.c rounds to nearest even as torch does)."""
    case = make_count_case(300, 128, 6, 4, seed=33)
    p = dense_count_p(**case)
    z = (torch.randn(300, 128, generator=torch.Generator().manual_seed(34)) * 3).bfloat16()
    val, grad = value_and_grad(lambda x: golf.losses.count_kl(x, count_signal(case)), z)
    ref, ref_grad = value_and_grad(lambda x: _kl(p, torch.softmax(x, -1)), z.double())
    assert grad.dtype == torch.bfloat16
    assert val.item() == pytest.approx(ref.item(), rel=1e-5)
    err = (grad.double() - ref_grad).abs()
    assert (err <= ref_grad.abs() * 2**-8 + 1e-6 * ref_grad.abs().max()).all()


def test_count_loss_kernels_split_rows_among_threads_with_the_same_result():
    """golf/count.c's loss kernels on three threads (row parts with their own entry ranges) give what one gives."""
    if native.library("count.c") is None:
        pytest.skip("no C compiler here: golf/count.c cannot be built")
    case = make_count_case(900, 64, 5, 3, seed=35)
    z = torch.randn(900, 64, generator=torch.Generator().manual_seed(36)) * 2
    results = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        assert len(native.row_blocks(900)) == threads
        results.append(value_and_grad(lambda x: golf.losses.count_kl(x, count_signal(case)), z))
    torch.set_num_threads(1)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_count_kl_under_bf16_autocast_computes_in_float32(count_backend):
    """The objective runs under the run's autocast: the count loss's products (matrix-vector, sparse x dense) must not
    drop to bf16 there, and its gradient keeps z's dtype."""
    case = make_count_case(64, 256, 6, 4, seed=31)
    p = dense_count_p(**case)
    z = torch.randn(64, 256, generator=torch.Generator().manual_seed(32)) * 3

    def under_autocast(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return golf.losses.count_kl(x, count_signal(case))

    val, grad = value_and_grad(under_autocast, z)
    ref, ref_grad = value_and_grad(lambda x: _kl(p, torch.softmax(x, -1)), z.double())
    assert val.item() == pytest.approx(ref.item(), rel=1e-5)
    assert_close_rel(grad, ref_grad, 1e-5)
