"""Teacher: the student's training loop with a bigger configuration, resumable, no artifact cap.

    PRESET=teacher torchrun --standalone --nproc_per_node=8 train_teacher.py      # the study's 105.5M teacher
    PRESET=demo-teacher python train_teacher.py                                   # CPU demo
    PRESET=demo-teacher python train_teacher.py --resume                          # continue a killed run
    PRESET=demo-teacher python train_teacher.py --restart                         # or start it over

With CHECKPOINT_EVERY=N a resumable checkpoint (model, optimizer, EMA, step, schedule, loader position, RNG)
is written atomically every N steps beside CHECKPOINT_PATH as `<name>.resume.pt`; `--resume` continues
exactly from it. The final checkpoint holds the EMA weights, the config and the tokenizer fingerprint, with a
`.sha256` sidecar; it is then quantized and scored like a student (for reference; no size cap applies).
"""
from golf.choices import config_from_cli
from golf.dist import cleanup
from golf.errors import cli_main
from golf.export import finish_student
from golf.runner import dry_run, rerun_options, start_run
from golf.train import train


@cli_main
def main():
    cfg, args = config_from_cli(__doc__, extra=rerun_options)
    if args.dry_run:
        return dry_run(cfg)
    try:
        run = start_run(cfg, "train_teacher.py", args)
        result = train(cfg, run.ctx, run.log, run.train_files, run.val_tokens, run.luts, resume=run.resume,
                       extra_meta={"tokenizer_sha256": run.tokenizer_sha256, "role": "teacher"})
        finish_student(result.model, cfg, run.ctx, run.val_tokens, run.luts, run.log, __file__)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
