"""User-facing errors: one clear line, a non-zero exit, no traceback unless DEBUG=1; and the one set of boolean
spellings a user may type (DEBUG here, every boolean setting in golf/config.py), at the bottom of the library so
that both read it."""
import os
import sys
from functools import wraps

# Case and surrounding spaces ignored; empty means off. Anything else is refused rather than guessed.
BOOL_TRUE = ("1", "true", "yes", "on")
BOOL_FALSE = ("0", "false", "no", "off", "")
BOOL_SPELLINGS = "1/true/yes/on or 0/false/no/off"


def parse_bool(raw: str) -> bool | None:
    """True or False for a documented spelling, None for anything else."""
    low = raw.strip().lower()
    return True if low in BOOL_TRUE else False if low in BOOL_FALSE else None


class GolfError(Exception):
    """A problem with the user's input or environment (not a bug): the message says what and how to fix it."""


def cli_main(fn):
    """Decorate a script's main(): GolfError becomes `error: <message>` on stderr and exit code 2.

    Set DEBUG=1 to get the full traceback instead.
    """

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GolfError as e:
            # The settings' boolean spellings; any other non-empty value also shows the traceback, as it always did.
            if parse_bool(os.environ.get("DEBUG", "0")) is not False:
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
