"""What every training script does before and after its loop: resolve the run, open the logs, check the
data and tokenizer, print the challenge's preamble."""
import os
import platform
import subprocess
import sys
from dataclasses import dataclass

import torch

from golf.config import Config
from golf.dist import Ctx, init_dist
from golf.eval import load_val_tokens
from golf.log import Logger
from golf.model import GPT
from golf.shards import list_shards, read_header
from golf.tokenizer import build_byte_luts, file_sha256, load_tokenizer, luts_to_torch


@dataclass
class Run:
    cfg: Config
    ctx: Ctx
    log: Logger
    train_files: list
    val_tokens: torch.Tensor
    luts: object
    tokenizer_sha256: str


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


def start_run(cfg: Config, script: str) -> Run:
    """Process group, logger, data checks and the preamble lines; every rank gets the same Run."""
    cfg.resolve_paths()
    ctx = init_dist(cfg.device, cfg.dtype)
    log = Logger(cfg.log_dir, cfg.run_id, enabled=ctx.is_master)
    log(log.txt_path)
    log(f"script:{script} git:{_git_describe()} python:{platform.python_version()} torch:{torch.__version__} "
        f"device:{torch.cuda.get_device_name(ctx.device) if ctx.device.type == 'cuda' else platform.processor() or 'cpu'}",
        console=False)
    for line in cfg.lines():
        log(f"config:{line}", console=False)
    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    luts = luts_to_torch(build_byte_luts(sp, cfg.vocab_size), ctx.device)
    log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={cfg.tokenizer_path}")
    train_files = list_shards(cfg.data_path, "train")
    for p in train_files:
        read_header(p)
    log(f"train_loader:dataset:{os.path.basename(os.path.normpath(cfg.data_path))} train_shards:{len(train_files)}")
    val_tokens = load_val_tokens(cfg.data_path, cfg.train_seq_len, cfg.val_max_tokens)
    if int(val_tokens.max()) >= cfg.vocab_size:
        from golf.errors import GolfError
        raise GolfError(f"val shards in {cfg.data_path} hold token id {int(val_tokens.max())} >= VOCAB_SIZE="
                        f"{cfg.vocab_size}; the data and tokenizer do not match")
    log(f"val_loader:shards pattern={os.path.join(cfg.data_path, '*_val_*.bin')} tokens:{len(val_tokens) - 1}")
    with torch.device("meta"):
        log(f"model_params:{GPT(cfg).num_params()}")
    log(f"world_size:{ctx.world_size} grad_accum_steps:{cfg.micro_batches // ctx.world_size}")
    log(f"attention_mode:{'gqa' if cfg.num_kv_heads < cfg.num_heads else 'mha'} num_heads:{cfg.num_heads} "
        f"num_kv_heads:{cfg.num_kv_heads}")
    log(f"tie_embeddings:True embed_lr:{cfg.tied_embed_lr} head_lr:0.0 matrix_lr:{cfg.matrix_lr} "
        f"scalar_lr:{cfg.scalar_lr}")
    log(f"train_batch_tokens:{cfg.train_batch_tokens} train_seq_len:{cfg.train_seq_len} iterations:{cfg.iterations} "
        f"warmup_steps:{cfg.warmup_steps} max_wallclock_seconds:{cfg.max_wallclock_seconds:.3f}")
    log(f"seed:{cfg.seed}")
    log(f"device:{ctx.device.type} autocast:{ctx.autocast_dtype or 'fp32'}")
    log.metrics(event="config", script=script, config=cfg.to_dict(), world_size=ctx.world_size)
    return Run(cfg, ctx, log, train_files, val_tokens, luts, file_sha256(cfg.tokenizer_path))
