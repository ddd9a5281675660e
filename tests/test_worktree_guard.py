"""The guard of tests/worktree_guard.py, run on a throw-away test session (pytester) whose rootdir stands in for
the repository: a test that writes, changes or removes anything in its data/, runs/, logs/, checkpoints/,
caches/ or records/ fails (in its body, a fixture, or a subprocess), one that only reads them or writes in its
own working directory passes, and every test starts in an empty working directory that is not the repository.

    python -m pytest tests/test_worktree_guard.py -q
"""
import os

SESSION = '''
import os, subprocess, sys
import pytest

def root(request):
    return str(request.config.rootpath)

def test_writes_a_log(request):
    os.makedirs(os.path.join(root(request), "logs"))
    open(os.path.join(root(request), "logs", "run.txt"), "w").close()

def test_changes_a_shard(request):
    with open(os.path.join(root(request), "data", "x_train_000000.bin"), "ab") as f:
        f.write(b"more")

def test_removes_a_run(request):
    os.remove(os.path.join(root(request), "runs", "demo", "a.txt"))

def test_a_subprocess_writes_a_checkpoint(request):
    subprocess.run([sys.executable, "-c", "import os; os.makedirs('checkpoints'); open('checkpoints/c.pt', 'w')"],
                   cwd=root(request), check=True)

@pytest.fixture
def writes_records_after(request):
    yield
    os.makedirs(os.path.join(root(request), "records", "r"))

def test_fixture_writes_in_its_teardown(writes_records_after):
    pass

def test_reads_and_writes_its_own_folder(request):
    assert open(os.path.join(root(request), "data", "x_train_000000.bin"), "rb").read().startswith(b"shard")
    os.makedirs("logs")
    open("logs/run.txt", "w").close()  # in its own working directory: allowed

def test_starts_in_an_empty_folder_of_its_own(request):
    assert os.listdir() == [] and os.getcwd() != root(request)
    assert not os.path.exists("logs")  # the previous test's folder is gone
'''


def test_a_test_touching_the_working_tree_fails(pytester):
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "x_train_000000.bin").write_bytes(b"shard")
    (pytester.path / "runs" / "demo").mkdir(parents=True)
    (pytester.path / "runs" / "demo" / "a.txt").write_text("a")
    pytester.makepyfile(test_session=SESSION)
    result = pytester.runpytest("-p", "worktree_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=4, errors=1)
    body = "the test (or its fixtures' setup) changed the repository's working tree (*): "
    result.stdout.fnmatch_lines([  # each report under its test's heading, the paths relative to the rootdir
        "*ERROR at teardown of test_fixture_writes_in_its_teardown*",
        "the test changed, in its fixtures' teardown, the repository's working tree (*): records, records?r; *",
        "*_ test_writes_a_log _*", body + "logs, logs?run.txt; write under tmp_path instead",
        "*_ test_changes_a_shard _*", body + "data?x_train_000000.bin; *",
        "*_ test_removes_a_run _*", body + "runs?demo, runs?demo?a.txt; *",
        "*_ test_a_subprocess_writes_a_checkpoint _*", body + "checkpoints, checkpoints?c.pt; *",
    ])
    assert (pytester.path / "logs" / "run.txt").exists()  # it reports what a test did; it undoes nothing
    assert os.getcwd() == str(pytester.path)  # the working directory is given back after each test
