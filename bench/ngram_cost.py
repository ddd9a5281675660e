"""Benchmark: where an n-gram teacher's step time goes, piece by piece, on one micro-batch of the run's data.

    python bench/ngram_cost.py [--preset demo-student] [--reps 20] [--threads N] [--evict-mb 256]

The n-gram model of the NGRAM_* settings (golf/ngram.py; the whole train stream counted unless
NGRAM_PREPASS_TOKENS says otherwise) is built once, then each piece is timed (median of --reps calls, after
one untimed call) on the first micro-batch of the train stream:
  query: the teacher's signal for the micro-batch (NgramTeacher.fetch without online counting: the sparse
      golf.signals.CountDist);
  query_online: the same with NGRAM_ONLINE counting (what a training step runs);
  query_cold: the query with its count tables out of the caches, as a training step finds them (the student's
      forward and backward run between two queries): before each timed call, untimed, --evict-mb MiB are
      written on the device;
  count_kl: the loss the n-gram teacher pays, golf.losses.distill_terms with that CountDist (CE + its exact KL
      at T = 1, the teacher's entropy not computed, as on the steps whose values are not logged), forward and
      backward w.r.t. student logits of the micro-batch's shape, in the dtype a run's logits have (DTYPE: bf16
      where the run autocasts to it; before 2026-12-07 this bench used float32 logits);
  full_kl: the dense soft loss a Logits teacher pays (the same p as N x V log-probabilities, CE + KL at T = 1);
  ce: cross-entropy alone, forward and backward (what the baseline pays for its loss); all three on the same logits.
A line gives the sparse part's mean entries per position on this micro-batch (`entries_per_position:`).
Last line: `ngram_cost build_ms=B query_ms=Q query_online_ms=O query_cold_ms=D count_kl_ms=C full_kl_ms=K
ce_ms=E` (milliseconds, on --clock).
"""
import dataclasses
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from _common import CLOCKS, bench_config, machine_line, median_ms, set_threads, timed, train_files
from golf.data import DistributedTokenLoader, grad_accum_steps
from golf.dist import init_dist
from golf.errors import cli_main
from golf.losses import cross_entropy, distill_terms
from golf.ngram import StreamNgram


def _options(p):
    p.add_argument("--reps", type=int, default=20, help="timed calls per piece")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS), help="as in bench/distill_step.py (process: CPU "
                   "seconds of the process, for a loaded machine; the build too)")
    p.add_argument("--evict-mb", type=int, default=256, help="MiB written before each query_cold call (more than "
                   "the last-level cache)")


@cli_main
def main():
    cfg, args = bench_config(__doc__, _options)
    set_threads(args.threads)
    cfg = dataclasses.replace(cfg, distill_teacher="ngram", ngram_prepass_tokens=cfg.ngram_prepass_tokens or -1)
    ctx = init_dist(cfg.device, cfg.dtype)
    files = train_files(cfg)
    ngram = StreamNgram.open(cfg, SimpleNamespace(train_files=files, ctx=ctx))
    build_s = timed(ngram.build, ctx, args.clock)
    accum = grad_accum_steps(cfg, ctx.world_size)
    batch = DistributedTokenLoader(files, 0, 1).next_batch(cfg.train_batch_tokens, cfg.train_seq_len, accum)
    print(machine_line(ctx))
    print(f"{ngram.log_line()} micro_batch_tokens:{batch.x.numel()}")
    print(ngram.counts_line())

    def median_of(fn, before=lambda: None) -> float:
        fn()
        times = []
        for _ in range(args.reps):
            before()
            times.append(timed(fn, ctx, args.clock))
        return median_ms(times)

    evict = torch.empty(args.evict_mb << 18, dtype=torch.float32, device=ctx.device)

    signal = ngram.signal(batch)
    print(f"entries_per_position:{signal.ids.shape[0] / batch.x.numel():.2f}")
    logits = signal.dense_log_probs()
    z = torch.randn(logits.shape, device=ctx.device).to(ctx.autocast_dtype or torch.float32).requires_grad_()
    y = batch.y.reshape(-1).to(ctx.device)

    def count_kl():
        ce, kl, _ = distill_terms(z, y, mode="soft", count_entropy=False, **signal.loss_inputs(y.shape))
        (ce + kl).backward()

    def full_kl():
        ce, kl, _ = distill_terms(z, y, mode="soft", temperature=1.0, teacher_logits=logits)
        (ce + kl).backward()

    ngram.online = False
    figures = {"build_ms": 1000 * build_s, "query_ms": median_of(lambda: ngram.signal(batch))}
    ngram.online = True
    figures["query_online_ms"] = median_of(lambda: ngram.signal(batch))
    figures["query_cold_ms"] = median_of(lambda: ngram.signal(batch), before=lambda: evict.fill_(1.0))
    figures["count_kl_ms"] = median_of(count_kl)
    figures["full_kl_ms"] = median_of(full_kl)
    figures["ce_ms"] = median_of(lambda: cross_entropy(z, y).backward())
    print("ngram_cost " + " ".join(f"{k}={v:.1f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
