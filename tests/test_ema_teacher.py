"""DISTILL_TEACHER=ema (golf.teachers.EmaTeacher): the teacher is the EMA of the student's weights (checked against a
float64 EMA of the logged weights), takes no gradient, feeds both targets; switched on at DISTILL_START_FRAC, the
run is bitwise the baseline's before it and differs from it on; a resumed run continues exactly (the EMA rides in
the resumable checkpoint); bad settings are refused.

Run: python -m pytest tests/test_ema_teacher.py -q
"""
import copy
import re
import types

import pytest
import torch

from golf.checkpoint import load_checkpoint, resume_checkpoint_path
from golf.config import resolve_config
from golf.dist import Ctx
from golf.errors import GolfError
from golf.objectives import CrossEntropyObjective, build_objective
from golf.teachers import EmaTeacher
from golf.train import TrainState, train
from helpers import cpu_ctx, logger, make_config, run_inputs

DECAY = 0.8


def _objective(cfg):
    files, _, _ = run_inputs(cfg)
    return build_objective(cfg, types.SimpleNamespace(train_files=files, ctx=cpu_ctx(), tokenizer_sha256=None)), files


@pytest.mark.parametrize("target", ["soft", "hard"])
def test_the_teacher_is_the_ema_of_the_logged_weights_and_takes_no_gradient(tiny_dataset, tmp_path, target):
    torch.set_num_threads(1)
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="ema", distill_ema_decay=DECAY, distill_target=target,
                      distill_alpha=0.5, warmup_steps=0)
    objective, files = _objective(cfg)
    state = TrainState(cfg, cpu_ctx(), files, objective)
    teacher = objective.teacher
    assert isinstance(teacher, EmaTeacher) and teacher.where == "step" and teacher.track == "record"
    average = {k: p.detach().double().clone() for k, p in state.model.named_parameters()}  # from the initial weights
    pipeline = state.pipeline()
    for _ in range(4):
        state.advance(pipeline, 1.0, 0.0)
        for k, p in state.model.named_parameters():  # the logged weights, averaged in float64
            average[k].mul_(DECAY).add_(p.detach().double(), alpha=1 - DECAY)
        assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    batch = pipeline.next()
    pipeline.close()

    for (k, t), (_, live) in zip(teacher.model.named_parameters(), state.model.named_parameters()):
        torch.testing.assert_close(t.double(), average[k], rtol=0, atol=1e-6, msg=k)
    reference = copy.deepcopy(state.model).eval()
    reference.load_state_dict({k: v.float() for k, v in average.items()}, strict=False)
    with torch.no_grad():
        live_logits, reference_logits = state.model.eval()(batch.x), reference(batch.x)
    signal = teacher.fetch(batch)
    assert not signal.logits.requires_grad
    torch.testing.assert_close(signal.logits, reference_logits, rtol=1e-4, atol=1e-4)
    assert (signal.logits - live_logits).abs().max() > 1e-2  # not the live weights

    # Its logits reach the loss as any online teacher's: the student's gradient differs from cross-entropy's.
    state.model.train()
    loss, parts = objective(state.model, batch, 0.0)
    z, tz = state.model(batch.x).double().flatten(0, 1), reference_logits.double().flatten(0, 1)
    y = batch.y.flatten()
    ce = torch.nn.functional.cross_entropy(z, y)
    if target == "soft":
        logp, logq = torch.log_softmax(tz / 2, -1), torch.log_softmax(z / 2, -1)
        ref = 0.5 * ce + 0.5 * 4 * (logp.exp() * (logp - logq)).sum(-1).mean()
    else:
        ref = 0.5 * ce + 0.5 * torch.nn.functional.cross_entropy(z, tz.argmax(-1))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-4)


def test_under_the_bf16_dtype_policy_the_average_stays_fp32(tiny_dataset, tmp_path):
    """The copy has the student's storage dtypes (bf16 embeddings); its bf16 tensors are rounded copies of an fp32
    average, its fp32 ones are the average itself."""
    torch.set_num_threads(1)
    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="ema", distill_ema_decay=DECAY, warmup_steps=0,
                      dtype="bf16")
    objective, files = _objective(cfg)
    state = TrainState(cfg, Ctx(0, 0, 1, torch.device("cpu"), torch.bfloat16), files, objective)
    teacher = objective.teacher
    dtypes = {k: p.dtype for k, p in teacher.model.named_parameters()}
    assert dtypes == {k: p.dtype for k, p in state.model.named_parameters()} and torch.bfloat16 in dtypes.values()
    average = {k: p.detach().double().clone() for k, p in state.model.named_parameters()}
    pipeline = state.pipeline()
    for _ in range(3):
        state.advance(pipeline, 1.0, 0.0)
        for k, p in state.model.named_parameters():
            average[k].mul_(DECAY).add_(p.detach().double(), alpha=1 - DECAY)
    pipeline.close()
    kept = dict(zip((k for k, _ in teacher.model.named_parameters()), teacher.average))
    for k, p in teacher.model.named_parameters():
        assert kept[k].dtype == torch.float32
        torch.testing.assert_close(kept[k].double(), average[k], rtol=0, atol=1e-6, msg=k)
        if p.dtype == torch.float32:
            assert kept[k].data_ptr() == p.data_ptr(), k  # updated in place: no copy
        else:
            assert torch.equal(p, kept[k].to(p.dtype)), k


def _run(cfg, objective, resume=None):
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    files, val, luts = run_inputs(cfg)
    result = train(cfg, cpu_ctx(), logger(cfg), files, val, luts, objective=objective, resume=resume)
    with open(f"{cfg.log_dir}/{cfg.run_id}.txt") as f:
        lines = {int(m.group(1)): (m.group(2), m.group(3)) for m in
                 re.finditer(r"^step:(\d+)/\d+ train_loss:(\S+) ce:(\S+)", f.read(), re.M)}
    return result, lines


# 7 steps, the teacher on from 0.5 of them: off in steps 1-4 (progress 0 to 3/7), on in 5-7; a resumable
# checkpoint after step 4 (the only one: 7 is not a multiple of 4).
RUN = dict(iterations=7, warmup_steps=2, checkpoint_every=4, train_log_every=1, warmdown_iters=4)


def test_switched_on_at_the_start_fraction_and_not_before(tiny_dataset, tmp_path):
    base_cfg = make_config(tiny_dataset, str(tmp_path / "base"), **RUN)
    base, base_lines = _run(base_cfg, CrossEntropyObjective())
    cfg = make_config(tiny_dataset, str(tmp_path / "ema"), **RUN, distill_teacher="ema", distill_start_frac=0.5,
                      distill_ema_decay=DECAY)
    ema, lines = _run(cfg, _objective(cfg)[0])
    # Before the start: the baseline's losses, and after step 4 its weights, bitwise.
    assert [lines[s] for s in range(1, 5)] == [base_lines[s] for s in range(1, 5)]
    at4, base_at4 = (load_checkpoint(resume_checkpoint_path(c))["model"] for c in (cfg, base_cfg))
    assert all(torch.equal(at4[k], base_at4[k]) for k in at4)
    # From it on: a different total loss (the teacher term) and different weights at the end.
    assert lines[5][1] == base_lines[5][1]  # step 5 starts from the same weights: the same cross-entropy
    assert all(lines[s][0] != base_lines[s][0] for s in (5, 6, 7))
    assert any(not torch.equal(a, b) for a, b in zip(ema.model.state_dict().values(), base.model.state_dict().values()))
    with open(f"{cfg.log_dir}/{cfg.run_id}.txt") as f:
        text = f.read()
    assert re.findall(r"^distill:on step:\d+ frac:\S+$", text, re.M) == ["distill:on step:5 frac:0.5714"]
    assert "distill:off" not in text


def test_a_resumed_run_continues_exactly(tiny_dataset, tmp_path):
    cfg = make_config(tiny_dataset, str(tmp_path / "full"), **RUN, distill_teacher="ema", distill_start_frac=0.5,
                      distill_ema_decay=DECAY)
    full, full_lines = _run(cfg, _objective(cfg)[0])
    saved = load_checkpoint(resume_checkpoint_path(cfg))
    assert saved["step"] == 4 and saved["teacher"]["teacher"] == "ema"
    again = make_config(tiny_dataset, str(tmp_path / "again"), **RUN, distill_teacher="ema", distill_start_frac=0.5,
                        distill_ema_decay=DECAY)
    resumed, lines = _run(again, _objective(again)[0], resume=saved)
    assert [lines[s] for s in (5, 6, 7)] == [full_lines[s] for s in (5, 6, 7)]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()))
    # Without the teacher's EMA the run could not continue exactly: refused.
    with pytest.raises(GolfError, match="carries no EMA teacher"):
        _run(again, _objective(again)[0], resume={**saved, "teacher": None})


@pytest.mark.parametrize("env, needle", [
    ({"DISTILL_EMA_DECAY": "1"}, "DISTILL_EMA_DECAY=1.0"),
    ({"DISTILL_EMA_DECAY": "-0.5"}, "DISTILL_EMA_DECAY=-0.5"),
    ({"DISTILL_START_FRAC": "1.2"}, "DISTILL_START_FRAC=1.2"),
    ({"DISTILL_SEED_FAITHFUL": "1"}, "DISTILL_TEACHER=ema has none"),
])
def test_bad_ema_settings_are_refused(env, needle):
    with pytest.raises(GolfError, match=re.escape(needle)):
        resolve_config(None, {"DISTILL_TEACHER": "ema", **env})


def test_the_arm_line_states_the_teacher_and_schedule(tiny_dataset, tmp_path):
    from golf.objectives import arm_line

    cfg = make_config(tiny_dataset, str(tmp_path), distill_teacher="ema", distill_start_frac=0.7, distill_ema_decay=0.99)
    line = arm_line(cfg, _objective(cfg)[0].teacher)
    assert line.startswith("distill:arm teacher:ema target:soft ") and " track:record " in line
    assert " source:student-ema:0.99 " in line and line.endswith(" start:0.7 ramp:0 stop:1")
