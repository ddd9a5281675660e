"""Helpers of bench/gpu_check.sh: synthetic train shards, a synthetic logit cache, and the summary of the stages'
JSON figures.

    python bench/gpu_check.py data DIR --tokens N [--vocab 1024]   # DIR/synth_train_000000.bin (+ a val shard)
    python bench/gpu_check.py cache DIR OUT [--k 32]               # an fp16 cache of DIR's train shards in OUT
    python bench/gpu_check.py summary OUTDIR                        # OUTDIR/gpu_check.json + one summary line
"""
import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from golf.atomic import atomic_write_text
from golf.errors import GolfError, cli_main
from golf.cache import CacheSpec, CacheWriter
from golf.shards import list_shards, load_shard, write_shard

_CHUNK = 1 << 20  # rows per write


def make_data(out: str, tokens: int, vocab: int, seed: int = 0):
    """One train shard of `tokens` uniform random ids and a small val shard: timing needs shapes, not text."""
    if tokens <= 0 or not 0 < vocab <= 1 << 16:
        raise GolfError(f"need --tokens > 0 and 0 < --vocab <= 65536, got {tokens} and {vocab}")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_shard(os.path.join(out, "synth_train_000000.bin"), rng.integers(0, vocab, tokens, dtype=np.uint16))
    write_shard(os.path.join(out, "synth_val_000000.bin"), rng.integers(0, vocab, 65536, dtype=np.uint16))
    print(f"data: {out} train tokens {tokens} vocab {vocab}")


def make_cache(data: str, out: str, k: int, vocab: int):
    """A complete fp16 cache of `data`'s train shards without a teacher: row t holds K distinct ids starting at the
    true next token, with one fixed descending log-prob profile. The read path and the loss cost the same for
    any content; the teacher's own cost is measured by the cache_write stage."""
    files = list_shards(data, "train")
    spec = CacheSpec(k=k, vocab_size=vocab, encoding="fp16", teacher_sha256="0" * 64, teacher_config={"synthetic": True},
                     window=2048, stride=2048)
    writer = CacheWriter(out, files, spec)
    profile = -0.25 * np.arange(k, dtype=np.float32)
    vals_row = profile - np.log(np.exp(profile).sum() / 0.9)  # the top-K holds 90% of the mass
    for i, path in enumerate(files):
        tokens = load_shard(path)
        with writer.open_shard(i) as sw:
            for a in range(0, len(tokens), _CHUNK):
                nxt = np.asarray(tokens[a + 1:a + _CHUNK + 1], dtype=np.int64)
                n = min(_CHUNK, len(tokens) - a)
                nxt = np.pad(nxt, (0, n - len(nxt)))  # the stream's last row has no next token here: any id will do
                idx = (nxt[:, None] + np.arange(k)) % vocab
                sw.write(a, idx, np.broadcast_to(vals_row.astype(np.float16), (n, k)))
            sw.commit()
    writer.finalize()
    print(f"cache: {out} k {k} rows {sum(len(load_shard(p)) for p in files)}")


def _load(path: str) -> dict | None:
    if not os.path.isfile(path):
        print(f"missing {path}: that stage failed or ran out of time (see its .log beside it)")
        return None
    with open(path) as f:
        return json.load(f)


def summary(out: str):
    """Merge the stages' figures into OUTDIR/gpu_check.json and print the summary line."""
    step, write = _load(os.path.join(out, "distill_step.json")), _load(os.path.join(out, "cache_write.json"))
    fig = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "stages": {"distill_step": step, "cache_write": write},
    }
    if step is not None:
        arms = step["arms"]
        fig |= {"student_step_ms": {name: a["median_ms"] for name, a in arms.items()}, "rounds": step["rounds"],
                "soft_ratio": arms["soft"]["paired_ratio"], "soft_ci95": arms["soft"]["paired_ci95"],
                "soft_ratio_of_medians": arms["soft"]["ratio_of_medians"]}
    if write is not None:
        fig |= {"teacher_forward_tokens_per_s": float(np.median(write["forward_tokens_per_s"])),
                "cache_write_tokens_per_s": float(np.median(write["cache_tokens_per_s"])),
                "cache_write_ratio": write["ratio"], "cache_write_ci95": write["ratio_ci95"]}
    atomic_write_text(os.path.join(out, "gpu_check.json"), json.dumps(fig, indent=1) + "\n")
    line = [f"device={fig['device'].replace(' ', '_')}"]
    if step is not None:
        line += [f"baseline_ms={fig['student_step_ms']['baseline']:.1f}", f"soft_ms={fig['student_step_ms']['soft']:.1f}",
                 f"soft_ratio={fig['soft_ratio']:.3f}", f"rounds={fig['rounds']}"]
    if write is not None:
        line += [f"teacher_fwd_tok_s={fig['teacher_forward_tokens_per_s']:.0f}",
                 f"cache_tok_s={fig['cache_write_tokens_per_s']:.0f}", f"cache_write_ratio={fig['cache_write_ratio']:.3f}"]
    print("gpu_check " + " ".join(line))
    if step is None or write is None:
        raise GolfError(f"some stages gave no figures; see the logs in {out}")


@cli_main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write synthetic shards")
    d.add_argument("dir")
    d.add_argument("--tokens", type=int, required=True)
    d.add_argument("--vocab", type=int, default=1024)
    c = sub.add_parser("cache", help="write a synthetic fp16 logit cache")
    c.add_argument("dir")
    c.add_argument("out")
    c.add_argument("--k", type=int, default=32)
    c.add_argument("--vocab", type=int, default=1024)
    s = sub.add_parser("summary", help="merge the stages' JSON")
    s.add_argument("outdir")
    args = ap.parse_args()
    if args.cmd == "data":
        make_data(args.dir, args.tokens, args.vocab)
    elif args.cmd == "cache":
        make_cache(args.dir, args.out, args.k, args.vocab)
    else:
        summary(args.outdir)


if __name__ == "__main__":
    main()
