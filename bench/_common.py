"""Helpers shared by the benchmarks: configuration, the machine line, teachers, a cache built in a temp folder,
and robust timing statistics.

Every benchmark measures ratios side by side in one process (these machines are noisy), reports medians of
many repetitions taken in alternating order, and prints the load average, because other processes on a small
shared machine inflate exactly the small multi-threaded kernels that distillation adds.
"""
import hashlib
import importlib.util
import os
import platform
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from golf.cache import CacheSpec, CacheWriter
from golf.cache_build import build_cache, default_batch_windows
from golf.checkpoint import load_teacher
from golf.choices import config_from_cli
from golf.config import PRESETS, Config
from golf.dist import Ctx
from golf.errors import GolfError
from golf.model import GPT
from golf.shards import list_shards

# Config fields that describe data and run shape rather than a model: a teacher made from a preset keeps the
# student run's values of these (same data, vocabulary and device).
_RUN_FIELDS = ("data_path", "tokenizer_path", "vocab_size", "device", "dtype", "compile", "seed")


def bench_config(doc: str, extra, default_preset: str = "demo-student") -> tuple[Config, object]:
    """(cfg, args) like the training scripts (`--flag` > env > preset), but the preset defaults to
    `default_preset` instead of the full-size student when neither --preset nor PRESET is given."""
    argv = sys.argv[1:]
    if "PRESET" not in os.environ and not any(a == "--preset" or a.startswith("--preset=") for a in argv):
        argv = ["--preset", default_preset] + argv
    return config_from_cli(doc, argv, extra)


def set_threads(n: int):
    if n:
        torch.set_num_threads(n)


def machine_line(ctx: Ctx) -> str:
    """What produced the numbers: device, dtype, threads, load, versions."""
    if ctx.device.type == "cuda":
        dev = torch.cuda.get_device_name(ctx.device)
    else:
        dev = f"cpu:{platform.processor() or platform.machine()} cpus={os.cpu_count()} threads={torch.get_num_threads()}"
    load = os.getloadavg()[0]
    return (f"machine device={dev} dtype={ctx.autocast_dtype or 'fp32'} loadavg={load:.2f} torch={torch.__version__} "
            f"omp_wait_policy={os.environ.get('OMP_WAIT_POLICY', '-')}")


def max_rss_mib() -> float:
    """This process's peak resident memory (host RAM) so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def oversubscribed(load: float) -> bool:
    """True if the 1-minute load says other processes competed for the cores: a CPU benchmark keeps every
    core busy itself, so a load up to ~the core count is its own."""
    return load > 1.25 * os.cpu_count()


def load_note(ctx: Ctx):
    """Warn when the machine was oversubscribed (see bench/kl_loss.py for why it matters)."""
    load = os.getloadavg()[0]
    if ctx.device.type == "cpu" and oversubscribed(load):
        fix = "" if os.environ.get("OMP_WAIT_POLICY") else " or with OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads)"
        print(f"note: load {load:.1f} > {os.cpu_count()} cpus: other processes shared this machine; rerun when "
              f"quiet{fix}, or compare CPU time with --threads 1 --clock process where the bench has it")


def load_losses(path: str):
    """Import a losses.py file as its own module (it may only depend on torch, like golf/losses.py)."""
    if not os.path.isfile(path):
        raise GolfError(f"--against {path}: no such file; pass an older golf/losses.py (e.g. from git show)")
    spec = importlib.util.spec_from_file_location("losses_against", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not all(hasattr(mod, f) for f in ("cross_entropy", "distill_loss")):
        raise GolfError(f"--against {path} has no cross_entropy / distill_loss: not a golf/losses.py")
    return mod


def train_files(cfg: Config, n_shards: int = 0) -> list[str]:
    """The run's train shards (the first `n_shards` if > 0), with a clear error when the data is missing."""
    if not os.path.isdir(cfg.data_path):
        raise GolfError(f"DATA_PATH={cfg.data_path} not found; run `python prepare_data.py --demo` in the repo root "
                        "or pass --data-path")
    files = list_shards(cfg.data_path, "train")
    return files[:n_shards] if n_shards > 0 else files


def teacher_config(cfg: Config, preset: str) -> Config:
    """A teacher configuration: `preset`'s model with the student run's data, vocabulary and device settings."""
    if preset not in PRESETS:
        raise GolfError(f"unknown teacher preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    tcfg = Config(**PRESETS[preset])
    for name in _RUN_FIELDS:
        setattr(tcfg, name, getattr(cfg, name))
    return tcfg


def perturbed_model(cfg: Config, seed: int, ctx: Ctx) -> GPT:
    """A GPT of `cfg` at `seed` on the device, its zero-initialised output projections perturbed (the study's init
    zeroes them) so that every layer reaches the loss and the gradient."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and not p.any():
                p.normal_(0, 0.02)
    model = model.to(ctx.device)
    if ctx.autocast_dtype is not None:
        model.apply_dtype_policy(ctx.autocast_dtype)
    return model


def make_teacher(ctx: Ctx, path: str, tcfg: Config, vocab_size: int) -> tuple[torch.nn.Module, str, Config]:
    """(frozen teacher on the device, sha256, its config): the checkpoint at `path` if given, else a randomly
    initialised model of configuration `tcfg` (cost does not depend on the weights; values do, so anything that
    measures distortion should pass a trained teacher)."""
    if path:
        return load_teacher(path, ctx, vocab_size)
    model = perturbed_model(tcfg, tcfg.seed + 1, ctx).eval().requires_grad_(False)
    sha = hashlib.sha256(f"random-teacher:{tcfg.num_layers}x{tcfg.model_dim}:{tcfg.seed + 1}".encode()).hexdigest()
    return model, sha, tcfg


def build_temp_cache(teacher, sha: str, tcfg: Config, files: list[str], ctx: Ctx, out: str, k: int = 32,
                     encoding: str = "fp16", batch_windows: int = 0, fixed_shape: bool = False,
                     temperature: float | None = None) -> dict:
    """Write a logit cache of `files` into `out` with the real builder (golf.cache_build.build_cache), as
    cache_logits.py does (a sampled encoding: k draws at `temperature`); returns build_cache's throughput figures."""
    window = tcfg.train_seq_len
    spec = CacheSpec(k=k, vocab_size=tcfg.vocab_size, encoding=encoding, teacher_sha256=sha,
                     teacher_config=tcfg.to_dict(), window=window, stride=window, temperature=temperature)
    writer = CacheWriter(out, files, spec)
    batch_windows = batch_windows or default_batch_windows(window, ctx.device)
    return build_cache(teacher, writer, files, writer.pending(), ctx, batch_windows, fixed_shape=fixed_shape)


CLOCKS = {
    "wall": time.perf_counter,
    # CPU seconds of the whole process (all threads, the prefetch thread included). Much less sensitive than wall
    # time to other processes on a small shared machine; only meaningful with OMP_WAIT_POLICY=PASSIVE (with
    # OpenMP's default, idle threads spin and bill CPU time) and never on CUDA (the device's work is not in it).
    "process": time.process_time,
}


def timed(fn, ctx: Ctx, clock: str = "wall") -> float:
    """Seconds for fn() on `clock`, with the device synchronised before and after."""
    now = CLOCKS[clock]
    ctx.sync()
    t0 = now()
    fn()
    ctx.sync()
    return now() - t0


def rotations(names: list[str], rep: int) -> list[str]:
    """`names` rotated by `rep`: every arm runs first, second, ... equally often, so drifts hit all alike."""
    r = rep % len(names)
    return names[r:] + names[:r]


def median_ms(ts: list[float]) -> float:
    return statistics.median(ts) * 1e3


def spread(ts: list[float]) -> str:
    """'median (p25-p75) ms' of seconds."""
    q = statistics.quantiles([t * 1e3 for t in ts], n=4) if len(ts) > 1 else [ts[0] * 1e3] * 3
    return f"{median_ms(ts):8.2f} ms (p25 {q[0]:.2f}, p75 {q[2]:.2f}, n={len(ts)})"


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over repetitions of num[i] / den[i]: pairs taken close in time cancel slow drifts in load."""
    return statistics.median(a / b for a, b in zip(num, den))


def bootstrap_ci(stat, num: list[float], den: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of stat(num, den), resampling whole repetitions (each keeps its pair)."""
    rng = random.Random(seed)
    n, values = len(num), []
    for _ in range(reps):
        pick = [rng.randrange(n) for _ in range(n)]
        values.append(stat([num[i] for i in pick], [den[i] for i in pick]))
    values.sort()
    return values[int(0.025 * reps)], values[int(0.975 * reps) - 1]


def synthetic_count_dist(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, width: int = 64, seed: int = 0):
    """A count teacher's signal of realistic widths for timing (golf.signals.CountDist): per position `width`
    sparse entries (distinct ids that depend on the previous token, half of them carrying 0.5 of the mass, the
    other half padding), the bigram row of the previous token (rows[:V], rho 0.3) and the shared last row (beta
    0.2) of `rows` (V + 1, V) (synthetic_count_rows). Its numbers are random; what it costs is a real count
    teacher's at these widths. On x's device."""
    from golf.signals import CountDist

    v, dev = rows.shape[1], x.device
    a, y = x.reshape(-1), y.reshape(-1)
    n = a.shape[0]
    g = torch.Generator(dev).manual_seed(seed)
    ids = (a[:, None] * 7 + 13 * torch.arange(width, device=dev)) % v  # 13 j mod 2^k: distinct in a row
    weight = torch.rand(n, width, generator=g, device=dev) * (torch.arange(width, device=dev) < width // 2)
    weight *= 0.5 / weight.sum(-1, keepdim=True)
    rho, beta = torch.full((n,), 0.3, device=dev), torch.full((n,), 0.2, device=dev)
    at_y = (weight * (ids == y[:, None])).sum(-1) + rho * rows[a, y] + beta * rows[-1, y]
    entry_row = torch.arange(n, device=dev).repeat_interleave(width)
    return CountDist(ids.reshape(-1), weight.reshape(-1), entry_row, rows, a, rho, beta, at_y.log())


def synthetic_count_rows(v: int, device, seed: int = 0) -> torch.Tensor:
    """(V + 1, V) float32 rows that each sum to 1: stand-ins for the bigram rows of a count teacher, and its
    shared order-1 model (every entry > 0) last."""
    g = torch.Generator(device).manual_seed(seed)
    rows = torch.cat([torch.rand(v, v, generator=g, device=device) ** 4,
                      torch.rand(1, v, generator=g, device=device) + 0.1])
    return rows / rows.sum(-1, keepdim=True)
