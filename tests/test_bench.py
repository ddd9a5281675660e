"""Smoke tests of the benchmarks: each runs end to end at tiny sizes on the real code path, prints its summary
line with sane figures, and writes its JSON; bench/gpu_check.sh passes `bash -n` and a CPU dry run.

Run: python -m pytest tests/test_bench.py -q
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, dataset_env, run_script


def _summary(out: str, name: str) -> dict:
    """The `name k=v k=v` (or `name v`) summary line -> {k: float}; it must be the last line of stdout."""
    last = out.strip().splitlines()[-1]
    assert last.startswith(name + " "), f"last line is not the summary: {last!r}"
    fields = last[len(name) + 1:].split()
    if len(fields) == 1 and "=" not in fields[0]:
        return {name: float(fields[0])}
    return {k: float(v) for k, v in (f.split("=") for f in fields)}


def _ok(p):
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout


def _positive(figures: dict):
    for key, v in figures.items():
        assert math.isfinite(v) and v > 0, f"{key}={v}"


def test_kl_loss_bench_agrees_and_prints_its_ratio(tmp_path):
    out = _ok(run_script(["bench/kl_loss.py", "--n", "256", "--reps", "2", "--warmup", "1"], {}, str(tmp_path)))
    _positive(_summary(out, "kl_cost_ratio"))


@pytest.mark.slow
def test_loss_cost_bench_times_every_loss(tmp_path):
    js = tmp_path / "loss.json"
    out = _ok(run_script(["bench/loss_cost.py", "--n", "256", "--reps", "2", "--warmup", "1", "--json", str(js)], {},
                         str(tmp_path)))
    figures = _summary(out, "loss_cost_ms")
    assert set(figures) == {"ce", "hard", "soft"}
    _positive(figures)
    assert json.loads(js.read_text())["median_ms"]["soft"] == pytest.approx(figures["soft"], abs=0.01)
    out = _ok(run_script(["bench/loss_cost.py", "--n", "256", "--reps", "2", "--warmup", "1", "--against",
                          os.path.join(REPO, "golf", "losses.py")], {}, str(tmp_path)))
    assert set(_summary(out, "loss_cost_ms")) == {"ce", "hard", "soft", "ce_old", "hard_old", "soft_old"}


def test_distill_step_bench_runs_every_arm(tiny_dataset, tmp_path):
    js = tmp_path / "step.json"
    out = _ok(run_script(["bench/distill_step.py", "--quick", "--preset", "test", "--teacher-preset", "test",
                          "--json", str(js)], dataset_env(tiny_dataset), str(tmp_path)))
    ratios = _summary(out, "distill_step_ratio")
    assert set(ratios) == {"soft", "hard", "online"}
    _positive(ratios)
    fig = json.loads(js.read_text())
    assert fig["rounds"] == 3 and set(fig["arms"]) == {"baseline", "soft", "hard", "online"}
    assert all(len(a["times_ms"]) == 3 for a in fig["arms"].values())
    soft = fig["arms"]["soft"]
    assert abs(soft["paired_ratio"] - ratios["soft"]) < 1e-3
    assert soft["paired_ci95"][0] <= soft["paired_ratio"] <= soft["paired_ci95"][1]


def test_distill_step_bench_refuses_arms_without_baseline(tiny_dataset, tmp_path):
    p = run_script(["bench/distill_step.py", "--quick", "--preset", "test", "--arms", "soft"], dataset_env(tiny_dataset),
                   str(tmp_path))
    assert p.returncode == 2 and "includes baseline" in p.stderr


@pytest.mark.slow
def test_losses_ab_bench_compares_two_loss_files(tiny_dataset, tmp_path):
    out = _ok(run_script(["bench/losses_ab.py", "--quick", "--preset", "test", "--teacher-preset", "test", "--against",
                          os.path.join(REPO, "golf", "losses.py")], dataset_env(tiny_dataset), str(tmp_path)))
    figures = _summary(out, "losses_ab")
    assert set(figures) == {"soft_old", "soft_new", "base_new", "soft_new_over_old"}
    _positive(figures)
    p = run_script(["bench/losses_ab.py", "--quick", "--preset", "test", "--against", str(tmp_path / "none.py")],
                   dataset_env(tiny_dataset), str(tmp_path))
    assert p.returncode == 2 and "no such file" in p.stderr


def test_cache_write_bench_keeps_a_readable_cache(tiny_dataset, tmp_path):
    keep = tmp_path / "kept"
    out = _ok(run_script(["bench/cache_write.py", "--quick", "--preset", "test", "--shards", "1", "--keep", str(keep)],
                         dataset_env(tiny_dataset), str(tmp_path)))
    _positive(_summary(out, "cache_write_ratio"))
    manifest = json.loads((keep / "manifest.json").read_text())
    assert manifest["k"] == 32 and all(s["complete"] for s in manifest["shards"])


@pytest.mark.slow
def test_cache_read_bench_reports_small_packed_distortion(tiny_dataset, tmp_path):
    out = _ok(run_script(["bench/cache_read.py", "--quick", "--preset", "test", "--teacher-preset", "test",
                          "--shards", "1"], dataset_env(tiny_dataset), str(tmp_path)))
    _positive(_summary(out, "cache_read_fraction"))
    # The packed encoding's documented bound is 4.9e-4 nats per token for the renormalised top-K at T = 1.
    kl = [float(x) for x in re.findall(r"renorm_T1: mean (\S+) max (\S+)", out)[0]]
    assert 0 < kl[0] <= kl[1] <= 4.9e-4


@pytest.mark.slow
def test_gpu_check_script_parses_and_dry_runs(tmp_path):
    script = os.path.join(REPO, "bench", "gpu_check.sh")
    subprocess.run(["bash", "-n", script], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU_CHECK_SECONDS": "1", "PYTHONPATH": REPO}
    p = subprocess.run([script, "--dry-run", str(tmp_path / "out")], env=env, cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=300)
    _ok(p)
    line = [x for x in p.stdout.splitlines() if x.startswith("gpu_check device=")]
    assert line, p.stdout[-2000:]
    fig = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert fig["soft_ratio"] > 0 and fig["cache_write_ratio"] > 0
    assert fig["stages"]["distill_step"]["config"]["train_seq_len"] == 64  # the test preset, not the full student


def test_bootstrap_interval_resamples_whole_pairs():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from _common import bootstrap_ci, paired_ratio

    den = [1.0, 2.0, 3.0, 10.0, 50.0]  # rounds of very different speed, the arm always 10% slower
    assert bootstrap_ci(paired_ratio, [1.1 * d for d in den], den) == pytest.approx((1.1, 1.1))
    num = [1.1 * d for d in reversed(den)]  # pairs broken: per-round ratios from 0.022 to 55
    lo, hi = bootstrap_ci(paired_ratio, num, den)
    mid = paired_ratio(num, den)  # the middle pair, 3 / 3 x 1.1
    assert mid == pytest.approx(1.1) and lo <= mid <= hi and hi - lo > 1.0
