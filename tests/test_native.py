"""golf/native.py: the C kernels' build (cached per source, compiler and flags; atomic), their fallback when no
compiler or a broken source, and the GOLF_NATIVE switch. The kernels themselves are held to float64 references and
to their torch forms in tests/test_topk.py, tests/test_losses.py and tests/test_ngram.py.

Run: python -m pytest tests/test_native.py -q
"""
import os
import shutil
from pathlib import Path

import pytest

from golf import native
from golf.errors import GolfError

needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler here")
SOURCES = sorted(native.SIGNATURES)


@needs_cc
@pytest.mark.parametrize("name", SOURCES)
def test_each_source_builds_once_and_loads_every_function(name, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = Path(native.__file__).with_name(name)
    lib = native.build(source)
    assert lib.parent == tmp_path / "distill-golf" and os.listdir(lib.parent) == [lib.name]  # no temp left
    stamp = lib.stat().st_mtime_ns
    assert native.build(source) == lib and lib.stat().st_mtime_ns == stamp  # the second call reuses the build
    loaded = native.load(name)
    assert all(callable(getattr(loaded, fn)) for fn in native.SIGNATURES[name])


@needs_cc
def test_a_missing_compiler_falls_back_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.load("count.c", compiler="no-such-cc") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "golf/count.c not built (no C compiler 'no-such-cc'" in err
    assert "slower torch forms" in err


@needs_cc
def test_a_failing_compile_leaves_no_library(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "broken.c").write_text("this is not C\n")
    assert native.load("topk.c", source=tmp_path / "broken.c") is None
    assert "golf/topk.c not built" in capsys.readouterr().err
    assert os.listdir(tmp_path / "distill-golf") == []


@pytest.mark.parametrize("value", ["0", "false", "no", "OFF"])
def test_golf_native_off_leaves_every_kernel_to_torch(value, monkeypatch):
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setenv("GOLF_NATIVE", value)
    assert all(native.library(name) is None for name in SOURCES)


def test_golf_native_refuses_a_misspelt_value(monkeypatch):
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setenv("GOLF_NATIVE", "maybe")
    with pytest.raises(GolfError, match=r"GOLF_NATIVE='maybe' is not a valid bool \(use 1/true/yes/on"):
        native.library("count.c")


def test_row_blocks_split_rows_among_threads():
    assert native.row_blocks(1000, threads=3) == [(0, 334), (334, 668), (668, 1000)]
    assert native.row_blocks(300, threads=4) == [(0, 300)]  # fewer than MIN_ROWS_PER_THREAD per thread: one block
    assert native.row_blocks(0, threads=2) == []
