"""Fidelity of sparse distillation targets: how far each one's gradient is from exact full-vocabulary KD's.

    python bench/kd_fidelity.py --teacher TEACHER.pt --student STUDENT.pt [--batches 4] [--repeats 16]
        [--ks 8,16,32] [--draws 8,16,32,50] [--threads 2] [--data-path DIR] [other settings as the scripts']

On held-out batches (the val shards, one training batch of TRAIN_BATCH_TOKENS each), with the teacher's logits
and a partly trained student: the gradient of each target's distillation term (golf.losses.distill_terms, the
code training runs) with respect to the student's parameters, against that of the exact soft KL to the
teacher's full softmax(t / T). Targets:
  topk-{renorm,bucket}-kK-{fp16,packed}: the teacher's top-K at T = 1 through the cache codec's round trip
      (golf/codecs.py); bytes per token = the codec's row_bytes(K).
  sampled-nN: N draws per position from softmax(t / T) (golf.losses.sample_targets, as DISTILL_DRAWS draws);
      bytes per token = that of the cheaper of the two draw codecs (golf/codecs.py) for these draws: sampled
      (ragged: 1 + 3 B per distinct id, measured here) or sampled-packed (5 * ceil(N / 4) B, vocab <= 1024),
      each also given (`sampled_bytes:`, `sampled_packed_bytes:`).
Per target, one line:
  kd_fidelity target:NAME bytes_per_token:B angle_deg:A norm_ratio:R mixed_angle_deg:M
      [mean_angle_deg:X distinct:D sampled_bytes:RB sampled_packed_bytes:PB]
angle_deg, norm_ratio: angle and |g| / |g_full| of the distillation term's gradient (mean over batches; for
sampled, also over --repeats independent draws); mixed_angle_deg: the same angle for the loss training uses,
(1-a) CE + a T^2 term (a = DISTILL_ALPHA), whose CE gradient all targets share. mean_angle_deg (sampled only):
the angle of the gradient averaged over the --repeats draws, i.e. what is left of its bias: it goes to ~0 as
the repeats grow if the targets are unbiased, while a top-K target's angle is all bias.
Everything runs in float32 without autocast: this measures the targets, not bf16 rounding. Without --teacher
or --student a random model of --teacher-preset or the preset stands in (for smoke tests only).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import math

import numpy as np
import torch

from _common import bench_config, make_teacher, perturbed_model, set_threads, teacher_config
from golf.checkpoint import load_checkpoint, model_from_checkpoint
from golf.codecs import CODECS
from golf.dist import Ctx
from golf.errors import GolfError, cli_main
from golf.eval import load_val_tokens
from golf.losses import distill_terms, sample_targets



def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def extra_args(p):
    p.add_argument("--teacher", default="", help="teacher checkpoint (default: a random --teacher-preset model)")
    p.add_argument("--student", default="", help="student checkpoint (default: a random model of the preset)")
    p.add_argument("--teacher-preset", default="demo-teacher", help="model of the random teacher")
    p.add_argument("--batches", type=int, default=4, help="held-out batches of TRAIN_BATCH_TOKENS")
    p.add_argument("--repeats", type=int, default=16, help="independent draws per sampled target and batch")
    p.add_argument("--ks", default="8,16,32", help="top-K sizes")
    p.add_argument("--draws", default="8,16,32,50", help="sampled draws per position")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")


def codec_round_trip(name: str, idx: torch.Tensor, vals: torch.Tensor):
    """(ids, log-probs) as a cache of codec `name` stores and returns them."""
    codec, k = CODECS[name], idx.shape[1]
    arrays = codec.encode(idx.numpy().astype(np.uint16), vals.numpy())
    arrays = [np.asarray(a, dtype=dt) for a, (_, dt, _) in zip(arrays, codec.files("", k))]
    out_idx, out_vals = np.empty((len(idx), k), np.int64), np.empty((len(idx), k), np.float32)
    codec.decode(arrays, k, out_idx, out_vals)
    return torch.from_numpy(out_idx), torch.from_numpy(out_vals)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    return math.degrees(math.acos(max(-1.0, min(1.0, cos.item()))))


@cli_main
def main():
    cfg, args = bench_config(__doc__.splitlines()[0], extra_args)
    set_threads(args.threads)
    if args.batches < 1 or args.repeats < 1:
        raise GolfError("need --batches >= 1 and --repeats >= 1")
    ctx = Ctx(0, 0, 1, torch.device("cpu"), None)
    teacher, _, _ = make_teacher(ctx, args.teacher, teacher_config(cfg, args.teacher_preset), cfg.vocab_size)
    if args.student:
        student = model_from_checkpoint(load_checkpoint(args.student), f"student checkpoint {args.student}")
        if student.cfg.vocab_size != cfg.vocab_size:
            raise GolfError(f"student {args.student} has vocabulary {student.cfg.vocab_size}, not {cfg.vocab_size}")
    else:
        student = perturbed_model(cfg, cfg.seed, ctx)
    params = [p for p in student.parameters() if p.requires_grad]
    seq, n = cfg.train_seq_len, cfg.train_batch_tokens
    val = load_val_tokens(cfg.data_path, seq, vocab_size=cfg.vocab_size)
    if len(val) < args.batches * n + 1:
        raise GolfError(f"the val shards hold {len(val) - 1} targets, fewer than --batches {args.batches} x "
                        f"TRAIN_BATCH_TOKENS {n}; pass fewer batches or a smaller TRAIN_BATCH_TOKENS")
    temp, alpha = cfg.distill_temp, cfg.distill_alpha

    targets = {}  # name -> (bytes per token or None for sampled, teacher keywords of distill_terms or draws)
    for tail in ("renorm", "bucket"):
        for k in _ints(args.ks):
            for codec in ("fp16", "packed"):
                targets[f"topk-{tail}-k{k}-{codec}"] = (CODECS[codec].row_bytes(k), (tail, k, codec))
    for draws in _ints(args.draws):
        targets[f"sampled-n{draws}"] = (None, draws)
    sums = {name: {"angle": 0.0, "ratio": 0.0, "mixed": 0.0, "mean_angle": 0.0, "distinct": 0.0} for name in targets}

    for b in range(args.batches):
        chunk = val[b * n: b * n + n + 1].long()
        x, y = chunk[:-1].view(-1, seq), chunk[1:].view(-1, seq)
        with torch.no_grad():
            t = teacher(x).float().flatten(0, 1)
        z = student(x).float()
        zf = z.flatten(0, 1)

        def param_grad(grad_z):
            return torch.cat([g.flatten() for g in torch.autograd.grad(z, params, grad_z, retain_graph=True)])

        def term_grad_z(**teacher_kw):
            """dL/dz of T^2 x the distillation term (the weight training gives it before alpha), and the CE."""
            zl = zf.detach().requires_grad_(True)
            ce, term, _ = distill_terms(zl, y.flatten(), mode="soft", temperature=temp, **teacher_kw)
            g_term, = torch.autograd.grad(temp**2 * term, zl, retain_graph=True)
            return g_term.view_as(z), ce, zl

        g_full_z, ce, zl = term_grad_z(teacher_logits=t)
        g_ce = param_grad(torch.autograd.grad(ce, zl)[0].view_as(z))
        g_full = param_grad(g_full_z)
        full_mixed = (1 - alpha) * g_ce + alpha * g_full

        def record(name, g, rep_weight=1.0):
            s = sums[name]
            s["angle"] += angle_deg(g, g_full) * rep_weight
            s["ratio"] += (g.norm() / g_full.norm()).item() * rep_weight
            s["mixed"] += angle_deg((1 - alpha) * g_ce + alpha * g, full_mixed) * rep_weight

        logp = torch.log_softmax(t, -1)
        for name, (_, spec) in targets.items():
            if isinstance(spec, tuple):
                tail, k, codec = spec
                vals, idx = logp.topk(k, -1)
                idx, vals = codec_round_trip(codec, idx, vals)
                record(name, param_grad(term_grad_z(idx=idx, vals=vals, tail=tail)[0]))
                continue
            mean_z = torch.zeros_like(z)
            for r in range(args.repeats):
                gen = torch.Generator().manual_seed(cfg.seed + 1000 * b + r)
                ids, counts = sample_targets(t, spec, temp, gen)
                sums[name]["distinct"] += (counts > 0).sum(-1).float().mean().item() / args.repeats
                g_z = term_grad_z(sample_ids=ids, sample_counts=counts)[0]
                mean_z += g_z / args.repeats
                record(name, param_grad(g_z), 1.0 / args.repeats)
            sums[name]["mean_angle"] += angle_deg(param_grad(mean_z), g_full)

    print(f"kd_fidelity_setup teacher:{args.teacher or 'random:' + args.teacher_preset} "
          f"student:{args.student or 'random'} batches:{args.batches} tokens_per_batch:{n} T:{temp} alpha:{alpha} "
          f"repeats:{args.repeats} threads:{torch.get_num_threads()}")
    for name, (row_bytes, spec) in targets.items():
        s = {key: v / args.batches for key, v in sums[name].items()}
        sampled = not isinstance(spec, tuple)
        nbytes, extra = row_bytes, ""
        if sampled:
            sizes = {c: CODECS[c].mean_row_bytes(spec, s["distinct"]) for c in ("sampled", "sampled-packed")
                     if cfg.vocab_size <= CODECS[c].max_vocab}
            nbytes = min(sizes.values())
            extra = f" mean_angle_deg:{s['mean_angle']:.2f} distinct:{s['distinct']:.2f}" + "".join(
                f" {c.replace('-', '_')}_bytes:{b:.1f}" for c, b in sizes.items())
        print(f"kd_fidelity target:{name} bytes_per_token:{nbytes:.1f} angle_deg:{s['angle']:.2f} "
              f"norm_ratio:{s['ratio']:.3f} mixed_angle_deg:{s['mixed']:.2f}" + extra)


if __name__ == "__main__":
    main()
