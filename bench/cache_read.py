"""Benchmark: what reading the logit cache costs a training step, fp16 against packed, and what packing loses.

    python bench/cache_read.py [--preset demo-student] [--teacher CKPT | --teacher-preset demo-teacher]
                               [--shards 1] [--k 32] [--reps 30] [--rows 0] [--cache-dir DIR] [--no-distortion]

1. A float16 cache of the first --shards train shards is written by the real builder (golf.cache_build) from
   the teacher (a trained checkpoint with --teacher; otherwise a random model of --teacher-preset's shape,
   fine for timing but not for the distortion figures), or --cache-dir names one. The packed cache is encoded
   from those same rows (byte-identical to what `cache_logits.py --encoding packed` writes: the builder also
   packs fp16 values).
2. Distortion of packed against fp16, over every cached row: mean and max KL(p_fp16 || p_packed) of the
   teacher distribution the loss sees (top-K renormalised at T = 1 and T = 2, and the K+1 "bucket" at T = 1),
   and the error of the tail mass 1 - sum(exp(values)).
3. Read cost: golf.teachers.CachedTeacher.fetch (what the prefetch thread runs) for the batches the real loader
   produces (--rows overrides the batch size: 98304 is one micro-batch of the full-size student, 48 x 2048),
   warm (pages in memory) and cold (the cache files' pages dropped with posix_fadvise before each fetch and a
   fresh reader opened, so the rows come from disk), against the median time of one baseline student step
   (bench/distill_step.py's Arm). The fetch runs in the prefetch thread beside the step, so a fraction well
   below 1 is hidden as long as a core is free for it.
Last line: `cache_read_fraction fp16_warm=A fp16_cold=B packed_warm=C packed_cold=D` (fetch time / step time).
"""
import dataclasses
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from tqdm import tqdm

from _common import (bench_config, build_temp_cache, load_note, machine_line, make_teacher, median_ms, set_threads,
                     teacher_config, timed, train_files)
from distill_step import Arm
from golf.atomic import atomic_write_text
from golf.cache import CacheReader, CacheWriter
from golf.codecs import packed_row_bytes
from golf.data import Batch, DistributedTokenLoader, grad_accum_steps
from golf.dist import init_dist
from golf.errors import GolfError, cli_main
from golf.objectives import CrossEntropyObjective
from golf.teachers import CachedTeacher

_CHUNK = 1 << 16  # rows per step when packing and comparing whole shards


def pack_cache(src: CacheReader, out: str, files: list[str]) -> str:
    """Write the packed encoding of the fp16 cache `src` into `out` (same shards, same spec otherwise)."""
    spec = dataclasses.replace(src.spec, encoding="packed")
    writer = CacheWriter(out, files, spec)
    for i, rows in enumerate(src.num_tokens):
        with writer.open_shard(i) as sw:
            for a in range(0, rows, _CHUNK):
                idx, vals = src.gather([(i, a, min(_CHUNK, rows - a))])
                sw.write(a, idx, vals)
            sw.commit()
    return out


def _kl(logp, logq):
    """Per-row KL(p || q) from float64 log-probabilities [n, C]."""
    return (np.exp(logp) * (logp - logq)).sum(-1)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _with_tail(v):
    """[n, K] log-probs -> [n, K+1] log-probs with the rest of the vocabulary as the last bucket (clamped at 1e-30)."""
    rest = np.maximum(1 - np.exp(v).sum(-1, keepdims=True), 1e-30)
    return np.concatenate([v, np.log(rest)], -1)


def distortion(fp16: CacheReader, packed: CacheReader) -> dict:
    """Mean / max per-token KL(p_fp16 || p_packed) over every row, and the tail-mass error, in float64."""
    sums = {"renorm_T1": [0.0, 0.0], "renorm_T2": [0.0, 0.0], "bucket_T1": [0.0, 0.0], "tail_abs_err": [0.0, 0.0]}
    n = 0
    for i, rows in enumerate(fp16.num_tokens):
        for a in tqdm(range(0, rows, _CHUNK), desc=f"distortion shard {i}", disable=None):
            seg = [(i, a, min(_CHUNK, rows - a))]
            ia, va = fp16.gather(seg)
            ib, vb = packed.gather(seg)
            if not np.array_equal(ia, ib):
                raise GolfError("packed cache ids differ from the fp16 cache's: golf/cache.py's packing is broken")
            va, vb = va.astype(np.float64), vb.astype(np.float64)
            figs = {
                "renorm_T1": _kl(_log_softmax(va), _log_softmax(vb)),
                "renorm_T2": _kl(_log_softmax(va / 2), _log_softmax(vb / 2)),
                "bucket_T1": _kl(_with_tail(va), _with_tail(vb)),
                "tail_abs_err": np.abs(np.exp(_with_tail(va)[:, -1]) - np.exp(_with_tail(vb)[:, -1])),
            }
            for key, x in figs.items():
                sums[key][0] += float(x.sum())
                sums[key][1] = max(sums[key][1], float(x.max()))
            n += len(va)
    return {key: {"mean": s / n, "max": m} for key, (s, m) in sums.items()} | {"rows": n}


def _drop_pages(cache_dir: str):
    """Evict the cache files' pages from the page cache (clean, unmapped pages only: that is why the caller opens a
    fresh reader after this), so the next read comes from disk."""
    for name in os.listdir(cache_dir):
        if name.endswith(".npy"):
            fd = os.open(os.path.join(cache_dir, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def fetch_times(cache_dir: str, files: list[str], batches: list[Batch], cold: bool, ctx) -> list[float]:
    """Seconds of CachedTeacher.fetch for each batch (soft rows: ids and values)."""
    out, source = [], None
    for batch in tqdm(batches, desc=f"fetch {'cold' if cold else 'warm'}", disable=None):
        source = None  # unmap the previous reader's files first: pages mapped into a process are not dropped
        if cold:
            _drop_pages(cache_dir)
        source = CachedTeacher(CacheReader(cache_dir, files), "soft")
        if not cold:
            source.fetch(batch)  # bring the rows in first
        out.append(timed(lambda: source.fetch(batch), ctx))
    return out


def _options(p):
    p.add_argument("--teacher", default="", help="trained teacher checkpoint (needed for meaningful distortion figures)")
    p.add_argument("--teacher-preset", default="demo-teacher", help="shape of the random teacher")
    p.add_argument("--shards", type=int, default=1, help="train shards to cache (0 = all)")
    p.add_argument("--k", type=int, default=32, help="cached top-K")
    p.add_argument("--rows", type=int, default=0, help="rows per fetch (default: the student's micro-batch)")
    p.add_argument("--reps", type=int, default=30, help="fetches timed per encoding and temperature of the pages")
    p.add_argument("--step-reps", type=int, default=10, help="student steps timed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--cache-dir", default="", help="read this existing fp16 cache of the --shards (no teacher, no build)")
    p.add_argument("--no-distortion", action="store_true", help="skip the packed-vs-fp16 distortion figures (they "
                   "only mean something for a trained teacher's cache)")
    p.add_argument("--tmp", default="", help="folder for the temporary caches (default: the system's temp folder)")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="3 fetches and 2 steps (smoke test)")


def prepare_caches(cfg, args, ctx, files: list[str], tmp: str, figures: dict) -> tuple[str, str]:
    """(fp16 cache dir, packed cache dir): --cache-dir or one built from the teacher, and its packed encoding;
    the distortion figures (unless --no-distortion) go into `figures`."""
    fp16_dir, packed_dir = args.cache_dir or os.path.join(tmp, "fp16"), os.path.join(tmp, "packed")
    if not args.cache_dir:
        teacher, sha, tcfg = make_teacher(ctx, args.teacher, teacher_config(cfg, args.teacher_preset), cfg.vocab_size)
        build_temp_cache(teacher, sha, tcfg, files, ctx, fp16_dir, args.k, "fp16")
        del teacher
    fp16 = CacheReader(fp16_dir, files)
    if fp16.spec.encoding != "fp16":
        raise GolfError(f"--cache-dir {args.cache_dir}: encoding {fp16.spec.encoding}, need an fp16 cache")
    pack_cache(fp16, packed_dir, files)
    k = fp16.k
    figures["k"], figures["cached_rows"] = k, sum(fp16.num_tokens)
    print(f"cache: {sum(fp16.num_tokens)} rows, K={k}, fp16 {4 * k} B/row, packed {packed_row_bytes(k)} B/row; "
          f"teacher {figures['teacher']}")
    if not args.no_distortion:
        d = distortion(fp16, CacheReader(packed_dir, files))
        figures["distortion"] = d
        for key in ("renorm_T1", "renorm_T2", "bucket_T1"):
            print(f"packed KL(fp16 || packed) {key}: mean {d[key]['mean']:.2e} max {d[key]['max']:.2e} nats/token")
        print(f"packed tail-mass abs error: mean {d['tail_abs_err']['mean']:.2e} max {d['tail_abs_err']['max']:.2e}")
    return fp16_dir, packed_dir


def report(fetch: dict, step_ms: float, rows: int, k: int, figures: dict):
    """Each encoding's fetch time, read rate (rows and bytes from the files) and fraction of a student step."""
    row_bytes = {"fp16": 4 * k, "packed": packed_row_bytes(k)}
    figures |= {"step_ms": step_ms, "rows": rows, "fetch_ms": {}, "rows_per_s": {}, "mb_per_s": {}}
    for key, ts in fetch.items():
        ms = median_ms(ts)
        rate = rows / (ms / 1e3)
        figures["fetch_ms"][key], figures["rows_per_s"][key] = ms, rate
        figures["mb_per_s"][key] = rate * row_bytes[key.split("_")[0]] / 1e6
        print(f"fetch {key:12s} {rows} rows: median {ms:8.3f} ms (max {max(ts) * 1e3:.3f}), {rate / 1e6:.2f} M rows/s "
              f"({figures['mb_per_s'][key]:.0f} MB/s), fraction of a step {ms / step_ms:.4f}")


@cli_main
def main():
    cfg, args = bench_config(__doc__, _options)
    set_threads(args.threads)
    if args.quick:
        args.reps, args.step_reps = 3, 2
    if args.reps <= 0 or args.step_reps <= 0:
        raise GolfError("need --reps > 0 and --step-reps > 0")
    ctx = init_dist(cfg.device, cfg.dtype)
    files = train_files(cfg, args.shards)
    print(machine_line(ctx))
    figures = {"machine": machine_line(ctx),
               "teacher": f"cache {args.cache_dir}" if args.cache_dir else args.teacher or f"random {args.teacher_preset}"}
    with tempfile.TemporaryDirectory(prefix="bench_read_", dir=args.tmp or None) as tmp:
        fp16_dir, packed_dir = prepare_caches(cfg, args, ctx, files, tmp, figures)
        rows = args.rows or cfg.train_batch_tokens // grad_accum_steps(cfg, ctx.world_size)
        if rows > figures["cached_rows"]:
            raise GolfError(f"--rows {rows} is more than the {figures['cached_rows']} cached rows; cache more --shards")
        loader = DistributedTokenLoader(files, 0, 1)
        batches = [loader.next_batch(rows, rows, 1) for _ in range(args.reps)]
        fetch = {}
        for enc, path in (("fp16", fp16_dir), ("packed", packed_dir)):
            for temp in ("warm", "cold"):
                fetch[f"{enc}_{temp}"] = fetch_times(path, files, batches, temp == "cold", ctx)

    arm = Arm(cfg, ctx, files, CrossEntropyObjective())
    arm.step()
    step = [timed(arm.step, ctx) for _ in range(args.step_reps)]
    arm.close()
    step_ms = median_ms(step)
    print(machine_line(ctx))
    print(f"student step {cfg.num_layers}x{cfg.model_dim}, {cfg.train_batch_tokens} tokens: median {step_ms:.2f} ms")
    report(fetch, step_ms, rows, figures["k"], figures)
    load_note(ctx)
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=1) + "\n")
    print("cache_read_fraction " + " ".join(f"{k}={figures['fetch_ms'][k] / step_ms:.4f}" for k in fetch))


if __name__ == "__main__":
    main()
