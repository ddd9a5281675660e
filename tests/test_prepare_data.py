"""Corpus, tokenizer training, dataset building and the prepare_data.py CLI: python -m pytest tests/test_prepare_data.py -q"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from golf.corpus import (
    MAX_SENTENCE_BYTES,
    build_dataset,
    demo_documents,
    iter_demo_documents,
    read_documents,
    split_train_val,
    training_sentences,
)
from golf.dedup import DEDUP_TOKENS, SpanIndex, dedup_val, overlap, span_hashes
from golf.errors import GolfError
from golf.shards import HEADER_BYTES, load_shard
from golf.tokenizer import file_sha256, load_tokenizer
from helpers import CHALLENGE_TOKENIZER, REPO, needs_challenge_tokenizer



def test_demo_corpus_is_deterministic_and_big_enough():
    named = list(iter_demo_documents())
    names = [n for n, _ in named]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert [t for _, t in named] == demo_documents()  # a second extraction gives the same text
    assert len(named) > 300 and sum(len(t.encode("utf-8")) for _, t in named) > 1_000_000
    assert any(n.startswith("pydoc_data/topics.py:") for n in names)  # the help topics are in
    skipped = {"test", "tests", "idle_test", "lib2to3", "ensurepip", "turtledemo", "site-packages"}
    assert not any(skipped & set(n.split("/")[:-1]) for n in names)


def test_split_train_val():
    docs = [f"doc{i}" for i in range(25)]
    train, val = split_train_val(docs)
    assert val == ["doc9", "doc19"]
    assert train == [d for d in docs if d not in val]
    with pytest.raises(GolfError, match="at least 10"):
        split_train_val(docs[:9])


def test_training_sentences_fit_sentencepiece_limit():
    """Nothing is silently dropped: long paragraphs are cut below max_sentence_length, all text kept."""
    long_para = "\n".join(f"line {i} " + "word " * 40 for i in range(100))  # ~21 KB, no blank line
    one_line = "é" * 5000  # 10 KB in a single line
    docs = ["short\x00para\n\n" + long_para, one_line]
    sentences = list(training_sentences(docs))
    assert sentences[0] == "short para"  # NUL -> space, as the challenge does
    assert all(0 < len(s.encode("utf-8")) <= MAX_SENTENCE_BYTES for s in sentences)
    squash = lambda s: "".join(s.replace("\x00", " ").split())
    assert squash("".join(sentences)) == squash("".join(docs))


def test_read_documents(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first doc\\n\\nstill first"}\n\n{"text": "second"}\n')
    (tmp_path / "b.txt").write_text("para one\nline two\n\n \n\npara two\n")
    assert read_documents([str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")]) == [
        "first doc\n\nstill first",
        "second",
        "para one\nline two",
        "para two",
    ]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(GolfError, match="bad.jsonl:2: not a JSON object with a `text` field"):
        read_documents([str(tmp_path / "bad.jsonl")])
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(GolfError, match="not UTF-8"):
        read_documents([str(tmp_path / "latin1.txt")])


def test_tiny_dataset_shards_hold_bos_plus_ids(tiny_dataset):
    """Concatenated shards are exactly [BOS] + ids per document, cut into fixed-size shards."""
    sp = load_tokenizer(tiny_dataset.tokenizer_path, tiny_dataset.vocab_size)
    for files, docs in ((tiny_dataset.train_files, tiny_dataset.train_docs), (tiny_dataset.val_files, tiny_dataset.val_docs)):
        sizes = [len(load_shard(p)) for p in files]
        assert all(s == 20_000 for s in sizes[:-1]) and 0 < sizes[-1] <= 20_000
        stream = np.concatenate([load_shard(p) for p in files])
        expected = np.concatenate([[1] + sp.encode(d) for d in docs])
        np.testing.assert_array_equal(stream, expected)
    assert len(tiny_dataset.train_files) >= 3
    manifest = json.load(open(os.path.join(tiny_dataset.data_path, "manifest.json")))
    assert manifest["splits"]["val"]["docs"] == len(tiny_dataset.val_docs)
    assert manifest["splits"]["train"]["tokens"] == sum(len(load_shard(p)) for p in tiny_dataset.train_files)


def test_build_is_deterministic_and_rebuild_removes_stale_shards(tmp_path, tiny_dataset):
    train, val = tiny_dataset.train_docs, tiny_dataset.val_docs
    a = build_dataset(train, val, "t", str(tmp_path / "a"), shard_tokens=10_000)
    b = build_dataset(train, val, "t", str(tmp_path / "b"), shard_tokens=10_000)
    for pa, pb in zip([a.tokenizer_path, a.manifest_path] + a.train_files + a.val_files, [b.tokenizer_path, b.manifest_path] + b.train_files + b.val_files):
        assert open(pa, "rb").read() == open(pb, "rb").read(), pa
    assert len(a.train_files) > 3
    c = build_dataset(train, val, "t", str(tmp_path / "a"), shard_tokens=50_000)  # same folder, fewer shards
    assert sorted(f for f in os.listdir(c.data_path) if f.endswith(".bin")) == sorted(os.path.basename(p) for p in c.train_files + c.val_files)


@needs_challenge_tokenizer
def test_build_with_existing_tokenizer(tmp_path, tiny_dataset):
    """--tokenizer: shards are made with the given model (here the challenge's) and no tokenizer is trained."""
    out = build_dataset(tiny_dataset.train_docs[:20], tiny_dataset.val_docs, "fw", str(tmp_path), shard_tokens=7_000,
                        tokenizer_path=CHALLENGE_TOKENIZER, dedup_tokens=0)
    assert out.tokenizer_path == CHALLENGE_TOKENIZER and not os.path.exists(tmp_path / "tokenizers")
    sp = load_tokenizer(CHALLENGE_TOKENIZER, 1024)
    stream = np.concatenate([load_shard(p) for p in out.val_files])
    np.testing.assert_array_equal(stream, np.concatenate([[1] + sp.encode(d) for d in tiny_dataset.val_docs]))
    assert json.load(open(out.manifest_path))["tokenizer_sha256"] == file_sha256(CHALLENGE_TOKENIZER)


def _spans(docs, n):
    """Brute force: every n-token window inside each document, as tuples."""
    return [tuple(int(t) for t in d[i : i + n]) for d in docs for i in range(len(d) - n + 1)]


def test_span_overlap_and_dedup_match_brute_force():
    """On a hand-made corpus (4 token ids, so many spans repeat; planted copies; documents shorter than n), the
    hashed counts, the overlap share and the documents kept equal those of exact tuple sets."""
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 4, size=rng.integers(0, 60)) for _ in range(30)]
    val = [rng.integers(0, 4, size=rng.integers(0, 60)) for _ in range(30)]
    val += [train[3][5:40].copy(), np.concatenate([train[7][:6], [9, 9, 9], train[8][-6:]]), np.array([2, 1])]
    for n in (1, 3, 6, 9, 12):
        train_set = set(_spans(train, n))
        index = SpanIndex(train, n)
        for d in val:
            spans = _spans([d], n)
            assert index.shared(d) == (sum(s in train_set for s in spans), len(spans))
            assert len(span_hashes(d, n)) == len(spans)
        expected = [s in train_set for s in _spans(val, n)]
        assert overlap(index, val) == pytest.approx(sum(expected) / len(expected))
        keep, report = dedup_val(train, val, n, report_n=(2,))
        assert keep == [not any(s in train_set for s in _spans([d], n)) for d in val]
        kept = [d for d, k in zip(val, keep) if k]
        assert report["val_docs"] == [len(val), len(kept)]
        assert report["overlap"][str(n)] == [pytest.approx(overlap(index, val)), 0.0]
        two = set(_spans(train, 2))
        shared_after = [s in two for s in _spans(kept, 2)]
        assert report["overlap"]["2"][1] == pytest.approx(sum(shared_after) / max(1, len(shared_after)))
    assert 0 < sum(keep) < len(val)  # the check above saw documents kept and dropped


def _doc_spans(files, n):
    """The n-token spans inside each document of a shard stream (documents start at BOS = 1)."""
    stream = np.concatenate([load_shard(p) for p in files])
    return set(_spans(np.split(stream, np.flatnonzero(stream == 1)), n))


def test_tiny_dataset_val_shares_no_long_span_with_train(tiny_dataset):
    """The shards as written: no DEDUP_TOKENS-token span of a val document occurs in a train document."""
    val = _doc_spans(tiny_dataset.val_files, DEDUP_TOKENS)
    assert val and not (val & _doc_spans(tiny_dataset.train_files, DEDUP_TOKENS))


def test_build_drops_val_documents_that_repeat_train_text(tmp_path, tiny_dataset):
    train, own = tiny_dataset.train_docs, tiny_dataset.val_docs[0]
    copied = "An introduction of our own. " + train[5]  # a train document inside a val document
    out = build_dataset(train, [copied, own], "d", str(tmp_path / "a"), shard_tokens=50_000)
    assert out.val_docs == [own] and out.dedup["val_docs"] == [2, 1]
    assert json.load(open(out.manifest_path))["splits"]["val"]["docs"] == 1
    assert out.dedup["overlap"][str(DEDUP_TOKENS)][0] > 0 and out.dedup["overlap"][str(DEDUP_TOKENS)][1] == 0
    kept = build_dataset(train, [copied, own], "d", str(tmp_path / "b"), shard_tokens=50_000, dedup_tokens=0)
    assert kept.val_docs == [copied, own] and kept.dedup is None
    with pytest.raises(GolfError, match="every validation document shares a 32-token span"):
        build_dataset(train, [copied], "d", str(tmp_path / "c"), shard_tokens=50_000)


def test_too_little_text_for_the_vocab(tmp_path):
    with pytest.raises(GolfError, match="only supports .* pieces, not vocab size 1024"):
        build_dataset(["tiny text"] * 10, ["val"], "small", str(tmp_path), shard_tokens=100)
    assert not os.path.exists(tmp_path / "tokenizers" / "small_1024_bpe.model")


def run_cli(*args):
    env = {**os.environ, "DEBUG": "0"}  # a user's DEBUG=1 would turn the one-line errors into tracebacks
    return subprocess.run([sys.executable, os.path.join(REPO, "prepare_data.py"), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_build_and_check(tmp_path, tiny_dataset):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in tiny_dataset.train_docs + tiny_dataset.val_docs))
    out = tmp_path / "data"
    r = run_cli("--input", str(corpus), "--name", "mine", "--out-dir", str(out), "--shard-tokens", "15000")
    assert r.returncode == 0, r.stderr
    data_path = out / "datasets" / "mine_sp1024"
    manifest = json.load(open(data_path / "manifest.json"))
    assert f"DATA_PATH={data_path}" in r.stdout
    d = manifest["dedup"]
    assert f"dedup: val docs {d['val_docs'][0]} -> {d['val_docs'][1]}" in r.stdout and "32-token " in r.stdout

    r = run_cli("--check", str(data_path))
    assert r.returncode == 0, r.stderr
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert f"{split}: {len(info['shards'])} shards, {info['tokens']:,} tokens" in r.stdout

    r = run_cli("--check", str(data_path), "--vocab-size", "300")  # ids up to 1023 do not fit
    assert r.returncode == 2 and "is >= vocab size 300" in r.stderr

    shard = data_path / manifest["splits"]["train"]["shards"][1]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 10)
    r = run_cli("--check", str(data_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {shard}: file size") and "truncated" in lines[0]
    n = len(manifest["splits"]["train"]["shards"]) + len(manifest["splits"]["val"]["shards"])
    assert lines[1].startswith(f"error: 1 of {n} shards in {data_path} is bad ({shard.name}: each line above says why)")

    # every bad shard is reported, one line each, then the count: a bad magic, a bad id, a truncated val shard
    first = data_path / manifest["splits"]["train"]["shards"][0]
    with open(first, "r+b") as f:
        f.write(np.array([1234], dtype="<i4").tobytes())
    last = data_path / manifest["splits"]["train"]["shards"][-1]
    with open(last, "r+b") as f:
        f.seek(HEADER_BYTES + 2 * 3)
        f.write(np.array([2000], dtype="<u2").tobytes())
    val = data_path / manifest["splits"]["val"]["shards"][0]
    with open(val, "r+b") as f:
        f.truncate(os.path.getsize(val) - 2)
    r = run_cli("--check", str(data_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 5, r.stderr
    assert lines[0] == f"error: {first}: bad magic 1234 (expected 20240520): not a challenge shard; re-create it with prepare_data.py"
    assert lines[1].startswith(f"error: {shard}: file size") and lines[3].startswith(f"error: {val}: file size")
    assert lines[2].startswith(f"error: {last}: token id 2000 at position 3 is >= vocab size 1024")
    assert lines[4].startswith(f"error: 4 of {n} shards in {data_path} are bad ({first.name}, {shard.name}, "
                               f"{last.name}, {val.name}: each line above says why)")
    assert "train:" not in r.stdout and "val:" not in r.stdout  # no split is reported good

    r = run_cli("--input", str(corpus), "--out-dir", str(out))
    assert r.returncode == 2 and "--input needs --name" in r.stderr
