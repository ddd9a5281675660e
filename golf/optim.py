"""Muon for matrices, AdamW for the rest, and the study's schedules (seed-factsheet section 4)."""
import torch
import torch.distributed as dist

from golf.config import Config
from golf.model import GPT, param_groups


def newton_schulz5(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately orthogonalise G (its singular values pushed towards 1) with the quintic iteration
    of Muon, coefficients (3.4445, -4.7750, 2.0315). bf16 on CUDA as the study; fp32 elsewhere."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    X = X / (X.norm() + 1e-7)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, then Newton-Schulz orthogonalisation, scaled by sqrt(max(1, rows/cols)), with
    decoupled weight decay p <- p (1 - lr wd) before the update.

    Distributed: every rank keeps the (cheap) momentum of every matrix, so optimizer state is identical on
    all ranks and rank 0 can checkpoint it; the (expensive) orthogonalisation of matrix i runs on rank
    i mod W, and one all-reduce of a flat bf16 buffer shares the results."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, weight_decay: float):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            total = sum(p.numel() for p in params)
            flat = torch.zeros(total, device=params[0].device, dtype=torch.bfloat16)
            offset = 0
            for i, p in enumerate(params):
                g = p.grad
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
                buf.mul_(group["momentum"]).add_(g)
                if i % world == rank:
                    u = newton_schulz5(g.add(buf, alpha=group["momentum"]), group["backend_steps"])
                    u = u * max(1.0, g.size(0) / g.size(1)) ** 0.5
                    flat[offset:offset + p.numel()] = u.flatten()
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                u = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(u, alpha=-group["lr"])
                offset += p.numel()


def build_optimizers(model: GPT, cfg: Config) -> list[torch.optim.Optimizer]:
    """[Muon(matrices), AdamW(token: tok_emb + bigram table), AdamW(scalar: vectors and controls)].
    Each group remembers its base lr in `base_lr`; the schedule multiplies it."""
    muon_params, token, scalar = param_groups(model)
    fused = next(model.parameters()).is_cuda
    adam = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.adam_wd, fused=fused)
    opts = [
        Muon(muon_params, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps,
             weight_decay=cfg.muon_wd),
        torch.optim.AdamW([dict(params=token, lr=cfg.tied_embed_lr)], **adam),
        torch.optim.AdamW([dict(params=scalar, lr=cfg.scalar_lr)], **adam),
    ]
    for opt in opts:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return opts


def run_clocks(cfg: Config, step: int, elapsed_ms: float) -> list[tuple[float, float, float]]:
    """The clocks the run's length is counted on, each (done, total, one step's length), in its own unit: steps
    always (ITERATIONS); under a wall-clock budget also milliseconds of training time, a step's length estimated
    as elapsed / step. The run ends on whichever clock runs out first. The one home of this rule: the LR
    warm-down (`lr_scale`) and the run's progress (`run_progress`, the distillation schedule) both read it."""
    clocks = [(step, cfg.iterations, 1)]
    if cfg.max_wallclock_seconds > 0:
        clocks.append((elapsed_ms, cfg.max_wallclock_seconds * 1000, elapsed_ms / max(step, 1)))
    return clocks


def run_progress(cfg: Config, step: int, elapsed_ms: float) -> float:
    """The fraction of the run done before step `step + 1`, in [0, 1]: that of the clock nearest its end (with
    the study's settings, 200,000 iterations and 600 s, the wall clock)."""
    return min(max(done / total if total > 0 else 1.0 for done, total, _ in run_clocks(cfg, step, elapsed_ms)), 1.0)


def lr_scale(cfg: Config, step: int, elapsed_ms: float) -> float:
    """LR multiplier: linear warm-down to 0 over the last WARMDOWN_ITERS steps, counted on each of the run's clocks
    (`run_clocks`: in iterations and, under a wall-clock budget, in estimated steps left); the lowest wins. With
    the study's settings (200,000 iterations, 600 s) that is the wall clock, exactly its rule."""
    if cfg.warmdown_iters <= 0:
        return 1.0
    scale = 1.0
    for done, total, per_step in run_clocks(cfg, step, elapsed_ms):
        left, warmdown = max(total - done, 0), cfg.warmdown_iters * per_step
        if left <= warmdown:
            scale = min(scale, left / max(warmdown, 1e-9))
    return scale


def warmup_plan(cfg: Config) -> list[bool]:
    """The compile warm-up's steps, True where late-QAT fake quantisation is on: the first half without, the
    second half with, so both training graphs are compiled before the timed run. With LATE_QAT the warm-up is
    at least two steps (one of each): WARMUP_STEPS=1 would otherwise compile only the QAT graph and the first
    timed step would compile the other inside the budget (docs/decisions.md)."""
    n = cfg.warmup_steps
    if n <= 0 or not cfg.late_qat:
        return [False] * max(n, 0)
    n = max(n, 2)
    return [i >= n // 2 for i in range(n)]


def muon_momentum(cfg: Config, step: int) -> float:
    f = min(step / cfg.muon_momentum_warmup_steps, 1.0) if cfg.muon_momentum_warmup_steps > 0 else 1.0
    return (1 - f) * cfg.muon_momentum_warmup_start + f * cfg.muon_momentum


def apply_schedule(opts, cfg: Config, step: int, scale: float):
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum(cfg, step)
