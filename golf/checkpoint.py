"""Checkpoints: written atomically with a `.sha256` sidecar; read with clear errors; rebuild the model from
the configuration saved inside (so any script can load any checkpoint without being told its shape).

A checkpoint is data, never code: it is read with torch's restricted unpickler (`weights_only=True`), which
builds tensors, numbers, strings and containers and refuses anything else, so a shared teacher checkpoint
that pickled a callable is refused before it can run. Besides those types a resumable checkpoint holds one
numpy array (numpy's RNG state), which is allowed explicitly (`SAFE_NUMPY`)."""
import hashlib
import io
import os
import pickle
import re

import numpy as np
import torch

from golf.atomic import atomic_path, atomic_write_text
from golf.config import Config
from golf.dist import Ctx
from golf.errors import GolfError
from golf.model import GPT


def save_checkpoint(path: str, payload: dict) -> str:
    """torch.save `payload` atomically to `path`, then write `path.sha256`; returns the sha256 hex."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write_text(path + ".sha256", f"{digest}  {os.path.basename(path)}\n")
    return digest


def resume_checkpoint_path(cfg: Config) -> str:
    """Where CHECKPOINT_EVERY writes the resumable state: beside the final checkpoint."""
    base = cfg.checkpoint_path[:-3] if cfg.checkpoint_path.endswith(".pt") else cfg.checkpoint_path
    return base + ".resume.pt"


def checkpoint_sha256(path: str) -> str:
    """The checkpoint's sha256: from its sidecar when present and fresh, else computed."""
    if not os.path.isfile(path):
        raise GolfError(f"checkpoint {path} not found; check the path (TEACHER_PATH?) or train one first")
    side = path + ".sha256"
    if os.path.isfile(side) and os.path.getmtime(side) >= os.path.getmtime(path):
        with open(side) as f:
            return f.read().split()[0]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# numpy's array reconstruction, the one non-torch type our checkpoints hold (np.random.get_state()'s keys).
SAFE_NUMPY = [np.ndarray, np.dtype, np.dtypes.UInt32DType]
try:
    SAFE_NUMPY.append(np._core.multiarray._reconstruct)
except AttributeError:  # numpy < 2
    SAFE_NUMPY.append(np.core.multiarray._reconstruct)


def load_checkpoint(path: str, map_location="cpu", mmap: bool = False) -> dict:
    """The checkpoint's dict, or a GolfError saying what is wrong. `mmap`: tensors are mapped, not read (to look
    at the config of a large checkpoint)."""
    if not path:
        raise GolfError("no checkpoint path given; pass one (e.g. checkpoints/<RUN_ID>.pt)")
    if not os.path.isfile(path):
        raise GolfError(f"checkpoint {path} not found; check the path or train one first")
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY):
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise GolfError(f"checkpoint {path} is unreadable (UnpicklingError): damaged (an interrupted copy?) or not "
                            "a checkpoint; use an intact copy or train it again") from None
        found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(e))
        what = (found[1] or found[2]) if found else "an object that is not data"
        raise GolfError(f"checkpoint {path} holds pickled code ({what}), which a checkpoint never needs: refused, "
                        "nothing in it was run; use a checkpoint written by this toolkit, or ask its author for one") from None
    except Exception as e:  # torch raises many types for a damaged file
        raise GolfError(f"checkpoint {path} is unreadable ({type(e).__name__}): damaged (an interrupted copy?) or not a "
                        "checkpoint; use an intact copy or train it again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise GolfError(f"checkpoint {path} has no model/config; it was not written by this toolkit")
    return ckpt


def _weights_diff(expected: dict, got: dict) -> str:
    """What differs between two state dicts' names and shapes, briefly, for an error message ('' if nothing)."""

    def some(names):
        return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")

    shapes = [f"{k} has shape {tuple(got[k].shape)}, expected {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    parts = shapes[:2] + ([f"{len(shapes) - 2} more shapes differ"] if len(shapes) > 2 else [])
    parts += [f"{len(missing)} missing ({some(missing)})"] if missing else []
    parts += [f"{len(unexpected)} unexpected ({some(unexpected)})"] if unexpected else []
    return "; ".join(parts)


def load_weights(model: GPT, state_dict: dict, source: str) -> GPT:
    """Load `state_dict` into `model` strictly (as fp32), or raise a GolfError naming `source` and what differs."""
    why = _weights_diff(model.state_dict(), state_dict)
    if why:
        raise GolfError(f"{source}: weights do not match the configuration ({why}); it was edited or belongs to "
                        "another configuration: use the checkpoint it came from")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return model


def model_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> GPT:
    """A GPT of the checkpoint's own configuration with its weights loaded strictly (fp32)."""
    return load_weights(GPT(Config.from_dict(ckpt["config"])), ckpt["model"], source)


def load_teacher(path: str, ctx: Ctx, vocab_size: int, tokenizer_sha256: str | None = None):
    """(frozen teacher model on the device, its sha256, its config) from a checkpoint; refuses a teacher
    trained with another tokenizer or vocabulary."""
    ckpt = load_checkpoint(path)
    if tokenizer_sha256 and ckpt.get("tokenizer_sha256") not in (None, tokenizer_sha256):
        raise GolfError(f"teacher {path} was trained with another tokenizer (sha256 {ckpt['tokenizer_sha256'][:12]}, "
                        f"TOKENIZER_PATH has {tokenizer_sha256[:12]}); use the matching tokenizer and data")
    model = model_from_checkpoint(ckpt, f"teacher checkpoint {path}").to(ctx.device)
    if model.cfg.vocab_size != vocab_size:
        raise GolfError(f"teacher {path} has vocabulary {model.cfg.vocab_size}, the run has VOCAB_SIZE={vocab_size}; "
                        "use a teacher trained on this tokenizer")
    if ctx.autocast_dtype is not None:
        model.apply_dtype_policy(ctx.autocast_dtype)
    model.eval().requires_grad_(False)
    return model, checkpoint_sha256(path), model.cfg
