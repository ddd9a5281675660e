"""Checkpoints: written atomically with a `.sha256` sidecar; read with clear errors; rebuild the model from
the configuration saved inside (so any script can load any checkpoint without being told its shape)."""
import hashlib
import io
import os

import torch

from golf.atomic import atomic_path, atomic_write_text
from golf.config import Config
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


def checkpoint_sha256(path: str) -> str:
    """The checkpoint's sha256: from its sidecar when present and fresh, else computed."""
    side = path + ".sha256"
    if os.path.isfile(side) and os.path.getmtime(side) >= os.path.getmtime(path):
        with open(side) as f:
            return f.read().split()[0]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not path:
        raise GolfError("no checkpoint path given; pass one (e.g. checkpoints/<RUN_ID>.pt)")
    if not os.path.isfile(path):
        raise GolfError(f"checkpoint {path} not found; check the path or train one first")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise GolfError(f"checkpoint {path} is unreadable ({type(e).__name__}); it is damaged or not a checkpoint") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise GolfError(f"checkpoint {path} has no model/config; it was not written by this toolkit")
    return ckpt


def model_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> GPT:
    """A GPT of the checkpoint's own configuration with its weights loaded strictly (fp32)."""
    cfg = Config.from_dict(ckpt["config"])
    model = GPT(cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise GolfError(f"{source}: weights do not match its saved configuration ({first})") from None
    return model
