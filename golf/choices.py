"""A configuration checked in full: golf.config's own checks, then those of each choice's owner, which the
registry listing the choice reaches (golf/teachers.py: DISTILL_TEACHER and every teacher's own settings;
golf/losses.py: DISTILL_TARGET, DISTILL_TAIL, DISTILL_DRAWS; golf/arms.py: DISTILL_SEED_FAITHFUL;
golf/objectives.py: DISTILL_UNTIL_OVERTAKEN).

golf.config imports none of them (they import it): each owner registers its check with `golf.config.owner_check`
when it is imported. This module imports them all, so a script that resolves its configuration here runs every
check, in the same order, before it reads data or opens a log, whatever else it imports.
"""
from dataclasses import fields

from golf import arms, losses, objectives, teachers  # noqa: F401  imported for the checks they register
from golf.config import LEGACY_SETTINGS, Config, build_parser, resolve_config
from golf.errors import SETTING_NAMES

__all__ = ["config_from_cli", "resolve_config"]


def config_from_cli(description: str, argv=None, extra=None, only=None, dry_run: bool = True, defaults=None):
    """Parse `argv`, resolve the config; returns (cfg, args). `only`, `dry_run`, `defaults`: as
    golf.config.build_parser."""
    parser = build_parser(description, extra, only, dry_run, defaults)
    args = parser.parse_args(argv)
    # what an interruption's command repeats (golf.errors.rerun_command)
    SETTING_NAMES.update({"PRESET"} | {f.name.upper() for f in fields(Config)} | {n.upper() for n in LEGACY_SETTINGS})
    return resolve_config(args), args
