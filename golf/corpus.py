"""Text corpora -> a SentencePiece tokenizer and challenge-format token shards.

Two sources of documents:
- the demo corpus, English prose that ships with every Python (the `pydoc_data` help topics and
  the standard library's docstrings), so the whole pipeline runs anywhere without a download;
- the user's files: `.jsonl` (one JSON object per line, its `text` field is a document, like the
  challenge's docs_selected.jsonl) or plain text (documents separated by one or more blank lines).

The dataset is built the way the challenge exports FineWeb (fact sheet 1.1-1.2): the tokenizer is
trained on the train documents only, every document is written as [BOS] + ids (no EOS), and the
documents are concatenated and cut into fixed-size shards regardless of document boundaries.
The validation set repeats no long span of the training text: validation documents that share one with
the train documents are dropped (golf/dedup.py).
"""
import ast
import gc
import hashlib
import io
import json
import os
import re
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from golf.atomic import atomic_write_bytes, atomic_write_text
from golf.dedup import DEDUP_TOKENS, dedup_val, report_line
from golf.errors import GolfError
from golf.shards import write_shard
from golf.tokenizer import file_sha256, load_tokenizer

CHALLENGE_SHARD_TOKENS = 10**8
# SentencePiece silently drops training sentences longer than max_sentence_length (default 4192
# bytes): fed whole documents it loses most of the corpus. We cut sentences below it instead.
MAX_SENTENCE_BYTES = 4192
# The challenge's tokenizer spec (sp_bpe_1024), except vocab_size which is a parameter.
SPM_OPTIONS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    hard_vocab_limit=False,
)
# Folders of the standard library whose text is code samples, test data or vendored packages.
_SKIP_DIRS = {"test", "tests", "idle_test", "lib2to3", "ensurepip", "turtledemo", "site-packages", "dist-packages", "__pycache__"}


# ---------------------------------------------------------------------------------------------
# Documents


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        # Definitions only live in statement bodies: skipping expressions makes this ~3x faster.
        if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
            yield from _docstrings(child)


def _topics(tree: ast.Module) -> dict[str, str]:
    """The `topics = {...}` literal of pydoc_data/topics.py, read without importing it."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def iter_demo_documents() -> Iterator[tuple[str, str]]:
    """Yield (name, text) of the demo corpus in name order: one document per help topic and per
    standard-library file with docstrings. Nothing is imported, so the text is the same on every run.

    The corpus depends on the Python install (version, whether idlelib/tkinter are there), which is
    why build manifests record its sha256 and the Python version.
    """
    # Parsing makes millions of short-lived objects; if torch is imported the cyclic GC rescans its
    # objects again and again (2x slower). Freezing what exists takes it out of every scan.
    gc.freeze()
    stdlib = sysconfig.get_paths()["stdlib"]
    if not os.path.isfile(os.path.join(stdlib, "os.py")):
        raise GolfError(f"no Python standard library sources at {stdlib}: the demo corpus needs them; use --input FILE instead")
    files = []
    for folder, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        rel = os.path.relpath(folder, stdlib)
        files += [(os.path.normpath(os.path.join(rel, n)).replace(os.sep, "/"), os.path.join(folder, n)) for n in names if n.endswith(".py")]
    # A topic is named "pydoc_data/topics.py:<key>", so yielding a file's topics (sorted) at the
    # file's own place in the sorted file list keeps the whole stream sorted by name.
    for name, path in sorted(files):
        with open(path, "rb") as f:
            source = f.read()
        try:
            tree = ast.parse(source)  # bytes: ast honours the file's coding cookie
        except (SyntaxError, ValueError):
            continue  # e.g. a distribution's Python 2 leftovers: skip them rather than fail
        if name == "pydoc_data/topics.py":
            for key, text in sorted(_topics(tree).items()):
                yield f"{name}:{key}", text
        else:
            text = "\n\n".join(_docstrings(tree))
            if text:
                yield name, text


def demo_documents(max_bytes: int | None = None) -> list[str]:
    """The demo corpus as a list of texts in name order; with `max_bytes`, only its first documents
    up to about that many UTF-8 bytes (tests use a slice: it is fast because later files are not parsed)."""
    docs, total = [], 0
    with tqdm(desc="demo corpus", unit="doc", disable=None) as bar:
        for _, text in iter_demo_documents():
            docs.append(text)
            total += len(text.encode("utf-8"))
            bar.update()
            if max_bytes is not None and total >= max_bytes:
                break
    return docs


def read_documents(paths: Iterable[str]) -> list[str]:
    """Documents from the user's files, in the order given: `.jsonl` -> the `text` field of each
    line; anything else is UTF-8 plain text where blank lines separate documents."""
    docs = []
    for path in paths:
        if not os.path.isfile(path):
            raise GolfError(f"input file {path} not found")
        try:
            with open(path, encoding="utf-8") as f:
                if path.endswith(".jsonl"):
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            text = json.loads(line)["text"]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise GolfError(f"{path}:{lineno}: not a JSON object with a `text` field; fix the line or use plain text") from None
                        if not isinstance(text, str):
                            raise GolfError(f"{path}:{lineno}: `text` must be a string, got {type(text).__name__}")
                        docs.append(text)
                else:
                    docs += [d.strip() for d in re.split(r"\n[ \t]*\n", f.read()) if d.strip()]
        except UnicodeDecodeError as e:
            raise GolfError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    return docs


def split_train_val(docs: list[str], val_every: int = 10) -> tuple[list[str], list[str]]:
    """Every `val_every`-th document (the 10th, 20th, ...) is held out for validation, the rest is train."""
    if val_every < 2:
        raise GolfError(f"--val-every must be >= 2, got {val_every}")
    val = docs[val_every - 1 :: val_every]
    if not val:
        raise GolfError(f"only {len(docs)} documents: need at least {val_every} to hold one out for validation")
    train = [d for i, d in enumerate(docs) if (i + 1) % val_every]
    return train, val


def corpus_sha256(docs: Iterable[str]) -> str:
    """Hex sha256 of a document list (length-prefixed, so document boundaries count too)."""
    h = hashlib.sha256()
    for doc in docs:
        b = doc.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Tokenizer


def training_sentences(docs: Iterable[str]) -> Iterator[str]:
    """The tokenizer's training text: NUL -> space and strip (as the challenge does), then
    paragraphs; a paragraph too long for SentencePiece falls back to its lines, a line to chunks."""
    for doc in docs:
        for para in re.split(r"\n\s*\n", doc.replace("\x00", " ").strip()):
            parts = [para] if len(para.encode("utf-8")) <= MAX_SENTENCE_BYTES else para.split("\n")
            for part in parts:
                if len(part.encode("utf-8")) > MAX_SENTENCE_BYTES:
                    step = MAX_SENTENCE_BYTES // 4  # a character is at most 4 UTF-8 bytes
                    yield from (part[i : i + step].strip() for i in range(0, len(part), step))
                elif part.strip():
                    yield part.strip()


def train_tokenizer(docs: list[str], path: str, vocab_size: int = 1024) -> str:
    """Train a BPE SentencePiece model with the challenge's options on `docs` and write it atomically to `path`."""
    sentences = [s for s in training_sentences(docs) if s]
    if not sentences:
        raise GolfError("no text to train the tokenizer on: the train documents are empty")
    print(f"tokenizer: training BPE vocab {vocab_size} on {len(sentences)} sentences...", flush=True)
    t0 = time.time()
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=1,  # the merge order must not depend on thread scheduling
            minloglevel=2,  # SentencePiece's own log is hundreds of lines
            **SPM_OPTIONS,
        )
    except RuntimeError as e:  # e.g. a vocab too small for the 4 specials + 256 byte pieces
        raise GolfError(f"SentencePiece could not train a {vocab_size}-piece tokenizer: {e}; change --vocab-size") from None
    # hard_vocab_limit=False lets a too-small corpus give fewer pieces: refuse before writing anything.
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue()).vocab_size()
    if pieces != vocab_size:
        raise GolfError(f"the train text only supports {pieces} pieces, not vocab size {vocab_size}; give more text or a smaller --vocab-size")
    atomic_write_bytes(path, model.getvalue())
    print(f"tokenizer: wrote {path} in {time.time() - t0:.1f}s", flush=True)
    return path


# ---------------------------------------------------------------------------------------------
# Shards


def encode_documents(sp: spm.SentencePieceProcessor, docs: list[str], desc: str) -> list[np.ndarray]:
    """Each document as a uint16 array of its ids (no BOS)."""
    out, batch = [], 256  # SentencePiece encodes a list of texts on all cores
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=None) as bar:
        for start in range(0, len(docs), batch):
            out += [np.asarray(ids, dtype=np.uint16) for ids in sp.encode(docs[start : start + batch])]
            bar.update(min(batch, len(docs) - start))
    return out


def write_split(docs_ids: list[np.ndarray], bos: int, out_dir: str, prefix: str, shard_tokens: int) -> tuple[list[str], int]:
    """Write the documents as [BOS] + ids each, concatenated and cut into `{prefix}_{i:06d}.bin` shards of
    `shard_tokens` tokens (the last one shorter). Returns (paths, total tokens)."""
    if shard_tokens < 1:
        raise GolfError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    paths, pending, n_pending, total = [], [], 0, 0

    def flush(n: int) -> None:
        nonlocal pending, n_pending
        buf = np.concatenate(pending)
        path = os.path.join(out_dir, f"{prefix}_{len(paths):06d}.bin")
        write_shard(path, buf[:n])
        paths.append(path)
        pending, n_pending = [buf[n:]], len(buf) - n

    for ids in docs_ids:
        tokens = np.empty(len(ids) + 1, dtype=np.uint16)
        tokens[0], tokens[1:] = bos, ids
        pending.append(tokens)
        n_pending += len(tokens)
        total += len(tokens)
        while n_pending >= shard_tokens:
            flush(shard_tokens)
    if n_pending:
        flush(n_pending)
    return paths, total


@dataclass
class DatasetPaths:
    data_path: str  # the dataset folder (DATA_PATH)
    tokenizer_path: str  # TOKENIZER_PATH
    train_files: list[str]
    val_files: list[str]
    manifest_path: str
    val_docs: list[str]  # the validation documents written (those left after deduplication)
    dedup: dict | None  # golf.dedup.dedup_val's report, None when deduplication was off


def _dedup_val(train_ids, val_ids, docs_val, span_tokens: int):
    """(val ids, val docs, report) without the documents that share a `span_tokens`-token span with train."""
    if not span_tokens:
        return val_ids, docs_val, None
    keep, report = dedup_val(train_ids, val_ids, span_tokens)
    print(report_line(report), flush=True)
    if not any(keep):
        raise GolfError(f"every validation document shares a {span_tokens}-token span with the train documents; "
                        "give more distinct text, a larger --val-every, or --dedup-tokens 0 to keep them")
    return [x for x, k in zip(val_ids, keep) if k], [d for d, k in zip(docs_val, keep) if k], report


def _write_splits(data_path: str, name: str, shard_tokens: int, bos: int, splits_docs: dict) -> dict:
    """Write each split's shards, remove stale shards of an earlier build; the manifest's `splits` entry."""
    splits = {}
    for split, (docs, ids) in splits_docs.items():
        paths, tokens = write_split(ids, bos, data_path, f"{name}_{split}", shard_tokens)
        splits[split] = dict(
            docs=len(docs),
            tokens=tokens,
            text_bytes=sum(len(d.encode("utf-8")) for d in docs),
            corpus_sha256=corpus_sha256(docs),
            shards=[os.path.basename(p) for p in paths],
        )
        keep = set(splits[split]["shards"])
        for stale in os.listdir(data_path):
            if re.fullmatch(rf"{re.escape(name)}_{split}_\d+\.bin", stale) and stale not in keep:
                os.remove(os.path.join(data_path, stale))
    return splits


def build_dataset(
    docs_train: list[str],
    docs_val: list[str],
    name: str,
    out_dir: str = "data",
    shard_tokens: int = CHALLENGE_SHARD_TOKENS,
    vocab_size: int = 1024,
    tokenizer_path: str | None = None,
    dedup_tokens: int = DEDUP_TOKENS,
) -> DatasetPaths:
    """Write `{out_dir}/tokenizers/{name}_{V}_bpe.model` (trained on `docs_train` only, unless an
    existing `tokenizer_path` is given) and `{out_dir}/datasets/{name}_sp{V}/{name}_{train,val}_*.bin`
    plus a manifest.json describing the build. Validation documents that share a `dedup_tokens`-token
    span with the train documents are dropped (0: keep all); the train split is written as given. Shards of
    an earlier build with the same name that this build does not overwrite are removed, so the folder never
    mixes two builds."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", name):
        raise GolfError(f"dataset name {name!r} must be letters, digits, '.' or '-' (no '_': shard names are split on it)")
    if not 0 < vocab_size <= 2**16:
        raise GolfError(f"vocab size {vocab_size} must be in [1, 65536] to fit uint16 shards")
    if not docs_train or not docs_val:
        raise GolfError(f"need train and val documents, got {len(docs_train)} train and {len(docs_val)} val")
    if dedup_tokens < 0:
        raise GolfError(f"--dedup-tokens must be >= 0 (0 = off), got {dedup_tokens}")
    data_path = os.path.join(out_dir, "datasets", f"{name}_sp{vocab_size}")
    if tokenizer_path is None:
        tokenizer_path = os.path.join(out_dir, "tokenizers", f"{name}_{vocab_size}_bpe.model")
        train_tokenizer(docs_train, tokenizer_path, vocab_size)
    sp = load_tokenizer(tokenizer_path, vocab_size)
    if sp.bos_id() < 0:
        raise GolfError("the tokenizer has no BOS piece, but every document starts with BOS; train it with bos_id=1")
    train_ids = encode_documents(sp, docs_train, f"{name}_train")
    val_ids, kept_val, dedup = _dedup_val(train_ids, encode_documents(sp, docs_val, f"{name}_val"), docs_val, dedup_tokens)
    manifest_path = os.path.join(data_path, "manifest.json")
    os.makedirs(data_path, exist_ok=True)
    # A manifest describes a finished build: drop the old one first so an interrupted rebuild has none.
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    splits = _write_splits(data_path, name, shard_tokens, sp.bos_id(), {"train": (docs_train, train_ids), "val": (kept_val, val_ids)})
    manifest = dict(
        name=name,
        python_version=sys.version.split()[0],
        corpus_sha256=corpus_sha256(docs_train + docs_val),  # the input corpus, before deduplication
        vocab_size=vocab_size,
        shard_tokens=shard_tokens,
        bos_id=sp.bos_id(),
        tokenizer=os.path.basename(tokenizer_path),
        tokenizer_sha256=file_sha256(tokenizer_path),
        dedup=dedup,
        splits=splits,
    )
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    train_files = [os.path.join(data_path, s) for s in splits["train"]["shards"]]
    val_files = [os.path.join(data_path, s) for s in splits["val"]["shards"]]
    return DatasetPaths(data_path, tokenizer_path, train_files, val_files, manifest_path, kept_val, dedup)
