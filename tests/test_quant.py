"""Tests for golf/quant.py: int6/int8 export rules, late-QAT fake quantisation, the compressed artifact.

Run: python -m pytest tests/test_quant.py -q -x
"""
import io
import lzma
import os

import pytest
import torch

from golf.errors import GolfError
from golf.quant import (
    SIZE_CAP,
    classify_param,
    compressor_of,
    dequantize_state_dict,
    fake_quantize_int6_rows,
    pack_artifact,
    quant_stats,
    quantize_int6_rows,
    quantize_int8_rows,
    quantize_state_dict,
    read_artifact,
    resolve_compressor,
    row_quantile,
    size_report,
    unpack_artifact,
    write_artifact,
)

FP16_EPS = 2.0**-11  # relative rounding of one fp16 value


def _rows_of_mixed_magnitude(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Rows whose absmax spans 0.01 .. 8, so both the floor (max|w| < 1) and the absmax regime are covered."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    row_scale = torch.logspace(-2, 0.9, rows)[torch.randperm(rows, generator=g)]
    return w / w.abs().amax(dim=1, keepdim=True) * row_scale[:, None]


# ---------------------------------------------------------------------------------------------------------
# Per-row quantisers against float64 references


def test_int6_rows_match_reference_and_stay_within_half_a_step():
    w = _rows_of_mixed_magnitude(64, 96, seed=0)
    q, scale = quantize_int6_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (64,)
    w64 = w.double()
    s_ref = (w64.abs().amax(dim=1) / 31).clamp_min(1 / 31).to(torch.float16)
    assert torch.equal(scale, s_ref)
    s64 = scale.double()[:, None]
    q_ref = torch.clamp(torch.round(w64 / s64), -32, 31)
    assert torch.equal(q.double(), q_ref)
    deq = dequantize_state_dict(quantize_state_dict({"blocks.0.mlp.fc.weight": w.repeat(12, 1)}))["blocks.0.mlp.fc.weight"]
    err = (w.repeat(12, 1).double() - deq.double()).abs()
    # absmax lands on +-31 * s (1 + fp16 rounding), so every element is within half a step of its grid point.
    assert (err <= s64.repeat(12, 1) * (0.5 + 31 * FP16_EPS) + 1e-7).all()
    assert ((w.abs().amax(dim=1) < 1) == (scale.float() == torch.tensor(1 / 31).half().float())).all()


def test_int6_floor_hand_checked():
    w = torch.tensor([
        [0.1, -0.4, 0.0, 0.9],  # max|w| < 1: step is the 1/31 floor, q = round(31 w)
        [3.1, -1.0, 0.5, 0.0],  # absmax 3.1: step 0.1 (fp16 0.09998), q = round(w / 0.1)
        [0.0, 0.0, 0.0, 0.0],  # all zero: floor, all zeros
    ])
    q, scale = quantize_int6_rows(w)
    assert q.tolist() == [[3, -12, 0, 28], [31, -10, 5, 0], [0, 0, 0, 0]]
    assert scale.tolist() == torch.tensor([1 / 31, 0.1, 1 / 31], dtype=torch.float16).tolist()
    # A 1-D tensor gets one scale for the whole tensor, with the same floor.
    q1, s1 = quantize_int6_rows(torch.tensor([0.1, -0.4, 0.9]))
    assert q1.tolist() == [3, -12, 28] and s1.shape == (1,)


def test_row_quantile_equals_torch_quantile():
    g = torch.Generator().manual_seed(1)
    for shape in [(5, 512), (3, 128), (4, 1), (2, 2), (6, 777)]:
        x = torch.rand(shape, generator=g)
        for q in (0.9999984, 0.5, 0.0, 1.0):
            assert torch.equal(row_quantile(x, q), torch.quantile(x, q, dim=1)), (shape, q)


def test_int8_rows_clip_scale_and_error():
    w = _rows_of_mixed_magnitude(32, 512, seed=2) * 0.3
    w[3, 7] = 5.0  # an outlier: clipped to the row's 99.99984th percentile
    q, scale = quantize_int8_rows(w)
    clip = torch.quantile(w.abs(), 0.9999984, dim=1)
    assert torch.equal(scale, (clip.double() / 127).clamp_min(1 / 127).half())
    assert int(q.abs().max()) <= 127
    s = scale.double()[:, None]
    deq = q.double() * s
    inside = w.abs() <= clip[:, None]
    err = (w.double() - deq).abs()
    assert (err[inside] <= (s * (0.5 + 127 * FP16_EPS)).expand_as(err)[inside] + 1e-7).all()
    assert not inside[3, 7] and q[3, 7] == 127 and abs(deq[3, 7] - clip[3]) <= 0.5 * s[3, 0] + 1e-6
    # The 1/127 floor: a row of small values keeps the fixed 1/127 step.
    small = torch.tensor([[0.02, -0.011, 0.004, 0.0]])
    q_small, s_small = quantize_int8_rows(small)
    assert s_small.tolist() == [torch.tensor(1 / 127).half().item()]
    assert q_small.tolist() == [[3, -1, 1, 0]]  # 0.02*127=2.54, -0.011*127=-1.40, 0.004*127=0.51


# ---------------------------------------------------------------------------------------------------------
# The state dict rules: names, sizes, dtypes


def _student_state_dict(num_layers=11, d=512, kv_dim=256, hidden=1536, vocab=1024, bigram=(6144, 128)):
    """The seed student's exact parameter names and shapes (fact sheet 2.1); zeros, since only layout matters."""
    z = torch.zeros
    sd = {
        "tok_emb.weight": z(vocab, d, dtype=torch.bfloat16),
        "bigram.embed.weight": z(*bigram, dtype=torch.bfloat16),
        "bigram.proj.weight": z(d, bigram[1]),
        "bigram.scale": z(()),
        "smear.gate": z(d),
        "skip_weights": z(num_layers // 2, d),
    }
    for i in range(num_layers):
        p = f"blocks.{i}."
        sd |= {
            p + "attn.c_q.weight": z(d, d), p + "attn.c_k.weight": z(kv_dim, d),
            p + "attn.c_v.weight": z(kv_dim, d), p + "attn.proj.weight": z(d, d),
            p + "mlp.fc.weight": z(hidden, d), p + "mlp.proj.weight": z(d, hidden),
            p + "attn_scale": z(d), p + "mlp_scale": z(d), p + "resid_mix": z(2, d), p + "attn.q_gain": z(8),
        }
    return sd


def test_student_tally_matches_fact_sheet():
    sd = _student_state_dict()
    assert sum(t.numel() for t in sd.values()) == 27_354_201
    obj = quantize_state_dict(sd)
    assert quant_stats(obj) == {"int6": 25_952_256, "int8": 1_310_720, "fp16": 91_225, "raw": 0}
    kinds = {name: entry["kind"] for name, entry in obj["tensors"].items()}
    assert list(kinds) == list(sd)  # order kept, nothing dropped or added
    assert kinds["tok_emb.weight"] == kinds["bigram.embed.weight"] == "int8"
    assert kinds["bigram.proj.weight"] == "fp16"  # exactly 65,536 entries: rule 1 wins over its ".proj." name
    for suffix in ("attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight"):
        assert kinds[f"blocks.10.{suffix}"] == "int6"
    for suffix in ("attn_scale", "mlp_scale", "resid_mix", "attn.q_gain"):
        assert kinds[f"blocks.10.{suffix}"] == "fp16"


def test_classify_names():
    assert classify_param("tok_emb.weight") == "embed"
    assert classify_param("bigram.embed.weight") == "other"
    assert classify_param("blocks.3.mlp.proj.weight") == "mlp"
    assert classify_param("blocks.3.attn.proj.weight") == "attn"
    # A teacher's bigram.proj (128 -> 768, 98,304 entries) is past rule 1 and, like the seed, goes to int6.
    obj = quantize_state_dict({"bigram.proj.weight": torch.zeros(768, 128)})
    assert obj["tensors"]["bigram.proj.weight"]["kind"] == "int6"


def test_passthrough_dtypes_and_exactness():
    g = torch.Generator().manual_seed(3)
    sd = {
        "blocks.0.attn.q_gain": torch.randn(8, generator=g),
        "blocks.0.resid_mix": torch.randn(2, 512, generator=g).bfloat16(),
        "bigram.scale": torch.tensor(0.05),
        "step": torch.tensor(1234, dtype=torch.int64),
        "blocks.0.attn.c_q.weight": torch.randn(300, 256, generator=g).bfloat16(),
    }
    obj = quantize_state_dict(sd)
    stored = {name: entry["data"].dtype for name, entry in obj["tensors"].items()}
    assert stored == {"blocks.0.attn.q_gain": torch.float16, "blocks.0.resid_mix": torch.float16,
                      "bigram.scale": torch.float16, "step": torch.int64, "blocks.0.attn.c_q.weight": torch.int8}
    out = dequantize_state_dict(obj)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
    assert torch.equal(out["blocks.0.attn.q_gain"], sd["blocks.0.attn.q_gain"].half().float())
    assert torch.equal(out["blocks.0.resid_mix"], sd["blocks.0.resid_mix"].half().bfloat16())
    assert torch.equal(out["bigram.scale"], torch.tensor(0.05).half().float())
    assert torch.equal(out["step"], sd["step"])
    assert not torch.equal(out["blocks.0.attn.c_q.weight"], sd["blocks.0.attn.c_q.weight"])  # really quantised


def test_passthrough_does_not_keep_a_shared_storage():
    big = torch.randint(0, 1 << 30, (1_000_000,))
    obj = quantize_state_dict({"ids": big[:10], "h": torch.randn(100_000).half()[:10]})
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert buf.tell() < 20_000  # a view would drag the whole 8 MB storage into the file


def test_non_finite_weights_are_refused():
    w = torch.randn(300, 256)
    w[5, 5] = float("nan")
    with pytest.raises(GolfError, match="blocks.2.mlp.fc.weight"):
        quantize_state_dict({"blocks.2.mlp.fc.weight": w})
    with pytest.raises(GolfError, match="fp16 range"):
        quantize_state_dict({"bigram.scale": torch.tensor(1e6)})


# ---------------------------------------------------------------------------------------------------------
# The artifact


def _small_obj():
    g = torch.Generator().manual_seed(4)
    return quantize_state_dict({
        "tok_emb.weight": (torch.randn(300, 256, generator=g) * 0.02).bfloat16(),
        "blocks.0.attn.c_q.weight": torch.randn(256, 300, generator=g) * 0.05,
        "blocks.0.mlp.proj.weight": torch.randn(256, 300, generator=g) * 2.0,
        "blocks.0.attn_scale": torch.randn(64, generator=g),
        "step": torch.tensor(7),
    })


def _assert_same_state(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("compressor", ["lzma", "zstd"])
def test_artifact_roundtrip_exact(compressor, tmp_path):
    if compressor == "zstd":
        pytest.importorskip("zstandard")
    obj = _small_obj()
    expected = dequantize_state_dict(obj)
    data = pack_artifact(obj, compressor)
    assert compressor_of(data) == compressor
    _assert_same_state(dequantize_state_dict(unpack_artifact(data)), expected)
    path = tmp_path / "final_model.int6.ptz"
    n = write_artifact(path, obj, compressor)
    assert n == os.path.getsize(path) == len(data)
    _assert_same_state(dequantize_state_dict(read_artifact(path)), expected)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_auto_picks_zstd_when_installed():
    pytest.importorskip("zstandard")
    assert resolve_compressor("auto") == "zstd"
    with pytest.raises(GolfError, match="unknown compressor"):
        resolve_compressor("gzip")


@pytest.mark.parametrize("compressor", ["lzma", "zstd"])
def test_damaged_artifacts_give_golf_error(compressor, tmp_path):
    if compressor == "zstd":
        pytest.importorskip("zstandard")
    data = pack_artifact(_small_obj(), compressor)
    flipped = bytearray(data)
    mid = len(data) // 2
    flipped[mid : mid + 8] = bytes(b ^ 0xFF for b in flipped[mid : mid + 8])
    cases = {"truncated": data[: len(data) - 100], "flipped": bytes(flipped), "unknown": b"PK\x03\x04" + data[4:], "empty": b""}
    for label, bad in cases.items():
        path = tmp_path / f"{label}.ptz"
        path.write_bytes(bad)
        with pytest.raises(GolfError, match=str(path)):
            read_artifact(path)
    with pytest.raises(GolfError, match="does not exist"):
        read_artifact(tmp_path / "missing.ptz")
    # A well-formed stream that does not hold our object is refused too.
    with pytest.raises(GolfError, match="not a quantised model"):
        unpack_artifact(lzma.compress(_torch_bytes({"w": torch.zeros(3)})))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_size_report_lines_and_cap_boundary():
    lines = size_report(15_606_376, 89_578, "int6+zstd")
    assert lines[:3] == [
        "Serialized model int6+zstd: 15606376 bytes",
        "Code size: 89578 bytes",
        "Total submission size int6+zstd: 15695954 bytes",  # the seed's own log line
    ]
    assert "under_cap:True" in lines[3]
    assert "under_cap:True" in size_report(SIZE_CAP - 1000, 1000, "int6+lzma")[3]  # exactly 16,000,000 is allowed
    assert "under_cap:False" in size_report(SIZE_CAP - 1000, 1001, "int6+lzma")[3]
    assert SIZE_CAP == 16_000_000


# ---------------------------------------------------------------------------------------------------------
# Late-QAT fake quantisation


def test_fake_quant_forward_is_int6_grid_and_gradient_is_identity():
    w = _rows_of_mixed_magnitude(16, 40, seed=5) * 0.1
    w[0] = torch.linspace(-3e-4, 3.1e-4, 40)  # absmax/31 = 1e-5: the 1e-4 floor applies
    w = w.requires_grad_()
    y = fake_quantize_int6_rows(w)
    w64 = w.detach().double()
    s = (w64.abs().amax(dim=1, keepdim=True) / 31).clamp_min(1e-4)
    ref = torch.clamp(torch.round(w64 / s), -32, 31) * s
    # float32 arithmetic (and w + (w_q - w)) against float64: a few ulps, far below a grid step.
    assert torch.allclose(y.detach().double(), ref, rtol=1e-6, atol=1e-9)
    assert torch.round(y.detach()[0] / 1e-4).tolist()[0] == -3.0  # -3e-4 on the 1e-4 grid, not a 1e-5 grid
    upstream = torch.randn(16, 40)
    y.backward(upstream)
    assert torch.equal(w.grad, upstream)
    assert fake_quantize_int6_rows(torch.randn(4, 8).bfloat16()).dtype == torch.bfloat16
