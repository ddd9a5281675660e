"""Distilled student: the baseline student loop plus a teacher signal, under the same 600 s budget.

    # cached soft KL at T=2, alpha 0.5 (the teacher's top-K rows from cache_logits.py)
    DISTILL_CACHED=1 DISTILL_SOFT=1 DISTILL_ALPHA=0.5 DISTILL_TEMP=2 LOGIT_CACHE=caches/teacher_k32 \
        torchrun --standalone --nproc_per_node=8 distill.py
    # cached hard: the teacher's top-1 as the label for a fraction alpha of the loss
    DISTILL_CACHED=1 DISTILL_SOFT=0 DISTILL_ALPHA=0.1 LOGIT_CACHE=... python distill.py
    # online teacher (run inside each step, exact full-vocabulary KL)
    DISTILL_CACHED=0 TEACHER_PATH=checkpoints/teacher.pt python distill.py

loss = (1-a) CE(y) + a T^2 KL(p_T || q_T) (per-token mean), or (1-a) CE(y) + a CE(teacher top-1).
DISTILL_SEED_FAITHFUL=1 reproduces the study's defects D1 and D2 on purpose (ablation arm only).
"""
import torch

from golf.cache import CacheReader
from golf.checkpoint import checkpoint_sha256
from golf.config import config_from_cli
from golf.dist import cleanup
from golf.distill import CachedTeacher, DistillObjective, arm_description, load_teacher
from golf.errors import GolfError, cli_main
from golf.export import finish_student
from golf.runner import dry_run, open_log, prepare_run
from golf.train import grad_accum_steps, train


def _cached_teacher(cfg, run):
    """The cache reader, checked against the shards, vocabulary, teacher and the run's length."""
    if not cfg.logit_cache:
        raise GolfError("DISTILL_CACHED=1 needs LOGIT_CACHE=DIR (a cache from cache_logits.py), or set DISTILL_CACHED=0 "
                        "with TEACHER_PATH for an online teacher")
    teacher_sha = checkpoint_sha256(cfg.teacher_path) if cfg.teacher_path else None
    reader = CacheReader(cfg.logit_cache, run.train_files, vocab_size=cfg.vocab_size, teacher_sha256=teacher_sha)
    cached = reader.num_shards
    if cfg.restrict_to_cache:
        run.train_files = run.train_files[:cached]
    elif cached < len(run.train_files) and not cfg.distill_seed_faithful:
        cached_tokens = sum(reader.num_tokens)
        # Every rank's micro-batch reads one token past its inputs (the last target).
        w = run.ctx.world_size
        per_step = cfg.train_batch_tokens + grad_accum_steps(cfg, w) * w
        need = max(cfg.iterations, cfg.warmup_steps) * per_step
        if need > cached_tokens:
            raise GolfError(
                f"ITERATIONS={cfg.iterations} would read {need} train tokens but {cfg.logit_cache} caches only the first "
                f"{cached} of {len(run.train_files)} shards ({cached_tokens} tokens, {cached_tokens // per_step} steps); "
                f"set ITERATIONS<={cached_tokens // per_step}, cache more shards, or pass --restrict-to-cache")
    return CachedTeacher(reader, soft=cfg.distill_soft, seed_faithful=cfg.distill_seed_faithful), reader.spec.teacher_sha256


@cli_main
def main():
    cfg, args = config_from_cli(__doc__)
    if args.dry_run:
        return dry_run(cfg)
    try:
        # Every refusal (data, tokenizer, cache, teacher) comes before the logs are opened.
        run = prepare_run(cfg)
        source, online = None, None
        if cfg.distill_cached:
            source, teacher_sha = _cached_teacher(cfg, run)
        else:
            if not cfg.teacher_path:
                raise GolfError("DISTILL_CACHED=0 (online teacher) needs TEACHER_PATH=CKPT")
            teacher, teacher_sha, tcfg = load_teacher(cfg.teacher_path, run.ctx, cfg.vocab_size, run.tokenizer_sha256)
        open_log(run, "distill.py")
        if cfg.distill_cached and cfg.restrict_to_cache:
            run.log(f"distill:restrict_to_cache train_shards:{len(run.train_files)}")
        if not cfg.distill_cached:
            run.log(f"distill:teacher loaded, {teacher.num_params()} params, {tcfg.num_layers}x{tcfg.model_dim}")
            use_compile = cfg.compile == "1" or (cfg.compile == "auto" and run.ctx.device.type == "cuda")
            online = torch.compile(teacher, dynamic=False) if use_compile else teacher
        run.log(arm_description(cfg, teacher_sha, cfg.logit_cache if cfg.distill_cached else cfg.teacher_path))
        if cfg.distill_seed_faithful:
            run.log("distill:SEED_FAITHFUL reproducing the study's defects on purpose: "
                    + ("KL divided by TRAIN_SEQ_LEN (D1), " if cfg.distill_soft else "")
                    + "cache rows read by a per-rank cursor independent of the tokens (D2)")
        result = train(cfg, run.ctx, run.log, run.train_files, run.val_tokens, run.luts,
                       objective=DistillObjective(cfg, online), teacher_source=source,
                       extra_meta={"tokenizer_sha256": run.tokenizer_sha256, "teacher_sha256": teacher_sha})
        finish_student(result.model, cfg, run.ctx, run.val_tokens, run.luts, run.log, __file__)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
