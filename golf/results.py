"""The study's results, read from the runs' metrics files: RESULTS.md, results.csv and plots.

    python -m golf.results runs/demo                      # runs/demo/{RESULTS.md,results.csv,*.png}
    python -m golf.results --is-done runs/demo/baseline   # exit 0 if that run (or cache) is complete, else 1
    python -m golf.results --best runs/demo               # print the best arm's name
    python -m golf.results --starved runs/demo            # print the starved runs' names (golf/starved.py)

By concern: golf/runs.py reads the runs (and caches, scores), golf/stats.py holds the statistics, golf/study.py
the comparisons (rows, seed groups, Δ at equal steps, wall clock and total compute), golf/tables.py writes
RESULTS.md and results.csv, golf/plots.py the plots. This module runs them in order.
"""
import argparse
import os
import sys

from golf.atomic import atomic_write_text
from golf.check import dump_verdicts
from golf.errors import GolfError, cli_main
from golf.plots import write_plots
from golf.runs import is_done, linked_teachers, load_scores, load_study
from golf.study import arm_rows, best_arm, seed_groups, study_comparisons
from golf.tables import csv_text, markdown


def write_results(root: str) -> dict:
    """RESULTS.md, results.csv and the plots in `root`; returns {"rows", "best", "files"}."""
    runs = load_study(root)
    if not runs:
        raise GolfError(f"{root} holds no runs (no <name>/<name>.jsonl); run ./run.sh first")
    rows = arm_rows(runs)
    verdicts = dump_verdicts(root)
    for w in rows:
        w["check"] = verdicts.get(w["arm"])
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
    g.add_argument("--starved", action="store_true", help="print the starved runs' names, one a line (golf/starved.py)")
    args = p.parse_args(argv)
    if args.is_done:
        sys.exit(0 if is_done(args.folder) else 1)
    if args.starved:
        for r in load_study(args.folder):
            if r.starved:
                print(r.name)
        return
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
