"""The one training loop, shared by the baseline student, the teacher and every distillation arm.

What differs between them is the `objective` (baseline cross-entropy or a distillation loss) and the
optional `teacher_source` feeding cached teacher rows with each batch. Everything else is the study's
recipe (seed-factsheet section 4), with its timing made honest:
- compile warm-up on the *exact* objective (distillation included, late-QAT graph included), then weights,
  optimizer state, loader and teacher source restored, so timed training starts from the true init and the
  first token, and no compile lands inside the budget (the study's defect D4);
- MAX_WALLCLOCK_SECONDS counts training steps only (validation excluded), with the time-based warm-down;
  the stop decision is all-reduced so every rank stops on the same step;
- EMA of the weights applied at the end; late QAT once the LR scale drops below QAT_THRESHOLD.
"""
import copy
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from golf.checkpoint import save_checkpoint
from golf.config import Config
from golf.data import Batch, DistributedTokenLoader
from golf.dist import Ctx, all_reduce
from golf.errors import GolfError
from golf.eval import eval_val
from golf.log import Logger
from golf.losses import cross_entropy
from golf.model import GPT
from golf.optim import apply_schedule, build_optimizers, lr_scale
from golf.pipeline import BatchPipeline


class CrossEntropyObjective:
    """The baseline: mean next-token cross-entropy (the same implementation the distillation losses use,
    so step-time comparisons between arms are fair)."""

    parts = ("ce",)

    def __call__(self, model, batch: Batch):
        loss = cross_entropy(model(batch.x), batch.y)
        return loss, {"ce": loss.detach()}


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    """The challenge's accumulation rule (8 // W, W must divide 8), generalised to MICRO_BATCHES; more ranks
    than micro-batches (W a multiple of it) means one micro-batch per rank."""
    if cfg.micro_batches % world_size == 0:
        return cfg.micro_batches // world_size
    if world_size % cfg.micro_batches == 0:
        return 1
    raise GolfError(f"MICRO_BATCHES={cfg.micro_batches} and the world size {world_size} do not divide each other; "
                    "use a process count that divides it (or a multiple of it) or change MICRO_BATCHES")


def resume_checkpoint_path(cfg: Config) -> str:
    """Where CHECKPOINT_EVERY writes the resumable state: beside the final checkpoint."""
    base = cfg.checkpoint_path[:-3] if cfg.checkpoint_path.endswith(".pt") else cfg.checkpoint_path
    return base + ".resume.pt"


@dataclass
class TrainResult:
    model: GPT  # EMA weights applied, eval mode off
    step: int
    train_ms: float
    checkpoint_path: str
    step_ms: list = field(default_factory=list)


def _rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def _last_good(resume_path: str, saved_step: int | None, bad_step: int) -> str:
    """Where to go back to after a non-finite loss at `bad_step`. That loss came from the weights after step
    bad_step - 1, so a resumable checkpoint of that very step holds the diverged weights; one from an earlier
    step holds weights whose loss was finite."""
    if saved_step is None:
        return "no resumable checkpoint was written (CHECKPOINT_EVERY)"
    if saved_step == bad_step - 1:
        return f"the resumable checkpoint {resume_path} (step {saved_step}) holds the weights that gave it"
    return f"last good checkpoint: {resume_path} (step {saved_step})"


def train(cfg: Config, ctx: Ctx, log: Logger, train_files: list[str], val_tokens, luts, objective=None,
          teacher_source=None, resume: dict | None = None, extra_meta: dict | None = None) -> TrainResult:
    """Train `cfg`'s model; returns the EMA model after saving the final checkpoint (rank 0).

    `resume` is a checkpoint dict written by this function with CHECKPOINT_EVERY (kind "resume"): the run
    continues exactly where it stopped (model, optimizer, EMA, step, schedule, loader position, RNG)."""
    objective = objective or CrossEntropyObjective()
    accum = grad_accum_steps(cfg, ctx.world_size)
    seed_everything(cfg.seed)
    model = GPT(cfg).to(ctx.device)
    if ctx.autocast_dtype is not None:
        model.apply_dtype_policy(ctx.autocast_dtype)
    use_compile = cfg.compile == "1" or (cfg.compile == "auto" and ctx.device.type == "cuda")
    fwd = torch.compile(model, dynamic=False) if use_compile else model
    if ctx.distributed:
        fwd = DDP(fwd, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                  broadcast_buffers=False)
    opts = build_optimizers(model, cfg)
    params = list(model.parameters())

    def new_pipeline(loader_state=None):
        loader = DistributedTokenLoader(train_files, ctx.rank, ctx.world_size, cfg.vocab_size)
        if loader_state is not None:
            loader.load_state(loader_state)
        return BatchPipeline(loader, cfg.train_batch_tokens, cfg.train_seq_len, accum, ctx.device, teacher_source)

    def one_step(pipeline: BatchPipeline, step: int, scale: float) -> torch.Tensor:
        """Forward/backward over `accum` micro-batches, clip, optimizer step; returns the mean of
        [loss, *parts] over this rank's micro-batches (a device tensor, not synced)."""
        apply_schedule(opts, cfg, step, scale)
        totals = None
        for micro in range(accum):
            batch = pipeline.next()
            if ctx.distributed:
                fwd.require_backward_grad_sync = micro == accum - 1
            with ctx.autocast():
                loss, parts = objective(fwd, batch)
            (loss / accum).backward()
            vals = torch.stack([loss.detach().float()] + [parts[k].float() for k in objective.parts])
            totals = vals if totals is None else totals + vals
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
        for opt in opts:
            opt.step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        return totals / accum

    # --- compile warm-up on the real objective, then restore everything -------------------------------------
    if cfg.warmup_steps > 0:
        model_snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt_snapshot = [copy.deepcopy(opt.state_dict()) for opt in opts]
        rng_snapshot = _rng_state()
        pipeline = new_pipeline()
        for i in range(cfg.warmup_steps):
            # The second half runs with fake-quant on, so the late-QAT graph is compiled here too.
            model.set_qat(cfg.late_qat and i >= cfg.warmup_steps // 2)
            one_step(pipeline, 0, 1.0)
            if cfg.warmup_steps <= 20 or (i + 1) % 10 == 0 or i + 1 == cfg.warmup_steps:
                log(f"warmup_step:{i + 1}/{cfg.warmup_steps}")
        pipeline.close()
        model.set_qat(False)
        model.load_state_dict(model_snapshot)
        for opt, s in zip(opts, opt_snapshot):
            opt.load_state_dict(s)
        _set_rng_state(rng_snapshot)
        del model_snapshot, opt_snapshot

    # --- state: fresh, or resumed ------------------------------------------------------------------------
    step, train_ms, qat_on, loader_state = 0, 0.0, False, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        for opt, s in zip(opts, resume["optimizers"]):
            opt.load_state_dict(s)
        step, train_ms, qat_on, loader_state = resume["step"], resume["train_ms"], resume["qat"], resume["loader"]
        _set_rng_state(resume["rng"])
        model.set_qat(qat_on)
        log(f"resume:step:{step} train_time:{train_ms:.0f}ms")
    ema = None
    if cfg.ema_enabled:
        ema = resume["ema"] if resume is not None else {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        ema = {k: v.to(ctx.device) for k, v in ema.items()}
        ema_values = list(ema.values())  # same order as model.state_dict()

    def meta():
        return {"config": cfg.to_dict(), **(extra_meta or {})}

    saved_step = step if resume is not None else None  # step of the resumable checkpoint on disk, if any

    def save_resumable(path, elapsed_ms):
        nonlocal saved_step
        saved_step = step
        if not ctx.is_master:
            return
        save_checkpoint(path, {
            **meta(), "kind": "resume", "model": model.state_dict(), "ema": ema,
            "optimizers": [opt.state_dict() for opt in opts], "step": step, "train_ms": elapsed_ms, "qat": qat_on,
            "loader": pipeline.loader_state(), "rng": _rng_state(),
        })

    pipeline = new_pipeline(loader_state)
    resume_path = resume_checkpoint_path(cfg)
    cap_ms = cfg.max_wallclock_seconds * 1000 if cfg.max_wallclock_seconds > 0 else math.inf
    step_times = []
    stop = step >= cfg.iterations
    ctx.sync()
    t0 = time.perf_counter()
    while True:
        last = stop or step >= cfg.iterations
        if last or (cfg.val_loss_every > 0 and step % cfg.val_loss_every == 0):
            ctx.sync()
            train_ms += 1000 * (time.perf_counter() - t0)
            vl, vb = eval_val(fwd, val_tokens, luts, cfg.train_seq_len, cfg.val_batch_size, ctx)
            log(f"step:{step}/{cfg.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f} train_time:{train_ms:.0f}ms "
                f"step_avg:{train_ms / max(step, 1):.2f}ms")
            log.metrics(event="val", step=step, val_loss=vl, val_bpb=vb, train_ms=train_ms)
            ctx.sync()
            t0 = time.perf_counter()
        if last:
            break
        elapsed = train_ms + 1000 * (time.perf_counter() - t0)
        scale = lr_scale(cfg, step, elapsed)
        if cfg.late_qat and not qat_on and scale < cfg.qat_threshold:
            qat_on = True
            model.set_qat(True)
            log(f"late_qat:enabled step:{step + 1} scale:{scale:.4f}")
        t_step = time.perf_counter()
        losses = one_step(pipeline, step, scale)
        if ema is not None:
            with torch.no_grad():  # ema <- decay * ema + (1 - decay) * w, one fused op over all tensors
                torch._foreach_lerp_(ema_values, [v.float() for v in model.state_dict().values()], 1 - cfg.ema_decay)
        step += 1
        # One small all-reduce per step carries the stop decision (wall clock, non-finite loss, any rank).
        approx_ms = train_ms + 1000 * (time.perf_counter() - t0)
        flags = torch.tensor([float(approx_ms >= cap_ms), float(not torch.isfinite(losses[0]))], device=ctx.device)
        all_reduce(flags, torch.distributed.ReduceOp.MAX)
        reached_cap, nonfinite = flags.tolist()
        step_times.append(1000 * (time.perf_counter() - t_step))
        if nonfinite:
            raise GolfError(f"non-finite training loss at step {step}: stopped instead of training on, no final "
                            f"checkpoint written; {_last_good(resume_path, saved_step, step)}; lower the learning "
                            "rates (MATRIX_LR, SCALAR_LR, TIED_EMBED_LR) or check the data")
        if step <= 10 or step % cfg.train_log_every == 0 or reached_cap or step == cfg.iterations:
            all_reduce(losses)
            losses = (losses / ctx.world_size).tolist()
            parts = " ".join(f"{k}:{v:.4f}" for k, v in zip(objective.parts, losses[1:]))
            log(f"step:{step}/{cfg.iterations} train_loss:{losses[0]:.4f} {parts} train_time:{approx_ms:.0f}ms "
                f"step_avg:{approx_ms / step:.2f}ms")
            log.metrics(event="train", step=step, train_loss=losses[0], train_ms=approx_ms, lr_scale=scale,
                        **dict(zip(objective.parts, losses[1:])))
        if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
            save_resumable(resume_path, approx_ms)
        if reached_cap:
            log(f"stopping_early: wallclock_cap train_time:{approx_ms:.0f}ms step:{step}/{cfg.iterations}")
            stop = True
    pipeline.close()
    if ctx.distributed:  # every rank says where it stopped: they must agree (the stop flag is all-reduced)
        print(f"rank:{ctx.rank} stopped_at_step:{step}", flush=True)
    if ctx.device.type == "cuda":
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
            f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB")
    if ema is not None:
        log("ema:applying EMA weights")
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in ema.items()})
    model.set_qat(False)
    if ctx.is_master:
        save_checkpoint(cfg.checkpoint_path, {**meta(), "kind": "final", "model": model.state_dict(), "step": step,
                                              "train_ms": train_ms})
        log(f"saved checkpoint {cfg.checkpoint_path}")
    log.metrics(event="train_end", step=step, train_ms=train_ms,
                step_ms_median=float(np.median(step_times)) if step_times else None)
    return TrainResult(model, step, train_ms, cfg.checkpoint_path, step_times)
