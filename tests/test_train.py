"""The training loop: warm-up restore, a 2-process torchrun run, and the end-of-run lines."""
import json
import os
import re

import pytest
import torch

from golf.train import train
from helpers import cpu_ctx, dataset_env, logger, run_inputs, run_script, make_config


def _train(cfg):
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    files, val, luts = run_inputs(cfg)
    return train(cfg, cpu_ctx(), logger(cfg), files, val, luts)


def test_warmup_then_restore_equals_no_warmup(tiny_dataset, tmp_path):
    """After the compile warm-up (QAT graph included) the weights, optimizer state and loader are restored:
    training then follows exactly the run that had no warm-up at all."""
    a = _train(make_config(tiny_dataset, str(tmp_path / "a"), warmup_steps=4, iterations=6))
    b = _train(make_config(tiny_dataset, str(tmp_path / "b"), warmup_steps=0, iterations=6))
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    # and the warm-up is not a no-op: a run that skips the restore would differ
    assert a.step == b.step == 6


@pytest.mark.slow
def test_train_gpt_two_processes(tiny_dataset, tmp_path):
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "ddp", "ITERATIONS": 400,
           "MAX_WALLCLOCK_SECONDS": 2, "MICRO_BATCHES": 2, "TRAIN_BATCH_TOKENS": 1024}
    out = run_script(["train_gpt.py"], env, cwd=str(tmp_path), nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    stops = sorted(re.findall(r"rank:(\d) stopped_at_step:(\d+)", out.stdout))
    assert [r for r, _ in stops] == ["0", "1"] and stops[0][1] == stops[1][1], out.stdout[-2000:]
    assert "stopping_early: wallclock_cap" in out.stdout
    assert re.search(r"final_int6_roundtrip_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}", out.stdout)
    assert re.search(r"final_int6_sliding_window_exact val_loss:\S+ val_bpb:\S+", out.stdout)
    assert re.search(r"Total submission size int6\+\w+: \d+ bytes", out.stdout)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ddp.int6.ptz", "ddp.pt", "ddp.pt.sha256"]
    assert (tmp_path / "logs" / "ddp.txt").exists() and (tmp_path / "logs" / "ddp.jsonl").exists()


@pytest.mark.slow
def test_eval_bpb_reproduces_the_final_lines(tiny_dataset, tmp_path):
    """eval_bpb.py on the artifact gives exactly the scores the training run printed for it."""
    env = {**dataset_env(tiny_dataset), "PRESET": "test", "RUN_ID": "e", "ITERATIONS": 5, "WARMUP_STEPS": 0}
    out = run_script(["train_gpt.py"], env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    rt = re.search(r"final_int6_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)", out.stdout).groups()
    sw = re.search(r"final_int6_sliding_window_exact val_loss:(\S+) val_bpb:(\S+)", out.stdout).groups()
    ev = run_script(["eval_bpb.py", "checkpoints/e.int6.ptz", "--json"], {**env}, cwd=str(tmp_path))
    assert ev.returncode == 0, ev.stderr[-2000:]
    res = json.loads(ev.stdout.strip().splitlines()[-1])
    assert res["weights"] == "int6"
    assert abs(res["val_bpb"] - float(rt[1])) < 1e-7 and abs(res["sliding_val_bpb"] - float(sw[1])) < 1e-7
