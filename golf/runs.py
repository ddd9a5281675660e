"""Reading a study's runs: each run's metrics file digested into a RunRecord, the study folder's runs, the
teachers they name, their logit caches' manifests and the scores of models scored on their own; and whether a
run (or cache, or score) is complete, so run.sh may skip it.

run.sh gives every run its own folder `runs/<preset>/<name>/` holding `<name>.jsonl` (golf/log.py), the text
log, the checkpoint and the artifact. What an arm *is* (teacher, loss, alpha, seed, budget) is read from the
configuration the run itself logged. A run is complete when its metrics file holds the final score and the
artifact record (the last things a run writes). Imports no torch (golf/arms.py).
"""
import json
import math
import os
from dataclasses import dataclass, field

from golf import starved
from golf.config import Config
from golf.errors import GolfError

MAIN_SEED = Config().seed  # the seed of the main arms (1337, as in the study)
SIZE_CAP = 16_000_000  # golf.quant.SIZE_CAP; not imported so that --is-done does not pay for importing torch


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
    starved: str | None = None  # why its steps fell far below its peers' (golf/starved.py), set by load_study

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
    """Every run directly under `root` that got as far as logging its configuration, by folder name, each
    marked starved or not (golf/starved.py)."""
    if not os.path.isdir(root):
        raise GolfError(f"{root} is not a folder; pass the study folder run.sh wrote (e.g. runs/demo)")
    runs = [load_run(os.path.join(root, d)) for d in sorted(os.listdir(root))]
    runs = [r for r in runs if r is not None and r.config]
    starved.mark(runs)
    return runs


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


def cache_manifest(folder: str) -> dict:
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
    return _all_complete(cache_manifest(folder).get("shards", []))


def _all_complete(shards: list[dict]) -> bool:
    return bool(shards) and all(s.get("complete") for s in shards)


def cache_draws(folder: str) -> int | None:
    """N of a cache of sampled targets (its manifest's value kind is draw counts, its K the draws), else None."""
    m = cache_manifest(folder)
    return m.get("k") if m.get("value_kind") == "draw_counts" else None


def cache_bytes_per_token(folder: str) -> float | None:
    """Bytes on disk per cached position of a complete logit cache (its shards' row files, npy headers and
    offsets included; manifest and completion markers not), or None when the folder holds no complete cache."""
    shards = cache_manifest(folder).get("shards", [])
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
    """True when the run (or logit cache, or score) in `folder` is complete and, a run, not starved among the
    runs beside it (golf/starved.py), so run.sh may skip it."""
    if os.path.isfile(os.path.join(folder, SCORE_FILE)):
        return True
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return cache_complete(folder)
    run = load_run(folder)
    if run is None or not run.done:
        return False
    # A starved run is done but measured the machine's load: not done, so run.sh redoes it.
    parent = os.path.dirname(os.path.normpath(folder)) or "."
    return not any(r.name == run.name and r.starved for r in load_study(parent))
