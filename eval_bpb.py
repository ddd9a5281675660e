"""Score a checkpoint or an int6 artifact on the validation set: standard and sliding-window val_loss/val_bpb.

    python eval_bpb.py checkpoints/<RUN_ID>.pt                 # float weights
    python eval_bpb.py checkpoints/<RUN_ID>.int6.ptz --config checkpoints/<RUN_ID>.pt   # the artifact
    EVAL_STRIDE=64 VAL_MAX_TOKENS=0 python eval_bpb.py CKPT --json [--out scores/ckpt.json]
    python eval_bpb.py --teacher ngram:3 --preset demo-student   # the n-gram teacher alone (golf/ngram.py)

The model (shape, vocabulary, sequence length) always comes from the checkpoint, and so do the data and
tokenizer it was trained on unless DATA_PATH / TOKENIZER_PATH or their flags say otherwise; the evaluation
settings below come from flags, environment variables (the upper-case names) or a preset. An artifact holds
no config, so `--config` names the checkpoint it was made from (default: the same path with .pt instead of
.int6.ptz).

`--teacher ngram:ORDER` scores the n-gram model of the n-gram teacher instead, counted on the first
NGRAM_PREPASS_TOKENS train tokens (0: all of them; validation tokens never) with NGRAM_TABLE_BITS; its window
is TRAIN_SEQ_LEN (a window's first ORDER-2 positions see shorter contexts in the standard evaluation) and its
vocabulary VOCAB_SIZE, from the settings since there is no checkpoint.
"""
import json
import os
import time

from golf.atomic import atomic_write_text
from golf.checkpoint import load_checkpoint, load_weights, model_from_checkpoint
from golf.choices import config_from_cli
from golf.config import Config, fill_unset
from golf.dist import cleanup, init_dist
from golf.errors import GolfError, cli_main
from golf.eval import eval_sliding, eval_val, load_val_tokens
from golf.model import GPT
from golf.ngram import NgramLM, StreamNgram
from golf.quant import dequantize_state_dict, read_artifact
from golf.shards import list_shards
from golf.tokenizer import build_byte_luts, file_sha256, load_tokenizer, luts_to_torch


# The configuration fields evaluation reads; --help lists only these (the last four: --teacher only).
EVAL_FIELDS = ("data_path", "tokenizer_path", "device", "dtype", "val_batch_size", "val_max_tokens", "eval_stride",
               "eval_batch_seqs", "vocab_size", "train_seq_len", "ngram_table_bits", "ngram_prepass_tokens")


def _options(p):
    p.add_argument("path", nargs="?", default="", help="checkpoint (.pt) or int6 artifact (.ptz)")
    p.add_argument("--teacher", default="", help="ngram:ORDER: score the n-gram teacher's model instead of a checkpoint")
    p.add_argument("--config", default="", help="checkpoint whose config an artifact uses")
    p.add_argument("--json", action="store_true", help="print one JSON summary line at the end")
    p.add_argument("--out", default="", help="also write that JSON summary to this file (atomically; golf.results "
                   "lists a study's <folder>/score.json files beside its teachers)")


def _load(path: str, config_path: str, device):
    if path.endswith(".ptz"):
        if not os.path.isfile(path):  # before the config: its absence is not the problem
            raise GolfError(f"artifact {path} not found; check the path (train_gpt.py and distill.py write "
                            "checkpoints/<RUN_ID>.int6.ptz, `python quantize.py CKPT` makes one)")
        config_path = config_path or path[: -len(".int6.ptz")] + ".pt"
        if not os.path.isfile(config_path):
            raise GolfError(f"artifact {path} needs the checkpoint it came from for its config ({config_path} not "
                            "found); pass --config CKPT")
        ckpt = load_checkpoint(config_path)
        weights = dequantize_state_dict(read_artifact(path))
        model = load_weights(GPT(Config.from_dict(ckpt["config"])), weights, f"artifact {path} (config from {config_path})")
        return model.to(device), ckpt, "int6"
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path).to(device), ckpt, "float"


def _ngram(cfg: Config, spec: str, ctx) -> NgramLM:
    ngram = StreamNgram.counted_on_train(cfg, spec, list_shards(cfg.data_path, "train"), ctx)
    if ctx.is_master:
        print(f"{ngram.log_line()} counted:{ngram.counted} build_time:{ngram.build_ms:.0f}ms")
    return NgramLM(ngram)


@cli_main
def main():
    cfg, args = config_from_cli(__doc__, extra=_options, only=EVAL_FIELDS, dry_run=False,
                                defaults={"data_path": "the checkpoint's", "tokenizer_path": "the checkpoint's"})
    if bool(args.path) == bool(args.teacher):
        raise GolfError("give a checkpoint (or artifact) path or --teacher ngram:ORDER, one of them")
    try:
        ctx = init_dist(cfg.device, cfg.dtype)
        if args.teacher:
            model, kind = _ngram(cfg, args.teacher, ctx), args.teacher
            mcfg = cfg
        else:
            model, ckpt, kind = _load(args.path, args.config, ctx.device)
            mcfg = model.cfg
            fill_unset(cfg, args, mcfg, ("data_path", "tokenizer_path"))  # the run's own data unless set explicitly
        sp = load_tokenizer(cfg.tokenizer_path, mcfg.vocab_size)
        if not args.teacher and ckpt.get("tokenizer_sha256") not in (None, file_sha256(cfg.tokenizer_path)):
            raise GolfError(f"{args.path} was trained with another tokenizer than {cfg.tokenizer_path}; "
                            "set TOKENIZER_PATH/DATA_PATH to the run's")
        luts = luts_to_torch(build_byte_luts(sp, mcfg.vocab_size), ctx.device)
        val = load_val_tokens(cfg.data_path, mcfg.train_seq_len, cfg.val_max_tokens, mcfg.vocab_size)
        model.eval()
        t = time.perf_counter()
        vl, vb = eval_val(model, val, luts, mcfg.train_seq_len, cfg.val_batch_size, ctx, progress=True)
        t1 = time.perf_counter()
        sl, sb = eval_sliding(model, val, luts, mcfg.train_seq_len, cfg.eval_stride, cfg.eval_batch_seqs, ctx,
                              progress=True)
        t2 = time.perf_counter()
        res = {"path": args.path or args.teacher, "weights": kind, "val_tokens": len(val) - 1, "val_loss": vl, "val_bpb": vb,
               "sliding_val_loss": sl, "sliding_val_bpb": sb, "stride": cfg.eval_stride,
               "eval_s": t1 - t, "sliding_eval_s": t2 - t1}
        if ctx.is_master:
            print(f"{kind} val_loss:{vl:.8f} val_bpb:{vb:.8f} eval_time:{1000 * (t1 - t):.0f}ms")
            print(f"{kind}_sliding_window val_loss:{sl:.8f} val_bpb:{sb:.8f} stride:{cfg.eval_stride} "
                  f"eval_time:{1000 * (t2 - t1):.0f}ms")
            if args.json:
                print(json.dumps(res))
            if args.out:
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                atomic_write_text(args.out, json.dumps(res) + "\n")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
