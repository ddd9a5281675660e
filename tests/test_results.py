"""golf/results.py and the modules it runs (golf/runs.py, stats.py, study.py, tables.py, plots.py): the statistics
against hand-computed values, the table built from metrics files, the skip/resume decision (--is-done) and the
best-arm choice.

    python -m pytest tests/test_results.py -q
"""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from golf import results, stats, tables
from golf.config import PRESETS, Config
from golf.runs import cache_bytes_per_token, is_done, load_study
from golf.study import (arm_rows, best_arm, cache_contrasts, describe, group_name, main_budget, paired_comparisons,
                        seed_groups, study_comparisons)
from helpers import repo_env


# ----------------------------------------------------------------------------------------------------------
# Statistics


def test_mean_and_sample_std_by_hand():
    m, s = stats.mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    # deviations -4/3, -1/3, 5/3: squares sum to 42/9, divided by n-1 = 2 -> 7/3
    assert s == pytest.approx(math.sqrt(7 / 3))
    assert math.isnan(stats.mean_std([5.0])[1])


def test_paired_ttest_matches_closed_forms():
    # d = a - b = [1, 2, 3]: mean 2, std 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3; for df = 2 the two-sided
    # p-value is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(6/7).
    r = stats.paired_ttest([1.2, 1.5, 1.9], [0.2, -0.5, -1.1])
    assert r["diffs"] == pytest.approx([1.0, 2.0, 3.0])
    assert (r["n"], r["mean"], r["std"]) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert r["t"] == pytest.approx(2 * math.sqrt(3))
    assert r["p"] == pytest.approx(1 - math.sqrt(6 / 7))
    # df = 1 (Cauchy): p = 1 - (2 / pi) atan(|t|); d = [1, 3] gives t = 2 / (sqrt 2 / sqrt 2) = 2
    r = stats.paired_ttest([1.0, 3.0], [0.0, 0.0])
    assert r["t"] == pytest.approx(2.0)
    assert r["p"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0))
    # a sign flip of every difference flips t and keeps p
    r2 = stats.paired_ttest([0.0, 0.0], [1.0, 3.0])
    assert (r2["t"], r2["p"]) == (pytest.approx(-2.0), pytest.approx(r["p"]))
    assert math.isnan(stats.paired_ttest([1.0, 2.0], [0.0, 1.0])["p"])  # equal differences: undefined


def test_interval_and_minimum_detectable_effect_by_hand():
    # d = [1, 2, 3]: mean 2, std 1, n 3, df 2, where Student's t has the closed-form quantile
    # t_q = (2q - 1) / sqrt(2 q (1 - q)): t_0.975 = 0.95 / sqrt(0.04875), t_0.8 = 0.6 / sqrt(0.32)
    r = stats.paired_ttest([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    t975, t80 = 0.95 / math.sqrt(0.04875), 0.6 / math.sqrt(0.32)
    assert r["ci"] == pytest.approx(t975 / math.sqrt(3))
    assert r["mde"] == pytest.approx((t975 + t80) / math.sqrt(3))
    assert math.isnan(stats.paired_ttest([1.0], [0.0])["mde"])
    # equal differences: no p, but an interval of width zero
    assert stats.paired_ttest([1.0, 2.0], [0.0, 1.0])["ci"] == 0.0


def test_verdict_reports_p_or_the_detectable_size():
    helps = stats.paired_ttest([1.40, 1.41, 1.39, 1.40], [1.50, 1.52, 1.49, 1.51])
    assert helps["p"] < 0.05
    assert tables.verdict(helps) == f"{helps['mean']:+.4f} ± {helps['ci']:.4f} (p {helps['p']:.2g})"
    noise = stats.paired_ttest([1.50, 1.47, 1.52, 1.49], [1.49, 1.50, 1.50, 1.50])
    assert noise["p"] >= 0.05
    assert tables.verdict(noise).endswith(f": not detectable, MDE {noise['mde']:.3f})")
    assert tables.verdict(stats.paired_ttest([1.0], [2.0])) == "–"


def test_overhead_percent():
    assert stats.overhead_pct(110.0, 100.0) == pytest.approx(10.0)
    assert stats.overhead_pct(148.21 * 1.0732, 148.21) == pytest.approx(7.32)
    assert stats.overhead_pct(95.0, 100.0) == pytest.approx(-5.0)


# ----------------------------------------------------------------------------------------------------------
# A synthetic study: metrics files as golf/log.py writes them


BIG = {"distill_teacher": "cache", "distill_target": "soft", "distill_temp": 2.0, "logit_cache": "runs/x/cache-big",
       "teacher_path": "runs/x/teacher-big/teacher-big.pt"}


def write_run(root, name, script="train_gpt.py", *, seed=1337, wall=30.0, steps=100, train_ms=10_000.0,
              rt=None, sliding=None, total=1_000_000, vals=((50, 2.0), (100, 1.8)), finished=True, track=None,
              **overrides):
    """`root/name/name.jsonl` with the events of a run of the demo-student preset (+ overrides)."""
    cfg = Config(**{**PRESETS["demo-student"], "seed": seed, "max_wallclock_seconds": wall, "run_id": name,
                    "log_dir": os.path.join(root, name), "checkpoint_path": os.path.join(root, name, name + ".pt"),
                    **overrides})
    events = [{"event": "config", "script": script, "config": cfg.to_dict(), "world_size": 1},
              {"event": "val", "step": 0, "val_loss": 7.0, "val_bpb": 4.0, "train_ms": 0.0}]
    if track is not None:  # what distill.py logs after its arm line
        events.append({"event": "arm", "teacher": overrides.get("distill_teacher"), "track": track})
    events += [{"event": "val", "step": s, "val_loss": b * 1.6, "val_bpb": b, "train_ms": train_ms * s / steps}
               for s, b in vals]
    events.append({"event": "train", "step": steps // 2, "train_loss": 3.0, "train_ms": train_ms / 2})
    if finished:
        sliding = 1.5 if sliding is None else sliding
        rt = sliding + 0.02 if rt is None else rt
        events += [{"event": "train_end", "step": steps, "train_ms": train_ms, "step_ms_median": train_ms / steps},
                   {"event": "final", "label": "int6", "val_loss": rt * 1.6, "val_bpb": rt,
                    "sliding_val_loss": sliding * 1.6, "sliding_val_bpb": sliding},
                   {"event": "artifact", "path": os.path.join(root, name, name + ".int6.ptz"),
                    "model_bytes": total - 50_000, "code_bytes": 50_000, "total_bytes": total, "compressor": "zstd"}]
    os.makedirs(os.path.join(root, name), exist_ok=True)
    with open(os.path.join(root, name, name + ".jsonl"), "w") as f:
        f.write("".join(json.dumps(e) + "\n" for e in events))


@pytest.fixture
def study(tmp_path):
    root = str(tmp_path / "demo")
    write_run(root, "baseline", sliding=1.50)
    write_run(root, "baseline-s42", seed=42, sliding=1.52)
    write_run(root, "baseline-s2024", seed=2024, sliding=1.49)
    soft = dict(script="distill.py", distill_alpha=0.5, train_ms=11_000.0, **BIG)
    write_run(root, "soft-a0.5", sliding=1.47, **soft)
    write_run(root, "soft-a0.5-s42", seed=42, sliding=1.50, **soft)
    write_run(root, "soft-a0.5-s2024", seed=2024, sliding=1.48, **soft)
    write_run(root, "hard-self-a0.1", "distill.py", sliding=1.40, total=16_000_001, distill_target="hard",
              distill_alpha=0.1, logit_cache="runs/x/cache-self", teacher_path="runs/x/teacher-self/teacher-self.pt")
    write_run(root, "soft-a0.1", "distill.py", distill_alpha=0.1, finished=False, **BIG)
    write_run(root, "baseline-long", wall=105.0, steps=400, train_ms=40_000.0, sliding=1.30)
    write_run(root, "teacher-big", "train_teacher.py", sliding=1.2, num_layers=4, model_dim=256)
    os.makedirs(os.path.join(root, "cache-big"))  # folders without a metrics file are not runs
    return root


def test_rows_overhead_delta_and_cap(study):
    runs = load_study(study)
    rows = {w["arm"]: w for w in arm_rows(runs)}
    assert "teacher-big" not in rows and "cache-big" not in rows
    soft = rows["soft-a0.5"]
    assert (soft["teacher"], soft["mode"], soft["alpha"], soft["temp"], soft["tail"]) == ("big", "soft", 0.5, 2.0, "renorm")
    assert soft["baseline"] == "baseline" and soft["step_ms"] == pytest.approx(110.0)
    assert soft["overhead_pct"] == pytest.approx(10.0)
    assert soft["delta_sliding_val_bpb"] == pytest.approx(1.47 - 1.50)
    # each seed replica is compared with the baseline of its own seed
    assert rows["soft-a0.5-s42"]["baseline"] == "baseline-s42"
    assert rows["soft-a0.5-s42"]["delta_sliding_val_bpb"] == pytest.approx(1.50 - 1.52)
    hard = rows["hard-self-a0.1"]
    assert (hard["teacher"], hard["mode"], hard["temp"], hard["over_cap"]) == ("self", "hard", None, True)
    assert rows["baseline"]["overhead_pct"] is None and rows["baseline"]["delta_sliding_val_bpb"] is None
    assert rows["baseline-long"]["baseline"] == "baseline-long"  # the extended run is its own reference
    assert not rows["soft-a0.1"]["done"] and rows["soft-a0.1"]["sliding_val_bpb"] is None
    order = [w["arm"] for w in arm_rows(runs)]
    assert order[0] == "baseline" and order[-1] == "baseline-long"


def test_track_of_each_run(tmp_path):
    """The baseline is record-track; a distillation run is what its "arm" event says; one logged before that
    event existed had a cached or online teacher made outside its budget; a teacher run has no track."""
    root = str(tmp_path / "demo")
    write_run(root, "baseline")
    write_run(root, "inbudget", "distill.py", distill_teacher="online", track="record")
    write_run(root, "cached", "distill.py", track="non-record", **BIG)
    write_run(root, "old-cached", "distill.py", **BIG)
    write_run(root, "teacher-big", "train_teacher.py")
    runs = {r.name: r for r in load_study(root)}
    assert {n: r.track for n, r in runs.items()} == {"baseline": "record", "inbudget": "record", "cached": "non-record",
                                                      "old-cached": "non-record", "teacher-big": None}
    out = subprocess.run([sys.executable, "-m", "golf.results", root], capture_output=True, text=True, env=repo_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    md = open(os.path.join(root, "RESULTS.md")).read()
    arms_table = md.split("## Arms")[1].split("\n## ")[0]
    cost = {line.split(" | ")[0][2:]: line.split(" | ")[7] for line in arms_table.splitlines() if line.startswith("| ")}
    assert [cost[n] for n in ("baseline", "inbudget", "cached", "old-cached")] == ["–", "in budget", "outside", "outside"]
    with open(os.path.join(root, "results.csv")) as f:
        assert {r["arm"]: r["track"] for r in csv.DictReader(f)} == {
            "baseline": "record", "inbudget": "record", "cached": "non-record", "old-cached": "non-record"}


def test_in_budget_and_sampled_arms_are_described(tmp_path):
    """The n-gram and EMA teachers, their schedule (DISTILL_UNTIL_OVERTAKEN too), and sampled targets (drawn in the step, or a cache of draws
    by its manifest) read as such in the results table."""
    root = str(tmp_path / "demo")
    cache = tmp_path / "cache-big-n16"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"format": "golf-logit-cache", "k": 16,
                                                     "value_kind": "draw_counts", "shards": []}))
    write_run(root, "ngram3", "distill.py", distill_teacher="ngram", ngram_order=3, track="record")
    write_run(root, "ngram3-memo", "distill.py", distill_teacher="ngram", ngram_order=3, ngram_leave_one_out=False)
    write_run(root, "ema", "distill.py", distill_teacher="ema", distill_start_frac=0.7, distill_ema_decay=0.9)
    write_run(root, "ngram3-over", "distill.py", distill_teacher="ngram", ngram_order=3, distill_until_overtaken=50)
    write_run(root, "online-n8", "distill.py", distill_teacher="online", distill_draws=8,
              teacher_path="runs/x/teacher-big/teacher-big.pt")
    write_run(root, "sampled", "distill.py", distill_teacher="cache", logit_cache=str(cache),
              teacher_path="runs/x/teacher-big/teacher-big.pt")
    got = {r.name: describe(r) for r in load_study(root)}
    assert [(d["teacher"], d["mode"], d["tail"]) for d in (got["ngram3"], got["ngram3-memo"], got["ema"],
                                                          got["online-n8"], got["sampled"])] == [
        ("ngram3", "ngram", "full"), ("ngram3-memorised", "ngram", "full"), ("student-ema:0.9", "ema 0.7-1", "full"),
        ("big", "online", "sampled n8"), ("big-n16", "soft", "sampled n16")]
    assert got["ngram3-over"]["mode"] == "ngram until overtaken 50"  # DISTILL_UNTIL_OVERTAKEN tells arms apart


def test_scores_join_the_teachers_table(study):
    """A <folder>/score.json (eval_bpb.py --out) is listed with the teachers and makes its folder done."""
    os.makedirs(os.path.join(study, "score-ngram3"))
    with open(os.path.join(study, "score-ngram3", "score.json"), "w") as f:
        json.dump({"path": "ngram:3", "weights": "ngram:3", "val_loss": 3.7, "val_bpb": 2.2345, "sliding_val_loss": 3.6,
                   "sliding_val_bpb": 2.2101}, f)
    assert is_done(os.path.join(study, "score-ngram3"))
    assert not is_done(os.path.join(study, "soft-a0.1"))
    out = subprocess.run([sys.executable, "-m", "golf.results", study], capture_output=True, text=True, env=repo_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    md = open(os.path.join(study, "RESULTS.md")).read()
    assert "| score-ngram3 | ngram:3 | – | – | 2.2345 | 2.2101 | – |" in md.split("## Teachers")[1]


def test_cache_bytes_per_token(tmp_path):
    """Row files of every shard over the cached positions; markers, manifest and other files not counted; an
    incomplete cache has no figure."""
    cache = tmp_path / "cache-big"
    cache.mkdir()
    shards = [{"name": "d_000000.bin", "num_tokens": 100, "complete": True},
              {"name": "d_000001.bin", "num_tokens": 60, "complete": True}]
    for stem, sizes in (("d_000000", (700, 300)), ("d_000001", (420, 180))):
        for ext, n in zip((".vals.npy", ".offsets.npy"), sizes):
            (cache / (stem + ext)).write_bytes(b"x" * n)
        (cache / (stem + ".done")).write_bytes(b"x" * 999)
    (cache / "console.txt").write_text("x" * 5000)
    (cache / "manifest.json").write_text(json.dumps({"format": "golf-logit-cache", "shards": shards}))
    assert cache_bytes_per_token(str(cache)) == pytest.approx((700 + 300 + 420 + 180) / 160)
    shards[1]["complete"] = False
    (cache / "manifest.json").write_text(json.dumps({"format": "golf-logit-cache", "shards": shards}))
    assert cache_bytes_per_token(str(cache)) is None


def test_metrics_of_older_versions_read_the_study_variables(tmp_path):
    """Metrics files written before DISTILL_TEACHER / DISTILL_TARGET hold the study's DISTILL_CACHED / DISTILL_SOFT:
    their arms are described as before."""
    root = str(tmp_path / "old")
    for name, cached, soft in (("online-a0.5", False, True), ("hard-big", True, False), ("soft-big", True, True)):
        write_run(root, name, "distill.py", distill_alpha=0.5, **BIG)
        path = os.path.join(root, name, name + ".jsonl")
        with open(path) as f:
            events = [json.loads(line) for line in f]
        c = events[0]["config"]
        del c["distill_teacher"], c["distill_target"]
        c.update(distill_cached=cached, distill_soft=soft)
        with open(path, "w") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events))
    rows = {w["arm"]: w for w in arm_rows(load_study(root))}
    assert (rows["online-a0.5"]["mode"], rows["online-a0.5"]["teacher"], rows["online-a0.5"]["tail"]) == ("online", "big", "–")
    assert (rows["hard-big"]["mode"], rows["hard-big"]["temp"]) == ("hard", None)
    assert (rows["soft-big"]["mode"], rows["soft-big"]["tail"], rows["soft-big"]["temp"]) == ("soft", "renorm", 2.0)


def test_seed_groups_and_paired_test(study):
    runs = load_study(study)
    groups = {group_name(g): [r.seed for r in g] for g in seed_groups(runs)}
    assert groups == {"baseline": [42, 1337, 2024], "soft-a0.5": [42, 1337, 2024]}
    (pair,) = paired_comparisons(seed_groups(runs))
    assert (pair["arm"], pair["baseline"], pair["seeds"]) == ("soft-a0.5", "baseline", [42, 1337, 2024])
    # per-seed differences (seed 42, 1337, 2024): -0.02, -0.03, -0.01 -> mean -0.02, std 0.01, t = -2 sqrt 3
    assert pair["diffs"] == pytest.approx([-0.02, -0.03, -0.01])
    assert (pair["mean"], pair["std"]) == (pytest.approx(-0.02), pytest.approx(0.01))
    assert pair["t"] == pytest.approx(-2 * math.sqrt(3))
    assert pair["p"] == pytest.approx(1 - math.sqrt(6 / 7))


SEEDS3 = (1337, 42, 2024)


@pytest.fixture
def two_clock_study(tmp_path):
    """run.sh's study layout: the teacher and its cache in runs/demo, the arms in runs/study, each arm under a 20 s
    wall clock and at 120 steps at three seeds, compute-matched baselines of 420 s and 500 s."""
    shared, root = str(tmp_path / "runs" / "demo"), str(tmp_path / "runs" / "study")
    write_run(shared, "teacher-big", "train_teacher.py", wall=0.0, steps=560, train_ms=400_000.0, sliding=2.0,
              **{k: PRESETS["demo-teacher"][k] for k in ("num_layers", "model_dim", "iterations")})
    cache = os.path.join(shared, "cache-big")
    os.makedirs(cache)
    with open(os.path.join(cache, "manifest.json"), "w") as f:
        json.dump({"format": "golf-logit-cache", "version": 1, "k": 32, "vocab_size": 1024, "encoding": "fp16",
                   "teacher": {"sha256": "0" * 64, "config": Config(**PRESETS["demo-teacher"]).to_dict()},
                   "window": 256, "stride": 256, "build_seconds": 30.0,
                   "shards": [{"name": "s0.bin", "num_tokens": 1000, "fingerprint": "x", "complete": True}]}, f)
    soft = dict(distill_teacher="cache", distill_target="soft", distill_temp=2.0, distill_alpha=0.5,
                logit_cache=cache, teacher_path=os.path.join(shared, "teacher-big", "teacher-big.pt"))
    ngram = dict(distill_teacher="ngram", distill_target="soft", distill_temp=2.0, distill_alpha=0.5)
    wall, steps = dict(wall=20.0, steps=125, train_ms=20_000.0), dict(wall=0.0, iterations=120, steps=120)
    for i, seed in enumerate(SEEDS3):
        e = (0.01, -0.01, 0.0)[i]  # seed noise shared by every arm of a seed: the pairing removes it
        write_run(root, f"baseline-wall-s{seed}", seed=seed, sliding=2.50 + e, **wall)
        write_run(root, f"baseline-steps-s{seed}", seed=seed, sliding=2.48 + e, train_ms=19_000.0, **steps)
        write_run(root, f"soft-wall-s{seed}", "distill.py", seed=seed, sliding=2.45 + e + (0.0, -0.01, 0.0)[i],
                  **wall, **soft)
        write_run(root, f"soft-steps-s{seed}", "distill.py", seed=seed, sliding=2.38 + e + (0.0, -0.02, -0.01)[i],
                  train_ms=24_700.0, **steps, **soft)
        write_run(root, f"ngram3-wall-s{seed}", "distill.py", seed=seed, sliding=2.50 + e + (0.01, -0.01, 0.002)[i],
                  **wall, **ngram)
        write_run(root, f"baseline-cm-s{seed}", seed=seed, wall=420.0, steps=2500, train_ms=420_000.0,
                  sliding=2.15 + e)
    for seed in SEEDS3[:2]:  # more than any arm spent: never its compute-matched baseline
        write_run(root, f"baseline-xl-s{seed}", seed=seed, wall=500.0, steps=3000, train_ms=500_000.0, sliding=2.1)
    return root


def test_study_deltas_at_equal_steps_wall_clock_and_total_compute(two_clock_study):
    runs = load_study(two_clock_study)
    study = {e["arm"]: e for e in study_comparisons(runs, seed_groups(runs))}
    assert set(study) == {"soft", "ngram3-wall-s1337"}  # one row per arm; the ngram arm has only one clock
    soft = study["soft"]
    assert soft["steps"]["seeds"] == [42, 1337, 2024]
    assert soft["steps"]["diffs"] == pytest.approx([-0.12, -0.10, -0.11])
    assert soft["wall"]["diffs"] == pytest.approx([-0.06, -0.05, -0.05])
    assert soft["overhead_pct"] == pytest.approx(100 * (24_700 / 19_000 - 1))  # at equal steps
    # teacher 400 s + cache 30 s + its own 20 s: the 420 s baseline is the longest not above 450
    assert soft["cost"]["teacher_train_s"] == 400.0 and soft["cost"]["total_s"] == pytest.approx(450.0)
    assert soft["cost_known"]
    assert soft["compute_baseline"] == {"name": "baseline-cm-s1337", "budget_s": 420.0, "same_as_wall": False}
    assert soft["compute"]["diffs"] == pytest.approx([0.29, 0.30, 0.30])
    # an in-budget teacher's total is its own run: compute-matched means the wall-clock baseline
    ng = study["ngram3-wall-s1337"]
    assert ng["compute_baseline"]["same_as_wall"] and ng["compute"]["diffs"] == pytest.approx(ng["wall"]["diffs"])
    assert "steps" not in ng


def test_study_results_file_and_plot(two_clock_study):
    results.write_results(two_clock_study)
    with open(os.path.join(two_clock_study, "RESULTS.md")) as f:
        text = f.read()
    assert "## The study: Δ per arm at equal steps, equal wall clock and equal total compute" in text
    row = next(line for line in text.splitlines() if line.startswith("| soft |"))
    assert "vs baseline-cm-s1337 (420 s)" in row and "400 + 30 + 20.0 = 450" in row
    assert "| teacher-big | 4 x 256 | 560 |" in text  # the shared teacher, outside the study folder
    assert os.path.isfile(os.path.join(two_clock_study, "delta_per_arm.png"))


def test_main_budget_prefers_the_wall_clock_on_a_tie(two_clock_study):
    runs = load_study(two_clock_study)
    assert main_budget([r for r in runs if r.budget in ((20.0, 0), (0.0, 120))]) == (20.0, 0)


def test_arms_differing_only_in_their_cache_are_contrasted(tmp_path):
    root = str(tmp_path)
    for seed, (a, b) in zip(SEEDS3, ((1.40, 1.45), (1.42, 1.46), (1.41, 1.44))):
        write_run(root, f"whole-s{seed}", "distill.py", seed=seed, sliding=a, **BIG)
        write_run(root, f"half-s{seed}", "distill.py", seed=seed, sliding=b, **{**BIG, "logit_cache": "runs/x/cache-half"})
        write_run(root, f"bucket-s{seed}", "distill.py", seed=seed, sliding=b, distill_tail="bucket", **BIG)
    (c,) = cache_contrasts(seed_groups(load_study(root)))
    assert {c["cache_a"], c["cache_b"]} == {"runs/x/cache-big", "runs/x/cache-half"}  # not the bucket arm
    sign = 1 if c["cache_a"] == "runs/x/cache-big" else -1
    assert c["diffs"] == pytest.approx([sign * d for d in (-0.04, -0.05, -0.03)])  # seeds 42, 1337, 2024


def test_best_arm_skips_over_cap_extended_and_unfinished(study):
    # hard-self-a0.1 (1.40) is over the cap, baseline-long (1.30) has another budget, soft-a0.1 is unfinished
    assert best_arm(load_study(study)).name == "soft-a0.5"
    out = subprocess.run([sys.executable, "-m", "golf.results", "--best", study], capture_output=True, text=True,
                         env=repo_env())
    assert out.returncode == 0 and out.stdout.strip() == "soft-a0.5", out.stderr


def test_write_results_files(study):
    out = subprocess.run([sys.executable, "-m", "golf.results", study], capture_output=True, text=True, env=repo_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    md = open(os.path.join(study, "RESULTS.md")).read()
    assert ("| soft-a0.5 | big | soft | 0.5 | 2 | renorm | – | outside | 1337 | 30 s | 100 | 110.0 | +10.0% | 1.4900 | 1.4700 "
            "| -0.0300 |") in md
    assert "| 16,000,001 | OVER |" in md
    assert "| baseline | 42, 1337, 2024 | 1.5033 ± 0.0153 |" in md  # sd of 1.52, 1.50, 1.49
    assert "| soft-a0.5 | baseline | 42, 1337, 2024 | -0.0200, -0.0300, -0.0100 | -0.0200 ± 0.0100 | -3.46 | 0.0742 |" in md
    assert "soft-a0.1: no final score" in md and "## Teachers" in md
    with open(os.path.join(study, "results.csv")) as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert float(rows["soft-a0.5"]["overhead_pct"]) == pytest.approx(10.0)
    assert rows["hard-self-a0.1"]["over_cap"] == "True" and rows["soft-a0.1"]["done"] == "False"
    for png in ("val_bpb_vs_step.png", "val_bpb_vs_time.png", "alpha_sweep.png", "step_time.png"):
        with open(os.path.join(study, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
        assert f"![{png}]({png})" in md


# ----------------------------------------------------------------------------------------------------------
# Skip / resume: what run.sh asks before each step


def _is_done_cli(folder) -> int:
    return subprocess.run([sys.executable, "-m", "golf.results", "--is-done", folder], env=repo_env()).returncode


def test_is_done_finished_unfinished_and_missing(tmp_path):
    root = str(tmp_path)
    write_run(root, "done")
    write_run(root, "half", finished=False)
    assert is_done(os.path.join(root, "done")) and _is_done_cli(os.path.join(root, "done")) == 0
    assert not is_done(os.path.join(root, "half")) and _is_done_cli(os.path.join(root, "half")) == 1
    assert not is_done(os.path.join(root, "never-started"))
    # killed while writing its last line: the final score never made it, so the run is redone
    path = os.path.join(root, "done", "done.jsonl")
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[: text.rindex('{"event": "artifact"') + 30])
    assert not is_done(os.path.join(root, "done"))


def test_is_done_cache_manifest(tmp_path):
    cache = tmp_path / "cache-big"
    cache.mkdir()
    shards = [{"name": "a.bin", "complete": True}, {"name": "b.bin", "complete": False}]
    (cache / "manifest.json").write_text(json.dumps({"shards": shards}))
    assert not is_done(str(cache))
    shards[1]["complete"] = True
    (cache / "manifest.json").write_text(json.dumps({"shards": shards}))
    assert is_done(str(cache))
    (cache / "manifest.json").write_text('{"shards": [')  # torn write
    assert not is_done(str(cache))
