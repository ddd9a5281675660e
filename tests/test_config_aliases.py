"""The study's variables DISTILL_CACHED / DISTILL_SOFT keep working as aliases of DISTILL_TEACHER / DISTILL_TARGET,
in the environment and in configs saved by older versions; a contradiction is refused; the choices are the
registries' own.

Run: python -m pytest tests/test_config_aliases.py -q
"""
import pytest

from golf.config import Config, resolve_config
from golf.errors import GolfError
from golf.losses import TAILS
from golf.teachers import TEACHERS


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
