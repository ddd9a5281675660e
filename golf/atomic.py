"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then renamed over the target.

A crash at any point leaves either the old file or the new one, never a half-written one. A crash can leave
the temporary file, always named `.NAME.<random>.tmp` (golf/cache.py relies on the pattern to clean up).
"""
import contextlib
import errno
import os
import secrets
import shutil

from golf.errors import GolfError

_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # EDQUOT: over the user's quota


def create_temp(path: str) -> str:
    """Create an empty `.NAME.<random>.tmp` beside `path` and return its name. Created with mode 0o666 so the
    umask applies as for any new file (mkstemp's 0o600 would leave every shard, checkpoint and artifact
    unreadable to the other users of a shared machine)."""
    folder, name = os.path.split(path)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # 48 random bits: practically never
            continue


def fsync_dir(folder: str):
    """Make a rename in `folder` durable. Best effort: some systems (Windows, some network file systems)
    cannot open or fsync a folder, and the rename itself has already happened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is fsynced and renamed to `path`.

    On any exception the temporary file is removed and `path` is left untouched; a full disk becomes a
    GolfError naming `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = None
    try:
        tmp = create_temp(os.path.join(folder, os.path.basename(path)))
        yield tmp
        with contextlib.suppress(FileNotFoundError):  # a rewrite keeps the file's permissions
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(folder)
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise GolfError(f"no space left on the device while writing {path} ({os.strerror(e.errno)}); "
                            "free some space and rerun (the previous file, if any, is intact)") from e
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def atomic_write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def require_free_disk(path: str, need: int, what: str, fix: str):
    """The one free-disk check, before anything is written: refuse when `need` bytes would not fit on the disk of
    `path` (of its nearest existing folder: a folder created later lands on its parent's disk)."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise GolfError(f"{what}: {human_bytes(need)} needed in {path}, only {human_bytes(free)} free; {fix}")
