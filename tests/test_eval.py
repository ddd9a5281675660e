"""Evaluation: the sliding window scores every target once, equals the standard eval at stride = window,
helps a trained model at a short stride, and val_bpb is the challenge's formula."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from golf.eval import eval_sliding, eval_val, sliding_windows, unigram_bpb
from golf.train import train
from helpers import cpu_ctx, logger, make_config, run_inputs


@pytest.mark.parametrize("n,L,s", [(1000, 64, 64), (1000, 64, 16), (1001, 128, 48), (50, 64, 8), (64, 64, 1)])
def test_sliding_windows_score_each_target_once_with_context(n, L, s):
    seen = np.zeros(n, dtype=int)
    for ws, wlen, first in sliding_windows(n, L, s):
        assert wlen <= L and ws + wlen <= n
        seen[ws + first: ws + wlen] += 1
        if ws > 0:
            assert first == L - s  # every later target has >= L - s tokens of context
    assert (seen == 1).all()


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    torch.set_num_threads(1)
    # the whole (deduplicated) tiny val set, ~3.6k tokens: on its first 2k tokens alone, which no longer hold a
    # document repeating train text, this 60-step model is not helped by the sliding window's extra context
    cfg = make_config(tiny_dataset, str(tmp_path_factory.mktemp("ev")), iterations=60, train_seq_len=128,
                      train_batch_tokens=8 * 128, warmup_steps=0, val_max_tokens=0, ema_enabled=False)
    files, val, luts = run_inputs(cfg)
    res = train(cfg, cpu_ctx(), logger(cfg), files, val, luts)
    return cfg, res.model.eval(), val, luts, files


def test_standard_eval_is_the_challenge_formula(trained):
    cfg, model, val, luts, _ = trained
    loss, bpb = eval_val(model, val, luts, cfg.train_seq_len, 3 * 128, cpu_ctx())  # uneven batches on purpose
    # brute force: one pass over all sequences, bytes counted from the LUTs in float64 by a plain loop
    x, y = val[:-1].view(-1, 128), val[1:].view(-1, 128)
    with torch.no_grad():
        nll = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").double().item()
    base, space, boundary = (np.asarray(t) for t in luts)
    nbytes = sum(int(base[t]) + int(space[t] and not boundary[p]) for p, t in zip(x.flatten().tolist(), y.flatten().tolist()))
    assert loss == pytest.approx(nll / y.numel(), rel=1e-6)
    assert bpb == pytest.approx(nll / math.log(2) / nbytes, rel=1e-6)


def test_sliding_equals_standard_at_full_stride_and_helps_at_short_stride(trained):
    cfg, model, val, luts, files = trained
    ctx = cpu_ctx()
    std = eval_val(model, val, luts, 128, 8 * 128, ctx)
    full = eval_sliding(model, val, luts, 128, 128, 8, ctx)
    assert full == pytest.approx(std, rel=1e-6)
    short = eval_sliding(model, val, luts, 128, 32, 8, ctx)
    assert short[1] < std[1]  # more context per scored token: a trained model does better
    assert std[1] < unigram_bpb(files, val, luts, 1024)  # and it has learned more than token frequencies


def test_unigram_bpb_by_hand(tmp_path):
    from golf.shards import write_shard
    from golf.tokenizer import ByteLuts
    write_shard(tmp_path / "u_train_000000.bin", np.array([1, 2, 2, 2], dtype=np.uint16))
    luts = ByteLuts(np.array([0, 0, 1, 2], dtype=np.int16), np.zeros(4, bool), np.array([True, True, False, False]))
    val = torch.tensor([1, 2, 3])  # targets 2 (1 byte) and 3 (2 bytes)
    counts = np.array([1, 2, 4, 1.0])  # add-one smoothing over vocab 4
    p = counts / counts.sum()
    expect = -(math.log(p[2]) + math.log(p[3])) / math.log(2) / 3
    assert unigram_bpb([str(tmp_path / "u_train_000000.bin")], val, luts, 4) == pytest.approx(expect)
