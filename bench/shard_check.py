"""Benchmark: the cost of checking every train shard up front (golf.shards.shard_problem: header, size and a
vectorised max of the ids over the memmap), per GB, with the shards' pages in the page cache (warm) and evicted
from it (cold: posix_fadvise DONTNEED on these files only, no one else's cache is touched).

    python bench/shard_check.py DIR [--shards 5] [--reps 3]

Writes --shards random shards of the challenge's size (10**8 tokens, 200 MB each) into DIR once (reused after),
then alternates cold and warm checks. Last line: `shard_check gb=G cold_s_per_gb=C warm_s_per_gb=W` (medians).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from golf.errors import cli_main
from golf.shards import shard_problem, write_shard

SHARD_TOKENS = 100_000_000  # the challenge's FineWeb shards


def evict(path: str):
    """This file's pages out of the page cache: the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@cli_main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="cold and warm checks each")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [os.path.join(args.dir, f"bench_train_{i:06d}.bin") for i in range(args.shards)]
    for p in paths:
        if not os.path.exists(p):
            write_shard(p, rng.integers(0, 1024, SHARD_TOKENS, dtype=np.uint16))
    gb = sum(os.path.getsize(p) for p in paths) / 1e9
    times = {"cold": [], "warm": []}
    for _ in range(args.reps):
        for kind in ("cold", "warm"):
            if kind == "cold":
                for p in paths:
                    evict(p)
            t = time.perf_counter()
            assert all(shard_problem(p, 1024, "VOCAB_SIZE") is None for p in paths)
            times[kind].append((time.perf_counter() - t) / gb)
            print(f"{kind}: {gb:.2f} GB at {times[kind][-1]:.3f} s/GB", flush=True)
    print(f"shard_check gb={gb:.2f} cold_s_per_gb={np.median(times['cold']):.3f} "
          f"warm_s_per_gb={np.median(times['warm']):.3f}")


if __name__ == "__main__":
    main()
