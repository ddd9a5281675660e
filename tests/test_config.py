"""Settings validation (golf/config.py): DEVICE and COMPILE values, the one set of boolean spellings, the
warning for an environment variable that looks like a misspelt setting, the study's DISTILL_CACHED / DISTILL_SOFT
as aliases of DISTILL_TEACHER / DISTILL_TARGET (also in configs saved by older versions), and choices that are
the registries' own.

    python -m pytest tests/test_config.py -q
"""
import pytest

import golf.config
from golf.config import Config, build_parser, resolve_config
from golf.errors import GolfError
from golf.losses import TAILS
from golf.teachers import TEACHERS
from helpers import run_script, side_by_side

TRUE_SPELLINGS = ["1", "true", "yes", "on", "TRUE", "Yes", " on "]
FALSE_SPELLINGS = ["0", "false", "no", "off", "", "FALSE", "Off"]
# Set by shells, launchers and libraries around a run: never a misspelt setting.
UNRELATED_ENV = ["PATH", "HOME", "USER", "SHELL", "LANG", "PWD", "HOSTNAME", "TMPDIR", "TERM", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH", "NCCL_DEBUG", "PYTHONPATH",
                 "PYTHONHASHSEED", "VIRTUAL_ENV", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                 "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCH_HOME", "TORCH_LOGS",
                 "HF_HOME", "WANDB_PROJECT", "SLURM_JOB_ID", "XDG_CACHE_HOME", "CC", "LD_LIBRARY_PATH", "DEBUG",
                 "GOLF_NATIVE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MALLOC_TRIM_THRESHOLD_",
                 "PYTORCH_CUDA_ALLOC_CONF", "TOKENIZERS_PARALLELISM", "http_proxy"]


@pytest.fixture
def warnings_once(monkeypatch):
    """A fresh process's state: no misspelling warned about yet."""
    monkeypatch.setattr(golf.config, "_WARNED", set(), raising=False)


def test_device_is_auto_cpu_or_cuda():
    for value in ("auto", "cpu", "cuda"):
        assert resolve_config(None, {"DEVICE": value}).device == value
    for value in ("gpu", "cuda:0", "CUDA", "mps", ""):  # `gpu` used to run on the CPU without a word
        with pytest.raises(GolfError, match=r"DEVICE=.*auto, cpu or cuda"):
            resolve_config(None, {"DEVICE": value})


@pytest.mark.parametrize("value,stored", [("auto", "auto"), ("AUTO", "auto")]
                         + [(v, "1") for v in TRUE_SPELLINGS] + [(v, "0") for v in FALSE_SPELLINGS])
def test_compile_takes_auto_or_a_boolean_stored_as_auto_1_or_0(value, stored):
    # The scripts compare COMPILE with "auto" and "1": any other spelling of "on" used to mean off.
    assert resolve_config(None, {"COMPILE": value}).compile == stored
    args = build_parser("x").parse_args(["--compile", value])
    assert resolve_config(args, {}).compile == stored


@pytest.mark.parametrize("value", ["maybe", "2", "y", "enabled"])
def test_compile_refuses_other_values(value):
    with pytest.raises(GolfError, match=r"COMPILE=.*1/true/yes/on"):
        resolve_config(None, {"COMPILE": value})


@pytest.mark.parametrize("value", TRUE_SPELLINGS + FALSE_SPELLINGS)
def test_boolean_settings_take_the_documented_spellings(value):
    expected = value in TRUE_SPELLINGS
    cfg = resolve_config(None, {"EMA_ENABLED": value, "DISTILL_SOFT": value, "COMPILE": value})
    assert cfg.ema_enabled is expected and cfg.compile == "01"[expected]
    assert cfg.distill_target == ("soft" if expected else "hard")  # the study's DISTILL_SOFT, a boolean alias
    args = build_parser("x").parse_args(["--late-qat", value])
    assert resolve_config(args, {}).late_qat is expected


@pytest.mark.parametrize("value", ["2", "y", "n", "enabled", "none", "-1"])
def test_boolean_settings_refuse_other_spellings(value):
    with pytest.raises(GolfError, match=r"EMA_ENABLED=.*not a valid bool.*1/true/yes/on.*0/false/no/off"):
        resolve_config(None, {"EMA_ENABLED": value})


def test_help_documents_the_spellings_and_device_values():
    text = build_parser("x").format_help()
    assert "1/true/yes/on" in text and "0/false/no/off" in text and "auto, cpu or cuda" in text


def test_a_misspelt_setting_gets_a_warning_naming_the_intended_one(warnings_once, capsys):
    env = {"MAX_WALLCLOCK_SECOND": "5", "DISTIL_ALPHA": "0.3", "MAX_WALLCLOCK_SECONDS": "7"}
    cfg = resolve_config(None, env)
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: DISTIL_ALPHA is not a setting; did you mean DISTILL_ALPHA? (ignored)",
                   "warning: MAX_WALLCLOCK_SECOND is not a setting; did you mean MAX_WALLCLOCK_SECONDS? (ignored)"]
    assert cfg.max_wallclock_seconds == 7.0 and cfg.distill_alpha == 0.5  # misspelt values are not used
    resolve_config(None, env)
    assert capsys.readouterr().err == ""  # once per process


def test_only_rank_0_warns(warnings_once, capsys):
    resolve_config(None, {"MAX_WALLCLOCK_SECOND": "5", "RANK": "3"})
    assert capsys.readouterr().err == ""
    resolve_config(None, {"MAX_WALLCLOCK_SECOND": "5", "RANK": "0"})
    assert "did you mean MAX_WALLCLOCK_SECONDS?" in capsys.readouterr().err


def test_unrelated_and_exact_names_never_warn(warnings_once, capsys):
    env = {name: "1" for name in UNRELATED_ENV}
    env.update(RANK="0", PRESET="test", MAX_WALLCLOCK_SECONDS="5", DISTILL_ALPHA="0.3", COMPILE="0", NUM_LAYER="3")
    resolve_config(None, env)
    assert capsys.readouterr().err.splitlines() == [  # only the one misspelling among them
        "warning: NUM_LAYER is not a setting; did you mean NUM_LAYERS? (ignored)"]


def test_scripts_refuse_a_bad_device_and_warn_about_a_misspelt_setting(tmp_path):
    def dry_run(**env):
        return run_script(["train_gpt.py", "--dry-run"], {"PRESET": "test", **env}, str(tmp_path))
    refused, out = side_by_side(lambda: dry_run(DEVICE="gpu", DEBUG="0"),
                                lambda: dry_run(COMPILE="yes", MAX_WALLCLOCK_SECOND="5"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == ["error: DEVICE='gpu': use auto, cpu or cuda"]
    assert out.returncode == 0, out.stderr
    assert "compile:1" in out.stdout.splitlines()
    assert "did you mean MAX_WALLCLOCK_SECONDS?" in out.stderr


# --- the same spellings for the switches outside Config ------------------------------------------------------

@pytest.mark.parametrize("value,traceback", [("1", True), ("yes", True), ("0", False), ("false", False),
                                             ("off", False), ("", False)])
def test_debug_takes_the_boolean_spellings(value, traceback, monkeypatch, capsys):
    from golf.errors import cli_main

    @cli_main
    def main():
        raise GolfError("bad input")

    monkeypatch.setenv("DEBUG", value)
    if traceback:
        with pytest.raises(GolfError):
            main()
    else:
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 2 and capsys.readouterr().err == "error: bad input\n"


# ---- the study's variables as aliases; choices from the registries -------------------------------------------


@pytest.mark.parametrize("env,teacher,target", [
    ({}, "cache", "soft"),
    ({"DISTILL_CACHED": "0"}, "online", "soft"),
    ({"DISTILL_CACHED": "1", "DISTILL_SOFT": "0"}, "cache", "hard"),
    ({"DISTILL_SOFT": "false", "DISTILL_TARGET": "hard"}, "cache", "hard"),
    ({"DISTILL_TEACHER": "online", "DISTILL_TARGET": "hard"}, "online", "hard"),
])
def test_study_variables_map_onto_the_settings(env, teacher, target):
    cfg = resolve_config(None, env)
    assert (cfg.distill_teacher, cfg.distill_target) == (teacher, target)


def test_a_contradiction_is_refused():
    with pytest.raises(GolfError, match="DISTILL_CACHED=0 means DISTILL_TEACHER=online, but DISTILL_TEACHER=cache"):
        resolve_config(None, {"DISTILL_CACHED": "0", "DISTILL_TEACHER": "cache"})


def test_old_saved_configs_map_too():
    old = Config().to_dict()
    del old["distill_teacher"], old["distill_target"]
    old.update(distill_cached=False, distill_soft=False, some_removed_field=3)
    cfg = Config.from_dict(old)
    assert (cfg.distill_teacher, cfg.distill_target) == ("online", "hard")


@pytest.mark.parametrize("name,choices", [("DISTILL_TEACHER", TEACHERS), ("DISTILL_TARGET", ("soft", "hard")),
                                          ("DISTILL_TAIL", TAILS)])
def test_choices_come_from_the_registries(name, choices):
    for value in choices:
        resolve_config(None, {name: value})
    with pytest.raises(GolfError, match=f"{name}='nope': use one of {', '.join(choices)}"):
        resolve_config(None, {name: "nope"})
