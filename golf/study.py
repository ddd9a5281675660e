"""The study's comparisons, read from its runs (golf/runs.py): what each arm is (`describe`), the arms table's
rows (`arm_rows`), seed groups and their paired tests against the baseline (`paired_comparisons`), each arm's Δ at
equal steps, equal wall clock and equal total compute (`study_comparisons`), arms that differ only in their cache
(`cache_contrasts`), the main budget and the best arm.

Comparisons are between runs that differ only in what is compared:
- an arm's baseline is the train_gpt.py run whose configuration equals the arm's apart from the distillation
  settings (so same seed, budget and model): Δ and the step-time overhead are against it;
- a seed group is the set of runs whose configurations differ only in SEED; a distillation group is paired
  seed by seed with its baseline group (paired t-test on the per-seed differences).
Which runs count in them at all is `in_statistics`, the one place a run is left out.
"""
import json
import os
from collections import Counter
from dataclasses import fields

from golf.arms import describe_arm
from golf.bundle import LOCAL_FIELDS
from golf.compute import run_cost
from golf.config import Config
from golf.runs import MAIN_SEED, SIZE_CAP, RunRecord, cache_bytes_per_token, cache_draws
from golf.stats import mean_std, overhead_pct, paired_ttest

IGNORED_FIELDS = LOCAL_FIELDS + ("checkpoint_every",)  # where a run writes, not what it is
DISTILL_FIELDS = tuple(f.name for f in fields(Config) if f.metadata["group"] == "distill")
CLOCK_FIELDS = ("max_wallclock_seconds", "iterations")
MODE_ORDER = {"CE": 0, "hard": 1, "soft": 2, "online": 3, "ngram": 4, "ema": 5}


def in_statistics(run: RunRecord) -> bool:
    """Whether a run counts in the comparisons (seed groups, a Δ's baseline, the best arm): a complete student
    run that was not starved (golf/starved.py). The one place a run is left out of them; the arms table still
    lists every run."""
    return run.done and not run.is_teacher and not run.starved


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
        if r.is_baseline and in_statistics(r) and _key(r.config, IGNORED_FIELDS + DISTILL_FIELDS) == key:
            return r
    return None


def seed_groups(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """Complete student runs grouped by configuration apart from SEED; groups of two or more seeds, each
    sorted by seed."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        if in_statistics(r):
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
    ok = [r for r in runs if in_statistics(r) and r.budget == budget
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
               "starved": r.starved,
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


def representatives(runs: list[RunRecord]) -> list[RunRecord]:
    """Student runs, one per seed group (its main-seed member): the curves and bars to draw."""
    seen, out = set(), []
    for r in sorted((r for r in runs if not r.is_teacher), key=lambda r: (r.seed != MAIN_SEED, r.seed)):
        key = _seed_key(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
