"""What a new user meets first: each script's --help lists what applies to it, and the virtual environment the
README's Quick start makes is not something git offers to commit.

    python -m pytest tests/test_first_use.py -q
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO


def _flags(script: str) -> set[str]:
    r = subprocess.run([sys.executable, os.path.join(REPO, script), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"^  (?:-\w, )?(--[a-z0-9-]+)", r.stdout, re.M))


def test_eval_bpb_help_lists_only_what_evaluation_uses():
    """The model, vocabulary and sequence length come from the checkpoint and nothing is trained: no training,
    model or distillation flag, no --dry-run (eval_bpb.py has none). --teacher ngram:ORDER has no checkpoint: its
    vocabulary, window and counting settings are flags."""
    assert _flags("eval_bpb.py") == {
        "--help", "--preset", "--config", "--json", "--out", "--teacher",  # the script's own
        "--data-path", "--tokenizer-path", "--device", "--dtype",  # where and how it runs
        "--val-batch-size", "--val-max-tokens", "--eval-stride", "--eval-batch-seqs",  # the evaluation
        "--vocab-size", "--train-seq-len", "--ngram-smoothing", "--ngram-max-mb", "--ngram-prepass-tokens",  # --teacher ngram:ORDER
    }
    assert {"--num-layers", "--matrix-lr", "--dry-run"} <= _flags("train_gpt.py")  # the training scripts keep all


# .git is a folder in a clone, a file in a worktree
@pytest.mark.skipif(shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")),
                    reason="not a git checkout")
def test_virtual_environment_is_ignored_by_git():
    for path in (".venv", ".venv/bin/python"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, f"git does not ignore {path}: add it to .gitignore"


def test_slow_tests_are_marked_and_ci_runs_them_all():
    """`-m "not slow"` is the README's quick subset; CI must still run every test."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert re.search(r'^markers = \["slow: ', f.read(), re.M), "register the slow marker in pyproject.toml"
    with open(os.path.join(REPO, ".ci", "run")) as f:
        runs = [line.split("#")[0].split() for line in f if "pytest" in line.split("#")[0]]
    assert runs == [["python", "-m", "pytest"]], runs


INSTALL = "pip install -r requirements.txt"


def test_one_install_instruction_everywhere_and_torch_pinned_in_it():
    """The README's Quick start, .ci/run and requirements.txt's own comment give the same line, and it installs
    the tested torch by itself (no separate torch line that needs one particular index)."""
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    quick = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quick.splitlines() if "pip install" in line] == [INSTALL]
    assert "--index-url" not in readme
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    assert [line.split("#")[0].strip() for line in ci.splitlines() if "pip install" in line] == [
        INSTALL.replace("pip install", "python -m pip install -q")]
    reqs = open(os.path.join(REPO, "requirements.txt"), encoding="utf-8").read().splitlines()
    assert f"`{INSTALL}`" in reqs[0]
    assert "torch==2.13.0" in reqs


def test_readme_links_stay_inside_the_repository():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    targets = re.findall(r"\]\(([^)#]+)", readme) + re.findall(r"`(\.\./[^`]*)`", readme)
    outside = [t for t in targets if not t.startswith(("http://", "https://"))
               and not os.path.realpath(os.path.join(REPO, t)).startswith(os.path.realpath(REPO) + os.sep)]
    assert not outside and "../shared" not in readme, outside
