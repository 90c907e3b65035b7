#!/usr/bin/env python3
"""Two checkouts of lsio_ray side by side: the same jobs, alternated, on the same data.

    .venv/bin/python scripts/ab-checkouts.py --a /path/to/before --b . [--rounds 5]
        [--jobs engine-files,engine-ranges,crops,whole,series,series-cold,ray-crops,rechunk]

Each checkout runs with its own ``.venv`` (made by its ``scripts/setup``).  Every round
runs every job once in each checkout, the order of the two flipped each round, each job
in a fresh process, so drift on a shared 2-core machine falls on both alike.  Printed:
min / median / max per job and checkout, the ratio of the medians (b / a), and, for
the crop jobs, the median CPU time per crop (getrusage of the job's process).

Jobs (data: bench-zarr's array, ``LSIO_ZARR_BENCH_*``, and 20,000 files of 16 KiB and
four 64 MiB files under ``$LSIO_AB_DIR``, default /tmp/lsio-ab, made once):

* ``engine-files``: ``Engine().stream`` of the 20,000 files in groups of 256 (warm),
  files/s -- the op-group API, ordered delivery and the chunk objects;
* ``engine-ranges``: one group of 65,536 random 4 KiB ranges of the four files (warm),
  thousands of ranges/s;
* ``crops``: ``Array.random_crops((8,256,256), 400)``, no Ray (warm), crops/s;
* ``percall``: 200 crops (8,256,256) read one call at a time, ``a[key]`` (warm), crops/s;
* ``whole``: the whole array read twice, no Ray (warm), MiB/s;
* ``series`` / ``series-cold``: 16 time series ``[:, y:y+256, x:x+256]`` with
  ``crops(prefetch=2, reuse=True)``, series/s; cold drops the page cache first (root);
* ``ray-crops``: ``lsio_ray.data.read_zarr_crops``, 600 crops on a 2-CPU local Ray
  (warm), crops/s, Ray's start excluded;
* ``rechunk``: ``lsio_ray.rechunk`` of the array to (16,256,256) zstd-3 on a 2-CPU local
  Ray, MiB/s, Ray's start excluded.
* ``w1`` .. ``w4``: the engine workloads of ``scripts/bench-io.sh`` through
  ``lsio_ray.bench.run_read`` (4 s each): 4 KiB random O_DIRECT reads at depth 32 of
  the four big files (k IOPS), 256 KiB sequential O_DIRECT reads (MiB/s), 4 KiB random
  warm reads on 2 threads (k IOPS), and one pass of whole-file reads of the 20,000 small
  files, warm (files/s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

AB_DIR = os.environ.get("LSIO_AB_DIR", "/tmp/lsio-ab")

_PRE = """
import os, resource, sys, time, numpy as np
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def drop():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
"""

JOBS: dict[str, str] = {
    "engine-files": """
from lsio_ray import Engine, OpGroup, get_ranges
d = sys.argv[2]
paths = sorted(os.path.join(d, n) for n in os.listdir(d))
groups = [OpGroup([get_ranges(p) for p in paths[i:i + 256]]) for i in range(0, len(paths), 256)]
with Engine() as eng:
    t = time.perf_counter(); n = 0
    for res in eng.stream(groups, window=4):
        for c in res:
            with c:
                n += c.data.size > 0
    dt = time.perf_counter() - t
print(len(paths) / dt)
""",
    "engine-ranges": """
from lsio_ray import Engine, OpGroup, get_ranges
d = sys.argv[2]
paths = sorted(os.path.join(d, n) for n in os.listdir(d))
rng = np.random.default_rng(3)
ops = []
for p in paths:
    starts = rng.integers(0, (64 << 20) // 4096, 16384) * 4096
    ops.append(get_ranges(p, starts=starts, ends=starts + 4096))
with Engine() as eng:
    t = time.perf_counter(); n = 0
    for c in eng.submit(OpGroup(ops)):
        with c:
            n += 1
    dt = time.perf_counter() - t
print(n / dt / 1000)
""",
    "crops": """
import lsio_ray.zarr as lz
arr = lz.open(sys.argv[1])
t = time.perf_counter(); s = 0.0; c0 = cpu()
for c in arr.random_crops((8, 256, 256), 400, seed=7, prefetch=16):
    s += float(c[0, 0, 0])
print(400 / (time.perf_counter() - t), (cpu() - c0) * 1000 / 400)
""",
    "percall": """
import lsio_ray.zarr as lz
arr = lz.open(sys.argv[1])
rng = np.random.default_rng(11)
keys = []
for _ in range(210):
    z, y, x = rng.integers(0, 512 - 8), rng.integers(0, 1024 - 256), rng.integers(0, 1024 - 256)
    keys.append((slice(z, z + 8), slice(y, y + 256), slice(x, x + 256)))
for k in keys[:10]:
    arr[k]
t = time.perf_counter(); c0 = cpu()
for k in keys[10:]:
    arr[k]
print(200 / (time.perf_counter() - t), (cpu() - c0) * 1000 / 200)
""",
    "whole": """
import lsio_ray.zarr as lz
arr = lz.open(sys.argv[1])
t = time.perf_counter()
for _ in range(2):
    a = arr[...]
print(2 * a.nbytes / 2**20 / (time.perf_counter() - t))
""",
    "series": """
import lsio_ray.zarr as lz
arr = lz.open(sys.argv[1])
z, y, x = arr.shape
rng = np.random.default_rng(1)
regions = []
for _ in range(16):
    a = int(rng.integers(0, y - 256)) | 1
    b = int(rng.integers(0, x - 256)) | 1
    regions.append((slice(0, z), slice(a, a + 256), slice(b, b + 256)))
if os.environ.get("AB_COLD") == "1":
    drop()
t = time.perf_counter()
for _ in arr.crops(regions, prefetch=2, reuse=True):
    pass
print(16 / (time.perf_counter() - t))
""",
    "ray-crops": """
import ray, lsio_ray.data
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
ray.data.DataContext.get_current().enable_progress_bars = False
ds = lsio_ray.data.read_zarr_crops(sys.argv[1], (8, 256, 256), 100, seed=1)
for b in ds.iter_batches(batch_size=16, batch_format="numpy"):
    pass
t = time.perf_counter(); s = 0.0
ds = lsio_ray.data.read_zarr_crops(sys.argv[1], (8, 256, 256), 600, seed=7)
for b in ds.iter_batches(batch_size=16, batch_format="numpy"):
    s += float(b["crop"][0].sum())
print(600 / (time.perf_counter() - t))
ray.shutdown()
""",
    "rechunk": """
import shutil, tempfile, ray, lsio_ray, lsio_ray.zarr as lz
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
nbytes = int(np.prod(lz.open(sys.argv[1]).shape)) * 4
work = tempfile.mkdtemp(prefix="lsio-ab-")
try:
    dst = os.path.join(work, "warmup.zarr")
    t = time.perf_counter()
    lsio_ray.rechunk(sys.argv[1], dst, chunks=(16, 256, 256), codec="zstd:3")
    dt = time.perf_counter() - t
finally:
    shutil.rmtree(work, ignore_errors=True)
    ray.shutdown()
print(nbytes / 2**20 / dt)
""",
}
_W = """
from lsio_ray.bench import ReadSpec, run_read
r = run_read(ReadSpec(**{{"dir": sys.argv[2], "duration_s": 4.0, "seed": 5, **{spec}}}))
print(r.{rate})
"""
# the engine workloads of scripts/bench-io.sh (W1-W4), shorter, through lsio_ray.bench
JOBS["w1"] = _W.format(
    spec='dict(pattern="random", block_size=4096, direct=True, depth=32)', rate="ops_per_s / 1e3"
)
JOBS["w2"] = _W.format(
    spec='dict(pattern="sequential", block_size=256 << 10, direct=True, depth=8)', rate="mib_per_s"
)
JOBS["w3"] = _W.format(
    spec='dict(pattern="random", block_size=4096, depth=32, threads=2)', rate="ops_per_s / 1e3"
)
JOBS["w4"] = _W.format(
    spec='dict(pattern="whole-file", depth=64, passes=1, duration_s=0)', rate="files_per_s"
)
JOBS["series-cold"] = JOBS["series"]
UNITS = {
    "engine-files": "files/s",
    "engine-ranges": "k ranges/s",
    "crops": "crops/s",
    "percall": "crops/s",
    "whole": "MiB/s",
    "series": "series/s",
    "series-cold": "series/s",
    "ray-crops": "crops/s",
    "rechunk": "MiB/s",
    "w1": "k IOPS",
    "w2": "MiB/s",
    "w3": "k IOPS",
    "w4": "files/s",
}


def _data() -> tuple[str, str, str]:
    small = os.path.join(AB_DIR, "small")
    big = os.path.join(AB_DIR, "big")
    if not os.path.isdir(small):
        os.makedirs(small + ".tmp", exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(20000):
            with open(os.path.join(small + ".tmp", f"f{i:05d}"), "wb") as f:
                f.write(rng.bytes(16 << 10))
        os.rename(small + ".tmp", small)
    if not os.path.isdir(big):
        os.makedirs(big + ".tmp", exist_ok=True)
        rng = np.random.default_rng(1)
        for i in range(4):
            with open(os.path.join(big + ".tmp", f"b{i}"), "wb") as f:
                for _ in range(64):
                    f.write(rng.bytes(1 << 20))
        os.rename(big + ".tmp", big)
    return bc.zarr_dataset("v3-chunks"), small, big


def _run(
    checkout: str, job: str, zarr_path: str, small: str, big: str
) -> tuple[float, float | None]:
    """The job's rate in ``checkout``, and its CPU ms per item where the job reports it."""
    py = os.path.join(checkout, ".venv", "bin", "python")
    data = small if job == "engine-files" else big
    if job.startswith("w"):  # lsio_ray.bench's own files (f000000...)
        from lsio_ray.bench import make_files

        data = os.path.join(AB_DIR, "w-small" if job == "w4" else "w-big")
        if job == "w4":
            make_files(data, 20000, 16 << 10)
        else:
            make_files(data, 4, 64 << 20)
    env = {**os.environ, "AB_COLD": "1" if job.endswith("-cold") else "0"}
    env.pop("PYTHONPATH", None)
    code = _PRE + textwrap.dedent(JOBS[job])
    out = subprocess.run(
        [py, "-c", code, zarr_path, data],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{job} in {checkout} failed:\n{out.stderr[-3000:]}")
    last = out.stdout.strip().splitlines()[-1].split()
    return float(last[0]), (float(last[1]) if len(last) > 1 else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the first checkout (before)")
    ap.add_argument("--b", required=True, help="the second checkout (after)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", default=",".join(JOBS))
    args = ap.parse_args()
    jobs = [j for j in args.jobs.split(",") if j]
    for j in jobs:
        if j not in JOBS:
            ap.error(f"unknown job {j!r}; known: {', '.join(JOBS)}")
    zarr_path, small, big = _data()
    sides = {"a": os.path.abspath(args.a), "b": os.path.abspath(args.b)}
    got: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    for rnd in range(args.rounds):
        order = ["a", "b"] if rnd % 2 == 0 else ["b", "a"]
        for job in jobs:
            for side in order:
                v, c = _run(sides[side], job, zarr_path, small, big)
                got.setdefault((job, side), []).append(v)
                more = ""
                if c is not None:
                    cpus.setdefault((job, side), []).append(c)
                    more = f", CPU {c:.2f} ms per item"
                print(f"round {rnd} {job:14s} {side}: {v:10.2f} {UNITS[job]}{more}", flush=True)
    rows = []
    for job in jobs:
        a, b = got[(job, "a")], got[(job, "b")]
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append(
            [
                job,
                UNITS[job],
                "{:.1f} / {:.1f} / {:.1f}".format(*bc.summary(a)),
                "{:.1f} / {:.1f} / {:.1f}".format(*bc.summary(b)),
                f"{mb / ma:.3f}",
                (
                    "{:.2f} / {:.2f}".format(
                        statistics.median(cpus[(job, "a")]), statistics.median(cpus[(job, "b")])
                    )
                    if (job, "a") in cpus and (job, "b") in cpus
                    else ""
                ),
            ]
        )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\na = {sides['a']}\nb = {sides['b']}\nrounds: {args.rounds}, ended {when}\n")
    print(
        bc.md_table(
            [
                "job",
                "unit",
                "a min / median / max",
                "b min / median / max",
                "b/a",
                "CPU ms/item a / b (median)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
