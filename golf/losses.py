"""Training losses: cross-entropy, and distillation from a cached top-K teacher, sampled targets or an online
teacher; and the drawing of sampled targets from a teacher's logits (`sample_targets`).

Shapes: student logits `z` (..., V), already softcapped, any float dtype (bf16 under autocast): every loss is
computed in float32. Targets `y` (...), cached teacher top-K indices `idx` and log-probabilities `vals`
(..., K), the latter at temperature 1 and sorted descending, so the teacher mass outside the top-K is
`1 - exp(vals).sum(-1)`. Leading dimensions are flattened and every loss is a mean over all tokens.

Cost is what makes cached distillation worth it, so the top-K path never builds an N x V teacher tensor: it
gathers the student's log-probabilities at the K cached columns and does the rest on (N, K) tensors. The
N x V work lives in `_GatherLogSoftmax` and `_TwoTemperatureLogSoftmax`, whose backwards are written by hand
(softmax minus the scattered column gradients, in the forward's buffer) instead of letting autograd chain
log_softmax -> gather -> scatter.
"""

import warnings

import torch
import torch.nn.functional as F

from golf import native
from golf.arms import defects
from golf.config import check_choice, owner_check
from golf.errors import GolfError

# Floor for a tail mass before its log: far below anything meaningful, so clamping only ever replaces an exact
# or rounded-to-zero (or slightly negative, from fp16 rounding of the cached values) tail by ~0.
_TAIL_FLOOR = 1e-30
# Smallest normal float32: student probabilities are floored here before their log. Only a logit gap above 87 T
# gets there (softcapped logits stay within 2 x softcap = 60); above it, log(softmax(x)) is as accurate as
# log_softmax(x): both inherit the rounding of x - max(x), and a float32 relative error is a log's absolute one.
_TINY = torch.finfo(torch.float32).tiny
# Cached log-probs are clamped to this before use: a -inf entry (e.g. a one-hot teacher) would give 0 * -inf = NaN
# in p * log p, while exp(-1e4 / T) is already exactly 0 in float32 for any sane temperature.
_LOGP_FLOOR = -1e4
# Row blocks of the T = 2 backward on CPU hold about this many float32 (see _TwoTemperatureLogSoftmax).
_BLOCK_FLOATS = 1 << 20
# Row blocks of a count teacher's entropy on CUDA: its block-sized p buffers stay at ~512 MB however large N is.
_CUDA_BLOCK_FLOATS = 1 << 26
# Most draws per position of sampled targets: a row's counts must fit the sampled cache format's one count byte.
MAX_DRAWS = 255

TAILS = ("renorm", "bucket")
MODES = ("soft", "hard")


class _GatherLogSoftmax(torch.autograd.Function):
    """log_softmax(z / T) gathered at `cols`, and the log of the student's mass outside the first `d` columns.

    z (N, V) any float dtype; cols (N, C) int64 whose first d columns are distinct per row (the teacher's top-K,
    or a single label) and whose other columns (e.g. the target y) may repeat them. Returns logq (N, C) and
    log_rest (N,), both float32; log_rest is log(1) = 0, a constant, unless rest=True.

    Why a hand-written Function: on CPU a fresh N x V float32 tensor costs more (page faults) than the arithmetic
    on it, and autograd's log_softmax -> gather chain allocates several. Here the forward allocates one N x V
    buffer (the float32 softmax, straight from z) and the backward turns that same buffer into the gradient in
    place, row block by row block (see _row_blocks). A second backward through the same graph is therefore
    refused by autograd's saved-tensor version check instead of silently returning a wrong gradient.

    The rest mass is summed over the actual tail entries (the first d columns zeroed) rather than taken as
    1 - sum(q_k): that difference cancels catastrophically when the student is confident, and a rounded-down
    rest would blow up the gradient q_v / q_rest of the tail entries.

    Gradient, with G = dL/dlogq, H = dL/dlog_rest (0 unless rest), q = softmax(z / T), R = the tail:
        dL/dz_v = (1/T) * (sum of G over the columns equal to v + H [v in R] q_v / q_rest - q_v (sum G + H)).
    """

    @staticmethod
    def forward(ctx, z, cols, inv_t: float, d: int, rest: bool):
        q = torch.empty(z.shape, dtype=torch.float32, device=z.device)
        q_cols = torch.empty(cols.shape, dtype=torch.float32, device=z.device)
        rest_mass = torch.empty(z.shape[0], dtype=torch.float32, device=z.device) if rest else None
        for a, b in _row_blocks(q):
            qb = _softmax_into(q[a:b], z[a:b], inv_t)
            torch.gather(qb, -1, cols[a:b], out=q_cols[a:b])
            if rest:
                torch.sum(qb.scatter_(-1, cols[a:b, :d], 0.0), -1, out=rest_mass[a:b])
        logq = q_cols.clamp_min(_TINY).log_()
        if rest:
            log_rest = rest_mass.clamp_min_(_TINY).log_()
        else:
            log_rest = torch.zeros_like(logq[:, 0])
            ctx.mark_non_differentiable(log_rest)
        ctx.save_for_backward(q, q_cols, cols, log_rest)
        ctx.inv_t, ctx.d, ctx.rest, ctx.z_dtype = inv_t, d, rest, z.dtype
        return logq, log_rest

    @staticmethod
    def backward(ctx, g_logq, g_rest):
        grad, q_cols, cols, log_rest = ctx.saved_tensors  # grad holds q until it turns into the gradient
        inv_t, d = ctx.inv_t, ctx.d
        sum_g = g_logq.sum(-1)
        if ctx.rest:
            sum_g = sum_g + g_rest
            tail_coef = (g_rest * torch.exp(-log_rest) - sum_g) * inv_t
        else:
            tail_coef = -sum_g * inv_t
        # The first d columns are distinct: overwrite them with their full value (they were zeroed in q if rest).
        head = torch.addcmul(g_logq[:, :d], q_cols[:, :d], sum_g[:, None], value=-1.0)
        if inv_t != 1.0:
            head.mul_(inv_t)
        extra = g_logq[:, d:] * inv_t if cols.shape[1] > d else None
        out = _grad_out(grad, ctx.z_dtype)
        for a, b in _row_blocks(grad):
            gb = grad[a:b].mul_(tail_coef[a:b, None])  # right for the tail (every entry when not rest)
            gb.scatter_(-1, cols[a:b, :d], head[a:b])
            if extra is not None:  # extra columns may coincide with the first d or with each other: accumulate
                gb.scatter_add_(-1, cols[a:b, d:], extra[a:b])
            if out is not grad:  # convert while the block is in cache
                out[a:b].copy_(gb)
        return out, None, None, None, None


class _TwoTemperatureLogSoftmax(torch.autograd.Function):
    """(log_softmax(z) at y, log_softmax(z / T) at cols) from one node: the CE and the student side of a soft KL.

    z (N, V) any float dtype, y (N,) int64, cols (N, K) int64 (repeats allowed); returns float32 (N,) and (N, K).
    With g (N,), G (N, K) the incoming gradients, q = softmax(z) and q_T = softmax(z / T):
        dL/dz_v = g [v = y] - g q_v + (1/T) * (sum of G over the columns equal to v - q_T,v sum_k G_k),
    built in one N x V buffer (the forward's softmax, in place, row block by row block; a second backward is
    refused as in _GatherLogSoftmax). Two separate nodes would cost two full chains plus autograd's N x V sum of
    their gradients.

    At T = 2 (the study's temperature and our default) only p = q_T is computed: q = p^2 / sum(p^2), so
    log q_y = 2 log p_y - log sum(p^2) (one norm over the rows) and the gradient is p * (a p + b) with per-row
    a = -g / sum(p^2) and b = -(1/2) sum_k G_k: one softmax and two passes more than the CE alone (both while
    the block is in cache), no second N x V buffer, no sqrt. Exact up to rounding while the gathered p are
    normal float32, i.e. for logit gaps below ~160 (the softcap keeps them within 60); p^2 underflowing for
    smaller entries only drops terms below 1e-38 from the norm and the gradient. Any other T takes a second
    softmax, kept for the backward.
    """

    @staticmethod
    def forward(ctx, z, y, cols, inv_t: float):
        n, k = cols.shape
        cols_y = torch.cat([cols, y[:, None]], -1)  # one gather and one scatter for both terms
        p = torch.empty(z.shape, dtype=torch.float32, device=z.device)
        p_cols = torch.empty(cols_y.shape, dtype=torch.float32, device=z.device)
        if inv_t == 0.5:
            norm, q = torch.empty(n, dtype=torch.float32, device=z.device), None
        else:
            q, q_y = torch.empty_like(p), torch.empty(n, 1, dtype=torch.float32, device=z.device)
        for a, b in _row_blocks(p):
            pb = _softmax_into(p[a:b], z[a:b], inv_t)
            torch.gather(pb, -1, cols_y[a:b], out=p_cols[a:b])
            if q is None:
                torch.linalg.vector_norm(pb, dim=-1, out=norm[a:b])
            else:
                torch.gather(_softmax_into(q[a:b], z[a:b], 1.0), -1, cols_y[a:b, k:], out=q_y[a:b])
        logp_cols = p_cols.clamp_min_(_TINY).log_()
        if q is None:
            log_ss = norm.log_().mul_(2.0)
            logq_y = logp_cols[:, k].mul(2.0).sub_(log_ss)
            ctx.save_for_backward(p, log_ss, cols_y)
        else:
            logq_y = q_y[:, 0].clamp_min_(_TINY).log_()
            ctx.save_for_backward(p, q, cols_y)
        ctx.inv_t, ctx.z_dtype = inv_t, z.dtype
        return logq_y, logp_cols[:, :k]

    @staticmethod
    def backward(ctx, g, g_t):
        inv_t = ctx.inv_t
        coef_t = g_t.sum(-1, keepdim=True).mul_(-inv_t)  # of q_T
        src = torch.cat([g_t * inv_t, g[:, None]], -1)  # the scattered columns, cols then y
        if inv_t == 0.5:
            grad, log_ss, cols_y = ctx.saved_tensors  # grad holds p until it turns into the gradient
            coef = g.neg()[:, None].mul_(torch.exp(-log_ss)[:, None])  # of p^2
        else:
            grad, q, cols_y = ctx.saved_tensors  # grad holds q_T until it turns into the gradient
            coef = g.neg()[:, None]  # of q
        out = _grad_out(grad, ctx.z_dtype)
        blocks = _row_blocks(grad)
        if inv_t == 0.5:  # one temporary for every block, so it stays in cache
            tmp = torch.empty((blocks[0][1], grad.shape[1]), dtype=grad.dtype, device=grad.device)
        for a, b in blocks:
            gb = grad[a:b]
            if inv_t == 0.5:  # p * (coef p + coef_t); three plain kernels beat one addcmul here
                gb.mul_(torch.mul(gb, coef[a:b], out=tmp[: b - a]).add_(coef_t[a:b]))
            else:
                gb.mul_(coef_t[a:b]).addcmul_(q[a:b], coef[a:b])
            gb.scatter_add_(-1, cols_y[a:b], src[a:b])
            if out is not grad:
                out[a:b].copy_(gb)
        return out, None, None, None


class _CountSoftCE(torch.autograd.Function):
    """The CE at y and the soft cross-entropy H(p, q) = -sum_v p_v log q_v to a count teacher, from one node at
    T = 1, with no N x V teacher tensor (golf.signals.CountDist):
        p[n] = sum over the entries e of row n of weight[e] e(ids[e]) + rho[n] rows[row_of[n]] + beta[n] rows[-1].

    With log q = z - lse(z), a row's H(p, q) = lse - p . z, and p . z = the entries' weight . z[n, ids] (a gather
    over the flat entries, summed per row) + rho rows[row_of] . z + beta rows[-1] . z (one sampled dense x dense
    product with `rows`, which reads each position's rows once without gathering them into a buffer). z is the
    logits the loss sees (after the model's softcap); lse comes from the softmax the CE computes anyway
    (`_log_normaliser`). KL(p || q) = H(p, q) - H(p): the teacher's entropy is no function of the student (see
    `_count_entropy`).

    z (N, V) any float dtype, y (N,), ids / weight / entry_row (E,): the sparse entries, entry_row ascending (an
    id may repeat within a row: the entries add), rows (R, V), row_of / rho / beta (N,), kl_w (N,): each row's
    weight in the soft term's mean (1/N, or valid / #valid). Returns float32 (mean CE, weighted mean H(p, q)).
    With g, h their incoming gradients and k = h kl_w:
        dL/dz = (g/N + k) q - (g/N) e(y) - k (sum_e weight_e e(ids_e) + rho rows[row_of] + beta rows[-1]),
    formed in the forward's softmax buffer in place, row block by row block: the CE's gradient and the KL's in one
    pass over N x V, p's dense parts added into it as one sparse x dense product and its entries by one
    index_add, without building p; a second backward is refused as in _GatherLogSoftmax. On the CPU, golf/count.c
    (golf.native) takes p . z and then the gradient, rounded to z's bfloat16 where it is, in one pass over each
    row (the products above are the form CUDA runs, and the CPU without a compiler).
    """

    @staticmethod
    def forward(ctx, z, y, ids, weight, entry_row, rows, row_of, rho, beta, kl_w):
        n, v = z.shape
        q = torch.empty((n, v), dtype=torch.float32, device=z.device)
        ce, soft_ce = (torch.empty(n, dtype=torch.float32, device=z.device) for _ in range(2))
        dense_cols, dense_coef = _dense_parts(rows, row_of, rho, beta)
        kernels = _count_kernels(z)
        if kernels:
            z, y, ids, weight, entry_row, rows, dense_cols, dense_coef = (
                t.contiguous() for t in (z, y, ids, weight, entry_row, rows, dense_cols, dense_coef))
            scratch = torch.empty(torch.get_num_threads(), v)  # a bfloat16 row as float32, per thread
            bf16 = int(z.dtype == torch.bfloat16)
        blocks = _row_blocks(q)
        for (a, b), (ea, eb) in zip(blocks, _entry_ranges(entry_row, blocks)):
            if kernels:  # softmax upcasts in its one kernel; golf/count.c reads z as it is
                zb, qb = z[a:b], torch.softmax(z[a:b], -1, dtype=torch.float32, out=q[a:b])
                z_y = zb.gather(-1, y[a:b, None]).float()
            else:
                zb = z[a:b] if z.dtype == torch.float32 else z[a:b].float()
                qb = torch.softmax(zb, -1, out=q[a:b])
                z_y = zb.gather(-1, y[a:b, None])
            lse = _log_normaliser(zb, qb, z_y, y[a:b, None])
            torch.sub(lse, z_y[:, 0], out=ce[a:b])
            if kernels:
                p_dot_z = torch.empty(b - a, dtype=torch.float32)
                _native_rows(kernels.count_dots, entry_row, a, b, ea, eb, lambda i, j, e0, e1, t: (
                    j - i, v, z[i].data_ptr(), bf16, rows.data_ptr(), dense_cols.shape[1], dense_cols[i].data_ptr(),
                    dense_coef[i].data_ptr(), e1 - e0, ids[e0:].data_ptr(), weight[e0:].data_ptr(),
                    entry_row[e0:].data_ptr(), i, scratch[t].data_ptr(), p_dot_z[i - a].data_ptr()))
            else:
                pattern = _table_rows(dense_cols[a:b], torch.zeros_like(dense_coef[a:b]), rows.shape[0])
                dots = torch.sparse.sampled_addmm(pattern, zb, rows.T).values().view(b - a, -1)
                z_e = zb.reshape(-1).take(_flat_index(entry_row[ea:eb], ids[ea:eb], a, v))
                p_dot_z = dots.mul_(dense_coef[a:b]).sum(-1).index_add_(0, entry_row[ea:eb] - a,
                                                                         z_e.mul_(weight[ea:eb]))
            torch.sub(lse, p_dot_z, out=soft_ce[a:b])
        ctx.save_for_backward(q, y, ids, weight, entry_row, rows, dense_cols, dense_coef, kl_w)
        ctx.z_dtype, ctx.kernels = z.dtype, kernels
        # float64 means: float32 sums over many rows lose ~1e-3 nats (see _mean_kl)
        return ce.double().mean().float(), soft_ce.double().dot(kl_w.double()).float()

    @staticmethod
    def backward(ctx, g_ce, g_soft):
        grad, y, ids, weight, entry_row, rows, dense_cols, dense_coef, kl_w = ctx.saved_tensors  # grad holds q
        n, v = grad.shape
        g = g_ce / n
        k = kl_w * g_soft
        coef, dense_coef = (k + g)[:, None], dense_coef * -k[:, None]
        entry_grad = weight * -k.index_select(0, entry_row)
        out, kernels = _grad_out(grad, ctx.z_dtype), ctx.kernels  # the forward's backend
        if kernels:  # golf/count.c: the whole row's gradient in one pass, rounded to bfloat16 there
            scratch = torch.empty(torch.get_num_threads(), v)  # a row's gradient before rounding, per thread
            bf16, g_value = int(out is not grad), float(g)
        blocks = _row_blocks(grad)
        for (a, b), (ea, eb) in zip(blocks, _entry_ranges(entry_row, blocks)):
            if kernels:
                _native_rows(kernels.count_grad, entry_row, a, b, ea, eb, lambda i, j, e0, e1, t: (
                    j - i, v, grad[i].data_ptr(), coef[i].data_ptr(), g_value, y[i:].data_ptr(), rows.data_ptr(),
                    dense_cols.shape[1], dense_cols[i].data_ptr(), dense_coef[i].data_ptr(), e1 - e0,
                    ids[e0:].data_ptr(), entry_grad[e0:].data_ptr(), entry_row[e0:].data_ptr(), i, bf16,
                    out[i].data_ptr(), scratch[t].data_ptr()))
                continue
            gb = grad[a:b].mul_(coef[a:b])
            gb.addmm_(_table_rows(dense_cols[a:b], dense_coef[a:b], rows.shape[0]), rows)
            gb.view(-1).index_add_(0, _flat_index(entry_row[ea:eb], ids[ea:eb], a, v), entry_grad[ea:eb])
            gb.scatter_add_(-1, y[a:b, None], g.neg().expand(b - a, 1))
            if out is not grad:
                out[a:b].copy_(gb)
        return out, None, None, None, None, None, None, None, None, None


def _count_kernels(z):
    """golf/count.c's library where it can run the count loss on z: a CPU tensor of float32 or bfloat16."""
    return native.library("count.c") if not z.is_cuda and z.dtype in (torch.float32, torch.bfloat16) else None


def _native_rows(fn, entry_row, a: int, b: int, ea: int, eb: int, args):
    """A golf/count.c row kernel over rows [a, b) (their entries [ea, eb)), split among torch's threads: args(i,
    j, e0, e1, t) gives the arguments for rows [i, j), entries [e0, e1), on thread t."""
    parts = [(a + i, a + j) for i, j in native.row_blocks(b - a)]
    ranges = [(ea, eb)] if len(parts) == 1 else _entry_ranges(entry_row, parts)
    native.run_blocks(fn, [args(i, j, e0, e1, t) for t, ((i, j), (e0, e1)) in enumerate(zip(parts, ranges))],
                      "golf/count.c")


def _dense_parts(rows, row_of, rho, beta):
    """A count teacher's dense parts rho rows[row_of] + beta rows[-1] as (cols (N, c), coef (N, c)): the sum over
    c of coef[:, c] rows[cols[:, c]], each column at most once per position (row_of < R - 1; a table of the shared
    row alone is one column)."""
    if rows.shape[0] == 1:
        return torch.zeros_like(row_of)[:, None], (rho + beta)[:, None]
    return torch.stack([row_of, torch.full_like(row_of, rows.shape[0] - 1)], -1), torch.stack([rho, beta], -1)


def _entry_ranges(entry_row, blocks):
    """The (start, end) entries of each row block (entry_row ascending): one block, all of them, with no host read
    (CUDA's single block); else found on the host."""
    if len(blocks) == 1:
        return [(0, entry_row.shape[0])]
    bounds = torch.searchsorted(entry_row, torch.tensor([a for a, _ in blocks] + [blocks[-1][1]],
                                                        device=entry_row.device)).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _flat_index(entry_row, ids, first_row: int, v: int):
    """Each entry's place in a row-major (rows, V) block that starts at row first_row."""
    return (entry_row - first_row).mul_(v).add_(ids)


def _table_rows(cols, values, width: int) -> torch.Tensor:
    """A sparse CSR (B, width) matrix with values[i, c] at (i, cols[i, c]): `it @ table` is the sum over c of
    values[:, c] * table[cols[:, c]] in one pass (torch marks CSR as beta and says so once; the layout here is
    the plainest one)."""
    b, c = cols.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.arange(0, b * c + 1, c, device=cols.device), cols.reshape(-1),
                                       values.reshape(-1), size=(b, width))


def _log_normaliser(z, q, z_y, y):
    """lse(z) per row from its softmax q: z_y - log q_y at the target's column (z_y, y: (N, 1)), exact to float32
    rounding while q_y is a normal float32; rows where it is not (a logit gap near 87, beyond any softcap) take
    max z - log max q (max q >= 1/V). On CUDA every row computes both (two passes there cost less than the device
    sync a test for such rows would)."""
    best = q.gather(-1, y)[:, 0]
    lse = z_y[:, 0] - best.log()
    if z.is_cuda:
        return torch.where(best >= _TINY, lse, z.amax(-1).sub_(q.amax(-1).log_()))
    small = (best < _TINY).nonzero()[:, 0]
    if small.numel():
        lse[small] = z[small].float().amax(-1).sub_(q[small].amax(-1).log_())
    return lse


def _count_entropy(ids, weight, entry_row, rows, row_of, rho, beta, kl_w) -> torch.Tensor:
    """The weighted mean entropy H(p) of a count teacher's rows (flat inputs as _CountSoftCE's), float32, exact:
    p is built row block by row block in a block-sized buffer (the dense parts as one sparse x dense product, the
    entries added in), then sum p log p with 0 log 0 = 0. It costs about what the soft cross-entropy does
    (V logarithms per row), for a constant of the student: golf.objectives computes it only for the steps whose
    values are logged."""
    n, v = row_of.shape[0], rows.shape[1]
    entropy = torch.empty(n, dtype=torch.float32, device=rows.device)
    blocks = _blocks(n, v, rows.is_cuda, _CUDA_BLOCK_FLOATS)
    p, log_p = (torch.empty((blocks[0][1], v), dtype=torch.float32, device=rows.device) for _ in range(2))
    dense_cols, dense_coef = _dense_parts(rows, row_of, rho, beta)
    for (a, b), (ea, eb) in zip(blocks, _entry_ranges(entry_row, blocks)):
        pb = p[: b - a].zero_().addmm_(_table_rows(dense_cols[a:b], dense_coef[a:b], rows.shape[0]), rows)
        pb.view(-1).index_add_(0, _flat_index(entry_row[ea:eb], ids[ea:eb], a, v), weight[ea:eb])
        # a p below _TINY (0, or a float32 rounding of 0 below it) adds ~0
        terms = torch.clamp_min(pb, _TINY, out=log_p[: b - a]).log_().mul_(pb)
        torch.sum(terms, -1, out=entropy[a:b]).neg_()
    return entropy.double().dot(kl_w.double()).float()


def _softmax_into(out, z, inv_t: float):
    """out (float32) = softmax(z * inv_t) along the last dim, with as few passes over z as torch allows; -> out."""
    if inv_t == 1.0:
        return torch.softmax(z, -1, dtype=torch.float32, out=out)  # one kernel, also upcasts bf16
    if z.dtype == torch.float32:  # the student's logits (its softcap runs in float32)
        return torch.softmax(torch.mul(z, inv_t, out=out), -1, out=out)
    return torch.softmax(out.copy_(z).mul_(inv_t), -1, out=out)


def _row_blocks(x):
    """(start, end) row ranges of x (N, V): ~4 MB of float32 per block on CPU, the whole tensor on CUDA.

    On CPU the N x V passes of the losses run block by block, so each block's later passes find it in cache
    (with it the soft loss got ~15% cheaper: docs/performance.md). Smaller blocks cost more in
    per-kernel thread wake-ups than they gain; on CUDA every kernel launch costs and one block is best."""
    return _blocks(x.shape[0], x.shape[1], x.is_cuda)


def _blocks(n: int, v: int, cuda: bool, cuda_floats: int = 0):
    """_row_blocks for N x V on the device kind `cuda`; there blocks of about `cuda_floats` if > 0 (to bound a
    block-sized buffer)."""
    floats = (cuda_floats or n * v) if cuda else _BLOCK_FLOATS
    step = max(1, floats // v)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _grad_out(grad, dtype):
    """The tensor a backward returns: the float32 gradient buffer itself, or a new one in z's dtype."""
    return grad if dtype == torch.float32 else torch.empty(grad.shape, dtype=dtype, device=grad.device)


def _flat(z, *others):
    """(..., V) logits and matching (...) / (..., K) tensors -> (N, V) and (N,) / (N, K)."""
    n = z.numel() // z.shape[-1]
    return (z.reshape(n, z.shape[-1]),) + tuple(
        None if t is None else t.reshape(n, *t.shape[z.dim() - 1 :]) for t in others
    )


def _log1mexp(a):
    """log(1 - exp(a)) for a <= 0 (a slightly positive from rounding counts as 0), floored at log(_TAIL_FLOOR).

    -expm1(a) keeps full relative precision as a -> 0, which is exactly the small-tail case that matters.
    """
    return torch.log(-torch.expm1(a.clamp(max=-_TAIL_FLOOR)))


def _mean_kl(logp, logq):
    """Mean over rows of KL(p || q), from log-probabilities on the same support (N, C); p carries no gradient.

    The gradient flows through two dot products over all N x C entries: few kernels for autograd to launch and
    sync, which on a small shared CPU costs more than the arithmetic. Their difference is a small number left
    from two large ones, though (about N x entropy each): over a 4,096 x 1,024 online batch float32 loses ~1e-3
    nats that way, enough to log a negative KL. So the value comes from per-row sums instead (no gradient, one
    more pass), and the gradient, which is exact either way, is the dot products' unchanged.
    """
    p = logp.exp()
    graph = (torch.dot(p.reshape(-1), logp.reshape(-1)) - torch.dot(p.reshape(-1), logq.reshape(-1))) / logp.shape[0]
    with torch.no_grad():
        value = (p * (logp - logq)).sum(-1).double().mean().float()
    return graph + (value - graph).detach()


def _inv_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    return 1.0 / temperature


def _check_tail(tail):
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}: use one of {TAILS}")


def _student_at(z, y, cols, inv_t: float, distinct: int):
    """(mean CE at y, the student's log-softmax at T gathered at `cols`): the student side of the renormalised
    top-K and of sampled targets. T = 1: one node for both; else _TwoTemperatureLogSoftmax (CE at 1, the columns
    at T). `distinct`: how many leading columns of a row are known distinct (see _GatherLogSoftmax)."""
    if inv_t == 1.0:
        logq = _GatherLogSoftmax.apply(z, torch.cat([cols, y.long()[:, None]], -1), 1.0, distinct, False)[0]
        return -logq[:, -1].mean(), logq[:, :-1]
    logq_y, logq = _TwoTemperatureLogSoftmax.apply(z, y.long(), cols, inv_t)
    return -logq_y.mean(), logq


def _topk_means(z, y, idx, vals, temperature: float, tail: str, valid=None):
    """(mean CE at y or None, mean KL) for flat inputs, sharing the student's log-softmax between them when possible.

    "renorm" at T != 1 needs the student at two temperatures (CE at 1, KL at T): one node,
    _TwoTemperatureLogSoftmax, with one gradient buffer (and one softmax at T = 2). "renorm" at T = 1 and
    "bucket" at any T need only the T = 1 softmax, so CE and KL share it. `valid` (bool (N,)) limits the KL mean to
    its rows.
    """
    _check_tail(tail)
    inv_t, k = _inv_temperature(temperature), idx.shape[-1]
    idx = idx.long()
    v = vals.detach().float().clamp_min(_LOGP_FLOOR)
    if tail == "bucket":
        v = torch.cat([v, _log1mexp(torch.logsumexp(v, -1))[:, None]], -1)
    logp = torch.log_softmax(v * inv_t, -1)  # tempered teacher over the K entries (+ the rest bucket)

    ce = None
    if tail == "renorm" and y is not None:
        ce, logq = _student_at(z, y, idx, inv_t, k)
    elif tail == "bucket" or inv_t == 1.0:
        cols = idx if y is None else torch.cat([idx, y.long()[:, None]], -1)
        logq, log_rest = _GatherLogSoftmax.apply(z, cols, 1.0, k, tail == "bucket")
        if y is not None:
            ce = -logq[:, k].mean()
            logq = logq[:, :k]
        if tail == "bucket":  # coarse-grain to K+1 buckets at T = 1, then temper: the same map as the teacher's
            logq = torch.log_softmax(torch.cat([logq, log_rest[:, None]], -1) * inv_t, -1)
    else:  # renorm without targets
        logq = _GatherLogSoftmax.apply(z, idx, inv_t, k, False)[0]
    if valid is not None:
        logp, logq = logp[valid], logq[valid]
    return ce, _mean_kl(logp, logq)


def _sampled_means(z, y, ids, counts, temperature: float, valid=None):
    """(mean CE at y, mean KL(p_hat || q_T)) for flat inputs, p_hat = counts / (the row's count sum).

    The student side is the renormalised top-K's (its log-softmax at T gathered at the sampled columns, the CE at
    T = 1 from the same node); only the teacher side differs: the empirical distribution is already tempered
    (the draws came from softmax(t / T)), so it is used as it is instead of tempering cached log-probs. Padding
    entries (count 0) may repeat ids: the gathers accumulate repeated columns (d = 0: none assumed distinct),
    and a zero weight gives them no value and no gradient.
    """
    c = counts.detach().float()
    # A row without draws is not a target (mask it with `valid`); the floor only keeps it from dividing by 0.
    logp = torch.log(c / c.sum(-1, keepdim=True).clamp_min(1.0)).clamp_min(_LOGP_FLOOR)
    ce, logq = _student_at(z, y, ids.long(), _inv_temperature(temperature), 0)
    if valid is not None:
        logp, logq = logp[valid], logq[valid]
    return ce, _mean_kl(logp, logq)


def sample_targets(teacher_logits, draws: int, temperature: float, generator=None):
    """`draws` tokens per position, with replacement, from the teacher's softmax(t / T) -> (ids, counts).

    teacher_logits (..., V) -> ids (n, draws) int64 and counts (n, draws) int32, n the flattened leading
    dimensions. Each row's ids are sorted; every distinct id holds its number of draws at its first occurrence
    and each repeat after it holds count 0 (a padding entry of golf.teachers.Sampled), so a row's counts sum
    to `draws`. Only (n, V) float32 probabilities and (n, draws) tensors are built: the draws are sorted and
    run-length counted in place of an (n, V) count table or an (n, draws, V) one-hot. `generator` makes the
    draws reproducible (it must be on the logits' device).
    """
    if not 1 <= draws <= MAX_DRAWS:
        raise ValueError(f"draws={draws}: use 1..{MAX_DRAWS}")
    inv_t = _inv_temperature(temperature)
    t = teacher_logits.detach()
    probs = _softmax_into(torch.empty(t.numel() // t.shape[-1], t.shape[-1], dtype=torch.float32, device=t.device),
                          t.reshape(-1, t.shape[-1]), inv_t)
    ids = torch.multinomial(probs, draws, replacement=True, generator=generator).sort(-1).values
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    cols = torch.arange(draws, device=ids.device).expand_as(ids)
    run_start = torch.where(first, cols, 0).cummax(-1).values  # each draw's first occurrence of its id
    counts = torch.zeros(ids.shape, dtype=torch.int32, device=ids.device)
    counts.scatter_add_(-1, run_start, torch.ones_like(counts))
    return ids, counts


def cross_entropy(z, y):
    """Mean cross-entropy of logits z (..., V) against integer targets y (...), in float32."""
    z, y = _flat(z, y)
    return -_GatherLogSoftmax.apply(z, y.long()[:, None], 1.0, 1, False)[0].mean()


def topk_kl(z, idx, vals, temperature: float, tail: str = "renorm"):
    """Per-token mean KL(p_T || q_T) between a cached top-K teacher and the student, at temperature T.

    idx, vals (..., K): the teacher's top-K token ids and log-probabilities at T = 1, K distinct ids per token.
    Only the K student log-probabilities are gathered; nothing of size N x V is built for the teacher.

    tail="renorm" (the study's definition): the teacher is its tempered top-K renormalised,
        p_k = softmax(vals / T)_k, and KL = sum_k p_k (log p_k - log q_k) with q the student's full-vocabulary
        softmax(z / T). The teacher puts no mass outside the K entries, so this trains the student's tail logits
        down (the study's D7); it equals the study's scatter-into-(-100) + softmax + kl_div computation.
    tail="bucket": a K+1-th bucket holds "the rest of the vocabulary". Both distributions are first
        coarse-grained at T = 1 to K+1 buckets: teacher [exp(vals), r] with r = 1 - sum exp(vals) (clamped at
        ~0: the fp16 rounding of the cached values moves r by ~1e-4, which can push it slightly negative),
        student [q_1..q_K, q_rest] with q = softmax(z) and q_rest its exact tail sum.
        Then the same tempering is applied to both: p_T ∝ [exp(vals), r]^(1/T), q_T ∝ [q_k, q_rest]^(1/T),
        i.e. the tail is treated as one token whose log-mass is log r. Applying the *same* map to both sides
        is what makes the loss zero exactly when the student's coarse-graining matches the teacher's, at any
        T. (Tempering the student over the full vocabulary first and coarse-graining after would not: spreading
        mass over many tail tokens raises its tempered weight, so even a student equal to the teacher would
        be penalised and pushed to a smaller tail.) At T = 1 it is the exact KL between the two (K+1)-way
        coarse-grainings of p and q. The tail bucket gets a gradient only through the student's total tail
        mass; how that mass is spread inside the tail is left to the CE term.
    """
    z, idx, vals = _flat(z, idx, vals)
    return _topk_means(z, None, idx, vals, temperature, tail)[1]


def _full_mean(z, teacher_logits, temperature: float, logq=None):
    """Mean exact KL(softmax(t/T) || softmax(z/T)) from flat (N, V) logits; logq = log_softmax(z/T) if known."""
    inv_t = _inv_temperature(temperature)
    if logq is None:
        logq = torch.log_softmax(z.float() * inv_t, -1)
    return _mean_kl(torch.log_softmax(teacher_logits.detach().float() * inv_t, -1), logq)


def full_kl(z, teacher_logits, temperature: float):
    """Per-token mean exact KL(softmax(t/T) || softmax(z/T)) over the full vocabulary (online teacher), float32."""
    z, teacher_logits = _flat(z, teacher_logits)
    return _full_mean(z, teacher_logits, temperature)


def _count_means(z, y, signal, temperature: float, kl_w, entropy: bool = True):
    """(mean CE at y, the count teacher's term, its value for the logs) for flat z (N, V) and the count teacher's
    golf.signals.CountDist; kl_w (N,) each row's weight in the term's mean. The term is KL(p || q) = H(p, q) - H(p)
    with entropy=True; with entropy=False it is H(p, q) alone (the same gradient: H(p) is a constant of the
    student) and its logged value NaN (not computed)."""
    if temperature != 1.0:
        raise ValueError(f"temperature={temperature}: a count teacher's exact KL is at T = 1 only (p^(1/T) "
                         "renormalised has no sparse + shared form)")
    n = z.shape[0]
    parts = (signal.ids.long(), signal.weight.detach().float(), signal.entry_row.long(), signal.rows.detach().float(),
             signal.row_of.reshape(n).long(), signal.rho.reshape(n).detach().float(),
             signal.beta.reshape(n).detach().float())
    # float32 throughout: under CUDA autocast the matrix products here would run in bf16
    with torch.autocast(z.device.type, enabled=False):
        ce, soft_ce = _CountSoftCE.apply(z, y.long(), *parts, kl_w)
        if not entropy:
            return ce, soft_ce, torch.full_like(soft_ce.detach(), float("nan"))
        kl = soft_ce - _count_entropy(*parts, kl_w)
    return ce, kl, kl.detach()


def _row_weights(n: int, valid, device) -> torch.Tensor:
    """Each row's weight in a mean over the rows of `valid` (bool (N,), None: all)."""
    if valid is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float32, device=device)
    return valid.float() / valid.sum().clamp_min(1)


def count_kl(z, signal):
    """Per-token mean exact KL(p || softmax(z)) over the full vocabulary for a count teacher's p at T = 1
    (golf.signals.CountDist: sparse entries, a row of its table and the table's last row per position), without
    an N x V teacher tensor: per row the value is lse(z) - p . z - H(p) and the gradient q - p is formed in the
    softmax's buffer (_CountSoftCE). z is what the loss sees (after any softcap)."""
    (z,) = _flat(z)
    n = z.shape[0]
    # the node computes a CE too (distill_terms shares it with the KL); any target will do for the KL alone
    y = torch.zeros(n, dtype=torch.long, device=z.device)
    return _count_means(z, y, signal, 1.0, _row_weights(n, None, z.device))[1]


def distill_terms(z, y, *, mode: str, temperature: float = 1.0, tail: str = "renorm", idx=None, vals=None,
                  teacher_top1=None, teacher_logits=None, sample_ids=None, sample_counts=None, count=None,
                  count_entropy: bool = True, teacher_valid=None):
    """The two terms of a distillation objective, unmixed -> (ce, teacher_term, parts).

    mode="soft": teacher_term = KL(p_T || q_T), a per-token mean, parts {"ce", "kl"}. The teacher is the cache
        (idx, vals; see `topk_kl` for `tail`), or sampled targets (sample_ids, sample_counts (..., M): distinct
        ids and their draw counts from p_T, 0 on padding; see below), or, given teacher_logits (..., V), an
        online teacher with the exact full-vocabulary KL, or a count teacher's distribution (`count`, a
        golf.signals.CountDist over the positions of y flattened; see `count_kl`), its exact full-vocabulary KL
        at T = 1 only, parts then also {"teacher_ce"}: the teacher's mean cross-entropy on the targets
        (-count.target_logprob), over the positions of teacher_valid. With count_entropy=False the teacher's
        entropy H(p) is not computed: the term is the soft cross-entropy H(p, q) = KL + H(p) (the KL's gradient
        exactly; its value a constant of the student higher) and parts["kl"] is NaN.
    mode="hard": teacher_term = CE(z, teacher label), parts {"ce", "hard_ce"}. The label is teacher_top1, else
        idx[..., 0] of the cache, else the argmax of teacher_logits. Sampled targets are refused: a draw count
        is no label (their most drawn id would be a noisy argmax).
    teacher_valid (...) bool: the teacher term is the mean over these positions only (a cached row that is not about
    the student's target: golf.teachers.CachedTeacher); CE still covers every position.
    parts are detached, for logging. The student's log-softmax is computed once and shared by CE and the teacher
    term whenever both are at the same temperature (hard; soft at T = 1; the cached "bucket" tail at any T).

    Sampled targets (Anshumann et al. 2025): with p_hat = counts / N (N the row's count sum), the term is
    KL(p_hat || q_T) = sum_j p_hat_j (log p_hat_j - log q_T[id_j]), p_hat carrying no gradient. Its gradient is
    that of the sampled cross-entropy -sum_j p_hat_j log q_T[id_j], and E[p_hat] = p_T, so it is an unbiased
    estimate of the exact KL's gradient, (1/T) (q_T - p_T) per row. Its value is the KL to the empirical
    distribution, logged as "kl": E[KL(p_hat || q_T)] = KL(p_T || q_T) + E[KL(p_hat || p_T)], i.e. the exact KL
    plus an offset >= 0 that does not depend on the student (the draws' own noise), so it moves as the exact KL
    does but sits above it. (An unbiased KL estimate would subtract the exact entropy of p_T from the sampled
    CE, and the draws alone admit no unbiased entropy estimate.)
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES}")
    z, y, idx, vals, teacher_top1, teacher_logits, sample_ids, sample_counts, valid = _flat(
        z, y, idx, vals, teacher_top1, teacher_logits, sample_ids, sample_counts, teacher_valid)
    if count is not None:
        if mode != "soft":
            raise ValueError("a count teacher (count) gives a distribution, no label: use mode='soft'")
        kl_w = _row_weights(z.shape[0], valid, z.device)
        ce, term, kl = _count_means(z, y, count, temperature, kl_w, count_entropy)
        teacher_ce = -count.target_logprob.detach().reshape(-1).double().dot(kl_w.double()).float()
        return ce, term, {"ce": ce.detach(), "kl": kl, "teacher_ce": teacher_ce}

    if mode == "hard":
        if sample_ids is not None:
            raise ValueError("sampled targets (sample_ids, sample_counts) are soft targets: use mode='soft'")
        if teacher_top1 is None:
            if idx is not None:
                teacher_top1 = idx[:, 0]
            elif teacher_logits is not None:
                teacher_top1 = teacher_logits.detach().argmax(-1)
            else:
                raise ValueError("hard distillation needs teacher_top1, idx or teacher_logits")
        logq = _GatherLogSoftmax.apply(z, torch.stack([y.long(), teacher_top1.long()], -1), 1.0, 1, False)[0]
        ce, hard_ce = -logq[:, 0].mean(), -(logq[:, 1] if valid is None else logq[valid, 1]).mean()
        return ce, hard_ce, {"ce": ce.detach(), "hard_ce": hard_ce.detach()}

    if idx is not None and vals is not None:
        ce, kl = _topk_means(z, y, idx, vals, temperature, tail, valid)
    elif sample_ids is not None and sample_counts is not None:
        ce, kl = _sampled_means(z, y, sample_ids, sample_counts, temperature, valid)
    elif teacher_logits is not None:
        logq = torch.log_softmax(z.float() * _inv_temperature(temperature), -1)
        ce = F.nll_loss(logq, y.long()) if temperature == 1.0 else cross_entropy(z, y)
        kl = _full_mean(z, teacher_logits, temperature, logq)
    else:
        raise ValueError("soft distillation needs idx and vals (cache), sample_ids and sample_counts (sampled "
                         "targets) or teacher_logits (online teacher)")
    return ce, kl, {"ce": ce.detach(), "kl": kl.detach()}


def mix(ce, teacher_term, *, alpha: float, mode: str, temperature: float = 1.0):
    """(1-a) CE + a w teacher_term, with w = T^2 for the soft KL (Hinton's gradient-scale correction), 1 for hard."""
    weight = temperature**2 if mode == "soft" else 1.0
    return (1 - alpha) * ce + alpha * weight * teacher_term


def distill_loss(z, y, *, alpha: float, mode: str, temperature: float = 1.0, **teacher):
    """Distillation objective -> (loss, parts): `mix` of `distill_terms` (same arguments: tail, idx, vals,
    teacher_top1, teacher_logits, sample_ids, sample_counts). Soft: (1-a) CE(z, y) + a T^2 KL(p_T || q_T); hard:
    (1-a) CE(z, y) + a CE(z, teacher label); parts hold the unscaled per-token means."""
    ce, term, parts = distill_terms(z, y, mode=mode, temperature=temperature, **teacher)
    return mix(ce, term, alpha=alpha, mode=mode, temperature=temperature), parts


# ----------------------------------------------------------------------------------------------------------
# The settings that choose a loss, checked here (golf.config.validate runs them before any work starts)


@owner_check("distill_target")
def check_target(cfg) -> None:
    check_choice("DISTILL_TARGET", cfg.distill_target, MODES)


@owner_check("distill_tail")
def check_tail(cfg) -> None:
    check_choice("DISTILL_TAIL", cfg.distill_tail, TAILS)


@owner_check("distill_draws")
def check_draws(cfg) -> None:
    """DISTILL_DRAWS samples the distribution a teacher computes in the run: soft targets only, no cache teacher."""
    if not 0 <= cfg.distill_draws <= MAX_DRAWS:
        raise GolfError(f"DISTILL_DRAWS={cfg.distill_draws}: use 0 (the teacher's exact signal) or 1..{MAX_DRAWS} "
                        "draws per position (the sampled cache format stores a count in one byte)")
    if not cfg.distill_draws:
        return
    for bad, why in ((cfg.distill_target == "hard", "DISTILL_TARGET=hard (draws are soft targets; the hard label is "
                                                     "the teacher's top-1)"),
                     (cfg.distill_teacher == "cache", "DISTILL_TEACHER=cache (a cache carries its own signal, sampled "
                                                      "targets included)"),
                     (bool(defects(cfg)), "DISTILL_SEED_FAITHFUL (the study never sampled its targets)")):
        if bad:
            raise GolfError(f"DISTILL_DRAWS={cfg.distill_draws} cannot be combined with {why}; set DISTILL_DRAWS=0")
