#!/usr/bin/env python3
"""Repeated runs of one job in one process, for A/B comparisons of two commits.

The interleaved benchmarks (``bench-rechunk.py``, ``bench-datasource.py``, ``bench-zarr.py``)
compare lsio_ray with its peers; this loop compares lsio_ray with itself.  Run it at each
commit in turn (``git stash`` / ``git checkout``, alternating, twice each) and read the
runs after the first, which pays for starting Ray's workers.

    .venv/bin/python scripts/ab-loop.py rechunk [--reps 3] [--block-bytes 64M]
        lsio_ray.rechunk of the bench-zarr array, (1,256,256) -> (16,256,256) zstd-3, on
        a local Ray cluster (2 CPUs); prints wall s, MiB/s and the share of CPU time busy
        (/proc/stat) per run.
    .venv/bin/python scripts/ab-loop.py crops [--reps 3] [--count 2000] [--local]
        lsio_ray.data.read_zarr_crops (8,256,256) crops through iter_batches(16), every
        crop summed; with --local also Array.random_crops in this process (the Ray Data
        overhead); prints crops/s and the time to the first batch.
    .venv/bin/python scripts/ab-loop.py series [--reps 4]
        16 time series [:, y:y+256, x:x+256] (unaligned) of the bench-zarr array with
        Array.crops(prefetch=2, reuse=True), no Ray; prints series/s, CPU ms and context
        switches per series (all of this process's threads, /proc/self/task).

The dataset is bench-zarr's (made by ``scripts/bench-zarr.py``, reused if present).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

from lsio_ray.config import parse_size


def _cpu_busy() -> list[int]:
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def _busy(a: list[int], b: list[int]) -> float:
    d = [y - x for x, y in zip(a, b, strict=True)]
    return 1 - (d[3] + d[4]) / max(1, sum(d))


def _ray_init() -> None:

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bc.init_local_ray()


def rechunk(args: argparse.Namespace) -> None:
    import ray

    import lsio_ray
    import lsio_ray.zarr as lz

    src = bc.zarr_dataset("v3-chunks")
    nbytes = int(np.prod(lz.open(src).shape)) * 4
    work = tempfile.mkdtemp(prefix="lsio-ab-")
    _ray_init()
    try:
        for rep in range(args.reps):
            dst = os.path.join(work, "out.zarr")
            shutil.rmtree(dst, ignore_errors=True)
            os.sync()
            s0 = _cpu_busy()
            t = time.perf_counter()
            lsio_ray.rechunk(
                src, dst, chunks=(16, 256, 256), codec="zstd:3", block_bytes=args.block_bytes
            )
            dt = time.perf_counter() - t
            print(
                f"rechunk run {rep}: {dt:.2f} s, {nbytes / 2**20 / dt:.0f} MiB/s, "
                f"CPU busy {100 * _busy(s0, _cpu_busy()):.1f}%",
                flush=True,
            )
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def crops(args: argparse.Namespace) -> None:
    import ray

    import lsio_ray.data
    import lsio_ray.zarr as lz

    path = bc.zarr_dataset("v3-chunks")
    crop = (8, 256, 256)
    _ray_init()
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for rep in range(args.reps):
            t = time.perf_counter()
            ds = lsio_ray.data.read_zarr_crops(path, crop, args.count, seed=7)
            first = None
            total = 0.0
            for b in ds.iter_batches(batch_size=16, batch_format="numpy"):
                if first is None:
                    first = time.perf_counter() - t
                total += float(b["crop"].sum(dtype=np.float64))
            dt = time.perf_counter() - t
            print(
                f"crops run {rep} Ray Data: {args.count / dt:.1f} crops/s, first batch "
                f"after {first or 0:.2f} s (sum {total:.6g})",
                flush=True,
            )
            if args.local:
                arr = lz.open(path)
                t = time.perf_counter()
                total = 0.0
                for c in arr.random_crops(crop, args.count, seed=7, prefetch=16):
                    total += float(c.sum(dtype=np.float64))
                dt = time.perf_counter() - t
                print(
                    f"crops run {rep} local engine: {args.count / dt:.1f} crops/s "
                    f"(sum {total:.6g})",
                    flush=True,
                )
    finally:
        ray.shutdown()


def _switches() -> int:
    total = 0
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/status") as fh:
                total += sum(int(ln.split()[1]) for ln in fh if "ctxt_switches" in ln)
        except OSError:  # a thread that just ended
            pass
    return total


def series(args: argparse.Namespace) -> None:
    import lsio_ray.zarr as lz

    arr = lz.open(bc.zarr_dataset("v3-chunks"))
    z, y, x = arr.shape
    rng = np.random.default_rng(1)
    regions = []
    for _ in range(16):
        a = int(rng.integers(0, y - 256)) | 1
        b = int(rng.integers(0, x - 256)) | 1
        regions.append((slice(0, z), slice(a, a + 256), slice(b, b + 256)))
    for rep in range(args.reps):
        s0, c0, t = _switches(), time.process_time(), time.perf_counter()
        for _ in arr.crops(regions, prefetch=2, reuse=True):
            pass
        dt = time.perf_counter() - t
        n = len(regions)
        print(
            f"series run {rep}: {n / dt:.2f} series/s, "
            f"{(time.process_time() - c0) / n * 1000:.0f} ms CPU/series, "
            f"{(_switches() - s0) // n} context switches/series",
            flush=True,
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="job", required=True)
    r = sub.add_parser("rechunk")
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--block-bytes", type=parse_size, default=64 << 20)
    c = sub.add_parser("crops")
    c.add_argument("--reps", type=int, default=3)
    c.add_argument("--count", type=int, default=2000)
    c.add_argument("--local", action="store_true")
    s = sub.add_parser("series")
    s.add_argument("--reps", type=int, default=4)
    args = p.parse_args()
    {"rechunk": rechunk, "crops": crops, "series": series}[args.job](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
