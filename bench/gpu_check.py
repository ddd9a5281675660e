"""The stages of bench/gpu_check.sh that are not benchmarks of their own, and the report that merges them all.

    python bench/gpu_check.py env OUT.json                              # versions, devices, FA3 importable or not
    python bench/gpu_check.py data DIR --tokens N [--val-tokens N] [--text DIR]  # synthetic shards (+ real text)
    python bench/gpu_check.py cache DIR OUT [--k 32]                    # an fp16 cache of DIR's train shards in OUT
    python bench/gpu_check.py attention OUT.json [--steps 5] [--compile]  # forward/backward with FA3 and with SDPA
    python bench/gpu_check.py eval DIR OUT.json                         # standard and sliding eval of DIR's val shard
    python bench/gpu_check.py train-report LOG_DIR OUT.json             # what the train stage's train_gpt.py logged
    python bench/gpu_check.py summary OUTDIR                            # OUTDIR/gpu_check.json and summary.md

attention and eval take the model from PRESET (default student) and DEVICE / DTYPE / COMPILE like every script.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from _common import max_rss_mib, median_ms, perturbed_model, timed
from golf.atomic import atomic_write_text
from golf.cache import CacheSpec, CacheWriter
from golf.choices import resolve_config
from golf.data import grad_accum_steps
from golf.dist import compile_enabled, init_dist, maybe_compile
from golf.errors import GolfError, cli_main
from golf.eval import eval_sliding, eval_val, load_val_tokens
from golf.losses import cross_entropy
from golf.model import GPT
from golf.shards import list_shards, load_shard, write_shard
from golf.tokenizer import ByteLuts

_CHUNK = 1 << 20  # rows per write
VAL_TARGETS = 62_021_632  # the challenge's FineWeb val set (seed-factsheet 1.4): eval times are projected to it
STAGE_JSON = ("env", "attention", "steps", "count", "train", "eval", "cache_read", "cache_write")  # stages that write JSON


def write_json(path: str, obj: dict):
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Environment


def env_info() -> dict:
    """What ran the check: versions, devices, and whether FlashAttention-3 imports (with the error if not)."""
    info = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [{"name": torch.cuda.get_device_name(i), "capability": list(torch.cuda.get_device_capability(i)),
                         "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                        for i in range(torch.cuda.device_count())]
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["driver"] = f"nvidia-smi: {e}"
    try:  # any exception: a broken install fails in its own ways (missing CUDA libraries, ABI mismatches)
        import flash_attn_interface

        info["fa3"] = {"importable": True, "file": flash_attn_interface.__file__,
                       "version": getattr(flash_attn_interface, "__version__", None)}
    except Exception as e:  # noqa: BLE001
        info["fa3"] = {"importable": False, "error": f"{type(e).__name__}: {e}"}
    return info


# ----------------------------------------------------------------------------------------------------------
# Synthetic data and cache


def make_data(out: str, tokens: int, vocab: int, val_tokens: int = 65536, seed: int = 0):
    """One train shard of `tokens` uniform random ids and a val shard: timing needs shapes, not text."""
    if tokens <= 0 or val_tokens <= 1 or not 0 < vocab <= 1 << 16:
        raise GolfError(f"need --tokens > 0, --val-tokens > 1 and 0 < --vocab <= 65536, got {tokens}, {val_tokens}, "
                        f"{vocab}")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_shard(os.path.join(out, "synth_train_000000.bin"), rng.integers(0, vocab, tokens, dtype=np.uint16))
    write_shard(os.path.join(out, "synth_val_000000.bin"), rng.integers(0, vocab, val_tokens, dtype=np.uint16))
    print(f"data: {out} train tokens {tokens} val tokens {val_tokens} vocab {vocab}")


def make_text_data(out: str, max_bytes: int = 400_000) -> dict:
    """A small real-text dataset (tokenizer + shards) from the demo corpus that ships with Python, for the stage
    that runs train_gpt.py itself (which needs a tokenizer for its byte counts); a few seconds."""
    from golf.corpus import build_dataset, demo_documents, split_train_val

    docs = demo_documents(max_bytes=max_bytes)
    train, val = split_train_val(docs)
    paths = build_dataset(train, val, "gpucheck", out, shard_tokens=1 << 20)
    print(f"text data: {paths.data_path} tokenizer {paths.tokenizer_path}")
    return {"data_path": paths.data_path, "tokenizer_path": paths.tokenizer_path}


def make_cache(data: str, out: str, k: int, vocab: int):
    """A complete fp16 cache of `data`'s train shards without a teacher: row t holds K distinct ids starting at the
    true next token, with one fixed descending log-prob profile. The read path and the loss cost the same for
    any content; the teacher's own cost is measured by the cache_write stage."""
    files = list_shards(data, "train")
    spec = CacheSpec(k=k, vocab_size=vocab, encoding="fp16", teacher_sha256="0" * 64, teacher_config={"synthetic": True},
                     window=2048, stride=2048)
    writer = CacheWriter(out, files, spec)
    profile = -0.25 * np.arange(k, dtype=np.float32)
    vals_row = profile - np.log(np.exp(profile).sum() / 0.9)  # the top-K holds 90% of the mass
    for i, path in enumerate(files):
        tokens = load_shard(path)
        with writer.open_shard(i) as sw:
            for a in range(0, len(tokens), _CHUNK):
                nxt = np.asarray(tokens[a + 1:a + _CHUNK + 1], dtype=np.int64)
                n = min(_CHUNK, len(tokens) - a)
                nxt = np.pad(nxt, (0, n - len(nxt)))  # the stream's last row has no next token here: any id will do
                idx = (nxt[:, None] + np.arange(k)) % vocab
                sw.write(a, idx, np.broadcast_to(vals_row.astype(np.float16), (n, k)))
            sw.commit()
    writer.finalize()
    print(f"cache: {out} k {k} rows {sum(len(load_shard(p)) for p in files)}")


# ----------------------------------------------------------------------------------------------------------
# The student's forward/backward with each attention kernel, and the compile time


def _student(cfg, ctx) -> GPT:
    """The run's model at a fixed seed, with its zero-initialised output projections perturbed so that attention
    reaches the loss and the gradient (as bench/_common.make_teacher does)."""
    return perturbed_model(cfg, cfg.seed, ctx)


def _fwd_bwd(fwd, model, tokens, ctx):
    """One training forward/backward of a micro-batch (B, T + 1); returns the loss."""
    model.zero_grad(set_to_none=True)
    with ctx.autocast():
        loss = cross_entropy(fwd(tokens[:, :-1]), tokens[:, 1:])
    loss.backward()
    return loss.detach()


def _kernel_run(model, tokens, ctx, steps: int) -> tuple[dict, torch.Tensor]:
    loss = _fwd_bwd(model, model, tokens, ctx)  # first call: allocator and kernel selection
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times = [timed(lambda: _fwd_bwd(model, model, tokens, ctx), ctx) for _ in range(steps)]
    grad = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None
    return {"status": "ok", "loss": float(loss), "fwd_bwd_ms": median_ms(times), "peak_mib": peak}, grad


def attention_check(cfg, steps: int, with_compile: bool) -> dict:
    """The student's micro-batch forward/backward with FA3 (if it imports) and with SDPA, eager: times, peak
    memory, and how far the two agree; then, if compiling, the compile time of that step."""
    import golf.model as gm

    ctx = init_dist(cfg.device, cfg.dtype)
    model = _student(cfg, ctx)
    rows = cfg.train_batch_tokens // grad_accum_steps(cfg, 1) // cfg.train_seq_len
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (rows, cfg.train_seq_len + 1), generator=g).to(ctx.device)
    out = {"device": str(ctx.device), "dtype": str(ctx.autocast_dtype or "fp32"), "micro_batch": [rows, cfg.train_seq_len],
           "model_params": model.num_params(), "kernels": {}}
    fa3, grads, calls = gm._fa3, {}, [0]

    def counted_fa3(*a, **kw):  # proof that the FA3 branch ran, not SDPA behind its back
        calls[0] += 1
        return fa3(*a, **kw)

    for name, kernel in (("fa3", counted_fa3 if fa3 is not None else None), ("sdpa", None)):
        if name == "fa3" and fa3 is None:
            out["kernels"]["fa3"] = {"status": "absent", "note": "flash_attn_interface does not import: SDPA only"}
            continue
        gm._fa3 = kernel
        try:
            out["kernels"][name], grads[name] = _kernel_run(model, tokens, ctx, steps)
        except Exception as e:  # noqa: BLE001 - the other kernel still runs, the report says what failed
            out["kernels"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
        finally:
            gm._fa3 = fa3
    if "fa3" in grads:
        out["kernels"]["fa3"]["fa3_calls"] = calls[0]
        if not calls[0]:  # the model routed around it (FA3 runs only on CUDA): nothing to compare
            out["kernels"]["fa3"]["status"] = "not used by the model on this device"
            del grads["fa3"]
    if {"fa3", "sdpa"} <= grads.keys():
        a, b = out["kernels"]["fa3"], out["kernels"]["sdpa"]
        out["fa3_vs_sdpa"] = {"loss_abs_diff": abs(a["loss"] - b["loss"]), "speedup": b["fwd_bwd_ms"] / a["fwd_bwd_ms"],
                              "grad_rel_diff": float((grads["fa3"] - grads["sdpa"]).norm() / grads["sdpa"].norm())}
    if with_compile:
        out["compile"] = _compile_time(model, tokens, ctx)
    return out


def _compile_time(model, tokens, ctx) -> dict:
    """Seconds of the first compiled forward/backward (the compile) and the steady compiled step."""
    fwd = maybe_compile(model, "1", ctx.device)
    t0 = time.perf_counter()
    _fwd_bwd(fwd, model, tokens, ctx)
    ctx.sync()
    first = time.perf_counter() - t0
    steady = median_ms([timed(lambda: _fwd_bwd(fwd, model, tokens, ctx), ctx) for _ in range(3)])
    return {"first_step_s": first, "steady_step_ms": steady, "compile_s": first - steady / 1e3}


# ----------------------------------------------------------------------------------------------------------
# One evaluation


def eval_check(cfg, data: str) -> dict:
    """Standard and sliding-window eval of the val shard in `data` by a random student (its cost does not depend on
    the weights), twice: the first pass includes any compile. Byte tables count every token as one byte (no
    tokenizer here): bpb is meaningless, the rates are not. Rates are projected to the FineWeb val set."""
    ctx = init_dist(cfg.device, cfg.dtype)
    val = load_val_tokens(data, cfg.train_seq_len, cfg.val_max_tokens)
    v = cfg.vocab_size
    luts = ByteLuts(torch.ones(v, dtype=torch.int16, device=ctx.device), torch.zeros(v, dtype=torch.bool, device=ctx.device),
                    torch.zeros(v, dtype=torch.bool, device=ctx.device))
    model = _student(cfg, ctx)
    fwd = maybe_compile(model, cfg.compile, ctx.device)
    kinds = {"standard": lambda: eval_val(fwd, val, luts, cfg.train_seq_len, cfg.val_batch_size, ctx),
             "sliding": lambda: eval_sliding(fwd, val, luts, cfg.train_seq_len, cfg.eval_stride, cfg.eval_batch_seqs, ctx)}
    out = {"device": str(ctx.device), "targets": len(val) - 1, "seq_len": cfg.train_seq_len, "stride": cfg.eval_stride,
           "compiled": compile_enabled(cfg.compile, ctx.device)}
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    for name, run in kinds.items():
        first, second = timed(run, ctx), timed(run, ctx)
        rate = (len(val) - 1) / second
        out[name] = {"first_s": first, "steady_s": second, "targets_per_s": rate,
                     "fineweb_val_s_1gpu": VAL_TARGETS / rate, "fineweb_val_s_8gpu": VAL_TARGETS / rate / 8}
        print(f"eval {name}: {len(val) - 1} targets, first {first:.2f}s (compile included), then {second:.2f}s = "
              f"{rate:.0f} targets/s; FineWeb val would take ~{VAL_TARGETS / rate:.0f}s on one such device")
    out["peak_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None
    out["max_rss_mib"] = max_rss_mib()
    return out


# ----------------------------------------------------------------------------------------------------------
# The real training script, end to end


def train_report(log_dir: str, run_id: str) -> dict:
    """What the train stage's train_gpt.py run logged: step time, compiles inside timed steps (must be none), the
    final scores and sizes, the peak-memory line. Refuses a run that compiled inside its timed steps."""
    events = {}
    with open(os.path.join(log_dir, f"{run_id}.jsonl")) as f:
        for rec in map(json.loads, f):
            events.setdefault(rec["event"], []).append(rec)
    with open(os.path.join(log_dir, f"{run_id}.txt")) as f:
        text = f.read()
    end, final = events["train_end"][-1], events.get("final", [{}])[-1]
    train = events.get("train", [])
    out = {"steps": end["step"], "step_ms_median": end["step_ms_median"], "timed_compiles": end.get("timed_compiles"),
           "qat_enabled": "late_qat:enabled" in text, "warmup": [ln for ln in text.splitlines() if ln.startswith("warmup:")],
           "train_loss": [r["train_loss"] for r in train], "val_bpb": final.get("val_bpb"),
           "sliding_val_bpb": final.get("sliding_val_bpb"), "artifact": (events.get("artifact") or [{}])[-1],
           "peak_memory_line": next((ln for ln in text.splitlines() if ln.startswith("peak memory")), None)}
    print(json.dumps(out, indent=1))
    if out["timed_compiles"]:
        raise GolfError(f"{out['timed_compiles']} compile(s) inside timed steps (see 'compile_in_timed_step' in "
                        f"{log_dir}/{run_id}.txt): the warm-up missed a graph")
    return out


# ----------------------------------------------------------------------------------------------------------
# The report: every stage's status and figures in one JSON and one markdown page, whatever failed


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# The dry run's limits were set on an idle 2-core CPU where SLOWDOWN_WORK took this long (best of 5: 0.016 s).
SLOWDOWN_REF_S = 0.016


def _slowdown_work(a: torch.Tensor) -> float:
    t = time.perf_counter()
    for _ in range(100):
        a @ a
    return time.perf_counter() - t


def slowdown(reps: int = 15) -> float:
    """How many times slower than the dry run's reference CPU this machine runs now (at least 1): the median of
    `reps` timings of a fixed single-thread workload (100 matmuls of 256 x 256) over its reference time. The median,
    not the best, so that the load of other jobs counts: it is what will slow the stages down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
        times = [_slowdown_work(a) for _ in range(reps)]
    finally:
        torch.set_num_threads(threads)
    return max(1.0, float(np.median(times)) / SLOWDOWN_REF_S)


def read_stages(out: str) -> dict:
    """stages.tsv (written by gpu_check.sh: name, status, seconds, exit code, limit, command) -> {name: {...}}."""
    stages, path = {}, os.path.join(out, "stages.tsv")
    if not os.path.isfile(path):  # no stage has run yet
        return stages
    with open(path) as f:
        for line in f:
            name, status, seconds, rc, limit, command = line.rstrip("\n").split("\t", 5)
            stages[name] = {"status": status, "seconds": int(seconds), "exit": int(rc), "limit_s": int(limit),
                            "command": command, "log": f"{name}.log"}
    return stages


def key_figures(f: dict) -> dict:
    """The figures a reader wants first, from each stage's JSON (None where a stage gave none)."""
    env, att, steps, count, train, ev, read, write = (f.get(k) or {} for k in (
        "env", "attention", "steps", "count", "train", "eval", "cache_read", "cache_write"))
    kernels, arms = att.get("kernels", {}), steps.get("arms", {})
    gpus = env.get("gpus") or [{}]
    return {
        "device": gpus[0].get("name") or ("cpu" if env else None), "torch": env.get("torch"), "cuda": env.get("cuda"),
        "fa3_importable": (env.get("fa3") or {}).get("importable"),
        "fwd_bwd_ms": {k: v.get("fwd_bwd_ms") for k, v in kernels.items() if v.get("status") == "ok"},
        "fa3_vs_sdpa": att.get("fa3_vs_sdpa"), "compile_s": (att.get("compile") or {}).get("compile_s"),
        "step_ms": {k: a["median_ms"] for k, a in arms.items()},
        "step_ratio": {k: a["paired_ratio"] for k, a in arms.items() if k != "baseline"},
        "step_peak_mib": {k: a.get("peak_mib") for k, a in arms.items()}, "steps_max_rss_mib": steps.get("max_rss_mib"),
        "attention_peak_mib": {k: v.get("peak_mib") for k, v in kernels.items() if v.get("status") == "ok"},
        "steps_warmup_s": steps.get("warmup_s"), "steps_rounds": steps.get("rounds"),
        "count_step_ratio": (count.get("arms", {}).get("ngram") or {}).get("paired_ratio"),
        "count_build_ms": (count.get("ngram_build") or {}).get("ms"),
        "count_bytes": (count.get("ngram_build") or {}).get("count_bytes"),
        "train_step_ms": train.get("step_ms_median"), "train_timed_compiles": train.get("timed_compiles"),
        "train_peak_memory": train.get("peak_memory_line"),
        "cache_read_mb_per_s": read.get("mb_per_s"),
        "cache_read_step_fraction": {k: v / read["step_ms"] for k, v in read.get("fetch_ms", {}).items()},
        "eval_targets_per_s": {k: ev[k]["targets_per_s"] for k in ("standard", "sliding") if k in ev},
        "eval_fineweb_val_s_8gpu": {k: ev[k]["fineweb_val_s_8gpu"] for k in ("standard", "sliding") if k in ev},
        "teacher_forward_tokens_per_s": float(np.median(write["forward_tokens_per_s"])) if write else None,
        "cache_write_ratio": write.get("ratio"),
    }


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    if isinstance(x, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in x.items()) or "-"
    return "-" if x is None else str(x)


def markdown(report: dict) -> str:
    k, env = report["figures"], report["env"] or {}
    lines = [f"# bench/gpu_check.sh ({report['mode']})", "",
             f"{_fmt(k['device'])}, torch {_fmt(k['torch'])}, CUDA {_fmt(k['cuda'])}, FlashAttention-3 "
             + ("importable" if k["fa3_importable"] else f"not importable ({_fmt((env.get('fa3') or {}).get('error'))})"),
             "", "| stage | status | seconds | limit |", "|---|---|---|---|"]
    lines += [f"| {n} | {s['status']} | {s['seconds']} | {s['limit_s']} |" for n, s in report["stages"].items()]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(v)} |" for name, v in k.items() if name not in ("device", "torch", "cuda")]
    scale = ("the test preset on the CPU: this checks the check, its figures say nothing about a GPU"
             if report["mode"].startswith("dry-run") else "the real student config on one device")
    lines += ["", f"Step times: {scale}, MICRO_BATCHES accumulated micro-batches standing in for the ranks; ratios are "
              "paired per round against the baseline (bench/distill_step.py). Peak memory: allocated by torch on "
              "the GPU (steps: per arm), the process's resident memory on the CPU. Each stage's log and JSON are "
              "beside this file."]
    return "\n".join(lines) + "\n"



def summary(out: str, mode: str) -> int:
    """Merge stages.tsv and every stage's JSON into gpu_check.json and summary.md; print the summary line;
    returns 1 if any stage did not finish ok (all that exists is still reported)."""
    stages = read_stages(out)
    figs = {name: _read_json(os.path.join(out, f"{name}.json")) for name in STAGE_JSON}
    report = {"mode": mode, "stages": stages, "figures": key_figures(figs), "env": figs["env"],
              "details": {name: figs[name] for name in STAGE_JSON if name != "env"}}
    write_json(os.path.join(out, "gpu_check.json"), report)
    atomic_write_text(os.path.join(out, "summary.md"), markdown(report))
    bad = [n for n, s in stages.items() if s["status"] not in ("ok", "slow")]  # slow: past its limit, finished ok
    slow = [n for n, s in stages.items() if s["status"] == "slow"]
    k = report["figures"]
    print(f"gpu_check mode={mode} device={_fmt(k['device']).replace(' ', '_')} fa3={_fmt(k['fa3_importable'])} "
          f"stages_ok={len(stages) - len(bad)}/{len(stages)}"
          + "".join(f" {a}_ratio={r:.3f}" for a, r in k["step_ratio"].items())
          + (f" not_ok={','.join(bad)}" if bad else "") + (f" slow={','.join(slow)}" if slow else ""))
    return 1 if bad or not stages else 0


@cli_main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="versions, devices, FA3").add_argument("json")
    sub.add_parser("slowdown", help="how many times slower than the dry run's reference CPU this one runs now")
    d = sub.add_parser("data", help="write synthetic shards")
    d.add_argument("dir")
    d.add_argument("--tokens", type=int, required=True)
    d.add_argument("--val-tokens", type=int, default=65536)
    d.add_argument("--vocab", type=int, default=1024)
    d.add_argument("--text", default="", help="also a small real-text dataset with its tokenizer in this folder")
    c = sub.add_parser("cache", help="write a synthetic fp16 logit cache")
    c.add_argument("dir")
    c.add_argument("out")
    c.add_argument("--k", type=int, default=32)
    c.add_argument("--vocab", type=int, default=1024)
    a = sub.add_parser("attention", help="forward/backward with FA3 and SDPA")
    a.add_argument("json")
    a.add_argument("--steps", type=int, default=5)
    a.add_argument("--compile", action="store_true", help="also time the compile of that step")
    e = sub.add_parser("eval", help="standard and sliding eval of DIR's val shard")
    e.add_argument("dir")
    e.add_argument("json")
    t = sub.add_parser("train-report", help="what the train stage's run logged")
    t.add_argument("log_dir")
    t.add_argument("json")
    t.add_argument("--run-id", default="train")
    s = sub.add_parser("summary", help="merge the stages into gpu_check.json and summary.md")
    s.add_argument("outdir")
    s.add_argument("--mode", default="full")
    args = ap.parse_args()
    if args.cmd == "env":
        info = env_info()
        write_json(args.json, info)
        print(json.dumps(info, indent=1))
    elif args.cmd == "slowdown":
        print(f"{slowdown():.2f}")
    elif args.cmd == "data":
        make_data(args.dir, args.tokens, args.vocab, args.val_tokens)
        if args.text:
            make_text_data(args.text)
    elif args.cmd == "cache":
        make_cache(args.dir, args.out, args.k, args.vocab)
    elif args.cmd == "attention":
        res = attention_check(resolve_config(None, {"PRESET": "student", **os.environ}), args.steps, args.compile)
        write_json(args.json, res)
        print(json.dumps(res, indent=1))
    elif args.cmd == "eval":
        write_json(args.json, eval_check(resolve_config(None, {"PRESET": "student", **os.environ}), args.dir))
    elif args.cmd == "train-report":
        write_json(args.json, train_report(args.log_dir, args.run_id))
    else:
        sys.exit(summary(args.outdir, args.mode))


if __name__ == "__main__":
    main()
