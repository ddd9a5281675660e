"""Cache the teacher's top-K log-probabilities for every train token (the logit cache of DESIGN.md), or N draws
from its distribution at a temperature (--encoding sampled).

    python cache_logits.py --teacher checkpoints/teacher.pt --out caches/teacher_k32 [--k 32]
           [--shards N | --tokens N] [--window L] [--stride S] [--encoding fp16|packed] [--verify N]
    python cache_logits.py --teacher ... --out caches/teacher_n16 --encoding sampled|sampled-packed --draws 16 [--temperature T]
    torchrun --standalone --nproc_per_node=8 cache_logits.py --teacher ... --out ...   # ranks split shards
    python cache_logits.py --teacher ngram:3 --out caches/ngram3_k32   # the n-gram teacher (golf/ngram.py)

Row t of a shard's cache is the teacher's top-K for the token after stream position t (the student's target
at input position t); of a sampled cache, N draws with replacement from softmax(logits / T) there, T defaulting
to DISTILL_TEMP (a student reading it must distil at the same temperature: its loss estimates the KL at T). The student looks rows up by the (shard, offset) its loader read the tokens from, so
alignment holds for any world size, batch or sequence length. Writing is resumable: rerunning the same
command after a crash recomputes only unfinished shards. Data, tokenizer and vocabulary are the teacher's own
(from its checkpoint's saved config) unless DATA_PATH / TOKENIZER_PATH / VOCAB_SIZE or their flags set them.

`--teacher ngram:ORDER` caches the n-gram teacher instead: counted on the first NGRAM_PREPASS_TOKENS train
tokens (0: all) with NGRAM_SMOOTHING (NGRAM_MAX_MB), each row from the position's whole context (ORDER-1 tokens, so
window = stride = ORDER-1 in the manifest) with its own occurrence left out as in training
(NGRAM_LEAVE_ONE_OUT); data, tokenizer and vocabulary from the settings. Its teacher_sha256 is that of its
settings and the tokenizer's sha256 (there is no checkpoint file). Built outside the timed run: non-record.
"""
import hashlib
import json
import os

import torch

from golf.atomic import require_free_disk
from golf.cache import CacheSpec, CacheWriter, cache_manifest_field
from golf.cache_build import build_cache, build_ngram_cache, default_batch_windows, teacher_context, verify_cache
from golf.checkpoint import load_checkpoint, load_teacher
from golf.codecs import CODECS, ENCODINGS
from golf.choices import config_from_cli
from golf.config import Config, fill_unset
from golf.dist import cleanup, compile_enabled, init_dist
from golf.errors import GolfError, cli_main, rerun_command, stopped_at
from golf.ngram import StreamNgram
from golf.runner import check_train_shards
from golf.shards import list_shards, read_header
from golf.tokenizer import file_sha256, load_tokenizer


def _options(p):
    p.add_argument("--teacher", required=False, help="teacher checkpoint (default TEACHER_PATH), or ngram:ORDER")
    p.add_argument("--out", required=False, help="cache folder (default LOGIT_CACHE)")
    p.add_argument("--k", type=int, default=None, help="top-K entries per token (fp16, packed; default 32)")
    p.add_argument("--draws", type=int, default=None, help="--encoding sampled: draws N per token (1..255)")
    p.add_argument("--temperature", type=float, default=None,
                   help="--encoding sampled: draw from softmax(logits / T) (default DISTILL_TEMP; students must use it)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shards", type=int, default=0, help="cache only the first N train shards")
    g.add_argument("--tokens", type=int, default=0, help="cache the first shards covering N tokens")
    p.add_argument("--window", type=int, default=0, help="teacher context length (default its TRAIN_SEQ_LEN)")
    p.add_argument("--stride", type=int, default=0, help="window advance (default = window; smaller = more context)")
    p.add_argument("--encoding", default="fp16", choices=ENCODINGS, help="cache codec (golf/codecs.py): fp16 (128 B/token at K=32), packed (72 B); draws: sampled (1 + 3 B per distinct id) or sampled-packed (5*ceil(N/4) B, vocab <= 1024)")
    p.add_argument("--batch-windows", type=int, default=0, help="windows per teacher forward (default: ~64k tokens on CUDA, ~4k on CPU)")
    p.add_argument("--verify", type=int, default=0, help="afterwards recompute N random rows and report the difference")


def _check_new_cache_fits(out: str, shard_paths: list[str], spec: CacheSpec):
    """Refuse a new cache that would not fit before anything is written. CacheWriter creates the folder and
    its manifest at once, and a leftover manifest would refuse the smaller K or packed encoding that the
    error suggests; a resumed cache is checked by CacheWriter.check_disk_space (pending shards only)."""
    if not os.path.exists(out):
        require_free_disk(out, sum(spec.shard_bytes(read_header(p)) for p in shard_paths), "the logit cache",
                          "free some space, use a smaller --k or --encoding packed, or another --out")


def _entries(args) -> int:
    """The spec's K: the top-K of a top-K encoding, the draws N of a sampled one."""
    if CODECS[args.encoding].value_kind == "draw_counts":
        if args.k is not None or args.draws is None:
            raise GolfError(f"--encoding {args.encoding} takes --draws N (1..255) instead of --k")
        return args.draws
    if args.draws is not None:
        raise GolfError(f"--draws is for --encoding sampled or sampled-packed; --encoding {args.encoding} stores the top --k")
    return 32 if args.k is None else args.k


def _temperature(args, cfg) -> float | None:
    """A sampled cache's temperature (--temperature, else DISTILL_TEMP); None for a top-K cache (which refuses one)."""
    if CODECS[args.encoding].value_kind == "draw_counts" and args.temperature is None:
        return cfg.distill_temp
    return args.temperature


def _select_shards(paths: list[str], shards: int, tokens: int) -> list[str]:
    """The first `shards` shards, or the first shards covering `tokens` tokens (all when both are 0)."""
    if shards:
        return paths[:shards]
    if not tokens:
        return paths
    keep, total = [], 0
    for p in paths:
        if total >= tokens:
            break
        keep.append(p)
        total += read_header(p)
    return keep


def _note_cache(out: str, shards: int, pending: int):
    """What an interruption says: the shards completed so far are kept, and the same command continues."""
    stopped_at(f"while writing the cache {out} ({pending} of {shards} shards were pending)",
               f"every shard of {out} completed so far", rerun_command())


def _ngram_cache(cfg: Config, args, spec_text: str, out: str, ctx):
    """--teacher ngram:ORDER (see the module docstring)."""
    if args.window or args.stride or args.batch_windows or args.verify:
        raise GolfError(f"--teacher {spec_text}: --window, --stride, --batch-windows and --verify are for checkpoint "
                        "teachers (an n-gram's context is its ORDER-1 tokens); drop them")
    load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
    train_files = list_shards(cfg.data_path, "train")
    shard_paths = _select_shards(train_files, args.shards, args.tokens)
    check_train_shards(train_files, cfg.vocab_size, ctx)  # the counting reads them all
    ngram = StreamNgram.counted_on_train(cfg, spec_text, train_files, ctx)
    context = ngram.order - 1
    config = {"ngram_order": ngram.order, "ngram_smoothing": ngram.smoothing, "ngram_prepass_tokens": ngram.prepass,
              "ngram_counted": ngram.counted, "ngram_leave_one_out": ngram.leave_one_out}
    sha = hashlib.sha256(json.dumps({**config, "tokenizer_sha256": file_sha256(cfg.tokenizer_path)},
                                    sort_keys=True).encode()).hexdigest()
    spec = CacheSpec(k=_entries(args), vocab_size=cfg.vocab_size, encoding=args.encoding, teacher_sha256=sha,
                     teacher_config=config, window=context, stride=context)
    _check_new_cache_fits(out, shard_paths, spec)
    built_before = cache_manifest_field(out, "build_seconds") or 0.0  # a resumed build adds to what it spent before
    writer = CacheWriter(out, shard_paths, spec, info={"teacher_context": {
        "mean": float(context), "min": context, "min_after_first_window": context}, "build_seconds": built_before})
    pending = writer.pending()
    if ctx.is_master:
        print(f"cache:{out} shards:{len(shard_paths)} k:{spec.k} encoding:{args.encoding} {ngram.log_line()} "
              f"pending_shards:{len(pending)}", flush=True)
        print(ngram.counts_line(), flush=True)
    writer.check_disk_space()
    _note_cache(out, len(shard_paths), len(pending))
    if ctx.distributed:  # every rank has its pending list before any rank commits a shard
        torch.distributed.barrier()
    stats = build_ngram_cache(ngram, writer, pending, ctx)
    if ctx.distributed:
        torch.distributed.barrier()
    if ctx.is_master:  # the counting is part of the build: counted again on a resume, so spent again
        writer.info["build_seconds"] = round(built_before + ngram.build_ms / 1000 + stats["seconds"], 3)
        left = writer.finalize()
        if left:
            raise GolfError(f"{len(left)} shard(s) of {out} are still incomplete; rerun the same command")
        print(f"cache_done shards_written:{stats['shards']} positions:{stats['positions']} "
              f"seconds:{stats['seconds']:.1f} tokens_per_s:{stats['tokens_per_s']:.0f}", flush=True)


@cli_main
def main():
    cfg, args = config_from_cli(__doc__, extra=_options)
    teacher_path = args.teacher or cfg.teacher_path
    out = args.out or cfg.logit_cache
    if not teacher_path or not out:
        raise GolfError("cache_logits.py needs --teacher CKPT and --out DIR (or TEACHER_PATH and LOGIT_CACHE)")
    ctx = init_dist(cfg.device, cfg.dtype)
    try:
        if teacher_path.startswith("ngram:"):
            return _ngram_cache(cfg, args, teacher_path, out, ctx)
        # The teacher's own data, tokenizer and vocabulary unless set explicitly (as eval_bpb.py); mmap: config only.
        saved = Config.from_dict(load_checkpoint(teacher_path, mmap=True)["config"])
        fill_unset(cfg, args, saved, ("data_path", "tokenizer_path", "vocab_size"))
        load_tokenizer(cfg.tokenizer_path, cfg.vocab_size)
        shard_paths = _select_shards(list_shards(cfg.data_path, "train"), args.shards, args.tokens)
        check_train_shards(shard_paths, cfg.vocab_size, ctx)
        model, sha, tcfg = load_teacher(teacher_path, ctx, cfg.vocab_size, file_sha256(cfg.tokenizer_path))
        window = args.window or tcfg.train_seq_len
        stride = args.stride or window
        spec = CacheSpec(k=_entries(args), vocab_size=cfg.vocab_size, encoding=args.encoding, teacher_sha256=sha,
                         teacher_config=tcfg.to_dict(), window=window, stride=stride,
                         temperature=_temperature(args, cfg))
        _check_new_cache_fits(out, shard_paths, spec)
        tokens = sum(read_header(p) for p in shard_paths)
        context = teacher_context(tokens, window, stride)
        # Building time, summed over the runs of this command that finished (a killed run's time is lost): what a
        # non-record submission states its cache cost.
        built_before = cache_manifest_field(out, "build_seconds") or 0.0
        writer = CacheWriter(out, shard_paths, spec, info={"teacher_context": context, "build_seconds": built_before})
        pending = writer.pending()
        need = writer.bytes_needed()
        if ctx.is_master:
            print(f"cache:{out} shards:{len(shard_paths)} tokens:{tokens} k:{spec.k} encoding:{args.encoding} "
                  f"window:{window} stride:{stride} teacher_sha256:{sha[:16]} pending_shards:{len(pending)} "
                  f"bytes_to_write:{need} ({need / 1e9:.2f} GB)", flush=True)
            print(f"teacher_context mean:{context['mean']:.1f} min:{context['min']} "
                  f"min_after_first_window:{context['min_after_first_window']}", flush=True)
        writer.check_disk_space()
        _note_cache(out, len(shard_paths), len(pending))
        if ctx.distributed:  # every rank has its pending list before any rank commits a shard
            torch.distributed.barrier()
        compiled = compile_enabled(cfg.compile, ctx.device)
        batch_windows = args.batch_windows or default_batch_windows(window, ctx.device)
        stats = build_cache(torch.compile(model, dynamic=False) if compiled else model, writer, shard_paths,
                            pending, ctx, batch_windows, fixed_shape=compiled)
        if ctx.distributed:
            torch.distributed.barrier()
        if ctx.is_master:
            writer.info["build_seconds"] = round(built_before + stats["seconds"], 3)
            left = writer.finalize()
            if left:
                raise GolfError(f"{len(left)} shard(s) of {out} are still incomplete; rerun the same command")
            print(f"cache_done shards_written:{stats['shards']} positions:{stats['positions']} "
                  f"seconds:{stats['seconds']:.1f} tokens_per_s:{stats['tokens_per_s']:.0f}", flush=True)
            if args.verify:
                v = verify_cache(model, out, shard_paths, args.verify, ctx)  # eager: also checks the compiled path
                print("verify " + " ".join(f"{k}:{x:.5f}" if isinstance(x, float) else f"{k}:{x}" for k, x in v.items()),
                      flush=True)
                print(json.dumps(v))
    finally:
        cleanup()


if __name__ == "__main__":
    main()
