"""Shared fixtures, built once per test run: a tiny real dataset (tokenizer + challenge-format shards, in-process),
a teacher checkpoint and a logit cache for it. Every test runs with one CPU thread, in an empty working directory
of its own, and fails if it touches the repository's data/, runs/, logs/, ... (tests/worktree_guard.py)."""
import types

import pytest
import torch

from golf.corpus import build_dataset, demo_documents, split_train_val
from helpers import make_config, synthetic_cache, write_teacher_checkpoint

pytest_plugins = ("pytester", "worktree_guard")

TINY_TEXT_BYTES = 200_000
TINY_SHARD_TOKENS = 20_000  # several train shards, so shard boundaries get exercised
TINY_MAX_DOC_BYTES = 16_000  # a few huge docstring files (e.g. _pydecimal) would dominate such a small slice


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 1024-vocab demo tokenizer and train/val shards from ~200 KB of the demo corpus (~1 s).

    Fields: root, data_path (the dataset folder, i.e. DATA_PATH), tokenizer_path, vocab_size,
    train_files, val_files (sorted shard paths), and train_docs, val_docs (the texts they encode: the val
    documents left after build_dataset dropped those sharing a long span with train), dedup (its report).
    Treat it as read-only: it is shared by the whole session.
    """
    root = tmp_path_factory.mktemp("tiny_dataset")
    docs, total = [], 0
    for doc in demo_documents(max_bytes=2 * TINY_TEXT_BYTES):
        if len(doc.encode("utf-8")) < TINY_MAX_DOC_BYTES and total < TINY_TEXT_BYTES:
            docs.append(doc)
            total += len(doc.encode("utf-8"))
    train_docs, val_docs = split_train_val(docs)
    out = build_dataset(train_docs, val_docs, "tiny", str(root), shard_tokens=TINY_SHARD_TOKENS, vocab_size=1024)
    return types.SimpleNamespace(
        root=str(root),
        data_path=out.data_path,
        tokenizer_path=out.tokenizer_path,
        vocab_size=1024,
        train_files=out.train_files,
        val_files=out.val_files,
        dedup=out.dedup,
        train_docs=train_docs,
        val_docs=out.val_docs,  # after deduplication against train
    )


@pytest.fixture(scope="session")
def teacher_ckpt(tiny_dataset, tmp_path_factory):
    """A teacher checkpoint of the `test` preset's shape on the tiny dataset (sharp random weights, seed 7), as the
    training scripts write one. Read-only: shared by the whole session."""
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pt")
    return write_teacher_checkpoint(path, make_config(tiny_dataset, ""), tiny_dataset.tokenizer_path)


@pytest.fixture(scope="session")
def teacher_cache(tiny_dataset, tmp_path_factory):
    """A complete top-4 fp16 logit cache of the tiny dataset's train shards (helpers.synthetic_cache: valid rows,
    teacher_sha256 "b" * 64, so it belongs to no real checkpoint). Read-only: shared by the whole session."""
    return synthetic_cache(str(tmp_path_factory.mktemp("teacher_cache") / "cache"), tiny_dataset.train_files)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs with one CPU thread, as every script the tests start does (OMP_NUM_THREADS=1): bitwise-
    reproducible kernels, and much faster than 2 threads for these tiny shapes on a 2-core machine, where CI
    leaves OMP_NUM_THREADS unset. A test that wants more threads asks for them (e.g. golf.topk's `threads=`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
