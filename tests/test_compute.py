"""golf/compute.py: what a run cost, against hand counts, on synthetic metrics files and cache manifests.

    python -m pytest tests/test_compute.py -q
"""
import json
import os
import subprocess
import sys

import pytest

from golf import compute
from golf.config import PRESETS, Config
from golf.model import GPT
from golf.runs import load_run
from helpers import repo_env
from test_results import write_run

# By hand from golf/model.py. demo-student (V 1024, d 128, 2 layers, 4 heads, 2 kv heads of 32, MLP 3x, bigram
# 2048 x 64): tok_emb 131,072; bigram 131,072 + 64*128 + 1 (scale) = 139,265; smear 128; skip weights 1 x 128;
# a block: q 128*128 + k 128*64 + v 128*64 + proj 128*128 + q_gain 4 = 49,156, MLP 2 * 128*384 = 98,304,
# attn/mlp scales 2*128 and resid_mix 2*128 = 512: 147,972, two of them 295,944. Total 566,537.
N_STUDENT = 131_072 + 139_265 + 128 + 128 + 2 * (49_156 + 98_304 + 512)
# demo-teacher (d 256, 4 layers, 4 heads, 2 kv heads of 64): tok_emb 262,144; bigram 131,072 + 64*256 + 1 =
# 147,457; smear 256; skip 2 x 256; a block: 2*65,536 + 2*32,768 + 4 = 196,612, MLP 2 * 256*768 = 393,216,
# vectors 4*256 = 1,024: 590,852, four of them. Total 2,773,777.
N_TEACHER = 262_144 + 147_457 + 256 + 512 + 4 * (196_612 + 393_216 + 1_024)
BATCH = 16 * 256  # both demo presets' TRAIN_BATCH_TOKENS
STEPS, TEACHER_STEPS = 100, 560
SHARDS = (4096, 1000)  # cached tokens per shard
# Window 256, stride 128: shard 1 (positions 0..4095) is scored by windows 0..30 (window k >= 1 scores
# [128k + 128, 128k + 256)), shard 2 (4096..5095) by windows 31..38; every window forwards 256 tokens.
FORWARDED = (31 + 8) * 256


def test_num_params_by_hand():
    assert N_STUDENT == 566_537 and N_TEACHER == 2_773_777
    assert compute.num_params(Config(**PRESETS["demo-student"]).to_dict()) == N_STUDENT
    assert compute.num_params(Config(**PRESETS["demo-teacher"]).to_dict()) == N_TEACHER
    # the meta-device count is a real model's
    cfg = Config(**PRESETS["test"])
    assert compute.num_params(cfg.to_dict()) == sum(p.numel() for p in GPT(cfg).parameters())


def test_tokens_per_step_is_the_global_batch():
    cfg = Config(**PRESETS["demo-student"]).to_dict()
    assert compute.tokens_per_step(cfg, 1) == compute.tokens_per_step(cfg, 2) == BATCH == cfg["train_batch_tokens"]
    # what the loader reads when the batch does not split evenly over 2 ranks: 2 x 4096 per step, not 8193
    assert compute.tokens_per_step({**cfg, "train_batch_tokens": 2 * BATCH + 1}, 2) == 2 * BATCH


def _teacher(root, name="teacher-big"):
    write_run(root, name, "train_teacher.py", steps=TEACHER_STEPS, train_ms=200_000.0, **PRESETS["demo-teacher"])
    return os.path.join(root, name, name + ".pt")


def _cache(root, name="cache-big", teacher_config=None, **fields):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    m = {"format": "golf-logit-cache", "version": 1, "k": 32, "vocab_size": 1024, "encoding": "fp16",
         "teacher": {"sha256": "0" * 64, "config": teacher_config or Config(**PRESETS["demo-teacher"]).to_dict()},
         "window": 256, "stride": 128,
         "shards": [{"name": f"s{i}.bin", "num_tokens": n, "fingerprint": "x", "complete": True}
                    for i, n in enumerate(SHARDS)], **fields}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(m, f)
    return folder


def _student(root, name, script="distill.py", **overrides):
    write_run(root, name, script, steps=STEPS, train_ms=10_000.0, **overrides)
    return load_run(os.path.join(root, name))


def test_cache_arm_counts_teacher_training_and_cache_build(tmp_path):
    root = str(tmp_path)
    run = _student(root, "soft", distill_teacher="cache", logit_cache=_cache(root, build_seconds=30.5),
                   teacher_path=_teacher(root))
    c = compute.run_cost(run)
    assert c.known and c.missing == ()
    assert (c.student_s, c.teacher_train_s, c.cache_s) == (10.0, 200.0, 30.5)
    assert c.total_s == pytest.approx(240.5)
    assert c.student_flops == 6 * N_STUDENT * STEPS * BATCH  # reading rows costs no matmul
    assert c.teacher_flops == 6 * N_TEACHER * TEACHER_STEPS * BATCH + 2 * N_TEACHER * FORWARDED
    assert c.total_flops == c.student_flops + c.teacher_flops


def test_online_arm_adds_the_teacher_forward_except_d3(tmp_path):
    root = str(tmp_path)
    path = _teacher(root)
    c = compute.run_cost(_student(root, "online", distill_teacher="online", teacher_path=path))
    assert c.known and (c.student_s, c.teacher_train_s, c.cache_s) == (10.0, 200.0, 0.0)
    assert c.student_flops == 6 * N_STUDENT * STEPS * BATCH + 2 * N_TEACHER * STEPS * BATCH
    assert c.teacher_flops == 6 * N_TEACHER * TEACHER_STEPS * BATCH
    # D3: the teacher is loaded (so trained) but never called
    d3 = compute.run_cost(_student(root, "d3", distill_teacher="online", teacher_path=path,
                                   distill_seed_faithful="D3"))
    assert d3.student_flops == 6 * N_STUDENT * STEPS * BATCH
    assert (d3.teacher_train_s, d3.teacher_flops) == (200.0, c.teacher_flops)
    # a schedule: the teacher is asked on the second half only
    half = compute.run_cost(_student(root, "half", distill_teacher="online", teacher_path=path,
                                     distill_start_frac=0.5))
    assert half.student_flops == 6 * N_STUDENT * STEPS * BATCH + 2 * N_TEACHER * STEPS * BATCH * 0.5


def test_in_budget_teachers_and_baseline_cost_the_student_only(tmp_path):
    root = str(tmp_path)
    d = STEPS * BATCH
    ema = compute.run_cost(_student(root, "ema", distill_teacher="ema", distill_start_frac=0.7))
    assert ema.known and (ema.student_s, ema.teacher_train_s, ema.cache_s, ema.teacher_flops) == (10.0, 0, 0, 0)
    assert ema.student_flops == pytest.approx(6 * N_STUDENT * d + 2 * N_STUDENT * d * 0.3)
    for run in (_student(root, "ngram", distill_teacher="ngram"), _student(root, "baseline", "train_gpt.py")):
        c = compute.run_cost(run)
        assert c.known and (c.student_s, c.teacher_train_s, c.cache_s, c.teacher_flops) == (10.0, 0, 0, 0)
        assert c.student_flops == c.total_flops == 6 * N_STUDENT * d
    # a teacher run costs its own training
    _teacher(root)
    t = compute.run_cost(load_run(os.path.join(root, "teacher-big")))
    assert t.known and (t.student_s, t.teacher_train_s, t.total_s) == (200.0, 0, 200.0)
    assert t.total_flops == 6 * N_TEACHER * TEACHER_STEPS * BATCH


def test_ngram_cache_has_no_matmuls_and_no_teacher(tmp_path):
    root = str(tmp_path)
    # as cache_logits.py --teacher ngram:3 writes it: the counting is inside build_seconds
    folder = _cache(root, "cache-ngram3", teacher_config={"ngram_order": 3, "ngram_smoothing": "mkn"}, build_seconds=4.5)
    c = compute.run_cost(_student(root, "ng", distill_teacher="cache", logit_cache=folder))
    assert (c.teacher_train_s, c.teacher_flops, c.cache_s, c.total_s) == (0, 0, 4.5, 14.5) and c.known


def test_missing_pieces_make_the_cost_a_lower_bound(tmp_path):
    root = str(tmp_path)
    # no teacher metrics file: the cache is still counted, the message names the checkpoint and the file
    gone = os.path.join(root, "teacher-gone", "teacher-gone.pt")
    c = compute.run_cost(_student(root, "a", distill_teacher="cache", logit_cache=_cache(root, build_seconds=30.5),
                                  teacher_path=gone))
    assert not c.known and (c.teacher_train_s, c.cache_s) == (0, 30.5)
    assert c.teacher_flops == 2 * N_TEACHER * FORWARDED
    assert c.missing == (f"teacher training time of {gone}: no metrics file {gone[:-3]}.jsonl",)
    # a manifest without build_seconds: the teacher is still counted
    folder = _cache(root, "cache-untimed")
    c = compute.run_cost(_student(root, "b", distill_teacher="cache", logit_cache=folder, teacher_path=_teacher(root)))
    assert not c.known and (c.teacher_train_s, c.cache_s) == (200.0, 0)
    assert len(c.missing) == 1 and folder in c.missing[0] and "build_seconds" in c.missing[0]
    # no manifest at all
    c = compute.run_cost(_student(root, "c", distill_teacher="cache", logit_cache=os.path.join(root, "nowhere"),
                                  teacher_path=_teacher(root)))
    assert not c.known and os.path.join(root, "nowhere") in c.missing[0]
    # an unfinished run
    u = compute.run_cost(_student(root, "u", distill_teacher="ema", finished=False))
    assert not u.known and u.missing == ("the run has not finished",) and u.total_s == u.total_flops == 0


def test_importing_it_loads_no_torch():
    # golf.study imports golf.compute, and golf.results reads a study's metrics without torch (golf/arms.py)
    code = "import sys, golf.compute; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], env=repo_env(), check=True)
