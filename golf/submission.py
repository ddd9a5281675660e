"""The challenge's records folder for one arm: README.md, submission.json, the arm's train logs (every seed),
the int6 artifact and the self-contained single-file train_gpt.py whose size is the code bytes counted.

    python quantize.py runs/demo/soft-a0.5/soft-a0.5.pt --submission records/soft-a0.5 --author NAME --github ID

The single file is generated from the script that trained the arm (train_gpt.py or distill.py) with the
arm's settings baked in as defaults (golf/bundle.py), so `python train_gpt.py` in the folder reruns the arm
and `SEED=42 python train_gpt.py` its seed-42 replica. The scores come from the run's own metrics file; the
artifact is re-exported from the checkpoint and must be byte-identical to the one the run scored.
"""
import datetime
import json
import os
import shutil

from golf.atomic import atomic_write_text
from golf.bundle import ROOT, arm_settings, single_file_source
from golf.cache import cache_manifest_field
from golf.check import TRACKS
from golf.checkpoint import checkpoint_sha256, load_checkpoint
from golf.config import Config
from golf.errors import GolfError
from golf.export import export_artifact
from golf.runs import RunRecord, load_study, parse_run
from golf.stats import mean_std
from golf.study import describe, group_name, seed_groups

ARTIFACT_NAME = "final_model.int6.ptz"
SCRIPT_NAME = "train_gpt.py"


def find_run(checkpoint_path: str, cfg: Config) -> RunRecord:
    """The complete run that wrote the checkpoint: its metrics file `<LOG_DIR>/<RUN_ID>.jsonl` (as logged, i.e.
    relative to where the run started) or, failing that, beside the checkpoint."""
    candidates = [os.path.join(cfg.log_dir, cfg.run_id + ".jsonl"),
                  os.path.join(os.path.dirname(checkpoint_path), cfg.run_id + ".jsonl")]
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise GolfError(f"no metrics file for {checkpoint_path} (looked for {' and '.join(candidates)}); run this "
                        "from the folder the training run started in")
    run = parse_run(path)
    if not run.done:
        raise GolfError(f"{path} has no final score: the run of {checkpoint_path} did not finish; rerun it first")
    if not run.script or not os.path.isfile(os.path.join(ROOT, run.script)):
        raise GolfError(f"{path} names the training script {run.script!r}, which is not in {ROOT}")
    return run


def seed_runs(run: RunRecord) -> list[RunRecord]:
    """The run and its seed replicas (runs beside it that differ only in SEED), one per seed, by seed."""
    study = load_study(os.path.dirname(os.path.abspath(run.folder)))
    group = next((g for g in seed_groups(study) if run.name in {r.name for r in g}), [])
    by_seed = {r.seed: r for r in group if r.seed != run.seed}
    by_seed[run.seed] = run
    return [by_seed[s] for s in sorted(by_seed)]


def hardware(run: RunRecord) -> str:
    """"<world size>x <device>", from the run's text log (`script:... device:NAME` and `device:TYPE ...`)."""
    name, kind = "", ""
    if os.path.isfile(run.txt_path):
        with open(run.txt_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("script:") and " device:" in line:
                    name = line.rsplit(" device:", 1)[1].strip()
                elif line.startswith("device:"):
                    kind = line.split()[0].removeprefix("device:")
    if kind == "cpu":
        name = "CPU" if name in ("", "cpu") else f"{name} CPU"
    return f"{run.world_size}x {name or kind or 'unknown device'}"


def teacher_cost(cfg: Config) -> dict:
    """What a non-record arm's teacher cost before the run, as far as its files record it: the teacher's training
    seconds (its final checkpoint's train_ms) and the logit cache's build seconds (its manifest's build_seconds,
    summed over resumed cache_logits.py runs); None where a file is missing or predates the field."""
    cost = {"teacher_sha256": None, "training_seconds": None, "caching_seconds": None}
    if cfg.teacher_path and os.path.isfile(cfg.teacher_path):
        ckpt = load_checkpoint(cfg.teacher_path, mmap=True)
        cost["teacher_sha256"] = checkpoint_sha256(cfg.teacher_path)
        if ckpt.get("train_ms") is not None:
            cost["training_seconds"] = round(ckpt["train_ms"] / 1000, 1)
    if cfg.distill_teacher == "cache" and cfg.logit_cache:
        seconds = cache_manifest_field(cfg.logit_cache, "build_seconds")
        cost["caching_seconds"] = None if seconds is None else round(seconds, 1)
    return cost


def trained_from(run: RunRecord, cfg: Config) -> dict:
    """What the arm trained from besides the train shards, for the checker's track rule (golf/check.py): its
    teacher, whether the teacher was made inside the timed run, the logit cache and teacher checkpoint it read."""
    if run.is_baseline:
        return {"teacher": None, "teacher_inside_budget": None, "logit_cache": None, "teacher_checkpoint": None}
    cache = cfg.logit_cache if cfg.distill_teacher == "cache" and cfg.logit_cache else None
    return {"teacher": cfg.distill_teacher, "teacher_inside_budget": run.track == "record",
            "logit_cache": os.path.basename(os.path.normpath(cache)) if cache else None,
            "teacher_checkpoint": os.path.basename(cfg.teacher_path) if cfg.teacher_path else None}


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def _scored_artifact(run: RunRecord, checkpoint_path: str) -> str | None:
    """The artifact file the run scored, if it is still there."""
    logged = run.artifact.get("path", "")
    for p in (logged, os.path.join(os.path.dirname(checkpoint_path), os.path.basename(logged))):
        if p and os.path.isfile(p):
            return p
    return None


def _seed_result(r: RunRecord, code_bytes: int) -> dict:
    return {"val_loss": r.final["sliding_val_loss"], "val_bpb": r.final["sliding_val_bpb"],
            "roundtrip_val_bpb": r.final["val_bpb"], "steps": r.steps, "ms_per_step": round(r.step_ms, 2),
            "training_seconds": round(r.train_end["train_ms"] / 1000, 1), "bytes_model": r.artifact["model_bytes"],
            "bytes_total": r.artifact["model_bytes"] + code_bytes}


def _readme(info: dict, run: RunRecord, seeds: list[RunRecord], settings: dict, command: str) -> str:
    d = describe(run)
    what = ("the baseline (cross-entropy only)" if d["mode"] == "CE" else
            f"{d['mode']} distillation{' (seed-faithful)' if d['faithful'] else ''} from teacher `{d['teacher']}`, "
            f"α {d['alpha']:g}" + (f", T {d['temp']:g}" if d["temp"] else "") +
            (f", tail {d['tail']}" if d["tail"] != "–" else ""))
    rows = "\n".join(f"| {s} | {r['steps']} | {r['ms_per_step']:.2f} | {r['roundtrip_val_bpb']:.8f} | "
                     f"{r['val_bpb']:.8f} | {r['bytes_model']:,} | {r['bytes_total']:,} |"
                     for s, r in info["seed_results"].items())
    out = [f"# {info['name']}", "", info["blurb"], "",
           f"Arm `{run.name}` of the distill-golf study: {what}. Script: `{run.script}`; hardware: "
           f"{info['hardware']}; training {info['training_seconds']:.0f} s.", "",
           "## Results", "",
           "val_bpb: the int6 artifact reloaded and scored with a sliding window (stride "
           f"{run.config.get('eval_stride')}); rt: standard eval.", "",
           "| seed | steps | ms/step | val_bpb rt | val_bpb sliding | model bytes | total bytes |",
           "|---|---|---|---|---|---|---|", rows]
    if len(seeds) > 1:
        out += ["", f"Mean over {len(seeds)} seeds: val_bpb {info['val_bpb']:.8f} ± {info['std_val_bpb']:.8f} "
                "(sample std)."]
    out += ["", "## Size", "",
            f"- `{ARTIFACT_NAME}`: {info['bytes_model']:,} bytes (int6 + {info['compressor']}; seed {run.seed}, "
            + ("byte-identical to the artifact the run scored)" if info["artifact_verified"] else
               "re-exported from the checkpoint; the run's own artifact was gone, so not compared)"),
            f"- `{SCRIPT_NAME}`: {info['bytes_code']:,} bytes (generated single file, no import of the repository)",
            f"- total: {info['bytes_total']:,} bytes; cap 16,000,000: "
            f"{'under' if info['bytes_total'] <= 16_000_000 else 'OVER'}", "",
            "## Reproduce", "",
            "The arm's settings are baked into `train_gpt.py` as defaults (any environment variable overrides them):",
            "", "    " + " ".join(f"{k}={v}" for k, v in settings.items()), "",
            "    torchrun --standalone --nproc_per_node=8 train_gpt.py     # or: python train_gpt.py (one process)"]
    if len(seeds) > 1:
        out.append("    " + "; ".join(f"SEED={r.seed} python train_gpt.py" for r in seeds if r.seed != run.seed))
    out += ["", "## Track", "", _track_text(info)]
    if command:
        out += ["", "The command that trained it (from the repository):", "", "    " + command]
    out += ["", "Logs: " + ", ".join(f"`train_seed{r.seed}.log`" for r in seeds) +
            " (and the metrics files `train_seed<SEED>.jsonl`)."]
    return "\n".join(out) + "\n"


def _track_text(info: dict) -> str:
    if info["track"] == TRACKS["record"]:
        return ("Record track: everything it trains from is made inside the timed budget (its teacher, if any, is "
                "built by `train_gpt.py` itself from the train shards and counted in `training_seconds`); the "
                "folder needs nothing but the data.")
    cost = info["teacher"]

    def secs(x):
        return "not recorded" if x is None else f"{x:,.0f} s"
    return (f"Non-record track: it distils from a teacher trained (and cached) before the timed run, outside the "
            f"600 s budget: teacher training {secs(cost['training_seconds'])}, logit caching "
            f"{secs(cost['caching_seconds'])}. It reads that teacher's logit cache (LOGIT_CACHE) and/or checkpoint "
            "(TEACHER_PATH), made by `train_teacher.py` and `cache_logits.py` of the repository; they are not part "
            "of the artifact.")


def write_submission(checkpoint_path: str, out_dir: str, *, name: str = "", author: str = "", github: str = "",
                     blurb: str = "", log=print) -> dict:
    """Write the records folder for the arm that produced `checkpoint_path`; returns submission.json's dict."""
    ckpt = load_checkpoint(checkpoint_path)
    cfg = Config.from_dict(ckpt["config"])
    run = find_run(checkpoint_path, cfg)
    os.makedirs(out_dir, exist_ok=True)
    script = os.path.join(out_dir, SCRIPT_NAME)
    atomic_write_text(script, single_file_source(os.path.join(ROOT, run.script), cfg))
    artifact = os.path.join(out_dir, ARTIFACT_NAME)
    sizes = export_artifact(ckpt["model"], artifact, run.artifact.get("compressor", cfg.compressor), script, log, cfg)
    scored = _scored_artifact(run, checkpoint_path)
    if scored is not None and not _same_bytes(scored, artifact):
        raise GolfError(f"the artifact re-exported from {checkpoint_path} differs from {scored}, the one the run "
                        "scored (the quantizer changed since?); rescore it with eval_bpb.py or rerun the arm")
    if run.artifact.get("code_bytes") != sizes["code_bytes"]:
        log(f"warning: the run logged code size {run.artifact.get('code_bytes')}, the generated {SCRIPT_NAME} has "
            f"{sizes['code_bytes']} bytes (the sources changed since the run); submission.json counts the file")
    seeds = seed_runs(run)
    for r in seeds:
        for src, ext in ((r.txt_path, "log"), (r.jsonl_path, "jsonl")):
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(out_dir, f"train_seed{r.seed}.{ext}"))
    d = describe(run)
    # The challenge's val_bpb (and val_loss) is the mean over the seeds a folder submits; each seed's own is in
    # seed_results.
    score = {key: mean_std([r.final[field] for r in seeds])[0]
             for key, field in (("val_loss", "sliding_val_loss"), ("val_bpb", "sliding_val_bpb"),
                                ("roundtrip_val_bpb", "val_bpb"))}
    info = {
        "name": name or f"distill-golf {run.name}",
        "author": author,
        "github_id": github,
        "blurb": blurb or (f"Knowledge distillation study arm {run.name} ({d['mode']}, teacher {d['teacher']}, "
                           f"alpha {d['alpha']:g})" if d["mode"] != "CE" else f"Baseline student ({run.name})")
                 + f"; int6 sliding-window val_bpb {score['val_bpb']:.4f}"
                 + (f" (mean of {len(seeds)} seeds)." if len(seeds) > 1 else "."),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "arm": run.name,
        **score,
        "seed_results": {str(r.seed): _seed_result(r, sizes["code_bytes"]) for r in seeds},
        "bytes_total": sizes["total_bytes"],
        "bytes_code": sizes["code_bytes"],
        "bytes_model": sizes["model_bytes"],
        "compressor": sizes["compressor"],
        "artifact_verified": scored is not None,
        "hardware": hardware(run),
        "training_seconds": round(run.train_end["train_ms"] / 1000, 1),
        "track": TRACKS[run.track],  # the challenge's name; what decides it is in trained_from
        "trained_from": trained_from(run, cfg),
    }
    if run.track == "non-record":
        info["teacher"] = teacher_cost(cfg)
    if len(seeds) > 1:
        info.update(std_val_bpb=mean_std([r.final["sliding_val_bpb"] for r in seeds])[1], seed_group=group_name(seeds))
    command_file = os.path.join(run.folder, "command.txt")
    command = open(command_file, encoding="utf-8").read().strip() if os.path.isfile(command_file) else ""
    atomic_write_text(os.path.join(out_dir, "submission.json"), json.dumps(info, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "README.md"), _readme(info, run, seeds, arm_settings(cfg), command))
    log(f"submission folder {out_dir}: {SCRIPT_NAME} {sizes['code_bytes']} B + {ARTIFACT_NAME} "
        f"{sizes['model_bytes']} B = {sizes['total_bytes']} B, val_bpb {info['val_bpb']:.8f}")
    return info
