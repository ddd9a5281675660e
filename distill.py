"""Distilled student: the baseline student loop plus a teacher signal, under the same 600 s budget.

    # cached soft KL at T=2, alpha 0.5 (the teacher's top-K rows from cache_logits.py)
    DISTILL_TEACHER=cache DISTILL_TARGET=soft DISTILL_ALPHA=0.5 DISTILL_TEMP=2 LOGIT_CACHE=caches/teacher_k32 \\
        torchrun --standalone --nproc_per_node=8 distill.py
    # cached hard: the teacher's top-1 as the label for a fraction alpha of the loss
    DISTILL_TEACHER=cache DISTILL_TARGET=hard DISTILL_ALPHA=0.1 LOGIT_CACHE=... python distill.py
    # online teacher (run inside each step, exact full-vocabulary KL)
    DISTILL_TEACHER=online TEACHER_PATH=checkpoints/teacher.pt python distill.py
    # the student's own EMA weights as the teacher, from 70% of the run to its end (record track)
    DISTILL_TEACHER=ema DISTILL_START_FRAC=0.7 DISTILL_EMA_DECAY=0.997 python distill.py

Every teacher can be scheduled: DISTILL_START_FRAC, DISTILL_RAMP_FRAC and DISTILL_STOP_FRAC of the run (the LR
warm-down's clock) say when its term is on and how its weight rises to DISTILL_ALPHA; off, the loss is the
baseline's.

loss = (1-a) CE(y) + a T^2 KL(p_T || q_T) (per-token mean), or (1-a) CE(y) + a CE(teacher top-1).
The study's own variables still work: DISTILL_CACHED=1|0 is DISTILL_TEACHER=cache|online, DISTILL_SOFT=1|0 is
DISTILL_TARGET=soft|hard. DISTILL_SEED_FAITHFUL=D1,D2,D3,D4 (any of them, or all) reproduces the study's
defects on purpose (ablation arms only; golf/seed_faithful.py).
"""
from golf import seed_faithful
from golf.choices import config_from_cli
from golf.dist import cleanup
from golf.errors import cli_main
from golf.export import finish_student
from golf.objectives import arm_line, build_objective
from golf.runner import dry_run, open_log, prepare_run, rerun_options
from golf.train import train


@cli_main
def main():
    cfg, args = config_from_cli(__doc__, extra=rerun_options)
    if args.dry_run:
        return dry_run(cfg)
    try:
        run = prepare_run(cfg, args.resume, args.restart)
        objective = build_objective(cfg, run)  # every refusal (cache, teacher) before the logs are opened
        teacher = objective.teacher
        open_log(run, "distill.py", append=run.resume is not None)
        for line in teacher.log_lines():
            run.log(line)
        run.log(arm_line(cfg, teacher))
        run.log.metrics(event="arm", teacher=teacher.name, track=teacher.track)
        if seed_faithful.defects(cfg):
            run.log(seed_faithful.describe(cfg))
        result = train(cfg, run.ctx, run.log, run.train_files, run.val_tokens, run.luts, objective=objective,
                       resume=run.resume,
                       extra_meta={"tokenizer_sha256": run.tokenizer_sha256, "teacher_sha256": teacher.sha256})
        finish_student(result.model, cfg, run.ctx, run.val_tokens, run.luts, run.log, __file__)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
