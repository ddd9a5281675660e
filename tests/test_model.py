"""The model is the study's (fact sheet section 2): sizes, parameter split, and each feature's behaviour."""
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import golf.model
from golf.config import PRESETS, Config
from golf.model import GPT, Attention, BigramHash, param_groups


def meta_model(preset: str) -> GPT:
    with torch.device("meta"):
        return GPT(Config(**PRESETS[preset]))


@pytest.mark.parametrize("preset,params", [("student", 27_354_201), ("teacher", 105_536_449)])
def test_parameter_counts(preset, params):
    assert meta_model(preset).num_params() == params


def test_optimizer_split_matches_fact_sheet():
    muon, token, scalar = param_groups(meta_model("student"))
    assert (len(muon), sum(p.numel() for p in muon)) == (67, 26_017_792)
    assert sum(p.numel() for p in token) == 1_310_720
    assert sum(p.numel() for p in scalar) == 25_689


def tiny_cfg(**kw) -> Config:
    return Config(**{**PRESETS["test"], **kw})


def test_causal_and_shapes():
    torch.manual_seed(0)
    model = GPT(tiny_cfg())
    with torch.no_grad():  # give the zero-initialised parts weight so every path is exercised
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ids = torch.randint(0, 1024, (2, 64))
    logits = model(ids)
    assert logits.shape == (2, 64, 1024) and logits.dtype == torch.float32
    assert logits.abs().max() <= 30.0  # softcap
    ids2 = ids.clone()
    ids2[:, 40] = (ids2[:, 40] + 1) % 1024
    logits2 = model(ids2)
    assert torch.allclose(logits[:, :40], logits2[:, :40], atol=1e-5)
    assert not torch.allclose(logits[:, 40:], logits2[:, 40:])


def test_init_follows_the_study():
    torch.manual_seed(0)
    model = GPT(Config(**{**PRESETS["test"], "model_dim": 128, "num_heads": 2}))
    for block in model.blocks:
        assert block.attn.proj.weight.abs().max() == 0 and block.mlp.proj.weight.abs().max() == 0
        w = block.attn.c_q.weight
        assert torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-4)  # orthogonal
    assert model.bigram.embed.weight.abs().max() == 0
    p = model.bigram.proj.weight  # orthogonal (columns) scaled by 1/sqrt(2L)
    assert torch.allclose(p.T @ p, torch.eye(p.shape[1]) / (2 * model.cfg.num_layers), atol=1e-4)
    assert abs(model.tok_emb.weight.std().item() - 0.005) < 5e-4


def test_bigram_hash_by_hand():
    bh = BigramHash(6144, 8, 16)
    ids = torch.tensor([[5, 7, 1023]])
    m = 6143
    assert bh.hash(ids).tolist() == [[m, ((36313 * 7) ^ (27191 * 5)) % m, ((36313 * 1023) ^ (27191 * 7)) % m]]


def test_rope_uses_the_studys_ntk_base():
    cfg = Config()  # student: head dim 64, train_seq_len 2048, ref 1024
    attn = Attention(cfg, xsa=False)
    base = 1e4 * 2 ** (64 / 62)
    assert abs(base - 20452) < 1
    # the second frequency: cos(t * base^(-2/64)) at t = 1
    assert math.isclose(attn.rotary.cos[1, 1].item(), math.cos(base ** (-2 / 64)), rel_tol=1e-6)


def test_xsa_removes_the_own_value_component():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    attn = Attention(cfg, xsa=True)
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(cfg.model_dim))  # expose the pre-projection output
    x = torch.randn(2, 16, cfg.model_dim)
    y = attn(x).view(2, 16, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, -1)
    v = F.normalize(attn.c_v(x).view(2, 16, cfg.num_kv_heads, -1), dim=-1).unsqueeze(3)
    assert (y * v).sum(-1).abs().max() < 1e-5
    attn.xsa = False
    y_plain = attn(x).view_as(y)
    assert (y_plain * v).sum(-1).abs().max() > 1e-2


def test_smear_gate_at_init_averages_with_previous():
    model = GPT(tiny_cfg())
    x = torch.randn(1, 5, model.cfg.model_dim)
    out = model.smear(x)
    assert torch.allclose(out[:, 0], 0.5 * x[:, 0]) and torch.allclose(out[:, 1:], 0.5 * (x[:, 1:] + x[:, :-1]))


def test_qat_forward_uses_int6_grid():
    model = GPT(tiny_cfg())
    ids = torch.randint(0, 1024, (1, 16))
    with torch.no_grad():
        for b in model.blocks:
            b.mlp.proj.weight.normal_()
    model.train()
    a = model(ids)
    model.set_qat(True)
    b = model(ids)
    model.eval()
    c = model(ids)  # fake quant is a training-time effect only
    assert not torch.allclose(a, b) and torch.allclose(a, c)


# --- dtypes under autocast, and the FlashAttention-3 branch on CPU ------------------------------------------
# CUDA autocast runs rms_norm in fp32 since torch 2.12 (the study's torch 2.11 ran it bf16-in, bf16-out);
# CPU autocast does not, so these tests also run under a simulated CUDA policy (`norm_policy` 'cuda').


@pytest.fixture(params=["cpu", "cuda"])
def norm_policy(request, monkeypatch):
    """'cpu': rms_norm as it is here; 'cuda': rms_norm returns fp32 under autocast, as CUDA autocast does."""
    if request.param == "cuda":
        orig = F.rms_norm

        def rms_norm_fp32(x, shape, weight=None, eps=None):
            if torch.is_autocast_enabled(x.device.type):
                return orig(x.float(), shape, None if weight is None else weight.float(), eps)
            return orig(x, shape, weight, eps)

        monkeypatch.setattr(F, "rms_norm", rms_norm_fp32)
    return request.param


def fake_flash_attn_interface(calls: list, returns_lse: bool):
    """A stand-in `flash_attn_interface` that refuses what the real FA3 kernel refuses (dtype, layout, shapes,
    contiguity, causal flag) and computes the result with a plain fp32 reference attention."""

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **kw):
        calls.append((q.dtype, k.dtype, v.dtype))
        if not (q.dtype == k.dtype == v.dtype):
            raise RuntimeError(f"query and key must have the same dtype ({q.dtype}, {k.dtype}, {v.dtype})")
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError("FlashAttention only supports fp16 and bf16 data types")
        if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
            raise RuntimeError(f"expected (B, T, H, D) inputs, got {[tuple(x.shape) for x in (q, k, v)]}")
        b, t, h, d = q.shape
        if h % k.shape[2] or d % 8 or d > 256:
            raise RuntimeError("query heads must be a multiple of key/value heads; head dim a multiple of 8, <= 256")
        if any(x.stride(-1) != 1 for x in (q, k, v)):
            raise RuntimeError("Input tensor must have contiguous last dimension")
        if causal is not True:
            raise RuntimeError("the model must ask for causal attention")
        with torch.autocast(q.device.type, enabled=False):
            group = h // k.shape[2]
            qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))
            kf, vf = kf.repeat_interleave(group, 1), vf.repeat_interleave(group, 1)
            s = (qf @ kf.transpose(-1, -2)) * (softmax_scale or d ** -0.5)
            s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            out = (s.softmax(-1) @ vf).transpose(1, 2).to(q.dtype)
        return (out, s.logsumexp(-1)) if returns_lse else out

    return types.SimpleNamespace(flash_attn_func=flash_attn_func)


_Q, _KV = torch.randn(2, 16, 4, 32, dtype=torch.bfloat16), torch.randn(2, 16, 2, 32, dtype=torch.bfloat16)


@pytest.mark.parametrize("q,k,v,causal", [
    (_Q, _KV.float(), _KV, True),  # mixed dtypes (the crash on CUDA with an fp32 rms_norm)
    (_Q.float(), _KV.float(), _KV.float(), True),  # fp32
    (_Q.transpose(1, 2), _KV.transpose(1, 2), _KV.transpose(1, 2), True),  # (B, H, T, D): SDPA's layout
    (_Q[:, :, :3], _KV, _KV, True),  # 3 query heads over 2 KV heads
    (_Q.transpose(1, 3).contiguous().transpose(1, 3), _KV, _KV, True),  # last dim not contiguous
    (_Q, _KV, _KV, False),  # not causal
], ids=["mixed-dtype", "fp32", "bhtd-layout", "heads", "strided", "not-causal"])
def test_the_stand_in_refuses_what_fa3_refuses(q, k, v, causal):
    fa3 = fake_flash_attn_interface([], False).flash_attn_func
    assert fa3(_Q, _KV, _KV, causal=True).shape == _Q.shape
    with pytest.raises(RuntimeError):
        fa3(q, k, v, causal=causal)


def perturbed_model(dtype=torch.bfloat16) -> GPT:
    torch.manual_seed(0)
    model = GPT(tiny_cfg(num_heads=4, num_kv_heads=2))  # two KV heads: the GQA head mapping matters
    with torch.no_grad():  # give the zero-initialised parts weight so every path is exercised
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.apply_dtype_policy(dtype).eval()


@pytest.mark.parametrize("returns_lse", [False, True])
def test_fa3_branch_meets_the_kernel_contract_and_matches_sdpa(norm_policy, returns_lse, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake_flash_attn_interface(calls, returns_lse))
    monkeypatch.setattr(golf.model, "_fa3", golf.model._load_fa3())
    model = perturbed_model()
    ids = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(ids)  # the CPU takes the SDPA branch even with FA3 installed
        assert calls == []
        monkeypatch.setattr(golf.model, "FA3_DEVICES", ("cuda", "cpu"))
        got = model(ids)
    assert calls == [(torch.bfloat16,) * 3] * model.cfg.num_layers
    torch.testing.assert_close(got, ref, atol=0.01, rtol=0.01)  # bf16 roundings: 0.004 at most measured


def test_fp32_runs_take_sdpa_even_where_fa3_is_installed(monkeypatch):
    calls = []  # FA3 refuses fp32 inputs, so DTYPE=fp32 on a GPU with FA3 must use SDPA
    monkeypatch.setattr(golf.model, "_fa3", fake_flash_attn_interface(calls, False).flash_attn_func)
    monkeypatch.setattr(golf.model, "FA3_DEVICES", ("cuda", "cpu"))
    model = perturbed_model(torch.float32)
    logits = model(torch.randint(0, 1024, (2, 64)))
    assert calls == [] and logits.dtype == torch.float32


def test_bf16_autocast_keeps_norms_residual_and_attention_inputs_in_bf16(norm_policy, monkeypatch):
    seen = {"attention": [], "residual": []}
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kw):
        seen["attention"].append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    model = perturbed_model()
    for block in model.blocks:  # x and x0 of every block: the residual stream
        block.register_forward_pre_hook(lambda m, args: seen["residual"].append(tuple(a.dtype for a in args)))
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert golf.model.rms_norm(x).dtype == torch.bfloat16
        logits = model(torch.randint(0, 1024, (2, 64)))
    # The study (torch 2.11) ran these in bf16: tok_emb is stored in bf16 and rms_norm kept its input dtype.
    assert seen["attention"] == [(torch.bfloat16,) * 3] * model.cfg.num_layers
    assert seen["residual"] == [(torch.bfloat16,) * 2] * model.cfg.num_layers
    assert logits.dtype == torch.float32  # softcap and the losses run in fp32
