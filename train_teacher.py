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

from golf.checkpoint import load_checkpoint
from golf.config import config_from_cli
from golf.dist import cleanup
from golf.errors import GolfError, cli_main
from golf.export import finish_student
from golf.runner import dry_run, start_run
from golf.train import resume_checkpoint_path, train


def _options(p):
    p.add_argument("--resume", action="store_true", help="continue from <CHECKPOINT_PATH>.resume.pt")


@cli_main
def main():
    cfg, args = config_from_cli(__doc__, extra=_options)
    if args.dry_run:
        return dry_run(cfg)
    if args.resume and not (cfg.run_id or cfg.checkpoint_path):
        raise GolfError("--resume needs the run's RUN_ID or CHECKPOINT_PATH to find its resumable checkpoint")
    run = start_run(cfg, "train_teacher.py")
    try:
        resume = None
        if args.resume:
            path = resume_checkpoint_path(cfg)
            if not os.path.isfile(path):
                raise GolfError(f"--resume: no resumable checkpoint {path}; it is written every CHECKPOINT_EVERY "
                                "steps (set it > 0), or start without --resume")
            resume = load_checkpoint(path)
            if resume.get("kind") != "resume":
                raise GolfError(f"{path} is not a resumable checkpoint")
            if resume.get("tokenizer_sha256") != run.tokenizer_sha256:
                raise GolfError(f"{path} was trained with another tokenizer; resume with the same TOKENIZER_PATH")
            mismatch = [k for k in ("num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "vocab_size",
                                    "train_batch_tokens", "train_seq_len", "seed", "data_path")
                        if resume["config"].get(k) != getattr(cfg, k)]
            if mismatch:
                raise GolfError(f"{path} was written with another configuration ({', '.join(mismatch)} differ); "
                                "resume with the same settings")
        result = train(cfg, run.ctx, run.log, run.train_files, run.val_tokens, run.luts, resume=resume,
                       extra_meta={"tokenizer_sha256": run.tokenizer_sha256, "role": "teacher"})
        finish_student(result.model, cfg, run.ctx, run.val_tokens, run.luts, run.log, __file__)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
