"""The one training loop, shared by the baseline student, the teacher and every distillation arm.

What differs between them is the `objective` (baseline cross-entropy, or a distillation objective with its
teacher, golf/objectives.py). Everything else is the study's recipe (seed-factsheet section 4), with its
timing made honest:
- compile warm-up on the *exact* objective (distillation included, late-QAT graph included), then weights,
  optimizer state, RNG, loader and teacher restored, so timed training starts from the true init and the
  first token, and no compile lands inside the budget (the study's defect D4); a compile that still does is
  logged (`warning: compile_in_timed_step`) and counted in the train_end metrics;
- MAX_WALLCLOCK_SECONDS counts training steps only (validation excluded), with the time-based warm-down;
  the stop decision is all-reduced so every rank stops on the same step;
- EMA of the weights applied at the end; late QAT once the LR scale drops below QAT_THRESHOLD.

`TrainState` is the run at any moment (model, EMA, optimizers, step, clock, QAT, loader position) with its
operations; a teacher gets it through `Teacher.bind` and may read what it needs (the EMA weights, the step,
the elapsed training time). `train` is the loop over it.
"""
import copy
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from golf.checkpoint import resume_checkpoint_path, save_checkpoint
from golf.config import Config
from golf.data import DistributedTokenLoader, grad_accum_steps
from golf.dist import CompileWatch, Ctx, all_reduce, compile_enabled, maybe_compile
from golf.errors import GolfError, rerun_command, stopped_at
from golf.eval import eval_val
from golf.log import Logger
from golf.model import GPT
from golf.objectives import CrossEntropyObjective
from golf.optim import apply_schedule, build_optimizers, lr_scale, run_progress, warmup_plan
from golf.pipeline import BatchPipeline


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class Clock:
    """Training time: it runs during steps and pauses for evaluation (the budget counts training only)."""

    def __init__(self, ctx: Ctx, train_ms: float = 0.0):
        self.ctx, self.train_ms, self.t0 = ctx, train_ms, None

    def start(self):
        self.ctx.sync()
        self.t0 = time.perf_counter()

    def pause(self):
        self.ctx.sync()
        self.train_ms += 1000 * (time.perf_counter() - self.t0)

    def now_ms(self) -> float:
        """Training time so far, without a device sync."""
        return self.train_ms + 1000 * (time.perf_counter() - self.t0)


class TrainState:
    """The run: model (and its compiled / DDP forward), EMA, optimizers, step, clock, QAT flag, loader position."""

    def __init__(self, cfg: Config, ctx: Ctx, train_files: list[str], objective):
        self.cfg, self.ctx, self.train_files, self.objective = cfg, ctx, train_files, objective
        self.teacher = objective.teacher
        self.accum = grad_accum_steps(cfg, ctx.world_size)
        seed_everything(cfg.seed)
        self.model = GPT(cfg).to(ctx.device)
        if ctx.autocast_dtype is not None:
            self.model.apply_dtype_policy(ctx.autocast_dtype)
        fwd = maybe_compile(self.model, cfg.compile, ctx.device)
        if ctx.distributed:
            fwd = DDP(fwd, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                      broadcast_buffers=False)
        self.fwd = fwd
        self.opts = build_optimizers(self.model, cfg)
        self.params = list(self.model.parameters())
        self.step, self.qat_on, self.loader_state = 0, False, None
        self.clock = Clock(ctx)
        # Compiles seen by this process (None when nothing is compiled): a compile inside a timed step is logged.
        self.compiles = CompileWatch() if compile_enabled(cfg.compile, ctx.device) else None
        self.timed_compiles = 0
        self.ema: dict | None = None  # fp32 EMA of model.state_dict(), same order
        self.saved_step: int | None = None  # step of the resumable checkpoint on disk, if any
        self.distill_on = False  # whether the objective's teacher term was on in the last step (the switch is logged)
        if self.teacher is not None:
            self.teacher.bind(self)

    # --- batches and steps -----------------------------------------------------------------------------------
    def pipeline(self, loader_state: dict | None = None, teacher=True) -> BatchPipeline:
        """A batch pipeline from the stream's start (or `loader_state`), the teacher reset with it (none with
        teacher=False)."""
        cfg, ctx = self.cfg, self.ctx
        loader = DistributedTokenLoader(self.train_files, ctx.rank, ctx.world_size, cfg.vocab_size)
        if loader_state is not None:
            loader.load_state(loader_state)
        teacher = self.teacher if teacher else None
        if teacher is not None:
            teacher.reset()
        in_loader = teacher if teacher is not None and teacher.where == "loader" else None
        return BatchPipeline(loader, cfg.train_batch_tokens, cfg.train_seq_len, self.accum, ctx.device, in_loader)

    def optimizer_step(self, pipeline: BatchPipeline, step: int, scale: float, objective=None,
                       progress: float = 0.0) -> torch.Tensor:
        """Forward/backward over `accum` micro-batches, clip, optimizer step; returns the mean of [loss, *parts]
        over this rank's micro-batches (a device tensor, not synced). `objective` defaults to the run's; it is
        called at the run's `progress` fraction (golf.optim.run_progress: its distillation schedule reads it)."""
        cfg, ctx, objective = self.cfg, self.ctx, objective or self.objective
        apply_schedule(self.opts, cfg, step, scale)
        totals = None
        for micro in range(self.accum):
            batch = pipeline.next()
            if ctx.distributed:
                self.fwd.require_backward_grad_sync = micro == self.accum - 1
            with ctx.autocast():
                loss, parts = objective(self.fwd, batch, progress)
            (loss / self.accum).backward()
            vals = torch.stack([loss.detach().float()] + [parts[k].float() for k in objective.parts])
            totals = vals if totals is None else totals + vals
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip_norm)
        for opt in self.opts:
            opt.step()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        return totals / self.accum

    def advance(self, pipeline: BatchPipeline, scale: float, progress: float) -> torch.Tensor:
        """One timed training step at the run's `progress`: optimizer step, EMA update, the teacher's
        `after_step` (an EMA teacher updates its weights there), step count."""
        losses = self.optimizer_step(pipeline, self.step, scale, progress=progress)
        if self.ema is not None:
            with torch.no_grad():  # ema <- decay * ema + (1 - decay) * w, one fused op over all tensors
                torch._foreach_lerp_(list(self.ema.values()), [v.float() for v in self.model.state_dict().values()],
                                     1 - self.cfg.ema_decay)
        if self.teacher is not None:
            self.teacher.after_step(self)
        self.step += 1
        return losses

    def maybe_enable_qat(self, scale: float, log: Logger):
        if self.cfg.late_qat and not self.qat_on and scale < self.cfg.qat_threshold:
            self.qat_on = True
            self.model.set_qat(True)
            log(f"late_qat:enabled step:{self.step + 1} scale:{scale:.4f}")

    @property
    def overtaking(self):
        """The objective's DISTILL_UNTIL_OVERTAKEN rule (golf.objectives.Overtaking), or None."""
        schedule = self.objective.schedule
        return schedule.overtaking if schedule is not None else None

    def running_gap(self, losses: torch.Tensor, progress: float) -> torch.Tensor | None:
        """This rank's running gap student CE - teacher CE (Overtaking.observe) after a step with the teacher term
        on at `progress`, from the step's mean parts `losses` (optimizer_step's); None without the rule or with the
        term off. The same on every rank (progress and the rule's state are)."""
        if self.overtaking is None or not self.objective.schedule.on(progress):
            return None
        parts = self.objective.parts
        return self.overtaking.observe(losses[1 + parts.index("ce")], losses[1 + parts.index("teacher_ce")])

    def note_distill_switch(self, progress: float, log: Logger):
        """Log `distill:on` / `distill:off` when the objective's teacher term switches for the coming step."""
        schedule = self.objective.schedule
        if schedule is not None and schedule.on(progress) != self.distill_on:
            self.distill_on = not self.distill_on
            log(f"distill:{'on' if self.distill_on else 'off'} step:{self.step + 1} frac:{progress:.4f}")

    # --- warm-up, resume, checkpoints ----------------------------------------------------------------------
    def warm_up(self, log: Logger):
        """The steps of `warmup_plan` on the exact objective (the second half with fake-quant on, so both training
        graphs, without and with late QAT, are compiled), at progress values cycling through its schedule's
        `warmup_progress` (teacher term on, and off where the run has it off), then weights, optimizer state and
        RNG restored; the loader and teacher restart with the next pipeline. The warm-up takes no `advance`, so an
        EMA teacher's weights stay the initial ones. (Only the seed-faithful D4 arm has an objective with
        another `warmup_objective`: its distillation graph then compiles inside the budget, and is logged.)"""
        model = self.model
        warm = getattr(self.objective, "warmup_objective", self.objective)
        model_snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt_snapshot = [copy.deepcopy(opt.state_dict()) for opt in self.opts]
        rng_snapshot = _rng_state()
        plan = warmup_plan(self.cfg)
        points = warm.schedule.warmup_progress() if warm.schedule is not None else (0.0,)
        seen, t0 = self.compiles.count if self.compiles else 0, time.perf_counter()
        pipeline = self.pipeline(teacher=warm.teacher is not None)
        for i, qat in enumerate(plan):
            model.set_qat(qat)
            self.optimizer_step(pipeline, 0, 1.0, warm, progress=points[i % len(points)])
            if len(plan) <= 20 or (i + 1) % 10 == 0 or i + 1 == len(plan):
                log(f"warmup_step:{i + 1}/{len(plan)}")
        pipeline.close()
        self.ctx.sync()
        compiled = f" compiles:{self.compiles.count - seen}" if self.compiles else ""
        log(f"warmup:done steps:{len(plan)} qat_steps:{sum(plan)}{compiled} "
            f"time:{1000 * (time.perf_counter() - t0):.0f}ms")
        model.set_qat(False)
        model.load_state_dict(model_snapshot)
        for opt, s in zip(self.opts, opt_snapshot):
            opt.load_state_dict(s)
        _set_rng_state(rng_snapshot)

    def restore(self, resume: dict, log: Logger):
        """Continue a resumable checkpoint exactly (model, optimizers, EMA, teacher state, step, clock, QAT,
        loader, RNG)."""
        self.model.load_state_dict(resume["model"])
        if self.teacher is not None:
            self.teacher.load_resume_state(resume.get("teacher"))
        for opt, s in zip(self.opts, resume["optimizers"]):
            opt.load_state_dict(s)
        if self.overtaking is not None and resume.get("overtaking") is not None:
            self.overtaking.load_state_dict(resume["overtaking"], self.ctx.device)
        self.step, self.qat_on, self.loader_state = resume["step"], resume["qat"], resume["loader"]
        self.clock.train_ms = resume["train_ms"]
        self.saved_step = self.step
        _set_rng_state(resume["rng"])
        self.model.set_qat(self.qat_on)
        log(f"resume:step:{self.step} train_time:{self.clock.train_ms:.0f}ms")

    def start_ema(self, resume: dict | None):
        if self.cfg.ema_enabled:
            ema = resume["ema"] if resume is not None else {
                k: v.detach().float().clone() for k, v in self.model.state_dict().items()}
            self.ema = {k: v.to(self.ctx.device) for k, v in ema.items()}

    def save_resumable(self, path: str, elapsed_ms: float, pipeline: BatchPipeline, meta: dict):
        self.saved_step = self.step
        if not self.ctx.is_master:
            return
        save_checkpoint(path, {
            **meta, "kind": "resume", "model": self.model.state_dict(), "ema": self.ema,
            "teacher": self.teacher.resume_state() if self.teacher is not None else None,
            "overtaking": self.overtaking.state_dict() if self.overtaking is not None else None,
            "optimizers": [opt.state_dict() for opt in self.opts], "step": self.step, "train_ms": elapsed_ms,
            "qat": self.qat_on, "loader": pipeline.loader_state(), "rng": _rng_state(),
        })

    def finish(self, log: Logger, meta: dict):
        """Apply the EMA weights, switch fake-quant off and save the final checkpoint (rank 0)."""
        if self.ema is not None:
            log("ema:applying EMA weights")
            self.model.load_state_dict({k: v.to(self.model.state_dict()[k].dtype) for k, v in self.ema.items()})
        self.model.set_qat(False)
        if self.compiles is not None:
            self.compiles.close()
        if self.ctx.is_master:
            save_checkpoint(self.cfg.checkpoint_path, {**meta, "kind": "final", "model": self.model.state_dict(),
                                                       "step": self.step, "train_ms": self.clock.train_ms})
            log(f"saved checkpoint {self.cfg.checkpoint_path}")


def _evaluate(state: TrainState, val_tokens, luts, log: Logger):
    cfg = state.cfg
    state.clock.pause()
    vl, vb = eval_val(state.fwd, val_tokens, luts, cfg.train_seq_len, cfg.val_batch_size, state.ctx)
    ms, step = state.clock.train_ms, state.step
    log(f"step:{step}/{cfg.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f} train_time:{ms:.0f}ms "
        f"step_avg:{ms / max(step, 1):.2f}ms")
    log.metrics(event="val", step=step, val_loss=vl, val_bpb=vb, train_ms=ms)
    state.clock.start()


def _stop_flags(state: TrainState, losses: torch.Tensor, elapsed_ms: float, cap_ms: float,
                gap: torch.Tensor | None = None) -> tuple[bool, bool, float, float | None]:
    """(wall-clock cap reached, non-finite loss, the slowest rank's training time, the largest running CE gap over
    the ranks or None), the same on every rank: one small all-reduce per step, so all ranks stop on the same step,
    schedule the next one from the same time and switch the teacher term off together (`gap`: this rank's
    TrainState.running_gap, None on every rank alike)."""
    flags = torch.tensor([float(elapsed_ms >= cap_ms), float(not torch.isfinite(losses[0])), elapsed_ms],
                         dtype=torch.float64, device=state.ctx.device)
    if gap is not None:
        flags = torch.cat([flags, gap.reshape(1).to(flags)])
    all_reduce(flags, torch.distributed.ReduceOp.MAX)
    reached_cap, nonfinite, slowest_ms, *worst_gap = flags.tolist()
    return bool(reached_cap), bool(nonfinite), slowest_ms, worst_gap[0] if worst_gap else None


def _timed_step(state: TrainState, pipeline: BatchPipeline, scale: float, progress: float, log: Logger) -> torch.Tensor:
    """state.advance, logging any compile it triggered: that compile ran inside the budget, so the warm-up
    missed a graph (tests/test_compile.py requires that none does)."""
    seen = state.compiles.count if state.compiles is not None else 0
    losses = state.advance(pipeline, scale, progress)
    if state.compiles is not None and state.compiles.count > seen:
        ids = state.compiles.since(seen)
        state.timed_compiles += len(ids)
        log(f"warning: compile_in_timed_step step:{state.step} compiles:{len(ids)} ids:{','.join(ids)} (its time "
            "counts against the budget: the warm-up did not compile this graph)")
    return losses


def _logs_step(cfg: Config, step: int) -> bool:
    """Whether the train line of `step` is logged (the wall-clock cap's step is logged too)."""
    return step <= 10 or step % cfg.train_log_every == 0 or step == cfg.iterations


def _note_progress(state: TrainState, resume_path: str, what: str):
    """Keep the interruption line current (golf.errors.STOP): where the run is, and the resumable checkpoint a
    `--resume` continues from, if one was written."""
    if state.saved_step is None:
        stopped_at(what)
    else:
        stopped_at(what, f"the resumable checkpoint {resume_path} (step {state.saved_step})",
                   rerun_command(add=("--resume",), drop=("--restart",)))


def _log_train(state: TrainState, losses: torch.Tensor, elapsed_ms: float, scale: float, log: Logger):
    cfg, parts_names, step = state.cfg, state.objective.parts, state.step
    all_reduce(losses)
    losses = (losses / state.ctx.world_size).tolist()
    named = dict(zip(parts_names, losses[1:]))
    if state.overtaking is not None and state.overtaking.worst_gap is not None:  # DISTILL_UNTIL_OVERTAKEN's reading
        named["running_gap"] = state.overtaking.worst_gap
    parts = " ".join(f"{k}:{v:.4f}" for k, v in named.items())
    log(f"step:{step}/{cfg.iterations} train_loss:{losses[0]:.4f} {parts} train_time:{elapsed_ms:.0f}ms "
        f"step_avg:{elapsed_ms / step:.2f}ms")
    log.metrics(event="train", step=step, train_loss=losses[0], train_ms=elapsed_ms, lr_scale=scale,
                **named)


def train(cfg: Config, ctx: Ctx, log: Logger, train_files: list[str], val_tokens, luts, objective=None,
          resume: dict | None = None, extra_meta: dict | None = None) -> TrainResult:
    """Train `cfg`'s model with `objective` (default cross-entropy); returns the EMA model after saving the final
    checkpoint (rank 0).

    `resume` is a checkpoint dict written by this function with CHECKPOINT_EVERY (kind "resume"): the run
    continues exactly where it stopped (model, optimizer, EMA, step, schedule, loader position, RNG)."""
    state = TrainState(cfg, ctx, train_files, objective or CrossEntropyObjective())
    if cfg.warmup_steps > 0:
        state.warm_up(log)
    if resume is not None:
        state.restore(resume, log)
    state.start_ema(resume)
    meta = {"config": cfg.to_dict(), **(extra_meta or {})}
    pipeline = state.pipeline(state.loader_state)
    resume_path = resume_checkpoint_path(cfg)
    cap_ms = cfg.max_wallclock_seconds * 1000 if cfg.max_wallclock_seconds > 0 else math.inf
    step_times = []
    stop = state.step >= cfg.iterations
    # The time the next step's LR scale and distillation schedule are read at: the slowest rank's at the end of
    # the previous step (all-reduced with the stop flags), so every rank switches on the same step.
    schedule_ms = state.clock.train_ms
    _note_progress(state, resume_path, f"at step {state.step}/{cfg.iterations} of training")
    state.clock.start()
    while True:
        last = stop or state.step >= cfg.iterations
        if last or (cfg.val_loss_every > 0 and state.step % cfg.val_loss_every == 0):
            _evaluate(state, val_tokens, luts, log)
        if last:
            break
        scale, progress = lr_scale(cfg, state.step, schedule_ms), run_progress(cfg, state.step, schedule_ms)
        state.maybe_enable_qat(scale, log)
        state.note_distill_switch(progress, log)
        # Which steps' values the objective must compute exactly (a count teacher's KL value, golf.objectives): the
        # logged ones, and any that could reach the wall-clock cap (within three of the last step's time of it).
        near_cap = bool(step_times) and schedule_ms + 3 * step_times[-1] >= cap_ms
        state.objective.log_values = _logs_step(cfg, state.step + 1) or near_cap
        t_step = time.perf_counter()
        losses = _timed_step(state, pipeline, scale, progress, log)
        _note_progress(state, resume_path, f"at step {state.step}/{cfg.iterations} of training")
        approx_ms = state.clock.now_ms()
        reached_cap, nonfinite, schedule_ms, worst_gap = _stop_flags(state, losses, approx_ms, cap_ms,
                                                                     state.running_gap(losses, progress))
        if state.overtaking is not None and state.overtaking.decide(worst_gap, state.step):
            log(f"distill:overtaken step:{state.step} running_gap:{worst_gap:.4f} (the student's running CE below the "
                f"teacher's for {state.overtaking.below} steps on every rank)")
        step_times.append(1000 * (time.perf_counter() - t_step))
        if nonfinite:
            raise GolfError(f"non-finite training loss at step {state.step}: stopped instead of training on, no final "
                            f"checkpoint written; {_last_good(resume_path, state.saved_step, state.step)}; lower the "
                            "learning rates (MATRIX_LR, SCALAR_LR, TIED_EMBED_LR) or check the data")
        if _logs_step(cfg, state.step) or reached_cap:
            _log_train(state, losses, approx_ms, scale, log)
        if cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0:
            state.save_resumable(resume_path, approx_ms, pipeline, meta)
            _note_progress(state, resume_path, f"at step {state.step}/{cfg.iterations} of training")
        if reached_cap:
            log(f"stopping_early: wallclock_cap train_time:{approx_ms:.0f}ms step:{state.step}/{cfg.iterations}")
            stop = True
    pipeline.close()
    if ctx.distributed:  # every rank says where it stopped: they must agree (the stop flag is all-reduced)
        print(f"rank:{ctx.rank} stopped_at_step:{state.step}", flush=True)
    if ctx.device.type == "cuda":
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
            f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB")
    state.finish(log, meta)
    stopped_at(f"after training (step {state.step}), in the export", f"the final checkpoint {cfg.checkpoint_path}",
               f"python quantize.py {cfg.checkpoint_path} && python eval_bpb.py "
               f"{cfg.checkpoint_path.removesuffix('.pt')}.int6.ptz")
    log.metrics(event="train_end", step=state.step, train_ms=state.clock.train_ms,
                step_ms_median=float(np.median(step_times)) if step_times else None,
                timed_compiles=state.timed_compiles if state.compiles is not None else None)
    return TrainResult(state.model, state.step, state.clock.train_ms, cfg.checkpoint_path, step_times)
