"""The study's results, read from the runs' metrics files: one row per arm, seed statistics, RESULTS.md,
results.csv and plots.

    python -m golf.results runs/demo                      # runs/demo/{RESULTS.md,results.csv,*.png}
    python -m golf.results --is-done runs/demo/baseline   # exit 0 if that run (or cache) is complete, else 1
    python -m golf.results --best runs/demo               # print the best arm's name

run.sh gives every run its own folder `runs/<preset>/<name>/` holding `<name>.jsonl` (golf/log.py), the text
log, the checkpoint and the artifact. What an arm *is* (teacher, loss, alpha, seed, budget) is read from the
configuration the run itself logged, so the table cannot disagree with what ran. A run is complete when its
metrics file holds the final score and the artifact record (the last things a run writes).

Comparisons are between runs that differ only in what is compared:
- an arm's baseline is the train_gpt.py run whose configuration equals the arm's apart from the distillation
  settings (so same seed, budget and model): Δ and the step-time overhead are against it;
- a seed group is the set of runs whose configurations differ only in SEED; a distillation group is paired
  seed by seed with its baseline group (paired t-test on the per-seed differences).
"""
import argparse
import csv
import io
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field, fields

from golf.atomic import atomic_path, atomic_write_text
from golf.bundle import LOCAL_FIELDS
from golf.config import Config
from golf.errors import GolfError, cli_main
from golf.arms import describe_arm

MAIN_SEED = Config().seed  # the seed of the main arms (1337, as in the study)
IGNORED_FIELDS = LOCAL_FIELDS + ("checkpoint_every",)  # where a run writes, not what it is
DISTILL_FIELDS = tuple(f.name for f in fields(Config) if f.metadata["group"] == "distill")
SIZE_CAP = 16_000_000  # golf.quant.SIZE_CAP; not imported so that --is-done does not pay for importing torch
MODE_ORDER = {"CE": 0, "hard": 1, "soft": 2, "online": 3, "ngram": 4, "ema": 5}
TRACK_LABELS = {"record": "in budget", "non-record": "outside"}  # RESULTS.md's teacher-cost column


# ----------------------------------------------------------------------------------------------------------
# Statistics


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for fewer than two values)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


ALPHA, POWER = 0.05, 0.8  # the significance level of every test here, and the power the detectable effect is for


def paired_ttest(a: list[float], b: list[float]) -> dict:
    """Two-sided paired t-test of a - b: n, per-pair differences, their mean and sample std, t, p, the half-width
    of the mean's 95% confidence interval (`ci`) and the minimum detectable effect (`mde`): the smallest true mean
    difference this test finds at level ALPHA with probability POWER when the differences scatter as observed,
    (t_{1-ALPHA/2} + t_{POWER}) * std / sqrt(n) with n - 1 degrees of freedom. t, p, ci and mde are nan for fewer
    than two pairs; t and p also when all differences are equal."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    d = [x - y for x, y in zip(a, b)]
    m, s = mean_std(d)
    n = len(d)
    t = p = ci = mde = math.nan
    if n >= 2:
        from scipy.stats import t as student_t

        se = s / math.sqrt(n)
        ci = float(student_t.ppf(1 - ALPHA / 2, n - 1)) * se
        mde = float(student_t.ppf(1 - ALPHA / 2, n - 1) + student_t.ppf(POWER, n - 1)) * se
        if s > 0:
            t = m / se
            p = float(2 * student_t.sf(abs(t), n - 1))
    return {"n": n, "diffs": d, "mean": m, "std": s, "t": t, "p": p, "ci": ci, "mde": mde}


def verdict(test: dict) -> str:
    """A paired test in words: the mean difference with its 95% interval and p, or, where p >= ALPHA, that this
    power cannot tell it from zero and the smallest effect it could."""
    if math.isnan(test["ci"]):  # fewer than two pairs
        return "–"
    head = f"{test['mean']:+.4f} ± {test['ci']:.4f}"
    if test["p"] < ALPHA:
        return f"{head} (p {test['p']:.2g})"
    return f"{head} (p {_f(test['p'], '.2g')}: not detectable, MDE {test['mde']:.3f})"


def overhead_pct(step_ms: float, base_step_ms: float) -> float:
    """Step-time overhead in percent: how much longer a step takes than the baseline's."""
    return 100.0 * (step_ms / base_step_ms - 1.0)


# ----------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunRecord:
    """One run's metrics file, digested."""

    name: str
    folder: str
    script: str = ""
    config: dict = field(default_factory=dict)
    world_size: int = 1
    vals: list[dict] = field(default_factory=list)  # the periodic val events: step, val_bpb, train_ms
    last_step: int = 0  # the last logged train step: how far an unfinished run got
    train_end: dict | None = None
    final: dict | None = None  # label int6: val_loss, val_bpb, sliding_val_loss, sliding_val_bpb
    artifact: dict | None = None  # model_bytes, code_bytes, total_bytes, compressor, path
    arm_track: str | None = None  # a distillation run's teacher track, as logged ("record" | "non-record")

    @property
    def done(self) -> bool:
        return self.final is not None and self.artifact is not None

    @property
    def is_teacher(self) -> bool:
        return self.script == "train_teacher.py"

    @property
    def is_baseline(self) -> bool:
        return self.script == "train_gpt.py"

    @property
    def track(self) -> str | None:
        """Which track of the challenge the run could be submitted to: "record" when all it trained from was
        made inside its timed budget (the baseline; an in-budget teacher), "non-record" when its teacher was
        trained or cached before it. Distillation runs logged before the "arm" event existed had only cached
        and online teachers, trained outside the budget. None for teacher runs."""
        if self.is_teacher:
            return None
        if self.is_baseline:
            return "record"
        return self.arm_track or "non-record"

    @property
    def seed(self) -> int:
        return self.config.get("seed", MAIN_SEED)

    @property
    def steps(self) -> int:
        return self.train_end["step"] if self.train_end else self.last_step

    @property
    def step_ms(self) -> float:
        if not self.train_end or not self.train_end["step"]:
            return math.nan
        return self.train_end["train_ms"] / self.train_end["step"]

    @property
    def budget(self) -> tuple:
        """What bounds the training: (wall-clock seconds, 0) or (0, iterations) when no wall clock is set."""
        wall = float(self.config.get("max_wallclock_seconds", 0) or 0)
        return (wall, 0) if wall > 0 else (0.0, int(self.config.get("iterations", 0)))

    @property
    def txt_path(self) -> str:
        return os.path.join(self.folder, self.name + ".txt")

    @property
    def jsonl_path(self) -> str:
        return os.path.join(self.folder, self.name + ".jsonl")


def read_events(path: str) -> list[dict]:
    """The JSON objects of a metrics file; a line cut short by a killed run is skipped."""
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                events.append(obj)
    return events


def parse_run(jsonl_path: str) -> RunRecord:
    """A RunRecord from a metrics file `<folder>/<name>.jsonl`."""
    folder, base = os.path.split(jsonl_path)
    run = RunRecord(name=base.removesuffix(".jsonl"), folder=folder or ".")
    for e in read_events(jsonl_path):
        kind = e.get("event")
        if kind == "config":
            # Through Config, so metrics files of older versions (the study's DISTILL_CACHED / DISTILL_SOFT fields)
            # compare and describe like new ones.
            run.script, run.world_size = e.get("script", ""), e.get("world_size", 1)
            run.config = Config.from_dict(e.get("config", {})).to_dict()
        elif kind == "val":
            run.vals.append(e)
        elif kind == "train":
            run.last_step = e.get("step", run.last_step)
        elif kind == "train_end":
            run.train_end = e
        elif kind == "final" and e.get("label") == "int6":
            run.final = e
        elif kind == "artifact":
            run.artifact = e
        elif kind == "arm":
            run.arm_track = e.get("track")
    return run


def load_run(folder: str) -> RunRecord | None:
    """The run in `folder` (its metrics file is `<folder>/<folder name>.jsonl`), or None if there is none."""
    path = os.path.join(folder, os.path.basename(os.path.normpath(folder)) + ".jsonl")
    return parse_run(path) if os.path.isfile(path) else None


def load_study(root: str) -> list[RunRecord]:
    """Every run directly under `root` that got as far as logging its configuration, by folder name."""
    if not os.path.isdir(root):
        raise GolfError(f"{root} is not a folder; pass the study folder run.sh wrote (e.g. runs/demo)")
    runs = [load_run(os.path.join(root, d)) for d in sorted(os.listdir(root))]
    return [r for r in runs if r is not None and r.config]


def teacher_metrics_path(checkpoint: str) -> str:
    """The metrics file of the run that trained a teacher checkpoint: `<dir>/<name>.pt` -> `<dir>/<name>.jsonl`."""
    return os.path.splitext(checkpoint)[0] + ".jsonl"


def linked_teachers(root: str, runs: list[RunRecord]) -> list[RunRecord]:
    """The teacher runs the arms name (TEACHER_PATH) that live outside `root`, e.g. the demo's teachers, which the
    study reuses."""
    have = {os.path.abspath(r.jsonl_path) for r in runs}
    paths = {os.path.abspath(teacher_metrics_path(r.config["teacher_path"])) for r in runs if r.config.get("teacher_path")}
    found = [parse_run(p) for p in sorted(paths - have) if os.path.isfile(p)]
    return [r for r in found if r.config and r.is_teacher]


def _manifest(folder: str) -> dict:
    """A logit cache folder's manifest, or {} when there is none or it is unreadable."""
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def cache_complete(folder: str) -> bool:
    """A logit cache folder whose manifest marks every shard complete (cache_logits.py's own resume logic
    rechecks the files; a student's CacheReader checks them again before use)."""
    return _all_complete(_manifest(folder).get("shards", []))


def _all_complete(shards: list[dict]) -> bool:
    return bool(shards) and all(s.get("complete") for s in shards)


def cache_draws(folder: str) -> int | None:
    """N of a cache of sampled targets (its manifest's value kind is draw counts, its K the draws), else None."""
    m = _manifest(folder)
    return m.get("k") if m.get("value_kind") == "draw_counts" else None


def cache_bytes_per_token(folder: str) -> float | None:
    """Bytes on disk per cached position of a complete logit cache (its shards' row files, npy headers and
    offsets included; manifest and completion markers not), or None when the folder holds no complete cache."""
    shards = _manifest(folder).get("shards", [])
    if not _all_complete(shards):
        return None
    stems = {os.path.splitext(s["name"])[0] for s in shards}
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
               if n.split(".", 1)[0] in stems and not n.endswith(".done"))
    return size / sum(s["num_tokens"] for s in shards)


SCORE_FILE = "score.json"  # what `eval_bpb.py --out <folder>/score.json` writes: a model scored on its own


def load_scores(root: str) -> list[dict]:
    """The scores directly under `root` (e.g. the n-gram teacher alone on val), each with its folder's name."""
    out = []
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d, SCORE_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out.append({"name": d, **json.load(f)})
    return out


def is_done(folder: str) -> bool:
    """True when the run (or logit cache, or score) in `folder` is complete, so run.sh may skip it."""
    if os.path.isfile(os.path.join(folder, SCORE_FILE)):
        return True
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return cache_complete(folder)
    run = load_run(folder)
    return run is not None and run.done


# ----------------------------------------------------------------------------------------------------------
# What an arm is, and what it is compared with


def _key(config: dict, drop: tuple) -> str:
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in drop})


def _seed_key(run: RunRecord) -> str:
    """Equal for runs of the same script that differ only in SEED."""
    return run.script + _key(run.config, IGNORED_FIELDS + ("seed",))


def teacher_label(path: str) -> str:
    """A short teacher name from a cache folder or checkpoint path (`runs/demo/cache-big` -> `big`)."""
    name = os.path.basename(os.path.normpath(path)).removesuffix(".pt")
    for prefix in ("cache-", "teacher-"):
        name = name.removeprefix(prefix)
    return name


def describe(run: RunRecord) -> dict:
    """teacher, mode, alpha, T and tail of a run, from its configuration (golf.arms.describe_arm)."""
    if run.script != "distill.py":
        return {"teacher": "–", "mode": "teacher" if run.is_teacher else "CE", "alpha": 0.0, "temp": None,
                "tail": "–", "faithful": ""}
    d = describe_arm(Config.from_dict(run.config))
    mode = d["target"] if d["teacher"] == "cache" else d["teacher"] + ("" if d["target"] == "soft" else " hard")
    if (d["start"], d["ramp"], d["stop"]) != (0.0, 0.0, 1.0):
        mode += f" {d['start']:g}-{d['stop']:g}" + (f" ramp {d['ramp']:g}" if d["ramp"] else "")
    if d["until_overtaken"]:
        mode += f" until overtaken {d['until_overtaken']}"
    tail = d["tail"]
    draws = d["draws"] or (cache_draws(d["source"]) if d["teacher"] == "cache" else None)
    if draws and d["target"] == "soft":
        tail = f"sampled n{draws}"
    elif d["teacher"] in ("ema", "ngram") and d["target"] == "soft":
        tail = "full"
    return {"teacher": teacher_label(d["source"]) if d["source"] != "-" else "?", "mode": mode, "alpha": d["alpha"],
            "temp": d["temp"], "tail": tail or "–", "faithful": d["seed_faithful"]}


def reference_baseline(run: RunRecord, runs: list[RunRecord]) -> RunRecord | None:
    """The complete train_gpt.py run that equals `run` apart from the distillation settings."""
    key = _key(run.config, IGNORED_FIELDS + DISTILL_FIELDS)
    for r in runs:
        if r.is_baseline and r.done and _key(r.config, IGNORED_FIELDS + DISTILL_FIELDS) == key:
            return r
    return None


def seed_groups(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """Complete student runs grouped by configuration apart from SEED; groups of two or more seeds, each
    sorted by seed."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        if r.done and not r.is_teacher:
            groups.setdefault(_seed_key(r), []).append(r)
    return [sorted(g, key=lambda r: r.seed) for g in groups.values() if len({r.seed for r in g}) >= 2]


def group_name(group: list[RunRecord]) -> str:
    """The name of the group's main-seed member (the arm the seeds replicate), else of its first run."""
    return next((r.name for r in group if r.seed == MAIN_SEED), group[0].name)


def paired_comparisons(groups: list[list[RunRecord]]) -> list[dict]:
    """Every non-baseline seed group against the baseline group that differs from it only in the
    distillation settings, paired by seed."""
    drop = IGNORED_FIELDS + DISTILL_FIELDS + ("seed",)
    out = []
    for g in groups:
        if g[0].is_baseline:
            continue
        for b in groups:
            if b[0].is_baseline and _key(b[0].config, drop) == _key(g[0].config, drop):
                test = _paired(g, b)
                if test:
                    out.append({"arm": group_name(g), "baseline": group_name(b), "group": g, "base_group": b, **test})
    return out


def _paired(g: list[RunRecord], b: list[RunRecord]) -> dict | None:
    """The paired test of group g against group b on the seeds both have, or None for fewer than two."""
    by_seed = {r.seed: r for r in b}
    pairs = [(r, by_seed[r.seed]) for r in g if r.seed in by_seed]
    if len(pairs) < 2:
        return None
    return {"seeds": [r.seed for r, _ in pairs], **paired_ttest([r.final["sliding_val_bpb"] for r, _ in pairs],
                                                                [q.final["sliding_val_bpb"] for _, q in pairs])}


CLOCK_FIELDS = ("max_wallclock_seconds", "iterations")


def _arm_key(run: RunRecord, also: tuple = ()) -> str:
    """Equal for the runs of one arm at any seed and under either clock (a wall clock or a fixed step count)."""
    return run.script + _key(run.config, IGNORED_FIELDS + CLOCK_FIELDS + ("seed",) + also)


def _mean(xs) -> float:
    return mean_std(list(xs))[0]


def study_comparisons(runs: list[RunRecord], groups: list[list[RunRecord]]) -> list[dict]:
    """One entry per distillation arm with seeds: Δ against the baseline at equal steps (its group under a fixed
    step count), at equal wall clock (its group at the main budget), and at equal total compute: against the
    longest wall-clock baseline group whose budget is at most the arm's smallest total cost in seconds (teacher
    training + caching + its own training, golf.compute), so the baseline never had more than the arm. Also the
    step-time overhead (equal-steps runs, else wall) and the arm's mean cost."""
    from golf.compute import run_cost

    budget = main_budget(runs)
    by_group = {id(p["group"]): p for p in paired_comparisons(groups)}
    arms: dict[str, dict] = {}
    for g in groups:
        if g[0].is_baseline:
            continue
        clock = "steps" if g[0].budget[0] == 0 else ("wall" if g[0].budget == budget else None)
        if clock is None:
            continue
        entry = arms.setdefault(_arm_key(g[0]), {"track": g[0].track, **describe(g[0])})
        entry[clock] = by_group.get(id(g))
        entry[clock + "_group"] = g
    drop = IGNORED_FIELDS + DISTILL_FIELDS + CLOCK_FIELDS + ("seed",)
    out = []
    for e in arms.values():
        ref = e.get("steps_group") or e.get("wall_group")
        pcts = [overhead_pct(r.step_ms, b.step_ms) for r in ref
                if (b := reference_baseline(r, runs)) is not None and r.train_end]
        e["overhead_pct"] = _mean(pcts) if pcts else None
        wall = e.get("wall_group")
        if wall is not None:
            costs = [run_cost(r) for r in wall]
            e["cost"] = {k: _mean(getattr(c, k) for c in costs)
                         for k in ("teacher_train_s", "cache_s", "student_s", "total_s", "total_flops")}
            e["cost_known"] = all(c.known for c in costs)
            limit = min(c.total_s for c in costs)
            bases = [b for b in groups if b[0].is_baseline and b[0].budget[0] > 0 and b[0].budget[0] <= limit
                     and _key(b[0].config, drop) == _key(wall[0].config, drop)]
            if bases:
                cm = max(bases, key=lambda b: b[0].budget[0])
                e["compute_baseline"] = {"name": group_name(cm), "budget_s": cm[0].budget[0],
                                         "same_as_wall": cm[0].budget == budget}
                e["compute"] = _paired(wall, cm)
        names = [group_name(e[k]) for k in ("steps_group", "wall_group") if e.get(k)]
        e["arm"] = os.path.commonprefix(names).rstrip("-_") or names[0]  # bucket-steps-s1337, bucket-wall-s1337: bucket
        out.append(e)
    return out


def cache_contrasts(groups: list[list[RunRecord]]) -> list[dict]:
    """Pairs of arms (under the same clock) that differ only in the logit cache they read, e.g. the same teacher
    cached with windows advancing by their whole length or by half of it: the paired test of the first against
    the second."""
    cached = [g for g in groups if g[0].config.get("distill_teacher") == "cache" and g[0].done]
    out = []
    for i, a in enumerate(cached):
        for b in cached[i + 1:]:
            if (a[0].budget == b[0].budget and _arm_key(a[0], ("logit_cache",)) == _arm_key(b[0], ("logit_cache",))
                    and a[0].config["logit_cache"] != b[0].config["logit_cache"]):
                test = _paired(a, b)
                if test:
                    out.append({"a": group_name(a), "b": group_name(b), "cache_a": a[0].config["logit_cache"],
                                "cache_b": b[0].config["logit_cache"], **test})
    return out


def main_budget(runs: list[RunRecord]) -> tuple | None:
    """The budget most student runs share: the study's "600 s" (longer ones are the extended runs); between a wall
    clock and a step count as common, the wall clock (a submission's budget)."""
    budgets = Counter(r.budget for r in runs if not r.is_teacher)
    return min(budgets, key=lambda b: (-budgets[b], b[0] == 0, b)) if budgets else None


def best_arm(runs: list[RunRecord]) -> RunRecord | None:
    """The complete, under-cap student run with the lowest sliding val_bpb at the main budget."""
    budget = main_budget(runs)
    ok = [r for r in runs if r.done and not r.is_teacher and r.budget == budget
          and r.artifact["total_bytes"] <= SIZE_CAP]
    return min(ok, key=lambda r: r.final["sliding_val_bpb"], default=None)


def arm_rows(runs: list[RunRecord]) -> list[dict]:
    """One row per student run: what it is, what it measured, and Δ/overhead against its baseline."""
    rows = []
    for r in runs:
        if r.is_teacher:
            continue
        d = describe(r)
        ref = reference_baseline(r, runs)
        row = {"arm": r.name, "script": r.script, **d, "seed": r.seed, "budget": r.budget,
               "budget_s": r.budget[0] or None, "iterations": r.budget[1] or None, "steps": r.steps,
               "train_ms": r.train_end["train_ms"] if r.train_end else None, "step_ms": r.step_ms,
               "baseline": ref.name if ref else None, "overhead_pct": None, "track": r.track, "done": r.done,
               "cache_bytes_per_token": cache_bytes_per_token(r.config["logit_cache"])
               if r.config.get("distill_teacher") == "cache" and r.config.get("logit_cache") else None}
        if ref is not None and ref is not r and r.train_end:
            row["overhead_pct"] = overhead_pct(r.step_ms, ref.step_ms)
        for k in ("val_loss", "val_bpb", "sliding_val_loss", "sliding_val_bpb"):
            row[k] = r.final[k] if r.final else None
        row["delta_sliding_val_bpb"] = (r.final["sliding_val_bpb"] - ref.final["sliding_val_bpb"]
                                        if r.done and ref is not None and ref is not r else None)
        for k in ("model_bytes", "code_bytes", "total_bytes"):
            row[k] = r.artifact[k] if r.artifact else None
        row["over_cap"] = row["total_bytes"] > SIZE_CAP if row["total_bytes"] is not None else None
        rows.append(row)
    rows.sort(key=lambda w: (w["budget"], MODE_ORDER.get(w["mode"].split()[0], 9), w["faithful"],
                             w["teacher"], w["tail"], w["alpha"] or 0.0, w["seed"] != MAIN_SEED, w["seed"], w["arm"]))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Writing


def _f(x, fmt: str, none: str = "–") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pm(xs: list[float], fmt: str) -> str:
    m, s = mean_std(xs)
    return f"{format(m, fmt)} ± {_f(s, fmt)}"


def _mode_label(row: dict) -> str:
    return row["mode"] + (f" (seed-faithful {row['faithful']})" if row["faithful"] else "")


def markdown(root: str, runs: list[RunRecord], rows: list[dict], plots: list[str], scores: list[dict] = (),
             study: list[dict] = ()) -> str:
    """RESULTS.md: the arms table, teachers, seed statistics, unfinished runs and the plots."""
    stride = next((r.config.get("eval_stride") for r in runs if r.config), "?")
    out = [f"# Results: {root}", "",
           f"Generated by `python -m golf.results {root}` from each run's metrics file (`<arm>/<arm>.jsonl`); "
           "the command of each arm is in `<arm>/command.txt` and in `./run.sh --list`.", "",
           f"val_bpb: the int6 artifact reloaded and scored on the full validation set (rt: standard; sliding: "
           f"stride {stride}). Δ: sliding val_bpb minus that of the baseline run with the same settings apart "
           "from distillation (same seed and budget); negative is better. Step ms: training time / steps; "
           "overhead: step time against that baseline. Cache B/token: the logit cache's bytes on disk per cached "
           "position. Teacher cost: whether everything the arm trained from was made "
           "inside its timed budget (record track), or its teacher was trained or cached before it (non-record). "
           f"Bytes: int6 model + single-file code; cap {SIZE_CAP:,}.", "", "## Arms", ""]
    table = []
    for w in rows:
        budget = f"{w['budget_s']:g} s" if w["budget_s"] else f"{w['iterations']} it"
        cap = "–" if w["over_cap"] is None else ("OVER" if w["over_cap"] else "ok")
        table.append([w["arm"], w["teacher"], _mode_label(w), _f(w["alpha"], "g") if w["mode"] != "CE" else "–",
                      _f(w["temp"], "g"), w["tail"], _f(w["cache_bytes_per_token"], ".1f"),
                      TRACK_LABELS.get(w["track"], "–") if w["mode"] != "CE" else "–", str(w["seed"]), budget,
                      str(w["steps"]), _f(w["step_ms"], ".1f"),
                      _f(w["overhead_pct"], "+.1f") + ("%" if w["overhead_pct"] is not None else ""),
                      _f(w["val_bpb"], ".4f"), _f(w["sliding_val_bpb"], ".4f"),
                      _f(w["delta_sliding_val_bpb"], "+.4f"), _f(w["total_bytes"], ","), cap])
    out.append(_md_table(["arm", "teacher", "mode", "α", "T", "tail", "cache B/token", "teacher cost", "seed", "budget",
                          "steps", "step ms",
                          "overhead", "val_bpb rt", "val_bpb sliding", "Δ sliding", "bytes", "cap"], table))
    teachers = [r for r in runs if r.is_teacher]
    if teachers or scores:
        out += ["", "## Teachers", "", "Trained teachers (int6 artifact) and models scored on their own "
                "(`eval_bpb.py --out`: the in-budget n-gram teacher's model, counted on the train shards).", "",
                _md_table(
            ["teacher", "layers x dim", "steps", "step ms", "val_bpb rt", "val_bpb sliding", "int6 bytes"],
            [[r.name, f"{r.config.get('num_layers')} x {r.config.get('model_dim')}", str(r.steps),
              _f(r.step_ms, ".1f"), _f(r.final and r.final["val_bpb"], ".4f"),
              _f(r.final and r.final["sliding_val_bpb"], ".4f"), _f(r.artifact and r.artifact["model_bytes"], ",")]
             for r in teachers] +
            [[s["name"], s["path"], "–", "–", _f(s["val_bpb"], ".4f"), _f(s["sliding_val_bpb"], ".4f"), "–"]
             for s in scores])]
    groups = seed_groups(runs)
    if groups:
        out += ["", "## Seeds", "", "Mean ± sample standard deviation (ddof 1) over seeds.", "", _md_table(
            ["arm", "seeds", "val_bpb sliding", "val_bpb rt", "steps", "step ms"],
            [[group_name(g), ", ".join(str(r.seed) for r in g), _pm([r.final["sliding_val_bpb"] for r in g], ".4f"),
              _pm([r.final["val_bpb"] for r in g], ".4f"), _pm([float(r.steps) for r in g], ".0f"),
              _pm([r.step_ms for r in g], ".1f")] for g in groups])]
        pairs = paired_comparisons(groups)
        if pairs:
            out += ["", "Paired by seed: Δ = arm − baseline in sliding val_bpb; two-sided paired t-test "
                    "(df = pairs − 1).", "", _md_table(
                        ["arm", "baseline", "seeds", "Δ per seed", "Δ mean ± std", "t", "p"],
                        [[p["arm"], p["baseline"], ", ".join(map(str, p["seeds"])),
                          ", ".join(format(d, "+.4f") for d in p["diffs"]),
                          f"{p['mean']:+.4f} ± {_f(p['std'], '.4f')}", _f(p["t"], ".2f"), _f(p["p"], ".3g")]
                         for p in pairs])]
    if any(e.get("steps") or e.get("wall") for e in study):
        out += study_markdown(study)
    contrasts = cache_contrasts(groups) if groups else []
    if contrasts:
        out += ["", "## Arms that differ only in their logit cache", "",
                "Paired by seed: Δ = first arm − second in sliding val_bpb (same settings and clock).", "",
                _md_table(["first arm (cache)", "second arm (cache)", "seeds", "Δ ± 95% CI (p)"],
                          [[f"{c['a']} ({teacher_label(c['cache_a'])})", f"{c['b']} ({teacher_label(c['cache_b'])})",
                            str(len(c["seeds"])), verdict(c)] for c in contrasts])]
    unfinished = [r for r in runs if not r.done]
    if unfinished:
        out += ["", "## Unfinished runs", ""]
        out += [f"- {r.name}: no final score (last logged step {r.steps}); rerun run.sh to redo it" for r in unfinished]
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def study_markdown(study: list[dict]) -> list[str]:
    """RESULTS.md's answer: each arm's Δ at equal steps, at equal wall clock and at equal total compute."""
    out = ["", "## The study: Δ per arm at equal steps, equal wall clock and equal total compute", "",
           "Δ = arm − baseline in int6 sliding val_bpb, paired by seed: mean ± the half-width of its 95% confidence "
           f"interval, two-sided paired t-test p; where p >= {ALPHA:g}, \"not detectable\" with the minimum detectable "
           f"effect (MDE: the true Δ this many seeds would find with power {POWER:g}, from the observed scatter). "
           "Equal steps: every run takes the same fixed number of steps (no clock), so Δ is what the teacher signal "
           "does per step, free of throughput noise. Equal wall clock: the submission's view, each run stops on the "
           "same clock, so the teacher's cost per step is paid in steps. Equal total compute: against the baseline "
           "trained alone for the longest budget at most the arm's total (teacher training + caching + its own "
           "training, measured process seconds on this machine; an in-budget teacher's total is the arm's own run). "
           "Overhead: step time against the baseline's at equal steps. FLOPs: 6·N·tokens per training, 2·N·tokens "
           "per teacher forward (golf/compute.py).", ""]
    rows = []
    for e in study:
        cost = e.get("cost")
        cm = e.get("compute_baseline")
        cm_text = verdict(e["compute"]) if e.get("compute") else "–"
        if cm:
            cm_text += " = wall clock" if cm["same_as_wall"] else f" vs {cm['name']} ({cm['budget_s']:g} s)"
        rows.append([e["arm"], TRACK_LABELS.get(e["track"], "–"), _mode_label(e) + f", {e['tail']}",
                     verdict(e["steps"]) if e.get("steps") else "–", verdict(e["wall"]) if e.get("wall") else "–",
                     cm_text, _f(e["overhead_pct"], "+.1f") + ("%" if e["overhead_pct"] is not None else ""),
                     "–" if not cost else (f"{cost['teacher_train_s']:.0f} + {cost['cache_s']:.0f} + "
                                           f"{cost['student_s']:.1f} = {cost['total_s']:.0f}"
                                           + ("" if e["cost_known"] else " (lower bound)")),
                     "–" if not cost else f"{cost['total_flops']:.2e}"])
    out.append(_md_table(["arm", "teacher cost", "mode, tail", "Δ equal steps", "Δ equal wall clock",
                          "Δ equal total compute", "overhead", "seconds: teacher + cache + student = total",
                          "FLOPs total"], rows))
    return out


CSV_FIELDS = ["arm", "script", "teacher", "mode", "faithful", "alpha", "temp", "tail", "seed", "budget_s", "iterations",
              "steps", "train_ms", "step_ms", "baseline", "overhead_pct", "val_loss", "val_bpb", "sliding_val_loss",
              "sliding_val_bpb", "delta_sliding_val_bpb", "model_bytes", "code_bytes", "total_bytes", "over_cap", "track",
              "cache_bytes_per_token", "done"]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_FIELDS})
    return buf.getvalue()


def representatives(runs: list[RunRecord]) -> list[RunRecord]:
    """Student runs, one per seed group (its main-seed member): the curves and bars to draw."""
    seen, out = set(), []
    for r in sorted((r for r in runs if not r.is_teacher), key=lambda r: (r.seed != MAIN_SEED, r.seed)):
        key = _seed_key(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _save(fig, path: str):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(root: str, runs: list[RunRecord], rows: list[dict], study: list[dict] = ()) -> list[str]:
    """val_bpb against step and against training time, the alpha sweep, step time per arm and the study's Δ per
    arm with intervals (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps = representatives(runs)
    budget = main_budget(runs)
    names = []
    colors = plt.get_cmap("tab20").colors
    for xkey, xlabel, fname in (("step", "step", "val_bpb_vs_step.png"),
                                ("train_ms", "training time (s)", "val_bpb_vs_time.png")):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        drawn = 0
        for i, r in enumerate(reps):
            pts = [(v[xkey] / (1000.0 if xkey == "train_ms" else 1), v["val_bpb"]) for v in r.vals if v["step"] > 0]
            if not pts:
                continue
            style = dict(color="black", lw=2.2) if r.is_baseline else dict(color=colors[i % len(colors)], lw=1.3)
            ax.plot(*zip(*pts), ls="--" if r.budget != budget else "-", marker=".", label=r.name, **style)
            drawn += 1
        if drawn:
            ax.set_xlabel(xlabel)
            ax.set_ylabel("val_bpb (raw weights, in-training eval)")
            ax.set_title(f"{root}: validation bits per byte (dashed: extended runs)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            _save(fig, os.path.join(root, fname))
            names.append(fname)
        plt.close(fig)

    main = [w for w in rows if w["done"] and w["arm"] in {r.name for r in reps} and w["budget"] == budget]
    families: dict[tuple, list] = {}
    for w in main:
        if w["mode"] in ("hard", "soft") and not w["faithful"] and w["tail"] in ("renorm", "–"):
            families.setdefault((w["mode"], w["teacher"]), []).append((w["alpha"], w["sliding_val_bpb"]))
    base = next((w for w in main if w["mode"] == "CE"), None)
    if families:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (mode, teacher), pts in sorted(families.items()):
            pts.sort()
            ax.plot(*zip(*pts), marker="o", label=f"{mode}, teacher {teacher}")
        if base is not None:
            ax.axhline(base["sliding_val_bpb"], color="black", ls="--", label="baseline (α = 0)")
        ax.set_xlabel("α (weight of the teacher term)")
        ax.set_ylabel("val_bpb (int6, sliding)")
        ax.set_title(f"{root}: alpha sweep (cached teachers)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, os.path.join(root, "alpha_sweep.png"))
        names.append("alpha_sweep.png")
        plt.close(fig)
    timed = [w for w in main if not math.isnan(w["step_ms"])]
    if timed:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(timed) + 1.5))
        ax.barh([w["arm"] for w in timed], [w["step_ms"] for w in timed],
                color=["black" if w["mode"] == "CE" else "tab:blue" for w in timed])
        for i, w in enumerate(timed):
            if w["overhead_pct"] is not None:
                ax.text(w["step_ms"], i, f" {w['overhead_pct']:+.1f}%", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.18 * max(w["step_ms"] for w in timed))  # room for the labels
        ax.set_xlabel("ms per training step (training time / steps)")
        ax.set_title(f"{root}: step time per arm (label: overhead vs baseline)")
        ax.grid(alpha=0.3, axis="x")
        _save(fig, os.path.join(root, "step_time.png"))
        names.append("step_time.png")
        plt.close(fig)
    shown = [e for e in study if any(e.get(k) and not math.isnan(e[k]["ci"]) for k in ("steps", "wall", "compute"))]
    if shown:
        fig, ax = plt.subplots(figsize=(8, 0.55 * len(shown) + 1.8))
        for j, (key, label, color) in enumerate((("steps", "equal steps", "tab:blue"),
                                                 ("wall", "equal wall clock", "tab:orange"),
                                                 ("compute", "equal total compute", "tab:red"))):
            pts = [(i, e[key]) for i, e in enumerate(shown) if e.get(key) and not math.isnan(e[key]["ci"])]
            if pts:
                ax.errorbar([t["mean"] for _, t in pts], [i + 0.22 * (j - 1) for i, _ in pts],
                            xerr=[t["ci"] for _, t in pts], fmt="o", ms=4, capsize=3, color=color, label=label)
        ax.axvline(0.0, color="black", lw=1)
        ax.set_yticks(range(len(shown)), [e["arm"] for e in shown])
        ax.invert_yaxis()
        ax.set_xlabel("Δ int6 sliding val_bpb vs baseline, mean and 95% CI over seeds (negative is better)")
        ax.set_title(f"{root}: what each teacher signal does")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8)
        _save(fig, os.path.join(root, "delta_per_arm.png"))
        names.append("delta_per_arm.png")
        plt.close(fig)
    return names


def write_results(root: str) -> dict:
    """RESULTS.md, results.csv and the plots in `root`; returns {"rows", "best", "files"}."""
    runs = load_study(root)
    if not runs:
        raise GolfError(f"{root} holds no runs (no <name>/<name>.jsonl); run ./run.sh first")
    rows = arm_rows(runs)
    groups = seed_groups(runs)
    study = study_comparisons(runs, groups) if groups else []
    plots = write_plots(root, runs, rows, study)
    runs += linked_teachers(root, runs)
    atomic_write_text(os.path.join(root, "RESULTS.md"), markdown(root, runs, rows, plots, load_scores(root), study))
    atomic_write_text(os.path.join(root, "results.csv"), csv_text(rows))
    best = best_arm(runs)
    return {"rows": rows, "best": best.name if best else None,
            "files": ["RESULTS.md", "results.csv", *plots]}


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the study folder (runs/<preset>), or with --is-done one run's folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--is-done", action="store_true", help="exit 0 if the run or cache in FOLDER is complete, else 1")
    g.add_argument("--best", action="store_true", help="print the best arm's name (exit 1 if there is none)")
    args = p.parse_args(argv)
    if args.is_done:
        sys.exit(0 if is_done(args.folder) else 1)
    if args.best:
        best = best_arm(load_study(args.folder))
        if best is None:
            print(f"error: {args.folder} has no complete under-cap arm at the main budget", file=sys.stderr)
            sys.exit(1)
        print(best.name)
        return
    res = write_results(args.folder)
    for f in res["files"]:
        print(os.path.join(args.folder, f))
    print(f"best arm: {res['best'] or '-'}")


if __name__ == "__main__":
    main()
