"""run.sh without training: --list and --dry-run name every arm of the study, and a real invocation skips a
finished arm, redoes an unfinished one, reports failures (a failed teacher fails the arms that need it) and
exits non-zero.

    python -m pytest tests/test_run_sh.py -q
"""
import os
import subprocess

import pytest

from helpers import REPO
from test_results import write_run

RUN_SH = os.path.join(REPO, "run.sh")
# The study's arms (seed-factsheet 8) and ours: the names run.sh must offer (demo: one seed each, the study preset
# has five; full and gpu1: the main setting's replicates at seeds 42 and 2024 too).
ONE_SEED = ["baseline", "hard-self-a0.1", "hard-self-a0.5", "hard-big-a0.1", "soft-a0.1", "soft-a0.3", "soft-a0.5",
            "online-a0.5", "faithful-soft-a0.1", "faithful-hard-self-a0.5", "faithful-online-self-a0.5",
            "soft-bucket-a0.5", "ngram3-a0.5", "ngram4-a0.5", "ngram3-memorised-a0.5", "ema-f0.5-a0.5",
            "ema-f0.7-a0.5", "sampled-n16-a0.5", "soft-bucket-k5-a0.5"]
REPLICATES = [f"{a}-s{seed}" for seed in (42, 2024) for a in ("baseline", "soft-a0.5", "soft-bucket-a0.5",
                                                               "ngram3-a0.5", "ema-f0.7-a0.5", "sampled-n16-a0.5")]
LONG = ["baseline-long", "soft-a0.5-long", "soft-bucket-a0.5-long", "sampled-n16-a0.5-long"]
ARMS = {"demo": ONE_SEED + LONG, "full": ONE_SEED + REPLICATES + LONG, "gpu1": ONE_SEED + REPLICATES + LONG}
STUDY_ARMS = ["baseline", "bucket", "bucket-half", "renorm", "sampled", "hard", "ngram3", "ngram5", "ngram5-half",
              "ngram3-a0.9", "ema", "online", "faithful"]


def _run(args, cwd, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("PRESET", "NPROC")}
    return subprocess.run([RUN_SH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_list_every_arm_with_its_command(tmp_path):
    for preset, launcher, budget in (("demo", "python ", "MAX_WALLCLOCK_SECONDS=25 "),
                                     ("full", "torchrun --standalone --nproc_per_node=8 ", "MAX_WALLCLOCK_SECONDS=600 "),
                                     ("gpu1", "python ", "MAX_WALLCLOCK_SECONDS=600 ")):
        out = _run(["--list", preset], tmp_path)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()[1:]
        names, commands = lines[0::2], [c.strip() for c in lines[1::2]]
        assert names == ARMS[preset]
        for name, cmd in zip(names, commands):
            script = "train_gpt.py" if name.startswith("baseline") else "distill.py"
            assert f"RUN_ID={name} LOG_DIR=runs/{preset}/{name} " in cmd and cmd.endswith(f"{launcher}{REPO}/{script}")
            assert (budget if not name.endswith("-long") else "MAX_WALLCLOCK_SECONDS=") in cmd
        cmds = dict(zip(names, commands))
        assert "DISTILL_TAIL=bucket" in cmds["soft-bucket-a0.5"]
        if preset != "demo":
            assert "SEED=42 " in cmds["soft-a0.5-s42"]
            assert "SEED=2024 " in cmds["soft-bucket-a0.5-s2024"] and "DISTILL_TAIL=bucket" in cmds["soft-bucket-a0.5-s2024"]
        assert "DISTILL_TEACHER=online " in cmds["online-a0.5"]
        assert "DISTILL_SEED_FAITHFUL=D1,D2,D4 " in cmds["faithful-soft-a0.1"]  # the study's cached arms as run
        assert "DISTILL_SEED_FAITHFUL=D3 " in cmds["faithful-online-self-a0.5"]  # its 8xH100 online runs
        assert "LOGIT_CACHE=runs/{0}/cache-self ".format(preset) in cmds["hard-self-a0.5"]
        # in-budget teachers name no file made before the run; a cache of another teacher's encoding names its own
        # folder and its teacher's checkpoint
        for name in ("ngram3-a0.5", "ema-f0.7-a0.5"):
            assert "LOGIT_CACHE" not in cmds[name] and "TEACHER_PATH" not in cmds[name]
        assert "DISTILL_TEACHER=ngram NGRAM_ORDER=4 " in cmds["ngram4-a0.5"]
        assert "NGRAM_LEAVE_ONE_OUT=0" in cmds["ngram3-memorised-a0.5"]
        assert "DISTILL_TEACHER=ema" in cmds["ema-f0.5-a0.5"] and "DISTILL_START_FRAC=0.5 " in cmds["ema-f0.5-a0.5"]
        assert (f"LOGIT_CACHE=runs/{preset}/cache-big-n16 TEACHER_PATH=runs/{preset}/teacher-big/teacher-big.pt "
                in cmds["sampled-n16-a0.5"])
    assert not os.listdir(tmp_path)


def test_dry_run_full_prints_every_step_and_runs_nothing(tmp_path):
    out = _run(["--dry-run", "full"], tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "prepare_data.py --check data/datasets/fineweb10B_sp1024" in text
    assert "PRESET=teacher ITERATIONS=50000" in text and text.count("train_teacher.py") == 2
    assert text.count("cache_logits.py") == 4 and "--k 32" in text  # big, self, big-n16, big-k5
    assert "--out runs/full/cache-big-n16 --encoding sampled-packed --draws 16" in text
    assert text.count("eval_bpb.py --teacher ngram:") == 2  # the n-gram models of the arms, scored alone
    for name in ARMS["full"]:
        assert f"# {name} (would run)" in text and f"RUN_ID={name} " in text
    assert "-m golf.results runs/full" in text and "--submission runs/full/submission" in text
    assert not os.listdir(tmp_path)
    # NPROC changes the launcher
    out = subprocess.run([RUN_SH, "--dry-run", "full", "baseline"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "NPROC": "4"})
    assert "--nproc_per_node=4 " in out.stdout and "train_teacher.py" not in out.stdout  # baseline needs no teacher


def test_dry_run_gpu1_is_the_study_on_one_gpu(tmp_path):
    """One process with the real student (8 accumulated micro-batches), the same 600 s budget, step-counted
    schedules over 8, teachers and caches a single GPU can make, every student capped at what the caches cover."""
    out = _run(["--dry-run", "gpu1"], tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "torchrun" not in text and "prepare_data.py --check data/datasets/fineweb10B_sp1024" in text
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    teachers = [c for c in commands if c.endswith("train_teacher.py")]
    assert len(teachers) == 2 and "PRESET=teacher ITERATIONS=5000 " in teachers[0]
    assert "PRESET=student ITERATIONS=3000 " in teachers[1] and all(c.startswith("PRESET=") for c in teachers)
    caches = [c for c in commands if "cache_logits.py" in c]
    assert len(caches) == 4 and all(c.endswith("--shards 10") for c in caches)
    assert sum(c.endswith("--k 32 --encoding packed --shards 10") for c in caches) == 2
    students = [c for c in commands if c.endswith(("train_gpt.py", "distill.py"))]
    assert len(students) == len(ARMS["gpu1"])
    for cmd in students:
        assert cmd.startswith("PRESET=student ITERATIONS=1250 WARMDOWN_ITERS=200 MUON_MOMENTUM_WARMUP_STEPS=60 "
                              "EMA_DECAY=0.976 DISTILL_EMA_DECAY=0.976 VAL_LOSS_EVERY=0 ")
        assert "MICRO_BATCHES" not in cmd  # the student preset's 8: accumulation 8 on one GPU
        assert " python " in cmd and "MAX_WALLCLOCK_SECONDS=" in cmd
    assert sum("MAX_WALLCLOCK_SECONDS=600 " in c for c in students) == len([a for a in ARMS["gpu1"] if not a.endswith("-long")])
    assert "-m golf.results runs/gpu1" in text
    assert not os.listdir(tmp_path)


def test_dry_run_study_every_arm_at_five_seeds_two_clocks_and_compute_matched(tmp_path):
    """The study preset: the demo's teachers and caches (runs/demo, built once), every arm at five seeds under a
    wall clock and at a fixed step count, seeds outermost, and the compute-matched baseline."""
    out = _run(["--dry-run", "study"], tmp_path)
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    teachers = [c for c in commands if c.endswith("train_teacher.py")]
    assert teachers == ["PRESET=demo-teacher ITERATIONS=560 WARMDOWN_ITERS=200 RUN_ID=teacher-big "
                        "LOG_DIR=runs/demo/teacher-big CHECKPOINT_PATH=runs/demo/teacher-big/teacher-big.pt "
                        f"python {REPO}/train_teacher.py"]  # the self teacher is not used
    caches = [c for c in commands if "cache_logits.py" in c]
    assert [c.split("--out ")[1] for c in caches] == ["runs/demo/cache-big --k 32",
                                                      "runs/demo/cache-big-n16 --encoding sampled-packed --draws 16",
                                                      "runs/demo/cache-big-half --k 32 --stride 128"]
    students = [c for c in commands if c.endswith(("train_gpt.py", "distill.py"))]
    names = [c.split("RUN_ID=")[1].split()[0] for c in students]
    seeds = (1337, 42, 2024, 7, 31)
    assert names == [f"{a}-{clock}-s{seed}" for seed in seeds for clock in ("wall", "steps") for a in STUDY_ARMS] + [
        f"baseline-cm-s{seed}" for seed in (1337, 42, 2024)] + [
        f"{a}-s{seed}" for seed in (1337, 42, 2024) for a in ("baseline-long", "ngram3-long", "ngram5-long", "ngram3-a0.9-long",
                                                   "ngram3-cm", "ngram3-a0.9-cm")]
    for name, cmd in zip(names, students):
        assert f"LOG_DIR=runs/study/{name} " in cmd and cmd.startswith("PRESET=demo-student WARMDOWN_ITERS=60 ")
        seed = name.rsplit("-s", 1)[1]
        clock = ("ITERATIONS=120 MAX_WALLCLOCK_SECONDS=0 " if "-steps-" in name else
                 "ITERATIONS=100000 MAX_WALLCLOCK_SECONDS=420 " if "-cm-" in name else
                 "ITERATIONS=100000 MAX_WALLCLOCK_SECONDS=80 " if "-long-" in name else
                 "ITERATIONS=100000 MAX_WALLCLOCK_SECONDS=20 ")
        assert f"{clock}SEED={seed} " in cmd
    by_name = dict(zip(names, students))
    assert "LOGIT_CACHE=runs/demo/cache-big-half " in by_name["bucket-half-wall-s7"]
    assert "DISTILL_SEED_FAITHFUL=D1,D2,D4 " in by_name["faithful-steps-s31"]
    assert "DISTILL_TEACHER=online TEACHER_PATH=runs/demo/teacher-big/teacher-big.pt " in by_name["online-wall-s42"]
    for name in ("ngram5-wall-s7", "ngram5-half-steps-s42", "ngram5-long-s2024", "ngram3-cm-s1337"):
        assert f"DISTILL_TEACHER=ngram NGRAM_ORDER={name[5]} " in by_name[name] and "DISTILL_TEMP=1 " in by_name[name]
    assert "DISTILL_STOP_FRAC=0.5" in by_name["ngram5-half-steps-s42"] and "STOP_FRAC" not in by_name["ngram5-wall-s7"]
    for name in ("ngram3-a0.9-wall-s31", "ngram3-a0.9-long-s42", "ngram3-a0.9-cm-s2024"):
        assert "DISTILL_ALPHA=0.9 DISTILL_TEACHER=ngram NGRAM_ORDER=3 " in by_name[name]
    assert "-m golf.results runs/study" in out.stdout
    assert not os.listdir(tmp_path)


def test_a_teacher_without_settings_for_the_preset_is_refused(tmp_path):
    """The teacher declarations are per preset: a preset a teacher does not name is a clear error."""
    script = tmp_path / "run.sh"
    with open(RUN_SH) as f:
        text = f.read()
    old = '              gpu1   "PRESET=student ITERATIONS=3000'
    assert text.count(old) == 1
    script.write_text(text.replace(old, '              full2  "PRESET=student ITERATIONS=3000'))
    script.chmod(0o755)
    out = subprocess.run([str(script), "--list", "gpu1"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "teacher self: no settings for preset gpu1" in out.stderr


def test_unknown_arm_is_refused(tmp_path):
    out = _run(["demo", "no-such-arm"], tmp_path)
    assert out.returncode == 2 and "unknown arm 'no-such-arm'" in out.stderr


@pytest.mark.slow
def test_skip_finished_redo_unfinished_report_failures(tmp_path):
    """baseline is finished (skipped); baseline-long is half done (redone: it fails at once on the empty data
    folder); soft-a0.5 needs the big teacher, which fails the same way, so its cache and soft-a0.5 are not run.
    The results are still written, the dump of the best arm fails (a synthetic run has no checkpoint), and the
    exit status says something failed."""
    os.makedirs(tmp_path / "data" / "datasets" / "demo_sp1024")  # present, so run.sh does not build it
    root = str(tmp_path / "runs" / "demo")
    write_run(root, "baseline")
    write_run(root, "baseline-long", wall=80.0, finished=False)
    dry = _run(["--dry-run", "demo", "baseline", "baseline-long"], tmp_path)
    assert "# baseline (done: would skip)" in dry.stdout and "# baseline-long (would run)" in dry.stdout
    out = _run(["demo", "baseline", "baseline-long", "soft-a0.5"], tmp_path, timeout=300)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "=== baseline: done, skipped" in out.stdout
    assert not os.path.exists(os.path.join(root, "baseline", "command.txt"))
    with open(os.path.join(root, "baseline-long", "command.txt")) as f:
        assert "RUN_ID=baseline-long " in f.read()
    with open(os.path.join(root, "baseline-long", "console.txt")) as f:
        assert "error:" in f.read()
    assert "=== cache-big: not run, teacher-big failed" in out.stdout
    assert "=== soft-a0.5: not run, cache-big failed" in out.stdout
    failed = out.stdout.split("=== FAILED: ")[1].split(";")[0].split()
    assert failed == ["teacher-big", "cache-big", "baseline-long", "soft-a0.5", "submission"]  # no checkpoint
    assert os.path.isfile(os.path.join(root, "RESULTS.md"))  # baseline's result still made the table


def test_an_interrupted_study_prints_its_summary_and_how_to_resume(tiny_dataset, tmp_path):
    """SIGTERM to run.sh while an arm trains: the arm gets it and prints its one line, then run.sh its summary
    (here: the teacher, the first step, interrupted), the command that resumes, and exits 143."""
    import shutil
    import signal

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.data_path, data / "datasets" / "demo_sp1024")
    (data / "tokenizers").mkdir()
    shutil.copy(tiny_dataset.tokenizer_path, data / "tokenizers" / "demo_1024_bpe.model")
    env = {k: v for k, v in os.environ.items() if k not in ("PRESET", "NPROC")}
    # the test preset's model on the tiny data, so the arm reaches its steps quickly
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", NUM_LAYERS="1", MODEL_DIM="64", TRAIN_SEQ_LEN="64",
               TRAIN_BATCH_TOKENS="1024", VAL_MAX_TOKENS="512", WARMUP_STEPS="0")
    p = subprocess.Popen([RUN_SH, "demo", "baseline", "soft-bucket-a0.5", "hard-self-a0.1"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("step:2/"):  # the big teacher is training
            p.send_signal(signal.SIGTERM)
            break
    out = "".join(seen) + p.communicate(timeout=120)[0]
    assert p.returncode == 143, out[-3000:]
    assert "Traceback" not in out
    assert "interrupted (SIGTERM) at step " in out and "nothing was kept: start again with: " in out
    tail = out.splitlines()
    assert tail[-1] == ("=== interrupted in teacher-big; resume with: ./run.sh demo baseline soft-bucket-a0.5 "
                        "hard-self-a0.1 (finished runs are skipped, an interrupted teacher continues from its last "
                        "checkpoint)"), tail[-6:]
    assert any(line.split()[-2:] == ["teacher-big", "(SIGTERM)"] and "INTERRUPTED" in line for line in tail), tail[-6:]


def test_a_starved_run_is_named_on_the_last_line_never_dumped_and_fails_the_study(tmp_path):
    """runs/demo holds a baseline that got 4 steps in its 25 s (the best score) beside arms with 44 and 46: the
    study's results and records folder leave it out (the dump names soft-a0.5), the summary marks it, and the last
    line names it to redo, exit 1."""
    from test_results import BIG

    os.makedirs(tmp_path / "data" / "datasets" / "demo_sp1024")  # present, so run.sh does not build it
    root = str(tmp_path / "runs" / "demo")
    write_run(root, "baseline", wall=25.0, steps=4, sliding=2.40)
    write_run(root, "soft-a0.5", "distill.py", wall=25.0, steps=44, sliding=2.45, distill_alpha=0.5, **BIG)
    write_run(root, "hard-big-a0.1", "distill.py", wall=25.0, steps=46, sliding=2.50, distill_alpha=0.1,
              **{**BIG, "distill_target": "hard"})
    write_run(root, "baseline-long", wall=80.0, steps=150, sliding=2.2)  # alone at its clock: not judged
    out = _run(["demo", "baseline-long"], tmp_path, timeout=300)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "=== baseline-long: done, skipped" in out.stdout
    assert f"quantize.py {root.removeprefix(str(tmp_path) + '/')}/soft-a0.5/soft-a0.5.pt --submission" in out.stdout
    lines = out.stdout.splitlines()
    assert any(line.split()[1:3] == ["STARVED", "baseline"] for line in lines), lines[-8:]
    assert lines[-1].startswith("=== FAILED: submission; STARVED: baseline; rerun ./run.sh demo"), lines[-1]
    assert "- baseline: 4 steps, under 0.25 x the median" in open(os.path.join(root, "RESULTS.md")).read()
