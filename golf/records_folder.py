"""A records folder as the checker reads it (golf/check.py): its files, its submission.json (numbers kept as
written, so their precision is known) and which log and which line count for each seed.

Which line counts: among a log's final `<label> val_loss:x val_bpb:y` lines (a validation during training,
`step:N/M ...`, is not one), the label the json names: the one whose values equal the json's per-seed figures (a
top-level table keyed by seed), else the one whose mean equals the json's val_bpb, preferring `_exact` labels;
without such a match, the last `*_exact` label, else the last label. One label for the whole folder. A log's
seed is its own `seed:` line, else the one in its file name. Logs that repeat a seed (reruns, copies) are shown
and not counted: the counted one is the log whose value equals the json's per-seed figure, else the first by
file name. A log's value "agrees" with the json's when the json's is it rounded or cut at the json's last digit.
"""
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from golf.challenge_logs import LogFacts, Scored, decode_text, parse_log
from golf.errors import GolfError
from golf.stats import mean_std

MAX_FILE_BYTES = 64 << 20  # a larger file is not read (logs are well under 1 MB)
MAX_FILES = 2000
LOG_SUFFIXES = (".log", ".txt", ".out")
ARTIFACT_SUFFIXES = (".ptz", ".zst", ".br", ".xz", ".lzma", ".zlib")  # a compressed model (not a raw .pt)

@dataclass
class Run:
    log: LogFacts
    score: Scored | None
    counted: bool = False
    note: str = ""

    @property
    def seed(self) -> int | None:
        return self.log.seed_value


@dataclass
class Folder:
    path: str
    texts: dict = field(default_factory=dict)  # relative path -> text
    skipped: list = field(default_factory=list)  # "path (why)"
    logs: list = field(default_factory=list)  # LogFacts, by file name
    json: dict | None = None
    json_text: str = ""
    json_error: str = ""
    script: str | None = None  # train_gpt.py's text
    script_bytes: int | None = None
    artifacts: dict = field(default_factory=dict)  # relative path -> bytes


# ----------------------------------------------------------------------------------------------------------
# Reading


def _walk(root: str):
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                         and os.path.relpath(os.path.join(folder, d), root).count(os.sep) < 3)
        for name in sorted(files):
            count += 1
            if count > MAX_FILES:
                return
            yield os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")


def _is_records_folder(path: str) -> bool:
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    return bool(names & {"submission.json", "README.md", "train_gpt.py"}) or any(
        n.endswith(LOG_SUFFIXES) for n in names)


def _subfolders(path: str) -> list[str]:
    """Folders one and two levels down (records/ holds track_*/ which hold the records folders)."""
    out = []
    try:
        for d in sorted(os.listdir(path)):
            if os.path.isdir(os.path.join(path, d)):
                out.append(d)
                if not _is_records_folder(os.path.join(path, d)):
                    out += [f"{d}/{e}" for e in sorted(os.listdir(os.path.join(path, d)))
                            if os.path.isdir(os.path.join(path, d, e))]
    except OSError:
        pass
    return out


def read_folder(path: str) -> Folder:
    """Every file of the records folder that the checks read; GolfError when `path` is not one."""
    if not os.path.isdir(path):
        raise GolfError(f"{path} is not a folder; give the records folder (the one holding submission.json)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise GolfError(f"{path} cannot be read (permissions); give a folder you can read")
    if not _is_records_folder(path):
        inner = [rel for rel in _subfolders(path) if _is_records_folder(os.path.join(path, rel))]
        if inner:
            raise GolfError(f"{path} holds {len(inner)} records folders ({', '.join(inner[:3])}"
                            f"{', ...' if len(inner) > 3 else ''}), not one; run the checker on each of them")
        raise GolfError(f"{path} has no submission.json, README.md, train_gpt.py or training log: not a records "
                        "folder; give the folder of one submission")
    f = Folder(path=path)
    for rel in _walk(path):
        full = os.path.join(path, rel)
        if not os.path.isfile(full):  # a dangling link, a pipe: nothing to read (a pipe would block)
            f.skipped.append(f"{rel} (not a regular file)")
            continue
        try:
            size = os.path.getsize(full)
        except OSError as e:
            f.skipped.append(f"{rel} (unreadable: {e.strerror})")
            continue
        base = rel.rsplit("/", 1)[-1]
        if base.endswith(ARTIFACT_SUFFIXES):
            f.artifacts[rel] = size
            continue
        wanted = base in ("submission.json", "README.md", "train_gpt.py") or base.endswith(LOG_SUFFIXES) or \
            rel.startswith("logs/")
        if not wanted:
            continue
        if size > MAX_FILE_BYTES:
            f.skipped.append(f"{rel} (over {MAX_FILE_BYTES >> 20} MiB, not read)")
            continue
        try:
            with open(full, "rb") as fh:
                data = fh.read()
        except OSError as e:
            f.skipped.append(f"{rel} (unreadable: {e.strerror})")
            continue
        if rel == "train_gpt.py":
            f.script_bytes = len(data)
        text = decode_text(data)
        if text is None:
            f.skipped.append(f"{rel} (binary)")
            continue
        f.texts[rel] = text
    f.script = f.texts.get("train_gpt.py")
    if "submission.json" in f.texts:
        f.json_text = f.texts["submission.json"]
        try:
            obj = json.loads(f.json_text, parse_float=Decimal)
        except ValueError as e:
            f.json_error = f"submission.json:{getattr(e, 'lineno', '?')}: not valid JSON ({getattr(e, 'msg', e)})"
        else:
            if isinstance(obj, dict):
                f.json = obj
            else:
                f.json_error = f"submission.json: a JSON {type(obj).__name__}, not an object"
    for rel, text in f.texts.items():
        base = rel.rsplit("/", 1)[-1].lower()
        if (base.endswith(LOG_SUFFIXES) or rel.startswith("logs/")) and not base.startswith(("readme", "requirements")):
            facts = parse_log(text, rel)
            if facts.is_training_log:
                f.logs.append(facts)
    return f


# ----------------------------------------------------------------------------------------------------------
# The json's numbers


def json_number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def _ulp(v) -> float:
    """One unit of the last digit the json wrote (1 for an integer)."""
    if isinstance(v, Decimal):
        exp = v.as_tuple().exponent
        return 10.0 ** exp if isinstance(exp, int) and exp < 0 else 1.0
    return 1.0


def agrees(value: float, stated, log_ulp: float = 0.0) -> bool:
    """`value` (from logs that wrote it to `log_ulp`) is the json's `stated` number to the json's precision:
    `stated` is `value` rounded or cut at its last digit (up to the logs' own rounding)."""
    s = json_number(stated)
    if s is None:
        return False
    unit, slack = _ulp(stated), 0.5 * log_ulp + 1e-12
    return -0.5 * unit - slack <= value - s < unit + slack


def json_line(f: Folder, key: str, after: int = 0) -> int:
    """The line of the json where `"key"` first appears (after line `after`); 0 if nowhere."""
    for i, line in enumerate(f.json_text.splitlines(), 1):
        if i > after and f'"{key}"' in line:
            return i
    return 0


def json_where(f: Folder, key: str, after: int = 0) -> str:
    n = json_line(f, key, after)
    return f"submission.json:{n}" if n else "submission.json"


def seed_table(obj: dict | None) -> tuple[str, dict]:
    """The json's own per-seed figures: a top-level value keyed by seed ({"42": {...}}) or a list of objects
    with a "seed" each; (key, {seed: figures}) or ("", {})."""
    for key, v in (obj or {}).items():
        rows = {}
        if isinstance(v, dict) and v and all(re.fullmatch(r"\d+", str(k)) for k in v):
            rows = {int(k): x for k, x in v.items() if isinstance(x, dict)}
        elif isinstance(v, list) and v and all(isinstance(x, dict) and json_number(x.get("seed")) is not None
                                               for x in v):
            rows = {int(x["seed"]): x for x in v}
        if rows and any("val_bpb" in x or "val_loss" in x for x in rows.values()):
            return key, rows
    return "", {}


def track_name(value) -> str | None:
    """"record" / "non-record" from the json's track (10min_16mb, non_record_16mb, non-record-16mb, ...) or a
    folder name (track_10min_16mb, track_non_record_16mb); None when it says neither."""
    s = str(value or "").lower().replace("-", "_")
    if "non_record" in s or "nonrecord" in s or "unlimited" in s:
        return "non-record"
    if "10min" in s or s == "record":
        return "record"
    return None


def is_ours(f: Folder) -> bool:
    """A dump of this repository's quantize.py --submission (its json names the arm and what it trained from)."""
    return bool(f.json) and "arm" in f.json and "trained_from" in f.json


# ----------------------------------------------------------------------------------------------------------
# Which log and line count


def _last(log: LogFacts, label: str) -> Scored | None:
    return next((s for s in reversed(log.scored) if s.label == label), None)


def _runs_for(f: Folder, label: str, table: dict) -> list[Run]:
    runs = [Run(log, _last(log, label)) for log in f.logs]
    by_seed: dict = {}
    for r in runs:
        if r.score is None:
            r.note = f"no `{label}` line"
            continue
        if r.seed is None:
            key = ("file", r.log.sha256)  # no seed: one run per distinct content
        else:
            key = ("seed", r.seed)
        by_seed.setdefault(key, []).append(r)
    for (kind, seed), group in by_seed.items():
        figure = table.get(seed, {}).get("val_bpb") if kind == "seed" else None
        chosen = next((r for r in group if figure is not None and agrees(r.score.val_bpb, figure, r.score.ulp)),
                      group[0])
        chosen.counted = True
        for r in group:
            if r is not chosen:
                what = f"seed {seed}" if kind == "seed" else "its content"
                r.note = f"repeats {what} of {chosen.log.file}: shown, not counted"
    for r in runs:
        if r.log.seed and r.log.name_seed is not None and r.log.name_seed != r.log.seed.value:
            r.note = (r.note + "; " if r.note else "") + (f"its name says seed {r.log.name_seed}, its line "
                                                           f"{r.log.seed.line} says {r.log.seed.value}")
    return runs


def counted_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.counted]


def select_runs(f: Folder) -> tuple[str, list[Run]]:
    """(the scored label, one Run per log) by the rule in the module docstring."""
    labels = list(dict.fromkeys(s.label for log in f.logs for s in log.scored))
    if not labels:
        return "", [Run(log, None, note="no final val_loss/val_bpb line") for log in f.logs]
    ends = [next((s.label for s in reversed(log.scored) if "_exact" in s.label), log.scored[-1].label)
            for log in f.logs if log.scored]
    default = Counter(ends).most_common(1)[0][0]
    _, table = seed_table(f.json)
    headline = (f.json or {}).get("val_bpb")

    def rank(label):  # among matching labels: _exact first, then the default
        return ("_exact" in label, label == default)

    if table:
        matches = {}
        for label in labels:
            runs = _runs_for(f, label, table)
            matches[label] = sum(1 for r in counted_runs(runs) if r.seed in table
                                 and agrees(r.score.val_bpb, table[r.seed].get("val_bpb"), r.score.ulp))
        best = max(labels, key=lambda lb: (matches[lb],) + rank(lb))
        if matches[best]:
            return best, _runs_for(f, best, table)
    if json_number(headline) is not None:
        fits = [lb for lb in labels if (c := counted_runs(_runs_for(f, lb, table)))
                and agrees(mean_std([r.score.val_bpb for r in c])[0], headline, max(r.score.ulp for r in c))]
        if fits:
            best = max(fits, key=rank)
            return best, _runs_for(f, best, table)
    return default, _runs_for(f, default, table)
