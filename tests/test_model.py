"""The model is the study's (fact sheet section 2): sizes, parameter split, and each feature's behaviour."""
import math

import pytest
import torch
import torch.nn.functional as F

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
