"""End to end through the scripts: cache_logits.py (a subprocess) writes a teacher's cache, distill.py trains a
student on it, and every cached row the student used is the teacher's own output at the position the student
was trained on. The other tests prove each half (the cache's rows, the loader's alignment) separately; this one
only uses the scripts, the CacheReader and the model, so it holds whatever the training loop looks like inside.

The teacher's output depends only on the current and the previous token (its attention and MLP outputs are
zero, it has no bigram table, and its SmearGate mixes in the previous position), so the expected row of stream
position t is the teacher run on the two tokens (t-1, t), computed here independently of any window layout.

    python -m pytest tests/test_end_to_end.py -q
"""
import contextlib
import io
import os
import runpy
import sys

import numpy as np
import torch

from golf.cache import CacheReader, cache_manifest_field
from golf.checkpoint import save_checkpoint
from golf.config import PRESETS, Config
from golf.model import GPT
from golf.shards import load_shard
from golf.tokenizer import file_sha256
from helpers import REPO, run_script

K = 8


def pair_teacher(path, ds) -> GPT:
    """A `test`-preset GPT whose logits at t are a function of tokens t-1 and t only, saved as a checkpoint."""
    cfg = Config(**{**PRESETS["test"], "bigram_vocab_size": 0, "data_path": ds.data_path,
                    "tokenizer_path": ds.tokenizer_path})
    torch.manual_seed(7)
    model = GPT(cfg)
    with torch.no_grad():
        model.tok_emb.weight.normal_()  # large: every token pair gets its own distinct distribution
        model.smear.gate.normal_()
        for name, p in model.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                p.zero_()  # the blocks add nothing: no information flows between positions but the smear's
    save_checkpoint(str(path), {"config": cfg.to_dict(), "model": model.state_dict(), "kind": "final",
                                "tokenizer_sha256": file_sha256(ds.tokenizer_path)})
    return model.eval()


def pair_logprobs(model: GPT, stream: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """log_softmax of the teacher at each stream position given only (token before it, token): [n, V]."""
    out = np.empty((len(positions), model.cfg.vocab_size), dtype=np.float32)
    first = positions == 0  # the stream's first token has nothing before it
    with torch.no_grad():
        if (~first).any():
            p = positions[~first]
            pairs = torch.from_numpy(np.stack([stream[p - 1], stream[p]], axis=1).astype(np.int64))
            out[~first] = torch.log_softmax(model(pairs)[:, 1].float(), -1).numpy()
        if first.any():
            alone = torch.from_numpy(stream[positions[first]].astype(np.int64))[:, None]
            out[first] = torch.log_softmax(model(alone)[:, 0].float(), -1).numpy()
    return out


def run_distill(env: dict, cwd, monkeypatch):
    """distill.py's __main__ in this process, recording every CacheReader.gather and every training input."""
    gathered, inputs = [], []
    real_gather, real_forward = CacheReader.gather, GPT.forward

    def gather(self, segments, out_idx=None, out_vals=None):
        idx, vals = real_gather(self, segments, out_idx, out_vals)
        gathered.append((list(segments), np.array(idx, dtype=np.int64), np.array(vals, dtype=np.float32)))
        return idx, vals

    def forward(self, ids):
        if self.training and torch.is_grad_enabled():
            inputs.append(ids.detach().cpu().numpy().copy())
        return real_forward(self, ids)

    monkeypatch.setattr(CacheReader, "gather", gather)
    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.chdir(cwd)
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.setattr(sys, "argv", ["distill.py"])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(os.path.join(REPO, "distill.py"), run_name="__main__")
        except SystemExit as e:
            code = e.code
    assert code in (0, None), err.getvalue()[-3000:]
    return gathered, inputs


def test_student_uses_the_teachers_own_output_at_every_position(tiny_dataset, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep one thread for the in-process run
    teacher = pair_teacher(tmp_path / "teacher.pt", tiny_dataset)
    stream = np.concatenate([np.asarray(load_shard(p)) for p in tiny_dataset.train_files])
    # the property the expected rows rely on: a long context gives what the last two tokens give
    seq = torch.from_numpy(stream[100:140].astype(np.int64))[None]
    with torch.no_grad():
        np.testing.assert_allclose(torch.log_softmax(teacher(seq)[0, -1].float(), -1).numpy(),
                                   pair_logprobs(teacher, stream, np.array([139]))[0], atol=1e-4)

    # --stride 32 (half the teacher's window): every position but the stream's first has its previous token
    env = {"DATA_PATH": tiny_dataset.data_path, "TOKENIZER_PATH": tiny_dataset.tokenizer_path, "DTYPE": "fp32"}
    r = run_script(["cache_logits.py", "--teacher", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "cache"),
                    "--k", str(K), "--stride", "32"], env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    built = cache_manifest_field(str(tmp_path / "cache"), "build_seconds")
    assert 0 < built < 300, built  # what a non-record submission states as the cache's cost

    gathered, inputs = run_distill({**env, "PRESET": "test", "RUN_ID": "e2e", "LOGIT_CACHE": tmp_path / "cache",
                                    "ITERATIONS": 6, "WARMUP_STEPS": 1, "VAL_MAX_TOKENS": 512, "DEBUG": "1"},
                                   tmp_path, monkeypatch)
    assert len(inputs) >= 6 and gathered, (len(inputs), len(gathered))
    starts = np.cumsum([0] + [len(load_shard(p)) for p in tiny_dataset.train_files])
    rows = []
    for segments, idx, vals in gathered:
        positions = np.concatenate([starts[s] + np.arange(o, o + n) for s, o, n in segments])
        rows.append((stream[positions], positions))
        expected = pair_logprobs(teacher, stream, positions)
        # the cached top-K: the teacher's log-probabilities (fp16) of the teacher's K most likely tokens
        np.testing.assert_allclose(vals, np.take_along_axis(expected, idx, 1), rtol=2e-3, atol=2e-3)
        kth = -np.sort(-expected, axis=1)[:, K - 1]
        assert (np.take_along_axis(expected, idx[:, -1:], 1)[:, 0] >= kth - 2e-3).all()
    # ... and the rows were fetched for exactly the tokens the student trained on
    for x in inputs:
        assert any(np.array_equal(tokens, x.reshape(-1)) for tokens, _ in rows), "a training input had no rows"
