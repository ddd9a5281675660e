"""Shared fixtures: a tiny real dataset (tokenizer + challenge-format shards) built in-process."""
import types

import pytest
import torch

from golf.corpus import build_dataset, demo_documents, split_train_val

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


@pytest.fixture
def one_thread():
    """Bitwise-reproducible CPU kernels (and much faster than 2 threads on a shared 2-core machine); a test module
    makes it autouse with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
