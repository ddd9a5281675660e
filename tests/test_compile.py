"""torch.compile on CPU: for every arm kind (baseline, cached soft, cached hard, online teacher, the student's EMA
switched on mid-run) the compile warm-up covers every training graph, late QAT's included, for WARMUP_STEPS=1 and
2, so no graph is compiled or recompiled during a timed step (the study's defect D4). The training loop counts
compiles around each timed step (golf.dist.CompileWatch) and logs `warning: compile_in_timed_step`; these runs
must have none, and the seed-faithful D4 arm, whose warm-up skips the teacher on purpose, must have one.

Slow (a cold CPU compile of even the test model takes seconds per graph): `-m "not slow"` skips it.

    python -m pytest tests/test_compile.py -q
"""
import json
import re

import pytest

from golf.teachers import TEACHERS
from helpers import dataset_env, run_script, side_by_side

pytestmark = pytest.mark.slow

# Four steps whose LR scale is 1, 0.75, 0.5, 0.25: late QAT switches on before step 3, inside the timed run;
# a validation after step 2 puts the eval graph between the two training graphs.
RUN = {"PRESET": "test", "DTYPE": "fp32", "COMPILE": "1", "ITERATIONS": 4, "WARMDOWN_ITERS": 4,
       "QAT_THRESHOLD": 0.6, "LATE_QAT": 1, "VAL_LOSS_EVERY": 2, "TRAIN_LOG_EVERY": 1, "VAL_MAX_TOKENS": 1024,
       "EVAL_STRIDE": 64, "RUN_ID": "c",
       # Inductor's pool of compile workers only adds start-up time on a 2-core machine.
       "TORCHINDUCTOR_COMPILE_THREADS": 1, "GOLF_COMPILE_BACKEND": "aot_eager"}
ARMS = {  # arm kind -> (script, teacher, settings)
    "baseline": ("train_gpt.py", None, {}),
    "soft": ("distill.py", "cache", {"DISTILL_TARGET": "soft"}),
    "hard": ("distill.py", "cache", {"DISTILL_TARGET": "hard"}),
    "online": ("distill.py", "online", {"DISTILL_TARGET": "soft"}),
    # the term off in steps 1-2 and on in 3-4: the warm-up must have compiled the teacher's graph too
    "ema": ("distill.py", "ema", {"DISTILL_TARGET": "soft", "DISTILL_START_FRAC": 0.5}),
    # eager counts and queries beside the compiled student: the built tables must not trigger a compile either
    "ngram": ("distill.py", "ngram", {"DISTILL_TARGET": "soft"}),
}


@pytest.fixture(scope="module")
def teachers(teacher_ckpt, teacher_cache):
    return {"cache": {"DISTILL_TEACHER": "cache", "LOGIT_CACHE": teacher_cache},
            "online": {"DISTILL_TEACHER": "online", "TEACHER_PATH": teacher_ckpt}, "ema": {"DISTILL_TEACHER": "ema"},
            "ngram": {"DISTILL_TEACHER": "ngram", "NGRAM_PREPASS_TOKENS": -1, "DISTILL_TEMP": 1}}


def test_every_teacher_has_an_arm_here():
    """A new teacher in golf.teachers.TEACHERS gets its compile run here too."""
    assert {t for _, t, _ in ARMS.values() if t} == set(TEACHERS)


def _run(script: str, env: dict, cwd):
    cwd.mkdir()
    return run_script([script], env, cwd=str(cwd), timeout=400)


@pytest.mark.parametrize("arm", list(ARMS))
def test_no_compile_during_timed_steps(arm, tiny_dataset, teachers, tmp_path):
    script, teacher, settings = ARMS[arm]
    env = {**dataset_env(tiny_dataset), **RUN, **settings, **(teachers[teacher] if teacher else {})}
    # WARMUP_STEPS=1 and 2 side by side: one process each, the two cores used at once.
    runs = dict(zip((1, 2), side_by_side(*[lambda w=w: _run(script, {**env, "WARMUP_STEPS": w}, tmp_path / f"w{w}")
                                           for w in (1, 2)])))
    for warmup, out in runs.items():
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        text = out.stdout
        assert "compile_in_timed_step" not in text, text[-3000:]
        # Both training graphs were compiled in the warm-up: one step without fake-quant, one (or more) with it.
        m = re.search(r"^warmup:done steps:2 qat_steps:1 compiles:(\d+) ", text, re.M)
        assert m and int(m.group(1)) >= (3 if teacher in ("online", "ema") else 2), text[-3000:]
        assert re.search(r"^late_qat:enabled step:3 ", text, re.M), text[-3000:]  # QAT switched on mid-run
        if "DISTILL_START_FRAC" in settings:
            assert re.search(r"^distill:on step:3 ", text, re.M), text[-3000:]  # and the teacher term
        assert re.search(r"^step:2/4 val_loss:", text, re.M)
        assert re.search(r"^step:4/4 train_loss:", text, re.M)
        with open(tmp_path / f"w{warmup}" / "logs" / "c.jsonl") as f:
            end = [r for r in map(json.loads, f) if r["event"] == "train_end"]
        assert end[0]["timed_compiles"] == 0


def test_the_count_sees_a_compile_inside_the_budget(tiny_dataset, teachers, tmp_path):
    """Not vacuous: the seed-faithful D4 arm warms up without its teacher on purpose, so the online teacher's graph
    compiles in timed step 1, and the loop says so."""
    env = {**dataset_env(tiny_dataset), **RUN, **teachers["online"], "DISTILL_SEED_FAITHFUL": "D4", "WARMUP_STEPS": 2}
    out = _run("distill.py", env, tmp_path / "d4")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert re.search(r"^warning: compile_in_timed_step step:1 compiles:[1-9]", out.stdout, re.M), out.stdout[-3000:]
    with open(tmp_path / "d4" / "logs" / "c.jsonl") as f:
        end = [r for r in map(json.loads, f) if r["event"] == "train_end"]
    assert end[0]["timed_compiles"] >= 1
