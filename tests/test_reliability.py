"""Bad input and failed writes: every script refuses bad input with one clear line, and no write leaves a file
half-written or overwritten.

The matrix runs each case on its own copy of a small workspace (the tiny dataset, a teacher and its logit cache,
a student checkpoint and artifact, the files of an earlier run with RUN_ID=r) that one setup function damages.
Each case must exit 2 with `error: ...` naming the file or variable as the last line of stderr and no
traceback, leave every file that existed byte-identical, and create nothing but the files it is allowed to
(no `.*.tmp` temp file). Most cases run the script's __main__ in this process (importing torch once); the
cases marked `own_process` run as real processes, in the background while the others run, and prove the same
of the actual command line: exit status, stderr, and the traceback that DEBUG=1 shows. A full disk is
simulated by a fake `shutil.disk_usage` or an `os.fsync` failing with ENOSPC (in a subprocess, through a
`sitecustomize` shim on its PYTHONPATH).

Then: a non-finite loss names the right checkpoint, and each atomic writer, failing between the write and the
rename, leaves the previous file and no temp file.

Run: python -m pytest tests/test_reliability.py -q
"""
import contextlib
import errno
import fnmatch
import hashlib
import io
import os
import re
import runpy
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from golf.atomic import atomic_write_text
from golf.cache import CacheReader, CacheSpec, CacheWriter
from golf.checkpoint import checkpoint_sha256, load_checkpoint, save_checkpoint
from golf.config import PRESETS, Config
from golf.data import DistributedTokenLoader
from golf.errors import GolfError
from golf.losses import cross_entropy
from golf.model import GPT
from golf.quant import quantize_state_dict, read_artifact, write_artifact
from golf.shards import HEADER_BYTES, load_shard, write_shard
from golf.tokenizer import file_sha256
from golf.train import train
from helpers import REPO, cpu_ctx, logger, make_config, run_inputs

DATA = "data/datasets/tiny_sp1024"  # relative: every case runs in its own copy of the workspace
TOK = "data/tokenizers/tiny_1024_bpe.model"
K = 8
WORKERS = 2  # subprocess cases at a time, beside the in-process ones
COMMON_ENV = {"PRESET": "test", "RUN_ID": "r", "DATA_PATH": DATA, "TOKENIZER_PATH": TOK, "ITERATIONS": 2,
              "WARMUP_STEPS": 0, "VAL_MAX_TOKENS": 512, "DEBUG": "0"}

# Fakes for the subprocesses, switched on by environment variables (Python imports sitecustomize at start-up).
SHIM = '''import os
if os.environ.get("GOLF_TEST_FREE_BYTES"):
    import shutil
    _free, _real = int(os.environ["GOLF_TEST_FREE_BYTES"]), shutil.disk_usage
    def _disk_usage(path):
        u = _real(path)
        return type(u)(u.total, u.total - _free, _free)
    shutil.disk_usage = _disk_usage
if os.environ.get("GOLF_TEST_FSYNC_ENOSPC"):
    def _fsync(fd):
        raise OSError(28, os.strerror(28))
    os.fsync = _fsync
if os.environ.get("GOLF_TEST_STALL"):  # module.function: says STALLED and waits there (to be interrupted)
    import importlib, time
    _mod, _fn = os.environ["GOLF_TEST_STALL"].rsplit(".", 1)
    def _stall(*a, **k):
        print("STALLED", flush=True)
        time.sleep(300)
    setattr(importlib.import_module(_mod), _fn, _stall)
'''


def student_config(**overrides) -> Config:
    return Config(**{**PRESETS["test"], "data_path": DATA, "tokenizer_path": TOK, **overrides})


def save_model(path: Path, cfg: Config, seed: int, **meta):
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():  # the init zeroes some projections; noise makes every weight (and the sha) differ
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_checkpoint(str(path), {"config": cfg.to_dict(), "model": model.state_dict(), "kind": "final", "step": 0,
                                **meta})
    return model


# ----------------------------------------------------------------------------------------------------------
# The workspace every case copies


@pytest.fixture(scope="module")
def base(tiny_dataset, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("workspace")
    shutil.copytree(tiny_dataset.root, ws / "data")
    assert (ws / DATA).is_dir() and (ws / TOK).is_file()
    tok_sha = file_sha256(ws / TOK)
    cfg = student_config()
    train_files = sorted(str(p) for p in (ws / DATA).glob("*_train_*.bin"))

    # teachers: the cache's, another one, and one of another vocabulary
    save_model(ws / "teacher.pt", cfg, 1, tokenizer_sha256=tok_sha, role="teacher")
    save_model(ws / "teacher2.pt", cfg, 2, tokenizer_sha256=tok_sha, role="teacher")
    save_model(ws / "teacher_v2048.pt", student_config(vocab_size=2048), 3, tokenizer_sha256=tok_sha, role="teacher")
    # a complete logit cache of teacher.pt, exactly as `cache_logits.py --teacher teacher.pt --k 8` would make it
    spec = CacheSpec(k=K, vocab_size=1024, encoding="fp16", teacher_sha256=checkpoint_sha256(str(ws / "teacher.pt")),
                     teacher_config=cfg.to_dict(), window=cfg.train_seq_len, stride=cfg.train_seq_len)
    writer = CacheWriter(str(ws / "cache"), train_files, spec)
    for i, path in enumerate(train_files):
        tokens = np.asarray(load_shard(path)).astype(np.int64)
        idx = (tokens[:, None] + 97 * np.arange(K)[None, :]) % 1024
        writer.write_shard(i, idx, np.broadcast_to(-np.arange(1, K + 1, dtype=np.float32), idx.shape))
    assert writer.finalize() == []
    # a sampled cache of teacher.pt: 8 draws at T = 1.5, 5 of the token itself and 3 of the next id
    spec = CacheSpec(k=8, vocab_size=1024, encoding="sampled", teacher_sha256=spec.teacher_sha256,
                     teacher_config=cfg.to_dict(), window=cfg.train_seq_len, stride=cfg.train_seq_len, temperature=1.5)
    writer = CacheWriter(str(ws / "scache"), train_files, spec)
    for i, path in enumerate(train_files):
        tokens = np.asarray(load_shard(path)).astype(np.int64)
        ids, counts = np.zeros((len(tokens), 8), np.int64), np.zeros((len(tokens), 8), np.int64)
        ids[:, 0], ids[:, 1], counts[:, 0], counts[:, 1] = tokens, (tokens + 1) % 1024, 5, 3
        writer.write_shard(i, ids, counts)
    assert writer.finalize() == []

    # an earlier run with RUN_ID=r: its log, checkpoint and artifact must survive every refused rerun
    (ws / "logs").mkdir()
    (ws / "logs" / "r.txt").write_text("step:20/20 val_loss:6.0 val_bpb:3.0 (the earlier run)\n")
    (ws / "logs" / "r.jsonl").write_text('{"event": "final"}\n')
    student = save_model(ws / "checkpoints" / "r.pt", student_config(run_id="r"), 4, tokenizer_sha256=tok_sha)
    write_artifact(ws / "checkpoints" / "r.int6.ptz", quantize_state_dict(student.state_dict()))
    # checkpoints of other configurations
    save_model(ws / "other.pt", student_config(model_dim=128), 5, tokenizer_sha256=tok_sha)
    mismatch = GPT(cfg).state_dict()
    save_checkpoint(str(ws / "mismatch.pt"), {"config": student_config(num_layers=3).to_dict(), "model": mismatch,
                                              "kind": "final", "tokenizer_sha256": tok_sha})
    return ws


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shim")
    (folder / "sitecustomize.py").write_text(SHIM)
    return str(folder)


# ----------------------------------------------------------------------------------------------------------
# Damage


def shard(ws: Path, split: str, i: int) -> Path:
    return ws / DATA / f"tiny_{split}_{i:06d}.bin"


def set_header(path: Path, field: int, value: int):
    header = np.fromfile(path, dtype="<i4", count=3)
    header[field] = value
    with open(path, "r+b") as f:
        f.write(header.tobytes())


def set_token(path: Path, pos: int, value: int):
    with open(path, "r+b") as f:
        f.seek(HEADER_BYTES + 2 * pos)
        f.write(np.array([value], dtype="<u2").tobytes())


def truncate(path: Path, drop: int):
    os.truncate(path, path.stat().st_size - drop)


def remove_train_shards(ws: Path):
    for p in (ws / DATA).glob("*_train_*.bin"):
        p.unlink()


def craft_resume(ws: Path):
    """A resumable checkpoint of run r, written by a 2-layer configuration."""
    cfg = student_config(run_id="r", checkpoint_path="checkpoints/r.pt", checkpoint_every=10)
    save_checkpoint(str(ws / "checkpoints" / "r.resume.pt"), {
        "config": cfg.to_dict(), "kind": "resume", "model": GPT(cfg).state_dict(), "step": 10,
        "tokenizer_sha256": file_sha256(ws / TOK)})


def damaged_copy(src: str, dst: str, drop: int):
    def setup(ws: Path):
        shutil.copy(ws / src, ws / dst)
        truncate(ws / dst, drop)
    return setup


def change_train_shard(ws: Path):
    path = shard(ws, "train", 1)
    write_shard(path, np.asarray(load_shard(path))[::-1].copy())  # same length, other tokens


def shift_block_offset(ws: Path):
    """Block 0 of a sampled shard one entry longer and block 1 one shorter: every file keeps its size."""
    offsets = np.load(ws / "scache" / "tiny_train_000000.offsets.npy", mmap_mode="r+")
    assert len(offsets) > 2
    offsets[1] += 1
    offsets.flush()


class PickledCode:
    """What a malicious checkpoint carries: unpickling it calls open(name, "w"), creating the file `name`."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return (open, (self.name, "w"))


def malicious_checkpoint(src: str, dst: str, created: str = "PWNED"):
    """A copy of checkpoint `src` (a loadable model and config) that also carries pickled code creating `created`."""
    def setup(ws: Path):
        ckpt = torch.load(ws / src, weights_only=True)
        torch.save({**ckpt, "extra": PickledCode(created)}, ws / dst)
    return setup


def write_text(rel: str, text: str):
    return lambda ws: (ws / rel).write_text(text)


def make_demo_data(ws: Path):
    """What `prepare_data.py --demo` leaves in data/ (here the tiny dataset under the demo names)."""
    shutil.copytree(ws / DATA, ws / "data/datasets/demo_sp1024")
    shutil.copy(ws / TOK, ws / "data/tokenizers/demo_1024_bpe.model")


def lacks(*texts):
    """A check that the error line does not send the user the wrong way."""
    def check(ws: Path, stdout: str, line: str):
        for text in texts:
            assert text not in line, (text, line)
    return check


# ----------------------------------------------------------------------------------------------------------
# The matrix


def case(script, *args, env=None, setup=None, names=(), allow_new=(), check=None, rc=2, marks=(), own_process=False,
         free_bytes=None, fsync_enospc=False):
    """One bad-input case: `script args` run with `env` (a None value unsets it) after `setup(ws)`; `names` must all
    appear in the error line; `allow_new` globs name the only files it may create; `check(ws, stdout, error_line)` checks more.
    `own_process`: run as a subprocess (else in this one); `free_bytes`: the disk has only that much free;
    `fsync_enospc`: every fsync fails with "no space left on device"."""
    return types.SimpleNamespace(args=[script, *args], env=env or {}, setup=setup, names=names, allow_new=allow_new,
                                 check=check, rc=rc, marks=marks, own_process=own_process, free_bytes=free_bytes,
                                 fsync_enospc=fsync_enospc)


def check_nonfinite(ws: Path, stdout: str, line: str):
    """The step of the first non-finite loss, the checkpoint to go back to (documented rule: the checkpoint of
    step s - 1 holds the weights that produced it), no final checkpoint, and no training past that step."""
    step = int(re.search(r"non-finite training loss at step (\d+)", line)[1])
    saved = (step - 1) // 2 * 2  # CHECKPOINT_EVERY=2
    assert saved >= 2, line  # the run got far enough to have written a checkpoint
    ckpt = load_checkpoint(str(ws / "checkpoints" / "nf.resume.pt"))
    assert ckpt["step"] == saved, (ckpt["step"], line)
    if saved == step - 1:
        assert f"checkpoints/nf.resume.pt (step {saved}) holds the weights that gave it" in line
    else:
        assert f"last good checkpoint: checkpoints/nf.resume.pt (step {saved})" in line
        assert all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())
    losses = {int(s): float(v) for s, v in re.findall(r"^step:(\d+)/\d+ train_loss:(\S+)", stdout, re.M)}
    assert sorted(losses) == list(range(1, step)) and all(np.isfinite(list(losses.values()))), stdout[-2000:]
    assert not (ws / "checkpoints" / "nf.pt").exists() and not (ws / "checkpoints" / "nf.int6.ptz").exists()


CASES = {
    # --- configuration
    "unknown_preset": case("train_gpt.py", env={"PRESET": "nope"}, names=("PRESET", "'nope'", "demo-student"),
                           own_process=True),
    "unknown_preset_flag": case("eval_bpb.py", "checkpoints/r.pt", "--preset", "nope", names=("--preset", "'nope'")),
    "env_wrong_type": case("distill.py", env={"ITERATIONS": "ten"}, names=("ITERATIONS='ten'", "int")),
    "env_wrong_bool": case("train_teacher.py", env={"EMA_ENABLED": "maybe"}, names=("EMA_ENABLED='maybe'", "bool")),
    # --- data
    "missing_data_dir": case("train_gpt.py", env={"DATA_PATH": "nope"}, names=("nope", "DATA_PATH")),
    "missing_data_dir_eval": case("eval_bpb.py", "checkpoints/r.pt", env={"DATA_PATH": "nope"}, names=("nope", "DATA_PATH")),
    "missing_data_dir_check": case("prepare_data.py", "--check", "nope", own_process=True,
                                   names=("data folder nope not found (--check DIR)", "openai/parameter-golf",
                                          "cached_challenge_fineweb.py --variant sp1024"), check=lacks("DATA_PATH")),
    "no_shards_check": case("prepare_data.py", "--check", "logs", names=("no train shards", "(--check DIR)"),
                            check=lacks("DATA_PATH")),
    # env None: unset, so the defaults (FineWeb's paths) apply while prepare_data.py --demo's data is here
    "missing_data_dir_demo_data": case("train_gpt.py", env={"DATA_PATH": None}, setup=make_demo_data,
                                       names=("fineweb10B_sp1024 not found (DATA_PATH)", "PRESET=demo-student"),
                                       check=lacks("prepare_data.py")),
    "no_train_shards": case("train_teacher.py", setup=remove_train_shards, names=("no train shards", "DATA_PATH")),
    "no_train_shards_cache": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "newcache",
                                  setup=remove_train_shards, names=("no train shards", "DATA_PATH")),
    "bad_magic": case("train_gpt.py", setup=lambda ws: set_header(shard(ws, "train", 1), 0, 1234),
                      names=("tiny_train_000001.bin", "bad magic 1234")),
    "bad_version": case("prepare_data.py", "--check", DATA, setup=lambda ws: set_header(shard(ws, "val", 0), 1, 7),
                        names=("1 of 5 shards", "is bad (tiny_val_000000.bin: each line above says why)")),
    "every_bad_shard_check": case("prepare_data.py", "--check", DATA,
                                  setup=lambda ws: (set_header(shard(ws, "val", 0), 1, 7), truncate(shard(ws, "train", 1), 4),
                                                    set_token(shard(ws, "train", 3), 9, 1024)),
                                  names=("3 of 5 shards", "(tiny_train_000001.bin, tiny_train_000003.bin, "
                                         "tiny_val_000000.bin: each line above says why)")),
    "truncated_train": case("distill.py", env={"LOGIT_CACHE": "cache"},
                            setup=lambda ws: truncate(shard(ws, "train", 2), 10), names=("tiny_train_000002.bin", "truncated")),
    "truncated_val": case("eval_bpb.py", "checkpoints/r.pt", setup=lambda ws: truncate(shard(ws, "val", 0), 1),
                          names=("tiny_val_000000.bin", "truncated")),
    "truncated_train_cache": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "newcache",
                                  setup=lambda ws: truncate(shard(ws, "train", 0), 2),
                                  names=("tiny_train_000000.bin", "truncated")),
    "val_token_out_of_vocab": case("train_gpt.py", setup=lambda ws: set_token(shard(ws, "val", 0), 100, 2000),
                                   names=("tiny_val_000000.bin", "token id 2000", "VOCAB_SIZE=1024")),
    "val_token_out_of_vocab_eval": case("eval_bpb.py", "checkpoints/r.pt",
                                        setup=lambda ws: set_token(shard(ws, "val", 0), 7, 1024),
                                        names=("tiny_val_000000.bin", "token id 1024")),
    "train_token_out_of_vocab_check": case("prepare_data.py", "--check", DATA,
                                           setup=lambda ws: set_token(shard(ws, "train", 1), 5000, 1500),
                                           names=("1 of 5 shards", "tiny_train_000001.bin")),
    # every train shard's ids are checked before the logs open, a shard the run would never reach included
    "train_token_out_of_vocab": case("train_teacher.py", setup=lambda ws: set_token(shard(ws, "train", 0), 5, 1500),
                                     names=("tiny_train_000000.bin", "token id 1500 at position 5", "VOCAB_SIZE=1024")),
    "train_token_out_of_vocab_last_shard": case("train_gpt.py", env={"ITERATIONS": 1},
                                                setup=lambda ws: set_token(shard(ws, "train", 3), 7, 65535),
                                                names=("tiny_train_000003.bin", "token id 65535 at position 7",
                                                       "VOCAB_SIZE=1024")),
    "bad_magic_last_shard_distill": case("distill.py", env={"LOGIT_CACHE": "cache"},
                                         setup=lambda ws: set_header(shard(ws, "train", 3), 0, 99),
                                         names=("tiny_train_000003.bin", "bad magic 99")),
    "train_token_out_of_vocab_cache": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "newcache",
                                           setup=lambda ws: set_token(shard(ws, "train", 2), 0, 4000),
                                           names=("tiny_train_000002.bin", "token id 4000 at position 0",
                                                  "VOCAB_SIZE=1024")),
    "empty_train_shards": case("train_teacher.py", setup=lambda ws: [write_shard(p, []) for p in (ws / DATA).glob("*_train_*")],
                               names=("hold no tokens", "DATA_PATH")),
    "val_shorter_than_a_sequence": case("train_gpt.py", env={"TRAIN_SEQ_LEN": "8192"},
                                        names=("val shards", "TRAIN_SEQ_LEN=8192")),
    # --- tokenizer
    "tokenizer_vocab": case("train_gpt.py", env={"VOCAB_SIZE": "512"}, names=("tiny_1024_bpe.model", "VOCAB_SIZE=512")),
    "tokenizer_vocab_cache": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "newcache",
                                  env={"VOCAB_SIZE": "2048"}, names=("tiny_1024_bpe.model", "VOCAB_SIZE=2048")),
    "missing_tokenizer": case("distill.py", env={"TOKENIZER_PATH": "nope.model"},
                              names=("nope.model", "TOKENIZER_PATH", "prepare_data.py --demo", "openai/parameter-golf")),
    "missing_tokenizer_demo_data": case("train_gpt.py", env={"DATA_PATH": None, "TOKENIZER_PATH": None},
                                        setup=make_demo_data, check=lacks("prepare_data.py"),
                                        names=("fineweb_1024_bpe.model not found (TOKENIZER_PATH)", "PRESET=demo-student")),
    # --- checkpoints
    "resume_other_config": case("train_teacher.py", "--resume", env={"NUM_LAYERS": "3", "CHECKPOINT_EVERY": "10"},
                                setup=craft_resume, names=("r.resume.pt", "NUM_LAYERS=2 there, 3 here")),
    "resume_missing": case("train_teacher.py", "--resume", names=("r.resume.pt", "CHECKPOINT_EVERY")),
    # a rerun beside a resumable checkpoint of its RUN_ID neither resumes nor discards it unasked
    "rerun_beside_resume": case("train_teacher.py", setup=craft_resume,
                                names=("checkpoints/r.resume.pt", "step 10", "--resume", "--restart")),
    "rerun_beside_resume_student": case("train_gpt.py", setup=craft_resume,
                                        names=("checkpoints/r.resume.pt", "--resume", "--restart")),
    "missing_artifact": case("eval_bpb.py", "nope.int6.ptz", names=("artifact nope.int6.ptz not found", "quantize.py"),
                             check=lacks("--config")),
    "weights_other_config": case("eval_bpb.py", "mismatch.pt", names=("mismatch.pt", "10 missing (blocks.2.")),
    "artifact_other_config": case("eval_bpb.py", "checkpoints/r.int6.ptz", "--config", "other.pt",
                                  names=("r.int6.ptz", "other.pt", "shape")),
    # a checkpoint that would run code when unpickled: refused, the code never runs (it would create PWNED)
    "pickled_code_checkpoint": case("eval_bpb.py", "evil.pt", setup=malicious_checkpoint("checkpoints/r.pt", "evil.pt"),
                                    names=("checkpoint evil.pt holds pickled code (io.open)", "nothing in it was run")),
    "pickled_code_teacher_cache": case("cache_logits.py", "--teacher", "evil.pt", "--out", "newcache",
                                       setup=malicious_checkpoint("teacher.pt", "evil.pt"),
                                       names=("checkpoint evil.pt holds pickled code",)),
    "pickled_code_online_teacher": case("distill.py", env={"DISTILL_TEACHER": "online", "TEACHER_PATH": "evil.pt"},
                                        setup=malicious_checkpoint("teacher.pt", "evil.pt"),
                                        names=("checkpoint evil.pt holds pickled code",)),
    "pickled_code_resume": case("train_teacher.py", "--resume", env={"CHECKPOINT_EVERY": "10"},
                                setup=lambda ws: (craft_resume(ws), malicious_checkpoint(
                                    "checkpoints/r.resume.pt", "checkpoints/r.resume.pt")(ws)),
                                names=("checkpoint checkpoints/r.resume.pt holds pickled code",)),
    "truncated_checkpoint": case("quantize.py", "broken.pt", "--out", "checkpoints/r.int6.ptz",
                                 setup=damaged_copy("checkpoints/r.pt", "broken.pt", 5000),
                                 names=("broken.pt", "unreadable")),
    "truncated_artifact": case("eval_bpb.py", "broken.int6.ptz", "--config", "checkpoints/r.pt",
                               setup=damaged_copy("checkpoints/r.int6.ptz", "broken.int6.ptz", 100),
                               names=("broken.int6.ptz", "truncated")),
    "teacher_other_vocab": case("distill.py", env={"DISTILL_CACHED": "0", "TEACHER_PATH": "teacher_v2048.pt"},
                                names=("teacher_v2048.pt", "2048", "VOCAB_SIZE=1024")),
    "missing_teacher": case("distill.py", env={"LOGIT_CACHE": "cache", "TEACHER_PATH": "nope.pt"}, names=("nope.pt",)),
    # --- logit cache
    "cache_other_teacher": case("distill.py", env={"LOGIT_CACHE": "cache", "TEACHER_PATH": "teacher2.pt"},
                                names=("cache", "teacher_sha256")),
    "cache_other_k": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "cache", "--k", "4",
                          names=("cache", "k 8 != 4")),
    "cache_other_shards": case("distill.py", env={"LOGIT_CACHE": "cache"}, setup=change_train_shard,
                               names=("tiny_train_000001.bin", "changed since the cache was made")),
    "cache_missing_file": case("distill.py", env={"LOGIT_CACHE": "cache"},
                               setup=lambda ws: (ws / "cache" / "tiny_train_000002.val.npy").unlink(),
                               names=("tiny_train_000002.val.npy", "missing", "cache_logits.py"), own_process=True),
    "cache_truncated_file": case("distill.py", env={"LOGIT_CACHE": "cache"},
                                 setup=lambda ws: truncate(ws / "cache" / "tiny_train_000000.idx.npy", 3),
                                 names=("tiny_train_000000.idx.npy", "truncated")),
    "sampled_cache_other_temp": case("distill.py", env={"LOGIT_CACHE": "scache"},
                                     names=("scache", "temperature 1.5", "DISTILL_TEMP=2.0")),
    "sampled_cache_bucket_tail": case("distill.py", env={"LOGIT_CACHE": "scache", "DISTILL_TEMP": "1.5", "DISTILL_TAIL": "bucket"},
                                      names=("DISTILL_TAIL=bucket", "scache", "sampled")),
    "sampled_cache_offsets": case("distill.py", env={"LOGIT_CACHE": "scache", "DISTILL_TEMP": "1.5"}, setup=shift_block_offset,
                                  names=("tiny_train_000000.offsets.npy", "disagree", "tiny_train_000000.done")),
    "sampled_cache_truncated": case("distill.py", env={"LOGIT_CACHE": "scache", "DISTILL_TEMP": "1.5"},
                                    setup=lambda ws: truncate(ws / "scache" / "tiny_train_000001.entries.npy", 3),
                                    names=("tiny_train_000001.entries.npy", "truncated", "cache_logits.py")),
    "sampled_cache_draws": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "newcache", "--encoding", "sampled",
                                "--draws", "300", names=("draws N=300", "--draws")),
    "corrupt_manifest": case("distill.py", env={"LOGIT_CACHE": "cache"}, setup=write_text("cache/manifest.json", "{\"shards\": ["),
                             names=("manifest.json", "corrupt")),
    "corrupt_manifest_rerun": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "cache",
                                   setup=write_text("cache/manifest.json", "not json"), names=("manifest.json", "corrupt"),
                                   own_process=True),
    # --- disk
    "no_disk_for_cache": case("cache_logits.py", "--teacher", "teacher.pt", "--out", "newcache",
                              free_bytes=1000, names=("newcache", "only 1.00 kB free")),
    "no_disk_for_checkpoints": case("train_gpt.py", free_bytes=1000,
                                    names=("checkpoints", "only 1.00 kB free")),
    "disk_full_on_save": case("train_gpt.py", env={"RUN_ID": "r2", "CHECKPOINT_PATH": "checkpoints/r.pt"},
                              fsync_enospc=True, names=("checkpoints/r.pt", "no space left"), allow_new=("logs/r2.*",),
                              own_process=True),
    # --- training
    "nonfinite_loss": case("train_gpt.py", env={"RUN_ID": "nf", "MATRIX_LR": "1e6", "CHECKPOINT_EVERY": "2",
                                                "ITERATIONS": "12", "TRAIN_LOG_EVERY": "1"},
                           names=("non-finite training loss", "MATRIX_LR"),
                           allow_new=("logs/nf.*", "checkpoints/nf.resume.pt*"), check=check_nonfinite,
                           own_process=True),
    # --- DEBUG=1 shows the traceback instead (and exits non-zero)
    "debug_traceback": case("train_gpt.py", env={"PRESET": "nope", "DEBUG": "1"}, rc=1, own_process=True),
}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def workspace(c, base: Path, tmp_path_factory, cid: str) -> tuple[Path, dict]:
    """A damaged copy of the workspace for case `c`, and the hashes of its files."""
    ws = tmp_path_factory.mktemp(cid)
    shutil.copytree(base, ws, dirs_exist_ok=True)
    if c.setup:
        c.setup(ws)
    return ws, snapshot(ws)




def run_in_process(c, ws: Path, monkeypatch):
    """Run the script's __main__ here (no torch import per case): the same checks as a subprocess, since an
    exception that cli_main does not turn into `error:` + exit 2 escapes and fails the test."""
    monkeypatch.chdir(ws)
    for k, v in {**COMMON_ENV, **c.env}.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, str(v))
    monkeypatch.setattr(sys, "argv", [c.args[0], *c.args[1:]])
    if c.free_bytes is not None:
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: type(real(p))(real(p).total, real(p).total - c.free_bytes, c.free_bytes))
    if c.fsync_enospc:
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocesses
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(os.path.join(REPO, c.args[0]), run_name="__main__")
                rc = 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        torch.set_num_threads(threads)
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def launched(request, base, shim, tmp_path_factory):
    """Start every selected subprocess case in the background (they run while the in-process cases do);
    {case id: (workspace, files before, future of the CompletedProcess)}."""
    selected = [item.callspec.params["cid"] for item in request.session.items
                if item.module is request.module and "cid" in getattr(getattr(item, "callspec", None), "params", {})]
    # The environment is fixed here, before any in-process case changes os.environ under the running threads.
    outer = {k: v for k, v in os.environ.items() if k != "PRESET"}
    jobs = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for cid in dict.fromkeys(selected):
            c = CASES[cid]
            if not c.own_process:
                continue
            ws, before = workspace(c, base, tmp_path_factory, cid)
            unset = {k for k, v in c.env.items() if v is None}
            env = {**{k: v for k, v in outer.items() if k not in unset},
                   **{k: str(v) for k, v in {**COMMON_ENV, **c.env}.items() if v is not None},
                   "PYTHONPATH": os.pathsep.join([shim, REPO]), "OMP_NUM_THREADS": "1"}
            if c.free_bytes is not None:
                env["GOLF_TEST_FREE_BYTES"] = str(c.free_bytes)
            if c.fsync_enospc:
                env["GOLF_TEST_FSYNC_ENOSPC"] = "1"
            cmd = [sys.executable, os.path.join(REPO, c.args[0]), *c.args[1:]]
            jobs[cid] = (ws, before, pool.submit(subprocess.run, cmd, env=env, cwd=str(ws), capture_output=True,
                                                 text=True, timeout=300))
        yield jobs


@pytest.mark.parametrize("cid", [pytest.param(cid, marks=c.marks) for cid, c in CASES.items()])
def test_bad_input_gives_one_clear_line_and_damages_nothing(cid, launched, base, tmp_path_factory, monkeypatch):
    c = CASES[cid]
    if c.own_process:
        ws, before, job = launched[cid]
        out = job.result()
    else:
        ws, before = workspace(c, base, tmp_path_factory, cid)
        out = run_in_process(c, ws, monkeypatch)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == c.rc, f"rc {out.returncode}\n{out.stderr[-3000:]}"
    if cid == "debug_traceback":
        assert "Traceback (most recent call last)" in out.stderr and "GolfError: PRESET='nope' is not a preset" in out.stderr
    else:
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        assert lines and lines[-1].startswith("error: "), out.stderr[-3000:]
        for name in c.names:
            assert name in lines[-1], (name, lines[-1])
    after = snapshot(ws)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or removed: {changed}"
    new = [p for p in after if p not in before]
    assert not [p for p in new if os.path.basename(p).startswith(".") and p.endswith(".tmp")], new
    assert all(any(fnmatch.fnmatch(p, pat) for pat in c.allow_new) for p in new), f"unexpected new files: {new}"
    if c.check:
        c.check(ws, out.stdout, lines[-1])


def test_restart_starts_over_and_a_rerun_keeps_the_earlier_logs(base, tmp_path_factory, monkeypatch):
    """--restart beside run r's resumable checkpoint: deleted (said), the run starts over; run r's earlier logs
    are kept byte for byte as r.earlier-1 (said), a second rerun's as r.earlier-2, and only the new run's lines
    are in r.txt."""
    c = case("train_gpt.py", "--restart", setup=craft_resume)
    ws, _ = workspace(c, base, tmp_path_factory, "restart")
    out = run_in_process(c, ws, monkeypatch)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("restart: run r starts over; its resumable checkpoint checkpoints/r.resume.pt (step 10) is deleted"
            in out.stdout.splitlines())
    assert not (ws / "checkpoints/r.resume.pt").exists() and not (ws / "checkpoints/r.resume.pt.sha256").exists()
    assert ("logs: the earlier run r's logs/r.txt and logs/r.jsonl kept as logs/r.earlier-1.txt/.jsonl"
            in out.stdout.splitlines()), out.stdout[:2000]
    for ext in ("txt", "jsonl"):
        assert (ws / f"logs/r.earlier-1.{ext}").read_bytes() == (base / f"logs/r.{ext}").read_bytes()
    first = (ws / "logs/r.txt").read_text()
    assert "(the earlier run)" not in first and "step:2/2 " in first and "resume:step" not in first
    out = run_in_process(case("train_gpt.py"), ws, monkeypatch)  # no resumable checkpoint left: no flag needed
    assert out.returncode == 0 and "kept as logs/r.earlier-2.txt/.jsonl" in out.stdout, out.stderr[-3000:]
    assert (ws / "logs/r.earlier-2.txt").read_text() == first
    assert (ws / "logs/r.earlier-1.txt").read_bytes() == (base / "logs/r.txt").read_bytes()


def test_the_malicious_checkpoint_would_run_its_code_if_unpickled_unsafely(base, tmp_path):
    """The matrix's pickled_code cases prove something: unpickled without the safe loader, the same file does
    create the file (here in tmp_path), which load_checkpoint never lets happen."""
    made = tmp_path / "PWNED"
    shutil.copy(base / "teacher.pt", tmp_path / "teacher.pt")
    malicious_checkpoint("teacher.pt", "evil.pt", str(made))(tmp_path)
    with pytest.raises(GolfError, match="holds pickled code"):
        load_checkpoint(str(tmp_path / "evil.pt"))
    assert not made.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the unsafe way: runs the pickled call
    assert made.exists()


def test_a_checkpoint_written_before_the_safe_loader_still_loads(tmp_path):
    """A resumable checkpoint as train.py has always written it (numpy's RNG state as an array beside tensors,
    numbers and strings), saved with plain torch.save: load_checkpoint reads it back exactly."""
    from golf.train import _rng_state

    model = GPT(student_config())
    state = {"config": student_config().to_dict(), "kind": "resume", "model": model.state_dict(), "step": 7,
             "rng": _rng_state(), "loader": {"shard": 1, "pos": 123}, "qat": False, "train_ms": 1.5,
             "optimizers": [torch.optim.Adam(model.parameters()).state_dict()], "ema": None, "teacher": None}
    torch.save(state, tmp_path / "old.resume.pt")
    back = load_checkpoint(str(tmp_path / "old.resume.pt"))
    name, keys, pos, *_ = back["rng"]["numpy"]
    assert name == "MT19937" and keys.dtype == np.uint32 and np.array_equal(keys, state["rng"]["numpy"][1])
    assert pos == state["rng"]["numpy"][2] and back["rng"]["python"] == state["rng"]["python"]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"]) and back["loader"] == {"shard": 1, "pos": 123}
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())


# ----------------------------------------------------------------------------------------------------------
# Non-finite loss in-process: which checkpoint is named


@pytest.mark.parametrize("every", [2, 3, 5])
def test_nonfinite_loss_names_the_checkpoint_whose_loss_was_finite(tiny_dataset, tmp_path, every):
    """MATRIX_LR=1e6 makes the loss non-finite at some step s (the loss of the weights after step s - 1). The
    error names the resumable checkpoint as good only if it is older than step s - 1; recomputing the loss of
    its weights on the batch that followed it gives the logged (finite) loss, or the non-finite one."""
    torch.set_num_threads(1)
    cfg = make_config(tiny_dataset, str(tmp_path), matrix_lr=1e6, checkpoint_every=every, iterations=12,
                      warmup_steps=0, train_log_every=1)
    with pytest.raises(GolfError) as e:
        train(cfg, cpu_ctx(), logger(cfg), *run_inputs(cfg))
    msg = str(e.value)
    step = int(re.search(r"non-finite training loss at step (\d+)", msg)[1])
    assert step > every and not os.path.exists(cfg.checkpoint_path), msg
    resume = str(tmp_path / "ck.resume.pt")
    ckpt = load_checkpoint(resume)
    saved = ckpt["step"]
    assert saved == (step - 1) // every * every

    loader = DistributedTokenLoader(run_inputs(cfg)[0], 0, 1)
    loader.load_state(ckpt["loader"])
    batch = loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, cfg.micro_batches)
    model = GPT(cfg)
    model.load_state_dict(ckpt["model"])
    model.set_qat(ckpt["qat"])
    with torch.no_grad():
        loss = float(cross_entropy(model(batch.x), batch.y))
    if saved == step - 1:
        assert f"the resumable checkpoint {resume} (step {saved}) holds the weights that gave it" in msg
        assert not np.isfinite(loss)
    else:
        assert f"last good checkpoint: {resume} (step {saved})" in msg
        logged = re.search(rf"^step:{saved + 1}/\d+ train_loss:(\S+)", Path(cfg.log_dir, "t.txt").read_text(), re.M)
        assert abs(loss - float(logged[1])) < 1e-3, (loss, logged[0])


# ----------------------------------------------------------------------------------------------------------
# Interruptions: Ctrl-C (SIGINT) or SIGTERM ends every script with one line (where it stopped, and the command
# that continues or, nothing kept, starts again), exit 130 / 143, no traceback


def interrupt(ws: Path, shim: str, args: list, env: dict, wait_for: str, signum: int):
    """Run `args` in `ws` until a stdout line matches `wait_for`, then send `signum`; the CompletedProcess."""
    env = {**{k: v for k, v in os.environ.items() if k != "PRESET"}, **{k: str(v) for k, v in {**COMMON_ENV, **env}.items()},
           "PYTHONPATH": os.pathsep.join([shim, REPO]), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, *args], env=env, cwd=str(ws), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if re.search(wait_for, line):
            p.send_signal(signum)
            break
    out, err = p.communicate(timeout=240)
    return subprocess.CompletedProcess(args, p.returncode, "".join(seen) + out, err)


def one_line(p, rc: int) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == rc and "Traceback" not in p.stderr, f"rc {p.returncode}\n{p.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("interrupted ("), p.stderr[-3000:]
    return lines[0]


INTERRUPTS = {  # script args, env, the stdout line to interrupt at, signal, what the line must say
    "train_gpt": (["train_gpt.py"], {"RUN_ID": "i", "ITERATIONS": 1000}, r"^step:3/", signal.SIGTERM,
                  ("interrupted (SIGTERM) at step ", "/1000 of training; nothing was kept: start again with: ",
                   "RUN_ID=i", "python train_gpt.py")),
    "distill": (["distill.py"], {"RUN_ID": "i", "ITERATIONS": 1000, "LOGIT_CACHE": "cache"}, r"^step:2/",
                signal.SIGINT, ("interrupted (Ctrl-C) at step ", "LOGIT_CACHE=cache", "python distill.py")),
    "cache_logits": (["cache_logits.py", "--teacher", "teacher.pt", "--out", "newcache"],
                     {"GOLF_TEST_STALL": "golf.cache_build.build_cache"}, "^STALLED", signal.SIGINT,
                     ("interrupted (Ctrl-C) while writing the cache newcache (4 of 4 shards were pending); every shard "
                      "of newcache completed so far is kept: continue with: ",
                      "python cache_logits.py --teacher teacher.pt --out newcache")),
    "eval_bpb": (["eval_bpb.py", "checkpoints/r.pt"], {"GOLF_TEST_STALL": "golf.eval.eval_sliding"}, "^STALLED",
                 signal.SIGTERM, ("nothing was kept: start again with: ", "python eval_bpb.py checkpoints/r.pt")),
    "quantize": (["quantize.py", "checkpoints/r.pt", "--out", "q.ptz"], {"GOLF_TEST_STALL": "golf.quant.quantize_state_dict"},
                 "^STALLED", signal.SIGINT, ("nothing was kept", "python quantize.py checkpoints/r.pt --out q.ptz")),
    "prepare_data": (["prepare_data.py", "--demo", "--out-dir", "newdata"], {"GOLF_TEST_STALL": "golf.corpus.build_dataset"},
                     "^STALLED", signal.SIGTERM, ("nothing was kept", "python prepare_data.py --demo --out-dir newdata")),
}


@pytest.mark.parametrize("script", list(INTERRUPTS))  # not "cid": that names the matrix's cases
def test_an_interrupted_script_says_where_it_stopped_in_one_line(script, base, shim, tmp_path_factory):
    args, env, wait_for, signum, says = INTERRUPTS[script]
    ws, before = workspace(case(args[0]), base, tmp_path_factory, f"int_{script}")
    p = interrupt(ws, shim, [os.path.join(REPO, args[0]), *args[1:]], env, wait_for, signum)
    line = one_line(p, 128 + signum)
    for text in says:  # the script as it was started: by its full path here
        text = text.replace("python ", f"python {shlex.quote(REPO)}/")
        assert text in line, (text, line)
    after = snapshot(ws)
    assert not [f for f, h in before.items() if after.get(f) != h], "an interruption changed an earlier file"


def test_an_interrupted_teacher_continues_with_the_command_it_prints(base, shim, tmp_path_factory):
    """Ctrl-C after a resumable checkpoint: the line names it and the command with --resume; that command, run
    as printed, resumes from that step (and SIGTERM stops it the same way)."""
    ws, _ = workspace(case("train_teacher.py"), base, tmp_path_factory, "int_teacher")
    env = {"RUN_ID": "i", "ITERATIONS": 1000, "CHECKPOINT_EVERY": 2}
    p = interrupt(ws, shim, [os.path.join(REPO, "train_teacher.py")], env, r"^step:5/", signal.SIGINT)
    line = one_line(p, 130)
    m = re.fullmatch(r"interrupted \(Ctrl-C\) at step (\d+)/1000 of training; the resumable checkpoint "
                     r"checkpoints/i.resume.pt \(step (\d+)\) is kept: continue with: (.*)", line)
    assert m, line
    step, saved, command = int(m[1]), int(m[2]), m[3]
    assert step >= 5 and saved == step // 2 * 2 == load_checkpoint(str(ws / "checkpoints/i.resume.pt"))["step"]
    assert "CHECKPOINT_EVERY=2" in command and "ITERATIONS=1000" in command and "RUN_ID=i" in command
    assert command.endswith("train_teacher.py --resume"), command
    # the printed command, as the user would paste it (its `python` is this interpreter)
    words = shlex.split(command)
    settings = dict(w.split("=", 1) for w in words[: words.index("python")])
    script = words[words.index("python") + 1:]
    p = interrupt(ws, shim, script, settings, rf"^step:{saved + 2}/", signal.SIGTERM)
    assert f"resume:step:{saved} " in p.stdout, p.stdout[-2000:]
    assert one_line(p, 143).startswith("interrupted (SIGTERM) at step ")


# ----------------------------------------------------------------------------------------------------------
# Atomic writes: a failure between the write and the rename leaves the previous file and no temp file


def _write_checkpoint(path: Path, version: int):
    save_checkpoint(str(path), {"config": {}, "model": {"w": torch.full((64,), float(version))}, "v": version})


def _read_checkpoint(path: Path):
    return int(torch.load(path, weights_only=True)["v"])


def _write_artifact(path: Path, version: int):
    write_artifact(path, quantize_state_dict({"w": torch.full((8, 8), float(version))}), "lzma")


def _read_artifact(path: Path):
    return int(read_artifact(path)["tensors"]["w"]["data"][0, 0])


def _write_shard(path: Path, version: int):
    write_shard(path, np.full(100, version))


def _read_shard(path: Path):
    return int(load_shard(path)[0])


def _write_text(path: Path, version: int):
    atomic_write_text(path, f"version {version}\n")


def _read_text(path: Path):
    return int(path.read_text().split()[1])


WRITERS = {"checkpoint": (_write_checkpoint, _read_checkpoint, "ck.pt"),
           "artifact": (_write_artifact, _read_artifact, "m.int6.ptz"),
           "shard": (_write_shard, _read_shard, "x_train_000000.bin"),
           "text": (_write_text, _read_text, "results.csv")}


def _failing(monkeypatch, where: str, err=None):
    """Make os.fsync or os.replace raise (os.replace only for our temp files)."""
    err = err or OSError(errno.EIO, "injected I/O error")
    real = getattr(os, where)

    def boom(*args, **kwargs):
        if where == "replace" and not os.path.basename(args[0]).startswith("."):
            return real(*args, **kwargs)
        raise err
    monkeypatch.setattr(os, where, boom)


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.mark.parametrize("where", ["fsync", "replace"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_failure_before_the_rename_keeps_the_previous_file(tmp_path, monkeypatch, kind, where):
    write, read, name = WRITERS[kind]
    path = tmp_path / name
    write(path, 1)
    old = path.read_bytes()
    side = path.with_name(name + ".sha256")
    old_side = side.read_bytes() if side.exists() else None
    with monkeypatch.context() as m:
        _failing(m, where)
        with pytest.raises(OSError, match="injected"):
            write(path, 2)
    assert path.read_bytes() == old and read(path) == 1
    assert (side.read_bytes() if side.exists() else None) == old_side
    assert _temps(tmp_path) == []
    write(path, 2)  # the same writer without the failure does replace the file
    assert read(path) == 2 and _temps(tmp_path) == []


def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    _write_checkpoint(path, 1)
    old = path.read_bytes()
    with monkeypatch.context() as m:
        _failing(m, "fsync", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        with pytest.raises(GolfError, match=rf"no space left on the device while writing {re.escape(str(path))} .*free some space"):
            _write_checkpoint(path, 2)
    assert path.read_bytes() == old and _temps(tmp_path) == []


def test_failed_manifest_rename_leaves_the_old_manifest_and_only_makes_readers_refuse(tmp_path, monkeypatch):
    """A shard commits (data files and sidecar renamed), then the manifest's rename fails: the manifest stays the
    old one (shard incomplete), a reader refuses rather than reads, and reopening the writer repairs it."""
    files = []
    for i in range(2):
        files.append(str(tmp_path / "data" / f"x_train_{i:06d}.bin"))
        write_shard(files[-1], np.arange(50) + i)
    spec = CacheSpec(k=2, vocab_size=1024, encoding="fp16", teacher_sha256="a" * 64, teacher_config={}, window=8, stride=8)
    out = tmp_path / "cache"
    writer = CacheWriter(str(out), files, spec)
    rows = np.stack([np.arange(50), np.arange(50) + 1], axis=1)
    vals = np.broadcast_to(np.array([-1.0, -2.0], dtype=np.float32), rows.shape)
    writer.write_shard(0, rows, vals)
    old = (out / "manifest.json").read_bytes()
    real = os.replace
    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "injected"))
                  if os.path.basename(b) == "manifest.json" else real(a, b))
        with pytest.raises(OSError, match="injected"):
            writer.write_shard(1, rows + 2, vals)
    assert (out / "manifest.json").read_bytes() == old and _temps(out) == []
    assert (out / "x_train_000001.done").exists()  # the shard itself is complete on disk
    with pytest.raises(GolfError, match="x_train_000001.bin is not complete"):
        CacheReader(str(out), files)
    assert CacheWriter(str(out), files, spec).pending() == []
    assert CacheReader(str(out), files).gather([(1, 0, 50)])[0][:, 0].tolist() == (np.arange(50) + 2).tolist()


def test_new_files_get_the_usual_permissions_and_rewrites_keep_theirs(tmp_path):
    """mkstemp makes 0o600 files; the atomic writers must not leave shards or checkpoints unreadable to others."""
    umask = os.umask(0o022)
    try:
        path = tmp_path / "x_train_000000.bin"
        write_shard(path, np.arange(10))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        write_shard(path, np.arange(20))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(umask)
