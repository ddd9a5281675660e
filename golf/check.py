"""Judge a records folder, ours or a participant's, by the challenge's rules: one line per check, each pass,
fail or unknown, with the evidence (`file:line`) it rests on.

    python check_submission.py records/track_10min_16mb/<name> [--against DIR | --against-values v1,v2,...]
                               [--data DATA_PATH] [--json]

The rules, as this checker applies them:
- files: README.md; submission.json naming a name or author, a github_id and val_bpb; at least one training log
  (a text file (.log, .txt, .out, or anything under logs/) stating a seed, a score, a training time or a size);
  a train_gpt.py that compiles (compile(), nothing run).
- results: each log's seed and scored line (which line counts, and which log of a repeated seed: the rule in
  golf/records_folder.py); the json's val_bpb (and val_loss, per-seed figures) agree with the counted runs.
- size: train_gpt.py's bytes + the compressed model's (the logs' `Serialized model <codec>:` line, or a
  compressed artifact file: *.ptz, *.zst, ...) <= 16,000,000 for every log; where the file exceeds the cap
  only because the log counts its code compressed (`Code size (compressed)`), unknown. The json's byte
  fields must equal the file's and the logs' numbers.
- time (record track only; a non-record folder is judged on size): training <= 600 s per log (its
  `stopping_early` line, else its last step line); the cap is checked between steps, so the step that crosses
  it may finish (overrun <= one average step). Evaluation <= 600 s: the log's `total_eval_time`, else the
  scored line's eval_time (or its twin without `_exact`). Unknown where a log does not say.
- significance (with --against): the challenge's rule on val_loss in nats: the mean improvement over the
  baseline exceeds 0.005 at p < 0.01, one-sided (H0: improvement <= 0.005): paired t-test when both folders have
  the same two or more seeds, Welch's otherwise, one-sample against a single --against-values value.
  seeds_needed: runs per side for 80% power at p < 0.01 if the true improvement and spread are the observed.
- leakage: the training data pattern (the logs' `train_files:` / `train_loader: ... pattern=`, else a
  `*train*.bin` literal of the script, compressed blobs decoded) must not match a val shard; with --data, the
  share of val 32-token spans (golf/dedup.py) found in train must be <= 5%. Test-time training on val tokens
  is shown, not judged (legal only score-first).
- track: the json's track against the folder it sits in (track_10min_16mb / track_non_record_16mb); for our
  own dumps, against what the arm trained from: record only when all of it was made inside the budget.

Verdict: fail if any check fails, else unknown if any is unknown, else pass. Exit status: 0 pass, 1 fail,
3 unknown (nothing failed, something could not be decided), 2 for a folder that cannot be read.
"""
import base64
import fnmatch
import json
import lzma
import math
import os
import re
import zlib
from dataclasses import asdict, dataclass

from golf.errors import GolfError
from golf.records_folder import (Folder, Run, agrees, counted_runs, is_ours, json_line, json_number, json_where,
                                 read_folder, seed_table, select_runs, track_name)
from golf.runs import SIZE_CAP
from golf.stats import POWER, mean_std, paired_ttest

TIME_CAP_S = 600.0
MIN_GAIN_NATS = 0.005  # a new record beats the last by at least this much val_loss...
P_MAX = 0.01  # ...shown at this one-sided p
LEAK_SHARE = 0.05  # a val split copied into train shows ~100% of its spans; web text's own repeats, a few %
MAX_DATA_TOKENS = 20_000_000  # per split for --data: ~160 MB of span hashes; beyond it, a share of the first
TRACKS = {"record": "10min_16mb", "non-record": "non_record_16mb"}
EXIT = {"pass": 0, "fail": 1, "unknown": 3}


@dataclass
class Check:
    name: str
    status: str  # pass | fail | unknown
    evidence: str


# ----------------------------------------------------------------------------------------------------------
# The checks


def _combine(statuses) -> str:
    statuses = list(statuses)
    return "fail" if "fail" in statuses else "unknown" if "unknown" in statuses or not statuses else "pass"


def check_files(f: Folder) -> Check:
    problems, found = [], []
    if "README.md" in f.texts:
        found.append("README.md")
    else:
        problems.append("no README.md")
    if f.json_error:
        problems.append(f.json_error)
    elif f.json is None:
        problems.append("no submission.json")
    else:
        j = f.json
        missing = [k for k, ok in (("name or author", j.get("name") or j.get("author")),
                                   ("github_id", j.get("github_id")),
                                   ("val_bpb", json_number(j.get("val_bpb")) is not None)) if not ok]
        if missing:
            problems.append(f"submission.json lacks {', '.join(missing)}")
        else:
            found.append(f"submission.json ({'name' if j.get('name') else 'author'}, github_id "
                         f"{json_where(f, 'github_id')}, val_bpb {json_where(f, 'val_bpb')})")
    if f.logs:
        found.append(f"{len(f.logs)} training log{'s' if len(f.logs) > 1 else ''}")
    else:
        problems.append("no training log (a .log/.txt stating a seed, score, training time or size)")
    if f.script is None:
        problems.append("no train_gpt.py" if f.script_bytes is None else "train_gpt.py is binary")
    else:
        try:
            compile(f.script, "train_gpt.py", "exec")
            found.append("train_gpt.py compiles")
        except (SyntaxError, ValueError) as e:
            problems.append(f"train_gpt.py:{getattr(e, 'lineno', '?')} does not compile ({getattr(e, 'msg', e)})")
    skipped = f"; skipped: {', '.join(f.skipped)}" if f.skipped else ""
    if problems:
        also = f" (found: {', '.join(found)})" if found else ""
        return Check("files", "fail", "; ".join(problems) + also + skipped)
    return Check("files", "pass", ", ".join(found) + skipped)


def check_size(f: Folder, runs: list[Run]) -> Check:
    statuses, parts = [], []
    code = f.script_bytes
    counted = counted_runs(runs)
    totals = []  # (bytes by the file, where, the log): every log, a repeat may be the run submitted
    for lg in f.logs:
        if code is not None and lg.model_bytes:
            totals.append((code + lg.model_bytes.value, f"{lg.file}:{lg.model_bytes.line}", lg))
    for rel, size in f.artifacts.items():
        if code is not None:
            totals.append((code + size, rel, None))
    if totals:
        worst, where, lg = max(totals, key=lambda t: t[0])
        text = f"train_gpt.py {code:,} + model ({where}) = {worst:,} bytes"
        if worst <= SIZE_CAP:
            statuses.append("pass")
            parts.append(f"{text} <= {SIZE_CAP:,} (the largest of {len(totals)})")
        elif lg is not None and lg.code_kind and lg.total_bytes and lg.total_bytes.value <= SIZE_CAP:
            statuses.append("unknown")
            parts.append(f"{text} > {SIZE_CAP:,}; it fits only with the code counted as the log counts it "
                         f"({lg.code_kind}, {lg.file}:{lg.code_bytes.line}: total {lg.total_bytes.value:,}, "
                         f"{lg.file}:{lg.total_bytes.line}), not as the file ships")
        else:
            statuses.append("fail")
            parts.append(f"{text} > {SIZE_CAP:,}")
    elif any(lg.total_bytes for lg in f.logs):
        lg = max((lg for lg in f.logs if lg.total_bytes), key=lambda x: x.total_bytes.value)
        ok = lg.total_bytes.value <= SIZE_CAP
        statuses.append("pass" if ok else "fail")
        parts.append(f"the log's total {lg.total_bytes.value:,} ({lg.file}:{lg.total_bytes.line}) "
                     f"{'<=' if ok else '>'} {SIZE_CAP:,}; no model size line or train_gpt.py to recount it")
    else:
        statuses.append("unknown")
        parts.append("no model size: no `Serialized model <codec>:` line and no artifact file")
    for lg in f.logs:
        if code is not None and lg.code_bytes and not lg.code_kind and lg.code_bytes.value != code:
            parts.append(f"note: {lg.file}:{lg.code_bytes.line} logged code {lg.code_bytes.value:,} bytes, the file "
                         f"has {code:,}")
    # The json's byte fields against the file and the logs.
    j = f.json or {}
    logged_totals = {lg.total_bytes.value for lg in f.logs if lg.total_bytes}
    recounted = {t for t, _, _ in totals}
    models = {lg.model_bytes.value for lg in f.logs if lg.model_bytes} | set(f.artifacts.values())
    for key, v in j.items():
        n = json_number(v)
        if n is None or not key.startswith("bytes"):
            continue
        if key == "bytes_code":
            ok, against = code is not None and n == code, f"train_gpt.py's {code} bytes"
        elif key == "bytes_total":
            ok, against = n in logged_totals | recounted, "the logs' totals / code + model"
        elif key.startswith("bytes_model"):
            ok, against = n in models, "the logs' model sizes / the artifact"
        else:
            continue
        statuses.append("pass" if ok else "fail")
        if not ok:
            parts.append(f"{json_where(f, key)} {key} {int(n):,} matches none of {against}")
    key, table = seed_table(f.json)
    start = json_line(f, key) if key else 0
    for seed, row in table.items():
        run = next((r for r in counted if r.seed == seed), None)
        for name in ("bytes_total", "artifact_bytes", "bytes_model"):
            n = json_number(row.get(name))
            if n is None or run is None:
                continue
            log_value = run.log.model_bytes if name == "bytes_model" else run.log.total_bytes
            if log_value is not None and n != log_value.value:
                statuses.append("fail")
                parts.append(f"{json_where(f, name, json_line(f, str(seed), start))} seed {seed} {name} {int(n):,} != "
                             f"{run.log.file}:{log_value.line} {log_value.value:,}")
    status = _combine(statuses)
    return Check("size", status, "; ".join(parts))


def check_results(f: Folder, label: str, runs: list[Run]) -> Check:
    counted = counted_runs(runs)
    if not counted:
        return Check("results", "unknown", "no log states a final `<label> val_loss:x val_bpb:y` line")
    seeds = [r.seed for r in counted]
    repeats = [r for r in runs if r.score is not None and not r.counted]
    parts = [f"scored line `{label}`; {len(counted)} run{'s' if len(counted) > 1 else ''} counted (seeds "
             f"{', '.join(str(s) for s in seeds)})"
             + (f", {len(repeats)} repeat{'s' if len(repeats) > 1 else ''} not counted "
                f"({', '.join(r.log.file for r in repeats)})" if repeats else "")]
    statuses = []
    j = f.json or {}
    for metric in ("val_bpb", "val_loss"):
        stated = j.get(metric)
        if json_number(stated) is None:
            continue
        mean = mean_std([getattr(r.score, metric) for r in counted])[0]
        ok = agrees(mean, stated, max(r.score.ulp for r in counted))
        statuses.append("pass" if ok else "fail")
        text = (f"{json_where(f, metric)} {metric} {stated} {'=' if ok else '!='} the mean of the counted runs "
                f"{mean:.8f}")
        if not ok:
            alone = [r for r in runs if r.score is not None and agrees(getattr(r.score, metric), stated, r.score.ulp)]
            if alone:
                text += f" (it is {alone[0].log.file}:{alone[0].score.line}'s alone)"
        parts.append(text)
    key, table = seed_table(f.json)
    start = json_line(f, key) if key else 0
    for seed, row in table.items():
        run = next((r for r in counted if r.seed == seed), None)
        for metric in ("val_bpb", "val_loss"):
            if json_number(row.get(metric)) is None:
                continue
            where = json_where(f, metric, json_line(f, str(seed), start))
            if run is None:
                statuses.append("fail")
                parts.append(f"{where} seed {seed}: no log of that seed states `{label}`")
            elif not agrees(getattr(run.score, metric), row[metric], run.score.ulp):
                statuses.append("fail")
                parts.append(f"{where} seed {seed} {metric} {row[metric]} != {run.log.file}:{run.score.line} "
                             f"{getattr(run.score, metric):.8f}")
    if table and "fail" not in statuses:
        parts.append(f"the per-seed figures ({json_where(f, key)}) agree with the logs")
    if not statuses:
        statuses.append("unknown")
        parts.append("submission.json states no val_bpb to compare")
    return Check("results", _combine(statuses), "; ".join(parts))


def eval_seconds(run: Run) -> tuple[float, str] | None:
    """A run's evaluation time and where it is said: the log's total_eval_time, else the scored line's."""
    lg = run.log
    if lg.eval_total:
        return lg.eval_total.value, f"{lg.file}:{lg.eval_total.line}"
    if run.score is not None and run.score.eval_seconds is not None:
        return run.score.eval_seconds, f"{lg.file}:{run.score.line}"
    return None


def check_time(f: Folder, runs: list[Run], track: str | None) -> Check:
    timed = [r for r in runs if r.score is not None or r.log.train_seconds]
    longest = max((r.log.train_seconds.value for r in timed if r.log.train_seconds), default=None)
    if track == "non-record":
        said = f" (longest training {longest:,.0f} s)" if longest is not None else ""
        return Check("time", "pass", f"non-record track: judged on size only{said}")
    statuses, parts = [], []
    for r in timed:
        lg = r.log
        if lg.train_seconds is None:
            statuses.append("unknown")
            parts.append(f"{lg.file}: training time not said")
        else:
            t = lg.train_seconds.value
            step = t / lg.steps if lg.steps else 0.0
            ok = t <= TIME_CAP_S or (lg.stop == "wallclock_cap" and t - TIME_CAP_S <= step)
            statuses.append("pass" if ok else "fail")
            if not ok or t > TIME_CAP_S:
                parts.append(f"{lg.file}:{lg.train_seconds.line} training {t:.3f} s" +
                             (f" (the cap's last step, {step * 1000:.0f} ms/step)" if ok else f" > {TIME_CAP_S:.0f} s"))
        ev = eval_seconds(r)
        if ev is None:
            statuses.append("unknown")
            parts.append(f"{lg.file}: evaluation time not said")
        elif ev[0] > TIME_CAP_S:
            statuses.append("fail")
            parts.append(f"{ev[1]} evaluation {ev[0]:.1f} s > {TIME_CAP_S:.0f} s")
        else:
            statuses.append("pass")
    if not timed:
        return Check("time", "unknown", "no log states a training or evaluation time")
    evals = [e[0] for r in timed if (e := eval_seconds(r))]
    head = f"{len(timed)} log{'s' if len(timed) > 1 else ''}"
    if longest is not None:
        head += f": training <= {longest:.3f} s"
    if evals:
        head += f", evaluation <= {max(evals):.1f} s"
    return Check("time", _combine(statuses), "; ".join([head] + parts))


_BLOB = re.compile(r"""(?:b?["'])([A-Za-z0-9+/=!#$%&()*\-;<>?@^_`{|}~]{2000,})["']""")
_SOURCE_TRAIN = re.compile(r"""["']([^"'\s]*train[^"'\s]*\*[^"'\s]*\.bin)["']""")
_SOURCE_VAL = re.compile(r"""["']([^"'\s]*val[^"'\s]*\*[^"'\s]*\.bin)["']""")


def visible_source(script: str) -> str:
    """The script's text plus whatever compressed source it carries (base85/base64 + lzma/zlib blobs, as late
    records and our single file ship): decoded without running anything, at most 20 MB each."""
    out = [script]
    for m in _BLOB.finditer(script):
        for decode in (base64.b85decode, base64.b64decode):
            try:
                raw = decode(m[1])
            except ValueError:
                continue
            for d in (lzma.LZMADecompressor(), zlib.decompressobj()):
                try:
                    text = d.decompress(raw, 20 << 20)
                except (lzma.LZMAError, zlib.error):
                    continue
                out.append(text.decode("utf-8", "replace"))
                break
    return "\n".join(out)


def _val_name(pattern: str | None) -> str:
    """A val shard's file name: the val pattern's with its wildcards filled, else the challenge's."""
    base = os.path.basename(pattern) if pattern else "fineweb_val_*.bin"
    return base.replace("*", "000000")


def check_leakage(f: Folder, data_path: str | None) -> Check:
    statuses, parts = [], []
    train = [(lg.train_pattern.value, f"{lg.file}:{lg.train_pattern.line}") for lg in f.logs if lg.train_pattern]
    vals = [lg.val_pattern.value for lg in f.logs if lg.val_pattern]
    if f.script is not None:
        source = visible_source(f.script)
        train += [(m[1], "train_gpt.py") for m in _SOURCE_TRAIN.finditer(source)]
        vals += [m[1] for m in _SOURCE_VAL.finditer(source)]
    val_name = _val_name(vals[0] if vals else None)
    leaks = [(p, w) for p, w in dict.fromkeys(train) if fnmatch.fnmatch(val_name, os.path.basename(p))]
    if leaks:
        statuses.append("fail")
        parts.append(f"the training data pattern {leaks[0][0]} ({leaks[0][1]}) matches the val shard {val_name}")
    elif train:
        statuses.append("pass")
        p, w = train[0]
        parts.append(f"training reads {os.path.basename(p)} ({w}), no val shard ({val_name})")
    else:
        statuses.append("unknown")
        parts.append("no training data pattern visible in the logs or train_gpt.py")
    ttt = next((lg for lg in f.logs if lg.ttt_line), None)
    if ttt:
        parts.append(f"evaluation trains on val tokens (test-time training, {ttt.file}:{ttt.ttt_line}): legal only "
                     "score-first, not judged here")
    if data_path:
        share, n_val, n_train, capped = val_span_share(data_path)
        ok = share <= LEAK_SHARE
        statuses.append("pass" if ok else "fail")
        parts.append(f"--data {data_path}: {share:.2%} of {n_val:,} val 32-token spans found in "
                     f"{'the first ' if capped else ''}{n_train:,} train tokens ({'<=' if ok else '>'} "
                     f"{LEAK_SHARE:.0%})")
    return Check("leakage", _combine(statuses), "; ".join(parts))


def _documents(paths: list[str], bos: int) -> tuple[list, int, bool]:
    """The documents (split at BOS) of the shards, up to MAX_DATA_TOKENS tokens: (docs, tokens, capped)."""
    import numpy as np

    from golf.shards import load_shard

    parts, total = [], 0
    for p in paths:
        tokens = load_shard(p)
        take = min(len(tokens), MAX_DATA_TOKENS - total)
        parts.append(np.asarray(tokens[:take]))
        total += take
        if total >= MAX_DATA_TOKENS:
            break
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    starts = np.flatnonzero(ids == bos)
    docs = [d[1:] if len(d) and d[0] == bos else d for d in np.split(ids, starts) if len(d)]
    return docs, total, total >= MAX_DATA_TOKENS


def val_span_share(data_path: str) -> tuple[float, int, int, bool]:
    """(share of val DEDUP_TOKENS-token spans found in train, val spans, train tokens read, train capped)."""
    from golf.dedup import DEDUP_TOKENS, SpanIndex
    from golf.shards import list_shards

    bos = 1  # SentencePiece's BOS, the challenge's; our datasets record theirs in manifest.json
    try:
        with open(os.path.join(data_path, "manifest.json"), encoding="utf-8") as fh:
            bos = int(json.load(fh).get("bos_id", bos))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    train_docs, n_train, capped = _documents(list_shards(data_path, "train", "--data"), bos)
    val_docs, _, _ = _documents(list_shards(data_path, "val", "--data"), bos)
    index = SpanIndex(train_docs, DEDUP_TOKENS)
    counts = [index.shared(d) for d in val_docs]
    found, spans = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return (found / spans if spans else 0.0), spans, n_train, capped


_SETTING = re.compile(r"""os\.environ\.setdefault\(['"](\w+)['"],\s*['"]([^'"]*)['"]\)""")


def our_track(f: Folder) -> tuple[str, list[str]]:
    """What an arm of ours trained from, from its dump's own fields: "non-record" when anything was made
    before its timed run (a logit cache, a teacher checkpoint), else "record"; with the evidence."""
    j, why = f.json, []
    made = j.get("trained_from") if isinstance(j.get("trained_from"), dict) else {}
    if made.get("teacher_inside_budget") is False:
        why.append(f"teacher {made.get('teacher')} made before the run ({json_where(f, 'teacher_inside_budget')})")
    for key in ("logit_cache", "teacher_checkpoint"):
        if made.get(key):
            why.append(f"{key} {made[key]} ({json_where(f, key)})")
    settings = dict(_SETTING.findall(f.script or ""))
    for key in ("LOGIT_CACHE", "TEACHER_PATH"):
        if settings.get(key):
            why.append(f"train_gpt.py sets {key}={settings[key]}")
    for lg in f.logs:
        text = f.texts.get(lg.file, "")
        m = re.search(r"^distill:arm .*\btrack:(\S+)", text, re.M)
        if m and m[1] == "non-record":
            line = text[:m.start()].count("\n") + 1
            why.append(f"{lg.file}:{line} track:non-record")
    return ("non-record" if why else "record"), why


def folder_track(f: Folder) -> str | None:
    """The track the folder sits in, from its parent folder's name."""
    return track_name(os.path.basename(os.path.dirname(os.path.abspath(f.path))))


def check_track(f: Folder) -> tuple[Check, str | None]:
    """The track check and the track the other checks judge by."""
    stated_raw = (f.json or {}).get("track")
    stated, where = track_name(stated_raw), json_where(f, "track")
    if is_ours(f):
        derived, why = our_track(f)
        basis = "; ".join(why) if why else "everything it trained from was made inside its timed run"
        if stated is None:
            return Check("track", "fail", f"submission.json states no track; its own fields say {derived}: "
                         f"{basis}"), derived
        ok = stated == derived and stated_raw == TRACKS[derived]
        return Check("track", "pass" if ok else "fail",
                     f"{where} track {stated_raw}; {'=' if ok else 'but'} {TRACKS[derived]} by its own fields: "
                     f"{basis}"), derived
    parent = folder_track(f)
    if stated and parent and stated != parent:
        return Check("track", "fail", f"{where} track {stated_raw} but the folder sits in "
                     f"track_{TRACKS[parent]}"), stated
    if stated or parent:
        said = f"{where} track {stated_raw}" if stated else "no track in submission.json"
        place = f"in track_{TRACKS[parent]}" if parent else "outside records/"
        return Check("track", "pass", f"{said}; folder {place}: "
                     f"{stated or parent}"), stated or parent
    return Check("track", "unknown", "neither submission.json nor the folder's place says the track "
                 "(judged as a record)"), None


# ----------------------------------------------------------------------------------------------------------
# Significance


def significance(base: dict, cand: dict) -> dict:
    """The challenge's test on val_loss (nats): baseline minus candidate, H0 "improvement <= MIN_GAIN_NATS",
    one-sided. `base` and `cand` map seed (or a position, for unseeded values) to val_loss."""
    from scipy.stats import t as student_t

    a, b = list(base.values()), list(cand.values())
    seeds = set(base) & set(cand)
    paired = len(a) >= 2 and set(base) == set(cand) and all(isinstance(s, int) for s in seeds)
    if len(a) == 1:
        kind = "one-sample against a fixed value"
        diffs = [a[0] - x for x in b]
        mean, std = mean_std(diffs)
        n = len(b)
    elif paired:
        kind = "paired by seed"
        order = sorted(seeds)
        test = paired_ttest([base[s] for s in order], [cand[s] for s in order])
        mean, std, n = test["mean"], test["std"], test["n"]
    else:
        kind = "Welch"
        (m1, s1), (m2, s2) = mean_std(a), mean_std(b)
        mean, n = m1 - m2, None
    if kind == "Welch":
        if len(a) < 2 or len(b) < 2:
            return {"kind": kind, "delta_nats": mean, "t": None, "p": None, "seeds_needed": None,
                    "why": "Welch's test needs two or more runs on each side"}
        v1, v2 = s1 * s1 / len(a), s2 * s2 / len(b)
        se = math.sqrt(v1 + v2)
        df = (v1 + v2) ** 2 / (v1 * v1 / (len(a) - 1) + v2 * v2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
        spread = math.sqrt(s1 * s1 + s2 * s2)  # se = spread / sqrt(n) for n runs per side

        def df_at(k):
            return (s1 ** 2 + s2 ** 2) ** 2 * (k - 1) / (s1 ** 4 + s2 ** 4) if spread > 0 else 2 * k - 2
    else:
        if n < 2:
            return {"kind": kind, "delta_nats": mean, "t": None, "p": None, "seeds_needed": None,
                    "why": "one run cannot show a spread: two or more are needed"}
        se, df, spread = std / math.sqrt(n), n - 1, std

        def df_at(k):
            return k - 1
    gap = mean - MIN_GAIN_NATS
    if se > 0:
        t = gap / se
        p = float(student_t.sf(t, df))
    else:
        t, p = (math.inf if gap > 0 else -math.inf), (0.0 if gap > 0 else 1.0)
    needed = None
    if gap > 0:
        for k in range(2, 10_001):
            if spread == 0 or (student_t.ppf(1 - P_MAX, df_at(k)) + student_t.ppf(POWER, df_at(k))) * spread / \
                    math.sqrt(k) <= gap:
                needed = k
                break
    return {"kind": kind, "delta_nats": mean, "t": t, "p": p, "seeds_needed": needed, "why": ""}


def check_significance(sig: dict, n_base: int, n_cand: int) -> Check:
    head = (f"{sig['kind']}, {n_cand} run{'s' if n_cand != 1 else ''} vs {n_base}: mean improvement "
            f"{sig['delta_nats']:+.5f} nats")
    if sig["p"] is None:
        return Check("significance", "fail", f"{head}; {sig['why']}")
    ok = sig["p"] < P_MAX
    needed = ("no number of seeds would show it (mean improvement <= 0.005)" if sig["seeds_needed"] is None
              else f"seeds needed: {sig['seeds_needed']} (80% power at p < {P_MAX} with the observed spread)")
    return Check("significance", "pass" if ok else "fail",
                 f"{head}, t {sig['t']:.3f}, p {sig['p']:.3g} ({'<' if ok else '>='} {P_MAX} for > "
                 f"{MIN_GAIN_NATS} nats); {needed}")


def _losses(runs: list[Run]) -> dict:
    return {(r.seed if r.seed is not None else f"#{i}"): r.score.val_loss for i, r in enumerate(counted_runs(runs))}


def parse_values(text: str) -> dict:
    """--against-values "2.07,2.08": {position: val_loss}."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GolfError(f"--against-values {text!r}: give val_loss numbers (nats) separated by commas, e.g. "
                        "2.0727,2.0731,2.0719") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise GolfError(f"--against-values {text!r}: give at least one finite val_loss")
    return {f"#{i}": v for i, v in enumerate(values)}


# ----------------------------------------------------------------------------------------------------------
# The report


def judge(path: str, against: str | None = None, against_values: str | None = None,
          data_path: str | None = None) -> dict:
    """Every check of the records folder `path`; the report as one JSON-ready dict."""
    f = read_folder(path)
    label, runs = select_runs(f)
    track_check, track = check_track(f)
    checks = [check_files(f), check_size(f, runs), check_results(f, label, runs), check_time(f, runs, track),
              check_leakage(f, data_path), track_check]
    report = {"folder": path, "track": TRACKS.get(track), "scored_label": label,
              "arm": f.json.get("arm") if is_ours(f) else None}
    if against or against_values:
        base = parse_values(against_values) if against_values else _losses(select_runs(read_folder(against))[1])
        cand = _losses(runs)
        if not base or not cand:
            checks.append(Check("significance", "unknown", "no counted val_loss in "
                                + ("this folder" if not cand else against)))
            report["significance"] = {"delta_nats": None, "t": None, "p": None, "seeds_needed": None}
        else:
            sig = significance(base, cand)
            checks.append(check_significance(sig, len(base), len(cand)))
            report["significance"] = {k: sig[k] for k in ("delta_nats", "t", "p", "seeds_needed", "kind")}
    verdict = _combine(c.status for c in checks)
    report.update(verdict=verdict, exit_code=EXIT[verdict], checks=[asdict(c) for c in checks],
                  runs=[_run_row(r, f) for r in runs])
    return _finite(report)


def dump_verdicts(root: str) -> dict:
    """{arm: verdict} of the records folders directly under the study folder `root` that dump one of its arms
    (run.sh's runs/<preset>/submission): RESULTS.md's check column."""
    out = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, "submission.json")):
            report = judge(folder)
            if report["arm"]:
                out[report["arm"]] = report["verdict"]
    return out


def _finite(x):
    """nan and ±inf (a t of a spread of zero) as null, so that --json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _run_row(r: Run, f: Folder) -> dict:
    lg = r.log
    ev = eval_seconds(r)
    return {"file": lg.file, "seed": r.seed, "val_loss": r.score.val_loss if r.score else None,
            "val_bpb": r.score.val_bpb if r.score else None, "line": r.score.line if r.score else None,
            "train_seconds": lg.train_seconds.value if lg.train_seconds else None, "stop": lg.stop,
            "eval_seconds": ev[0] if ev else None,
            "bytes_total": lg.total_bytes.value if lg.total_bytes else None, "counted": r.counted, "note": r.note}


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def format_report(report: dict) -> str:
    """The report as text: the runs, one line per check, the verdict."""
    out = [f"check_submission {report['folder']}", f"runs (scored line: {report['scored_label'] or 'none'}):"]
    for r in report["runs"]:
        out.append(f"  {'*' if r['counted'] else ' '} {r['file']}  seed {_fmt(r['seed'], 'd')}  val_loss "
                   f"{_fmt(r['val_loss'], '.8f')}  val_bpb {_fmt(r['val_bpb'], '.8f')}  train "
                   f"{_fmt(r['train_seconds'], '.1f')} s ({r['stop'] or 'stop not said'})  eval "
                   f"{_fmt(r['eval_seconds'], '.1f')} s  total {_fmt(r['bytes_total'], ',')} B"
                   + (f"  [{r['note']}]" if r["note"] else ""))
    if not report["runs"]:
        out.append("  (no training log)")
    for c in report["checks"]:
        out.append(f"{c['name']:<13}{c['status']:<8} {c['evidence']}")
    out.append(f"verdict: {report['verdict']} (* = counted run; exit {report['exit_code']})")
    return "\n".join(out)
