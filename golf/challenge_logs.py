"""What a challenge training log states: its seed, scored lines, training and evaluation time, size lines.

Logs of the challenge's records vary (the baseline's `key:value` lines, late records' `key: value`, a printed
hyperparameter list, the script's own source at the top). Every pattern here needs a literal number where the
value goes, so the `log0(f"...{x:.8f}")` lines of a printed source never match. Each fact keeps its 1-based
line number: the checker's evidence is `file:line`.
"""
import hashlib
import re
from dataclasses import dataclass, field

_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
# `<label> val_loss:<x> [word] val_bpb:<y> ...`: the word allows `... sliding val_loss:x sliding val_bpb:y`.
_SCORED = re.compile(rf"^(?P<label>.*?)\s*\bval_loss:\s*(?P<loss>{_NUM})\s+(?:\S+\s+)?val_bpb:\s*(?P<bpb>{_NUM})\b")
_PERIODIC = re.compile(r"\d+/\d+|\bstep\b")  # a validation during training, not a final score
_PREFIX = re.compile(r"^(?:\[[^\]]*\]:?\s*)+")  # [rank0]: or [timestamp] before a line
_EVAL_TIME = re.compile(rf"\beval_time:\s*(?P<t>{_NUM})\s*(?P<u>ms|s)\b")
_TOTAL_EVAL = re.compile(rf"^\s*total_eval_time:\s*(?P<t>{_NUM})\s*(?P<u>ms|s)\s*$")
_STOP = re.compile(rf"^\s*stopping_early:\s*(?P<why>\w+)\s+train_time:\s*(?P<t>{_NUM})\s*(?P<u>ms|s|m)\s+"
                   r"step:\s*(?P<step>\d+)/(?P<of>\d+)")
_STEP = re.compile(rf"^\s*(?:step:)?\s*(?P<step>\d+)/(?P<of>\d+)\b.*?\btrain_time:\s*(?P<t>{_NUM})\s*(?P<u>ms|s|m)\b")
_SEED = re.compile(r"^\s*seed\s*:\s*(\d+)\s*$")
_NAME_SEED = re.compile(r"seed[_-]?(\d+)", re.I)
# The qualified lines are the compressed model (`int8+zlib`, `int6+zstd`, `quantized+brotli`); the bare
# `Serialized model: N bytes` / `Total submission size: N bytes` are the raw fp checkpoint.
_MODEL = re.compile(r"^\s*Serialized model\s+(?P<what>[^:]+?):\s*(?P<n>\d+)\s*bytes")
_CODE = re.compile(r"^\s*Code size(?:\s*\((?P<kind>[^)]*)\))?:\s*(?P<n>\d+)\s*bytes")
_TOTAL = re.compile(r"^\s*Total submission size\s+(?P<what>[^:]+?):\s*(?P<n>\d+)\s*bytes")
_TRAIN_PATTERN = re.compile(r"^\s*train_files:\s*(\S+)|^\s*train_loader:.*\bpattern=(\S+)")
_VAL_PATTERN = re.compile(r"^\s*val_files:\s*(\S+)|^\s*val_loader:.*\bpattern=(\S+)")
_TTT_ON = re.compile(r"^\s*ttt_enabled:\s*(?:True|1)\s*$", re.I)
_UNIT = {"ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class Scored:
    """One final scored line."""

    label: str  # what precedes val_loss, e.g. final_int6_sliding_window_exact
    val_loss: float
    val_bpb: float
    line: int
    eval_seconds: float | None = None  # its eval_time, or that of its twin without `_exact`
    ulp: float = 0.0  # one unit of the last digit the log wrote (1e-8 for an `_exact` line)


@dataclass
class Fact:
    value: object
    line: int


@dataclass
class LogFacts:
    file: str  # the path relative to the records folder
    sha256: str
    seed: Fact | None = None  # the log's own `seed:` line
    name_seed: int | None = None  # a seed in the file name (train_seed42.log)
    scored: list[Scored] = field(default_factory=list)
    train_seconds: Fact | None = None
    stop: str | None = None  # wallclock_cap (the stop line's reason), iterations, or None when not said
    steps: int | None = None
    eval_total: Fact | None = None  # a `total_eval_time:` line
    model_bytes: Fact | None = None
    code_bytes: Fact | None = None  # the code size the log counted (compressed where it says so)
    code_kind: str = ""  # "" or what the log says in brackets (`compressed`)
    total_bytes: Fact | None = None
    train_pattern: Fact | None = None
    val_pattern: Fact | None = None
    ttt_line: int | None = None  # a line showing test-time training on val tokens at evaluation

    @property
    def is_training_log(self) -> bool:
        return bool(self.scored or self.train_seconds or self.total_bytes or self.seed)

    @property
    def seed_value(self) -> int | None:
        """The log's own seed line, else its file name's."""
        return self.seed.value if self.seed else self.name_seed


def _decimals(number: str) -> int:
    mantissa = number.lower().split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def _seconds(m) -> float:
    return float(m["t"]) * _UNIT[m["u"]]


def parse_log(text: str, file: str) -> LogFacts:
    """Every fact of one log (the last occurrence of each, the first seed line)."""
    facts = LogFacts(file=file, sha256=hashlib.sha256(text.encode("utf-8", "replace")).hexdigest())
    name = file.rsplit("/", 1)[-1]
    m = _NAME_SEED.search(name)
    facts.name_seed = int(m[1]) if m else None
    twins: dict[str, float] = {}  # eval_time of a label's non-exact line
    last_step = None
    for i, raw in enumerate(text.splitlines(), 1):
        line = _PREFIX.sub("", raw)
        if m := _SCORED.match(line):
            label = m["label"].strip()
            if label and "{" not in label and not _PERIODIC.search(label):
                t = _EVAL_TIME.search(line)
                secs = _seconds(t) if t else None
                if secs is not None:
                    twins[label] = secs
                digits = min(_decimals(m["loss"]), _decimals(m["bpb"]))
                facts.scored.append(Scored(label, float(m["loss"]), float(m["bpb"]), i,
                                           secs if secs is not None else twins.get(label.replace("_exact", "")),
                                           10.0 ** -digits))
                if facts.ttt_line is None and "ttt" in label.lower():
                    facts.ttt_line = i
            elif _PERIODIC.search(label) and (s := _STEP.match(line)):
                last_step = (s, i)
            continue
        if m := _STOP.match(line):
            facts.train_seconds, facts.stop, facts.steps = Fact(_seconds(m), i), m["why"], int(m["step"])
        elif m := _STEP.match(line):
            last_step = (m, i)
        elif m := _TOTAL_EVAL.match(line):
            facts.eval_total = Fact(_seconds(m), i)
        elif m := _MODEL.match(line):
            facts.model_bytes = Fact(int(m["n"]), i)
        elif m := _CODE.match(line):
            kind = (m["kind"] or "").strip()
            if not facts.code_bytes or kind != "uncompressed":  # the counted one is the compressed one
                facts.code_bytes, facts.code_kind = Fact(int(m["n"]), i), kind
        elif m := _TOTAL.match(line):
            facts.total_bytes = Fact(int(m["n"]), i)
        elif facts.seed is None and (m := _SEED.match(line)):
            facts.seed = Fact(int(m[1]), i)
        elif m := _TRAIN_PATTERN.match(line):
            facts.train_pattern = Fact(m[1] or m[2], i)
        elif m := _VAL_PATTERN.match(line):
            facts.val_pattern = Fact(m[1] or m[2], i)
        if facts.ttt_line is None and _TTT_ON.match(line):
            facts.ttt_line = i
    if facts.train_seconds is None and last_step is not None:
        m, i = last_step
        facts.train_seconds, facts.steps = Fact(_seconds(m), i), int(m["step"])
        facts.stop = "iterations" if m["step"] == m["of"] else None
    return facts


def decode_text(data: bytes) -> str | None:
    """A file's text: UTF-8 (its BOM dropped) or UTF-16 with its BOM, else Latin-1; None for binary data (a NUL
    byte)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            return None
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")
