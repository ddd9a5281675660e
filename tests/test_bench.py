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
from pathlib import Path

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


def test_count_kl_bench_agrees_and_prints_its_ratios(tmp_path):
    js = tmp_path / "count.json"
    out = _ok(run_script(["bench/count_kl.py", "--n", "256", "--v", "128", "--width", "8", "--reps", "2", "--warmup",
                          "1", "--json", str(js)], {}, str(tmp_path)))
    ratios = _summary(out, "count_kl_ratio")
    assert set(ratios) == {"count", "count_logged", "dense"}
    _positive(ratios)
    assert json.loads(js.read_text())["ratio_to_ce"]["dense"] == pytest.approx(ratios["dense"], abs=1e-3)


def test_distill_step_bench_runs_every_arm(tiny_dataset, tmp_path):
    js = tmp_path / "step.json"
    arms = ["baseline", "soft", "hard", "online", "sampled", "ngram", "ema", "count", "count_dense"]
    out = _ok(run_script(["bench/distill_step.py", "--quick", "--preset", "test", "--teacher-preset", "test",
                          "--arms", ",".join(arms), "--draws", "8", "--json", str(js)],
                         dataset_env(tiny_dataset), str(tmp_path)))
    ratios = _summary(out, "distill_step_ratio")
    assert set(ratios) == set(arms[1:])
    _positive(ratios)
    fig = json.loads(js.read_text())
    assert fig["rounds"] == 3 and set(fig["arms"]) == set(arms)
    # the n-gram tables were built over the whole (cached) stream, with the clock running as in a timed run
    assert fig["ngram_build"]["positions"] > 0 and fig["ngram_build"]["ms"] > 0
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


GPU_CHECK = os.path.join(REPO, "bench", "gpu_check.sh")
GPU_STAGES = ["env", "data", "attention", "steps", "count", "train", "eval", "cache_read", "cache_write"]


def _gpu_check(args, tmp_path, **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU_CHECK_SECONDS": "1", "PYTHONPATH": REPO, **env}
    env.pop("PRESET", None)
    return subprocess.run([GPU_CHECK, *args], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_gpu_check_dry_run_prints_the_plan_then_runs_every_stage(tmp_path):
    subprocess.run(["bash", "-n", GPU_CHECK], check=True)
    out = _ok(_gpu_check(["--dry-run", str(tmp_path / "out")], tmp_path))
    lines = out.splitlines()
    plan = lines[lines.index("plan (stage, time limit, command):") + 1:][:len(GPU_STAGES)]
    assert [line.split()[0] for line in plan] == GPU_STAGES, out[:3000]
    assert "--arms baseline,soft,hard,online" in out and "--preset test" in out
    assert lines[-2].startswith("gpu_check mode=dry-run device=cpu fa3=False stages_ok=9/9 soft_ratio=")
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert {n: s["status"] for n, s in rep["stages"].items()} == dict.fromkeys(GPU_STAGES, "ok")
    fig, details = rep["figures"], rep["details"]
    assert rep["env"]["torch"] and rep["env"]["fa3"]["importable"] is False  # said, and SDPA alone ran
    assert details["attention"]["kernels"]["fa3"]["status"] == "absent" and fig["fwd_bwd_ms"]["sdpa"] > 0
    assert fig["compile_s"] is not None
    assert set(fig["step_ratio"]) == {"soft", "hard", "online"} and all(r > 0 for r in fig["step_ratio"].values())
    assert details["steps"]["config"]["train_seq_len"] == 64  # the test preset, not the full student
    assert fig["steps_max_rss_mib"] > 0 and fig["steps_warmup_s"] >= 0
    assert fig["cache_read_mb_per_s"]["fp16_cold"] > 0 and fig["eval_targets_per_s"]["sliding"] > 0
    assert fig["eval_fineweb_val_s_8gpu"]["standard"] > 0 and fig["cache_write_ratio"] > 0
    assert fig["count_step_ratio"] > 0 and fig["count_build_ms"] > 0 and fig["count_bytes"] > 0
    # train_gpt.py itself ran: WARMUP_STEPS=1 warmed both graphs, QAT switched on, the artifact was scored.
    train = details["train"]
    assert fig["train_step_ms"] > 0 and train["steps"] == 6 and train["qat_enabled"] and train["sliding_val_bpb"] > 0
    assert train["warmup"][0].startswith("warmup:done steps:2 qat_steps:1 ")
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| steps | ok |" in md and "not importable" in md and "say nothing about a GPU" in md


@pytest.mark.slow
def test_gpu_check_goes_on_past_a_failed_stage_and_reports_it(tmp_path):
    """No data (made to fail): the stages that read it fail for real with their own error, attention (which
    does not need it) still runs, and the report says which is which; exit status 1."""
    p = _gpu_check(["--dry-run", "--quick", str(tmp_path / "out")], tmp_path, GPU_CHECK_FAIL="data")
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    status = {n: s["status"] for n, s in rep["stages"].items()}
    # --quick leaves out cache_write
    assert status == {"env": "ok", "data": "failed", "attention": "ok", "steps": "failed", "count": "failed",
                      "train": "failed", "eval": "failed", "cache_read": "failed"}
    assert "not found" in (tmp_path / "out" / "steps.log").read_text()
    assert rep["figures"]["fwd_bwd_ms"]["sdpa"] > 0 and rep["figures"]["step_ratio"] == {}
    assert "| eval | failed |" in (tmp_path / "out" / "summary.md").read_text()
    assert "stages_ok=2/8 not_ok=data,steps,count,train,eval,cache_read" in p.stdout


ALL_BUT_ENV = "data,attention,steps,count,train,eval,cache_read"  # made to fail at once: only env runs


def test_gpu_check_dry_run_needs_no_outdir_and_reports_a_slow_stage_as_slow(tmp_path):
    """No OUTDIR: the report goes to a new temp folder named on the first line. A machine 1,000x faster than
    the reference (GPU_CHECK_SLOWDOWN=0.001) shrinks data's limit to 1 s, which writing the shards and training
    a tokenizer overruns: the stage is reported slow (not failed, not killed) and counted ok."""
    p = _gpu_check(["--dry-run", "--quick"], tmp_path, GPU_CHECK_SLOWDOWN="0.001",
                   GPU_CHECK_FAIL=ALL_BUT_ENV.removeprefix("data,"), TMPDIR=str(tmp_path))
    out = re.search(r", out (\S+), scratch ", p.stdout)[1]
    assert Path(out).parent == tmp_path and Path(out).name.startswith("gpu_check."), p.stdout[:500]
    rep = json.loads((Path(out) / "gpu_check.json").read_text())
    data = rep["stages"]["data"]
    assert data["status"] == "slow" and data["limit_s"] == 1 and data["seconds"] > 1 and data["exit"] == 0
    line = p.stdout.splitlines()[-2]  # env (1 s too) may be slow as well
    assert re.fullmatch(r".* stages_ok=2/8 not_ok=attention,steps,count,train,eval,cache_read slow=(env,)?data", line), line


def test_gpu_check_dry_run_scales_its_limits_by_the_measured_slowdown(tmp_path):
    p = _gpu_check(["--dry-run", "--quick", str(tmp_path / "out")], tmp_path, GPU_CHECK_SLOWDOWN="2.5",
                   GPU_CHECK_FAIL=ALL_BUT_ENV)
    plan = dict(re.findall(r"^  (\w+) +<= *(\d+)s ", p.stdout, re.M))
    # 60, 120, 150, 1 + 200 (GPU_CHECK_SECONDS=1), 1 + 120, 180, 120, 120 s on the reference CPU
    assert plan == {"env": "150", "data": "300", "attention": "375", "steps": "503", "count": "303", "train": "450",
                    "eval": "300", "cache_read": "300"}, p.stdout[:3000]
    assert "slowdown 2.5x" in p.stdout and "budget 375s" in p.stdout
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]["env"]["status"] == "ok"


def test_gpu_check_slowdown_is_at_least_one():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import gpu_check

    assert gpu_check.slowdown(reps=3) >= 1.0


def test_gpu_check_refuses_bad_usage(tmp_path):
    for args in ([], ["--bogus", "x"], ["a", "b"]):
        p = _gpu_check(args, tmp_path)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.splitlines()) == 1, p.stderr


def test_gpu_check_attention_finds_an_installed_fa3(tmp_path):
    """A stand-in flash_attn_interface on the path: the check says it imports, and that the model did not call
    it on this device (FA3 runs only on CUDA), instead of reporting SDPA's numbers as FA3's."""
    (tmp_path / "fa3").mkdir()
    (tmp_path / "fa3" / "flash_attn_interface.py").write_text(
        "def flash_attn_func(q, k, v, causal=False):\n    raise AssertionError('not on this device')\n")
    env = {"PRESET": "test", "PYTHONPATH": f"{tmp_path / 'fa3'}{os.pathsep}{REPO}"}
    _ok(run_script(["bench/gpu_check.py", "env", str(tmp_path / "env.json")], env, str(tmp_path)))
    assert json.loads((tmp_path / "env.json").read_text())["fa3"]["importable"] is True
    _ok(run_script(["bench/gpu_check.py", "attention", str(tmp_path / "a.json"), "--steps", "1"], env, str(tmp_path)))
    kernels = json.loads((tmp_path / "a.json").read_text())["kernels"]
    assert kernels["fa3"]["status"] == "not used by the model on this device" and kernels["fa3"]["fa3_calls"] == 0
    assert kernels["sdpa"]["status"] == "ok"


def test_bootstrap_interval_resamples_whole_pairs():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from _common import bootstrap_ci, paired_ratio

    den = [1.0, 2.0, 3.0, 10.0, 50.0]  # rounds of very different speed, the arm always 10% slower
    assert bootstrap_ci(paired_ratio, [1.1 * d for d in den], den) == pytest.approx((1.1, 1.1))
    num = [1.1 * d for d in reversed(den)]  # pairs broken: per-round ratios from 0.022 to 55
    lo, hi = bootstrap_ci(paired_ratio, num, den)
    mid = paired_ratio(num, den)  # the middle pair, 3 / 3 x 1.1
    assert mid == pytest.approx(1.1) and lo <= mid <= hi and hi - lo > 1.0


def test_kd_fidelity_bench_prints_every_target(tiny_dataset, tmp_path):
    """Random teacher and student at tiny sizes: one line per target, with the codecs' bytes for top-K, and the
    sampled gradients' noise shrinking with the draws and with averaging over repeats."""
    out = _ok(run_script(["bench/kd_fidelity.py", "--preset", "test", "--teacher-preset", "test", "--batches", "1",
                          "--repeats", "4", "--ks", "4", "--draws", "2,64"], dataset_env(tiny_dataset), str(tmp_path)))
    lines = {}
    for line in out.splitlines():
        if line.startswith("kd_fidelity "):
            fields = dict(f.split(":", 1) for f in line.split()[1:])
            name = fields.pop("target")
            lines[name] = {k: float(v) for k, v in fields.items()}
    assert set(lines) == {f"topk-{t}-k4-{c}" for t in ("renorm", "bucket") for c in ("fp16", "packed")} | {
        "sampled-n2", "sampled-n64"}
    assert lines["topk-bucket-k4-fp16"]["bytes_per_token"] == 16  # CODECS["fp16"].row_bytes(4)
    assert lines["topk-bucket-k4-packed"]["bytes_per_token"] == 9  # CODECS["packed"].row_bytes(4)
    for fig in lines.values():
        assert 0 <= fig["angle_deg"] <= 180 and fig["norm_ratio"] > 0 and 0 <= fig["mixed_angle_deg"] <= 180
    n2, n64 = lines["sampled-n2"], lines["sampled-n64"]
    assert n64["angle_deg"] < n2["angle_deg"] and n2["mean_angle_deg"] < n2["angle_deg"]
    # the draw codecs' bytes: ragged 1 + 3 per distinct id + 8 per 256 rows; packed 5 per 4 draws; the cheaper one
    assert 1 <= n2["distinct"] <= 2 and n2["sampled_bytes"] == pytest.approx(3 * n2["distinct"] + 1 + 8 / 256, abs=0.06)
    assert n2["sampled_packed_bytes"] == 5 and n64["sampled_packed_bytes"] == 80
    assert n2["bytes_per_token"] == min(n2["sampled_bytes"], 5.0)


def test_ngram_cost_bench_times_every_piece(tiny_dataset, tmp_path):
    out = _ok(run_script(["bench/ngram_cost.py", "--preset", "test", "--reps", "2", "--evict-mb", "4"],
                         dataset_env(tiny_dataset), str(tmp_path)))
    figures = _summary(out, "ngram_cost")
    assert set(figures) == {"build_ms", "query_ms", "query_online_ms", "query_cold_ms", "count_kl_ms", "full_kl_ms",
                            "ce_ms"}
    _positive(figures)
