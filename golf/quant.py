"""Int6/int8 quantisation of a trained model and the compressed artifact the challenge counts.

Export follows the seed (PR #1029, fact sheet sections 4 and 6) rule for rule, applied per tensor in order:
1. non-float, or numel <= 65,536: passthrough (float tensors stored as fp16);
2. name in the "attn" or "mlp" category: int6 per row, scale = max(absmax/31, 1/31), q in [-32, 31];
3. everything else (tok_emb, the bigram table): int8 per row, clipped at the 99.99984th percentile of |w|,
   scale = max(clip/127, 1/127), q in [-127, 127].
Scales are fp16 and q lives in int8 containers; the entropy coder (zstd-22 or xz) squeezes the unused bits.
Late QAT trains against the same int6 grid through `fake_quantize_int6_rows`.

Two choices where the seed is silent or inconsistent (neither changes the tally or the grid):
- q is computed with the fp16-rounded scale that is stored, for int8 as well as int6 (the seed divides the
  int8 weights by the fp32 scale, then stores it in fp16), so dequantisation error stays within half a step.
- A tensor that is not 2-D is quantised as rows of its first dimension (1-D: one row, i.e. a per-tensor
  scale) with the same floors. Our models never send such a tensor past rule 1.
"""
import io
import lzma
import os

import torch
from tqdm import tqdm

from golf.atomic import atomic_write_bytes
from golf.errors import GolfError

SIZE_CAP = 16_000_000  # decimal bytes: compressed model + code must be at most this ("at most", so <= passes)
PASSTHROUGH_MAX_NUMEL = 65_536  # tensors this small stay fp16: bigram.proj (128x512) is exactly this size
INT8_CLIP_Q = 99.99984 / 100.0  # per-row clip percentile of the int8 path
INT6_CATEGORIES = ("attn", "mlp")
KINDS = ("int6", "int8", "fp16", "raw")  # raw = non-float tensor kept as is
FORMAT_VERSION = 1

# Both codecs write a self-describing stream (zstd frame / xz container), so the artifact is a plain .zst or
# .xz file (`zstd -d`, `xz -d` read it) and its first bytes, the codec's own magic, tell us how to open it.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
COMPRESSORS = ("auto", "zstd", "lzma")
_CHUNK = 1 << 20  # compress in 1 MiB pieces so a progress bar can follow zstd-22 (tens of seconds on 27 MB)


# ----------------------------------------------------------------------------------------------------------
# Quantisation


def classify_param(name: str) -> str:
    """The seed's name-based category: "embed", "mlp", "attn" or "other" (only attn/mlp go to int6)."""
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if ".mlp." in name:
        return "mlp"
    # ".proj." outside an MLP is attention's output projection; it also catches bigram.proj, which rule 1
    # keeps in fp16 for the student (65,536 entries) but sends to int6 for a wider teacher (128x768).
    if ".attn." in name or ".proj." in name:
        return "attn"
    return "other"


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View a tensor as [rows, cols]: rows of dim 0 for ndim >= 2, a single row for a 1-D tensor."""
    return t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(1, -1)


def row_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of a 2-D tensor with linear interpolation, equal to torch.quantile(x, q, dim=1).

    torch.quantile refuses a 1-D input above 2**24 elements ("input tensor is too large"), which a per-tensor
    clip of a big 1-D tensor would hit; this sorts instead, with the same float32 rank arithmetic, so it gives
    the same values at any size.
    """
    n = x.shape[1]
    rank = torch.tensor(q, dtype=x.dtype) * (n - 1)
    below = int(rank.floor())
    above = int(rank.ceil())
    values = torch.sort(x, dim=1).values
    return torch.lerp(values[:, below], values[:, above], rank - below)


def quantize_int6_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int6 per row with plain absmax: returns q (int8 container, values in [-32, 31]) and the fp16 scales."""
    w = _rows(t.float())
    # The 1/31 floor fixes the grid of every row with max|w| < 1 at steps of 1/31 (fact sheet section 6).
    scale = (w.abs().amax(dim=1) / 31.0).clamp_min(1.0 / 31.0).to(torch.float16)
    q = torch.clamp(torch.round(w / scale.float()[:, None]), -32, 31).to(torch.int8)
    return q.reshape(t.shape), scale


def quantize_int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 per row, clipped at the 99.99984th percentile of |w|: returns q in [-127, 127] and fp16 scales."""
    w = _rows(t.float())
    clip = row_quantile(w.abs(), INT8_CLIP_Q)
    scale = (clip / 127.0).clamp_min(1.0 / 127.0).to(torch.float16)
    clipped = torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None])
    q = torch.clamp(torch.round(clipped / scale.float()[:, None]), -127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise GolfError(f"artifact names an unknown dtype {name!r}; re-export it with quantize.py")
    return dtype


def quantize_state_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    """Quantise a float state dict into a torch.save-able object (plain dicts, strings and tensors only).

    Layout: {"format": 1, "tensors": {name: {"kind", "dtype", "data"[, "scale"]}}}, in the state dict's order.
    """
    tensors = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        entry = {"dtype": _dtype_name(t.dtype)}
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise GolfError(f"tensor {name!r} holds NaN or inf values; export a checkpoint from before the run diverged")
        if not t.is_floating_point():
            entry.update(kind="raw", data=t.clone())  # clone: never drag a larger shared storage into the file
        elif t.numel() <= PASSTHROUGH_MAX_NUMEL:
            data = t.to(torch.float16).clone()
            if not torch.isfinite(data).all():
                raise GolfError(f"tensor {name!r} has values beyond the fp16 range (|x| > 65504) and cannot be stored as fp16")
            entry.update(kind="fp16", data=data)
        elif classify_param(name) in INT6_CATEGORIES:
            q, scale = quantize_int6_rows(t)
            entry.update(kind="int6", data=q, scale=scale)
        else:
            q, scale = quantize_int8_rows(t)
            entry.update(kind="int8", data=q, scale=scale)
        tensors[name] = entry
    return {"format": FORMAT_VERSION, "tensors": tensors}


def _check_quantized(obj, source: str):
    """Refuse anything that is not a quantised object of our format, naming `source`."""
    ok = isinstance(obj, dict) and obj.get("format") == FORMAT_VERSION and isinstance(obj.get("tensors"), dict)
    if ok:
        for entry in obj["tensors"].values():
            if not (isinstance(entry, dict) and entry.get("kind") in KINDS and isinstance(entry.get("data"), torch.Tensor)):
                ok = False
                break
    if not ok:
        raise GolfError(f"{source} is not a quantised model of format {FORMAT_VERSION}; re-export it with quantize.py")


def dequantize_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """Back to a float state dict: q * row scale (in float32), cast to each tensor's original dtype."""
    _check_quantized(obj, "the object to dequantise")
    state_dict = {}
    for name, entry in obj["tensors"].items():
        dtype = _dtype_from_name(entry["dtype"])
        data = entry["data"]
        if entry["kind"] in ("int6", "int8"):
            scale = entry["scale"].float()
            data = (data.float().reshape(scale.numel(), -1) * scale[:, None]).reshape(data.shape)
        state_dict[name] = data.to(dtype)
    return state_dict


def quant_stats(obj: dict) -> dict[str, int]:
    """Number of parameters stored as each kind: {"int6", "int8", "fp16", "raw"} (all keys present)."""
    _check_quantized(obj, "the object to count")
    counts = dict.fromkeys(KINDS, 0)
    for entry in obj["tensors"].values():
        counts[entry["kind"]] += entry["data"].numel()
    return counts


def fake_quantize_int6_rows(w: torch.Tensor) -> torch.Tensor:
    """Late-QAT weights: forward value on the int6 row grid, gradient passed straight through to `w`.

    Row scale = max(absmax/31, 1e-4), as the seed's QAT does (export floors at 1/31 instead; fact sheet
    section 6 notes the mismatch for rows with max|w| < 1). Pure tensor ops, so torch.compile traces it
    without graph breaks.
    """
    w32 = w.detach().float()
    scale = (w32.abs().amax(dim=-1, keepdim=True) / 31.0).clamp_min(1e-4)
    w_q = (torch.clamp(torch.round(w32 / scale), -32, 31) * scale).to(w.dtype)
    return w + (w_q - w).detach()


# ----------------------------------------------------------------------------------------------------------
# Serialisation


def _have_zstd() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_compressor(compressor: str = "auto") -> str:
    """"zstd" or "lzma": "auto" picks zstd (level 22, the seed's codec) when the zstandard package is installed."""
    if compressor not in COMPRESSORS:
        raise GolfError(f"unknown compressor {compressor!r}; use one of {', '.join(COMPRESSORS)}")
    if compressor == "auto":
        return "zstd" if _have_zstd() else "lzma"
    if compressor == "zstd" and not _have_zstd():
        raise GolfError("compressor zstd needs the zstandard package: pip install zstandard (or use compressor lzma)")
    return compressor


def _compress(raw: bytes, compressor: str) -> bytes:
    if compressor == "zstd":
        import zstandard

        # size= writes the content size into the frame header; the checksum makes corruption detectable.
        cobj = zstandard.ZstdCompressor(level=22, write_checksum=True).compressobj(size=len(raw))
    else:
        # xz container (with its CRC64) around LZMA2 at the strongest preset.
        cobj = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    out = []
    for start in tqdm(range(0, len(raw), _CHUNK), desc=f"compress {compressor}", unit="MiB", disable=None, leave=False):
        out.append(cobj.compress(raw[start : start + _CHUNK]))
    out.append(cobj.flush())
    return b"".join(out)


def pack_artifact(obj: dict, compressor: str = "auto") -> bytes:
    """torch.save the quantised object, then compress it: the bytes the challenge counts."""
    _check_quantized(obj, "the object to pack")
    compressor = resolve_compressor(compressor)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return _compress(buf.getvalue(), compressor)


def compressor_of(data: bytes) -> str | None:
    """"zstd" or "lzma" from an artifact's magic bytes, None when it is neither."""
    if data.startswith(ZSTD_MAGIC):
        return "zstd"
    if data.startswith(XZ_MAGIC):
        return "lzma"
    return None


def unpack_artifact(data: bytes, source: str = "artifact") -> dict:
    """Inverse of pack_artifact. Raises GolfError (naming `source`) on an unknown, truncated or corrupt input."""
    compressor = compressor_of(data)
    if not data:
        raise GolfError(f"{source} is empty; re-export it with quantize.py")
    if compressor is None:
        raise GolfError(f"{source} is not a model artifact (starts with {data[:6].hex()}, expected a zstd or xz stream); "
                        "pass a file written by quantize.py")
    try:
        if compressor == "zstd":
            if not _have_zstd():
                raise GolfError(f"{source} is zstd-compressed and the zstandard package is missing: pip install zstandard")
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(data)
        else:
            raw = lzma.decompress(data, format=lzma.FORMAT_XZ)
        # weights_only: an artifact is data, never code to run.
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except GolfError:
        raise
    except Exception as e:  # zstd/lzma errors, EOFError, zip and unpickling errors: all mean a damaged file
        raise GolfError(f"{source} is corrupt or truncated ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
                        "re-export it with quantize.py") from e
    _check_quantized(obj, source)
    return obj


def write_artifact(path, obj: dict, compressor: str = "auto") -> int:
    """Pack `obj` and write it atomically to `path`; returns the number of bytes written."""
    data = pack_artifact(obj, compressor)
    atomic_write_bytes(path, data)
    return len(data)


def read_artifact(path) -> dict:
    """Read and unpack an artifact file; GolfError naming the file if it is missing, unknown or damaged."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise GolfError(f"artifact {path} does not exist; run quantize.py (or a training script) to create it") from None
    except IsADirectoryError:
        raise GolfError(f"artifact {path} is a directory; pass the .ptz file inside it") from None
    return unpack_artifact(data, source=f"artifact {path}")


def size_report(model_bytes: int, code_bytes: int, label: str) -> list[str]:
    """The challenge's size lines for a compressed model plus the single-file code, and the cap verdict."""
    total = model_bytes + code_bytes
    return [
        f"Serialized model {label}: {model_bytes} bytes",
        f"Code size: {code_bytes} bytes",
        f"Total submission size {label}: {total} bytes",
        f"artifact_cap:{SIZE_CAP} under_cap:{total <= SIZE_CAP} headroom:{SIZE_CAP - total}",
    ]
