"""What distinguishes an arm, from its configuration alone: which of the study's defects it reproduces
(DISTILL_SEED_FAITHFUL, golf/seed_faithful.py applies them) and the fields the start line of a distillation run
and the results table state. Imports no torch, so reading a study's metrics (golf/runs.py, golf/study.py) stays
quick.
"""
from golf.config import Config, owner_check
from golf.errors import GolfError

DEFECTS = ("D1", "D2", "D3", "D4")


@owner_check("distill_seed_faithful")
def defects(cfg: Config) -> frozenset:
    """The defects DISTILL_SEED_FAITHFUL asks for, checked against the arm; refuses one the arm cannot have."""
    raw = str(cfg.distill_seed_faithful).strip()
    if raw.lower() in ("", "0", "false", "no", "off"):
        return frozenset()
    if cfg.distill_teacher not in ("cache", "online"):
        raise GolfError(f"DISTILL_SEED_FAITHFUL={raw!r}: the study's defects are those of its cache and online teachers; "
                        f"DISTILL_TEACHER={cfg.distill_teacher} has none to reproduce")
    if has_schedule(cfg):
        raise GolfError(f"DISTILL_SEED_FAITHFUL={raw!r}: the study had no distillation schedule; unset "
                        "DISTILL_START_FRAC, DISTILL_RAMP_FRAC and DISTILL_STOP_FRAC")
    soft, cache, online = cfg.distill_target == "soft", cfg.distill_teacher == "cache", cfg.distill_teacher == "online"
    if raw.lower() in ("1", "all", "true", "yes", "on"):
        return frozenset(({"D1"} if soft and cache else set()) | ({"D2"} if cache else {"D3"}) | {"D4"})
    asked = [d.strip().upper() for d in raw.split(",") if d.strip()]
    unknown = [d for d in asked if d not in DEFECTS]
    if unknown:
        raise GolfError(f"DISTILL_SEED_FAITHFUL={raw!r}: {unknown[0]} is not a defect; use a comma list of "
                        f"{', '.join(DEFECTS)}, or 1 / all, or 0")
    chosen = frozenset(asked)
    for d, ok, why in (("D1", soft, "needs DISTILL_TARGET=soft (it divides the KL term)"),
                       ("D1", "D3" not in chosen, "and D3 exclude each other (D3 computes no KL term)"),
                       ("D2", cache, "needs DISTILL_TEACHER=cache (it misreads cache rows)"),
                       ("D3", online, "needs DISTILL_TEACHER=online (it skips the teacher)")):
        if d in chosen and not ok:
            raise GolfError(f"DISTILL_SEED_FAITHFUL={raw!r}: {d} {why}; the study never ran that combination")
    return chosen


def has_schedule(cfg: Config) -> bool:
    """True when the teacher term is not simply on for the whole run (DISTILL_START/RAMP/STOP_FRAC)."""
    return (cfg.distill_start_frac, cfg.distill_ramp_frac, cfg.distill_stop_frac) != (0.0, 0.0, 1.0)


def describe_arm(cfg: Config) -> dict:
    """What distinguishes a distillation arm, as the start line and the results table state it. A configuration
    saved before the schedule existed (Config.from_dict fills its defaults) reads as on for the whole run."""
    soft, teacher = cfg.distill_target == "soft", cfg.distill_teacher
    source = {"cache": cfg.logit_cache, "ema": f"student-ema:{cfg.distill_ema_decay:g}",
              "ngram": f"ngram{cfg.ngram_order}" + ("" if cfg.ngram_leave_one_out else "-memorised")}.get(
        teacher, cfg.teacher_path)
    return {"teacher": teacher, "source": source or "-", "target": cfg.distill_target,
            "alpha": cfg.distill_alpha, "temp": cfg.distill_temp if soft else None,
            "tail": cfg.distill_tail if soft and teacher == "cache" else None, "draws": cfg.distill_draws,
            "seed_faithful": ",".join(sorted(defects(cfg))),
            "start": cfg.distill_start_frac, "ramp": cfg.distill_ramp_frac, "stop": cfg.distill_stop_frac}
