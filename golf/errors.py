"""User-facing errors: one clear line, a non-zero exit, no traceback unless DEBUG=1; and the one set of boolean
spellings a user may type (DEBUG here, every boolean setting in golf/config.py), at the bottom of the library so
that both read it. Interruptions (Ctrl-C, SIGTERM) likewise: one line saying where the script stopped and the
exact command that continues, exit 130 / 143."""
import os
import shlex
import signal
import sys
from dataclasses import dataclass
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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT (BaseException: no `except
    Exception` swallows it)."""


@dataclass
class StopNote:
    """What an interruption says, kept current by the script as it goes: `where` it is, and, once something is
    kept that a command continues from, what (`kept`) and that command (`continue_cmd`). Nothing kept: the
    line says so and gives the command that starts again."""
    where: str = "before anything was kept"
    kept: str | None = None
    continue_cmd: str | None = None


STOP = StopNote()
_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as a shell reports it


def stopped_at(where: str, kept: str | None = None, continue_cmd: str | None = None):
    """Update the interruption note (rank 0's is the one printed)."""
    STOP.where, STOP.kept, STOP.continue_cmd = where, kept, continue_cmd


# The environment variables a script's configuration reads (PRESET and every setting's): what `rerun_command`
# repeats. Filled by golf.choices.config_from_cli (this module is the library's floor and imports none of it).
SETTING_NAMES: set[str] = set()


def rerun_command(add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> str:
    """This process's command line as the user would type it again: the settings it read from the environment
    (SETTING_NAMES), the launcher (`torchrun --standalone --nproc_per_node=N` under torchrun), the script and its
    arguments without `drop`, plus `add`."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k in SETTING_NAMES]
    world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    launcher = [f"torchrun --standalone --nproc_per_node={world}"] if "TORCHELASTIC_RUN_ID" in os.environ else ["python"]
    args = [a for a in sys.argv[1:] if a not in drop] + [a for a in add if a not in sys.argv[1:]]
    return " ".join(env + launcher + [shlex.quote(a) for a in [sys.argv[0], *args]])


def interrupt_line(signum: int) -> str:
    """The one line an interrupted script prints."""
    how = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    if STOP.continue_cmd:
        return f"interrupted ({how}) {STOP.where}; {STOP.kept} is kept: continue with: {STOP.continue_cmd}"
    return f"interrupted ({how}) {STOP.where}; nothing was kept: start again with: {rerun_command()}"


def _install_signal_handlers() -> dict:
    """SIGINT and SIGTERM raise once (KeyboardInterrupt / Terminated) in the main thread; a second signal while
    the first unwinds (a terminal's Ctrl-C reaches every process of run.sh's group, which also forwards it) is
    ignored. Returns the previous handlers."""
    raised = []

    def handler(signum, frame):
        if raised:
            return
        raised.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    previous = {}
    for sig in _EXIT:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (a test calling main() from a thread): leave it as it is
            pass
    return previous


def _debug() -> bool:
    # The settings' boolean spellings; any other non-empty value also shows the traceback, as it always did.
    return parse_bool(os.environ.get("DEBUG", "0")) is not False


def cli_main(fn):
    """Decorate a script's main(): GolfError becomes `error: <message>` on stderr and exit code 2; Ctrl-C and
    SIGTERM become the interruption line (rank 0 only; every rank exits quietly) and exit code 130 / 143.

    Set DEBUG=1 to get the full traceback instead.
    """

    @wraps(fn)
    def wrapper(*args, **kwargs):
        previous = _install_signal_handlers()
        stopped_at(StopNote.where)  # a fresh note (tests run several scripts in one process)
        try:
            return fn(*args, **kwargs)
        except GolfError as e:
            if _debug():
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except (KeyboardInterrupt, Terminated) as e:
            signum = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
            if _debug():
                raise
            if os.environ.get("RANK", "0") == "0":
                print(interrupt_line(signum), file=sys.stderr, flush=True)
            sys.exit(_EXIT[signum])
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    return wrapper
