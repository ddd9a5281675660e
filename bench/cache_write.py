"""Benchmark: logit-cache write throughput against the teacher's forward pass alone, side by side in one process.

    python bench/cache_write.py [--preset demo-teacher] [--teacher CKPT] [--shards 1] [--k 32]
                                [--encoding fp16|packed] [--reps 5] [--batch-windows 0] [--keep DIR] [--json FILE]

Both sides run the same teacher over the same windows of the first --shards train shards (the builder's
window layout, golf.cache_build.plan_windows, batched --batch-windows at a time, the stream's short last window
padded to the teacher's length, every batch padded to one shape when the teacher is compiled):
- forward: only the teacher's forward pass (logits, under the run's autocast), nothing kept;
- cache: golf.cache_build.build_cache into a fresh folder, what cache_logits.py runs: forward, log-softmax,
  top-K, device-to-host copy, encoding, the memory-mapped writes, fsync and commit.
Repetitions alternate which side goes first. Then, on one batch, where the builder's extra time goes: the
forward, the log-softmax and the top-K selection (torch.topk on float32; on CPU torch's top-K on integer keys,
the fallback where golf/topk.c cannot be built; the builder's golf.topk.topk_logprobs), each a median of
--reps x 4 rotated repetitions. The last line is `cache_write_ratio X`: the median over repetitions of
the cache's tokens/s over the forward's in the same repetition (pairs close in time cancel drifts in load; the
line before gives its bootstrap 95% interval); 1.0 = writing a cache costs nothing beyond the teacher's forward.
"""
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from tqdm import tqdm

from _common import (bench_config, bootstrap_ci, build_temp_cache, load_note, machine_line, make_teacher, median_ms,
                     paired_ratio, rotations, set_threads, timed, train_files)
from golf.atomic import atomic_write_text
from golf.codecs import CODECS, ENCODINGS
from golf.cache_build import StreamView, default_batch_windows, plan_windows
from golf.dist import init_dist
from golf.errors import GolfError, cli_main
from golf.topk import cpu_backend, topk_logprobs, torch_topk_ids


def batches(stream: StreamView, window: int, batch_windows: int, ctx, fixed_shape: bool):
    """The teacher's input batches over every window that scores the stream, as the builder forms them."""
    plan = list(plan_windows(0, stream.total, window, window, stream.total))
    for b in range(0, len(plan), batch_windows):
        rows = [np.pad(stream.read(ws, we), (0, window - (we - ws))) for ws, we, _, _ in plan[b:b + batch_windows]]
        if fixed_shape and len(rows) < batch_windows:
            rows += [rows[-1]] * (batch_windows - len(rows))
        yield torch.from_numpy(np.stack(rows).astype(np.int64)).to(ctx.device, non_blocking=True)


@torch.no_grad()
def forward_only(model, stream: StreamView, window: int, batch_windows: int, ctx, fixed_shape: bool) -> int:
    """Run the teacher over every window that scores the stream, as the builder batches them; returns positions."""
    for x in batches(stream, window, batch_windows, ctx, fixed_shape):
        with ctx.autocast():
            model(x)
    return stream.total


@torch.no_grad()
def selection_costs(model, x, k: int, ctx, reps: int) -> dict:
    """Median ms of the teacher's forward on batch x and of what the builder does after it, rotated per round."""
    def forward():
        with ctx.autocast():
            return model(x)

    logits = forward()
    logp = torch.log_softmax(logits, -1, dtype=torch.float32)
    arms = {"forward": forward, "log_softmax": lambda: torch.log_softmax(logits, -1, dtype=torch.float32),
            "topk_float32": lambda: logp.topk(k, -1), "topk_builder": lambda: topk_logprobs(logp, k)}
    if not logp.is_cuda:
        arms["topk_int_keys"] = lambda: logp.gather(-1, torch_topk_ids(logp, k))
    times = {name: [] for name in arms}
    for rep in range(2 + reps * 4):
        for name in rotations(list(arms), rep):
            t = timed(arms[name], ctx)
            if rep >= 2:
                times[name].append(t)
    return {name: median_ms(ts) for name, ts in times.items()}


def _options(p):
    p.add_argument("--teacher", default="", help="teacher checkpoint (default: a random model of the preset's shape)")
    p.add_argument("--shards", type=int, default=1, help="train shards to run over (0 = all)")
    p.add_argument("--k", type=int, default=32, help="cached top-K")
    p.add_argument("--encoding", default="fp16", choices=ENCODINGS)
    p.add_argument("--batch-windows", type=int, default=0,
                   help="windows per forward (default: cache_logits.py's: ~64k tokens on CUDA, ~4k on CPU)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each side (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--tmp", default="", help="folder for the caches (default: the system's temp folder; use the disk "
                                             "the real cache will live on)")
    p.add_argument("--keep", default="", help="keep the last cache written, moved to this new folder")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument("--quick", action="store_true", help="one repetition (smoke test)")


@cli_main
def main():
    cfg, args = bench_config(__doc__, _options, default_preset="demo-teacher")
    set_threads(args.threads)
    if args.quick:
        args.reps = 1
    if args.reps <= 0:
        raise GolfError("need --reps > 0")
    ctx = init_dist(cfg.device, cfg.dtype)
    files = train_files(cfg, args.shards)
    if args.keep and os.path.exists(args.keep):
        raise GolfError(f"--keep {args.keep} exists; give a new folder")
    model, sha, tcfg = make_teacher(ctx, args.teacher, cfg, cfg.vocab_size)
    window = tcfg.train_seq_len
    batch_windows = args.batch_windows or default_batch_windows(window, ctx.device)
    compiled = ctx.device.type == "cuda" and cfg.compile in ("auto", "1")
    run = torch.compile(model, dynamic=False) if compiled else model
    stream = StreamView(files)
    print(machine_line(ctx))
    print(f"teacher {tcfg.num_layers}x{tcfg.model_dim} ({'checkpoint' if args.teacher else 'random'}) window {window} "
          f"batch {batch_windows} windows | {len(files)} shards, {stream.total} tokens | K={args.k} {args.encoding} "
          f"| compiled {compiled}" + ("" if ctx.device.type == "cuda" else f" | top-K {cpu_backend()}"))

    with tempfile.TemporaryDirectory(prefix="bench_write_", dir=args.tmp or None) as tmp:
        # Warm-up: compile (CUDA) and first-touch costs, on both paths.
        forward_only(run, stream, window, batch_windows, ctx, compiled)
        build_temp_cache(run, sha, tcfg, files, ctx, os.path.join(tmp, "warmup"), args.k, args.encoding,
                         batch_windows, fixed_shape=compiled)
        fwd, cache = [], []
        for rep in tqdm(range(args.reps), desc="reps", disable=None):
            def do_forward():
                seconds = timed(lambda: forward_only(run, stream, window, batch_windows, ctx, compiled), ctx)
                fwd.append(stream.total / seconds)

            def do_cache():
                out = os.path.join(tmp, f"rep{rep}")
                stats = build_temp_cache(run, sha, tcfg, files, ctx, out, args.k, args.encoding, batch_windows,
                                         fixed_shape=compiled)
                cache.append(stats["tokens_per_s"])

            for do in ((do_forward, do_cache) if rep % 2 == 0 else (do_cache, do_forward)):
                do()
        if args.keep:
            shutil.move(os.path.join(tmp, f"rep{args.reps - 1}"), args.keep)
        x = next(batches(stream, window, batch_windows, ctx, compiled))
        sel = selection_costs(run, x, args.k, ctx, args.reps)
    print(machine_line(ctx))
    f, c = statistics.median(fwd), statistics.median(cache)
    paired = paired_ratio(cache, fwd)
    lo, hi = bootstrap_ci(paired_ratio, cache, fwd)
    print(f"forward only : {f:12.0f} tokens/s (reps {', '.join(f'{x:.0f}' for x in fwd)})")
    row_bytes = CODECS[args.encoding].row_bytes(args.k)
    print(f"cache builder: {c:12.0f} tokens/s (reps {', '.join(f'{x:.0f}' for x in cache)}), "
          f"{c * row_bytes / 1e6:.1f} MB/s written")
    print(f"one batch ({x.numel()} tokens), ms: forward {sel['forward']:.2f} | log-softmax {sel['log_softmax']:.2f} | "
          f"top-K torch.topk float32 {sel['topk_float32']:.2f}"
          + (f", torch int keys {sel['topk_int_keys']:.2f}" if "topk_int_keys" in sel else "")
          + f", builder's {sel['topk_builder']:.2f} ({sel['topk_builder'] / sel['topk_float32']:.2f}x)")
    load_note(ctx)
    if args.json:
        figures = {"machine": machine_line(ctx), "forward_tokens_per_s": fwd, "cache_tokens_per_s": cache,
                   "ratio": paired, "ratio_ci95": [lo, hi], "ratio_of_medians": c / f, "one_batch_ms": sel}
        atomic_write_text(args.json, json.dumps(figures, indent=1) + "\n")
    print(f"cache over forward tokens/s: paired {paired:.3f} (95% {lo:.3f}-{hi:.3f}), ratio of medians {c / f:.3f}")
    print(f"cache_write_ratio {paired:.3f}")


if __name__ == "__main__":
    main()
