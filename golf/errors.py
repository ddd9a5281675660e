"""User-facing errors: one clear line, a non-zero exit, no traceback unless DEBUG=1."""
import os
import sys
from functools import wraps


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
            from golf.config import parse_bool  # here, not at the top: golf.config imports this module

            # The settings' boolean spellings; any other non-empty value also shows the traceback, as it always did.
            if parse_bool(os.environ.get("DEBUG", "0")) is not False:
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
