"""Teacher signals for the student loop: the cached teacher (rows looked up by the tokens' own stream
coordinates), the online teacher (run inside the step), and the distillation objective that mixes either
with cross-entropy. The study's defects D1 (KL divided by the sequence length) and D2 (rows read by a
per-rank cursor, independent of the tokens) exist here only as the explicit `DISTILL_SEED_FAITHFUL` arm."""
import numpy as np
import torch

from golf.cache import CacheReader
from golf.checkpoint import checkpoint_sha256, load_checkpoint, model_from_checkpoint
from golf.config import Config
from golf.data import Batch, Segment
from golf.dist import Ctx
from golf.errors import GolfError
from golf.losses import distill_loss


class CachedTeacher:
    """Fetches the cached teacher rows of a batch (called in the prefetch thread).

    Soft: {"idx": int16 [n, K], "vals": float16 [n, K]} (12.6 MB per 48x2048 micro-batch at K=32: half of
    int64/fp32; widened on the device). Hard: {"top1": int16 [n]} only.
    Seed-faithful: rows come from a cursor that starts at the cache's first row and advances by the batch
    size, identical on every rank and blind to the tokens, wrapping when it would run past the cache (D2)."""

    def __init__(self, reader: CacheReader, soft: bool, seed_faithful: bool = False):
        self.reader, self.soft, self.seed_faithful = reader, soft, seed_faithful
        self.total_rows = sum(reader.num_tokens)
        self.cursor = 0

    def reset(self):
        self.cursor = 0

    def _cursor_segments(self, n: int) -> list[Segment]:
        if self.cursor + n > self.total_rows:
            self.cursor = 0
        segments, start, left = [], self.cursor, n
        for shard, rows in enumerate(self.reader.num_tokens):
            if start < rows and left > 0:
                k = min(rows - start, left)
                segments.append((shard, start, k))
                left -= k
                start = 0
            else:
                start -= rows
        self.cursor += n
        return segments

    def fetch(self, batch: Batch) -> dict:
        n = batch.x.numel()
        segments = self._cursor_segments(n) if self.seed_faithful else batch.segments
        k = self.reader.k
        idx = np.empty((n, k), dtype=np.int16 if self.reader.spec.vocab_size <= 32768 else np.int32)
        vals = np.empty((n, k), dtype=np.float16)
        self.reader.gather(segments, idx, vals)
        if not self.soft:
            return {"top1": torch.from_numpy(np.ascontiguousarray(idx[:, 0]))}
        return {"idx": torch.from_numpy(idx), "vals": torch.from_numpy(vals)}


def load_teacher(path: str, ctx: Ctx, vocab_size: int, tokenizer_sha256: str | None = None):
    """(frozen teacher model on the device, its sha256, its config) from a checkpoint; refuses a teacher
    trained with another tokenizer."""
    ckpt = load_checkpoint(path)
    if tokenizer_sha256 and ckpt.get("tokenizer_sha256") not in (None, tokenizer_sha256):
        raise GolfError(f"teacher {path} was trained with another tokenizer (sha256 {ckpt['tokenizer_sha256'][:12]}, "
                        f"TOKENIZER_PATH has {tokenizer_sha256[:12]}); use the matching tokenizer and data")
    model = model_from_checkpoint(ckpt, f"teacher checkpoint {path}").to(ctx.device)
    if model.cfg.vocab_size != vocab_size:
        raise GolfError(f"teacher {path} has vocabulary {model.cfg.vocab_size}, the run has VOCAB_SIZE={vocab_size}; "
                        "use a teacher trained on this tokenizer")
    if ctx.autocast_dtype is not None:
        model.apply_dtype_policy(ctx.autocast_dtype)
    model.eval().requires_grad_(False)
    return model, checkpoint_sha256(path), model.cfg


class DistillObjective:
    """(1-a) CE + a * teacher term, with the teacher from the batch (cache) or run here (online)."""

    def __init__(self, cfg: Config, online_teacher=None):
        self.cfg = cfg
        self.mode = "soft" if cfg.distill_soft else "hard"
        self.parts = ("ce", "kl") if cfg.distill_soft else ("ce", "hard_ce")
        self.online = online_teacher
        # D1, on purpose, for the seed-faithful arm only: the per-token KL divided by the sequence length again.
        self.seed_faithful_seq_len = cfg.train_seq_len if cfg.distill_seed_faithful and cfg.distill_soft else None

    def __call__(self, model, batch: Batch):
        logits = model(batch.x)
        if self.online is not None:
            with torch.no_grad():
                teacher = {"teacher_logits": self.online(batch.x)}
        elif self.mode == "hard":
            teacher = {"teacher_top1": batch.teacher["top1"].long().view_as(batch.y)}
        else:
            k = batch.teacher["idx"].shape[-1]
            teacher = {"idx": batch.teacher["idx"].long().view(*batch.y.shape, k),
                       "vals": batch.teacher["vals"].float().view(*batch.y.shape, k)}
        return distill_loss(logits, batch.y, alpha=self.cfg.distill_alpha, mode=self.mode,
                            temperature=self.cfg.distill_temp, tail=self.cfg.distill_tail,
                            seed_faithful_seq_len=self.seed_faithful_seq_len, **teacher)


def arm_description(cfg: Config, teacher_sha: str, cache_dir: str) -> str:
    """The one line that states the arm at the start of a distillation run."""
    mode = ("cached" if cfg.distill_cached else "online") + "_" + ("soft" if cfg.distill_soft else "hard")
    line = (f"distill:arm mode:{mode} alpha:{cfg.distill_alpha} temp:{cfg.distill_temp} "
            f"tail:{cfg.distill_tail if cfg.distill_soft else '-'} teacher_sha256:{teacher_sha[:16]} "
            f"cache:{cache_dir or '-'} seed_faithful:{int(cfg.distill_seed_faithful)}")
    return line
