"""A pytest plugin (loaded by tests/conftest.py): no test depends on or changes the repository's working tree.

Each test runs in an empty working directory of its own, made at its setup and removed after its teardown, so
nothing it resolves against the current directory (the scripts' default data/, logs/ and checkpoints/ paths,
golf.config.data_hint's look for the demo data) finds what `prepare_data.py --demo` or a run left in the
checkout. And a test that creates, changes or removes anything under the rootdir's data/, runs/, logs/,
checkpoints/, caches/ or records/ fails, naming the paths: those trees are listed (path, size, mtime) before
its setup, after its call and after its teardown. Reading them is not seen; the empty working directory is what
keeps a test from reading them by accident.
"""
import os
import shutil
import tempfile

import pytest

WATCHED = ("data", "runs", "logs", "checkpoints", "caches", "records")
_STATE = pytest.StashKey[dict]()
_CWD = pytest.StashKey[tuple]()


def tree_state(root) -> dict[str, tuple[int, int]]:
    """{path under root: (size, mtime_ns)} of every folder and file in the watched trees (links not followed)."""
    state = {}
    for top in WATCHED:
        base = os.path.join(root, top)
        if not os.path.lexists(base):
            continue
        st = os.lstat(base)
        state[top] = (st.st_size, st.st_mtime_ns)
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                state[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return state


def _check(item: pytest.Item, when: str):
    """Fail if the watched trees differ from the last state seen; remember the new one (one report per change)."""
    before, after = item.stash[_STATE], tree_state(item.config.rootpath)
    item.stash[_STATE] = after
    touched = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if touched:
        shown = ", ".join(touched[:10]) + (f" and {len(touched) - 10} more" if len(touched) > 10 else "")
        pytest.fail(f"the test {when} the repository's working tree ({item.config.rootpath}): {shown}; "
                    f"write under tmp_path instead", pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: before any fixture's setup
def pytest_runtest_setup(item: pytest.Item):
    item.stash[_STATE] = tree_state(item.config.rootpath)
    own = tempfile.mkdtemp(prefix="cwd-")
    item.stash[_CWD] = (os.getcwd(), own)
    os.chdir(own)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        return (yield)
    finally:
        _check(item, "(or its fixtures' setup) changed")


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after every fixture's teardown
def pytest_runtest_teardown(item: pytest.Item):
    try:
        return (yield)
    finally:
        if _CWD in item.stash:
            outer, own = item.stash[_CWD]
            os.chdir(outer)
            shutil.rmtree(own, ignore_errors=True)
        if _STATE in item.stash:
            _check(item, "changed, in its fixtures' teardown,")
