"""The Zarr commands of ``lsio-ray``: ``info`` and ``bench crops``.

Each command is one ``cmd_*`` function taking the parsed namespace and returning the
exit status.  Their arguments are defined in :mod:`lsio_ray.zarr_args`, which
:mod:`lsio_ray.cli` uses to register them without importing this module (nor
zarr-python) until one of them runs; :func:`add_info_parser` and
:func:`add_bench_crops_parser` register them with this module's functions, and ``python
-m lsio_ray.zarr.cli`` runs them without the rest of the CLI.

    lsio-ray info data.zarr [--json]
    lsio-ray bench crops data.zarr --shape 8,256,256 --count 200 --seed 0 --prefetch 16 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lsio_ray import zarr_args
from lsio_ray.io import config
from lsio_ray.zarr.array import Array, open_array
from lsio_ray.zarr.group import is_group, open_group
from lsio_ray.zarr.info import array_info, format_group_info, format_info
from lsio_ray.zarr.layout import load_layout
from lsio_ray.zarr.loader import Loader
from lsio_ray.zarr.plan import select_chunks
from lsio_ray.zarr.stream import random_box_starts

__all__ = [
    "add_bench_crops_parser",
    "add_info_parser",
    "bench_crops",
    "cmd_bench_crops",
    "cmd_info",
    "main",
]


# -- info --------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    """``lsio-ray info PATH``: metadata, chunk and shard grids, codecs, stored size; for a
    group, the tree of its members."""
    if is_group(args.path):
        with open_group(args.path) as group:
            ginfo = group.info()
        print(json.dumps(ginfo, indent=1, default=str) if args.json else format_group_info(ginfo))
        return 0
    info = array_info(Array(load_layout(args.path)))
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        print(format_info(info))
    return 0


def add_info_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``info`` (run by :func:`cmd_info`) on a subparsers object; returns its
    parser (the arguments: :func:`lsio_ray.zarr_args.add_info_parser`)."""
    return zarr_args.add_info_parser(subparsers, cmd_info)


# -- bench crops -------------------------------------------------------------------------


def bench_crops(
    path: str,
    shape: tuple[int, ...],
    count: int,
    *,
    seed: int = 0,
    prefetch: int = 16,
    backend: str | None = None,
    threads: int | None = None,
    warmup: int = 0,
    per_cell: int = 0,
    direct: bool | None = None,
) -> dict[str, Any]:
    """Read ``count`` random crops of ``shape`` and measure: crops/s, MiB/s of crops
    delivered, MiB/s of chunks decoded, wall and CPU seconds.  ``per_cell``: the
    clustered sampler (``Array.clustered_crops``: crops drawn ``per_cell`` at a time from
    one cell, its chunks decoded once); 0, independent crops (``Array.random_crops``).
    ``direct``: O_DIRECT reads (``lsio_ray.zarr.open(..., direct=)``)."""
    if direct is None and config.get("direct") is True:
        direct = True  # else None: the array's rule decides (lsio_ray.zarr.direct)
    # a loader of the bench's own, registered for direct reads as the process-wide direct
    # one is (lsio_ray.zarr.loader.default_loader)
    loader = Loader(
        backend=backend, decode_threads=threads, register_buffers=True if direct else None
    )
    try:
        arr = open_array(path, loader=loader, direct=direct)

        def crops(n: int, s: int) -> Any:
            if per_cell:
                return arr.clustered_crops(shape, n, seed=s, per_cell=per_cell, prefetch=prefetch)
            return arr.random_crops(shape, n, seed=s, prefetch=prefetch)

        if warmup:
            for _ in crops(warmup, seed + 1):
                pass
        size = np.asarray(shape, dtype=np.int64)
        if per_cell:  # a cell's crops are one read: each chunk decoded once per cell
            starts = arr.clustered_starts(shape, count, seed=seed, per_cell=per_cell)
        else:
            starts = random_box_starts(arr.shape, shape, count, seed)
        decoded = 0
        for g in range(0, count, per_cell or 1):
            group = starts[g : g + (per_cell or 1)]
            coords = [select_chunks(lo, lo + size, arr.chunks).coords for lo in group]
            decoded += len(np.unique(np.concatenate(coords), axis=0))
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        nbytes = 0
        for crop in crops(count, seed):
            nbytes += crop.nbytes
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        stats = loader.engine.stats()
    finally:
        loader.close()
    mib = 2.0**20
    return {
        "path": arr.path,
        "shape": list(shape),
        "count": count,
        "seed": seed,
        "prefetch": prefetch,
        "sampler": "clustered" if per_cell else "random",
        "per_cell": per_cell,
        "direct": arr.direct,
        "backend": loader.backend,
        "threads": loader.decode_threads,
        "wall_s": wall,
        "crops_per_s": count / wall if wall > 0 else float("inf"),
        "mib_per_s": nbytes / mib / wall if wall > 0 else float("inf"),
        "decoded_mib_per_s": decoded * arr.layout.chunk_nbytes / mib / wall if wall else 0.0,
        "chunks_decoded": decoded,
        "cpu_user_s": r1.ru_utime - r0.ru_utime,
        "cpu_sys_s": r1.ru_stime - r0.ru_stime,
        "pool_peak_bytes": stats["pool_peak"],
        "dtype": str(np.dtype(arr.dtype)),
    }


def cmd_bench_crops(args: argparse.Namespace) -> int:
    """``lsio-ray bench crops PATH``: random-crop throughput of a Zarr array."""
    res = bench_crops(
        args.path,
        args.shape,
        args.count,
        seed=args.seed,
        prefetch=args.prefetch,
        backend=args.backend,
        threads=args.threads,
        warmup=args.warmup,
        per_cell=args.per_cell,
        direct=args.direct or None,
    )
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(
        f"{res['count']} crops of {tuple(res['shape'])} from {res['path']} "
        f"({res['backend']}, {res['threads']} decode threads, prefetch {res['prefetch']}"
        + (f", {res['per_cell']} per cell" if res["per_cell"] else "")
        + (", O_DIRECT" if res["direct"] else "")
        + ")"
    )
    print(
        f"  {res['crops_per_s']:.1f} crops/s, {res['mib_per_s']:.1f} MiB/s of crops, "
        f"{res['decoded_mib_per_s']:.1f} MiB/s decoded ({res['chunks_decoded']} chunks)"
    )
    print(
        f"  wall {res['wall_s']:.2f} s, cpu user {res['cpu_user_s']:.2f} s, "
        f"sys {res['cpu_sys_s']:.2f} s"
    )
    return 0


def add_bench_crops_parser(bench_subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``crops`` mode (run by :func:`cmd_bench_crops`) on the ``bench``
    subparsers; returns its parser (the arguments:
    :func:`lsio_ray.zarr_args.add_bench_crops_parser`)."""
    return zarr_args.add_bench_crops_parser(bench_subparsers, cmd_bench_crops)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``info`` / ``bench crops`` standalone; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lsio_ray.zarr.cli")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_info_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks")
    add_bench_crops_parser(bench.add_subparsers(dest="mode", metavar="MODE", required=True))
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe (``| head``) raises here, not at exit
        return status
    except BrokenPipeError:
        # the reader went away: nothing more to say (the Python docs' recipe, "Note on
        # SIGPIPE"): point stdout at /dev/null so the flush at exit cannot fail again
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, sys.stdout.fileno())
            os.close(fd)
        except (OSError, ValueError):  # stdout is no file (tests capturing it)
            pass
        return 0
    except (OSError, ValueError) as exc:
        print(f"lsio-ray: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
