"""The study's plots (PNG), each described by one PlotSpec in PLOTS: its file, what it draws (`what`: the data it
takes from the runs, and how it draws them) and its axes and labels. A new plot of an existing kind is one line
in PLOTS; a new kind is one selecting and one drawing function in KINDS.

    curves     val_bpb of each representative run (one per seed group) against a val event's field (`x`)
    sweep      int6 sliding val_bpb against α, one line per (mode, teacher) of plain cached arms, baseline dashed
    bars       ms per training step of each main arm, labelled with its overhead against its baseline
    intervals  the study's Δ per arm at equal steps, wall clock and total compute, with 95% intervals
"""
import math
import os
from dataclasses import dataclass, field

from golf.atomic import atomic_path
from golf.runs import RunRecord
from golf.study import main_budget, representatives


@dataclass(frozen=True)
class PlotSpec:
    file: str
    what: str  # a key of KINDS
    title: str  # after "<study folder>: "
    xlabel: str
    ylabel: str = ""
    x: str = ""  # curves: the val event's field on the x axis
    x_div: float = 1  # ... divided by this (ms to s)
    size: tuple = (8, 0.0)  # figure width and height in inches; the height grows by `per_item` per bar or arm
    per_item: float = 0.0
    grid_axis: str = "both"
    legend: dict | None = field(default_factory=lambda: {"fontsize": 8})


_CURVE_LEGEND = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # outside: many runs
PLOTS = (
    PlotSpec("val_bpb_vs_step.png", "curves", "validation bits per byte (dashed: extended runs)", "step",
             "val_bpb (raw weights, in-training eval)", x="step", size=(9, 5.5), legend=_CURVE_LEGEND),
    PlotSpec("val_bpb_vs_time.png", "curves", "validation bits per byte (dashed: extended runs)", "training time (s)",
             "val_bpb (raw weights, in-training eval)", x="train_ms", x_div=1000.0, size=(9, 5.5),
             legend=_CURVE_LEGEND),
    PlotSpec("alpha_sweep.png", "sweep", "alpha sweep (cached teachers)", "α (weight of the teacher term)",
             "val_bpb (int6, sliding)", size=(7, 4.5)),
    PlotSpec("step_time.png", "bars", "step time per arm (label: overhead vs baseline)",
             "ms per training step (training time / steps)", size=(8, 1.5), per_item=0.35, grid_axis="x",
             legend=None),
    PlotSpec("delta_per_arm.png", "intervals", "what each teacher signal does",
             "Δ int6 sliding val_bpb vs baseline, mean and 95% CI over seeds (negative is better)", size=(8, 1.8),
             per_item=0.55, grid_axis="x"),
)


@dataclass
class StudyData:
    """What the plots are drawn from."""

    runs: list[RunRecord]
    rows: list[dict]  # golf.study.arm_rows
    study: list[dict]  # golf.study.study_comparisons
    budget: tuple | None  # the main budget: other runs are the extended ones
    reps: list[RunRecord]  # one run per seed group
    main: list[dict]  # the complete representative rows at the main budget


def _curves(spec: PlotSpec, d: StudyData) -> list:
    """(colour index, run, points) of each representative run that logged a val event after step 0."""
    out = []
    for i, r in enumerate(d.reps):
        pts = [(v[spec.x] / spec.x_div, v["val_bpb"]) for v in r.vals if v["step"] > 0]
        if pts:
            out.append((i, r, pts))
    return out


def _draw_curves(ax, items, d: StudyData, plt):
    colors = plt.get_cmap("tab20").colors
    for i, r, pts in items:
        style = dict(color="black", lw=2.2) if r.is_baseline else dict(color=colors[i % len(colors)], lw=1.3)
        ax.plot(*zip(*pts), ls="--" if r.budget != d.budget else "-", marker=".", label=r.name, **style)


def _sweep(spec: PlotSpec, d: StudyData) -> list:
    """((mode, teacher), [(α, sliding val_bpb)]) of the plain cached arms (no seed-faithful defect, renorm tail)."""
    families: dict[tuple, list] = {}
    for w in d.main:
        if w["mode"] in ("hard", "soft") and not w["faithful"] and w["tail"] in ("renorm", "–"):
            families.setdefault((w["mode"], w["teacher"]), []).append((w["alpha"], w["sliding_val_bpb"]))
    return sorted(families.items())


def _draw_sweep(ax, items, d: StudyData, plt):
    for (mode, teacher), pts in items:
        pts.sort()
        ax.plot(*zip(*pts), marker="o", label=f"{mode}, teacher {teacher}")
    base = next((w for w in d.main if w["mode"] == "CE"), None)
    if base is not None:
        ax.axhline(base["sliding_val_bpb"], color="black", ls="--", label="baseline (α = 0)")


def _bars(spec: PlotSpec, d: StudyData) -> list:
    return [w for w in d.main if not math.isnan(w["step_ms"])]


def _draw_bars(ax, timed, d: StudyData, plt):
    ax.barh([w["arm"] for w in timed], [w["step_ms"] for w in timed],
            color=["black" if w["mode"] == "CE" else "tab:blue" for w in timed])
    for i, w in enumerate(timed):
        if w["overhead_pct"] is not None:
            ax.text(w["step_ms"], i, f" {w['overhead_pct']:+.1f}%", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18 * max(w["step_ms"] for w in timed))  # room for the labels


_CLOCKS = (("steps", "equal steps", "tab:blue"), ("wall", "equal wall clock", "tab:orange"),
           ("compute", "equal total compute", "tab:red"))


def _has_interval(e: dict, key: str) -> bool:
    return bool(e.get(key)) and not math.isnan(e[key]["ci"])


def _intervals(spec: PlotSpec, d: StudyData) -> list:
    return [e for e in d.study if any(_has_interval(e, k) for k, _, _ in _CLOCKS)]


def _draw_intervals(ax, shown, d: StudyData, plt):
    for j, (key, label, color) in enumerate(_CLOCKS):
        pts = [(i, e[key]) for i, e in enumerate(shown) if _has_interval(e, key)]
        if pts:
            ax.errorbar([t["mean"] for _, t in pts], [i + 0.22 * (j - 1) for i, _ in pts],
                        xerr=[t["ci"] for _, t in pts], fmt="o", ms=4, capsize=3, color=color, label=label)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(range(len(shown)), [e["arm"] for e in shown])
    ax.invert_yaxis()


KINDS = {"curves": (_curves, _draw_curves), "sweep": (_sweep, _draw_sweep), "bars": (_bars, _draw_bars),
         "intervals": (_intervals, _draw_intervals)}


def _save(fig, path: str):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(root: str, runs: list[RunRecord], rows: list[dict], study: list[dict] = ()) -> list[str]:
    """Each plot of PLOTS that has something to draw, into `root`; returns the files written, in PLOTS order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps, budget = representatives(runs), main_budget(runs)
    names = {r.name for r in reps}
    main = [w for w in rows if w["done"] and w["arm"] in names and w["budget"] == budget]
    data = StudyData(runs, rows, list(study), budget, reps, main)
    written = []
    for spec in PLOTS:
        select, draw = KINDS[spec.what]
        items = select(spec, data)
        if not items:
            continue
        fig, ax = plt.subplots(figsize=(spec.size[0], spec.per_item * len(items) + spec.size[1]))
        draw(ax, items, data, plt)
        ax.set_xlabel(spec.xlabel)
        if spec.ylabel:
            ax.set_ylabel(spec.ylabel)
        ax.set_title(f"{root}: {spec.title}")
        ax.grid(alpha=0.3, axis=spec.grid_axis)
        if spec.legend is not None:
            ax.legend(**spec.legend)
        _save(fig, os.path.join(root, spec.file))
        written.append(spec.file)
        plt.close(fig)
    return written
