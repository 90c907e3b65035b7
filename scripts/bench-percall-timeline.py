#!/usr/bin/env python3
"""Where the time of one ``a[key]`` call goes: planning, IO, decoding (issue 17).

    .venv/bin/python scripts/bench-percall-timeline.py [--calls 300] [--path ARRAY]

Reads ``--calls`` random (8,256,256) crops of bench-zarr's (512,1024,1024) v3 array (made
by ``scripts/bench-zarr.py`` if missing; ``LSIO_ZARR_BENCH_DIR``), warm, one call at a
time as a PyTorch ``Dataset.__getitem__`` does, and times each call's phases on the
clock of the thread that runs them:

* ``plan``: the calling thread builds the read (``BoxRead``: the chunks, the decode jobs,
  the paths), with its CPU time next to it (equal: it computes, it does not wait);
* ``to IO``: from the task's start until the IO thread hands its ranges to the engine;
* ``IO``: from that submit until the last range's completion was reaped;
* ``decode``: from the first decode piece's start to the last one's end, and the sum
  of the pieces' times (the decode threads' work);
* ``call``: the whole call.

Then the same ranges' floor: one thread's ``open``/``fstat``/``read``/``close`` of as
many of the array's chunk files, in Python.  Medians over the calls (the first 20 are a
warm-up).  The hooks wrap the IO service's ``reap``/``submit`` and ``BoxRead`` methods
of this process only.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# the phases of a call through the IO service: small calls read on the calling thread
# (lsio_ray.zarr.quick) have none of them
os.environ.setdefault("LSIO_ZARR_CALL_FILES", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc

import lsio_ray.zarr as lz
from lsio_ray.io import service as S
from lsio_ray.zarr import read as R
from lsio_ray.zarr.plan import normalize

CROP = (8, 256, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--path", default=None, help="a v3 array of one chunk per file")
    ap.add_argument("--aligned", action="store_true", help="crops on chunk boundaries")
    args = ap.parse_args()
    path = args.path or bc.zarr_dataset("v3-chunks")
    a = lz.open(path)
    rng = np.random.default_rng(1)
    n = args.calls + 20
    hi = np.subtract(a.shape, CROP)
    starts = np.stack([rng.integers(0, h + 1, n) for h in hi], 1)
    if args.aligned:  # whole chunks only: 8 a crop
        starts -= starts % np.asarray(a.chunks)
    starts = starts.tolist()
    for lo in starts[:20]:  # warm: the files' pages, the service's threads
        a[tuple(slice(x, x + c) for x, c in zip(lo, CROP, strict=True))]

    pc = time.perf_counter
    ev: list[tuple[str, float, float]] = []
    svc = S.default_service()
    eng = svc.engine
    real_reap, real_submit = eng.reap, eng.submit

    def reap(max_n: int = 4096, min_n: int = 1, timeout_ms: int = -1) -> np.ndarray:
        c = real_reap(max_n, min_n, timeout_ms)
        if c.size:
            ev.append(("reaped", pc(), pc()))
        return c

    def submit(files: Any, ranges: Any, paths: Any) -> None:
        ev.append(("submit", pc(), pc()))
        real_submit(files, ranges, paths)

    eng.reap, eng.submit = reap, submit
    real_dj = R.BoxRead._decode_jobs

    def decode_jobs(self: R.BoxRead, jobs: np.ndarray, counters: Any) -> None:
        t0 = pc()
        real_dj(self, jobs, counters)
        ev.append(("decode", t0, pc()))

    R.BoxRead._decode_jobs = decode_jobs  # type: ignore[method-assign]
    loader = a.loader
    rows = []
    chunks_per_call = []
    for lo in starts[20:]:
        key = tuple(slice(x, x + c) for x, c in zip(lo, CROP, strict=True))
        ev.clear()
        t0 = pc()
        reg = normalize(key, a.shape)
        out = np.empty(CROP, a.dtype)
        c0 = time.thread_time()
        task = R.BoxRead(a, loader, out, reg.lo, reg.hi)
        plan_cpu = time.thread_time() - c0
        t1 = pc()
        loader.start(task)
        task.wait()
        t2 = pc()
        chunks_per_call.append(len(task.sel))
        sub = [e[1] for e in ev if e[0] == "submit"]
        got = [e[1] for e in ev if e[0] == "reaped"]
        dec = [e for e in ev if e[0] == "decode"]
        if not sub or not got or not dec:
            continue
        rows.append(
            (
                t1 - t0,
                plan_cpu,
                sub[0] - t1,
                max(got) - sub[0],
                max(d[2] for d in dec) - min(d[1] for d in dec),
                sum(d[2] - d[1] for d in dec),
                t2 - t0,
            )
        )
    med = np.median(np.array(rows), axis=0) * 1e3
    k = int(np.median(chunks_per_call))
    names = ("plan", "plan CPU", "to IO", "IO", "decode span", "decode work", "call")
    print(f"{len(rows)} calls of {CROP} crops of {path}, {k} chunks a call (median), warm")
    for name, v in zip(names, med, strict=True):
        print(f"  {name:12s} {v:7.2f} ms")
    print(f"  calls/s      {1e3 / med[-1]:7.1f}")

    files = [str(p) for p in Path(path, "c").rglob("*") if p.is_file()]
    random.seed(1)
    floor = []
    for _ in range(200):
        t = pc()
        for f in random.sample(files, k):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.read(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        floor.append(pc() - t)
    print(
        f"  floor: {k} files open/fstat/read/close on one thread, Python: "
        f"{np.median(floor[20:]) * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
