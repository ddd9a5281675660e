"""The submission dump (quantize.py --submission, golf/submission.py) and the generated single file
(golf/bundle.py): the folder's contents, its byte counts, and the single train_gpt.py running alone.

    python -m pytest tests/test_submission.py -q
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from golf.bundle import arm_settings, code_bytes, single_file_source
from golf.checkpoint import checkpoint_sha256, save_checkpoint
from golf.submission import _track_text, teacher_cost
from golf.config import PRESETS, Config, resolve_config
from helpers import REPO, dataset_env, run_script, side_by_side


@pytest.mark.parametrize("preset,changes", [
    ("student", {}),
    ("demo-student", {"distill_alpha": 0.1, "distill_target": "hard", "max_wallclock_seconds": 30.0, "seed": 42,
                      "logit_cache": "runs/demo/cache-self"}),
    ("teacher", {"iterations": 50_000, "max_wallclock_seconds": 0.0, "adam_eps": 1e-9}),
])
def test_arm_settings_rebuild_the_config(preset, changes):
    cfg = Config(**{**PRESETS[preset], **changes, "run_id": "x", "log_dir": "somewhere", "checkpoint_path": "a.pt"})
    settings = arm_settings(cfg)
    assert settings["PRESET"] == preset
    # output locations and the seed are the run's, not the arm's
    assert not {"RUN_ID", "LOG_DIR", "CHECKPOINT_PATH", "SEED"} & settings.keys()
    assert len(settings) == 1 + len(changes) - ("seed" in changes)  # exactly the fields that differ from the preset
    rebuilt = resolve_config(None, settings)
    rebuilt.run_id, rebuilt.log_dir, rebuilt.checkpoint_path, rebuilt.seed = "x", "somewhere", "a.pt", cfg.seed
    assert rebuilt == cfg
    src = single_file_source(os.path.join(REPO, "distill.py"), cfg)
    for k, v in settings.items():
        assert f"os.environ.setdefault({k!r}, {v!r})" in src
    assert code_bytes(os.path.join(REPO, "distill.py"), cfg) == len(src.encode())


@pytest.fixture(scope="module")
def dumped(tiny_dataset, tmp_path_factory):
    """Two seeds of a tiny baseline arm laid out as run.sh does (study/<arm>/), and the dump of the first."""
    cwd = tmp_path_factory.mktemp("study")

    def train(name, seed):
        env = {**dataset_env(tiny_dataset), "PRESET": "test", "ITERATIONS": 4, "SEED": seed, "RUN_ID": name,
               "LOG_DIR": f"study/{name}", "CHECKPOINT_PATH": f"study/{name}/{name}.pt"}
        return run_script(["train_gpt.py"], env, cwd=str(cwd))
    for out in side_by_side(lambda: train("arm", 1337), lambda: train("arm-s42", 42)):
        assert out.returncode == 0, out.stderr[-3000:]
    out = run_script(["quantize.py", "study/arm/arm.pt", "--submission", "sub", "--author", "Ada", "--github", "ada"],
                     {}, cwd=str(cwd))
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd, out.stdout


def _events(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_submission_folder(dumped, tiny_dataset):
    cwd, stdout = dumped
    sub = cwd / "sub"
    assert sorted(os.listdir(sub)) == ["README.md", "final_model.int6.ptz", "submission.json", "train_gpt.py",
                                       "train_seed1337.jsonl", "train_seed1337.log", "train_seed42.jsonl",
                                       "train_seed42.log"]
    info = json.loads((sub / "submission.json").read_text())
    events = _events(cwd / "study" / "arm" / "arm.jsonl")
    final = next(e for e in events if e["event"] == "final")
    seed42 = next(e for e in _events(cwd / "study" / "arm-s42" / "arm-s42.jsonl") if e["event"] == "final")
    # the challenge's figures are the means over the submitted seeds
    for key, field in (("val_bpb", "sliding_val_bpb"), ("val_loss", "sliding_val_loss"), ("roundtrip_val_bpb", "val_bpb")):
        assert info[key] == pytest.approx((final[field] + seed42[field]) / 2, rel=1e-12)
    assert (info["author"], info["github_id"], info["arm"], info["hardware"]) == ("Ada", "ada", "arm", "1x CPU")
    assert info["bytes_code"] == os.path.getsize(sub / "train_gpt.py")
    assert info["bytes_model"] == os.path.getsize(sub / "final_model.int6.ptz")
    assert info["bytes_total"] == info["bytes_code"] + info["bytes_model"]
    # the artifact is the one the run scored, byte for byte
    assert (sub / "final_model.int6.ptz").read_bytes() == (cwd / "study" / "arm" / "arm.int6.ptz").read_bytes()
    assert info["artifact_verified"] is True
    assert sorted(info["seed_results"]) == ["1337", "42"]
    assert info["seed_results"]["42"]["val_bpb"] == seed42["sliding_val_bpb"]
    assert info["std_val_bpb"] == pytest.approx(abs(final["sliding_val_bpb"] - seed42["sliding_val_bpb"]) / 2 ** 0.5)
    assert "mean_val_bpb" not in info  # val_bpb is the mean
    assert (sub / "train_seed42.log").read_text() == (cwd / "study" / "arm-s42" / "arm-s42.txt").read_text()
    readme = (sub / "README.md").read_text()
    assert "SEED=42 python train_gpt.py" in readme and f"{info['bytes_total']:,}" in readme
    assert info["track"] == "10min_16mb" and "teacher" not in info and "Record track" in readme
    # What a training run of this arm logs as its code size (export_artifact with the run's config) is this
    # file's size.
    cfg = Config.from_dict(json.loads(json.dumps(events[0]["config"])))
    assert code_bytes(os.path.join(REPO, "train_gpt.py"), cfg) == info["bytes_code"]
    assert f"Code size: {info['bytes_code']} bytes" in stdout
    # every seed's run logged that size too (the seed is not baked into the file), so the challenge's checker
    # finds the json, the file and every log in agreement
    assert f"Code size: {info['bytes_code']} bytes" in (sub / "train_seed42.log").read_text()
    assert "verdict: pass" in stdout, stdout[-3000:]


@pytest.mark.slow
def test_single_file_runs_alone(dumped, tiny_dataset, tmp_path):
    cwd, _ = dumped
    info = json.loads((cwd / "sub" / "submission.json").read_text())
    shutil.copy(cwd / "sub" / "train_gpt.py", tmp_path / "train_gpt.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k not in ("PRESET", "ITERATIONS")}
    probe = subprocess.run([sys.executable, "-c", "import golf"], cwd=tmp_path, env=env, capture_output=True)
    assert probe.returncode != 0, "golf is importable without the repository: this test would prove nothing"
    # the test preset via the environment; ITERATIONS overrides the 4 baked into the file
    env.update(OMP_NUM_THREADS="1", PRESET="test", ITERATIONS="3", **dataset_env(tiny_dataset))
    out = subprocess.run([sys.executable, "train_gpt.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step:3/3 val_loss:" in out.stdout
    assert re.search(r"final_int6_roundtrip_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}", out.stdout)
    assert re.search(r"final_int6_sliding_window_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}", out.stdout)
    assert f"Code size: {info['bytes_code']} bytes" in out.stdout
    assert os.listdir(tmp_path / "checkpoints") and os.listdir(tmp_path / "logs")


def test_teacher_cost_of_a_non_record_arm(tmp_path):
    """submission.json's teacher cost: the teacher checkpoint's training time and the cache manifest's build time;
    "not recorded" where a file lacks them (a cache written before build_seconds existed)."""
    teacher = str(tmp_path / "teacher.pt")
    save_checkpoint(teacher, {"kind": "final", "model": {}, "config": Config().to_dict(), "step": 280, "train_ms": 172_345.0})
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = {"format": "golf-logit-cache", "shards": [], "build_seconds": 61.04}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    cfg = Config(distill_teacher="cache", logit_cache=str(cache), teacher_path=teacher)
    cost = teacher_cost(cfg)
    assert cost == {"teacher_sha256": checkpoint_sha256(teacher), "training_seconds": 172.3, "caching_seconds": 61.0}
    text = _track_text({"track": "non_record_16mb", "teacher": cost})
    assert "Non-record track" in text and "teacher training 172 s" in text and "logit caching 61 s" in text
    del manifest["build_seconds"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert teacher_cost(cfg)["caching_seconds"] is None
    assert "logit caching not recorded" in _track_text({"track": "non_record_16mb", "teacher": teacher_cost(cfg)})
    online = teacher_cost(Config(distill_teacher="online", teacher_path=teacher))
    assert online["training_seconds"] == 172.3 and online["caching_seconds"] is None


# The in-budget teachers: a record-track dump builds its own teacher, so its single file needs only the data.
IN_BUDGET_ARMS = {
    "ngram": {"DISTILL_TEACHER": "ngram", "NGRAM_ORDER": 3, "DISTILL_ALPHA": 0.5, "DISTILL_TEMP": 1},
    "ema": {"DISTILL_TEACHER": "ema", "DISTILL_START_FRAC": 0.5, "DISTILL_ALPHA": 0.5},
}


@pytest.mark.slow
@pytest.mark.parametrize("teacher", sorted(IN_BUDGET_ARMS))
def test_in_budget_arm_dump_reproduces_its_run_alone(teacher, tiny_dataset, tmp_path):
    """A record-track arm's records folder: submission.json says "record", and its single train_gpt.py, copied
    into an empty folder with nothing but the data, trains the arm again: the same loss lines."""
    study = tmp_path / "study"
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "ITERATIONS": 6, "RUN_ID": "arm", "LOG_DIR": "study/arm",
           "CHECKPOINT_PATH": "study/arm/arm.pt", **IN_BUDGET_ARMS[teacher]}
    study.mkdir()
    out = run_script(["distill.py"], env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    trained = [line for line in out.stdout.splitlines() if " train_loss:" in line]
    assert len(trained) == 6
    out = run_script(["quantize.py", "study/arm/arm.pt", "--submission", "sub"], {}, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((tmp_path / "sub" / "submission.json").read_text())
    assert info["track"] == "10min_16mb" and "teacher" not in info
    assert "Record track" in (tmp_path / "sub" / "README.md").read_text()

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "sub" / "train_gpt.py", alone / "train_gpt.py")
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k not in env}
    run_env.update(OMP_NUM_THREADS="1", PRESET="test", **dataset_env(tiny_dataset))  # as the arm ran
    out = subprocess.run([sys.executable, "train_gpt.py"], cwd=alone, env=run_env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    again = [line for line in out.stdout.splitlines() if " train_loss:" in line]

    def losses(lines):  # the step, loss and parts of each line, without its times
        return [re.sub(r" train_time:.*", "", line) for line in lines]
    assert losses(again) == losses(trained)
