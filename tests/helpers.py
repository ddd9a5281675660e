"""Helpers shared by the tests that run training (in-process or under torchrun)."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from golf.cache import CacheSpec, CacheWriter
from golf.checkpoint import save_checkpoint
from golf.config import PRESETS, Config
from golf.dist import Ctx
from golf.eval import load_val_tokens
from golf.log import Logger
from golf.model import GPT
from golf.shards import load_shard
from golf.tokenizer import build_byte_luts, file_sha256, load_tokenizer, luts_to_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The challenge's published tokenizer, in the shared folder that CI puts beside the repository (../shared).
CHALLENGE_TOKENIZER = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "tokenizers", "fineweb_1024_bpe.model"))
needs_challenge_tokenizer = pytest.mark.skipif(
    not os.path.isfile(CHALLENGE_TOKENIZER),
    reason="the challenge tokenizer is not at ../shared/data/tokenizers/fineweb_1024_bpe.model beside the repository")


def make_config(ds, tmp, **overrides) -> Config:
    """The `test` preset on the tiny dataset, writing under `tmp`."""
    cfg = Config(**{**PRESETS["test"], "data_path": ds.data_path, "tokenizer_path": ds.tokenizer_path,
                    "log_dir": os.path.join(tmp, "logs"), "run_id": "t",
                    "checkpoint_path": os.path.join(tmp, "ck.pt"), **overrides})
    return cfg


def cpu_ctx() -> Ctx:
    return Ctx(0, 0, 1, torch.device("cpu"), None)


def run_inputs(cfg: Config):
    """(train_files, val_tokens, luts) as start_run builds them."""
    from golf.shards import list_shards
    sp = load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    luts = luts_to_torch(build_byte_luts(sp, cfg.vocab_size), "cpu")
    return list_shards(cfg.data_path, "train"), load_val_tokens(cfg.data_path, cfg.train_seq_len, cfg.val_max_tokens), luts


def logger(cfg: Config) -> Logger:
    return Logger(cfg.log_dir, cfg.run_id)


def repo_env(**overrides) -> dict:
    """This process's environment with the repository importable (`python -m golf.results` from any folder)."""
    return {**os.environ, "PYTHONPATH": REPO, **{k: str(v) for k, v in overrides.items()}}


def run_script(args, env_overrides: dict, cwd: str, timeout: int = 240, nproc: int = 0):
    """Run a repo script (under torchrun with `nproc` processes if > 0); returns CompletedProcess."""
    env = repo_env(OMP_NUM_THREADS=1, **env_overrides)
    env.pop("PRESET", None) if "PRESET" not in env_overrides else None
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        cmd = [sys.executable]
    cmd += [os.path.join(REPO, args[0]), *args[1:]]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def side_by_side(*calls) -> list:
    """Run independent zero-argument calls (e.g. `lambda: run_script(...)`) at once, one thread each; their results
    in order. Each script run is one process on one thread: two of them on a 2-core machine take the time of one."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def dataset_env(ds) -> dict:
    return {"DATA_PATH": ds.data_path, "TOKENIZER_PATH": ds.tokenizer_path}


def edge_rows(v: int, k: int, seed: int = 0) -> torch.Tensor:
    """float32 log-probs: random rows and the ones a bit-level or threshold selection could get wrong."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, v, generator=g) * 4
    logits[1] = torch.randint(0, 4, (v,), generator=g).float()  # many exact ties, at and around the boundary
    logits[2, v // 3] = 200.0  # one certain token: its log-prob is exactly 0.0, the others -inf or tiny
    logits[3, : v - k // 2] = float("-inf")  # fewer than K finite entries: -inf ranks last
    logits[4] = 0.0  # uniform: every entry a candidate, ties broken by id
    logits[5] = -logits[0]
    logits[6] = torch.arange(v).float()  # ascending: the best at the end of the row
    logits[7] = -torch.arange(v).float()  # descending: the best at the start
    logits[8] = 0.0
    logits[8, torch.randperm(v, generator=g)[:k]] = 1.0  # exactly K winners, scattered over the strided sets
    logits[9] = torch.randn(v, generator=g) * 0.01  # nearly flat: many candidates after the threshold pass
    return torch.log_softmax(logits, -1)


def random_teacher(cfg: Config, seed: int) -> GPT:
    """A GPT with sharp, seed-dependent outputs (a fresh init is nearly uniform)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.3)
    return model.eval().requires_grad_(False)


def write_teacher_checkpoint(path: str, cfg: Config, tokenizer_path: str, seed: int = 7) -> str:
    """A teacher checkpoint of `cfg`'s shape (sharp random weights) as the training scripts write one."""
    save_checkpoint(path, {"config": cfg.to_dict(), "model": random_teacher(cfg, seed).state_dict(),
                           "tokenizer_sha256": file_sha256(tokenizer_path), "kind": "final"})
    return path


def synthetic_cache(out: str, files: list[str], k: int = 4, **spec_overrides) -> str:
    """A complete cache with valid rows (sorted log-probs, ids < 1024) for `files`."""
    spec = CacheSpec(**{"k": k, "vocab_size": 1024, "encoding": "fp16", "teacher_sha256": "b" * 64,
                        "teacher_config": {}, "window": 64, "stride": 64, **spec_overrides})
    w = CacheWriter(out, files, spec)
    for i, p in enumerate(files):
        t = load_shard(p).astype(np.int64)
        idx = (t[:, None] + 97 * np.arange(k)[None, :]) % 1024
        vals = np.broadcast_to(-np.arange(1, k + 1, dtype=np.float32), idx.shape)
        w.write_shard(i, idx, vals)
    assert w.finalize() == []
    return out
