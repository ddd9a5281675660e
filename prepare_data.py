"""Make a tokenizer and challenge-format token shards, or check existing shards.

Usage:
    python prepare_data.py --demo                       # demo corpus shipped with Python, ~2 MB, a few seconds
    python prepare_data.py --input a.jsonl b.txt --name mytext
    python prepare_data.py --check data/datasets/fineweb10B_sp1024 [--vocab-size 1024]

Output (for --demo the name is `demo`):
    {out-dir}/tokenizers/{name}_{V}_bpe.model                    -> TOKENIZER_PATH
    {out-dir}/datasets/{name}_sp{V}/{name}_{train,val}_NNNNNN.bin  -> DATA_PATH is that folder
    {out-dir}/datasets/{name}_sp{V}/manifest.json                 (what was built from what)

Input files: `.jsonl` holds one JSON object per line whose `text` field is a document (like the
challenge's docs_selected.jsonl); any other file is UTF-8 text in which blank lines separate
documents. Every --val-every-th document goes to val; the tokenizer (BPE with the challenge's
SentencePiece options) is trained on the train documents only, unless --tokenizer reuses one.
Validation documents that share a --dedup-tokens-token span with the train documents are dropped (the
line `dedup: ...` reports how many and the overlap before and after; --dedup-tokens 0 keeps them all).
Each document becomes [BOS] + ids, concatenated and cut into --shard-tokens-token shards.
"""
import argparse
import os
import sys

from tqdm import tqdm

from golf.corpus import CHALLENGE_SHARD_TOKENS, build_dataset, demo_documents, read_documents, split_train_val
from golf.dedup import DEDUP_TOKENS
from golf.errors import GolfError, cli_main
from golf.shards import list_shards, read_header, shard_problem

DEMO_SHARD_TOKENS = 100_000  # the demo's ~750k train tokens then span several shards, as real data does


# --check DIR names its own folder: DATA_PATH and the demo hint are the training scripts' business.
CHECK_HINT = ("give the folder that holds the *_train_*.bin and *_val_*.bin shards: `prepare_data.py` writes "
              "data/datasets/NAME_spV; FineWeb's come from the challenge's downloader "
              "(`python data/cached_challenge_fineweb.py --variant sp1024` in a clone of openai/parameter-golf)")


def check(data_path: str, vocab_size: int) -> None:
    """Validate every shard of both splits in `data_path`: one `error:` line per bad shard, then one summary
    line (a GolfError: exit 2) naming them; all good, shards and tokens per split."""
    bad, total = [], 0
    for split in ("train", "val"):
        paths = list_shards(data_path, split, source="--check DIR", hint=CHECK_HINT)
        total += len(paths)
        problems = [shard_problem(p, vocab_size) for p in tqdm(paths, desc=f"check {split}", unit="shard", disable=None)]
        for path, problem in zip(paths, problems):
            if problem:
                print(f"error: {problem}", file=sys.stderr, flush=True)
                bad.append(os.path.basename(path))
        if not any(problems):
            print(f"{split}: {len(paths)} shards, {sum(read_header(p) for p in paths):,} tokens, all ids < {vocab_size}")
    if bad:
        raise GolfError(f"{len(bad)} of {total} shards in {data_path} {'is' if len(bad) == 1 else 'are'} bad "
                        f"({', '.join(bad)}: each line above says why); re-create them with prepare_data.py or "
                        "fetch them again")


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--demo", action="store_true", help="build the demo dataset from text shipped with Python")
    mode.add_argument("--input", nargs="+", metavar="FILE", help="build a dataset from these .jsonl / text files")
    mode.add_argument("--check", metavar="DIR", help="validate the shards in DIR and print their sizes")
    parser.add_argument("--name", help="dataset name for --input (letters, digits, '.', '-')")
    parser.add_argument("--out-dir", default="data", help="root folder of tokenizers/ and datasets/ (default: data)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary size (default: 1024)")
    parser.add_argument("--shard-tokens", type=int, help=f"tokens per shard (default: {DEMO_SHARD_TOKENS:,} for --demo, {CHALLENGE_SHARD_TOKENS:,} otherwise)")
    parser.add_argument("--val-every", type=int, default=10, help="every N-th document goes to val (default: 10)")
    parser.add_argument("--dedup-tokens", type=int, default=DEDUP_TOKENS,
                        help=f"drop val documents sharing a span this long (tokens) with train; 0 = off (default: {DEDUP_TOKENS})")
    parser.add_argument("--tokenizer", metavar="MODEL", help="use this SentencePiece model instead of training one")
    args = parser.parse_args()

    if args.check:
        check(args.check, args.vocab_size)
        return
    if args.demo:
        name, docs = "demo", demo_documents()
        shard_tokens = args.shard_tokens or DEMO_SHARD_TOKENS
    else:
        if not args.name:
            raise GolfError("--input needs --name NAME (the dataset and tokenizer file names are made from it)")
        name, docs = args.name, read_documents(args.input)
        shard_tokens = args.shard_tokens or CHALLENGE_SHARD_TOKENS
    train, val = split_train_val(docs, args.val_every)
    print(f"{name}: {len(train)} train and {len(val)} val documents")
    out = build_dataset(train, val, name, args.out_dir, shard_tokens, args.vocab_size, args.tokenizer, args.dedup_tokens)
    print(f"wrote {len(out.train_files)} train and {len(out.val_files)} val shards and {out.manifest_path}")
    print(f"use: DATA_PATH={out.data_path} TOKENIZER_PATH={out.tokenizer_path} VOCAB_SIZE={args.vocab_size}")


if __name__ == "__main__":
    main()
