"""What every training script does before its loop: resolve the run, check the data, tokenizer and free disk
(before writing anything), then open the logs and print the challenge's preamble."""
import os
import platform
import subprocess
from dataclasses import dataclass

import torch

from golf.atomic import require_free_disk
from golf.config import Config
from golf.dist import Ctx, init_dist
from golf.errors import GolfError
from golf.eval import load_val_tokens
from golf.log import Logger
from golf.model import GPT
from golf.shards import list_shards, read_header
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




def prepare_run(cfg: Config) -> Run:
    """Resolve the run, start the process group and check every input (tokenizer, train and val shards, free
    disk) on every rank, writing nothing: a refused run leaves the files of an earlier run with the same RUN_ID
    (its logs included) untouched. A script runs its own refusals next, then `open_log`."""
    cfg.resolve_paths()
    ctx = init_dist(cfg.device, cfg.dtype)
    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    luts = luts_to_torch(build_byte_luts(sp, cfg.vocab_size), ctx.device)
    train_files = list_shards(cfg.data_path, "train")
    if sum(read_header(p) for p in train_files) == 0:
        raise GolfError(f"the train shards in {cfg.data_path} hold no tokens (DATA_PATH); re-create them with prepare_data.py")
    val_tokens = load_val_tokens(cfg.data_path, cfg.train_seq_len, cfg.val_max_tokens, cfg.vocab_size)
    require_free_disk(os.path.dirname(cfg.checkpoint_path) or ".", _min_checkpoint_bytes(cfg),
                      "the checkpoints of this run (at least)", "free some space or set CHECKPOINT_PATH to another disk")
    return Run(cfg, ctx, train_files, val_tokens, luts, file_sha256(cfg.tokenizer_path))


def open_log(run: Run, script: str, append: bool = False) -> Logger:
    """Open logs/<RUN_ID>.txt and .jsonl (rank 0; an earlier log of the same RUN_ID is replaced, or continued
    with `append`, as a resumed run does) and log the challenge's preamble lines."""
    cfg, ctx = run.cfg, run.ctx
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


def start_run(cfg: Config, script: str) -> Run:
    """`prepare_run` then `open_log`, for scripts without refusals of their own."""
    run = prepare_run(cfg)
    open_log(run, script)
    return run
