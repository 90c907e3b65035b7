"""The main job's demo: everything on data it makes itself, in a temporary directory.

1. IO: random 4 KiB O_DIRECT reads and whole-file reads of small files, on the io_uring
   and pread backends, side by side with fio on the same files when fio is installed.
2. Zarr (when ``lsio_ray.zarr`` is importable): an array written by zarr-python, random
   crops read through lsio_ray and checked against zarr-python.
3. Ray (when ``lsio_ray.ray`` and Ray are importable): a local Ray cluster started here,
   a re-chunk across it, checked element for element, and the cluster shut down.

Each step reports through the ``report`` callback (the CLI prints); nothing here prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lsio_ray import bench

__all__ = ["DemoOptions", "run_demo"]

Report = Callable[[str], None]


@dataclass
class DemoOptions:
    """What the demo does; ``quick`` shrinks everything for tests."""

    workdir: str | None = None
    quick: bool = False
    keep: bool = False
    seconds: float = 3.0


def _fio_read(
    files: list[str],
    *,
    bs: str,
    rw: str,
    direct: bool,
    depth: int,
    seconds: float,
) -> dict[str, float] | None:
    """Run fio on the same files; None when fio is missing or fails."""
    if shutil.which("fio") is None:
        return None
    cmd = [
        "fio",
        "--name=demo",
        "--ioengine=io_uring",
        f"--iodepth={depth}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--direct={int(direct)}",
        "--output-format=json",
        "--filename=" + ":".join(f.replace(":", "\\:") for f in files),
        "--thread",
        "--group_reporting",
        "--time_based",
        f"--runtime={seconds}",
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
        job = json.loads(out.stdout)["jobs"][0]["read"]
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return None
    return {"ops_per_s": job["iops"], "mib_per_s": job["bw_bytes"] / (1 << 20)}


def demo_io(root: str, opts: DemoOptions, report: Report) -> None:
    """Step 1: the engine against fio and the pread backend."""
    big = os.path.join(root, "big")
    small = os.path.join(root, "small")
    nbig, nsmall = (4, 2000) if opts.quick else (16, 10000)
    report(f"making {nbig} x 32 MiB and {nsmall} x 16 KiB files in {root} ...")
    bench.make_files(big, nbig, "32M" if not opts.quick else "8M")
    bench.make_files(small, nsmall, "16K")
    secs = 1.0 if opts.quick else opts.seconds
    rows = []
    for backend in ("uring", "pread"):
        r = bench.run_read(
            bench.ReadSpec(
                dir=big,
                pattern="random",
                block_size=4096,
                direct=True,
                depth=64,
                threads=1,
                backend=backend,
                duration_s=secs,
            )
        )
        rows.append((f"4K random O_DIRECT, lsio {r.backend}", r.ops_per_s, r.mib_per_s))
    fio = _fio_read(
        bench.list_files(big).paths, bs="4k", rw="randread", direct=True, depth=64, seconds=secs
    )
    if fio:
        rows.append(("4K random O_DIRECT, fio io_uring", fio["ops_per_s"], fio["mib_per_s"]))
    for backend in ("uring", "pread"):
        cold = bench.drop_caches()
        r = bench.run_read(
            bench.ReadSpec(
                dir=small,
                pattern="whole-file",
                depth=32,
                threads=1,
                backend=backend,
                duration_s=secs,
                passes=1,
            )
        )
        rows.append(
            (
                f"16K whole files{' (cold)' if cold else ''}, lsio {r.backend}",
                r.files_per_s,
                r.mib_per_s,
            )
        )
    report(f"{'workload':<46} {'ops|files/s':>12} {'MiB/s':>9}")
    for name, rate, mib in rows:
        report(f"{name:<46} {rate:>12,.0f} {mib:>9,.1f}")


def run_demo(opts: DemoOptions, report: Report) -> dict[str, Any]:
    """Run every demo step; returns timings per step.  Raises on any failure."""
    root = opts.workdir or tempfile.mkdtemp(prefix="lsio-demo-")
    os.makedirs(root, exist_ok=True)
    times: dict[str, Any] = {"workdir": root}
    try:
        for name, step in _steps():
            t = time.perf_counter()
            report(f"== {name}")
            step(root, opts, report)
            times[name] = round(time.perf_counter() - t, 2)
    finally:
        if not opts.keep and opts.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return times


def _make_zarr(
    path: str, shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...] | None
) -> Any:
    """A smooth float32 array written by zarr-python (the reference implementation)."""
    import numpy as np
    import zarr

    z = zarr.create_array(
        path, shape=shape, chunks=chunks, shards=shards, dtype="float32", overwrite=True
    )
    t = np.linspace(0, 8, shape[0], dtype=np.float32)[:, None, None]
    y = np.linspace(0, 6, shape[1], dtype=np.float32)[None, :, None]
    x = np.linspace(0, 4, shape[2], dtype=np.float32)[None, None, :]
    z[...] = np.sin(t + y) * np.cos(x) + 0.01 * t
    return z


def demo_zarr(root: str, opts: DemoOptions, report: Report) -> None:
    """Step 2: random crops and a time series of a sharded Zarr v3 array, checked against
    zarr-python."""
    import numpy as np

    import lsio_ray.zarr as lz

    shape = (32, 512, 512) if opts.quick else (64, 1024, 1024)
    path = os.path.join(root, "sharded.zarr")
    report(
        f"writing a {shape} float32 array, shards (16, 512, 512) of chunks (1, 128, 128), "
        "with zarr-python ..."
    )
    ref = _make_zarr(path, shape, (1, 128, 128), (16, 512, 512))
    a = lz.open(path)
    count = 20 if opts.quick else 200
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    crops = list(a.random_crops((8, 128, 128), count, seed=1, prefetch=8))
    dt = time.perf_counter() - t
    mib = count * 8 * 128 * 128 * 4 / (1 << 20)
    report(
        f"{count} random crops (8, 128, 128) through lsio_ray: {count / dt:,.0f} crops/s, "
        f"{mib / dt:,.0f} MiB/s decoded"
    )
    for _ in range(5):  # spot-check crops against zarr-python
        lo = [int(rng.integers(0, n - c + 1)) for n, c in zip(shape, (8, 128, 128), strict=True)]
        sl = tuple(slice(o, o + c) for o, c in zip(lo, (8, 128, 128), strict=True))
        if not np.array_equal(a[sl], ref[sl]):
            raise AssertionError(f"crop at {lo} differs from zarr-python's read")
    if len(crops) != count or any(c.shape != (8, 128, 128) for c in crops):
        raise AssertionError("random_crops returned the wrong number or shape of crops")
    d = lz.open(path, direct=True)
    t = time.perf_counter()
    direct = list(d.random_crops((8, 128, 128), count, seed=1, prefetch=8))
    dt = time.perf_counter() - t
    if not all(np.array_equal(x, y) for x, y in zip(direct, crops, strict=True)):
        raise AssertionError("crops read with O_DIRECT differ from the buffered ones")
    report(
        f"the same crops with direct=True: {count / dt:,.0f} crops/s, "
        + (
            "read with O_DIRECT (no page-cache copy)"
            if d.direct
            else "through the page cache (this file system refuses O_DIRECT)"
        )
    )
    t = time.perf_counter()
    clustered = list(a.clustered_crops((8, 128, 128), count, seed=1, per_cell=16, prefetch=32))
    dt = time.perf_counter() - t
    starts = a.clustered_starts((8, 128, 128), count, seed=1, per_cell=16)
    for k in range(0, count, max(1, count // 5)):  # spot-check against zarr-python
        sl = tuple(slice(int(o), int(o) + c) for o, c in zip(starts[k], (8, 128, 128), strict=True))
        if not np.array_equal(clustered[k], ref[sl]):
            raise AssertionError(f"clustered crop {k} differs from zarr-python's read")
    report(
        f"{count} clustered crops (16 per cell: each still uniform, a cell's chunks decoded "
        f"once): {count / dt:,.0f} crops/s"
    )
    rows = 0
    for start, block in a.time_series((slice(None), slice(0, 128), slice(0, 128)), rows=4):
        if not np.array_equal(block, ref[start : start + block.shape[0], 0:128, 0:128]):
            raise AssertionError(f"time series block at {start} differs from zarr-python")
        rows += block.shape[0]
    report(
        f"time series [:, 0:128, 0:128]: {rows} rows delivered in order, all equal to "
        "zarr-python's read"
    )


def demo_ray(root: str, opts: DemoOptions, report: Report) -> None:
    """Step 3: a local Ray cluster, a re-chunk across it, checked, and shut down."""
    import numpy as np
    import ray
    import zarr

    import lsio_ray

    shape = (32, 256, 256) if opts.quick else (64, 1024, 1024)
    src = os.path.join(root, "src.zarr")
    dst = os.path.join(root, "dst.zarr")
    report(f"writing a {shape} float32 array in chunks (1, 128, 128) with zarr-python ...")
    ref = _make_zarr(src, shape, (1, 128, 128), None)
    report("starting a local Ray cluster ...")
    ray.init(
        address="local",  # always a new cluster, never one that happens to be running
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        t = time.perf_counter()
        res = lsio_ray.rechunk(src, dst, chunks=(16, 128, 128), codec="zstd:3")
        dt = time.perf_counter() - t
        report(f"re-chunked (1, 128, 128) -> (16, 128, 128) zstd:3 on Ray in {dt:.1f} s: {res}")
    finally:
        ray.shutdown()
    out = zarr.open_array(dst, mode="r")
    if out.chunks != (16, 128, 128) or not np.array_equal(out[...], ref[...]):
        raise AssertionError("the re-chunked array differs from the source")
    report("the re-chunked array equals the source, element for element (read by zarr-python)")


def _steps() -> list[tuple[str, Callable[[str, DemoOptions, Report], None]]]:
    steps: list[tuple[str, Callable[[str, DemoOptions, Report], None]]] = [("io", demo_io)]
    try:
        import lsio_ray.zarr

        steps.append(("zarr", demo_zarr))
    except ImportError:
        pass
    try:
        import ray  # noqa: F401

        import lsio_ray.ray  # noqa: F401

        steps.append(("ray", demo_ray))
    except ImportError:
        pass
    return steps
