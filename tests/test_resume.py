"""Resume and determinism: a teacher run killed (SIGKILL) past a checkpoint and continued with --resume follows
the uninterrupted run's loss trajectory exactly and ends with the same weights; two same-seed student runs give
the same loss curve and byte-identical artifacts.

Run: python -m pytest tests/test_resume.py -q
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from golf.checkpoint import load_checkpoint
from helpers import REPO, dataset_env, run_script, side_by_side

ITERATIONS = 60


def _env(ds) -> dict:
    return {**dataset_env(ds), "PRESET": "test", "RUN_ID": "run", "ITERATIONS": ITERATIONS, "CHECKPOINT_EVERY": 10,
            "VAL_LOSS_EVERY": 0, "TRAIN_LOG_EVERY": 1, "SEED": 5,
            # warm-down over the whole run; late QAT from step 20 on, so the checkpoint resumed from has it on
            "WARMDOWN_ITERS": ITERATIONS, "QAT_THRESHOLD": 0.7}


def _train_lines(text: str) -> dict:
    """{step: 'step:N/M train_loss:... ce:...'} without the timing fields, and "qat": the late-QAT lines."""
    out = {int(m.group(1)): m.group(0) for m in re.finditer(r"^step:(\d+)/\d+ train_loss:.*?(?= train_time)", text, re.M)}
    qat = re.findall(r"^late_qat:enabled step:\d+", text, re.M)
    return out | {"qat": qat}


def _kill_after_checkpoint(env: dict, cwd: str, step: int) -> str:
    """Start train_teacher.py, SIGKILL it as soon as it logs `step` (its checkpoint at step - 1 is written by
    then); returns its log."""
    log, console = Path(cwd, "logs", "run.txt"), Path(cwd, "console.txt")
    with open(console, "w") as out:  # a file, not a pipe: nobody reads a pipe while we poll
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train_teacher.py")], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1",
                                                               **{k: str(v) for k, v in env.items()}})
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and re.search(rf"^step:{step}/", log.read_text(), re.M):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-run (rc {proc.returncode}): {console.read_text()[-2000:]}"
    return log.read_text()


@pytest.mark.slow
def test_killed_teacher_resumes_on_the_same_trajectory(tiny_dataset, tmp_path):
    env = _env(tiny_dataset)
    (tmp_path / "full").mkdir()
    (tmp_path / "killed").mkdir()
    full, killed = side_by_side(lambda: run_script(["train_teacher.py"], env, cwd=str(tmp_path / "full")),
                                lambda: _kill_after_checkpoint(env, str(tmp_path / "killed"), 21))
    assert full.returncode == 0, full.stderr[-3000:]
    ref = _train_lines(full.stdout)
    assert len(ref) == ITERATIONS + 1 and ref["qat"] == ["late_qat:enabled step:20"], full.stdout[-2000:]

    ckdir = tmp_path / "killed" / "checkpoints"
    assert not (ckdir / "run.pt").exists()  # it really died before the end
    saved = load_checkpoint(str(ckdir / "run.resume.pt"))["step"]
    assert 20 <= saved < ITERATIONS - 10 and saved % 10 == 0
    before = _train_lines(killed)
    assert all(before[s] == ref[s] for s in range(1, saved + 1)) and before["qat"] == ref["qat"]

    resumed = run_script(["train_teacher.py", "--resume"], env, cwd=str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume:step:{saved} " in resumed.stdout
    after = _train_lines(resumed.stdout)
    assert sorted(k for k in after if k != "qat") == list(range(saved + 1, ITERATIONS + 1))
    for s in range(saved + 1, ITERATIONS + 1):
        assert after[s] == ref[s], (s, after[s], ref[s])
    assert after["qat"] == []  # restored on, not switched on again

    a, b = load_checkpoint(str(tmp_path / "full" / "checkpoints" / "run.pt")), load_checkpoint(str(ckdir / "run.pt"))
    assert a["step"] == b["step"] == ITERATIONS
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert (tmp_path / "full" / "checkpoints" / "run.int6.ptz").read_bytes() == (ckdir / "run.int6.ptz").read_bytes()


@pytest.mark.slow
def test_same_seed_same_curve_and_artifact(tiny_dataset, tmp_path):
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "s", "TRAIN_LOG_EVERY": 1}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    runs = side_by_side(*[lambda name=name: run_script(["train_gpt.py"], env, cwd=str(tmp_path / name))
                          for name in ("a", "b")])
    for out in runs:
        assert out.returncode == 0, out.stderr[-3000:]
    outs = [out.stdout for out in runs]
    curves = [_train_lines(o) for o in outs]
    assert len(curves[0]) == 21 and curves[0] == curves[1]
    finals = [re.findall(r"^final_int6_\w+_exact .*$", o, re.M) for o in outs]
    assert len(finals[0]) == 2 and finals[0] == finals[1]
    art = [(tmp_path / name / "checkpoints" / "s.int6.ptz").read_bytes() for name in ("a", "b")]
    assert art[0] == art[1]
