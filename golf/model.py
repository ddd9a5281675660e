"""The one model: the study's GPT (seed-factsheet section 2), used by student and teacher alike.

Features, in forward order:
- tied token embedding + BigramHash (hashed previous/current token pair -> 128-d table -> linear to d_model),
  then a parameter-free RMSNorm and SmearGate (a learned per-channel mix with the previous position);
- U-Net stack: the first L//2 blocks push their outputs, the decoder blocks pop them (LIFO) with learned
  per-channel skip weights; every block also mixes in x0 (the embedding output) through `resid_mix`;
- pre-norm blocks, parameter-free RMSNorm everywhere; attention with q/k RMSNorm, half-split RoPE with the
  study's NTK scaling (reference length 1024, so at 2048 the effective base is ~20,452), per-head q gain,
  GQA, and XSA (remove the component along the token's own value vector) on the last N blocks;
- relu^2 MLP; final RMSNorm, logits = x @ tok_emb^T, softcap 30 * tanh(logits / 30).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from golf.config import Config
from golf.quant import fake_quantize_int6_rows


def _load_fa3():
    """FlashAttention-3's `flash_attn_func` (Hopper) if installed, else None; SDPA is the reference path."""
    try:
        from flash_attn_interface import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


_fa3 = _load_fa3()
# FA3 is a CUDA kernel; a module-level tuple so a test can route a CPU stand-in through the same branch.
FA3_DEVICES = ("cuda",)

# Small/"control" parameters: kept in fp32 and optimised by AdamW, never by Muon (fact sheet 2, 4).
CONTROL_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight", "smear")


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    # CUDA autocast runs rms_norm in fp32 since torch 2.12; the cast back keeps the residual stream and q/k in
    # the input dtype (bf16 in bf16 runs), as in the study (torch 2.11). A no-op wherever the dtype already holds.
    return F.rms_norm(x, (x.size(-1),)).to(x.dtype)


class CastedLinear(nn.Linear):
    """Bias-free linear whose fp32 weight is cast to the activation dtype at matmul time.

    With `qat` on (late QAT) the training forward uses fake-int6 weights with a straight-through gradient.
    """

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.qat = False

    def forward(self, x):
        w = self.weight
        if self.qat and self.training:
            w = fake_quantize_int6_rows(w)
        return F.linear(x, w.to(x.dtype))


class Rotary(nn.Module):
    """Half-split RoPE. The study NTK-scales the base for sequences longer than `ref_len` (hard-coded 1024
    there), so at its 2048 training length the effective base is base * 2^(64/62). Tables for the training
    length are built here, not lazily, so a compiled graph never sees a new buffer."""

    def __init__(self, head_dim: int, base: float, ref_len: int, seq_len: int):
        super().__init__()
        self.head_dim, self.base, self.ref_len = head_dim, base, ref_len
        cos, sin = self._tables(seq_len)
        self.seq_len = seq_len
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, seq_len: int, device=None):
        rd = self.head_dim
        base = self.base
        if seq_len > self.ref_len:
            base = base * (seq_len / self.ref_len) ** (rd / (rd - 2))
        inv_freq = base ** (-torch.arange(0, rd, 2, dtype=torch.float64, device=device) / rd)
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv_freq)
        return freqs.cos().float(), freqs.sin().float()

    def forward(self, seq_len: int):
        if seq_len == self.seq_len:
            return self.cos, self.sin
        return self._tables(seq_len, self.cos.device)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); cos/sin: (T, D/2). (x1, x2) -> (x1 cos + x2 sin, -x1 sin + x2 cos)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention; q (B, T, H, D), k and v (B, T, H_kv, D) -> (B, T, H, D).

    q, k and v reach the kernel in v's dtype (the matmul dtype: bf16 under autocast): FA3 refuses mixed dtypes
    and fp32, so fp32 runs take SDPA."""
    q, k = q.to(v.dtype), k.to(v.dtype)
    if _fa3 is not None and q.device.type in FA3_DEVICES and q.dtype in (torch.float16, torch.bfloat16):
        y = _fa3(q, k, v, causal=True)
        return y[0] if isinstance(y, tuple) else y  # some FA3 versions also return the log-sum-exp
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: Config, xsa: bool):
        super().__init__()
        dim, self.n_head, self.n_kv = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
        self.head_dim = dim // self.n_head
        kv_dim = self.n_kv * self.head_dim
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, kv_dim)
        self.c_v = CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.n_head,), cfg.qk_gain_init))
        self.rotary = Rotary(self.head_dim, cfg.rope_base, cfg.rope_ref_len, cfg.train_seq_len)
        self.xsa = xsa

    def forward(self, x):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv, self.head_dim)
        cos, sin = self.rotary(T)
        q = apply_rotary(rms_norm(q), cos, sin) * self.q_gain.to(q.dtype)[None, None, :, None]
        k = apply_rotary(rms_norm(k), cos, sin)
        y = attend(q, k, v)
        if self.xsa:
            # Exclusive self-attention: drop each head's component along its own token's unit value vector.
            group = self.n_head // self.n_kv
            y = y.reshape(B, T, self.n_kv, group, self.head_dim)
            vn = F.normalize(v.float(), dim=-1).to(y.dtype).unsqueeze(3)
            y = y - (y * vn).sum(-1, keepdim=True) * vn
        return self.proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim: int, mult: float):
        super().__init__()
        hidden = int(mult * dim)
        self.fc = CastedLinear(dim, hidden)
        self.proj = CastedLinear(hidden, dim, zero_init=True)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: Config, xsa: bool):
        super().__init__()
        dim = cfg.model_dim
        self.attn = Attention(cfg, xsa)
        self.mlp = MLP(dim, cfg.mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x, x0):
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class BigramHash(nn.Module):
    """Embedding of a hash of (previous token, token). Bucket `n-1` is reserved for each row's first position
    (no previous token); the others are ((36313 * t) XOR (27191 * t_prev)) mod (n - 1)."""

    def __init__(self, buckets: int, bdim: int, dim: int):
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, bdim)
        self.proj = CastedLinear(bdim, dim)
        nn.init.zeros_(self.proj.weight)  # as the study's constructor; GPT.init_weights overwrites it if >= 64x64
        self.scale = nn.Parameter(torch.tensor(0.05))

    def hash(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.to(torch.int32)
        m = self.buckets - 1
        h = torch.full_like(t, m)
        h[:, 1:] = torch.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % m
        return h.long()

    def forward(self, ids):
        e = self.embed(self.hash(ids))
        return self.scale.to(e.dtype) * self.proj(e)


class SmearGate(nn.Module):
    """out[t] = (1 - g) * x[t] + g * x[t-1], g = sigmoid(gate) per channel, x[-1] = 0 at row starts."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))
        return (1 - g) * x + g * prev


class GPT(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        L, dim = cfg.num_layers, cfg.model_dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, dim)
        self.bigram = BigramHash(cfg.bigram_vocab_size, cfg.bigram_dim, dim) if cfg.bigram_vocab_size > 0 else None
        self.smear = SmearGate(dim)
        self.n_enc = L // 2
        self.n_dec = L - self.n_enc
        self.skip_weights = nn.Parameter(torch.ones(min(self.n_enc, self.n_dec), dim))
        self.blocks = nn.ModuleList(Block(cfg, xsa=i >= L - cfg.xsa_last_n) for i in range(L))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """The study's init (fact sheet 2): tok_emb ~ N(0, 0.005^2); zero-init output projections; orthogonal
        for every other linear with both dims >= 64, scaled by 1/sqrt(2L) if its name contains ".proj" (in
        practice only bigram.proj, the others being zero); vectors keep their constructor values; the bigram
        table starts at zero, so the bigram path contributes nothing at step 0."""
        nn.init.normal_(self.tok_emb.weight, std=self.cfg.tied_embed_init_std)
        if self.bigram is not None:
            nn.init.zeros_(self.bigram.embed.weight)
        for name, m in self.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            if getattr(m, "zero_init", False):
                nn.init.zeros_(m.weight)
            elif min(m.weight.shape) >= 64:
                nn.init.orthogonal_(m.weight)
                if ".proj" in name:
                    m.weight.mul_(1 / math.sqrt(2 * self.cfg.num_layers))

    def set_qat(self, enabled: bool):
        for m in self.modules():
            if isinstance(m, CastedLinear):
                m.qat = enabled

    def apply_dtype_policy(self, dtype: torch.dtype):
        """The study's storage dtypes for bf16 runs: embeddings (tok_emb, bigram table) in `dtype`, every
        CastedLinear and control/vector parameter in fp32. A no-op for fp32 runs.

        Under autocast the embedding's dtype is the residual stream's: with this policy the stream, the norms'
        outputs and q/k/v are bf16 (the study's dtypes). CUDA autocast's fp32 list (pow, sum) still makes the squared
        MLP hidden and XSA's projection fp32 before the next linear, as it did in the study."""
        if dtype == torch.float32:
            return self
        self.tok_emb.to(dtype)
        if self.bigram is not None:
            self.bigram.embed.to(dtype)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 -> softcapped logits (B, T, V)."""
        x = self.tok_emb(ids)
        if self.bigram is not None:
            x = x + self.bigram(ids).to(x.dtype)
        x = self.smear(rms_norm(x))
        x0 = x
        skips = []
        for block in self.blocks[: self.n_enc]:
            x = block(x, x0)
            skips.append(x)
        for i, block in enumerate(self.blocks[self.n_enc:]):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = block(x, x0)
        x = rms_norm(x)
        logits = F.linear(x, self.tok_emb.weight.to(x.dtype))
        c = self.cfg.logit_softcap
        return c * torch.tanh(logits.float() / c)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def param_groups(model: GPT):
    """Split parameters as the study: Muon for 2-D block matrices and bigram.proj; AdamW 'token' group for
    tok_emb and the bigram table; AdamW 'scalar' group for everything else (vectors and control tensors)."""
    muon, token, scalar = [], [], []
    for name, p in model.named_parameters():
        if name in ("tok_emb.weight", "bigram.embed.weight"):
            token.append(p)
        elif p.ndim == 2 and not any(c in name for c in CONTROL_PATTERNS) and (
            name.startswith("blocks.") or name == "bigram.proj.weight"
        ):
            muon.append(p)
        else:
            scalar.append(p)
    return muon, token, scalar
