#!/usr/bin/env python3
"""Whole-group re-chunk benchmark: does converting a group's arrays one after another
keep the cluster as busy as one array of the same bytes? (lsio_ray/ray/README.md,
"rechunk" / "Groups").

On one local Ray cluster started by this process (``address="local"``, ``num_cpus`` from
``$LSIO_GROUP_BENCH_CPUS``, default 2), side by side, interleaved,
``$LSIO_GROUP_BENCH_REPS`` (5) repetitions of:

* ``group``: ``lsio_ray.rechunk`` on a v3 group of 4 float32 arrays (N,256,256), chunks
  (1,256,256) zstd-3, consolidated metadata, into chunks (16,256,256) zstd-3;
* ``array``: ``lsio_ray.rechunk`` on one array (4N,256,256) of the same bytes and
  chunks, into the same chunks;
* ``tiny``: a group of 16 arrays of (8,64,64) float32 (128 KiB each): the fixed cost
  of an array in a group (plan, journal, metadata, a few tasks), reported per array.

Prints min/median/max seconds and MiB/s (decoded bytes) and the ratio group/array of
the medians, with the load average before and after (the machine is shared).
``N`` is ``$LSIO_GROUP_BENCH_PLANES`` (64: 4 x 64 MiB); data under
``$LSIO_GROUP_BENCH_DIR`` (/tmp/lsio-group-bench), made once.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
import warnings

import numcodecs
import numpy as np
import ray
import zarr

import lsio_ray

warnings.filterwarnings("ignore", message="Consolidated metadata is currently")

BASE = os.environ.get("LSIO_GROUP_BENCH_DIR", "/tmp/lsio-group-bench")
PLANES = int(os.environ.get("LSIO_GROUP_BENCH_PLANES", "64"))
REPS = int(os.environ.get("LSIO_GROUP_BENCH_REPS", "5"))
CPUS = int(os.environ.get("LSIO_GROUP_BENCH_CPUS", "2"))
ARRAYS = 4
TINY = 16


def _plane_data(rng: np.random.Generator, planes: int) -> np.ndarray:
    # smooth fields plus noise: compresses somewhat, like measured data
    y = np.linspace(0, 6, 256, dtype=np.float32)
    base = np.sin(y)[:, None] * np.cos(y)[None, :]
    noise = rng.normal(0, 0.05, (planes, 256, 256)).astype(np.float32)
    return base[None] + noise


def _make() -> tuple[str, str, str]:
    group, array, tiny = (os.path.join(BASE, n) for n in ("group.zarr", "array.zarr", "tiny.zarr"))
    if os.path.exists(os.path.join(BASE, "done")):
        return group, array, tiny
    shutil.rmtree(BASE, ignore_errors=True)
    comp = zarr.codecs.ZstdCodec(level=3)
    rng = np.random.default_rng(0)
    root = zarr.open_group(group, mode="w", zarr_format=3, attributes={"bench": True})
    whole = zarr.create_array(
        array,
        shape=(ARRAYS * PLANES, 256, 256),
        chunks=(1, 256, 256),
        dtype="f4",
        compressors=comp,
    )
    for k in range(ARRAYS):
        data = _plane_data(rng, PLANES)
        z = root.create_array(
            f"v{k}", shape=data.shape, chunks=(1, 256, 256), dtype="f4", compressors=comp
        )
        z[...] = data
        whole[k * PLANES : (k + 1) * PLANES] = data
    zarr.consolidate_metadata(group)
    small = zarr.open_group(tiny, mode="w", zarr_format=3)
    for k in range(TINY):
        z = small.create_array(f"t{k:02d}", shape=(8, 64, 64), chunks=(1, 64, 64), dtype="f4")
        z[...] = rng.normal(0, 1, (8, 64, 64)).astype(np.float32)
    open(os.path.join(BASE, "done"), "w").close()
    return group, array, tiny


def _run(src: str, chunks: tuple[int, ...]) -> float:
    dst = os.path.join(BASE, "out.zarr")
    shutil.rmtree(dst, ignore_errors=True)
    os.sync()
    t0 = time.perf_counter()
    lsio_ray.rechunk(src, dst, chunks=chunks, codec="zstd:3")
    return time.perf_counter() - t0


def main() -> None:
    group, array, tiny = _make()
    numcodecs.blosc.set_nthreads(1)
    load0 = os.getloadavg()
    ray.init(
        address="local",
        num_cpus=CPUS,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    times: dict[str, list[float]] = {"group": [], "array": [], "tiny": []}
    _run(tiny, (8, 64, 64))  # warm the workers up
    for _ in range(REPS):
        times["group"].append(_run(group, (16, 256, 256)))
        times["array"].append(_run(array, (16, 256, 256)))
        times["tiny"].append(_run(tiny, (8, 64, 64)))
    load1 = os.getloadavg()
    ray.shutdown()
    mib = ARRAYS * PLANES * 256 * 256 * 4 / (1 << 20)
    print(f"{CPUS} CPUs, {REPS} reps, load average before {load0}, after {load1}")
    for name, ts in times.items():
        lo, med, hi = min(ts), statistics.median(ts), max(ts)
        if name == "tiny":
            print(
                f"tiny ({TINY} arrays of 128 KiB): s min/med/max {lo:.2f}/{med:.2f}/{hi:.2f}"
                f" = {med / TINY * 1000:.0f} ms per array (median)"
            )
        else:
            rates = "/".join(f"{mib / t:.0f}" for t in (hi, med, lo))
            print(
                f"{name} ({mib:.0f} MiB): s min/med/max {lo:.2f}/{med:.2f}/{hi:.2f}, MiB/s {rates}"
            )
    ratio = statistics.median(times["group"]) / statistics.median(times["array"])
    print(f"group / array (median seconds): {ratio:.2f}")


if __name__ == "__main__":
    main()
