"""Baseline student: hard-label cross-entropy under the challenge's 600 s budget, then the int6 artifact and
its roundtrip and sliding-window scores.

    python train_gpt.py --help
    PRESET=demo-student python train_gpt.py                       # CPU demo (after prepare_data.py --demo)
    torchrun --standalone --nproc_per_node=8 train_gpt.py         # the study's student on 8xH100 + FineWeb
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
        run = start_run(cfg, "train_gpt.py", args)
        result = train(cfg, run.ctx, run.log, run.train_files, run.val_tokens, run.luts, resume=run.resume,
                       extra_meta={"tokenizer_sha256": run.tokenizer_sha256})
        finish_student(result.model, cfg, run.ctx, run.val_tokens, run.luts, run.log, __file__)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
