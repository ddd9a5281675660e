"""Starved runs: a wall-clock run that got far fewer steps than its peers because other work took the machine
(on a shared 2-core CPU a rerun once got 4 steps in 25 s where its peers got ~50). Its score measures the load,
not the arm: it is marked in RESULTS.md, left out of every statistic and of the records folder, and run.sh
redoes it.

The rule (documented in the README): only complete student runs under a wall clock are judged (a step-count
run cannot starve). A run's peers are, when its seed group at that clock (the runs whose settings differ only in
SEED, itself included) has at least MIN_GROUP runs, that group, and the run is starved under GROUP_FRACTION of
their median steps; otherwise all the other complete student runs at the same clock, and the run is starved
under ANY_FRACTION of their median steps: looser, because arms differ in step cost (the online teacher took
+43% to +115% per step in the study, so its 47 steps at 20 s were 0.53 of the baselines' median 89). With
neither, the run is not judged.
"""
import json
import statistics

from golf.bundle import LOCAL_FIELDS

GROUP_FRACTION = 0.5
ANY_FRACTION = 0.25
MIN_GROUP = 3
# What a run's seed group ignores: the seed and where the run writes (golf.study's seed groups, which this module
# cannot import: golf.runs marks the runs it loads with it, and golf.study reads golf.runs).
_NOT_THE_ARM = LOCAL_FIELDS + ("checkpoint_every", "seed")


def _arm(run) -> str:
    return run.script + json.dumps({k: v for k, v in sorted(run.config.items()) if k not in _NOT_THE_ARM})


def _judged(run) -> bool:
    return run.done and not run.is_teacher and run.budget[0] > 0


def mark(runs):
    """Set each run's `starved` (why, or None)."""
    why = starved_runs(runs)
    for r in runs:
        r.starved = why.get(r.name)


def starved_runs(runs) -> dict[str, str]:
    """{name: why} of the starved runs among `runs` (RunRecords of one study), by the module's rule."""
    judged = [r for r in runs if _judged(r)]
    out = {}
    for run in judged:
        clock = [r for r in judged if r.budget == run.budget]
        group = [r.steps for r in clock if _arm(r) == _arm(run)]
        if len(group) >= MIN_GROUP:
            peers, fraction, whose = group, GROUP_FRACTION, f"its {len(group)} seeds"
        else:
            peers, fraction = [r.steps for r in clock if r is not run], ANY_FRACTION
            whose = f"the {len(peers)} other runs"
        if not peers:
            continue
        median = statistics.median(peers)
        if run.steps < fraction * median:
            out[run.name] = (f"{run.steps} steps, under {fraction:g} x the median {median:g} of {whose} at "
                             f"{run.budget[0]:g} s")
    return out
