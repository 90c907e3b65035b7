#!/usr/bin/env python3
"""Ray layer benchmark: its overhead over the local engine, and small files against Ray Data.

Two comparisons, each side by side in one run, interleaved, ``$LSIO_RAY_BENCH_REPS`` (3)
repetitions, reported as min/median/max:

1. **overhead** -- the same op groups read by the local :class:`lsio_ray.Engine`
   (zero-copy chunks in this process) and by the Ray layer on one node (IO actor ->
   ordered ObjectRef stream -> ``ray.get`` in the driver), for several batch sizes.  The
   consumer touches every byte of every chunk the same way in both (a uint64 sum per
   chunk).  Data: ``big`` = 512 files of 2 MiB in groups of 32; ``small`` = 20,000 files
   of 16 KiB in groups of 2,000.  Warm page cache (``LSIO_RAY_BENCH_COLD=1``: cold).
2. **small files** -- 20,000 files of 16 KiB, cold page cache (``sync; echo 3 >
   /proc/sys/vm/drop_caches``, needs root; otherwise warm and said so), each file summed
   in Ray tasks: through the IO actors and the coordinator (one task per batch, on the
   batch's node) against ``ray.data.read_binary_files(...).map_batches(...)`` with the
   default number of blocks and with 8 blocks.

The overhead table also shows Ray's own floor on the machine: an actor yielding ready
16 MiB buffers (no IO at all) to the driver, which touches them the same way.

3. **put** (not in the default set) -- what one Ray object costs: ``ray.put`` of a 32 MiB
   numpy array (dropped at once, 50 in a row) against ``np.copyto`` of the same array,
   wall and CPU time of this process per object.

Files live under ``$LSIO_RAY_BENCH_DIR`` (default /tmp/lsio-ray-bench) and are reused;
``LSIO_RAY_BENCH_BIG_FILES`` (512) and ``LSIO_RAY_BENCH_SMALL_FILES`` (20000) set their
numbers (smaller for a quick check that the script runs).  ``LSIO_RAY_BENCH_SMALL_COLD=0``
keeps the small-files part warm (no ``drop_caches``, e.g. on a machine shared with other
measurements).  Ray: a local cluster of this process (``address="local"``, never one
already running on the machine).
``LSIO_RAY_BENCH_PARTS`` (``overhead,small``; also ``put``) picks the comparisons;
``LSIO_RAY_BENCH_JSON`` names a file for every measurement.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lsio_ray.bench import drop_caches

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

ROOT = os.environ.get("LSIO_RAY_BENCH_DIR", "/tmp/lsio-ray-bench")
REPS = int(os.environ.get("LSIO_RAY_BENCH_REPS", "3"))
PARTS = [p for p in os.environ.get("LSIO_RAY_BENCH_PARTS", "overhead,small").split(",") if p]
COLD_OVERHEAD = os.environ.get("LSIO_RAY_BENCH_COLD", "") == "1"
BIG_FILES = int(os.environ.get("LSIO_RAY_BENCH_BIG_FILES", "512"))
SMALL_FILES = int(os.environ.get("LSIO_RAY_BENCH_SMALL_FILES", "20000"))
# read_binary_files reads the whole directory: one directory per number of small files
SMALL_DIR = "small" if SMALL_FILES == 20000 else f"small-{SMALL_FILES}"
SMALL_COLD = os.environ.get("LSIO_RAY_BENCH_SMALL_COLD", "1") == "1"
BATCHES_MIB = [int(x) for x in os.environ.get("LSIO_RAY_BENCH_BATCHES", "1,4,8,16").split(",")]


def make_files(name: str, count: int, size: int) -> list[str]:
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    paths = [os.path.join(d, f"f{i:06d}") for i in range(count)]
    rng = np.random.default_rng(0)
    for p in paths:
        if not (os.path.exists(p) and os.path.getsize(p) == size):
            with open(p, "wb") as fh:
                fh.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return paths


def groups_of(paths: list[str], per: int) -> list[Any]:
    from lsio_ray import OpGroup, get_ranges

    return [
        OpGroup([get_ranges(p) for p in paths[i : i + per]], metadata=i // per)
        for i in range(0, len(paths), per)
    ]


def touch(view: np.ndarray) -> int:
    n = view.nbytes // 8 * 8
    return int(view[:n].view(np.uint64).sum(dtype=np.uint64)) + int(view[n:].sum())


# -- 1. overhead ---------------------------------------------------------------------------


def run_local(paths: list[str], per: int) -> tuple[int, int]:
    from lsio_ray import Engine

    total = nbytes = 0
    with Engine(pool_bytes="512M") as eng:
        for res in eng.stream(groups_of(paths, per), window=4):
            for chunk in res:
                with chunk:
                    total += touch(chunk.data)
                    nbytes += chunk.length
    return total & 0xFFFFFFFF, nbytes


def run_ray(coord: Any, paths: list[str], per: int) -> tuple[int, int]:
    import ray

    total = nbytes = 0
    for stream in coord.stream(groups_of(paths, per), window=4):
        for bref in stream:
            batch = ray.get(bref.ref)
            for _, view in batch:
                total += touch(view)
                nbytes += view.nbytes
            del batch
    return total & 0xFFFFFFFF, nbytes


class _Floor:
    """Ray's own floor: an actor yielding ready buffers, no IO (what any Ray stream costs)."""

    def __init__(self, mib: int) -> None:
        self.buf = np.ones(mib << 20, np.uint8)

    def run(self, total: int) -> Iterator[np.ndarray]:
        n = 0
        while n < total:
            part = self.buf[: min(self.buf.nbytes, total - n)]
            n += part.nbytes
            yield part


def run_floor(actor: Any, nbytes: int, per_chunk: int) -> int:
    import ray

    got = 0
    for ref in actor.run.options(_generator_backpressure_num_objects=8).remote(nbytes):
        buf = ray.get(ref)
        for s in range(0, buf.nbytes, per_chunk):
            touch(buf[s : s + per_chunk])
        got += buf.nbytes
        del buf
    return got


# -- 2. small files into Ray tasks ---------------------------------------------------------


def _sum_batch(batch: Any) -> tuple[int, int]:
    s = n = 0
    for _, view in batch:
        s += touch(view)
        n += 1
    return s, n


def run_lsio_tasks(coord: Any, paths: list[str], per: int) -> tuple[int, int]:
    import ray

    from lsio_ray.ray.tasks import on_node

    task = ray.remote(num_cpus=1)(_sum_batch)
    refs = []
    for stream in coord.stream(groups_of(paths, per), window=4):
        for bref in stream:
            refs.append(task.options(**on_node(bref.node_id)).remote(bref.ref))
    out = ray.get(refs)
    return sum(s for s, _ in out) & 0xFFFFFFFF, sum(n for _, n in out)


def run_ray_data(directory: str, blocks: int | None) -> tuple[int, int]:
    import ray

    def f(batch: dict[str, Any]) -> dict[str, Any]:
        b = batch["bytes"]
        sums = [touch(np.frombuffer(x, np.uint8)) for x in b]
        return {"s": np.array(sums, dtype=np.uint64)}

    kw = {"override_num_blocks": blocks} if blocks else {}
    ds = ray.data.read_binary_files(directory, **kw).map_batches(f, batch_format="numpy")
    s = n = 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        s += int(batch["s"].sum(dtype=np.uint64))
        n += len(batch["s"])
    return s & 0xFFFFFFFF, n


# -- driver --------------------------------------------------------------------------------


def measure(fn: Callable[[], tuple[int, int]], cold: bool) -> tuple[float, tuple[int, int]]:
    if cold:
        drop_caches()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def table(
    title: str, rows: dict[str, list[float]], unit_count: float, unit: str, note: str
) -> None:
    print(f"\n{title}  ({note})")
    print(f"  {'reader':<34} {'min s':>8} {'median s':>9} {'max s':>8} {unit + '/s (med)':>14}")
    for name, ts in rows.items():
        med = statistics.median(ts)
        print(f"  {name:<34} {min(ts):8.3f} {med:9.3f} {max(ts):8.3f} {unit_count / med:14,.0f}")


def put_part(n: int = 50) -> dict[str, list[float]]:
    """ms of wall and of CPU per 32 MiB object: ``ray.put`` against a plain copy."""
    import ray

    a = np.ones(32 << 20, np.uint8)
    b = np.empty_like(a)

    def put() -> None:
        for _ in range(n):
            ref = ray.put(a)
            del ref

    def copy() -> None:
        for _ in range(n):
            np.copyto(b, a)

    rows: dict[str, list[float]] = {}
    put()  # warm-up
    for _ in range(REPS):
        for name, fn in (("ray.put", put), ("np.copyto", copy)):
            t, c = time.perf_counter(), time.process_time()
            fn()
            rows.setdefault(f"{name} wall ms", []).append((time.perf_counter() - t) / n * 1e3)
            rows.setdefault(f"{name} cpu ms", []).append((time.process_time() - c) / n * 1e3)
    print(f"\nput: one 32 MiB object, {n} in a row, {REPS} reps (min / median / max)")
    for k, v in rows.items():
        print(f"  {k}: {min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}")
    return rows


def main() -> int:
    import ray

    import lsio_ray.ray as lr

    bc.init_local_ray(os.cpu_count() or 2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    results: dict[str, Any] = {}
    can_drop = (COLD_OVERHEAD or SMALL_COLD) and drop_caches()
    if "overhead" in PARTS:
        sets = {
            "big": (make_files("big", BIG_FILES, 2 << 20), 32),
            "small": (make_files(SMALL_DIR, SMALL_FILES, 16 << 10), 2000),
        }
        for name, (paths, per) in sets.items():
            coords = {
                mb: lr.Coordinator(batch_bytes=mb << 20, engine={"pool_bytes": "512M"})
                for mb in BATCHES_MIB
            }
            readers: dict[str, Callable[[], tuple[int, int]]] = {
                "local Engine": lambda p=paths, g=per: run_local(p, g)
            }
            for mb, c in coords.items():
                readers[f"ray stream, {mb} MiB batches"] = lambda c=c, p=paths, g=per: run_ray(
                    c, p, g
                )
            size = os.path.getsize(paths[0])
            floor = ray.remote(num_cpus=0)(_Floor).remote(16)
            nbytes_all = size * len(paths)
            readers["ray floor: 16 MiB objects, no IO"] = lambda f=floor, n=nbytes_all, c=size: (
                -1,
                run_floor(f, n, c),
            )
            rows: dict[str, list[float]] = {k: [] for k in readers}
            ref = None
            for k, fn in readers.items():  # warm-up (and page cache)
                out = fn()
                ref = ref or out
                assert out == ref or k.startswith("ray floor"), (out, ref)
            for _ in range(REPS):
                for k, fn in readers.items():
                    dt, out = measure(fn, COLD_OVERHEAD and can_drop)
                    assert out == ref or k.startswith("ray floor"), (k, out, ref)
                    rows[k].append(dt)
            nbytes = ref[1]
            table(
                f"overhead, {name}: {len(paths)} files, {nbytes / (1 << 20):.0f} MiB, "
                f"groups of {per}",
                rows,
                nbytes / (1 << 20),
                "MiB",
                "cold cache" if COLD_OVERHEAD and can_drop else "warm cache",
            )
            base = statistics.median(rows["local Engine"])
            for k, ts in rows.items():
                if k.startswith("ray stream"):
                    print(f"  {k}: {100 * (statistics.median(ts) / base - 1):+.1f}% vs local")
            results[f"overhead-{name}"] = rows
    if "small" in PARTS:
        paths = make_files(SMALL_DIR, SMALL_FILES, 16 << 10)
        d = os.path.dirname(paths[0])
        coord = lr.Coordinator(engine={"pool_bytes": "512M"})
        readers = {
            "lsio IO actor -> Ray tasks": lambda: run_lsio_tasks(coord, paths, 2000),
            "ray.data.read_binary_files (default)": lambda: run_ray_data(d, None),
            "ray.data.read_binary_files (8 blocks)": lambda: run_ray_data(d, 8),
        }
        ref = None
        for fn in readers.values():  # warm-up: worker processes, imports
            out = fn()
            ref = ref or out
            assert out == ref, (out, ref)
        rows = {k: [] for k in readers}
        for _ in range(REPS):
            for k, fn in readers.items():
                dt, out = measure(fn, SMALL_COLD and can_drop)
                assert out == ref, (k, out, ref)
                rows[k].append(dt)
        table(
            f"small files: {SMALL_FILES:,} x 16 KiB summed in Ray tasks",
            rows,
            SMALL_FILES,
            "files",
            "cold cache"
            if SMALL_COLD and can_drop
            else "WARM cache (LSIO_RAY_BENCH_SMALL_COLD=0)"
            if not SMALL_COLD
            else "WARM cache (drop_caches needs root)",
        )
        lsio = statistics.median(rows["lsio IO actor -> Ray tasks"])
        for k, ts in rows.items():
            if k.startswith("ray.data"):
                print(f"  lsio is {statistics.median(ts) / lsio:.1f}x faster than {k}")
        results["small"] = rows
    if "put" in PARTS:
        results["put"] = put_part()
    out = os.environ.get("LSIO_RAY_BENCH_JSON")
    if out:
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
