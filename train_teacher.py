"""Teacher: the student's training loop with a bigger configuration, resumable, no artifact cap.

    PRESET=teacher torchrun --standalone --nproc_per_node=8 train_teacher.py      # the study's 105.5M teacher
    PRESET=demo-teacher python train_teacher.py                                   # CPU demo
    PRESET=demo-teacher python train_teacher.py --resume                          # continue a killed run

With CHECKPOINT_EVERY=N a resumable checkpoint (model, optimizer, EMA, step, schedule, loader position, RNG)
is written atomically every N steps beside CHECKPOINT_PATH as `<name>.resume.pt`; `--resume` continues
exactly from it. The final checkpoint holds the EMA weights, the config and the tokenizer fingerprint, with a
`.sha256` sidecar; it is then quantized and scored like a student (for reference; no size cap applies).
"""
import os
from dataclasses import fields

from golf.checkpoint import load_checkpoint
from golf.choices import config_from_cli
from golf.config import Config
from golf.dist import cleanup
from golf.errors import GolfError, cli_main
from golf.export import finish_student
from golf.runner import dry_run, open_log, prepare_run
from golf.train import resume_checkpoint_path, train


def _options(p):
    p.add_argument("--resume", action="store_true", help="continue from <CHECKPOINT_PATH>.resume.pt")


# What must not change across a resume: the model (every field of its group) and what decides the batches.
_SAME_ON_RESUME = [f.name for f in fields(Config) if f.metadata["group"] == "model"] + [
    "vocab_size", "train_batch_tokens", "train_seq_len", "seed", "data_path"]


def _resume_state(cfg, run) -> dict:
    """The resumable checkpoint of this run, refused unless it was written by the same run settings."""
    path = resume_checkpoint_path(cfg)
    if not os.path.isfile(path):
        raise GolfError(f"--resume: no resumable checkpoint {path}; it is written every CHECKPOINT_EVERY "
                        "steps (set it > 0), or start without --resume")
    resume = load_checkpoint(path)
    if resume.get("kind") != "resume":
        raise GolfError(f"{path} is not a resumable checkpoint (kind {resume.get('kind')!r}); pass the run's RUN_ID "
                        "or CHECKPOINT_PATH, or start without --resume")
    if resume.get("tokenizer_sha256") != run.tokenizer_sha256:
        raise GolfError(f"{path} was trained with another tokenizer; resume with the same TOKENIZER_PATH")
    mismatch = [f"{k.upper()}={resume['config'].get(k)!r} there, {getattr(cfg, k)!r} here" for k in _SAME_ON_RESUME
                if resume["config"].get(k) != getattr(cfg, k)]
    if mismatch:
        raise GolfError(f"{path} was written with another configuration ({'; '.join(mismatch)}); "
                        "resume with the same settings, or start a new RUN_ID without --resume")
    return resume


@cli_main
def main():
    cfg, args = config_from_cli(__doc__, extra=_options)
    if args.dry_run:
        return dry_run(cfg)
    if args.resume and not (cfg.run_id or cfg.checkpoint_path):
        raise GolfError("--resume needs the run's RUN_ID or CHECKPOINT_PATH to find its resumable checkpoint")
    try:
        run = prepare_run(cfg)
        resume = _resume_state(cfg, run) if args.resume else None  # refused before the logs are opened
        open_log(run, "train_teacher.py", append=args.resume)
        result = train(cfg, run.ctx, run.log, run.train_files, run.val_tokens, run.luts, resume=resume,
                       extra_meta={"tokenizer_sha256": run.tokenizer_sha256, "role": "teacher"})
        finish_student(result.model, cfg, run.ctx, run.val_tokens, run.luts, run.log, __file__)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
