"""The end of every student run: quantize, write the artifact, reload it, and score it (seed-factsheet 6, 8).

The score is self-certifying: the int6 artifact is decompressed into a fresh model and evaluated, standard
and sliding-window, and the challenge's lines are printed with the exact values.
"""
import time

import torch

from golf.bundle import code_bytes
from golf.config import Config
from golf.dist import Ctx, maybe_compile
from golf.eval import eval_sliding, eval_val
from golf.log import Logger
from golf.model import GPT
from golf.quant import (dequantize_state_dict, quantize_state_dict, read_artifact, resolve_compressor, size_report,
                        write_artifact)


def artifact_path_for(checkpoint_path: str) -> str:
    base = checkpoint_path[:-3] if checkpoint_path.endswith(".pt") else checkpoint_path
    return base + ".int6.ptz"


def export_artifact(state_dict: dict, path: str, compressor: str, script_path: str, log=print,
                    cfg: Config | None = None) -> dict:
    """Quantize + compress + write (atomically); `log` the size lines; returns the sizes.

    The code bytes are those of the single file generated from `script_path` with `cfg`'s arm settings
    baked in (golf/bundle.py): the same file, hence the same number, as the submission dump writes."""
    obj = quantize_state_dict({k: v.detach().cpu() for k, v in state_dict.items()})
    comp = resolve_compressor(compressor)
    model_bytes = write_artifact(path, obj, comp)
    code = code_bytes(script_path, cfg)
    for line in size_report(model_bytes, code, f"int6+{comp}"):
        log(line)
    return {"model_bytes": model_bytes, "code_bytes": code, "total_bytes": model_bytes + code, "compressor": comp}


def load_quantized_model(obj: dict, cfg: Config, device) -> GPT:
    model = GPT(cfg).to(device)
    model.load_state_dict({k: v.float() for k, v in dequantize_state_dict(obj).items()}, strict=True)
    return model


def score(model: GPT, cfg: Config, ctx: Ctx, val_tokens, luts, log: Logger, label: str,
          progress: bool = True) -> dict:
    """Standard and sliding-window eval of `model`, logged as `final_<label>[_exact]` lines."""
    fwd = maybe_compile(model, cfg.compile, ctx.device)
    ctx.sync()
    t = time.perf_counter()
    vl, vb = eval_val(fwd, val_tokens, luts, cfg.train_seq_len, cfg.val_batch_size, ctx, progress)
    ctx.sync()
    ms = 1000 * (time.perf_counter() - t)
    log(f"final_{label}_roundtrip val_loss:{vl:.4f} val_bpb:{vb:.4f} eval_time:{ms:.0f}ms")
    log(f"final_{label}_roundtrip_exact val_loss:{vl:.8f} val_bpb:{vb:.8f}")
    t = time.perf_counter()
    sl, sb = eval_sliding(fwd, val_tokens, luts, cfg.train_seq_len, cfg.eval_stride, cfg.eval_batch_seqs, ctx, progress)
    ctx.sync()
    sms = 1000 * (time.perf_counter() - t)
    log(f"final_{label}_sliding_window val_loss:{sl:.4f} val_bpb:{sb:.4f} stride:{cfg.eval_stride} eval_time:{sms:.0f}ms")
    log(f"final_{label}_sliding_window_exact val_loss:{sl:.8f} val_bpb:{sb:.8f}")
    res = {"val_loss": vl, "val_bpb": vb, "sliding_val_loss": sl, "sliding_val_bpb": sb, "eval_ms": ms,
           "sliding_eval_ms": sms}
    log.metrics(event="final", label=label, **res)
    return res


def finish_student(model: GPT, cfg: Config, ctx: Ctx, val_tokens, luts, log: Logger, script_path: str) -> dict:
    """Quantize the trained (EMA) model, write the artifact, reload it into a fresh model and score it."""
    path = artifact_path_for(cfg.checkpoint_path)
    sizes = {}
    if ctx.is_master:
        sizes = export_artifact(model.state_dict(), path, cfg.compressor, script_path, log, cfg=cfg)
        log(f"saved artifact {path}")
    if ctx.distributed:
        torch.distributed.barrier()  # every rank then reads the file rank 0 wrote: the true roundtrip
    reloaded = load_quantized_model(read_artifact(path), cfg, ctx.device)
    res = score(reloaded, cfg, ctx, val_tokens, luts, log, "int6")
    log.metrics(event="artifact", path=path, **sizes)
    return {**res, **sizes, "artifact_path": path}
