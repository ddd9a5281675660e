"""What every training script does before its loop: resolve the run, check the data, tokenizer and free disk
(before writing anything), then open the logs and print the challenge's preamble."""
import os
import platform
import subprocess
from dataclasses import dataclass, fields

import torch

from golf.atomic import require_free_disk
from golf.checkpoint import load_checkpoint, resume_checkpoint_path
from golf.config import Config
from golf.dist import Ctx, init_dist
from golf.errors import GolfError
from golf.eval import load_val_tokens
from golf.log import Logger
from golf.model import GPT
from golf.shards import list_shards, read_header, shard_problem
from golf.tokenizer import build_byte_luts, file_sha256, load_tokenizer, luts_to_torch
from golf.data import grad_accum_steps


@dataclass
class Run:
    cfg: Config
    ctx: Ctx
    train_files: list
    val_tokens: torch.Tensor
    luts: object
    tokenizer_sha256: str
    log: Logger | None = None  # set by open_log
    resume: dict | None = None  # the resumable checkpoint a --resume continues from (set by prepare_run)
    restart: bool = False  # --restart: open_log deletes this RUN_ID's resumable checkpoint


def dry_run(cfg: Config):
    """Print the resolved config and the model size without touching data."""
    for line in cfg.lines():
        print(line)
    with torch.device("meta"):
        print(f"model_params:{GPT(cfg).num_params()}")


def _git_describe() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _min_checkpoint_bytes(cfg: Config) -> int:
    """A lower bound of the disk the run's checkpoints take: the final weights at >= 2 bytes each (bf16 runs keep
    the embeddings in bf16) and, with CHECKPOINT_EVERY, a resumable checkpoint with the weights again and their
    fp32 EMA (optimizer state and the artifact come on top). Being a lower bound, it never refuses a run that
    would fit, and it catches a full disk before training rather than when the checkpoint is saved."""
    with torch.device("meta"):
        params = GPT(cfg).num_params()
    resumable = (2 + 4 * cfg.ema_enabled) * params if cfg.checkpoint_every > 0 else 0
    return 2 * params + resumable




def rerun_options(p):
    """The flags of a training script that finds a resumable checkpoint of its RUN_ID (`rerun_state`)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from <CHECKPOINT_PATH>.resume.pt")
    g.add_argument("--restart", action="store_true",
                   help="start over although <CHECKPOINT_PATH>.resume.pt exists (it is overwritten as the run goes)")


# What must not change across a resume: the model (every field of its group) and what decides the batches.
SAME_ON_RESUME = [f.name for f in fields(Config) if f.metadata["group"] == "model"] + [
    "vocab_size", "train_batch_tokens", "train_seq_len", "seed", "data_path"]


def _resume_state(cfg: Config, tokenizer_sha256: str) -> dict:
    """The resumable checkpoint of this run, refused unless it was written by the same run settings."""
    path = resume_checkpoint_path(cfg)
    if not os.path.isfile(path):
        raise GolfError(f"--resume: no resumable checkpoint {path}; it is written every CHECKPOINT_EVERY "
                        "steps (set it > 0), or start without --resume")
    resume = load_checkpoint(path)
    if resume.get("kind") != "resume":
        raise GolfError(f"{path} is not a resumable checkpoint (kind {resume.get('kind')!r}); pass the run's RUN_ID "
                        "or CHECKPOINT_PATH, or start without --resume")
    if resume.get("tokenizer_sha256") != tokenizer_sha256:
        raise GolfError(f"{path} was trained with another tokenizer; resume with the same TOKENIZER_PATH")
    mismatch = [f"{k.upper()}={resume['config'].get(k)!r} there, {getattr(cfg, k)!r} here" for k in SAME_ON_RESUME
                if resume["config"].get(k) != getattr(cfg, k)]
    if mismatch:
        raise GolfError(f"{path} was written with another configuration ({'; '.join(mismatch)}); "
                        "resume with the same settings, or start a new RUN_ID without --resume")
    return resume


def rerun_state(cfg: Config, tokenizer_sha256: str, resume: bool, restart: bool) -> dict | None:
    """What a run does with a resumable checkpoint of its RUN_ID: continue it (--resume: the checkpoint's
    dict), start over (--restart: `open_log` deletes it, said in one line), or, given neither, refuse (a rerun
    never silently discards one)."""
    if resume:
        return _resume_state(cfg, tokenizer_sha256)
    path = resume_checkpoint_path(cfg)
    if not os.path.isfile(path):
        return None
    step = load_checkpoint(path, mmap=True).get("step")
    if not restart:
        raise GolfError(f"{path} holds run {cfg.run_id} stopped at step {step}: continue it with --resume, or "
                        "start over with --restart (or another RUN_ID)")
    return None


def check_train_shards(paths: list[str], vocab_size: int, ctx: Ctx):
    """Every train shard's header, size and ids (< VOCAB_SIZE) before anything is written: each rank checks
    its share (a vectorised max over the memmap; docs/performance.md has its cost per GB) and every rank refuses
    the first bad shard found by any."""
    problems = [p for p in (shard_problem(path, vocab_size, "VOCAB_SIZE") for path in paths[ctx.rank::ctx.world_size])
                if p]
    if ctx.distributed:
        found = [None] * ctx.world_size
        torch.distributed.all_gather_object(found, problems[:1])
        problems = sorted(sum(found, []))  # each message starts with its path: the first shard in stream order
    if problems:
        raise GolfError(problems[0])


def prepare_run(cfg: Config, resume: bool = False, restart: bool = False) -> Run:
    """Resolve the run, start the process group and check every input (tokenizer, train and val shards, free
    disk, a resumable checkpoint of this RUN_ID: `rerun_state`) on every rank, writing nothing: a refused run
    leaves the files of an earlier run with the same RUN_ID (its logs included) untouched. A script runs its
    own refusals next, then `open_log`."""
    if resume and not (cfg.run_id or cfg.checkpoint_path):  # before resolve_paths draws a random RUN_ID
        raise GolfError("--resume needs the run's RUN_ID or CHECKPOINT_PATH to find its resumable checkpoint")
    cfg.resolve_paths()
    ctx = init_dist(cfg.device, cfg.dtype)
    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    luts = luts_to_torch(build_byte_luts(sp, cfg.vocab_size), ctx.device)
    train_files = list_shards(cfg.data_path, "train")
    if sum(read_header(p) for p in train_files) == 0:
        raise GolfError(f"the train shards in {cfg.data_path} hold no tokens (DATA_PATH); re-create them with prepare_data.py")
    check_train_shards(train_files, cfg.vocab_size, ctx)
    val_tokens = load_val_tokens(cfg.data_path, cfg.train_seq_len, cfg.val_max_tokens, cfg.vocab_size)
    require_free_disk(os.path.dirname(cfg.checkpoint_path) or ".", _min_checkpoint_bytes(cfg),
                      "the checkpoints of this run (at least)", "free some space or set CHECKPOINT_PATH to another disk")
    sha = file_sha256(cfg.tokenizer_path)
    state = rerun_state(cfg, sha, resume, restart)
    return Run(cfg, ctx, train_files, val_tokens, luts, sha, resume=state, restart=restart)


def open_log(run: Run, script: str, append: bool = False) -> Logger:
    """Open logs/<RUN_ID>.txt and .jsonl (rank 0; an earlier log of the same RUN_ID is kept under another name
    (golf.log.Logger), or continued with `append`, as a resumed run does) and log the challenge's preamble
    lines. With --restart, the run's stale resumable checkpoint is deleted first."""
    cfg, ctx = run.cfg, run.ctx
    stale = resume_checkpoint_path(cfg)
    if run.restart and ctx.is_master and os.path.isfile(stale):  # every refusal is behind us: it may go now
        step = load_checkpoint(stale, mmap=True).get("step")
        for p in (stale, stale + ".sha256"):
            if os.path.isfile(p):
                os.remove(p)
        print(f"restart: run {cfg.run_id} starts over; its resumable checkpoint {stale} (step {step}) is deleted",
              flush=True)
    run.log = log = Logger(cfg.log_dir, cfg.run_id, enabled=ctx.is_master, append=append)
    log(log.txt_path)
    log(f"script:{script} git:{_git_describe()} python:{platform.python_version()} torch:{torch.__version__} "
        f"device:{torch.cuda.get_device_name(ctx.device) if ctx.device.type == 'cuda' else platform.processor() or 'cpu'}",
        console=False)
    for line in cfg.lines():
        log(f"config:{line}", console=False)
    log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={cfg.tokenizer_path}")
    log(f"train_loader:dataset:{os.path.basename(os.path.normpath(cfg.data_path))} train_shards:{len(run.train_files)} "
        f"pattern={os.path.join(cfg.data_path, '*_train_*.bin')}")  # what check_submission.py's leakage check reads
    log(f"val_loader:shards pattern={os.path.join(cfg.data_path, '*_val_*.bin')} tokens:{len(run.val_tokens) - 1}")
    with torch.device("meta"):
        log(f"model_params:{GPT(cfg).num_params()}")
    log(f"world_size:{ctx.world_size} grad_accum_steps:{grad_accum_steps(cfg, ctx.world_size)}")
    log(f"attention_mode:{'gqa' if cfg.num_kv_heads < cfg.num_heads else 'mha'} num_heads:{cfg.num_heads} "
        f"num_kv_heads:{cfg.num_kv_heads}")
    log(f"tie_embeddings:True embed_lr:{cfg.tied_embed_lr} head_lr:0.0 matrix_lr:{cfg.matrix_lr} "
        f"scalar_lr:{cfg.scalar_lr}")
    log(f"train_batch_tokens:{cfg.train_batch_tokens} train_seq_len:{cfg.train_seq_len} iterations:{cfg.iterations} "
        f"warmup_steps:{cfg.warmup_steps} max_wallclock_seconds:{cfg.max_wallclock_seconds:.3f}")
    log(f"seed:{cfg.seed}")
    log(f"device:{ctx.device.type} autocast:{ctx.autocast_dtype or 'fp32'}")
    log.metrics(event="config", script=script, config=cfg.to_dict(), world_size=ctx.world_size)
    return log


def start_run(cfg: Config, script: str, args=None) -> Run:
    """`prepare_run` then `open_log` (continued with --resume), for scripts without refusals of their own; `args`
    carry `rerun_options`."""
    run = prepare_run(cfg, getattr(args, "resume", False), getattr(args, "restart", False))
    open_log(run, script, append=run.resume is not None)
    return run
