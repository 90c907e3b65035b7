"""Decode-aware crop sampler against plain random crops and tensorstore, in one run.

Random (8, 256, 256) crops of the (512, 1024, 1024) float32 zstd-3 array made by
scripts/bench-zarr.py, warm page cache, the same seed and so the same crop offsets for
every reader (but the clustered sampler, whose crops are drawn 16 from each cell, each
still uniform); readers interleaved, REPS repetitions, min / median / max crops/s.

    python scripts/bench-sampler.py [PATH] [--count 4096] [--block 512] [--reps 3]

PATH defaults to bench-zarr's v3-chunks array (made by bench-zarr's code on the first run,
then reused; ``LSIO_ZARR_BENCH_DIR`` and ``LSIO_ZARR_BENCH_SHAPE`` as there).

The sampler's first blocks pay for first-touching its ring of ``1 + ahead`` block
buffers (2 GiB here; about 1 s of page zeroing on these VMs), which a training run pays
once: the default count (8 blocks) is where that stops dominating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import lsio_ray.zarr as lz
from lsio_ray.zarr.stream import random_boxes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

CROP = (8, 256, 256)


def run_tensorstore(path: str, count: int, seed: int, prefetch: int = 16) -> int:
    import tensorstore as ts

    arr = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}, open=True, read=True
    ).result()
    n, window = 0, []
    for lo, hi in random_boxes(tuple(arr.shape), CROP, count, seed):
        window.append(arr[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))].read())
        if len(window) >= prefetch:
            n += window.pop(0).result().nbytes
    return n + sum(f.result().nbytes for f in window)


def run_lsio(path: str, count: int, seed: int) -> int:
    with lz.open(path) as a:
        return sum(c.nbytes for c in a.random_crops(CROP, count, seed=seed, prefetch=16))


def run_aware(path: str, count: int, seed: int, block: int, reuse: bool = False) -> int:
    with lz.open(path) as a:
        return sum(
            c.nbytes for c in a.decode_aware_crops(CROP, count, seed=seed, block=block, reuse=reuse)
        )


def run_clustered(path: str, count: int, seed: int, per_cell: int, reuse: bool = False) -> int:
    with lz.open(path) as a:
        return sum(
            c.nbytes
            for c in a.clustered_crops(CROP, count, seed=seed, per_cell=per_cell, reuse=reuse)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=None, help="default: bench-zarr's v3-chunks array")
    ap.add_argument("--count", type=int, default=4096)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.path is None:
        args.path = bc.zarr_dataset("v3-chunks")
    readers = {
        "tensorstore": lambda s: run_tensorstore(args.path, args.count, s),
        "lsio random_crops": lambda s: run_lsio(args.path, args.count, s),
        f"lsio decode_aware_crops (block {args.block})": lambda s: run_aware(
            args.path, args.count, s, args.block
        ),
        f"lsio decode_aware_crops (block {args.block}, reuse)": lambda s: run_aware(
            args.path, args.count, s, args.block, True
        ),
        "lsio clustered_crops (per_cell 16)": lambda s: run_clustered(args.path, args.count, s, 16),
        "lsio clustered_crops (per_cell 16, reuse)": lambda s: run_clustered(
            args.path, args.count, s, 16, True
        ),
    }
    rates: dict[str, list[float]] = {k: [] for k in readers}
    for rep in range(args.reps):
        for name, fn in readers.items():
            t = time.perf_counter()
            nbytes = fn(rep)
            dt = time.perf_counter() - t
            assert nbytes == args.count * int(np.prod(CROP)) * 4, name
            rates[name].append(args.count / dt)
    base = statistics.median(rates["tensorstore"])
    print(f"{args.count} crops {CROP} of {args.path}, {args.reps} reps, warm cache")
    print("| reader | crops/s min | median | max | vs tensorstore |\n|---|---:|---:|---:|---:|")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"| {name} | {min(r):.0f} | {med:.0f} | {max(r):.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
