"""The one configuration of every script: a dataclass whose fields are the challenge's environment variables.

Each field is defined once. Its environment variable is the field name in UPPER_CASE (`num_layers` ->
`NUM_LAYERS`), its flag the name in kebab-case (`--num-layers`). A named preset (`PRESET=demo-student`
or `--preset demo-student`) sets a whole configuration. Precedence: flag > environment > preset > default,
so `PRESET=demo-student ITERATIONS=10 python train_gpt.py` trains 10 steps.

The defaults are the study's student (seed-factsheet sections 2 and 4).
"""
import argparse
import dataclasses
import difflib
import os
import re
import sys
import uuid
from dataclasses import dataclass, field, fields

from golf.errors import BOOL_SPELLINGS, GolfError, parse_bool


def _f(default, help, group):
    return field(default=default, metadata={"help": help, "group": group})


@dataclass
class Config:
    # --- run -----------------------------------------------------------------------------------------
    run_id: str = _f("", "run name: logs/<RUN_ID>.txt, checkpoints/<RUN_ID>.pt (default: random)", "run")
    seed: int = _f(1337, "seed of python, numpy and torch RNGs", "run")
    data_path: str = _f("./data/datasets/fineweb10B_sp1024", "folder of *_train_*.bin / *_val_*.bin shards", "run")
    tokenizer_path: str = _f("./data/tokenizers/fineweb_1024_bpe.model", "SentencePiece model", "run")
    vocab_size: int = _f(1024, "vocabulary size; must equal the tokenizer's", "run")
    log_dir: str = _f("logs", "folder of <RUN_ID>.txt and <RUN_ID>.jsonl", "run")
    checkpoint_path: str = _f("", "final checkpoint (default checkpoints/<RUN_ID>.pt)", "run")
    checkpoint_every: int = _f(0, "also write a resumable checkpoint every N steps (0 = only at the end)", "run")
    device: str = _f("auto", "auto | cuda | cpu", "run")
    dtype: str = _f("auto", "autocast dtype: auto (bf16 on CUDA and on CPUs with bf16 instructions, else fp32) | bf16 | fp32", "run")
    compile: str = _f("auto", "torch.compile: auto (on for CUDA) | 1 | 0", "run")
    # --- model -----------------------------------------------------------------------------------------
    num_layers: int = _f(11, "transformer blocks (U-Net: first half encoder, rest decoder)", "model")
    model_dim: int = _f(512, "residual width", "model")
    num_heads: int = _f(8, "query heads (head dim = model_dim / num_heads)", "model")
    num_kv_heads: int = _f(4, "key/value heads (GQA)", "model")
    mlp_mult: float = _f(3.0, "MLP hidden = int(mlp_mult * model_dim), relu^2", "model")
    logit_softcap: float = _f(30.0, "logits = c * tanh(logits / c)", "model")
    rope_base: float = _f(10000.0, "RoPE base before NTK scaling", "model")
    rope_ref_len: int = _f(1024, "NTK-scale RoPE for sequences longer than this (the study hard-coded 1024)", "model")
    qk_gain_init: float = _f(1.5, "initial per-head query gain", "model")
    xsa_last_n: int = _f(4, "exclusive self-attention on the last N blocks", "model")
    bigram_vocab_size: int = _f(6144, "BigramHash buckets (0 = off)", "model")
    bigram_dim: int = _f(128, "BigramHash embedding width", "model")
    tied_embed_init_std: float = _f(0.005, "std of the tied embedding init", "model")
    # --- training ---------------------------------------------------------------------------------------
    train_batch_tokens: int = _f(786_432, "target tokens per optimizer step, all ranks", "train")
    train_seq_len: int = _f(2048, "training sequence length", "train")
    micro_batches: int = _f(8, "micro-batches per step over all ranks: grad accum = MICRO_BATCHES / world size", "train")
    iterations: int = _f(200_000, "maximum optimizer steps", "train")
    warmdown_iters: int = _f(1600, "linear LR warm-down over the last N (estimated) steps", "train")
    max_wallclock_seconds: float = _f(600.0, "training-time budget in s (0 = none); compile and eval excluded", "train")
    warmup_steps: int = _f(20, "compile warm-up steps, then weights, optimizer and loader are restored", "train")
    matrix_lr: float = _f(0.04, "Muon learning rate (block matrices, bigram.proj)", "train")
    scalar_lr: float = _f(0.04, "AdamW learning rate for vectors and control tensors", "train")
    tied_embed_lr: float = _f(0.05, "AdamW learning rate for tok_emb and the bigram table", "train")
    muon_momentum: float = _f(0.95, "Muon momentum after warm-up", "train")
    muon_momentum_warmup_start: float = _f(0.85, "Muon momentum at step 0", "train")
    muon_momentum_warmup_steps: int = _f(500, "steps of the linear Muon momentum warm-up", "train")
    muon_backend_steps: int = _f(5, "Newton-Schulz iterations", "train")
    muon_wd: float = _f(0.02, "Muon decoupled weight decay", "train")
    adam_wd: float = _f(0.01, "AdamW weight decay", "train")
    beta1: float = _f(0.9, "AdamW beta1", "train")
    beta2: float = _f(0.95, "AdamW beta2", "train")
    adam_eps: float = _f(1e-8, "AdamW eps", "train")
    grad_clip_norm: float = _f(0.3, "global grad-norm clip (0 = off)", "train")
    ema_enabled: bool = _f(True, "keep an EMA of the weights, applied at the end", "train")
    ema_decay: float = _f(0.997, "EMA decay per step", "train")
    late_qat: bool = _f(True, "fake-int6 QAT once the LR scale drops below QAT_THRESHOLD", "train")
    qat_threshold: float = _f(0.1, "LR scale below which late QAT switches on", "train")
    train_log_every: int = _f(200, "train line every N steps (steps 1-10 always)", "train")
    # --- evaluation --------------------------------------------------------------------------------------
    val_loss_every: int = _f(1000, "validation every N steps (0 = only at the end)", "eval")
    val_batch_size: int = _f(524_288, "validation tokens per batch, all ranks", "eval")
    val_max_tokens: int = _f(0, "truncate the val set to N targets (0 = all); for quick demos and tests", "eval")
    eval_stride: int = _f(64, "sliding-window stride", "eval")
    eval_batch_seqs: int = _f(32, "windows per sliding-eval batch per rank", "eval")
    compressor: str = _f("auto", "artifact compressor: auto (zstd if installed) | zstd | lzma", "eval")
    # --- distillation ------------------------------------------------------------------------------------
    distill_teacher: str = _f("cache", "teacher: cache (rows of LOGIT_CACHE) | online (TEACHER_PATH run in the step) | "
                              "ngram (an n-gram model of the train stream counted inside the budget, NGRAM_*) | "
                              "ema (the student's own EMA weights, DISTILL_EMA_DECAY, run in the step); "
                              "the study's DISTILL_CACHED=1|0 means cache|online", "distill")
    distill_target: str = _f("soft", "soft (KL to the teacher distribution at DISTILL_TEMP) | hard (teacher top-1 as the "
                             "label); the study's DISTILL_SOFT=1|0 means soft|hard", "distill")
    distill_alpha: float = _f(0.5, "loss = (1-a) CE + a * teacher term", "distill")
    distill_temp: float = _f(2.0, "KL temperature T (the KL term is scaled by T^2)", "distill")
    distill_tail: str = _f("renorm", "top-K tail: renorm over the K entries | bucket (K+1-th rest-of-vocab bucket)", "distill")
    distill_draws: int = _f(0, "sampled targets: N >= 1 tokens drawn per position, inside the step, from the teacher's "
                            "softmax(logits / DISTILL_TEMP), trained on as counts / N (Anshumann et al. 2025; soft, "
                            "not with a cache, which carries its own draws); 0: the teacher's exact signal", "distill")
    distill_start_frac: float = _f(0.0, "fraction of the run (the LR warm-down's clock: wall clock under a budget, else "
                                   "iterations) from which the teacher term is on; before it the loss is the baseline's "
                                   "cross-entropy and the teacher is not asked", "distill")
    distill_ramp_frac: float = _f(0.0, "the teacher term's weight rises linearly from 0 to DISTILL_ALPHA over this "
                                  "fraction of the run from DISTILL_START_FRAC (0: at once)", "distill")
    distill_stop_frac: float = _f(1.0, "fraction of the run from which the teacher term is off again (1: on to the end)",
                                  "distill")
    distill_until_overtaken: int = _f(0, "N >= 1: the teacher term goes off for good once the student's running CE (an "
                                      "EMA over ~N steps) has stayed below a count teacher's for N steps in a row on "
                                      "every rank (golf.objectives.Overtaking); 0: off", "distill")
    distill_ema_decay: float = _f(0.997, "DISTILL_TEACHER=ema: the teacher's EMA decay per step, accumulated from step 0 "
                                  "(its own setting: EMA_DECAY is the final weights'; the default is the study's "
                                  "EMA_DECAY, not yet tuned for a teacher)", "distill")
    logit_cache: str = _f("", "logit cache folder written by cache_logits.py", "distill")
    teacher_path: str = _f("", "teacher checkpoint (online teacher; also checked against the cache)", "distill")
    distill_seed_faithful: str = _f("", "reproduce the study's defects on purpose (ablation arms): a comma list of D1 (KL "
                                    "divided by the sequence length), D2 (cache rows by the study's cursor), D3 (online "
                                    "teacher never called), D4 (warm-up without the teacher), or 1 / all (those the arm's "
                                    "teacher and target can have); empty or 0: none (golf/seed_faithful.py)", "distill")
    seed_faithful_rows: int = _f(4096, "D2: rows of the study's cache, over which its cursor cycles", "distill")
    seed_faithful_row_len: int = _f(2048, "D2: tokens per row of the study's cache", "distill")
    restrict_to_cache: bool = _f(False, "train only on the cached shards instead of refusing to run past them", "distill")
    ngram_order: int = _f(3, "DISTILL_TEACHER=ngram: the n-gram order (contexts of ORDER-1 tokens), at least 2", "distill")
    ngram_smoothing: str = _f("mkn", "DISTILL_TEACHER=ngram: mkn (interpolated modified Kneser-Ney), kn (Kneser-Ney, one "
                              "discount per order) or wb (Witten-Bell) (golf/ngram.py)", "distill")
    ngram_max_mb: float = _f(4096.0, "DISTILL_TEACHER=ngram: cap on the exact n-gram counts' memory (at most 88 bytes per "
                             "distinct n-gram of each order); once reached nothing more is counted (a prefix of the "
                             "stream), logged as ngram:max_mb_reached", "distill")
    ngram_prepass_tokens: int = _f(0, "DISTILL_TEACHER=ngram: count the first N positions of the train stream in the first "
                                   "timed step (inside the budget); 0 = none, -1 = the whole stream", "distill")
    ngram_online: bool = _f(True, "DISTILL_TEACHER=ngram: count each micro-batch's stream after it has been queried", "distill")
    ngram_leave_one_out: bool = _f(True, "DISTILL_TEACHER=ngram: a counted position's own occurrence is removed from the "
                                   "counts of its prediction (0: memorised counts, an ablation)", "distill")

    # ------------------------------------------------------------------------------------------------------
    def resolve_paths(self):
        """Fill derived defaults (run id, checkpoint path) in place; returns self."""
        if not self.run_id:
            self.run_id = str(uuid.uuid4())
        if not self.checkpoint_path:
            self.checkpoint_path = os.path.join("checkpoints", f"{self.run_id}.pt")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """A config from `to_dict` output, also of older versions (their legacy fields mapped, unknown ones dropped)."""
        d = dict(d)
        if isinstance(d.get("distill_seed_faithful"), bool):  # a boolean before D3 and D4 existed: D1 and D2
            d["distill_seed_faithful"] = "D1,D2" if d["distill_seed_faithful"] else ""
        for old, (new, values) in LEGACY_SETTINGS.items():
            if old in d and new not in d:
                d[new] = values[bool(d[old])]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def lines(self):
        """The resolved configuration, one `name:value` per line, sorted."""
        return [f"{k}:{v}" for k, v in sorted(self.to_dict().items())]


# The study's own variables, still read: each maps onto the setting that replaced it (a choice of more than
# two values is one setting, not a pair of booleans). Old checkpoints and metrics files carry them too.
LEGACY_SETTINGS = {
    "distill_cached": ("distill_teacher", {True: "cache", False: "online"}),
    "distill_soft": ("distill_target", {True: "soft", False: "hard"}),
}


# Presets set whole configurations. Demo presets read the demo data that `prepare_data.py --demo` writes.
_DEMO_DATA = dict(data_path="./data/datasets/demo_sp1024", tokenizer_path="./data/tokenizers/demo_1024_bpe.model")
_DEMO_RUN = dict(
    train_seq_len=256, micro_batches=1, warmup_steps=3, val_loss_every=200, train_log_every=50,
    warmdown_iters=200, val_batch_size=16 * 256, eval_batch_seqs=32, muon_momentum_warmup_steps=100,
    # A demo run is a few hundred steps: the study's 0.997 would leave a large share of the random init in
    # the EMA weights (0.997^300 = 0.4), so the demo averages over ~10 steps instead (an EMA teacher's too).
    ema_decay=0.9, distill_ema_decay=0.9, muon_backend_steps=5,
)


def data_hint() -> str:
    """What to do about a missing dataset or tokenizer: use the demo data if `prepare_data.py --demo` made it here
    (the defaults are FineWeb's paths, so a plain `python train_gpt.py` after it misses them), else make or get data."""
    demo_data, demo_tok = _DEMO_DATA["data_path"], _DEMO_DATA["tokenizer_path"]
    if os.path.isdir(demo_data) and os.path.isfile(demo_tok):
        return (f"the demo data is here: run with PRESET=demo-student (or another demo preset), or set "
                f"DATA_PATH={demo_data} TOKENIZER_PATH={demo_tok}")
    return ("make the demo data with `python prepare_data.py --demo`, or get FineWeb with the challenge's downloader "
            "(`python data/cached_challenge_fineweb.py --variant sp1024` in a clone of openai/parameter-golf)")


PRESETS: dict[str, dict] = {
    "student": {},
    # The study's 105.5M teacher (fact sheet 3); the study's teacher constructor forces XSA off.
    "teacher": dict(num_layers=16, model_dim=768, num_heads=12, num_kv_heads=6, mlp_mult=4.0, xsa_last_n=0),
    "demo-student": dict(
        **_DEMO_DATA, **_DEMO_RUN, num_layers=2, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=3.0,
        xsa_last_n=1, bigram_vocab_size=2048, bigram_dim=64, train_batch_tokens=16 * 256,
        iterations=600, max_wallclock_seconds=120.0,
    ),
    "demo-teacher": dict(
        **_DEMO_DATA, **_DEMO_RUN, num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, mlp_mult=3.0,
        xsa_last_n=0, bigram_vocab_size=2048, bigram_dim=64, train_batch_tokens=16 * 256,
        iterations=450, max_wallclock_seconds=0.0, checkpoint_every=100,
    ),
    # Tiny: the test suite.
    "test": dict(
        num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_mult=2.0, xsa_last_n=1,
        bigram_vocab_size=256, bigram_dim=64, train_batch_tokens=8 * 64, train_seq_len=64, micro_batches=1,
        iterations=20, warmdown_iters=10, max_wallclock_seconds=0.0, warmup_steps=2, val_loss_every=0,
        train_log_every=5, val_batch_size=8 * 64, val_max_tokens=4096, eval_batch_seqs=8,
        muon_momentum_warmup_steps=10, ema_decay=0.9, distill_ema_decay=0.9, dtype="fp32",
    ),
}
PRESETS["demo-self-teacher"] = {**PRESETS["demo-student"], "iterations": 450, "max_wallclock_seconds": 0.0,
                                "checkpoint_every": 100}


# Every boolean setting, and COMPILE besides `auto`, takes golf.errors' one set of boolean spellings.
DEVICES = ("auto", "cpu", "cuda")
# str fields holding `auto` or a boolean. They are stored as "auto" | "1" | "0", the values the scripts compare
# with, so `COMPILE=yes` means on everywhere (it used to mean off).
_AUTO_OR_BOOL = ("compile",)


def _parse_value(typ, raw: str, source: str):
    """Parse one string from the environment or the command line into the field's type."""
    try:
        if typ is bool:
            value = parse_bool(raw)
            if value is None:
                raise GolfError(f"{source}={raw!r} is not a valid bool (use {BOOL_SPELLINGS}); fix or unset it")
            return value
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        return raw
    except ValueError:
        raise GolfError(f"{source}={raw!r} is not a valid {typ.__name__}; fix or unset it") from None


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _field_type(f):
    return _TYPES[f.type] if isinstance(f.type, str) else f.type


def _parse_field(f, raw: str, source: str):
    if f.name in _AUTO_OR_BOOL:
        if raw.strip().lower() == "auto":
            return "auto"
        value = parse_bool(raw)
        if value is None:
            raise GolfError(f"{source}={raw!r}: use auto or a boolean ({BOOL_SPELLINGS})")
        return "1" if value else "0"
    return _parse_value(_field_type(f), raw, source)


_WARNED: set = set()  # misspelt names already warned about in this process


def warn_misspelt_settings(env) -> list[str]:
    """Warn (on stderr, once per name and process, rank 0 only) about environment variables that look like a
    misspelt setting, e.g. MAX_WALLCLOCK_SECOND: they are ignored, so the run would silently use the default.
    Only upper-case names within difflib ratio 0.85 of a setting's name count, so PATH, OMP_NUM_THREADS, RANK
    and the like never do. Returns the warning lines printed."""
    if env.get("RANK", "0") != "0":
        return []
    known = {f.name.upper() for f in fields(Config)} | {name.upper() for name in LEGACY_SETTINGS} | {"PRESET"}
    lines = []
    for name in sorted(env):
        if name in known or name in _WARNED or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            continue
        match = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if match:
            _WARNED.add(name)
            lines.append(f"warning: {name} is not a setting; did you mean {match[0]}? (ignored)")
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return lines


def build_parser(description: str, extra=None, only=None, dry_run: bool = True,
                 defaults=None) -> argparse.ArgumentParser:
    """A parser with `--preset`, `--dry-run` (unless `dry_run` is False) and one `--flag` per config field (help
    shows the default, or the text `defaults` gives for that field). `only`: the fields the script uses (default:
    all); the others get no flag and stay out of --help, so it lists what applies (their environment variables
    are still read, like every script's)."""
    epilog = (f"Booleans (and COMPILE besides auto) take {BOOL_SPELLINGS}, in any case; empty means off.\n"
              "DEVICE is auto, cpu or cuda. An environment variable that looks like a misspelt setting gets a warning.")
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=epilog)
    parser.add_argument("--preset", default=None, help=f"named configuration: {', '.join(PRESETS)} (env PRESET)")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="print the resolved config and model size, then exit")
    if extra:
        extra(parser)
    groups = {}
    for f in fields(Config):
        if only is not None and f.name not in only:
            continue
        g = f.metadata["group"]
        if g not in groups:
            groups[g] = parser.add_argument_group(f"{g} (env var = upper-case name)")
        typ = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        extra_kw = dict(nargs="?", const="1") if typ is bool else {}  # `--ema-enabled` alone means 1
        shown = (defaults or {}).get(f.name, repr(f.default))
        groups[g].add_argument(flag, dest=f.name, default=None, metavar=typ.__name__.upper(), **extra_kw,
                               help=f"{f.metadata['help']} [{f.name.upper()}, default {shown}]")
    return parser


def resolve_config(args: argparse.Namespace | None = None, env: dict | None = None) -> Config:
    """Defaults, then the preset, then environment variables, then `--flags`."""
    env = os.environ if env is None else env
    flag = getattr(args, "preset", None) if args is not None else None
    preset = flag or env.get("PRESET", "student")
    if preset not in PRESETS:
        raise GolfError(f"{'--preset' if flag else 'PRESET'}={preset!r} is not a preset; choose one of: {', '.join(PRESETS)}")
    warn_misspelt_settings(env)
    cfg = Config(**PRESETS[preset])
    _apply_legacy_env(cfg, env)
    for f in fields(Config):
        raw = env.get(f.name.upper())
        if raw is not None:
            setattr(cfg, f.name, _parse_field(f, raw, f.name.upper()))
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is not None:
            setattr(cfg, f.name, _parse_field(f, raw, "--" + f.name.replace("_", "-")))
    validate(cfg)
    return cfg


def _apply_legacy_env(cfg: Config, env):
    """The study's variables (LEGACY_SETTINGS) at the environment's precedence; one that contradicts the setting
    that replaced it, set beside it, is refused."""
    for old, (new, values) in LEGACY_SETTINGS.items():
        raw = env.get(old.upper())
        if raw is None:
            continue
        value = values[_parse_value(bool, raw, old.upper())]
        given = env.get(new.upper())
        if given is not None and given != value:
            raise GolfError(f"{old.upper()}={raw} means {new.upper()}={value}, but {new.upper()}={given} is set too; "
                            f"unset {old.upper()}")
        setattr(cfg, new, value)


# The checks of the settings whose valid values live with their owner, not here: a teacher's module checks
# DISTILL_TEACHER and the teachers' own settings, golf/losses.py the targets, tails and draws, golf/arms.py the
# seed-faithful defects. Each owner registers its check under the setting it owns when it is imported (this
# module cannot import them: they import it); golf/choices.py imports them all, so that every script that
# resolves its configuration there runs every check, before any log opens.
OWNER_CHECKS: dict = {}  # setting (field name) -> check(cfg), raising GolfError


def owner_check(setting: str):
    """Decorator: register `check(cfg)` as the check of `setting`, which its owner's registry lists the values of."""
    if setting not in {f.name for f in fields(Config)}:
        raise ValueError(f"{setting} is not a Config field")

    def register(check):
        OWNER_CHECKS[setting] = check
        return check

    return register


def check_choice(name: str, value: str, choices) -> None:
    """Refuse a value that is not one of a registry's keys (the one message of every such choice)."""
    if value not in choices:
        raise GolfError(f"{name}={value!r}: use one of {', '.join(choices)}")


def validate(cfg: Config):
    """Catch inconsistent settings before any work starts: this module's own checks, then the owners' checks
    (OWNER_CHECKS) in the order of the fields they check."""
    if cfg.model_dim % cfg.num_heads:
        raise GolfError(f"MODEL_DIM={cfg.model_dim} is not divisible by NUM_HEADS={cfg.num_heads}")
    if cfg.num_heads % cfg.num_kv_heads:
        raise GolfError(f"NUM_HEADS={cfg.num_heads} is not divisible by NUM_KV_HEADS={cfg.num_kv_heads}")
    if (cfg.model_dim // cfg.num_heads) % 2:
        raise GolfError("head dim (MODEL_DIM / NUM_HEADS) must be even for RoPE")
    if cfg.device not in DEVICES:  # `gpu` used to fall through to the CPU
        raise GolfError(f"DEVICE={cfg.device!r}: use auto, cpu or cuda")
    if cfg.compile not in ("auto", "1", "0"):
        raise GolfError(f"COMPILE={cfg.compile!r}: use auto or a boolean ({BOOL_SPELLINGS})")
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise GolfError(f"DTYPE={cfg.dtype!r}: use auto, bf16 or fp32")
    if cfg.compressor not in ("auto", "zstd", "lzma"):
        raise GolfError(f"COMPRESSOR={cfg.compressor!r}: use auto, zstd or lzma")
    start, ramp, stop = cfg.distill_start_frac, cfg.distill_ramp_frac, cfg.distill_stop_frac
    if not 0 <= start < 1:  # written so that NaN fails too
        raise GolfError(f"DISTILL_START_FRAC={start}: use a fraction of the run in [0, 1) (0: the teacher from the start)")
    if not start < stop <= 1:
        raise GolfError(f"DISTILL_STOP_FRAC={stop}: use a fraction of the run in (DISTILL_START_FRAC={start}, 1] "
                        "(1: on to the end)")
    if not 0 <= ramp <= stop - start:
        raise GolfError(f"DISTILL_RAMP_FRAC={ramp}: use 0 (on at once) up to DISTILL_STOP_FRAC - DISTILL_START_FRAC = "
                        f"{stop - start:g}, so the ramp ends by the time the term switches off")
    for f in fields(Config):
        if f.name in OWNER_CHECKS:
            OWNER_CHECKS[f.name](cfg)


def fill_unset(cfg: Config, args: argparse.Namespace, source: Config, names, env=None) -> Config:
    """Copy `source`'s value of each field in `names` that neither a --flag nor an environment variable set (a
    preset does not count): a checkpoint's own data, tokenizer and vocabulary beat a preset's or the defaults."""
    env = os.environ if env is None else env
    for name in names:
        if name.upper() not in env and getattr(args, name, None) is None:
            setattr(cfg, name, getattr(source, name))
    return cfg
